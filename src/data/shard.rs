//! Token shards on disk, memory-mapped for training.
//!
//! Format (version 1), all integers little-endian:
//!
//! ```text
//! offset  size  field
//!      0     8  magic "KEELTOKS"
//!      8     4  format version (u32) = 1
//!     12     4  token width in bytes (u32): 2 (u16 tokens) or 4 (u32 tokens)
//!     16     8  token count N (u64)
//!     24     8  reserved, 0
//!     32  N*w  tokens
//! ```
//!
//! A writer streams tokens to a temporary name and renames it once the header holds the final
//! count, so a shard under its final name is always complete.

use super::DataError;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"KEELTOKS";
pub const VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 32;

/// Bytes per token for a vocabulary: u16 while every id fits.
pub fn token_width(vocab_size: usize) -> usize {
    if vocab_size <= 1 << 16 {
        2
    } else {
        4
    }
}

fn header(width: usize, count: u64) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(width as u32).to_le_bytes());
    h[16..24].copy_from_slice(&count.to_le_bytes());
    h
}

pub struct ShardWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    width: usize,
    count: u64,
}

impl ShardWriter {
    pub fn create(path: &Path, width: usize) -> std::io::Result<Self> {
        let tmp = path.with_extension("bin.tmp");
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        out.write_all(&header(width, 0))?;
        Ok(ShardWriter { out, tmp, path: path.to_path_buf(), width, count: 0 })
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn push(&mut self, tokens: &[u32]) -> std::io::Result<()> {
        if self.width == 2 {
            let bytes: Vec<u8> = tokens.iter().flat_map(|&t| (t as u16).to_le_bytes()).collect();
            self.out.write_all(&bytes)?;
        } else {
            let bytes: Vec<u8> = tokens.iter().flat_map(|&t| t.to_le_bytes()).collect();
            self.out.write_all(&bytes)?;
        }
        self.count += tokens.len() as u64;
        Ok(())
    }

    /// Writes the final header, syncs and renames into place.
    pub fn finish(self) -> std::io::Result<u64> {
        let mut f = self.out.into_inner().map_err(|e| e.into_error())?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&header(self.width, self.count))?;
        f.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        Ok(self.count)
    }
}

/// The chunk of [`Shard::scan`] and of its checksum.
const CHUNK_BYTES: usize = 1 << 20;

/// What one pass over a shard finds.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    /// The first token at or above the limit, as (index, id).
    pub first_at_or_above: Option<(usize, u32)>,
    /// The file's size.
    pub bytes: u64,
    /// The file's checksum, recorded in `meta.json`: the sha256 of the concatenated sha256s of its
    /// 1 MiB chunks (header included), so that checking it costs one parallel pass.
    pub sha256: String,
}

/// A memory-mapped shard.
#[derive(Debug)]
pub struct Shard {
    map: memmap2::Mmap,
    width: usize,
    len: usize,
    pub path: PathBuf,
}

impl Shard {
    pub fn open(path: &Path) -> Result<Shard, DataError> {
        let shown = path.display().to_string();
        let corrupt = |why: String| DataError::BadShard { path: shown.clone(), why };
        let file = crate::files::open_regular(path)
            .map_err(|source| DataError::ShardUnreadable { path: shown.clone(), source })?;
        // Safety: keel only reads the mapping; shards are written once and renamed into place.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|source| DataError::ShardUnreadable { path: shown.clone(), source })?;
        if map.len() < HEADER_BYTES {
            return Err(corrupt(format!("{} bytes is shorter than the {HEADER_BYTES}-byte header", map.len())));
        }
        if &map[..8] != MAGIC {
            return Err(corrupt("wrong magic number (not a keel token shard)".into()));
        }
        let version = u32::from_le_bytes(map[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(corrupt(format!("format version {version}, this keel reads version {VERSION}")));
        }
        let width = u32::from_le_bytes(map[12..16].try_into().expect("4 bytes")) as usize;
        if width != 2 && width != 4 {
            return Err(corrupt(format!("token width {width} bytes (expected 2 or 4)")));
        }
        let count = u64::from_le_bytes(map[16..24].try_into().expect("8 bytes")) as usize;
        let expected = HEADER_BYTES + count * width;
        if map.len() != expected {
            return Err(corrupt(format!(
                "truncated or padded: the header promises {count} tokens ({expected} bytes) but the file has {} bytes",
                map.len()
            )));
        }
        Ok(Shard { map, width, len: count, path: path.to_path_buf() })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Copies tokens [start, start + out.len()) into `out`.
    pub fn read(&self, start: usize, out: &mut [u32]) {
        assert!(start + out.len() <= self.len, "read past the end of {}", self.path.display());
        let body = &self.map[HEADER_BYTES..];
        if self.width == 2 {
            for (i, o) in out.iter_mut().enumerate() {
                let at = (start + i) * 2;
                *o = u16::from_le_bytes([body[at], body[at + 1]]) as u32;
            }
        } else {
            for (i, o) in out.iter_mut().enumerate() {
                let at = (start + i) * 4;
                *o = u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
            }
        }
    }

    /// The first token whose id is `limit` or more, as (index, id), and the file's checksum (see
    /// [`Scan`]): one parallel pass over the mapping, a max and a sha256 per 1 MiB chunk, then a
    /// scan of the first offending chunk.
    pub fn scan(&self, limit: u32) -> Scan {
        use rayon::prelude::*;
        use sha2::Digest;
        let w = self.width;
        let max_of = |chunk: &[u8]| -> u32 {
            if w == 2 {
                chunk.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32).max().unwrap_or(0)
            } else {
                chunk.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).max().unwrap_or(0)
            }
        };
        // Chunks of the whole file: the header (32 bytes) and 1 MiB are multiples of the token
        // width, so every chunk starts on a token.
        let chunks: Vec<([u8; 32], u32)> = self
            .map
            .par_chunks(CHUNK_BYTES)
            .enumerate()
            .map(|(i, c)| {
                let tokens = if i == 0 { &c[HEADER_BYTES.min(c.len())..] } else { c };
                (sha2::Sha256::digest(c).into(), max_of(tokens))
            })
            .collect();
        let mut whole = sha2::Sha256::new();
        for (digest, _) in &chunks {
            whole.update(digest);
        }
        let first_at_or_above = chunks.iter().position(|c| c.1 >= limit).and_then(|bad| {
            let from_byte = (bad * CHUNK_BYTES).max(HEADER_BYTES);
            let to_byte = ((bad + 1) * CHUNK_BYTES).min(self.map.len());
            let start = (from_byte - HEADER_BYTES) / w;
            let mut tokens = vec![0u32; (to_byte - from_byte) / w];
            self.read(start, &mut tokens);
            tokens.iter().position(|&t| t >= limit).map(|i| (start + i, tokens[i]))
        });
        Scan { first_at_or_above, bytes: self.map.len() as u64, sha256: format!("{:x}", whole.finalize()) }
    }

