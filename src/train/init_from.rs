//! Fine-tuning from a run (`train.init_from`): a new run starts from the weights of a finished run
//! (`RUN`, its `model.safetensors`) or of one of its checkpoints (`RUN@STEP`, or the folder
//! `RUN/checkpoints/step_NNNNNNN`). Only the weights: the optimizer, the schedule, the data and the
//! seed are the new run's own.
//!
//! Everything is checked before the new run directory is made: the source exists and finished (or
//! its checkpoint passes its checksums), its architecture is the new run's on every key that
//! changes the parameters or the function they compute, its tokenizer is the one the new data is
//! tokenized with, and the tensors of the file fit the model. The file is read once; the sha256 of
//! the bytes read goes into `config.toml`'s `[meta]` with the source's path and step. A resume
//! continues from the fine-tune's own checkpoints and never reads the source again, except to
//! start over from step 0 when there is no usable checkpoint (then the recorded sha256 must match).

use crate::config::{Config, FfnKind, ModelConfig, Placement, Resolved};
use crate::data::tokenizer::KeelTokenizer;
use crate::run_dir::{RunDir, TOKENIZER, WEIGHTS};
use crate::{checkpoint, InputError};
use anyhow::Result;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `[meta]` keys: the weights file read, its run, the step it holds and the sha256 of its bytes.
const META_FILE: &str = "init_from";
const META_RUN: &str = "init_from_run";
const META_STEP: &str = "init_from_step";
const META_SHA: &str = "init_from_sha256";

/// A `train.init_from` found on disk, not yet read: the run and, for a checkpoint, its folder.
pub struct Source {
    /// `train.init_from` as recorded (absolute).
    pub spec: String,
    pub run: PathBuf,
    /// The checkpoint folder; `None`: the finished run's `model.safetensors`.
    pub checkpoint: Option<PathBuf>,
    /// The source run's `config.toml`.
    pub config: Config,
    /// The same, resolved.
    pub resolved: Resolved,
}

/// The weights a fine-tune starts from, read and checked.
pub struct InitWeights {
    /// On the CPU, as stored; converted to the run's device and precision when loaded.
    pub tensors: HashMap<String, Tensor>,
    /// The file read.
    pub file: PathBuf,
    /// The run it belongs to.
    pub run: PathBuf,
    /// The source's step: its final step, or the checkpoint's.
    pub step: usize,
    /// sha256 of the bytes read.
    pub sha256: String,
}

/// `RUN@STEP`: the run and the step.
fn split_at_step(spec: &str) -> Option<(&str, usize)> {
    let (run, step) = spec.rsplit_once('@')?;
    Some((run, step.parse().ok()?))
}

/// `spec` with its path made absolute (against the current folder), so that the run's
/// `config.toml` names its source from anywhere; `RUN@STEP` keeps its step.
pub fn absolute(spec: &str) -> String {
    let abs = |p: &str| std::path::absolute(p).map(|a| a.display().to_string()).unwrap_or_else(|_| p.to_string());
    match split_at_step(spec) {
        Some((run, step)) if !Path::new(spec).exists() => format!("{}@{step}", abs(run)),
        _ => abs(spec),
    }
}

/// The fix that every refusal below ends with.
const OR_SCRATCH: &str = "or remove train.init_from (--init-from) to start from random weights";

fn refused(spec: &str, why: impl std::fmt::Display) -> InputError {
    InputError(format!("train.init_from = {spec:?}: {why}"))
}

/// A run's checkpoints as `RUN@STEP` choices, newest first, for messages.
fn checkpoint_choices(run: &Path) -> String {
    let steps: Vec<String> =
        checkpoint::list(&RunDir::at(run)).iter().map(|(s, _)| format!("{}@{s}", run.display())).collect();
    if steps.is_empty() {
        "it has no checkpoint".into()
    } else {
        format!("its checkpoints: {}", steps.join(", "))
    }
}

/// `dir` is `RUN/checkpoints/step_NNNNNNN` of a run: that run.
fn run_of_checkpoint(dir: &Path) -> Option<PathBuf> {
    let name = dir.file_name()?.to_str()?;
    name.strip_prefix("step_")?.parse::<usize>().ok()?;
    let parent = dir.parent()?;
    (parent.file_name()? == crate::run_dir::CHECKPOINTS).then(|| parent.parent().map(Path::to_path_buf))?
}

