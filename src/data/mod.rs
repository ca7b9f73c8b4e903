//! Training data: the built-in synthetic corpus, a UTF-8 text file tokenized at the byte level
//! (vocab 256), or a folder prepared by `keel data prepare` (memory-mapped token shards), and a
//! seeded sampler of (B, T) windows.

pub mod documents;
pub mod hub;
pub mod identity;
pub mod prepare;
pub mod shard;
pub mod synthetic;
pub mod tokenizer;

use crate::config::DataConfig;
use crate::rng::Rng;
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};

/// A problem with the user's data. Always exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read data file {path}: {source}\n  check data.source (use \"synthetic\" for the built-in corpus)")]
    Read { path: String, source: std::io::Error },
    #[error("cannot read input {path}: {source}\n  check the --input paths given to keel data prepare")]
    ReadInput { path: String, source: std::io::Error },
    #[error("data file {path} is not UTF-8 text: invalid bytes at offset {offset}\n  convert it to UTF-8 (e.g. iconv -t UTF-8) or point data.source at a text file")]
    NotUtf8 { path: String, offset: usize },
    #[error("data file {path} is too small: {len} bytes give {split} bytes of {which} data, fewer than train.seq_len + 1 = {need}\n  use a larger file, a smaller train.seq_len, or adjust data.val_fraction")]
    TooSmall { path: String, len: usize, split: usize, which: &'static str, need: usize },
    #[error("{path} line {line} is not UTF-8 (invalid bytes at offset {offset} of the line)\n  convert the file to UTF-8, or pass --skip-invalid-utf8 to drop such lines (they are counted)")]
    NotUtf8Line { path: String, line: usize, offset: usize },
    #[error("{path} line {line}: {why}\n  each JSONL line must be an object with a string field \"text\"")]
    BadRecord { path: String, line: usize, why: String },
    #[error(
        "no usable input: {0}\n  give --input with text files, folders, globs, JSONL files or hf-dataset:ORG/NAME:FILE"
    )]
    NoInput(String),
    #[error("tokenizer `{spec}`: {why}")]
    Tokenizer { spec: String, why: String },
    #[error("could not get {what} from the Hugging Face hub: it is not in the cache ({cache}) and the hub could not be reached: {why}\n  use a local path instead, or fill the cache (HF_HOME) on a machine with network access and copy it here")]
    Hub { what: String, cache: String, why: String },
    #[error("{what} is not in the Hugging Face hub cache ({cache}), and {var} asks for offline mode, so keel does not try the network\n  fill the cache (HF_HOME) on a machine with network access and copy it here, use a local path instead, or unset {var} to download")]
    HubOffline { what: String, cache: String, var: &'static str },
    #[error("dataset {repo} holds none of the files keel reads here ({} files: {})\n  point keel at a repo (or a local folder) in the layout it reads", files.len(), hub::sample(files))]
    HubNoFiles { repo: String, files: Vec<String>, root: Option<PathBuf> },
    #[error("cannot read shard {path} of prepared data (data.path): {source}\n  the folder's meta.json lists it: restore the shard, or prepare the data again with `keel data prepare`")]
    ShardUnreadable { path: String, source: std::io::Error },
    #[error("prepared data folder {path} (data.path) does not exist{seen_from}\n  {fix}")]
    MissingPrepared { path: String, seen_from: String, fix: String },
    #[error("{path} is not a valid keel token shard: {why}\n  prepare the data again with `keel data prepare`")]
    BadShard { path: String, why: String },
    #[error("{path} holds token id {id} at token {index}, outside the vocabulary of {vocab} (vocab_size in {meta})\n  the shard is damaged or meta.json was edited: prepare the data again with `keel data prepare` (or restore meta.json's vocab_size)")]
    TokenOutOfRange { path: String, index: usize, id: u32, vocab: usize, meta: String },
    #[error("{path} is not a prepared data folder: {why}\n  create it with `keel data prepare --input ... --tokenizer ... --out {path}`")]
    BadPrepared { path: String, why: String },
    #[error("data in {path} was prepared with tokenizer `{found}`, but the config expects `{expected}` (data.tokenizer)\n  point data.path at data prepared with `{expected}`, or change data.tokenizer")]
    TokenizerMismatch { path: String, found: String, expected: String },
    #[error("prepared data {path} has no {which} shard with at least train.seq_len + 1 = {need} tokens (the longest has {longest})\n  prepare more data (or use a larger --val-fraction), or use a smaller train.seq_len")]
    TooFewTokens { path: String, which: &'static str, longest: usize, need: usize },
    #[error("the inputs hold {documents} document(s), too few for --val-fraction {val_fraction} to hold one out for validation (documents are JSONL records, or runs of text lines ending at a blank line or after 64 KiB)\n  add inputs or blank lines between documents, or pass --val-fraction 0 to prepare all of it for training and validate on another folder")]
    NoValidation { documents: u64, val_fraction: f64 },
    #[error("prepared data {path} has an empty validation split (0 tokens; prepared with --val-fraction {val_fraction}, {documents} documents in all)\n  prepare it again with a --val-fraction above 0 (e.g. the default 0.05), or prepare a folder with more documents")]
    EmptyValidation { path: String, val_fraction: f64, documents: u64 },
    #[error("prepared data {path} does not match its meta.json: {changed}\n  its shards were swapped, replaced or modified after `keel data prepare`: restore them, or prepare the data again (a resume that should go on knowingly on the changed data takes --accept-data-change)")]
    ShardsChanged { path: String, changed: String },
    #[error("cannot write {path}: {source}\n  check that the output folder is writable and has space")]
    Write { path: String, source: std::io::Error },
}

/// Makes `data.path` and a file `data.source` absolute (against the current folder), so that a
/// run's `config.toml` names its data from anywhere: `keel eval`, `keel probe --run` and resume
/// work whatever folder they are started from.
pub fn absolute_paths(cfg: &mut DataConfig) {
    let absolute = |p: &str| std::path::absolute(p).map(|a| a.display().to_string()).unwrap_or_else(|_| p.to_string());
    if let Some(p) = &cfg.path {
        cfg.path = Some(absolute(p));
    }
    if cfg.source != "synthetic" && !cfg.source.is_empty() {
        cfg.source = absolute(&cfg.source);
    }
}

/// The identity (see [`identity`]) of the data `cfg` names, read from disk (a prepared folder's
/// shards are opened to checksum them).
pub fn identity_of(cfg: &DataConfig) -> Result<String, DataError> {
    if let Some(dir) = &cfg.path {
        let dir = Path::new(dir);
        return prepare::identity(dir, &prepare::open_prepared_unchecked(dir)?.sha256);
    }
    if cfg.source == "synthetic" {
        return Ok(identity::synthetic(cfg.synthetic_seed, cfg.synthetic_bytes));
    }
    let path = Path::new(&cfg.source);
    let bytes = crate::files::read(path).map_err(|source| DataError::Read { path: cfg.source.clone(), source })?;
    Ok(identity::file(&bytes))
}

/// Byte-level vocabulary size.
pub const BYTE_VOCAB: usize = 256;

/// Tokens in memory or in memory-mapped shards.
#[derive(Debug, Clone)]
pub enum Tokens {
    Memory(Vec<u32>),
    Shards(Vec<std::sync::Arc<shard::Shard>>),
}

impl From<Vec<u32>> for Tokens {
    fn from(v: Vec<u32>) -> Self {
        Tokens::Memory(v)
    }
}

impl Tokens {
    pub fn len(&self) -> usize {
        match self {
            Tokens::Memory(v) => v.len(),
            Tokens::Shards(s) => s.iter().map(|s| s.len()).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lengths of the contiguous parts (a window never crosses two).
    fn part_lens(&self) -> Vec<usize> {
        match self {
            Tokens::Memory(v) => vec![v.len()],
            Tokens::Shards(s) => s.iter().map(|s| s.len()).collect(),
        }
    }

    /// Copies tokens [start, start + out.len()) of part `part` into `out`.
    fn read(&self, part: usize, start: usize, out: &mut [u32]) {
        match self {
            Tokens::Memory(v) => out.copy_from_slice(&v[start..start + out.len()]),
            Tokens::Shards(s) => s[part].read(start, out),
        }
    }

    /// All tokens, concatenated (for tests and small data).
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Tokens::Memory(v) => v.clone(),
            Tokens::Shards(s) => s.iter().flat_map(|s| s.to_vec()).collect(),
        }
    }
}

/// A tokenized corpus with a held-out split.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub train: Tokens,
    pub val: Tokens,
    pub vocab_size: usize,
    /// What the corpus is, for provenance.
    pub description: String,
    /// What it is, as one comparable string (see [`identity`]), so that a resume on other data
    /// is noticed.
    pub identity: String,
    /// Prepared shards that differ from their folder's meta.json (loaded only when accepted).
    pub changed_shards: Vec<String>,
}

