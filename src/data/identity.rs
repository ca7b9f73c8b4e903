//! What a run trained on, as one comparable string, so that a resume on other data is noticed:
//! the size and sha256 of a text file; for a prepared folder a fingerprint of its `meta.json`
//! (its inputs' checksums, tokenizer, split, shard counts and recorded shard checksums; not its
//! timing), of `tokenizer.json`, and of the shards' checksums as found when opened; or the
//! synthetic corpus's seed and size. Where the data lives is not part of it: a folder moved
//! elsewhere is the same data. (`data::identity_of` reads the data a config names.)

use crate::files::sha256_hex as sha256;

/// What separates the shards' part of a prepared folder's identity; identities recorded by older
/// keels end before it.
const SHARDS: &str = " shards sha256 ";

/// The built-in synthetic corpus of `seed` and `bytes`.
pub fn synthetic(seed: u64, bytes: usize) -> String {
    format!("synthetic seed {seed} bytes {bytes}")
}

/// A text file's bytes.
pub fn file(bytes: &[u8]) -> String {
    format!("file bytes {} sha256 {}", bytes.len(), sha256(bytes))
}

/// A prepared folder: its `meta.json` (parsed), its `tokenizer.json` and its shards' checksums as
/// found (train then validation).
pub fn prepared(mut meta: serde_json::Value, tokenizer: &[u8], shard_sha256: &[String]) -> String {
    // Re-preparing the same inputs the same way gives the same data; only these differ.
    if let Some(m) = meta.as_object_mut() {
        m.remove("seconds");
        m.remove("keel_version");
    }
    format!(
        "prepared meta sha256 {} tokenizer sha256 {}{SHARDS}{}",
        sha256(meta.to_string().as_bytes()),
        sha256(tokenizer),
        sha256(shard_sha256.join("\n").as_bytes())
    )
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
