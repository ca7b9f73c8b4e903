//! Tokenizers, all backed by the `tokenizers` crate so every prepared data folder carries a
//! `tokenizer.json` that any Hugging Face tool can load.
//!
//! Specs (`keel data prepare --tokenizer SPEC`):
//! - `byte`: one token per byte (vocab 256, id = byte value); saved as an equivalent byte-level
//!   BPE without merges;
//! - `bpe:N`: a byte-level BPE with vocabulary N trained on the inputs (`<|endoftext|>` is id 0);
//! - a path to a `tokenizer.json`;
//! - a GPT-2 style pair: a folder holding `encoder.json` and `vocab.bpe` (or the path of either);
//! - `hf:ORG/NAME`: `tokenizer.json` of a Hugging Face model repo, through the hub cache.

use super::DataError;
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// Names of end-of-text tokens, looked up in this order.
const EOT_NAMES: [&str; 5] = ["<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "[SEP]"];

#[derive(Debug, Clone, PartialEq)]
pub enum TokenizerSpec {
    Byte,
    Bpe(usize),
    File(PathBuf),
    Gpt2 { encoder: PathBuf, merges: PathBuf },
    Hub(String),
}

impl TokenizerSpec {
    pub fn parse(spec: &str) -> Result<Self, DataError> {
        let bad = |why: &str| DataError::Tokenizer { spec: spec.into(), why: why.into() };
        if spec == "byte" {
            return Ok(TokenizerSpec::Byte);
        }
        if let Some(n) = spec.strip_prefix("bpe:") {
            let n: usize = n.parse().map_err(|_| bad("bpe:N needs a vocabulary size, e.g. bpe:8192"))?;
            if !(257..=1 << 24).contains(&n) {
                return Err(bad(
                    "a byte-level BPE vocabulary must be larger than 256 (the byte alphabet) and at most 2^24",
                ));
            }
            return Ok(TokenizerSpec::Bpe(n));
        }
        if let Some(repo) = spec.strip_prefix("hf:") {
            if repo.split('/').count() != 2 || repo.split('/').any(str::is_empty) {
                return Err(bad("write a hub model as hf:ORG/NAME"));
            }
            return Ok(TokenizerSpec::Hub(repo.into()));
        }
        let path = PathBuf::from(spec);
        let dir = if path.is_dir() { Some(path.clone()) } else { None };
        let sibling = |name: &str| -> Option<PathBuf> {
            let base = dir.clone().or_else(|| path.parent().map(Path::to_path_buf))?;
            let p = base.join(name);
            p.exists().then_some(p)
        };
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if dir.is_some() || name == "encoder.json" || name == "vocab.bpe" {
            if let (Some(encoder), Some(merges)) = (sibling("encoder.json"), sibling("vocab.bpe")) {
                return Ok(TokenizerSpec::Gpt2 { encoder, merges });
            }
            if let Some(t) = dir.as_ref().map(|d| d.join("tokenizer.json")).filter(|p| p.exists()) {
                return Ok(TokenizerSpec::File(t));
            }
            return Err(bad("expected a folder with tokenizer.json, or with encoder.json and vocab.bpe"));
        }
        if !path.exists() {
            return Err(bad("no such file; use byte, bpe:N, a tokenizer.json path, a folder with encoder.json + vocab.bpe, or hf:ORG/NAME"));
        }
        Ok(TokenizerSpec::File(path))
    }
}

/// GPT-2's reversible byte -> printable character map (the byte-level alphabet).
pub fn byte_to_char() -> [char; 256] {
    let printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut map = ['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        map[b as usize] = char::from_u32(c).expect("valid char");
    }
    map
}

fn byte_level() -> ByteLevel {
    // No prefix space: decode(encode(text)) == text exactly.
    ByteLevel::new(false, true, true)
}

/// A loaded tokenizer and what keel needs to know about it.
#[derive(Clone)]
pub struct KeelTokenizer {
    pub inner: Tokenizer,
    /// Encode bytes directly (the `byte` spec): identical ids, much faster.
    bytes: bool,
    /// Appended after every document when the tokenizer has one.
    pub eot: Option<u32>,
    /// The spec it came from, recorded in meta.json.
    pub spec: String,
}

fn tk_err(spec: &str, e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer { spec: spec.into(), why: e.to_string() }
}

impl KeelTokenizer {
    fn wrap(inner: Tokenizer, spec: &str, bytes: bool) -> Self {
        let eot = if bytes { None } else { EOT_NAMES.iter().find_map(|n| inner.token_to_id(n)) };
        KeelTokenizer { inner, bytes, eot, spec: spec.into() }
    }

    /// Byte-level tokens (id = byte), as an equivalent BPE without merges.
    pub fn byte() -> Self {
        let chars = byte_to_char();
        let vocab: tokenizers::models::bpe::Vocab = (0..256u32).map(|b| (chars[b as usize].to_string(), b)).collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, Vec::new()).build().expect("byte vocabulary");
        let mut t = Tokenizer::new(bpe);
        t.with_pre_tokenizer(Some(byte_level()));
        t.with_decoder(Some(byte_level()));
        Self::wrap(t, "byte", true)
    }

    /// Loads a tokenizer that needs no training. `hub` resolves `hf:` specs.
    pub fn load(spec: &TokenizerSpec, raw: &str) -> Result<Self, DataError> {
        match spec {
            TokenizerSpec::Byte => Ok(Self::byte()),
            TokenizerSpec::Bpe(_) => Err(tk_err(raw, "a bpe:N tokenizer must be trained (keel data prepare)")),
            TokenizerSpec::File(p) => {
                crate::files::check_regular(p).map_err(|e| tk_err(raw, e.to_string()))?;
                let t = Tokenizer::from_file(p)
                    .map_err(|e| tk_err(raw, format!("{} does not parse as a tokenizer.json: {e}", p.display())))?;
                Ok(Self::wrap(t, raw, false))
            }
            TokenizerSpec::Gpt2 { encoder, merges } => {
                let bpe = BPE::from_file(&encoder.display().to_string(), &merges.display().to_string())
                    .build()
                    .map_err(|e| {
                        tk_err(
                            raw,
                            format!(
                                "{} + {} do not parse as a GPT-2 vocabulary: {e}",
                                encoder.display(),
                                merges.display()
                            ),
                        )
                    })?;
                let mut t = Tokenizer::new(bpe);
                t.with_pre_tokenizer(Some(byte_level()));
                t.with_decoder(Some(byte_level()));
                Ok(Self::wrap(t, raw, false))
            }
            TokenizerSpec::Hub(repo) => {
                let path = super::hub::fetch(repo, super::hub::RepoKind::Model, "tokenizer.json")?;
                let t = Tokenizer::from_file(&path)
                    .map_err(|e| tk_err(raw, format!("{} does not parse: {e}", path.display())))?;
                Ok(Self::wrap(t, raw, false))
            }
        }
    }

    /// Trains a byte-level BPE of `vocab_size` on `docs`.
    pub fn train_bpe<I: Iterator<Item = String> + Send>(vocab_size: usize, docs: I) -> Result<Self, DataError> {
        let spec = format!("bpe:{vocab_size}");
        let trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(0)
            .special_tokens(vec![AddedToken::from("<|endoftext|>", true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut t = Tokenizer::new(BPE::default());
        t.with_pre_tokenizer(Some(byte_level()));
        t.with_decoder(Some(byte_level()));
        let mut wrapper = tokenizers::models::TrainerWrapper::BpeTrainer(trainer);
        t.train(&mut wrapper, docs).map_err(|e| tk_err(&spec, e))?;
        Ok(Self::wrap(t, &spec, false))
    }

    pub fn vocab_size(&self) -> usize {
        if self.bytes {
            256
        } else {
            self.inner.get_vocab_size(true)
        }
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        if self.bytes {
            return Ok(text.bytes().map(u32::from).collect());
        }
        let enc = self.inner.encode_fast(text, false).map_err(|e| tk_err(&self.spec, e))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        if self.bytes {
            let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
            return Ok(String::from_utf8_lossy(&bytes).into_owned());
        }
        self.inner.decode(ids, true).map_err(|e| tk_err(&self.spec, e))
    }

    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        let json = self.inner.to_string(false).map_err(|e| tk_err(&self.spec, e))?;
        crate::files::write_atomic(path, json.as_bytes())
            .map_err(|source| DataError::Write { path: path.display().to_string(), source })
    }

    /// Loads a prepared folder's `tokenizer.json` (byte tokenizers get the byte fast path back).
    pub fn from_prepared(path: &Path, spec: &str) -> Result<Self, DataError> {
        if spec == "byte" {
            return Ok(Self::byte());
        }
        crate::files::check_regular(path).map_err(|e| tk_err(spec, e.to_string()))?;
        let t =
            Tokenizer::from_file(path).map_err(|e| tk_err(spec, format!("{} does not parse: {e}", path.display())))?;
        Ok(Self::wrap(t, spec, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokenizer_json_matches_raw_bytes() {
        let t = KeelTokenizer::byte();
        let text = "héllo wörld\n\t ✓ 123";
        let direct = t.encode(text).unwrap();
        assert_eq!(direct, text.bytes().map(u32::from).collect::<Vec<_>>());
        let via_json = t.inner.encode_fast(text, false).unwrap().get_ids().to_vec();
        assert_eq!(via_json, direct, "the saved tokenizer.json must give the same ids");
        assert_eq!(t.inner.decode(&direct, true).unwrap(), text);
        assert_eq!(t.vocab_size(), 256);
        assert_eq!(t.inner.get_vocab_size(true), 256);
    }

    #[test]
    fn spec_parsing() {
        assert_eq!(TokenizerSpec::parse("byte").unwrap(), TokenizerSpec::Byte);
        assert_eq!(TokenizerSpec::parse("bpe:512").unwrap(), TokenizerSpec::Bpe(512));
        assert_eq!(TokenizerSpec::parse("hf:gpt2/gpt2").unwrap(), TokenizerSpec::Hub("gpt2/gpt2".into()));
        assert!(TokenizerSpec::parse("bpe:x").is_err());
        assert!(TokenizerSpec::parse("bpe:100").is_err());
        assert!(TokenizerSpec::parse("hf:gpt2").is_err());
        assert!(TokenizerSpec::parse("/no/such/tokenizer.json").unwrap_err().to_string().contains("no such file"));
    }
}
