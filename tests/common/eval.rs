//! Helpers shared by the `keel eval` integration tests (tests/eval*.rs).

use keel::data::tokenizer::KeelTokenizer;
use keel::eval::{LanguageModel, Request, Scored};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The `keel` binary this test build made.
pub fn keel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keel"))
}

/// A byte-level model whose scores are a fixed function of the tokens: each continuation token t
/// gets log-probability `-(t as f64) / 100` (so ` A` always beats ` B`, ...), and is "greedy" when
/// it is below 100. It records the requests it sees.
pub struct FakeLm {
    pub tok: KeelTokenizer,
    pub max_len: usize,
    pub seen: Vec<Request>,
}

impl FakeLm {
    pub fn new(max_len: usize) -> Self {
        FakeLm { tok: KeelTokenizer::byte(), max_len, seen: Vec::new() }
    }
}

impl LanguageModel for FakeLm {
    fn describe(&self) -> String {
        "fake".into()
    }
    fn max_len(&self) -> usize {
        self.max_len
    }
    fn tokenizer(&self) -> &KeelTokenizer {
        &self.tok
    }
    fn score(&mut self, requests: &[Request], done: &mut dyn FnMut(usize)) -> anyhow::Result<Vec<Scored>> {
        self.seen.extend(requests.iter().cloned());
        done(requests.len());
        Ok(requests
            .iter()
            .map(|r| {
                let cont = &r.tokens[r.cont_start..];
                Scored {
                    logprob: cont.iter().map(|&t| -(t as f64) / 100.0).sum(),
                    greedy: cont.iter().all(|&t| t < 100),
                    n_tokens: cont.len(),
                }
            })
            .collect())
    }
}

/// The error is keel's input error (exit status 2) and its message (with its context chain) holds
/// every needle; returns that message.
pub fn input_error(e: anyhow::Error, needles: &[&str]) -> String {
    assert!(e.chain().any(|c| c.is::<keel::InputError>()), "not an input error: {e:#}");
    let msg = format!("{e:#}");
    for n in needles {
        assert!(msg.contains(n), "{n:?} missing from: {msg}");
    }
    msg
}

/// A fresh, empty `keel-{name}-{pid}` folder under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("keel-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes `text` to `path`, making its folder first.
pub fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A CSV file's records, the header left out.
pub fn csv_rows(path: &Path) -> Vec<csv::StringRecord> {
    csv::Reader::from_path(path).unwrap().records().map(|r| r.unwrap()).collect()
}

/// A CSV file's header and its records as column → value maps.
pub fn read_rows(path: &Path) -> (Vec<String>, Vec<HashMap<String, String>>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r.records().map(|x| header.iter().cloned().zip(x.unwrap().iter().map(String::from)).collect()).collect();
    (header, rows)
}
