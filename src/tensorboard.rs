//! TensorBoard event files, written by keel itself: each run directory gets
//! `events.out.tfevents.<secs>.<host>.<pid>.keel` files that TensorBoard (`--logdir` on a run, a
//! sweep or a stress grid), `wandb sync` and anything else reading the TFRecord event format
//! load as they are.
//!
//! The format (TensorBoard's `event_file_writer.py`, `record_writer.py`; its Rust data server's
//! `masked_crc.rs` and `tensorboard.pb.rs` give the same framing and protos):
//! ```text
//! record := u64 len | u32 masked_crc32c(len bytes) | data[len] | u32 masked_crc32c(data)
//! masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8          (little-endian, no header)
//! data     := a serialized tensorboard.Event protobuf
//! ```
//! The first record of a file is `Event{wall_time, file_version: "brain.Event:2"}`. Scalars are
//! `Summary.Value{tag, simple_value}` (what `SummaryWriter.add_scalar` writes); the gradient
//! norms over depth are a `HistogramProto` (see [`depth_histogram`]).
//!
//! TensorBoard reads a run's files in lexicographic order and never goes back to an earlier one,
//! so a resumed run first cuts its files back to the checkpoint's step ([`EventLog::verify`], then
//! [`EventLog::resume`]) and then writes a new file whose name sorts after them: every step is in
//! the union of the files exactly once.

use crate::files::write_atomic;
use crate::InputError;
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `Event.file_version` of the current format.
pub const FILE_VERSION: &str = "brain.Event:2";
/// What every event file's name contains (TensorBoard's `IsTensorFlowEventsFile` test).
pub const MARKER: &str = "tfevents";
const PREFIX: &str = "events.out.tfevents.";
const SUFFIX: &str = ".keel";

/// `tensorboard.Event` (event.proto), the fields keel writes.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    pub what: Option<What>,
}

/// `Event.what`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorboard.Summary` (summary.proto).
#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorboard.Summary.Value`: a tag and one value. The value is a oneof, so a 0.0 loss is
/// written (a plain proto3 `float` field equal to 0 would be left out).
#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(oneof = "Kind", tags = "2, 5")]
    pub value: Option<Kind>,
}

/// `Summary.Value.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "5")]
    Histo(HistogramProto),
}

/// `tensorboard.HistogramProto` (histogram.proto). Bucket `i` holds `bucket[i]` over
/// `(bucket_limit[i-1], bucket_limit[i]]`; TensorBoard takes the first bucket's left edge from
/// `min` and the last one's right edge from `max`.
#[derive(Clone, PartialEq, Message)]
pub struct HistogramProto {
    #[prost(double, tag = "1")]
    pub min: f64,
    #[prost(double, tag = "2")]
    pub max: f64,
    #[prost(double, tag = "3")]
    pub num: f64,
    #[prost(double, tag = "4")]
    pub sum: f64,
    #[prost(double, tag = "5")]
    pub sum_squares: f64,
    #[prost(double, repeated, tag = "6")]
    pub bucket_limit: Vec<f64>,
    #[prost(double, repeated, tag = "7")]
    pub bucket: Vec<f64>,
}

impl Event {
    /// The step's scalars and histograms as one summary event.
    pub fn summary(step: usize, values: Vec<SummaryValue>) -> Event {
        Event { wall_time: now(), step: step as i64, what: Some(What::Summary(Summary { value: values })) }
    }