/// Finds `spec` on disk and reads the source run's config; a finished run must be finished (not
/// training, not stopped, not diverged) with weights that pass `summary.json`'s checksums. Reads
/// no weights (see [`load`]).
pub fn locate(spec: &str) -> Result<Source, InputError> {
    let path = Path::new(spec);
    let not_a_run = |p: &Path| {
        refused(
            spec,
            format!(
                "{} is not a keel run directory (it has no config.toml)\n  give a finished run's folder (RUN), one of its checkpoints (RUN@STEP or RUN/checkpoints/step_NNNNNNN), {OR_SCRATCH}",
                p.display()
            ),
        )
    };
    let (run, checkpoint) = if path.is_dir() {
        if RunDir::at(path).is_started() {
            (path.to_path_buf(), None)
        } else if let Some(run) = run_of_checkpoint(path) {
            if !RunDir::at(&run).is_started() {
                return Err(not_a_run(&run));
            }
            (run, Some(path.to_path_buf()))
        } else {
            return Err(not_a_run(path));
        }
    } else if path.exists() {
        let hint = match path.parent() {
            Some(p) if path.file_name().is_some_and(|n| n == WEIGHTS) => {
                format!("give its run's folder, {}", p.display())
            }
            _ => "give a run's folder".into(),
        };
        return Err(refused(
            spec,
            format!(
                "{} is a file, not a folder\n  {hint} (RUN, or RUN@STEP for a checkpoint), {OR_SCRATCH}",
                path.display()
            ),
        ));
    } else if let Some((run, step)) = split_at_step(spec) {
        let run = PathBuf::from(run);
        if !run.is_dir() {
            return Err(refused(
                spec,
                format!("run directory {} does not exist\n  check the path, {OR_SCRATCH}", run.display()),
            ));
        }
        if !RunDir::at(&run).is_started() {
            return Err(not_a_run(&run));
        }
        let dir = RunDir::at(&run).checkpoints().join(format!("step_{step:07}"));
        if !dir.is_dir() {
            return Err(refused(
                spec,
                format!(
                    "{} has no checkpoint of step {step} ({} does not exist; {})\n  pick one of them, or {} for the run's final weights, {OR_SCRATCH}",
                    run.display(),
                    dir.display(),
                    checkpoint_choices(&run),
                    run.display()
                ),
            ));
        }
        (run, Some(dir))
    } else {
        return Err(refused(
            spec,
            format!(
                "{} does not exist\n  give a finished run's folder (RUN), one of its checkpoints (RUN@STEP or RUN/checkpoints/step_NNNNNNN), {OR_SCRATCH}",
                path.display()
            ),
        ));
    };
    let dir = RunDir::at(&run);
    let config = dir.read_config().map_err(|e| refused(spec, format!("the source run's config.toml: {e}")))?;
    let vocab = config.model.vocab_size.unwrap_or(crate::data::BYTE_VOCAB);
    let resolved = config.resolve(vocab).map_err(|e| refused(spec, format!("the source run's config.toml: {e}")))?;
    if checkpoint.is_none() {
        finished(spec, &dir)?;
    }
    Ok(Source { spec: spec.to_string(), run, checkpoint, config, resolved })
}

/// A run whose final weights can be read: not training, finished (DONE), not diverged, and its
/// files pass the checksums `summary.json` holds.
fn finished(spec: &str, run: &RunDir) -> Result<(), InputError> {
    let or_checkpoint = || {
        let choices = checkpoint_choices(run.path());
        if choices.starts_with("its checkpoints") {
            format!("\n  or fine-tune from one of its checkpoints instead ({choices})")
        } else {
            String::new()
        }
    };
    if run.holder().is_some() || !run.has_weights() {
        return Err(refused(spec, format!("{}{}", crate::run_dir::missing_weights(run), or_checkpoint())));
    }
    if !run.is_done() {
        let dir = run.path().display();
        return Err(refused(
            spec,
            format!("run {dir} has not finished (it holds no DONE)\n  finish it with `keel train --resume {dir}`, then run this command again{}", or_checkpoint()),
        ));
    }
    run.verify_finished().map_err(|e| refused(spec, e))
}

