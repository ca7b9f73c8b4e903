//! Input expansion (files, folders, globs, hub dataset files) and a streaming reader that turns
//! them into documents.
//!
//! A document is a JSONL record's `text`, or a run of lines of a text file ending at a blank line
//! (kept, so concatenating a file's documents gives the file back) or at ~64 KiB. Documents are
//! the unit of the train/validation split.

use super::DataError;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Longest text-file document before it is cut at the next line end.
const MAX_DOC_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Text,
    /// One JSON object per line with a string field `text`.
    Jsonl,
}

#[derive(Debug, Clone)]
pub struct Input {
    /// What the user named (a path, or hf-dataset:ORG/NAME:FILE).
    pub origin: String,
    pub path: PathBuf,
    pub kind: InputKind,
    pub bytes: u64,
}

fn kind_of(path: &Path) -> InputKind {
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => InputKind::Jsonl,
        _ => InputKind::Text,
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let read = |source| DataError::ReadInput { path: dir.display().to_string(), source };
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(read)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>().map_err(read)?;
    entries.sort();
    for p in entries {
        let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

/// Expands the user's inputs, in order: files as given, folders recursively (sorted, hidden
/// entries skipped), glob patterns (sorted), and `hf-dataset:ORG/NAME:FILE` through the hub cache.
pub fn expand(specs: &[String]) -> Result<Vec<Input>, DataError> {
    if specs.is_empty() {
        return Err(DataError::NoInput("no --input given".into()));
    }
    let mut out = Vec::new();
    for spec in specs {
        let mut paths = Vec::new();
        if let Some(rest) = spec.strip_prefix("hf-dataset:") {
            let mut parts = rest.splitn(3, ':');
            let (repo, file) = match (parts.next(), parts.next()) {
                (Some(r), Some(f)) if r.contains('/') && !f.is_empty() => (r, f),
                _ => {
                    return Err(DataError::NoInput(format!(
                        "`{spec}`: write a hub dataset file as hf-dataset:ORG/NAME:FILE"
                    )))
                }
            };
            paths.push(super::hub::fetch(repo, super::hub::RepoKind::Dataset, file)?);
        } else if spec.contains(['*', '?', '[']) {
            let pattern = glob::glob(spec)
                .map_err(|e| DataError::NoInput(format!("`{spec}` is not a valid glob pattern: {e}")))?;
            let mut matched: Vec<PathBuf> = pattern.filter_map(Result::ok).filter(|p| p.is_file()).collect();
            matched.sort();
            if matched.is_empty() {
                return Err(DataError::NoInput(format!("the pattern `{spec}` matches no file")));
            }
            paths.extend(matched);
        } else {
            let p = PathBuf::from(spec);
            if p.is_dir() {
                walk(&p, &mut paths)?;
                if paths.is_empty() {
                    return Err(DataError::NoInput(format!("the folder `{spec}` holds no files")));
                }
            } else {
                std::fs::metadata(&p).map_err(|source| DataError::ReadInput { path: spec.clone(), source })?;
                paths.push(p);
            }
        }
        for path in paths {
            let bytes = std::fs::metadata(&path)
                .map_err(|source| DataError::ReadInput { path: path.display().to_string(), source })?
                .len();
            out.push(Input { origin: spec.clone(), kind: kind_of(&path), path, bytes });
        }
    }
    if out.iter().all(|i| i.bytes == 0) {
        return Err(DataError::NoInput(format!("the inputs are empty ({} file(s), 0 bytes)", out.len())));
    }
    Ok(out)
}

/// What to do with a line that is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidUtf8 {
    Skip,
    Fail,
}

/// Streams documents from inputs in order. Counts what it read and skipped.
pub struct Documents<'a> {
    inputs: &'a [Input],
    next_input: usize,
    reader: Option<(BufReader<File>, usize)>,
    line_no: usize,
    on_invalid: InvalidUtf8,
    pub bytes_read: u64,
    pub skipped_lines: u64,
    line: Vec<u8>,
}

impl<'a> Documents<'a> {
    pub fn new(inputs: &'a [Input], on_invalid: InvalidUtf8) -> Self {
        Documents {
            inputs,
            next_input: 0,
            reader: None,
            line_no: 0,
            on_invalid,
            bytes_read: 0,
            skipped_lines: 0,
            line: Vec::new(),
        }
    }

    fn open_next(&mut self) -> Result<bool, DataError> {
        if self.next_input >= self.inputs.len() {
            return Ok(false);
        }
        let input = &self.inputs[self.next_input];
        let f = crate::files::open_regular(&input.path)
            .map_err(|source| DataError::ReadInput { path: input.path.display().to_string(), source })?;
        self.reader = Some((BufReader::with_capacity(1 << 20, f), self.next_input));
        self.next_input += 1;
        self.line_no = 0;
        Ok(true)
    }

