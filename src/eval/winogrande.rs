//! WinoGrande (`--bench winogrande`), scored as lm-evaluation-harness's `winogrande`
//! (`lm_eval/tasks/winogrande/default.yaml` and `preprocess_winogrande.py`, version 1.0; commit
//! 4e7e0d47, lm-eval 0.4.13.dev0): split `validation` of `allenai/winogrande`, config `winogrande_xl`,
//! 0-shot, metric `acc` only.
//!
//! Partial scoring: `doc_to_text` returns the gold index, which makes lm-eval treat the item as
//! "multiple inputs". Each option fills the blank to make one context, and the rest of the sentence
//! is the continuation scored after each:
//!
//! ```text
//! {sentence[:i]}{option1}     {sentence[:i]}{option2}        (doc_to_choice; i = sentence.index("_"))
//!  {sentence[i+1:].strip()}                                  (doc_to_target, after " ")
//! ```
//!
//! The gold answer is `{"1": 0, "2": 1}[answer]`. A few-shot exemplar is the gold context, `" "`, the
//! continuation and `"\n\n"`. Scoring and `--shots` are the shared rules of `arc.rs`.

use super::arc::{self, field, row_id, Doc, Task};
use super::bench::{Benchmark, Data, Outcome, Session, Settings};
use super::generative::py_strip;
use super::records;
use crate::InputError;
use anyhow::Result;
use serde_json::Value;
use std::path::Path;

fn bad(msg: String) -> anyhow::Error {
    InputError(msg).into()
}

/// `(sentence[:i], sentence[i+1:].strip())` around the first `_`, or `None` without a blank.
pub fn split_blank(sentence: &str) -> Option<(&str, &str)> {
    let i = sentence.find('_')?;
    Some((&sentence[..i], py_strip(&sentence[i + 1..])))
}

/// Reads WinoGrande rows (`sentence`, `option1`, `option2`, `answer`), from the hub's parquet or the
/// original release's JSONL.
pub fn read(path: &Path) -> Result<Vec<Doc>> {
    let shown = path.display();
    let mut docs = Vec::new();
    for r in records::read(path, "pass --data with the WinoGrande validation file or the allenai/winogrande folder")? {
        let s = |k: &str| records::string_field(path, &r, k);
        let (sentence, option1, option2) = (s("sentence")?, s("option1")?, s("option2")?);
        let (before, after) = split_blank(&sentence).ok_or_else(|| {
            bad(format!(
                "{shown}, row {}: the sentence has no \"_\" blank for the options to fill\n  fix that row",
                r.line
            ))
        })?;
        // The hub stores "1"/"2"; a JSON number is read the same way.
        let answer = field(path, &r, "answer", "\"1\" or \"2\", the option that fills the blank")?;
        let gold = match answer {
            Value::String(a) if a == "1" || a == "2" => a == "2",
            Value::Number(n) if n.as_u64() == Some(1) || n.as_u64() == Some(2) => n.as_u64() == Some(2),
            v => {
                return Err(bad(format!(
                    "{shown}, row {}: \"answer\" {v} is not \"1\" or \"2\" (the test split has no answers: score validation)\n  fix that row",
                    r.line
                )))
            }
        } as usize;
        let (before, after) = (before.to_string(), after.to_string());
        docs.push(Doc::blank(row_id(&r, "qID"), r.value, before, vec![option1, option2], after, gold));
    }
    Ok(docs)
}

pub static WINOGRANDE: Task = Task {
    name: "winogrande",
    yaml: "lm_eval/tasks/winogrande/default.yaml + preprocess_winogrande.py (version 1.0)",
    split: "validation",
    subdir: Some("winogrande_xl"),
    originals: (&["dev.jsonl"], &["train_xl.jsonl"]),
    excludes_item: true,
    acc_norm: false,
    read,
};

/// `--bench winogrande`.
pub struct Winogrande;

impl Benchmark for Winogrande {
    fn name(&self) -> &'static str {
        WINOGRANDE.name
    }

    fn about(&self) -> &'static str {
        "WinoGrande (winogrande_xl validation split), partial scoring as lm-evaluation-harness's winogrande"
    }

    fn data(&self) -> Data {
        Data::Required("pass --data with the allenai/winogrande folder (winogrande_xl/validation-*.parquet), the validation file (parquet, or the original dev.jsonl), or hf:allenai/winogrande")
    }

    fn takes_shots(&self) -> bool {
        true
    }

    fn metrics(&self) -> &'static [&'static str] {
        WINOGRANDE.metrics()
    }

    /// `winogrande-{shots}shot`.
    fn folder(&self, s: &Settings) -> String {
        WINOGRANDE.folder(s)
    }

    fn run(&self, s: &mut Session) -> Result<Outcome> {
        arc::run(&WINOGRANDE, s)
    }
}
