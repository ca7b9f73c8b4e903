//! Checkpoints that resume bit-for-bit.
//!
//! `RUN/checkpoints/step_0000100/` holds
//! - `model.safetensors`: the weights, under the parameter names of `model.rs`;
//! - `optimizer.safetensors`: AdamW's moments, `{param}.m` and `{param}.v`;
//! - `state.json`: step, tokens, sampler position (RNG state), optimizer step count, the running
//!   values behind summary.json, a fingerprint of the config and keel's version;
//! - `SHA256SUMS`: the sha256 of the three files above, in `sha256sum -c` format.
//!
//! A checkpoint is written into a hidden temporary folder and renamed into place, so a folder
//! named `step_*` is complete unless its files were damaged afterwards, which the checksums
//! catch: a checkpoint whose files do not match `SHA256SUMS` (or that has none) is not used, and
//! resume falls back to an older one. Pruning deletes only folders that are keel's checkpoints of
//! this run (a `SHA256SUMS` that `state.json` matches, of this config, at the folder's step).
//! For fault-injection tests, halfway through writing the checkpoint of step STEP (after
//! the weights, before the optimizer state), `KEEL_FAULT_ABORT_IN_CHECKPOINT=STEP` aborts the
//! process (no cleanup, like SIGKILL) and `KEEL_FAULT_PAUSE_IN_CHECKPOINT=STEP` sleeps for a
//! minute so a test can SIGKILL it there.

use crate::files::{fsync_dir, sha256_file, write_atomic};
use crate::model::Param;
use crate::optim::AdamW;
use crate::run_dir::RunDir;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";
const SUMS: &str = "SHA256SUMS";
/// The files `SHA256SUMS` covers, in its order.
const COVERED: [&str; 3] = [MODEL, OPTIMIZER, STATE];

/// Everything besides tensors that a resumed run needs to continue as if never stopped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    pub tokens: usize,
    /// The training sampler's RNG state.
    pub sampler: [u64; 4],
    pub optimizer_steps: u64,
    pub initial_loss: Option<f64>,
    /// Losses of the last `log_every` steps (for summary.json's final_train_loss).
    pub recent_losses: Vec<f64>,
    pub last_val: Option<f64>,
    /// Training time so far (for summary.json's tokens_per_s).
    pub train_time_s: f64,
    /// Wall time since the run began, continued by the elapsed_s column after a resume.
    pub elapsed_s: f64,
    /// See [`crate::config::Resolved::fingerprint`].
    pub config_fingerprint: String,
    /// The config the checkpoint was trained with, key by key (`Config::flatten`), so that a
    /// resume that does not match it can name the keys that differ (absent before keel 0.1's
    /// checkpoints carried it).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    pub keel_version: String,
}

/// `SHA256SUMS` as written: one `HASH  NAME` line per covered file.
fn sums_text(sums: &BTreeMap<String, String>) -> String {
    COVERED.iter().map(|f| format!("{}  {f}\n", sums.get(*f).map(String::as_str).unwrap_or(""))).collect()
}