    /// `(tag, value)` of each scalar in the event.
    pub fn scalars(&self) -> Vec<(&str, f32)> {
        match &self.what {
            Some(What::Summary(s)) => s
                .value
                .iter()
                .filter_map(|v| match v.value {
                    Some(Kind::SimpleValue(x)) => Some((v.tag.as_str(), x)),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// `(tag, histogram)` of each histogram in the event.
    pub fn histograms(&self) -> Vec<(&str, &HistogramProto)> {
        match &self.what {
            Some(What::Summary(s)) => s
                .value
                .iter()
                .filter_map(|v| match &v.value {
                    Some(Kind::Histo(h)) => Some((v.tag.as_str(), h)),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A scalar value, as `SummaryWriter.add_scalar` writes it.
pub fn scalar(tag: impl Into<String>, value: f64) -> SummaryValue {
    SummaryValue { tag: tag.into(), value: Some(Kind::SimpleValue(value as f32)) }
}

/// The per-sub-layer gradient norms of one step drawn over depth: TensorBoard's histogram
/// dashboard shows, for each logged step, a curve whose x axis is the sub-layer index (sub-layer
/// `i` spans `[i, i+1]`, 0 at the bottom) and whose height is that sub-layer's gradient norm: the
/// paper's gradient-norm-against-depth figure, one slice per step. `None` when a norm is not
/// finite (a diverged step; its scalars still say so).
pub fn depth_histogram(tag: impl Into<String>, norms: &[f64]) -> Option<SummaryValue> {
    if norms.is_empty() || norms.iter().any(|g| !g.is_finite()) {
        return None;
    }
    let centre = |i: usize| i as f64 + 0.5;
    let h = HistogramProto {
        min: 0.0,
        max: norms.len() as f64,
        num: norms.iter().sum(),
        sum: norms.iter().enumerate().map(|(i, g)| centre(i) * g).sum(),
        sum_squares: norms.iter().enumerate().map(|(i, g)| centre(i) * centre(i) * g).sum(),
        bucket_limit: (1..=norms.len()).map(|i| i as f64).collect(),
        bucket: norms.to_vec(),
    };
    Some(SummaryValue { tag: tag.into(), value: Some(Kind::Histo(h)) })
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// CRC-32C masked as TFRecord (and LevelDB) store it.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the data, the data's masked CRC.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// A record that cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error("record at byte {offset}: {why}")]
pub struct RecordError {
    pub offset: usize,
    pub why: String,
}

/// The events of a file's bytes, each with the byte range of its record. A record cut short at
/// the end (a write interrupted by `kill -9`) ends the list; a checksum that fails or an event
/// that does not parse is an error.
pub fn parse_records(bytes: &[u8]) -> Result<Vec<(std::ops::Range<usize>, Event)>, RecordError> {
    let mut out = Vec::new();
    let mut at = 0;
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    while at < bytes.len() {
        if bytes.len() - at < 12 {
            break;
        }
        let len_bytes = &bytes[at..at + 8];
        if masked_crc(len_bytes) != u32_at(at + 8) {
            return Err(RecordError { offset: at, why: "the length's checksum fails".into() });
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        let Some(end) = usize::try_from(len).ok().and_then(|l| at.checked_add(12 + l + 4)) else {
            return Err(RecordError { offset: at, why: format!("a length of {len} bytes") });
        };
        if end > bytes.len() {
            break;
        }
        let data = &bytes[at + 12..end - 4];
        if masked_crc(data) != u32_at(end - 4) {
            return Err(RecordError { offset: at, why: "the data's checksum fails".into() });
        }
        let event =
            Event::decode(data).map_err(|e| RecordError { offset: at, why: format!("not an Event protobuf: {e}") })?;
        out.push((at..end, event));
        at = end;
    }
    Ok(out)
}

/// Every event of an event file, in order (see [`parse_records`]).
pub fn read_events(path: &Path) -> Result<Vec<Event>, InputError> {
    let bytes = crate::files::read(path).map_err(|e| InputError(format!("cannot read {}: {e}", path.display())))?;
    parse_records(&bytes)
        .map(|r| r.into_iter().map(|(_, e)| e).collect())
        .map_err(|e| InputError(format!("{}: {e}", path.display())))
}

/// A run directory's event files, in the order TensorBoard reads them.
pub fn event_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(MARKER) && e.path().is_file())
            .map(|e| e.path())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();
    Ok(files)
}

fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    // The name's fields are separated by dots; keep it one field of safe characters.
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// The name of a new event file in `dir`: TensorBoard's pattern with the current time, moved on a
/// second at a time until it sorts after every file already there (a resume within the same
/// second as the last start, or a clock set back a little); after a file of another pattern or a
/// clock far off, the last name with this process's id appended, which sorts after it too.
fn new_file_name(existing: &[PathBuf]) -> String {
    let last = existing.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).max();
    let (host, pid) = (hostname(), std::process::id());
    let now = now() as u64;
    for secs in now..now + 3600 {
        let name = format!("{PREFIX}{secs:010}.{host}.{pid}{SUFFIX}");
        if last.as_ref().is_none_or(|l| name > *l) {
            return name;
        }
    }
    format!("{}.{pid}{SUFFIX}", last.expect("a name sorts after nothing"))
}

/// What a resume keeps of one event file: the records up to the checkpoint's step.
pub struct Kept {
    path: PathBuf,
    bytes: Vec<u8>,
    changed: bool,
}

/// A run's event file being written.
pub struct EventLog {
    file: std::io::BufWriter<std::fs::File>,
}

impl EventLog {
    /// Starts a new event file in `dir`, after any already there, with its `file_version` event.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        let name = new_file_name(&event_files(dir)?);
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        let mut log = EventLog { file: std::io::BufWriter::new(file) };
        log.write(&Event { wall_time: now(), step: 0, what: Some(What::FileVersion(FILE_VERSION.into())) })?;
        Ok(log)
    }

    /// Checks, changing nothing, that the run's event files read back, and returns what each keeps
    /// for a resume from `step`: records after it are left out (they are written again), as is a
    /// record cut short at the end. A record that fails its checksum is bad input: the file is
    /// named, with the fix.
    pub fn verify(dir: &Path, step: usize) -> Result<Vec<Kept>, InputError> {
        let files = event_files(dir).map_err(|e| InputError(format!("cannot list {}: {e}", dir.display())))?;
        let mut kept = Vec::new();
        for path in files {
            let bytes =
                crate::files::read(&path).map_err(|e| InputError(format!("cannot read {}: {e}", path.display())))?;
            let records = parse_records(&bytes).map_err(|e| {
                InputError(format!(
                    "{}: {e}: the TensorBoard event file is damaged, so keel cannot cut it back to the checkpoint (step {step}); nothing was changed\n  move the file out of the run directory and resume again (TensorBoard then lacks its steps), or resume with --set run.tensorboard=false",
                    path.display()
                ))
            })?;
            let mut out = Vec::with_capacity(bytes.len());
            for (range, event) in &records {
                if event.step <= step as i64 {
                    out.extend_from_slice(&bytes[range.clone()]);
                }
            }
            let changed = out.len() != bytes.len();
            kept.push(Kept { path, bytes: out, changed });
        }
        Ok(kept)
    }

    /// Cuts the run's event files back to what [`EventLog::verify`] kept, then starts a new file.
    pub fn resume(dir: &Path, kept: Vec<Kept>) -> std::io::Result<Self> {
        EventLog::cut(kept)?;
        EventLog::create(dir)
    }

    /// Cuts the run's event files back to what [`EventLog::verify`] kept (a resume with events
    /// turned off, whose steps from the checkpoint on would otherwise stand beside stale ones).
    pub fn cut(kept: Vec<Kept>) -> std::io::Result<()> {
        for k in kept.into_iter().filter(|k| k.changed) {
            write_atomic(&k.path, &k.bytes)?;
        }
        Ok(())
    }

    /// Appends one event (buffered until [`EventLog::flush`]).
    pub fn write(&mut self, event: &Event) -> std::io::Result<()> {
        self.file.write_all(&frame(&event.encode_to_vec()))
    }

    /// Pushes what was written to the file, as the CSVs are after each row.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TensorBoard's own vectors (tensorboard/data/server/masked_crc.rs): a real `file_version`
    /// record, and CRC-32C of 32 zero bytes from RFC 3720.
    #[test]
    fn masked_crc_matches_tensorboard() {
        assert_eq!(masked_crc(b"\x1a\x11CRC test, one two"), 0x5794_d08a);
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
        // ((0x8a9136aa >> 15) | (0x8a9136aa << 17)) + 0xa282ead8 mod 2^32, worked out in Python.
        assert_eq!(masked_crc(&[0u8; 32]), 0x0fd7_fffa);
    }

    /// The protobuf bytes, field by field, against proto3's wire format.
    #[test]
    fn event_encodes_as_protobuf() {
        let e = Event { wall_time: 1.5, step: 3, what: Some(What::Summary(Summary { value: vec![scalar("a", 0.0)] })) };
        let bytes = e.encode_to_vec();
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 3]);
        // Summary (field 5, length 10) holding Value (field 1, length 8): tag "a", simple_value 0.0.
        want.extend_from_slice(&[0x2a, 10, 0x0a, 8, 0x0a, 1, b'a', 0x15, 0, 0, 0, 0]);
        assert_eq!(bytes, want);
        let fv = Event { wall_time: 0.0, step: 0, what: Some(What::FileVersion(FILE_VERSION.into())) };
        assert_eq!(&fv.encode_to_vec()[..], b"\x1a\x0dbrain.Event:2");
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_dropped() {
        let events: Vec<Event> =
            (1..=3).map(|s| Event::summary(s, vec![scalar("train/loss", s as f64 / 4.0)])).collect();
        let mut bytes = Vec::new();
        for e in &events {
            bytes.extend(frame(&e.encode_to_vec()));
        }
        let back: Vec<Event> = parse_records(&bytes).unwrap().into_iter().map(|(_, e)| e).collect();
        assert_eq!(back, events);
        for cut in [1, 5, 13, 20] {
            let n = parse_records(&bytes[..bytes.len() - cut]).unwrap().len();
            assert_eq!(n, 2, "cut {cut}");
        }
        let mut bad = bytes.clone();
        let last = bad.len() - 6;
        bad[last] ^= 1;
        assert!(parse_records(&bad).unwrap_err().why.contains("checksum"));
    }

    #[test]
    fn depth_histogram_puts_each_sub_layer_on_its_own_bucket() {
        let v = depth_histogram("g", &[1.0, 3.0]).unwrap();
        let Some(Kind::Histo(h)) = v.value else { panic!("not a histogram") };
        assert_eq!((h.min, h.max, h.num), (0.0, 2.0, 4.0));
        assert_eq!(h.bucket_limit, vec![1.0, 2.0]);
        assert_eq!(h.bucket, vec![1.0, 3.0]);
        assert_eq!(h.sum, 0.5 + 4.5);
        assert!(depth_histogram("g", &[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn new_files_sort_after_old_ones() {
        let soon = now() as u64 + 100;
        for old in [format!("{PREFIX}{soon:010}.zz.1{SUFFIX}"), format!("{PREFIX}9999999999.zz.1{SUFFIX}")] {
            let name = new_file_name(&[PathBuf::from(&old)]);
            assert!(name > old, "{name} after {old}");
            assert!(name.starts_with(PREFIX) && name.ends_with(SUFFIX), "{name}");
        }
    }
}
