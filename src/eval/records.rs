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
        return Err(bad(format!("{shown}, row {}: not a JSON object\n  each row must be an object of named fields", r.line)));
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

/// Field `key` of a row as a string, or an input error naming file, row and field.
pub fn string_field(path: &Path, r: &Record, key: &str) -> Result<String> {
    r.value.get(key).and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
        bad(format!(
            "{}, row {}: no \"{key}\" string\n  every row of this task needs a \"{key}\" field holding text",
            path.display(),
            r.line
        ))
    })
}
