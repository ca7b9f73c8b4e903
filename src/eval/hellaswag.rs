//! HellaSwag (`--bench hellaswag`), scored as lm-evaluation-harness's `hellaswag`
//! (`lm_eval/tasks/hellaswag/hellaswag.yaml` and `utils.py`, version 1.0; commit 4e7e0d47, lm-eval
//! 0.4.13.dev0): split `validation` of `Rowan/hellaswag`, 0-shot, metrics `acc` and `acc_norm`.
//!
//! `utils.process_docs` builds each item:
//!
//! ```text
//! preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())   (doc_to_text: "{{query}}")
//!  preprocess(endings[i])                                                (each choice, after " ")
//! ```
//!
//! with `preprocess(text)`: `text.strip()`, `" [title]"` → `". "`, `re.sub("\\[.*?\\]", "", text)`,
//! `"  "` → `" "` (one pass, left to right). `str.capitalize()` is Python's: the first character in
//! titlecase and the rest lowercased ([`py_capitalize`]). The gold answer is `int(label)`
//! (`doc_to_target: "{{label}}"`); the hub stores `label` as a string, the original
//! `hellaswag_val.jsonl` as an integer, and both are read. Scoring and `--shots` are the shared
//! `multiple_choice` rules of `arc.rs`.

use super::arc::{self, field, row_id, strings, Doc, Task};
use super::bench::{Benchmark, Data, Outcome, Session, Settings};
use super::generative::{py_strip, PyRegex};
use super::records;
use crate::InputError;
use anyhow::Result;
use serde_json::Value;
use std::path::Path;

fn bad(msg: String) -> anyhow::Error {
    InputError(msg).into()
}

/// The titlecase of `c` where CPython's (Unicode 14) differs from the uppercase Rust gives: the
/// Latin digraphs, Georgian (whose titlecase is the letter itself), the Greek letters with
/// ypogegrammeni, and the ligatures whose uppercase is several letters.
fn titlecase(c: char) -> String {
    let u = c as u32;
    let one = |x: u32| char::from_u32(x).map(String::from).unwrap_or_default();
    match u {
        0x01C4..=0x01C6 => one(0x01C5),
        0x01C7..=0x01C9 => one(0x01C8),
        0x01CA..=0x01CC => one(0x01CB),
        0x01F1..=0x01F3 => one(0x01F2),
        0x10D0..=0x10FA | 0x10FD..=0x10FF => c.to_string(),
        0x1F80..=0x1FAF => one(u | 0x8),
        0x1FB3 | 0x1FBC => one(0x1FBC),
        0x1FC3 | 0x1FCC => one(0x1FCC),
        0x1FF3 | 0x1FFC => one(0x1FFC),
        // Uppercase ends in capital iota; the titlecase keeps the subscript as U+0345.
        0x1FB2 | 0x1FB4 | 0x1FB7 | 0x1FC2 | 0x1FC4 | 0x1FC7 | 0x1FF2 | 0x1FF4 | 0x1FF7 => {
            let mut s: String = c.to_uppercase().collect();
            s.pop();
            s.push('\u{345}');
            s
        }
        // ß and the ligatures: the first letter of the uppercase, the rest lowercase.
        0x00DF | 0x0587 | 0xFB00..=0xFB06 | 0xFB13..=0xFB17 => {
            let mut up = c.to_uppercase();
            let first = up.next().map(String::from).unwrap_or_default();
            first + &up.collect::<String>().to_lowercase()
        }
        _ => c.to_uppercase().collect(),
    }
}

/// Python's `str.capitalize()` (3.8+): the first character in titlecase, the rest lowercased with
/// the whole string as context (a final capital sigma becomes `ς`).
pub fn py_capitalize(s: &str) -> String {
    let Some(first) = s.chars().next() else { return String::new() };
    let lower = s.to_lowercase();
    let skip: usize = first.to_lowercase().map(char::len_utf8).sum();
    titlecase(first) + &lower[skip..]
}

/// `utils.preprocess`.
pub fn preprocess(text: &str) -> String {
    let text = py_strip(text).replace(" [title]", ". ");
    static BRACKETS: std::sync::OnceLock<PyRegex> = std::sync::OnceLock::new();
    let brackets = BRACKETS.get_or_init(|| PyRegex::new(r"\[.*?\]").expect("a fixed pattern"));
    let text = brackets.remove_all(&text).expect("a fixed pattern cannot fail to match");
    text.replace("  ", " ")
}

/// `utils.process_docs`'s query for one row.
pub fn query(activity_label: &str, ctx_a: &str, ctx_b: &str) -> String {
    preprocess(&format!("{activity_label}: {ctx_a} {}", py_capitalize(ctx_b)))
}

/// Reads HellaSwag rows (`activity_label`, `ctx_a`, `ctx_b`, `endings`, `label`), from the hub's
/// parquet or the original JSONL.
pub fn read(path: &Path) -> Result<Vec<Doc>> {
    let shown = path.display();
    let mut docs = Vec::new();
    for r in records::read(path, "pass --data with the HellaSwag validation file or the Rowan/hellaswag folder")? {
        let s = |k: &str| records::string_field(path, &r, k);
        let q = query(&s("activity_label")?, &s("ctx_a")?, &s("ctx_b")?);
        let endings = strings(path, &r, field(path, &r, "endings", "the list of candidate endings")?, "endings")?;
        let label = match field(path, &r, "label", "the gold ending's index")? {
            Value::String(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => t.parse::<usize>().ok(),
            Value::Number(n) => n.as_u64().map(|n| n as usize),
            _ => None,
        };
        let gold = label.filter(|&g| g < endings.len()).ok_or_else(|| {
            bad(format!(
                "{shown}, row {}: \"label\" must be the index of one of the {} endings (the test split has no labels: score validation)\n  fix that row",
                r.line,
                endings.len()
            ))
        })?;
        let choices = endings.iter().map(|e| preprocess(e)).collect();
        docs.push(Doc::query(row_id(&r, "ind"), r.value, q, choices, gold));
    }
    Ok(docs)
}

pub static HELLASWAG: Task = Task {
    name: "hellaswag",
    yaml: "lm_eval/tasks/hellaswag/hellaswag.yaml + utils.py (version 1.0)",
    split: "validation",
    subdir: None,
    originals: (&["hellaswag_val.jsonl"], &["hellaswag_train.jsonl"]),
    excludes_item: true,
    acc_norm: true,
    read,
};

/// `--bench hellaswag`.
pub struct Hellaswag;

impl Benchmark for Hellaswag {
    fn name(&self) -> &'static str {
        HELLASWAG.name
    }

    fn about(&self) -> &'static str {
        "HellaSwag (validation split), scored as lm-evaluation-harness's hellaswag"
    }

    fn data(&self) -> Data {
        Data::Required("pass --data with the Rowan/hellaswag folder (data/validation-*.parquet), the validation file (parquet, or the original hellaswag_val.jsonl), or hf:Rowan/hellaswag")
    }

    fn takes_shots(&self) -> bool {
        true
    }

    fn metrics(&self) -> &'static [&'static str] {
        HELLASWAG.metrics()
    }

    /// `hellaswag-{shots}shot`.
    fn folder(&self, s: &Settings) -> String {
        HELLASWAG.folder(s)
    }

    fn run(&self, s: &mut Session) -> Result<Outcome> {
        arc::run(&HELLASWAG, s)
    }
}