/// The keys that decide a model's parameters (names and shapes) and the function they compute,
/// for a model of `placement`: all of `[model]` but `init_std`, and of the placement-specific
/// keys only those the placement reads. `model.alpha` is compared as the number it resolves to.
fn architecture_keys(placement: Placement) -> Vec<&'static str> {
    let mut keys = vec![
        "model.placement",
        "model.depth",
        "model.d_model",
        "model.n_heads",
        "model.n_kv_heads",
        "model.d_ff",
        "model.ffn",
        "model.norm",
        "model.norm_eps",
        "model.final_norm",
        "model.tie_embeddings",
        "model.rope_theta",
        "model.vocab_size",
    ];
    match placement {
        Placement::Keel => keys.extend(["model.alpha", "model.keel_first_layer"]),
        Placement::MixLn => keys.push("model.mix_ln_fraction"),
        Placement::HybridNorm => keys.push("model.hybrid_norm_star"),
        Placement::PreLn | Placement::PostLn | Placement::Deepnorm => {}
    }
    keys
}

/// One key on which a source and a new run differ.
pub struct ArchDiff {
    pub key: &'static str,
    /// The source's value and the new run's, as written in a config.
    pub source: String,
    pub new: String,
    /// `--set KEY=VALUE` giving the source's value, where a `--set` can.
    pub fix: Option<String>,
}