/// Byte-level ids are below [`BYTE_VOCAB`] by construction (the synthetic corpus and text files),
/// so only prepared shards need the vocabulary check of `prepare::open_split`.
fn bytes_to_tokens(s: &[u8]) -> Vec<u32> {
    s.iter().map(|&b| b as u32).collect()
}

impl Corpus {
    /// Loads the corpus named by `data.source`; `seq_len` bounds the smallest usable split.
    pub fn load(cfg: &DataConfig, seq_len: usize) -> Result<Corpus, DataError> {
        Self::load_accepting(cfg, seq_len, false)
    }

    /// [`Corpus::load`], except that with `accept_changed_shards` prepared shards that differ
    /// from their meta.json are loaded (and listed in `changed_shards`) instead of refused.
    pub fn load_accepting(cfg: &DataConfig, seq_len: usize, accept_changed_shards: bool) -> Result<Corpus, DataError> {
        if let Some(path) = &cfg.path {
            return prepare::load_prepared(Path::new(path), cfg.tokenizer.as_deref(), seq_len, accept_changed_shards);
        }
        if cfg.source == "synthetic" {
            let train =
                synthetic::generate(Rng::stream(cfg.synthetic_seed, "synthetic-train").next_u64(), cfg.synthetic_bytes);
            let val_bytes = (cfg.synthetic_bytes / 10).max(seq_len * 64);
            let val = synthetic::generate(Rng::stream(cfg.synthetic_seed, "synthetic-val").next_u64(), val_bytes);
            return Ok(Corpus {
                train: bytes_to_tokens(train.as_bytes()).into(),
                val: bytes_to_tokens(val.as_bytes()).into(),
                vocab_size: BYTE_VOCAB,
                description: format!("synthetic tasks (seed {}, {} bytes)", cfg.synthetic_seed, train.len()),
                identity: identity::synthetic(cfg.synthetic_seed, cfg.synthetic_bytes),
                changed_shards: Vec::new(),
            });
        }
        Self::from_text_file(Path::new(&cfg.source), cfg.val_fraction, seq_len)
    }

