//! What a run trained on, as one comparable string, so that a resume on other data is noticed:
//! the size and sha256 of a text file, a fingerprint of a prepared folder's `meta.json` (its
//! inputs' checksums, tokenizer, split and shard counts; not its timing) and `tokenizer.json`,
//! or the synthetic corpus's seed and size.

use super::prepare::META_FILE;
use super::DataError;
use crate::config::DataConfig;
use crate::files::sha256_hex as sha256;
use std::path::Path;

fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Read { path: path.display().to_string(), source })
}

/// The identity of the data `cfg` names.
pub fn of(cfg: &DataConfig) -> Result<String, DataError> {
    if let Some(dir) = &cfg.path {
        let dir = Path::new(dir);
        let meta_path = dir.join(META_FILE);
        let mut meta: serde_json::Value = serde_json::from_slice(&read(&meta_path)?).map_err(|e| {
            DataError::BadPrepared { path: dir.display().to_string(), why: format!("{META_FILE} does not parse: {e}") }
        })?;
        // Re-preparing the same inputs the same way gives the same data; only these differ.
        if let Some(m) = meta.as_object_mut() {
            m.remove("seconds");
            m.remove("keel_version");
        }
        let tokenizer = std::fs::read(dir.join(crate::run_dir::TOKENIZER)).unwrap_or_default();
        return Ok(format!(
            "prepared meta sha256 {} tokenizer sha256 {}",
            sha256(meta.to_string().as_bytes()),
            sha256(&tokenizer)
        ));
    }
    if cfg.source == "synthetic" {
        return Ok(format!("synthetic seed {} bytes {}", cfg.synthetic_seed, cfg.synthetic_bytes));
    }
    let bytes = read(Path::new(&cfg.source))?;
    Ok(format!("file bytes {} sha256 {}", bytes.len(), sha256(&bytes)))
}