    /// The first token whose id is `limit` or more, as (index, id) (see [`Shard::scan`]).
    pub fn first_at_or_above(&self, limit: u32) -> Option<(usize, u32)> {
        self.scan(limit).first_at_or_above
    }

    pub fn to_vec(&self) -> Vec<u32> {
        let mut v = vec![0; self.len];
        self.read(0, &mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        for (width, tokens) in [(2usize, vec![0u32, 1, 65535, 7]), (4, vec![0, 70000, 1 << 31, 3])] {
            let p = dir.path().join(format!("s{width}.bin"));
            let mut w = ShardWriter::create(&p, width).unwrap();
            w.push(&tokens[..2]).unwrap();
            w.push(&tokens[2..]).unwrap();
            assert_eq!(w.finish().unwrap(), 4);
            let s = Shard::open(&p).unwrap();
            assert_eq!(s.to_vec(), tokens);
            let mut mid = [0u32; 2];
            s.read(1, &mut mid);
            assert_eq!(mid, [tokens[1], tokens[2]]);
            let bytes = std::fs::read(&p).unwrap();
            let bad = dir.path().join("bad.bin");
            std::fs::write(&bad, &bytes[..bytes.len() - 1]).unwrap();
            assert!(Shard::open(&bad).unwrap_err().to_string().contains("truncated"));
            let mut wrong = bytes.clone();
            wrong[0] = b'X';
            std::fs::write(&bad, &wrong).unwrap();
            assert!(Shard::open(&bad).unwrap_err().to_string().contains("magic"));
            std::fs::write(&bad, &bytes[..10]).unwrap();
            assert!(Shard::open(&bad).unwrap_err().to_string().contains("header"));
        }
        let p = dir.path().join("range.bin");
        let mut w = ShardWriter::create(&p, 2).unwrap();
        let mut tokens = vec![3u32; 1_500_000];
        tokens[1_200_007] = 300;
        tokens[1_300_000] = 65535;
        w.push(&tokens).unwrap();
        w.finish().unwrap();
        let s = Shard::open(&p).unwrap();
        assert_eq!(s.first_at_or_above(256), Some((1_200_007, 300)));
        assert_eq!(s.first_at_or_above(301), Some((1_300_000, 65535)));
        assert_eq!(s.first_at_or_above(65535), Some((1_300_000, 65535)));
        assert_eq!(s.first_at_or_above(1 << 16), None);
        // The checksum: sha256 over the chunks' sha256s, here two chunks (3 MB in 1 MiB chunks: three).
        use sha2::Digest;
        let bytes = std::fs::read(&p).unwrap();
        let mut whole = sha2::Sha256::new();
        for c in bytes.chunks(1 << 20) {
            whole.update(sha2::Sha256::digest(c));
        }
        let scan = s.scan(u32::MAX);
        assert_eq!(scan.sha256, format!("{:x}", whole.finalize()));
        assert_eq!(scan.bytes, bytes.len() as u64);
        assert_eq!(scan.first_at_or_above, None);
        assert_eq!(token_width(256), 2);
        assert_eq!(token_width(65536), 2);
        assert_eq!(token_width(65537), 4);
    }
}
