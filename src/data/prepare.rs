//! `keel data prepare`: tokenize inputs once into shards, and load such a folder for training.
//!
//! Output folder:
//! - `train_000.bin`, `train_001.bin`, ... and `val_000.bin`, ...: token shards (see `shard.rs`),
//!   documents concatenated in input order, each followed by the tokenizer's end-of-text token
//!   when it has one;
//! - `tokenizer.json`: the tokenizer used (loadable by the `tokenizers` crate and Python);
//! - `meta.json`: inputs with sizes and sha256, token and document counts, vocabulary size,
//!   tokenizer spec, split seed and fraction, keel version.
//!
//! Preparation streams: documents are read, encoded in parallel batches and written as they
//! come, so a corpus larger than memory works (BPE training keeps only word counts).

use super::documents::{Documents, Input, InvalidUtf8};
use super::shard::{token_width, Shard, ShardWriter};
use super::tokenizer::{KeelTokenizer, TokenizerSpec};
use super::{Corpus, DataError, Tokens};
use crate::rng::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

pub const META_FILE: &str = "meta.json";
/// The tokenizer a prepared folder was made with (also a run directory's name for its own copy).
pub const TOKENIZER_FILE: &str = "tokenizer.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputMeta {
    pub origin: String,
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SplitMeta {
    pub tokens: u64,
    pub documents: u64,
    pub shards: Vec<String>,
    /// Each shard's size in bytes, in the order of `shards` (absent from folders of older keels).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shard_bytes: Vec<u64>,
    /// Each shard's checksum (see `shard::Scan::sha256`), checked whenever the folder is opened,
    /// so that a shard swapped, replaced or modified since preparation is noticed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shard_sha256: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub keel_version: String,
    pub shard_format_version: u32,
    pub tokenizer: String,
    pub vocab_size: usize,
    pub eot_token: Option<u32>,
    pub token_bytes: usize,
    pub val_fraction: f64,
    pub split_seed: u64,
    pub inputs: Vec<InputMeta>,
    pub train: SplitMeta,
    pub val: SplitMeta,
    pub skipped_invalid_utf8_lines: u64,
    /// No document drew validation, so the last document was held out (see `prepare`).
    #[serde(default)]
    pub val_is_last_document: bool,
    pub seconds: f64,
}

pub struct PrepareOptions {
    pub tokenizer: String,
    pub val_fraction: f64,
    pub seed: u64,
    pub on_invalid_utf8: InvalidUtf8,
    /// Tokens per shard before a new one is started.
    pub shard_tokens: u64,
    pub progress: bool,
}

/// Writes one split's shards, starting a new shard every `limit` tokens.
struct SplitWriter<'a> {
    dir: &'a Path,
    name: &'static str,
    width: usize,
    limit: u64,
    current: Option<ShardWriter>,
    meta: SplitMeta,
}

impl SplitWriter<'_> {
    fn push_doc(&mut self, tokens: &[u32]) -> Result<(), DataError> {
        let werr = |path: String| move |source| DataError::Write { path, source };
        if self.current.as_ref().is_some_and(|w| w.count() >= self.limit) {
            self.close()?;
        }
        if self.current.is_none() {
            let file = format!("{}_{:03}.bin", self.name, self.meta.shards.len());
            let path = self.dir.join(&file);
            self.current = Some(ShardWriter::create(&path, self.width).map_err(werr(path.display().to_string()))?);
            self.meta.shards.push(file);
        }
        let w = self.current.as_mut().expect("open shard");
        w.push(tokens).map_err(werr(self.dir.display().to_string()))?;
        self.meta.tokens += tokens.len() as u64;
        self.meta.documents += 1;
        Ok(())
    }

    fn close(&mut self) -> Result<(), DataError> {
        if let Some(w) = self.current.take() {
            w.finish().map_err(|source| DataError::Write { path: self.dir.display().to_string(), source })?;
        }
        Ok(())
    }
}

fn progress_bar(total: u64, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    pb
}

