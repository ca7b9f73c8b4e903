//! PIQA (`--bench piqa`), scored as lm-evaluation-harness's `piqa` (`lm_eval/tasks/piqa/piqa.yaml`,
//! version 1.0; commit 4e7e0d47, lm-eval 0.4.13.dev0): split `validation` of `baber/piqa` (the parquet
//! copy lm-eval has used since #2790), 0-shot, metrics `acc` and `acc_norm`.
//!
//! ```text
//! Question: {goal}\nAnswer:                              (doc_to_text, goal verbatim)
//!  {sol1}  /   {sol2}                                    (doc_to_choice: "{{[sol1, sol2]}}", after " ")
//! ```
//!
//! The gold answer is `label` (0 or 1). Rows come from the hub's parquet (or any JSONL/JSON copy with
//! a `label` field), or from the original release's `valid.jsonl`, whose labels sit one per line in
//! `valid-labels.lst` beside it. Scoring and `--shots` are the shared `multiple_choice` rules of
//! `arc.rs`.

use super::arc::{self, field, row_id, Doc, Task};
use super::bench::{Benchmark, Data, Outcome, Session, Settings};
use super::records;
use crate::InputError;
use anyhow::Result;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn bad(msg: String) -> anyhow::Error {
    InputError(msg).into()
}

/// The original release's labels file for `path` (`valid.jsonl` → `valid-labels.lst`).
fn labels_file(path: &Path) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{stem}-labels.lst"))
}

/// A label as an index: a JSON integer or a string of digits.
fn index(v: &Value) -> Option<usize> {
    match v {
        Value::Number(n) => n.as_u64().map(|n| n as usize),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        _ => None,
    }
}

/// Reads PIQA rows (`goal`, `sol1`, `sol2`, `label`); rows without `label` take theirs from the
/// original release's `{split}-labels.lst`.
pub fn read(path: &Path) -> Result<Vec<Doc>> {
    let shown = path.display();
    let rows = records::read(path, "pass --data with the PIQA validation file or the baber/piqa folder")?;
    let lst = labels_file(path);
    let mut listed: Option<Vec<(usize, String)>> = None;
    if rows.iter().any(|r| r.value.get("label").is_none()) && lst.is_file() {
        let text = crate::files::read_to_string(&lst)
            .map_err(|e| bad(format!("cannot read {}: {e}\n  restore the labels file", lst.display())))?;
        let lines: Vec<(usize, String)> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i + 1, l.trim().to_string()))
            .collect();
        if lines.len() != rows.len() {
            return Err(bad(format!(
                "{} holds {} labels for the {} rows of {shown}\n  use the labels file that came with that split",
                lst.display(),
                lines.len(),
                rows.len()
            )));
        }
        listed = Some(lines);
    }
    let mut docs = Vec::new();
    for (i, mut r) in rows.into_iter().enumerate() {
        let s = |k: &str| records::string_field(path, &r, k);
        let (goal, sol1, sol2) = (s("goal")?, s("sol1")?, s("sol2")?);
        let gold = match (&listed, r.value.get("label")) {
            (Some(lines), None) => {
                let (line, text) = &lines[i];
                let g = text.parse::<usize>().ok().filter(|&g| g < 2).ok_or_else(|| {
                    bad(format!("{}, line {line}: label {text:?} is not 0 or 1\n  fix that line", lst.display()))
                })?;
                if let Value::Object(m) = &mut r.value {
                    m.insert("label".into(), Value::from(g));
                }
                g
            }
            _ => {
                let v = field(path, &r, "label", "0 when sol1 is right, 1 when sol2 is").map_err(|e| {
                    bad(format!("{e}\n  (the original release keeps labels in {} beside the file)", lst.display()))
                })?;
                index(v).filter(|&g| g < 2).ok_or_else(|| {
                    bad(format!("{shown}, row {}: \"label\" {v} is not 0 or 1\n  fix that row", r.line))
                })?
            }
        };
        let id = row_id(&r, "id");
        docs.push(Doc::query(id, r.value, format!("Question: {goal}\nAnswer:"), vec![sol1, sol2], gold));
    }
    Ok(docs)
}

pub static PIQA: Task = Task {
    name: "piqa",
    yaml: "lm_eval/tasks/piqa/piqa.yaml (version 1.0)",
    split: "validation",
    subdir: None,
    originals: (&["valid.jsonl"], &["train.jsonl"]),
    excludes_item: true,
    acc_norm: true,
    read,
};

/// `--bench piqa`.
pub struct Piqa;

impl Benchmark for Piqa {
    fn name(&self) -> &'static str {
        PIQA.name
    }

    fn about(&self) -> &'static str {
        "PIQA (validation split), scored as lm-evaluation-harness's piqa"
    }

    fn data(&self) -> Data {
        Data::Required("pass --data with the baber/piqa folder (data/validation-*.parquet), the validation file (parquet, or the original valid.jsonl beside valid-labels.lst), or hf:baber/piqa")
    }

    fn takes_shots(&self) -> bool {
        true
    }

    fn metrics(&self) -> &'static [&'static str] {
        PIQA.metrics()
    }

    /// `piqa-{shots}shot`.
    fn folder(&self, s: &Settings) -> String {
        PIQA.folder(s)
    }

    fn run(&self, s: &mut Session) -> Result<Outcome> {
        arc::run(&PIQA, s)
    }
}
