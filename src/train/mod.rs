//! The training loop: sample, forward, backward, clip, AdamW, log; validate periodically.
//! Divergence (a non-finite loss or gradient) is a result: the run stops cleanly and says where.

pub mod init_from;
pub mod start;

pub use start::Start;

use crate::config::{Recompute, Resolved};
use crate::data::{Corpus, Sampler};
use crate::metrics::{GradNormRow, RunWriters};
use crate::model::{Group, Model, SubLayerKind};
use crate::optim::{lr_at, scalar, AdamW, GradStats};
use crate::run_dir::{RunDir, Summary};
use anyhow::{anyhow, Context, Result};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use std::time::{Duration, Instant};

/// How progress is shown to a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// An indicatif bar (stderr is a terminal).
    Bar,
    /// A plain line every `log_every` steps.
    Lines,
    Quiet,
}

/// Wall time spent in each phase of the steps taken so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseTimes {
    /// Sampling the batch and moving it to the device.
    pub data: Duration,
    pub forward: Duration,
    pub backward: Duration,
    /// Averaging gradients and the loss across the ranks of a data-parallel job.
    pub reduce: Duration,
    pub optimizer: Duration,
}

/// Result of one optimizer step.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Sum of squared gradients per parameter (same order as `model.params`).
    pub param_sq: Vec<f64>,
    /// False when the loss or the gradient was not finite; no update was applied then.
    pub finite: bool,
}

/// The model, its optimizer and its data stream.
pub struct Trainer {
    pub model: Model,
    pub opt: AdamW,
    pub sampler: Sampler,
    pub resolved: Resolved,
    pub times: PhaseTimes,
}

impl Trainer {
    pub fn new(resolved: &Resolved, device: &Device) -> Result<Self> {
        let t = resolved.train();
        let model = Model::new(resolved, device).context("building the model")?;
        let opt = AdamW::new(&model.params, t)?;
        let sampler = Sampler::new(t.seed, "train-batches", t.batch_size, t.seq_len);
        Ok(Trainer { model, opt, sampler, resolved: resolved.clone(), times: PhaseTimes::default() })
    }

    /// One optimizer step (with gradient accumulation) at learning rate `lr`.
    pub fn step(&mut self, corpus: &Corpus, lr: f64) -> Result<StepResult> {
        let t = self.resolved.train().clone();
        let device = self.model.tok_emb.device().clone();
        let mut grads: Vec<Option<Tensor>> = vec![None; self.model.params.len()];
        let mut loss_sum = 0.0;
        let world = crate::dist::world();
        for _ in 0..t.grad_accum {
            let start = Instant::now();
            let (x, y) = self.sampler.next(&corpus.train, &device)?;
            // A data-parallel rank trains on its own slice of the global batch.
            let (x, y) = match world.size() {
                1 => (x, y),
                _ => {
                    let (first, rows) = world.rows(t.batch_size);
                    (x.narrow(0, first, rows)?, y.narrow(0, first, rows)?)
                }
            };
            self.times.data += start.elapsed();
            if t.recompute == Recompute::Blocks {
                let start = Instant::now();
                let (loss, g, forward) =
                    crate::recompute::loss_and_grads(&self.model, &x, &y, 1.0 / t.grad_accum as f64)?;
                loss_sum += loss;
                self.times.forward += forward;
                self.times.backward += start.elapsed() - forward;
                for (g, acc) in g.into_iter().zip(grads.iter_mut()) {
                    *acc = Some(match acc.take() {
                        None => g,
                        Some(a) => (a + g)?,
                    });
                }
                continue;
            }
            let start = Instant::now();
            let loss = self.model.loss(&x, &y)?;
            loss_sum += scalar(&loss)?;
            self.times.forward += start.elapsed();
            let start = Instant::now();
            let loss = if t.grad_accum > 1 { (loss / t.grad_accum as f64)? } else { loss };
            let mut store = loss.backward()?;
            for (p, acc) in self.model.params.iter().zip(grads.iter_mut()) {
                // Detached: a gradient computed by composite ops (all of them off-CPU) still refers
                // to the forward activations, and the optimizer's moments would keep every step's
                // graph alive through it.
                let g = store
                    .remove(p.var.as_tensor())
                    .ok_or_else(|| {
                        anyhow!(
                            "parameter {} received no gradient (a Candle op without backward cut the graph)",
                            p.name
                        )
                    })?
                    .detach();
                *acc = Some(match acc.take() {
                    None => g,
                    Some(a) => (a + g)?,
                });
            }
            self.times.backward += start.elapsed();
        }
        let mut grads: Vec<Tensor> = grads.into_iter().map(|g| g.expect("filled")).collect();
        let mut loss = loss_sum / t.grad_accum as f64;
        if world.size() > 1 {
            let start = Instant::now();
            grads = average_over_ranks(&grads, world)?;
            let mut l = [loss];
            world.sum_f64(&mut l);
            loss = l[0] / world.size() as f64;
            self.times.reduce += start.elapsed();
        }
        let start = Instant::now();
        // PyTorch's clip_grad_norm_ and AdamW (on CUDA's fused kernels all on the device); a
        // non-finite loss only measures the gradients.
        let GradStats { param_sq, grad_norm, finite } = if loss.is_finite() {
            self.opt.clip_and_step(&self.model.params, &grads, lr, t.grad_clip)?
        } else {
            GradStats::measure(&grads)?
        };
        let finite = finite && loss.is_finite();
        self.times.optimizer += start.elapsed();
        Ok(StepResult { loss, grad_norm, param_sq, finite })
    }