    /// Byte-level tokens of a UTF-8 file; the last `val_fraction` of it is the validation split.
    pub fn from_text_file(path: &Path, val_fraction: f64, seq_len: usize) -> Result<Corpus, DataError> {
        let shown = path.display().to_string();
        let bytes = crate::files::read(path).map_err(|source| DataError::Read { path: shown.clone(), source })?;
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
            train: bytes_to_tokens(train).into(),
            val: bytes_to_tokens(val).into(),
            vocab_size: BYTE_VOCAB,
            description: format!("bytes of {shown} ({} bytes)", bytes.len()),
            identity: identity::file(&bytes),
            changed_shards: Vec::new(),
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

    /// The sampler's position: its whole state is its RNG.
    pub fn position(&self) -> [u64; 4] {
        self.rng.state()
    }

    pub fn seek(&mut self, position: [u64; 4]) {
        self.rng = Rng::from_state(position);
    }

    /// Host-side batch: (inputs, targets), each B*T tokens row-major. Windows are uniform over
    /// every valid start and never run past the end of a part (a shard or the in-memory text).
    pub fn next_host(&mut self, tokens: &Tokens) -> (Vec<u32>, Vec<u32>) {
        let (b, t) = (self.batch, self.seq);
        let starts: Vec<usize> = tokens.part_lens().iter().map(|&n| n.saturating_sub(t)).collect();
        let total: usize = starts.iter().sum();
        assert!(total > 0, "no window of {} tokens fits the data", t + 1);
        let mut x = Vec::with_capacity(b * t);
        let mut y = Vec::with_capacity(b * t);
        let mut window = vec![0u32; t + 1];
        for _ in 0..b {
            let mut s = self.rng.below(total as u64) as usize;
            let mut part = 0;
            while s >= starts[part] {
                s -= starts[part];
                part += 1;
            }
            tokens.read(part, s, &mut window);
            x.extend_from_slice(&window[..t]);
            y.extend_from_slice(&window[1..]);
        }
        (x, y)
    }

    pub fn next(&mut self, tokens: &Tokens, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
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
        let tokens: Tokens = (0..100).collect::<Vec<u32>>().into();
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
        assert_eq!(c.train.to_vec()[..3], [97, 97, 97]);
    }
}