/// Keys of `architecture_keys` (of either placement) on which `source` and `new` (resolved
/// from `new_raw`) differ. Keys that default to a value derived from others (`d_ff`,
/// `n_kv_heads`, `final_norm`; `alpha` as a multiple of L) are named only when fixing the others
/// would not make them equal: `new_raw` leaves them unset and the source has its default, so
/// `model.d_model` is what differs, not `model.d_ff` too. `model.alpha` is compared as the number
/// it resolves to, and `model.vocab_size` left unset is the data's vocabulary (the tokenizer
/// check says which data fits).
pub fn architecture_diff(source: &Resolved, new: &Resolved, new_raw: &ModelConfig) -> Vec<ArchDiff> {
    let mut keys = architecture_keys(source.model().placement);
    for k in architecture_keys(new.model().placement) {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let (a, b) = (source.config.flatten(), new.config.flatten());
    let value = |flat: &std::collections::BTreeMap<String, String>, k: &str| {
        flat.get(k).cloned().unwrap_or_else(|| "(absent)".into())
    };
    let s = source.model();
    let follows_the_others = |key: &str| match key {
        "model.d_ff" => {
            new_raw.d_ff.is_none()
                && source.d_ff()
                    == match s.ffn {
                        FfnKind::Swiglu => 3 * s.d_model,
                        FfnKind::Gelu => 4 * s.d_model,
                    }
        }
        "model.n_kv_heads" => new_raw.n_kv_heads.is_none() && source.n_kv_heads() == s.n_heads,
        "model.final_norm" => new_raw.final_norm.is_none() && source.final_norm() == s.placement.default_final_norm(),
        _ => false,
    };
    let set = |key: &str, v: &str| format!("--set {key}={}", v.trim_matches('"'));
    keys.into_iter()
        .filter_map(|key| {
            let (va, vb) = (value(&a, key), value(&b, key));
            if va == vb || follows_the_others(key) {
                return None;
            }
            match key {
                "model.alpha" => {
                    // Spelled alike ("L"), the depth is what differs; "L" = 16 and 16 are one model.
                    if source.alpha == new.alpha {
                        return None;
                    }
                    let fix = Some(set(key, &va));
                    let spelled = |v: String, alpha: f64| if v.starts_with('"') { format!("{v} = {alpha}") } else { v };
                    Some(ArchDiff { key, source: spelled(va, source.alpha), new: spelled(vb, new.alpha), fix })
                }
                // Below the data's vocabulary, no --set can give the source's: the data is what
                // has to change.
                "model.vocab_size" => {
                    let fix =
                        (new_raw.vocab_size.is_some() || source.vocab_size() > new.vocab_size()).then(|| set(key, &va));
                    Some(ArchDiff { key, source: va, new: vb, fix })
                }
                _ => Some(ArchDiff { key, fix: Some(set(key, &va)), source: va, new: vb }),
            }
        })
        .collect()
}

/// The tokenizer the new run's data is tokenized with, and how to name it.
fn data_tokenizer(data: &crate::config::DataConfig) -> Result<(KeelTokenizer, String), InputError> {
    match &data.path {
        Some(dir) => {
            let dir = Path::new(dir);
            let meta = crate::data::prepare::read_meta(dir).map_err(|e| InputError(e.to_string()))?;
            let file = dir.join(TOKENIZER);
            let t = KeelTokenizer::from_prepared(&file, &meta.tokenizer).map_err(|e| InputError(e.to_string()))?;
            Ok((t, format!("{} (data.path, prepared with `{}`)", file.display(), meta.tokenizer)))
        }
        None => Ok((KeelTokenizer::byte(), format!("bytes (data.source = {:?}: one token per byte)", data.source))),
    }
}

/// Why the source run's tokenizer is not the data's, if it is not: the two must be the same
/// tokenizer (compared as the `tokenizer.json` each serializes to), or the same id would stand
/// for other text.
fn tokenizer_problem(source: &Source, data: &crate::config::DataConfig) -> Result<Option<String>> {
    let theirs = crate::run_dir::run_tokenizer(&source.run, &source.config)?;
    let (ours, named) = data_tokenizer(data)?;
    let json = |t: &KeelTokenizer| t.inner.to_string(false).map_err(|e| anyhow::anyhow!("{e}"));
    if json(&theirs)? == json(&ours)? {
        return Ok(None);
    }
    let file = RunDir::at(&source.run).tokenizer();
    let theirs_named = if file.exists() { file.display().to_string() } else { format!("`{}`", theirs.spec) };
    Ok(Some(format!(
        "the source run's tokenizer ({theirs_named}, {} tokens) is not the one this run's data is tokenized with ({named}, {} tokens): the same token id would stand for other text\n    prepare the data with the source's tokenizer: keel data prepare --input ... --tokenizer {} --out data/NAME, then train with --set data.path=data/NAME",
        theirs.vocab_size(),
        ours.vocab_size(),
        file.display()
    )))
}

/// The weights of `source`, checked against the new run (`new`, on `data`): its architecture
/// and tokenizer (every problem listed at once), then the file, read once, against its recorded
/// checksum, and its tensors against the model's parameters.
pub fn load(source: &Source, new: &Resolved, new_raw: &Config) -> Result<InitWeights> {
    let data = &new_raw.data;
    let spec = &source.spec;
    let what = match &source.checkpoint {
        Some(dir) => format!("the checkpoint {}", dir.display()),
        None => format!("the run {}", source.run.display()),
    };
    let mut problems = Vec::new();
    let diff = architecture_diff(&source.resolved, new, &new_raw.model);
    if !diff.is_empty() {
        let lines: Vec<String> =
            diff.iter().map(|d| format!("    {}: {} (source) vs {} (this run)", d.key, d.source, d.new)).collect();
        let sets: Vec<&str> = diff.iter().filter_map(|d| d.fix.as_deref()).collect();
        let fix = if sets.is_empty() {
            "train on data of the source's tokenizer (below)".to_string()
        } else {
            format!("use the source's value{}: {}", if sets.len() == 1 { "" } else { "s" }, sets.join(" "))
        };
        problems.push(format!(
            "its architecture differs from this run's on {} key{}:\n{}\n    fine-tuning loads every weight as it is, so the model must be the same: {fix}",
            diff.len(),
            if diff.len() == 1 { "" } else { "s" },
            lines.join("\n"),
        ));
    }
    if let Some(p) = tokenizer_problem(source, data)? {
        problems.push(p);
    }
    if !problems.is_empty() {
        return Err(refused(
            spec,
            format!(
                "this run cannot start from {what}:\n  - {}\n  nothing was written; {OR_SCRATCH}",
                problems.join("\n  - ")
            ),
        )
        .into());
    }
    let (file, bytes, sha256, step) = match &source.checkpoint {
        Some(dir) => {
            let (state, bytes, sha) = checkpoint::read_weights(dir).map_err(|why| {
                refused(
                    spec,
                    format!(
                        "checkpoint {} cannot be used: {why}\n  pick another ({}), or the run's final weights, {OR_SCRATCH}",
                        dir.display(),
                        checkpoint_choices(&source.run)
                    ),
                )
            })?;
            let (fp, legacy) = (source.resolved.fingerprint(), source.resolved.legacy_fingerprint());
            if state.config_fingerprint != fp && state.config_fingerprint != legacy {
                return Err(refused(
                    spec,
                    format!(
                        "checkpoint {} was trained with another config than its run's {} describes (the file was edited, or the checkpoint copied from another run), so keel cannot tell which model it holds\n  restore the run's config.toml, pick another source, {OR_SCRATCH}",
                        dir.display(),
                        RunDir::at(&source.run).config().display()
                    ),
                )
                .into());
            }
            (dir.join(WEIGHTS), bytes, sha, state.step)
        }
        None => {
            let run = RunDir::at(&source.run);
            let file = run.weights();
            crate::files::check_regular(&file).map_err(|e| refused(spec, e))?;
            let bytes =
                crate::files::read(&file).map_err(|e| refused(spec, format!("cannot read {}: {e}", file.display())))?;
            let sha = crate::files::sha256_hex(&bytes);
            let summary = run.checked_summary()?;
            if let Some(want) = summary.as_ref().and_then(|s| s.weights_sha256.as_ref()).filter(|w| **w != sha) {
                return Err(refused(
                    spec,
                    format!(
                        "{} changed while it was read (sha256 {sha}, where summary.json records {want})\n  run the command again once nothing writes the file",
                        file.display()
                    ),
                )
                .into());
            }
            let step = summary.map(|s| s.steps_completed).unwrap_or(source.resolved.train().steps);
            (file, bytes, sha, step)
        }
    };
    let tensors = parse(&file, &bytes).map_err(|why| refused(spec, why))?;
    if let Some(why) = misfit(&tensors, new)? {
        return Err(refused(
            spec,
            format!(
                "{} does not fit this run's model: {why}\n  the file is damaged or holds another model than its run's config.toml describes: restore the run's own weights, pick another source, {OR_SCRATCH}",
                file.display()
            ),
        )
        .into());
    }
    Ok(InitWeights { tensors, file, run: source.run.clone(), step, sha256 })
}

fn parse(file: &Path, bytes: &[u8]) -> Result<HashMap<String, Tensor>, String> {
    candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
        .map_err(|e| format!("{} cannot be read as safetensors: {e}", file.display()))
}

/// How `tensors` fail to be the parameters of `new`'s model (names and shapes), if they do.
fn misfit(tensors: &HashMap<String, Tensor>, new: &Resolved) -> Result<Option<String>> {
    // The parameters' names and shapes, from a model built on the CPU and dropped.
    let model = crate::model::Model::new(new, &Device::Cpu)?;
    let mut wrong = Vec::new();
    for p in &model.params {
        match tensors.get(&p.name) {
            None => wrong.push(format!("it lacks the tensor {}", p.name)),
            Some(t) if t.dims() != p.var.dims() => {
                wrong.push(format!("tensor {} has shape {:?}, the model needs {:?}", p.name, t.dims(), p.var.dims()))
            }
            Some(_) => {}
        }
    }
    let mut extra: Vec<&String> = tensors.keys().filter(|k| !model.params.iter().any(|p| &p.name == *k)).collect();
    extra.sort();
    wrong.extend(extra.into_iter().map(|k| format!("it holds a tensor {k}, which the model has no parameter for")));
    Ok((!wrong.is_empty()).then(|| {
        let more = wrong.len().saturating_sub(4);
        let mut shown = wrong.into_iter().take(4).collect::<Vec<_>>().join("; ");
        if more > 0 {
            shown.push_str(&format!("; and {more} more"));
        }
        shown
    }))
}

/// Records the source in `config.toml`'s `[meta]`: the file read, its run, its step, the sha256
/// of the bytes read.
pub fn record(w: &InitWeights, meta: &mut toml::Table) {
    meta.insert(META_FILE.into(), w.file.display().to_string().into());
    meta.insert(META_RUN.into(), w.run.display().to_string().into());
    meta.insert(META_STEP.into(), (w.step as i64).into());
    meta.insert(META_SHA.into(), w.sha256.clone().into());
}

/// Keeps the source's record when a resume writes `config.toml` again.
pub fn carry(from: Option<&toml::Table>, into: &mut toml::Table) {
    for k in [META_FILE, META_RUN, META_STEP, META_SHA] {
        if let Some(v) = from.and_then(|m| m.get(k)) {
            into.insert(k.into(), v.clone());
        }
    }
}

/// The weights a run recorded in its `[meta]` that it started from, read again (a run started
/// over from step 0, another rank of a data-parallel job): the same file, with the same sha256,
/// or `Err` saying why not.
pub fn reload(config: &Config) -> Result<InitWeights, String> {
    let meta = config.meta.as_ref();
    let text = |k: &str| meta.and_then(|m| m.get(k)).and_then(|v| v.as_str()).map(str::to_string);
    let (Some(file), Some(want)) = (text(META_FILE), text(META_SHA)) else {
        return Err(format!(
            "config.toml's [meta] does not record the weights it started from ({META_FILE}, {META_SHA}); it was edited"
        ));
    };
    let file = PathBuf::from(file);
    let bytes = crate::files::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let sha256 = crate::files::sha256_hex(&bytes);
    if sha256 != want {
        return Err(format!("{} has changed since (sha256 {sha256}, where [meta] records {want})", file.display()));
    }
    let tensors = parse(&file, &bytes)?;
    let run = text(META_RUN).map(PathBuf::from).unwrap_or_default();
    let step = meta.and_then(|m| m.get(META_STEP)).and_then(|v| v.as_integer()).unwrap_or(0) as usize;
    Ok(InitWeights { tensors, file, run, step, sha256 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(sets: &[&str]) -> (Resolved, ModelConfig) {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let c = Config::parse("", "test", &sets).unwrap();
        (c.resolve(256).unwrap(), c.model)
    }

    fn keys(source: &[&str], new: &[&str]) -> Vec<&'static str> {
        let (s, _) = resolved(source);
        let (n, raw) = resolved(new);
        architecture_diff(&s, &n, &raw).into_iter().map(|d| d.key).collect()
    }

    #[test]
    fn placement_specific_keys_count_where_the_placement_reads_them() {
        let mix = ["model.placement=mix_ln", "model.depth=8"];
        assert_eq!(keys(&mix, &[&mix[..], &["model.mix_ln_fraction=0.5"]].concat()), ["model.mix_ln_fraction"]);
        let hybrid = ["model.placement=hybrid_norm"];
        assert_eq!(
            keys(&hybrid, &["model.placement=hybrid_norm", "model.hybrid_norm_star=true"]),
            ["model.hybrid_norm_star"]
        );
        // Pre-LN reads neither these nor alpha; init_std and training keys are no architecture.
        let pre = ["model.placement=pre_ln"];
        let other = [
            "model.placement=pre_ln",
            "model.mix_ln_fraction=0.5",
            "model.hybrid_norm_star=true",
            "model.alpha=3",
            "model.keel_first_layer=v1",
            "model.init_std=0.1",
            "train.lr=1e-4",
            "train.seed=9",
            "train.precision=f64",
        ];
        assert!(keys(&pre, &other).is_empty());
        // Keel: alpha by value; a multiple of L follows the depth.
        assert!(keys(&["model.depth=16"], &["model.depth=16", "model.alpha=16"]).is_empty());
        assert_eq!(keys(&["model.depth=16"], &["model.depth=8"]), ["model.depth"]);
        assert_eq!(keys(&["model.depth=16"], &["model.depth=16", "model.alpha=2L"]), ["model.alpha"]);
        // A derived key follows the key it derives from, unless given.
        assert_eq!(keys(&["model.ffn=gelu"], &["model.ffn=swiglu"]), ["model.ffn"]);
        assert_eq!(keys(&["model.d_ff=100"], &["model.d_model=32"]), ["model.d_model", "model.d_ff"]);
    }
}