    /// The next document, or None at the end of all inputs.
    pub fn next_doc(&mut self) -> Result<Option<String>, DataError> {
        loop {
            if self.reader.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let (reader, idx) = self.reader.as_mut().expect("open");
            let input = &self.inputs[*idx];
            let mut doc = String::new();
            loop {
                self.line.clear();
                let n = reader
                    .read_until(b'\n', &mut self.line)
                    .map_err(|source| DataError::ReadInput { path: input.path.display().to_string(), source })?;
                if n == 0 {
                    break;
                }
                self.line_no += 1;
                self.bytes_read += n as u64;
                let text = match std::str::from_utf8(&self.line) {
                    Ok(t) => t,
                    Err(e) if self.on_invalid == InvalidUtf8::Skip => {
                        let _ = e;
                        self.skipped_lines += 1;
                        continue;
                    }
                    Err(e) => {
                        return Err(DataError::NotUtf8Line {
                            path: input.path.display().to_string(),
                            line: self.line_no,
                            offset: e.valid_up_to(),
                        });
                    }
                };
                match input.kind {
                    InputKind::Jsonl => {
                        if text.trim().is_empty() {
                            continue;
                        }
                        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| DataError::BadRecord {
                            path: input.path.display().to_string(),
                            line: self.line_no,
                            why: format!("not JSON: {e}"),
                        })?;
                        return match v.get("text").and_then(|t| t.as_str()) {
                            Some(t) => Ok(Some(t.to_string())),
                            None => Err(DataError::BadRecord {
                                path: input.path.display().to_string(),
                                line: self.line_no,
                                why: "no string field `text`".into(),
                            }),
                        };
                    }
                    InputKind::Text => {
                        doc.push_str(text);
                        if text.trim().is_empty() || doc.len() >= MAX_DOC_BYTES {
                            return Ok(Some(doc));
                        }
                    }
                }
            }
            self.reader = None;
            if !doc.is_empty() {
                return Ok(Some(doc));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_concatenate_back_to_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = "first line\nsecond\n\nnext doc\n\n\nlast without newline";
        std::fs::write(dir.path().join("a.txt"), a).unwrap();
        std::fs::write(dir.path().join("b.jsonl"), "{\"text\": \"one\"}\n\n{\"text\": \"two\\n\"}\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/c.txt"), "c\n").unwrap();
        std::fs::write(dir.path().join(".hidden"), "x").unwrap();
        let inputs = expand(&[dir.path().display().to_string()]).unwrap();
        assert_eq!(inputs.len(), 3);
        let mut docs = Documents::new(&inputs, InvalidUtf8::Fail);
        let mut all = Vec::new();
        while let Some(d) = docs.next_doc().unwrap() {
            all.push(d);
        }
        assert_eq!(
            all,
            vec!["first line\nsecond\n\n", "next doc\n\n", "\n", "last without newline", "one", "two\n", "c\n"]
        );
        assert_eq!(all[..4].concat(), a);
    }

    #[test]
    fn bad_inputs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(expand(&[]).is_err());
        let e = expand(&[dir.path().join("missing.txt").display().to_string()]).unwrap_err().to_string();
        assert!(e.contains("missing.txt"), "{e}");
        let e = expand(&[format!("{}/*.none", dir.path().display())]).unwrap_err().to_string();
        assert!(e.contains("matches no file"), "{e}");
        std::fs::write(dir.path().join("empty.txt"), "").unwrap();
        assert!(expand(&[dir.path().join("empty.txt").display().to_string()])
            .unwrap_err()
            .to_string()
            .contains("empty"));
        std::fs::write(dir.path().join("bad.jsonl"), "{\"text\": 1}\n").unwrap();
        let inputs = expand(&[dir.path().join("bad.jsonl").display().to_string()]).unwrap();
        let e = Documents::new(&inputs, InvalidUtf8::Fail).next_doc().unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("text"), "{e}");
        std::fs::write(dir.path().join("latin.txt"), b"ok\ncaf\xe9\nfine\n").unwrap();
        let inputs = expand(&[dir.path().join("latin.txt").display().to_string()]).unwrap();
        let e = Documents::new(&inputs, InvalidUtf8::Fail).next_doc().unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let mut docs = Documents::new(&inputs, InvalidUtf8::Skip);
        assert_eq!(docs.next_doc().unwrap().unwrap(), "ok\nfine\n");
        assert_eq!(docs.skipped_lines, 1);
    }
}