/// Tokenizes `inputs` into `out` (which must exist and be empty). Returns the written meta.
pub fn prepare(inputs: &[Input], out: &Path, opts: &PrepareOptions) -> Result<Meta, DataError> {
    let start = Instant::now();
    let total: u64 = inputs.iter().map(|i| i.bytes).sum();
    let spec = TokenizerSpec::parse(&opts.tokenizer)?;
    let tokenizer = match spec {
        TokenizerSpec::Bpe(n) => {
            let pb = progress_bar(total, opts.progress);
            pb.set_message("training BPE");
            let mut docs = Documents::new(inputs, opts.on_invalid_utf8);
            let mut failure = None;
            let iter = std::iter::from_fn(|| match docs.next_doc() {
                Ok(d) => {
                    pb.set_position(docs.bytes_read);
                    d
                }
                Err(e) => {
                    failure = Some(e);
                    None
                }
            });
            let t = KeelTokenizer::train_bpe(n, iter)?;
            pb.finish_and_clear();
            if let Some(e) = failure {
                return Err(e);
            }
            t
        }
        _ => KeelTokenizer::load(&spec, &opts.tokenizer)?,
    };
    let vocab_size = tokenizer.vocab_size();
    let width = token_width(vocab_size);
    let mut train = SplitWriter {
        dir: out,
        name: "train",
        width,
        limit: opts.shard_tokens,
        current: None,
        meta: SplitMeta::default(),
    };
    let mut val = SplitWriter {
        dir: out,
        name: "val",
        width,
        limit: opts.shard_tokens,
        current: None,
        meta: SplitMeta::default(),
    };
    let mut split_rng = Rng::stream(opts.seed, "document-split");
    let mut docs = Documents::new(inputs, opts.on_invalid_utf8);
    let pb = progress_bar(total, opts.progress);
    pb.set_message("tokenizing");
    let mut held: Option<(Vec<u32>, bool)> = None;
    loop {
        // A batch of documents, encoded in parallel, written in order.
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        while batch_bytes < (4 << 20) && batch.len() < 4096 {
            match docs.next_doc()? {
                Some(d) => {
                    batch_bytes += d.len();
                    batch.push(d);
                }
                None => break,
            }
        }
        if batch.is_empty() {
            break;
        }
        let encoded: Vec<Result<Vec<u32>, DataError>> = batch.par_iter().map(|d| tokenizer.encode(d)).collect();
        for mut ids in encoded.into_iter().collect::<Result<Vec<_>, _>>()? {
            if let Some(eot) = tokenizer.eot {
                ids.push(eot);
            }
            let to_val = split_rng.uniform() < opts.val_fraction;
            // The previous document is written once the next one exists: the last one is held
            // back until the end, where it may be needed for an otherwise empty split.
            if let Some((prev, prev_to_val)) = held.replace((ids, to_val)) {
                if prev_to_val { &mut val } else { &mut train }.push_doc(&prev)?;
            }
        }
        pb.set_position(docs.bytes_read);
        crate::fault::pause_point("prepare-batch");
    }
    pb.finish_and_clear();
    // The last document goes where it drew, except that it goes to validation when no earlier
    // document did (and training keeps at least one), and to training when training is empty.
    let mut val_is_last_document = false;
    if let Some((ids, drew_val)) = held {
        let forced_val = !drew_val && opts.val_fraction > 0.0 && val.meta.documents == 0 && train.meta.documents > 0;
        let to_val = (drew_val && train.meta.documents > 0) || forced_val;
        val_is_last_document = forced_val;
        if to_val { &mut val } else { &mut train }.push_doc(&ids)?;
    }
    train.close()?;
    val.close()?;
    if opts.val_fraction > 0.0 && val.meta.documents == 0 {
        for f in train.meta.shards.iter().chain(&val.meta.shards) {
            let _ = std::fs::remove_file(out.join(f));
        }
        return Err(DataError::NoValidation { documents: train.meta.documents, val_fraction: opts.val_fraction });
    }
    // A second, sequential read of the inputs: cheap next to tokenization.
    let mut input_meta = Vec::new();
    for input in inputs {
        let sha256 = crate::files::sha256_file(&input.path)
            .map_err(|source| DataError::ReadInput { path: input.path.display().to_string(), source })?;
        input_meta.push(InputMeta {
            origin: input.origin.clone(),
            path: input.path.display().to_string(),
            bytes: input.bytes,
            sha256,
        });
    }
    for split in [&mut train.meta, &mut val.meta] {
        for f in &split.shards {
            let scan = Shard::open(&out.join(f))?.scan(u32::MAX);
            split.shard_bytes.push(scan.bytes);
            split.shard_sha256.push(scan.sha256);
        }
    }
    tokenizer.save(&out.join(TOKENIZER_FILE))?;
    let meta = Meta {
        keel_version: env!("CARGO_PKG_VERSION").into(),
        shard_format_version: super::shard::VERSION,
        tokenizer: opts.tokenizer.clone(),
        vocab_size,
        eot_token: tokenizer.eot,
        token_bytes: width,
        val_fraction: opts.val_fraction,
        split_seed: opts.seed,
        inputs: input_meta,
        train: train.meta,
        val: val.meta,
        skipped_invalid_utf8_lines: docs.skipped_lines,
        val_is_last_document,
        seconds: start.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&meta).expect("meta serializes");
    let path = out.join(META_FILE);
    crate::files::write_atomic(&path, json.as_bytes())
        .map_err(|source| DataError::Write { path: path.display().to_string(), source })?;
    Ok(meta)
}

