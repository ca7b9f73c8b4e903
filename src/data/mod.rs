//! Training data: the built-in synthetic corpus or a UTF-8 text file, tokenized at the byte level
//! (vocab 256), and a seeded sampler of (B, T) windows.

pub mod synthetic;

use crate::config::DataConfig;
use crate::rng::Rng;
use candle_core::{Device, Tensor};
use std::path::Path;

/// A problem with the user's data. Always exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read data file {path}: {source}\n  check data.source (use \"synthetic\" for the built-in corpus)")]
    Read { path: String, source: std::io::Error },
    #[error("data file {path} is not UTF-8 text: invalid bytes at offset {offset}\n  convert it to UTF-8 (e.g. iconv -t UTF-8) or point data.source at a text file")]
    NotUtf8 { path: String, offset: usize },
    #[error("data file {path} is too small: {len} bytes give {split} bytes of {which} data, fewer than train.seq_len + 1 = {need}\n  use a larger file, a smaller train.seq_len, or adjust data.val_fraction")]
    TooSmall { path: String, len: usize, split: usize, which: &'static str, need: usize },
}

/// Byte-level vocabulary size.
pub const BYTE_VOCAB: usize = 256;

/// A tokenized corpus with a held-out split.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    pub vocab_size: usize,
    /// What the corpus is, for provenance.
    pub description: String,
}

fn bytes_to_tokens(s: &[u8]) -> Vec<u32> {
    s.iter().map(|&b| b as u32).collect()
}

impl Corpus {
    /// Loads the corpus named by `data.source`; `seq_len` bounds the smallest usable split.
    pub fn load(cfg: &DataConfig, seq_len: usize) -> Result<Corpus, DataError> {
        if cfg.source == "synthetic" {
            let train =
                synthetic::generate(Rng::stream(cfg.synthetic_seed, "synthetic-train").next_u64(), cfg.synthetic_bytes);
            let val_bytes = (cfg.synthetic_bytes / 10).max(seq_len * 64);
            let val = synthetic::generate(Rng::stream(cfg.synthetic_seed, "synthetic-val").next_u64(), val_bytes);
            return Ok(Corpus {
                train: bytes_to_tokens(train.as_bytes()),
                val: bytes_to_tokens(val.as_bytes()),
                vocab_size: BYTE_VOCAB,
                description: format!("synthetic tasks (seed {}, {} bytes)", cfg.synthetic_seed, train.len()),
            });
        }
        Self::from_text_file(Path::new(&cfg.source), cfg.val_fraction, seq_len)
    }

    /// Byte-level tokens of a UTF-8 file; the last `val_fraction` of it is the validation split.
    pub fn from_text_file(path: &Path, val_fraction: f64, seq_len: usize) -> Result<Corpus, DataError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| DataError::Read { path: shown.clone(), source })?;
        if let Err(e) = std::str::from_utf8(&bytes) {
            return Err(DataError::NotUtf8 { path: shown, offset: e.valid_up_to() });
        }
        let split_at = ((bytes.len() as f64) * (1.0 - val_fraction)).round() as usize;
        let (train, val) = bytes.split_at(split_at.min(bytes.len()));
        for (split, which) in [(train.len(), "training"), (val.len(), "validation")] {
            if split < seq_len + 1 {
                return Err(DataError::TooSmall { path: shown, len: bytes.len(), split, which, need: seq_len + 1 });
            }
        }
        Ok(Corpus {
            train: bytes_to_tokens(train),
            val: bytes_to_tokens(val),
            vocab_size: BYTE_VOCAB,
            description: format!("bytes of {shown} ({} bytes)", bytes.len()),
        })
    }
}

/// Samples (B, T) windows of consecutive tokens and their next-token targets.
#[derive(Debug, Clone)]
pub struct Sampler {
    rng: Rng,
    batch: usize,
    seq: usize,
}

impl Sampler {
    pub fn new(seed: u64, key: &str, batch: usize, seq: usize) -> Self {
        Sampler { rng: Rng::stream(seed, key), batch, seq }
    }

    /// Host-side batch: (inputs, targets), each B*T tokens row-major. Windows never run past the
    /// end of `tokens`.
    pub fn next_host(&mut self, tokens: &[u32]) -> (Vec<u32>, Vec<u32>) {
        let (b, t) = (self.batch, self.seq);
        let max_start = tokens.len() - t - 1;
        let mut x = Vec::with_capacity(b * t);
        let mut y = Vec::with_capacity(b * t);
        for _ in 0..b {
            let s = self.rng.below(max_start as u64 + 1) as usize;
            x.extend_from_slice(&tokens[s..s + t]);
            y.extend_from_slice(&tokens[s + 1..s + t + 1]);
        }
        (x, y)
    }

    pub fn next(&mut self, tokens: &[u32], device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let (x, y) = self.next_host(tokens);
        let shape = (self.batch, self.seq);
        Ok((Tensor::from_vec(x, shape, device)?, Tensor::from_vec(y, shape, device)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_is_deterministic_and_in_bounds() {
        let tokens: Vec<u32> = (0..100).collect();
        let mut a = Sampler::new(1, "train", 4, 10);
        let mut b = Sampler::new(1, "train", 4, 10);
        for _ in 0..200 {
            let (x, y) = a.next_host(&tokens);
            assert_eq!((x.clone(), y.clone()), b.next_host(&tokens));
            for (xi, yi) in x.iter().zip(&y) {
                assert_eq!(xi + 1, *yi);
                assert!(*yi < 100);
            }
        }
    }

    #[test]
    fn text_file_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.txt");
        std::fs::write(&p, b"hello \xff world").unwrap();
        let e = Corpus::from_text_file(&p, 0.1, 4).unwrap_err().to_string();
        assert!(e.contains("not UTF-8") && e.contains("offset 6"), "{e}");
        std::fs::write(&p, "tiny").unwrap();
        let e = Corpus::from_text_file(&p, 0.1, 4).unwrap_err().to_string();
        assert!(e.contains("too small"), "{e}");
        let e = Corpus::from_text_file(&dir.path().join("missing.txt"), 0.1, 4).unwrap_err().to_string();
        assert!(e.contains("cannot read"), "{e}");
        std::fs::write(&p, "a".repeat(1000)).unwrap();
        let c = Corpus::from_text_file(&p, 0.1, 4).unwrap();
        assert_eq!((c.train.len(), c.val.len()), (900, 100));
    }
}