/// Reads `SHA256SUMS`, which must list exactly the covered files.
fn read_sums(dir: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = crate::files::read_to_string(&dir.join(SUMS)).map_err(|e| format!("cannot read {SUMS}: {e}"))?;
    let mut sums = BTreeMap::new();
    for line in text.lines() {
        let (hash, name) = line.split_once("  ").ok_or_else(|| format!("{SUMS} has a malformed line `{line}`"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{SUMS} has a malformed line `{line}`"));
        }
        sums.insert(name.to_string(), hash.to_string());
    }
    if sums.len() != COVERED.len() || !COVERED.iter().all(|f| sums.contains_key(*f)) {
        return Err(format!("{SUMS} does not list exactly {}", COVERED.join(", ")));
    }
    Ok(sums)
}

/// Checks one covered file against its checksum.
fn verify(dir: &Path, name: &str, sums: &BTreeMap<String, String>) -> Result<(), String> {
    let got = sha256_file(&dir.join(name)).map_err(|e| format!("cannot read {name}: {e}"))?;
    if sums.get(name) != Some(&got) {
        return Err(format!("{name} fails its checksum (truncated or modified)"));
    }
    Ok(())
}

/// The checkpoint's `state.json`, verified, and its `SHA256SUMS` (the tensor files, which are
/// large, are not checked here).
fn verified_state(dir: &Path) -> Result<(TrainState, BTreeMap<String, String>), String> {
    let sums = read_sums(dir)?;
    verify(dir, STATE, &sums)?;
    let text = crate::files::read_to_string(&dir.join(STATE)).map_err(|e| format!("cannot read {STATE}: {e}"))?;
    let state = serde_json::from_str(&text).map_err(|e| format!("{STATE} does not parse: {e}"))?;
    Ok((state, sums))
}

fn step_dir(run: &RunDir, step: usize) -> PathBuf {
    run.checkpoints().join(format!("step_{step:07}"))
}

fn save_tensors(tensors: &[(String, Tensor)], path: &Path) -> anyhow::Result<()> {
    let map: HashMap<String, Tensor> = tensors.iter().cloned().collect();
    candle_core::safetensors::save(&map, path)?;
    std::fs::File::open(path)?.sync_all()?;
    Ok(())
}

/// Writes the checkpoint of `state.step` (replacing one of the same step): the parameters, the
/// optimizer's moments for them, and `state`.
pub fn save(run: &RunDir, params: &[Param], opt: &AdamW, state: TrainState) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let dest = step_dir(run, state.step);
    save_into(run, params, opt, state).with_context(|| format!("cannot write checkpoint {}", dest.display()))
}