/// The files an unfinished preparation left in `dir` (shards, shards being written, its
/// tokenizer), when `dir` holds no `meta.json` (written last) and nothing else but keel's scratch
/// files; empty otherwise, so that no other file is ever taken for one.
pub fn unfinished_files(dir: &Path) -> Vec<std::path::PathBuf> {
    if dir.join(META_FILE).exists() {
        return Vec::new();
    }
    let Ok(entries) = crate::files::real_entries(dir) else { return Vec::new() };
    let is_shard = |name: &str| {
        let stem = name.strip_suffix(".bin.tmp").or_else(|| name.strip_suffix(".bin"));
        stem.and_then(|s| s.strip_prefix("train_").or_else(|| s.strip_prefix("val_")))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let name = |p: &std::path::PathBuf| p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
    let all_ours = entries.iter().all(|p| p.is_file() && (is_shard(&name(p)) || name(p) == TOKENIZER_FILE));
    if all_ours && entries.iter().any(|p| is_shard(&name(p))) {
        entries
    } else {
        Vec::new()
    }
}

/// The identity (see `data::identity`) of the prepared folder `dir` whose shards have the
/// checksums `shard_sha256` (as found, train then validation).
pub fn identity(dir: &Path, shard_sha256: &[String]) -> Result<String, DataError> {
    let meta_path = dir.join(META_FILE);
    let bad = |why: String| DataError::BadPrepared { path: dir.display().to_string(), why };
    let bytes = crate::files::read(&meta_path).map_err(|e| bad(format!("cannot read {}: {e}", meta_path.display())))?;
    let meta = serde_json::from_slice(&bytes).map_err(|e| bad(format!("{META_FILE} does not parse: {e}")))?;
    let tokenizer = crate::files::read(&dir.join(TOKENIZER_FILE)).unwrap_or_default();
    Ok(super::identity::prepared(meta, &tokenizer, shard_sha256))
}

/// Removes the [`unfinished_files`] of `dir`: how many were removed, of how many.
pub fn remove_unfinished(dir: &Path) -> (usize, usize) {
    let files = unfinished_files(dir);
    let removed = files.iter().filter(|f| std::fs::remove_file(f).is_ok()).count();
    (removed, files.len())
}

pub fn read_meta(dir: &Path) -> Result<Meta, DataError> {
    let shown = dir.display().to_string();
    if std::fs::symlink_metadata(dir).is_err() {
        let (seen_from, fix) = if dir.is_relative() {
            let cwd = std::env::current_dir().map(|c| c.display().to_string()).unwrap_or_default();
            (
                format!(" as seen from {cwd}: the path is relative to the folder keel was started in"),
                "run keel from the folder the data path was given in, or give data.path as an absolute path (runs started by this keel record it so)".to_string(),
            )
        } else {
            (
                String::new(),
                "it was moved or deleted: point data.path at its new place (a run: keel train --resume RUN --set data.path=NEW --force), or prepare it again with `keel data prepare`".to_string(),
            )
        };
        return Err(DataError::MissingPrepared { path: shown, seen_from, fix });
    }
    let path = dir.join(META_FILE);
    let text = crate::files::read_to_string(&path).map_err(|e| DataError::BadPrepared {
        path: shown.clone(),
        why: format!("cannot read {}: {e}", path.display()),
    })?;
    serde_json::from_str(&text)
        .map_err(|e| DataError::BadPrepared { path: shown, why: format!("{} does not parse: {e}", path.display()) })
}

/// A split's shards, opened and checked.
struct OpenSplit {
    shards: Vec<Arc<Shard>>,
    /// Each shard's checksum as found now.
    sha256: Vec<String>,
    /// Each shard whose size or checksum differs from what meta.json recorded, described.
    changed: Vec<String>,
}

/// Opens a split's shards and checks them against meta.json: the token count, every id below
/// the vocabulary (a damaged shard or an edited vocab_size would otherwise surface as an index
/// error deep inside the embedding), and, in the same parallel pass, each shard's checksum.
fn open_split(dir: &Path, split: &SplitMeta, which: &str, vocab: usize) -> Result<OpenSplit, DataError> {
    let shards: Vec<Arc<Shard>> =
        split.shards.iter().map(|f| Shard::open(&dir.join(f)).map(Arc::new)).collect::<Result<_, _>>()?;
    let found: u64 = shards.iter().map(|s| s.len() as u64).sum();
    if found != split.tokens {
        return Err(DataError::BadPrepared {
            path: dir.display().to_string(),
            why: format!("meta.json promises {} {which} tokens but the shards hold {found}", split.tokens),
        });
    }
    let limit = u32::try_from(vocab).unwrap_or(u32::MAX);
    let (mut sha256, mut changed) = (Vec::new(), Vec::new());
    for (i, s) in shards.iter().enumerate() {
        let scan = s.scan(limit);
        if let (Some(bytes), Some(sum)) = (split.shard_bytes.get(i), split.shard_sha256.get(i)) {
            if (*bytes, sum) != (scan.bytes, &scan.sha256) {
                changed.push(format!(
                    "{}: {} bytes, checksum {}, where meta.json records {bytes} bytes, checksum {}",
                    split.shards[i],
                    scan.bytes,
                    &scan.sha256[..12],
                    &sum[..sum.len().min(12)]
                ));
            }
        }
        // Never accepted, changed data or not: the embedding could not look such an id up.
        if let Some((index, id)) = scan.first_at_or_above {
            return Err(DataError::TokenOutOfRange {
                path: s.path.display().to_string(),
                index,
                id,
                vocab,
                meta: dir.join(META_FILE).display().to_string(),
            });
        }
        sha256.push(scan.sha256);
    }
    Ok(OpenSplit { shards, sha256, changed })
}

/// A prepared folder: its meta and its memory-mapped train and validation shards.
pub struct Prepared {
    pub meta: Meta,
    pub train: Vec<Arc<Shard>>,
    pub val: Vec<Arc<Shard>>,
    /// The checksums of the shards as they are now, train then validation.
    pub sha256: Vec<String>,
    /// Shards that differ from what meta.json recorded at preparation, described; see
    /// [`Prepared::check_unchanged`].
    pub changed: Vec<String>,
}

impl Prepared {
    /// Fails unless every shard matches the size and checksum meta.json recorded.
    pub fn check_unchanged(&self, dir: &Path) -> Result<(), DataError> {
        if self.changed.is_empty() {
            return Ok(());
        }
        Err(DataError::ShardsChanged { path: dir.display().to_string(), changed: self.changed.join("; ") })
    }
}

/// Opens a prepared folder, checking every shard (see `open_split`); shards that differ from
/// meta.json are listed in [`Prepared::changed`], not refused: callers decide.
pub fn open_prepared_unchecked(dir: &Path) -> Result<Prepared, DataError> {
    let meta = read_meta(dir)?;
    let train = open_split(dir, &meta.train, "training", meta.vocab_size)?;
    let val = open_split(dir, &meta.val, "validation", meta.vocab_size)?;
    let sha256 = train.sha256.into_iter().chain(val.sha256).collect();
    let changed = train.changed.into_iter().chain(val.changed).collect();
    Ok(Prepared { meta, train: train.shards, val: val.shards, sha256, changed })
}

/// Opens a prepared folder whose shards all match meta.json.
pub fn open_prepared(dir: &Path) -> Result<Prepared, DataError> {
    let prepared = open_prepared_unchecked(dir)?;
    prepared.check_unchanged(dir)?;
    Ok(prepared)
}

/// Opens a prepared folder for training: shards memory-mapped, vocabulary from meta.json. Shards
/// that differ from meta.json are refused unless `accept_changed_shards` (a resume with
/// `--accept-data-change`), which lists them in the corpus's identity instead.
pub fn load_prepared(
    dir: &Path,
    expected_tokenizer: Option<&str>,
    seq_len: usize,
    accept_changed_shards: bool,
) -> Result<Corpus, DataError> {
    let prepared = open_prepared_unchecked(dir)?;
    if !accept_changed_shards {
        prepared.check_unchanged(dir)?;
    }
    let identity = identity(dir, &prepared.sha256)?;
    let Prepared { meta, train, val, changed, .. } = prepared;
    if let Some(expected) = expected_tokenizer {
        if expected != meta.tokenizer {
            let path = dir.display().to_string();
            return Err(DataError::TokenizerMismatch { path, found: meta.tokenizer, expected: expected.into() });
        }
    }
    for (shards, which) in [(&train, "training"), (&val, "validation")] {
        if which == "validation" && shards.iter().all(|s| s.is_empty()) {
            return Err(DataError::EmptyValidation {
                path: dir.display().to_string(),
                val_fraction: meta.val_fraction,
                documents: meta.train.documents + meta.val.documents,
            });
        }
        let longest = shards.iter().map(|s| s.len()).max().unwrap_or(0);
        if longest < seq_len + 1 {
            return Err(DataError::TooFewTokens { path: dir.display().to_string(), which, longest, need: seq_len + 1 });
        }
    }
    Ok(Corpus {
        train: Tokens::Shards(train),
        val: Tokens::Shards(val),
        vocab_size: meta.vocab_size,
        identity,
        changed_shards: changed,
        description: format!(
            "{} ({} tokenizer, {} train + {} val tokens)",
            dir.display(),
            meta.tokenizer,
            meta.train.tokens,
            meta.val.tokens
        ),
    })
}
