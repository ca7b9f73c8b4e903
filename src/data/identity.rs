//! What a run trained on, as one comparable string, so that a resume on other data is noticed:
//! the size and sha256 of a text file; for a prepared folder a fingerprint of its `meta.json`
//! (its inputs' checksums, tokenizer, split, shard counts and recorded shard checksums; not its
//! timing), of `tokenizer.json`, and of the shards' checksums as found when opened; or the
//! synthetic corpus's seed and size. Where the data lives is not part of it: a folder moved
//! elsewhere is the same data.

use super::prepare::META_FILE;
use super::DataError;
use crate::config::DataConfig;
use crate::files::sha256_hex as sha256;
use std::path::Path;

fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    crate::files::read(path).map_err(|source| DataError::Read { path: path.display().to_string(), source })
}

/// What separates the shards' part of a prepared folder's identity; identities recorded by older
/// keels end before it.
const SHARDS: &str = " shards sha256 ";

/// The identity of the data `cfg` names (opening a prepared folder's shards to checksum them).
pub fn of(cfg: &DataConfig) -> Result<String, DataError> {
    if let Some(dir) = &cfg.path {
        let prepared = super::prepare::open_prepared_unchecked(Path::new(dir))?;
        return of_prepared(Path::new(dir), &prepared.sha256);
    }
    if cfg.source == "synthetic" {
        return Ok(synthetic(cfg));
    }
    Ok(file(&read(Path::new(&cfg.source))?))
}

/// The built-in synthetic corpus.
pub fn synthetic(cfg: &DataConfig) -> String {
    format!("synthetic seed {} bytes {}", cfg.synthetic_seed, cfg.synthetic_bytes)
}

/// A text file's bytes.
pub fn file(bytes: &[u8]) -> String {
    format!("file bytes {} sha256 {}", bytes.len(), sha256(bytes))
}

/// A prepared folder whose shards have the checksums `shard_sha256` (as found, train then val).
pub fn of_prepared(dir: &Path, shard_sha256: &[String]) -> Result<String, DataError> {
    let meta_path = dir.join(META_FILE);
    let bytes = crate::files::read(&meta_path).map_err(|e| DataError::BadPrepared {
        path: dir.display().to_string(),
        why: format!("cannot read {}: {e}", meta_path.display()),
    })?;
    let mut meta: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| DataError::BadPrepared {
        path: dir.display().to_string(),
        why: format!("{META_FILE} does not parse: {e}"),
    })?;
    // Re-preparing the same inputs the same way gives the same data; only these differ.
    if let Some(m) = meta.as_object_mut() {
        m.remove("seconds");
        m.remove("keel_version");
    }
    let tokenizer = crate::files::read(&dir.join(crate::run_dir::TOKENIZER)).unwrap_or_default();
    Ok(format!(
        "prepared meta sha256 {} tokenizer sha256 {}{SHARDS}{}",
        sha256(meta.to_string().as_bytes()),
        sha256(&tokenizer),
        sha256(shard_sha256.join("\n").as_bytes())
    ))
}

/// True when the identity `now` is the data recorded as `then`. An identity recorded by an older
/// keel has no shards part: then its other parts must match.
pub fn same(then: &str, now: &str) -> bool {
    if then.contains(SHARDS) {
        return then == now;
    }
    now.split(SHARDS).next() == Some(then)
}

#[cfg(test)]
mod tests {
    #[test]
    fn identities_of_older_keels_compare_without_shards() {
        let now = "prepared meta sha256 a tokenizer sha256 b shards sha256 c";
        assert!(super::same(now, now));
        assert!(super::same("prepared meta sha256 a tokenizer sha256 b", now));
        assert!(!super::same("prepared meta sha256 x tokenizer sha256 b", now));
        assert!(!super::same("prepared meta sha256 a tokenizer sha256 b shards sha256 d", now));
        assert!(super::same("synthetic seed 1 bytes 2", "synthetic seed 1 bytes 2"));
        assert!(!super::same("synthetic seed 1 bytes 2", "synthetic seed 1 bytes 3"));
    }
}