fn save_into(run: &RunDir, params: &[Param], opt: &AdamW, state: TrainState) -> anyhow::Result<PathBuf> {
    let root = run.checkpoints();
    std::fs::create_dir_all(&root)?;
    // What a removal that failed halfway left (see `remove_checkpoint`).
    for e in std::fs::read_dir(&root)?.flatten() {
        if e.file_name().to_str().is_some_and(|n| n.starts_with('.') && n.ends_with(".removed.tmp")) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let tmp = root.join(format!(".step_{:07}.tmp", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir(&tmp)?;
    let weights: Vec<(String, Tensor)> = params.iter().map(|p| (p.name.clone(), p.var.as_tensor().clone())).collect();
    save_tensors(&weights, &tmp.join(MODEL))?;
    let fault = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<usize>().ok()) == Some(state.step);
    if fault("KEEL_FAULT_ABORT_IN_CHECKPOINT") {
        std::process::abort();
    }
    if fault("KEEL_FAULT_PAUSE_IN_CHECKPOINT") {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
    save_tensors(&opt.state_tensors(params)?, &tmp.join(OPTIMIZER))?;
    write_atomic(&tmp.join(STATE), serde_json::to_string_pretty(&state)?.as_bytes())?;
    let mut sums = BTreeMap::new();
    for f in COVERED {
        sums.insert(f.to_string(), sha256_file(&tmp.join(f))?);
    }
    write_atomic(&tmp.join(SUMS), sums_text(&sums).as_bytes())?;
    fsync_dir(&tmp);
    let dest = step_dir(run, state.step);
    if dest.exists() {
        remove_checkpoint(&dest)?;
    }
    std::fs::rename(&tmp, &dest)?;
    fsync_dir(&root);
    Ok(dest)
}

/// Folders of a run named like checkpoints (`step_NNNNNNN`), newest first; see [`load`] for
/// which of them are usable.
pub fn list(run: &RunDir) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(run.checkpoints())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let step = name.strip_prefix("step_")?.parse().ok()?;
                    Some((step, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    out
}

/// True when `dir` is a checkpoint keel wrote for the experiment `fingerprint` at `step`: its
/// `SHA256SUMS` lists the checkpoint's files and its `state.json` matches it.
fn is_own(dir: &Path, step: usize, fingerprint: &str) -> bool {
    verified_state(dir).is_ok_and(|(s, _)| s.step == step && s.config_fingerprint == fingerprint)
}

/// The final weights kept in the checkpoint of `step`, verified against its `SHA256SUMS` (which
/// `state.json` must match, at that step): what restores a finished run's deleted
/// `model.safetensors`.
pub fn verified_weights(run: &RunDir, step: usize) -> Result<PathBuf, String> {
    let dir = step_dir(run, step);
    let (state, sums) = verified_state(&dir)?;
    if state.step != step {
        return Err(format!("{STATE} says step {}, but the folder is named for step {step}", state.step));
    }
    verify(&dir, MODEL, &sums)?;
    Ok(dir.join(MODEL))
}

/// The weights of the checkpoint in `dir` (a `step_NNNNNNN` folder), read once into memory and
/// verified against its `SHA256SUMS` (which `state.json` must match, at the folder's step): its
/// state, the bytes and their sha256. What a fine-tune from a checkpoint starts from.
pub fn read_weights(dir: &Path) -> Result<(TrainState, Vec<u8>, String), String> {
    let (state, sums) = verified_state(dir)?;
    let named = dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("step_")?.parse::<usize>().ok());
    if named != Some(state.step) {
        return Err(format!("{STATE} says step {}, but the folder is named for another", state.step));
    }
    let path = dir.join(MODEL);
    crate::files::check_regular(&path).map_err(|e| e.to_string())?;
    let bytes = crate::files::read(&path).map_err(|e| format!("cannot read {MODEL}: {e}"))?;
    let sha = crate::files::sha256_hex(&bytes);
    if sums.get(MODEL) != Some(&sha) {
        return Err(format!("{MODEL} fails its checksum (truncated or modified)"));
    }
    Ok((state, bytes, sha))
}

/// Keeps the newest `keep` of this run's own checkpoints and the one of `final_step`; folders
/// that are not keel's checkpoints of this experiment are never touched.
pub fn prune(run: &RunDir, keep: usize, final_step: Option<usize>, fingerprint: &str) -> std::io::Result<()> {
    let own = list(run).into_iter().filter(|(step, path)| is_own(path, *step, fingerprint));
    for (i, (step, path)) in own.enumerate() {
        if i >= keep.max(1) && Some(step) != final_step {
            remove_checkpoint(&path)?;
        }
    }
    Ok(())
}

/// Removes a checkpoint folder whole or not at all: it is first renamed to a hidden name (which
/// [`list`] never returns), so a removal that fails halfway (the folder made read-only or
/// immutable) leaves no emptied `step_*` behind; the leftover is cleared by the next save.
fn remove_checkpoint(path: &Path) -> std::io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("step");
    let trash = path.with_file_name(format!(".{name}.removed.tmp"));
    if trash.exists() {
        std::fs::remove_dir_all(&trash)?;
    }
    std::fs::rename(path, &trash)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot remove {}: {e}", path.display())))?;
    std::fs::remove_dir_all(&trash)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot remove {}: {e}", trash.display())))
}

/// A checkpoint read back and verified.
pub struct Loaded {
    pub state: TrainState,
    pub model: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
    pub path: PathBuf,
}

/// Why a checkpoint cannot be used.
#[derive(Debug)]
pub enum Unusable {
    /// Damaged or incomplete: fall back to an older one.
    Corrupt(String),
    /// Written by a different experiment (or under a config.toml edited since): refuse. `config`
    /// is the config the checkpoint records (empty for checkpoints of older keels).
    OtherConfig { found: String, config: BTreeMap<String, String> },
}

/// Reads and verifies the checkpoint in `path` (every file against `SHA256SUMS`, the step
/// against the folder's name) for the experiment of one of `fingerprints` (the current one, and
/// the one older keels computed for it).
pub fn load(path: &Path, fingerprints: &[&str]) -> Result<Loaded, Unusable> {
    let (state, sums) = verified_state(path).map_err(Unusable::Corrupt)?;
    if !fingerprints.contains(&state.config_fingerprint.as_str()) {
        return Err(Unusable::OtherConfig { found: state.config_fingerprint, config: state.config });
    }
    let named = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("step_")?.parse::<usize>().ok());
    if named != Some(state.step) {
        return Err(Unusable::Corrupt(format!(
            "{STATE} says step {}, but the folder is named for another",
            state.step
        )));
    }
    let mut tensors = Vec::new();
    for f in [MODEL, OPTIMIZER] {
        verify(path, f, &sums).map_err(Unusable::Corrupt)?;
        let map = candle_core::safetensors::load(path.join(f), &candle_core::Device::Cpu)
            .map_err(|e| Unusable::Corrupt(format!("{f}: {e}")))?;
        tensors.push(map);
    }
    let optimizer = tensors.pop().expect("two files");
    let model = tensors.pop().expect("two files");
    Ok(Loaded { state, model, optimizer, path: path.to_path_buf() })
}