    /// Mean loss over `eval_batches` fixed validation batches (the same batches at every call and
    /// for every seed, so validation losses compare across runs).
    pub fn validate(&self, corpus: &Corpus) -> Result<f64> {
        let t = self.resolved.train();
        let device = self.model.tok_emb.device();
        let mut sampler = Sampler::new(0, "val-batches", t.batch_size, t.seq_len);
        // A data-parallel job shares the batches out: rank r scores batches r, r + W, ...
        let world = crate::dist::world();
        let mut sum = 0.0;
        for i in 0..t.eval_batches {
            let (x, y) = sampler.next(&corpus.val, device)?;
            if i % world.size() == world.rank() {
                sum += scalar(&self.model.loss_without_graph(&x, &y)?)?;
            }
        }
        if world.size() > 1 {
            let mut total = [sum];
            world.sum_f64(&mut total);
            sum = total[0];
        }
        Ok(sum / t.eval_batches as f64)
    }

    /// Per-sub-layer gradient norms (plus embedding, final norm and head) from per-parameter
    /// sums of squares.
    pub fn grad_norm_rows(&self, param_sq: &[f64]) -> Vec<GradNormRow> {
        let depth = self.model.sublayers.len();
        let mut sub = vec![0.0; depth];
        let (mut emb, mut fin, mut head) = (0.0, None::<f64>, None::<f64>);
        for (p, sq) in self.model.params.iter().zip(param_sq) {
            match p.group {
                Group::Embedding => emb += sq,
                Group::SubLayer(i) => sub[i] += sq,
                Group::FinalNorm => *fin.get_or_insert(0.0) += sq,
                Group::Head => *head.get_or_insert(0.0) += sq,
            }
        }
        let mut rows = vec![GradNormRow { layer: None, kind: "embedding", grad_norm: emb.sqrt() }];
        for (i, sl) in self.model.sublayers.iter().enumerate() {
            let kind = match sl.kind {
                SubLayerKind::Attn => "attn",
                SubLayerKind::Ffn => "ffn",
            };
            rows.push(GradNormRow { layer: Some(i), kind, grad_norm: sub[i].sqrt() });
        }
        if let Some(f) = fin {
            rows.push(GradNormRow { layer: None, kind: "final_norm", grad_norm: f.sqrt() });
        }
        if let Some(h) = head {
            rows.push(GradNormRow { layer: None, kind: "head", grad_norm: h.sqrt() });
        }
        rows
    }
}

/// The mean over ranks of every gradient, through one flat buffer (one all-reduce per step).
fn average_over_ranks(grads: &[Tensor], world: &crate::dist::World) -> Result<Vec<Tensor>> {
    let flat = Tensor::cat(&grads.iter().map(|g| g.flatten_all()).collect::<candle_core::Result<Vec<_>>>()?, 0)?;
    let flat = world.mean(&flat)?;
    let mut start = 0;
    grads
        .iter()
        .map(|g| {
            let len = g.elem_count();
            let part = flat.narrow(0, start, len)?.reshape(g.dims())?;
            start += len;
            Ok(part)
        })
        .collect()
}

