//! Task files as rows of JSON objects, whatever format the Hugging Face hub (or a local copy)
//! stores them in: JSONL, a JSON array, or parquet (`{split}-00000-of-00001.parquet`).
//!
//! Each task reads its fields from the objects; a row is named by its 1-based line (JSONL) or row
//! (JSON array, parquet) in error messages.

use crate::InputError;
use anyhow::Result;
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::Value;
use std::path::Path;

/// One row of a task file.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 1-based line (JSONL) or row (JSON array, parquet).
    pub line: usize,
    pub value: Value,
}

fn bad(msg: String) -> anyhow::Error {
    InputError(msg).into()
}

/// The rows of `path`: `.parquet`, `.json` (an array of objects) or anything else read as JSONL.
/// A file that cannot be read ends its message with `fix`.
pub fn read(path: &Path, fix: &str) -> Result<Vec<Record>> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let records = match ext.as_str() {
        "parquet" => read_parquet(path, fix)?,
        "json" => read_json_array(path, fix)?,
        _ => super::jsonl_objects(path, fix)?.into_iter().map(|(line, value)| Record { line, value }).collect(),
    };
    let shown = path.display();
    if let Some(r) = records.iter().find(|r| !r.value.is_object()) {
        return Err(bad(format!(
            "{shown}, row {}: not a JSON object\n  each row must be an object of named fields",
            r.line
        )));
    }
    Ok(records)
}

fn read_json_array(path: &Path, fix: &str) -> Result<Vec<Record>> {
    let shown = path.display();
    let text = crate::files::read_to_string(path).map_err(|e| bad(format!("cannot read {shown}: {e}\n  {fix}")))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| bad(format!("{shown} is not JSON: {e}\n  a .json task file holds one array of objects")))?;
    let Value::Array(rows) = value else {
        return Err(bad(format!("{shown} is not a JSON array\n  a .json task file holds one array of objects")));
    };
    Ok(rows.into_iter().enumerate().map(|(i, value)| Record { line: i + 1, value }).collect())
}

fn read_parquet(path: &Path, fix: &str) -> Result<Vec<Record>> {
    let shown = path.display();
    let file = crate::files::open_regular(path).map_err(|e| bad(format!("cannot read {shown}: {e}\n  {fix}")))?;
    let corrupt = |e: parquet::errors::ParquetError| {
        bad(format!(
            "{shown} is not a readable parquet file: {e}\n  download it again (keel reads parquet compressed with snappy or uncompressed), or convert it to JSONL"
        ))
    };
    let reader = SerializedFileReader::new(file).map_err(corrupt)?;
    let mut out = Vec::new();
    for (i, row) in reader.get_row_iter(None).map_err(corrupt)?.enumerate() {
        let row = row.map_err(corrupt)?;
        out.push(Record { line: i + 1, value: row.to_json_value() });
    }
    Ok(out)
}

/// Where row `r` of `path` is, for messages: `FILE, row N` (for JSONL, N is the line).
pub fn place(path: &Path, r: &Record) -> String {
    format!("{}, row {}", path.display(), r.line)
}

/// Field `key` of a row as a string, or an input error naming file, row and field.
pub fn string_field(path: &Path, r: &Record, key: &str) -> Result<String> {
    r.value.get(key).and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
        bad(format!(
            "{}: no \"{key}\" string\n  every row of this task needs a \"{key}\" field holding text",
            place(path, r)
        ))
    })
}

/// The file holding split `split` of a task: `data` itself when it is a file, else the first (in
/// name order) of `{split}-*.parquet`, `{split}.parquet`, `{split}.jsonl`, `{split}.json` found in
/// `data/{subdir}`, `data/{subdir}/data`, `data` or `data/data` (the layouts the hub uses, e.g.
/// `ARC-Easy/test-00000-of-00001.parquet`, `data/validation-00000-of-00001.parquet`). A folder
/// without it is an input error listing what the task looks for.
pub fn split_file(data: &Path, subdir: Option<&str>, split: &str) -> Result<std::path::PathBuf> {
    if data.is_file() {
        return Ok(data.to_path_buf());
    }
    if !data.is_dir() {
        return Err(bad(format!(
            "{} does not exist\n  pass --data with the task's split file (parquet, JSONL or JSON) or the folder holding it",
            data.display()
        )));
    }
    let mut dirs = Vec::new();
    if let Some(sub) = subdir {
        dirs.push(data.join(sub));
        dirs.push(data.join(sub).join("data"));
    }
    dirs.push(data.to_path_buf());
    dirs.push(data.join("data"));
    for dir in &dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        let sharded = format!("{split}-");
        let found = names.iter().find(|n| n.starts_with(&sharded) && n.ends_with(".parquet")).or_else(|| {
            ["parquet", "jsonl", "json"].iter().find_map(|ext| names.iter().find(|n| **n == format!("{split}.{ext}")))
        });
        if let Some(name) = found {
            return Ok(dir.join(name));
        }
    }
    let sub = subdir.map(|s| format!("{s}/")).unwrap_or_default();
    Err(bad(format!(
        "{} holds no {split} split: looked for {sub}{split}-*.parquet, {sub}{split}.parquet, {sub}{split}.jsonl or {sub}{split}.json (also under data/)\n  pass --data with the split's file, or the folder the hub's dataset was downloaded to",
        data.display()
    )))
}