fn progress_bar(steps: usize) -> ProgressBar {
    let pb = ProgressBar::new(steps as u64);
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} ETA {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    pb
}

/// A write the operating system refused in the middle of a run (the folder made read-only or
/// immutable, a file's permissions changed) becomes bad input naming the path and the way back;
/// other errors pass through.
fn refused_write(err: anyhow::Error, run: &RunDir) -> anyhow::Error {
    let refused = err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|e| {
            e.kind() == std::io::ErrorKind::PermissionDenied
                || e.kind() == std::io::ErrorKind::ReadOnlyFilesystem
                || matches!(e.raw_os_error(), Some(1 | 13 | 30))
        })
    });
    if !refused {
        return err;
    }
    crate::InputError(format!(
        "{err:#}\n  the run directory {dir} (or a file in it) stopped accepting writes while the run trained: it was made read-only or immutable\n  make it writable again (chmod -R u+w, chattr -R -i, or remount read-write), then continue with `keel train --resume {dir}`; its checkpoints and CSV rows so far are intact",
        dir = run.path().display()
    ))
    .into()
}

/// How a training call ended.
pub struct Outcome {
    pub summary: Summary,
    /// Stopped by a signal after writing a checkpoint.
    pub interrupted: bool,
}

fn restore(trainer: &mut Trainer, ckpt: &crate::checkpoint::Loaded) -> Result<()> {
    if let Err(why) = trainer.model.load_weights(&ckpt.model)? {
        return Err(anyhow!("checkpoint {}: {why}", ckpt.path.display()));
    }
    trainer.opt.load_state(&trainer.model.params, &ckpt.optimizer, ckpt.state.optimizer_steps)?;
    trainer.sampler.seek(ckpt.state.sampler);
    Ok(())
}

/// Trains the resolved experiment on `corpus`, writing the run's files into `out`. Stops after
/// the current step, with a checkpoint, once `stop` is set.
pub fn train(
    resolved: &Resolved,
    corpus: &Corpus,
    device: &Device,
    out: &Path,
    progress: ProgressMode,
    start: Start,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Outcome> {
    train_into(resolved, corpus, device, out, progress, start, stop).map_err(|e| refused_write(e, &RunDir::at(out)))
}

fn train_into(
    resolved: &Resolved,
    corpus: &Corpus,
    device: &Device,
    out: &Path,
    progress: ProgressMode,
    start: Start,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Outcome> {
    use crate::checkpoint::{self, TrainState};
    let run = RunDir::at(out);
    let t = resolved.train().clone();
    let m = resolved.model().clone();
    let mut trainer = Trainer::new(resolved, device)?;
    let n_params = trainer.model.n_params();
    let tokens_per_step = t.batch_size * t.seq_len * t.grad_accum;
    let mut state = TrainState {
        step: 0,
        tokens: 0,
        sampler: trainer.sampler.position(),
        optimizer_steps: 0,
        initial_loss: None,
        recent_losses: Vec::new(),
        last_val: None,
        train_time_s: 0.0,
        elapsed_s: 0.0,
        config_fingerprint: resolved.fingerprint(),
        config: resolved.config.flatten(),
        keel_version: env!("CARGO_PKG_VERSION").into(),
    };
    let layout = crate::metrics::Layout::of(resolved);
    // In a data-parallel job every rank computes the same numbers; rank 0 alone writes them.
    let world = crate::dist::world();
    let root = world.is_root();
    let progress = if root { progress } else { ProgressMode::Quiet };
    let events = resolved.config.run.tensorboard;
    let mut writers = if root {
        Some(
            match &start {
                Start::Fresh => RunWriters::create(&run, events).map_err(anyhow::Error::from),
                Start::Over => RunWriters::resume(&run, 0, layout, events),
                Start::Checkpoint(c) => RunWriters::resume(&run, c.state.step, layout, events),
                Start::Init { over: false, .. } => RunWriters::create(&run, events).map_err(anyhow::Error::from),
                Start::Init { over: true, .. } => RunWriters::resume(&run, 0, layout, events),
            }
            .with_context(|| format!("preparing output files in {}", out.display()))?,
        )
    } else {
        None
    };
    // Fine-tuning: the source's weights replace the random ones; the optimizer, the sampler and
    // everything else start fresh.
    if let Start::Init { weights, .. } = &start {
        if let Err(why) = trainer.model.load_weights(&weights.tensors)? {
            return Err(anyhow!("train.init_from: {}: {why}", weights.file.display()));
        }
    }
    if let Start::Checkpoint(c) = &start {
        restore(&mut trainer, c)?;
        state = c.state.clone();
        // The config it goes on with, for the next checkpoints (the fingerprint stays the one
        // the run's checkpoints carry, which older keels computed otherwise).
        state.config = resolved.config.flatten();
    }
    // Divergence detection sees every step's loss, those before a resume replayed from metrics.csv.
    let mut detector =
        resolved.config.divergence.stop.then(|| crate::divergence::Detector::new(resolved.config.divergence));
    if let Some(d) = detector.as_mut() {
        for (step, _, loss) in crate::metrics::read_curve(&run)? {
            d.observe(step, loss);
        }
    }
    let mut reason: Option<crate::divergence::Reason> = None;
    let first = state.step + 1;
    let bar = (progress == ProgressMode::Bar).then(|| progress_bar(t.steps));
    if let Some(b) = &bar {
        b.set_position(state.step as u64);
    }
    if progress == ProgressMode::Lines {
        let from = if state.step > 0 { format!(" from step {}", state.step) } else { String::new() };
        println!(
            "training {} ({} params, {} sub-layers, {}) on {} for {} steps{from}",
            resolved.config.run.name, n_params, m.depth, m.placement, corpus.description, t.steps
        );
    }
    let say = |msg: &str| match &bar {
        Some(b) => b.println(msg),
        None if progress != ProgressMode::Quiet => println!("{msg}"),
        None => {}
    };
    let run_start = Instant::now();
    let elapsed_before = state.elapsed_s;
    let mut diverged_at = None;
    let mut interrupted = false;
    let mut last_checkpoint = None;
    let save = |trainer: &Trainer, state: &TrainState| -> Result<()> {
        if !root {
            return Ok(());
        }
        checkpoint::save(&run, &trainer.model.params, &trainer.opt, state.clone())
            .with_context(|| format!("writing the checkpoint of step {}", state.step))?;
        checkpoint::prune(
            &run,
            t.keep_checkpoints,
            (state.step == t.steps).then_some(t.steps),
            &state.config_fingerprint,
        )?;
        Ok(())
    };
    // From here a signal stops the run after a step, with a checkpoint (before, it exits at once).
    crate::signals::training_started();
    for step in first..=t.steps {
        let lr = lr_at(&t, step);
        let step_start = Instant::now();
        let r = trainer.step(corpus, lr)?;
        let dt = step_start.elapsed();
        state.train_time_s += dt.as_secs_f64();
        let tokens = step * tokens_per_step;
        let tps = tokens_per_step as f64 / dt.as_secs_f64().max(1e-9);
        let elapsed = elapsed_before + run_start.elapsed().as_secs_f64();
        if let Some(w) = writers.as_mut() {
            w.metrics(step, tokens, lr, r.loss, r.grad_norm, tps, elapsed)?;
        }
        state.initial_loss.get_or_insert(r.loss);
        if t.grad_norm_every > 0 && (step == 1 || step % t.grad_norm_every == 0 || !r.finite) {
            if let Some(w) = writers.as_mut() {
                w.grad_norms(step, &trainer.grad_norm_rows(&r.param_sq))?;
            }
        }
        if !r.finite {
            diverged_at = Some(step);
            reason = Some(crate::divergence::Reason::NonFinite);
            say(&format!("diverged at step {step}: loss {} grad norm {}", r.loss, r.grad_norm));
            break;
        }
        if let Some((at, why)) = detector.as_mut().and_then(|d| d.observe(step, r.loss)) {
            diverged_at = Some(at);
            reason = Some(why);
            state.step = step;
            say(&format!("diverged at step {at} ({}), detected at step {step}; stopping", why.as_str()));
            break;
        }
        state.step = step;
        state.tokens = tokens;
        state.recent_losses.push(r.loss);
        if state.recent_losses.len() > t.log_every {
            state.recent_losses.remove(0);
        }
        let is_eval = (t.eval_every > 0 && step % t.eval_every == 0) || step == t.steps;
        if is_eval {
            let v = trainer.validate(corpus)?;
            if let Some(w) = writers.as_mut() {
                w.eval(step, v)?;
            }
            state.last_val = Some(v);
        }
        state.sampler = trainer.sampler.position();
        state.optimizer_steps = trainer.opt.steps_taken();
        state.elapsed_s = elapsed_before + run_start.elapsed().as_secs_f64();
        // Every rank stops at the same step, whichever of them the signal reached first.
        let stopping = world.any(stop.load(std::sync::atomic::Ordering::SeqCst));
        if step == t.steps || stopping || (t.checkpoint_every > 0 && step % t.checkpoint_every == 0) {
            save(&trainer, &state)?;
            last_checkpoint = Some(step);
        }
        let total_tps = (step * tokens_per_step) as f64 / state.train_time_s.max(1e-9);
        let val_note = if is_eval { format!(" val {:.4}", state.last_val.unwrap_or(f64::NAN)) } else { String::new() };
        match &bar {
            Some(b) => {
                b.set_position(step as u64);
                b.set_message(format!("loss {:.4} lr {lr:.2e} {total_tps:.0} tok/s{val_note}", r.loss));
            }
            None if progress == ProgressMode::Lines && (step % t.log_every == 0 || step == t.steps || is_eval) => {
                println!(
                    "step {step:>6}/{} loss {:.4} lr {lr:.2e} grad {:.3} {total_tps:.0} tok/s {:.1}s{val_note}",
                    t.steps, r.loss, r.grad_norm, state.elapsed_s
                );
            }
            None => {}
        }
        if stopping && step < t.steps {
            interrupted = true;
            break;
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let recent = &state.recent_losses;
    let final_train_loss = (!recent.is_empty()).then(|| recent.iter().sum::<f64>() / recent.len() as f64);
    let mut summary = Summary {
        run_name: resolved.config.run.name.clone(),
        placement: m.placement.to_string(),
        depth: m.depth,
        d_model: m.d_model,
        n_params,
        steps_planned: t.steps,
        steps_completed: state.step,
        tokens: state.step * tokens_per_step,
        initial_loss: state.initial_loss,
        final_train_loss,
        final_val_loss: state.last_val,
        final_val_ppl: state.last_val.map(f64::exp),
        diverged: diverged_at.is_some(),
        diverged_at_step: diverged_at,
        divergence_reason: reason.map(|r| r.as_str().to_string()),
        tokens_per_s: (state.step * tokens_per_step) as f64 / state.train_time_s.max(1e-9),
        wall_time_s: elapsed_before + run_start.elapsed().as_secs_f64(),
        device: format!("{device:?}"),
        peak_rss_mb: crate::metrics::peak_rss_mb(),
        weights_sha256: None,
        config_sha256: None,
    };
    // Rank 0 alone tells the user and writes the final files.
    if !root {
        return Ok(Outcome { summary, interrupted });
    }
    if interrupted {
        // Always shown, --quiet or not: the user has to know how to continue.
        eprintln!(
            "stopped after step {} with a checkpoint ({}); continue with: keel train --resume {}",
            state.step,
            last_checkpoint.map(|s| format!("step {s}")).unwrap_or_default(),
            out.display()
        );
        return Ok(Outcome { summary, interrupted });
    }
    if diverged_at.is_none() {
        let tensors: std::collections::HashMap<String, Tensor> =
            trainer.model.params.iter().map(|p| (p.name.clone(), p.var.as_tensor().clone())).collect();
        summary.weights_sha256 = Some(run.save_weights(&tensors)?);
    }
    // Absent only where a library caller trains into a bare folder.
    summary.config_sha256 = crate::files::sha256_file(&run.config()).ok();
    run.write_summary(&summary)?;
    run.mark_done()?;
    Ok(Outcome { summary, interrupted })
}
