//! Benchmarks scored by log-likelihood, the way lm-evaluation-harness scores them.
//!
//! Every benchmark reduces to [`Request`]s: a token sequence whose tail (the continuation) is scored
//! given its head (the context). A [`LanguageModel`] answers them with the summed log-probability of
//! the continuation and whether greedy decoding would have produced it. keel's own runs
//! ([`KeelLm`]) and Llama-family models loaded with candle-transformers ([`hf::HfLlama`]) both
//! implement it, so every benchmark runs on either.
//!
//! Each benchmark implements the interface of `bench.rs` in its own file; `ALL` in `registry.rs`
//! lists them all.

pub mod arc;
pub mod bbh;
pub mod bench;
pub mod cmmlu;
pub mod generation;
pub mod generative;
pub mod groups;
pub mod gsm8k;
pub mod hellaswag;
pub mod hf;
pub mod layer_removal;
pub mod mc;
pub mod mmlu;
pub mod mmlu_pro;
pub mod piqa;
pub mod ppl;
pub mod py_random;
pub mod records;
pub mod registry;
pub mod synthetic;
pub mod winogrande;

use crate::data::tokenizer::KeelTokenizer;

use crate::InputError;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

/// lm-evaluation-harness's `target_delimiter` and `fewshot_delimiter` defaults
/// (`lm_eval/config/task.py::TaskConfig`): between an exemplar's text and its target, and after
/// each exemplar. None of keel's tasks overrides them.
pub const TARGET_DELIMITER: &str = " ";
pub const FEWSHOT_DELIMITER: &str = "\n\n";

/// lm-evaluation-harness's default few-shot seed (`lm_eval/defaults.py`, `fewshot_random_seed`),
/// which seeds its default sampler (see `py_random.rs`).
pub const FEWSHOT_SEED: u64 = 1234;

/// Score `tokens[cont_start..]` given `tokens[..cont_start]` (`cont_start >= 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub tokens: Vec<u32>,
    pub cont_start: usize,
}

/// A scored continuation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Sum of the natural-log probabilities of the continuation's tokens.
    pub logprob: f64,
    /// Every continuation token is the argmax of its prediction.
    pub greedy: bool,
    /// Continuation length in tokens.
    pub n_tokens: usize,
}

/// Anything that scores [`Request`]s.
pub trait LanguageModel {
    /// One line naming the model, for results files.
    fn describe(&self) -> String;
    /// The most tokens one forward pass may take (a request's inputs are `tokens[..len - 1]`).
    fn max_len(&self) -> usize;
    fn tokenizer(&self) -> &KeelTokenizer;
    /// Scores `requests` in order; `done(n)` reports progress as requests finish.
    fn score(&mut self, requests: &[Request], done: &mut dyn FnMut(usize)) -> Result<Vec<Scored>>;
    /// Greedy decoding of `prompts` (each with its budget fitting the context): row i's new
    /// tokens, until `done(i, its new tokens)` or `max_new` (see `generation::generate_until`).
    fn greedy(
        &mut self,
        prompts: &[Vec<u32>],
        max_new: usize,
        done: &mut dyn FnMut(usize, &[u32]) -> bool,
    ) -> Result<Vec<Vec<u32>>> {
        let _ = (prompts, max_new, done);
        anyhow::bail!("internal: {} does not generate text", self.describe())
    }
    /// Prompts [`LanguageModel::greedy`] takes at once.
    fn generation_batch(&self) -> usize {
        1
    }
}

/// The objects of a JSONL file with their 1-based line numbers, blank lines skipped. A file that
/// cannot be read is an input error ending in `fix`; a line that is not JSON, one naming its line.
pub fn jsonl_objects(path: &Path, fix: &str) -> Result<Vec<(usize, serde_json::Value)>> {
    let shown = path.display();
    let bad = |msg: String| -> anyhow::Error { InputError(msg).into() };
    let text = crate::files::read_to_string(path).map_err(|e| bad(format!("cannot read {shown}: {e}\n  {fix}")))?;
    let mut objects = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let n = i + 1;
        let v = serde_json::from_str(line)
            .map_err(|e| bad(format!("{shown}, line {n}: not JSON: {e}\n  each line must be one JSON object")))?;
        objects.push((n, v));
    }
    Ok(objects)
}

/// Encodes a (context, continuation) pair as lm-evaluation-harness does: trailing whitespace of the
/// context moves to the front of the continuation, the whole string is encoded once, and the
/// continuation is what follows the separately encoded context. An empty context becomes the
/// end-of-text token (or a newline, for tokenizers without one). Returns `(tokens, cont_start)`.
pub fn encode_pair(tok: &KeelTokenizer, context: &str, continuation: &str) -> Result<(Vec<u32>, usize)> {
    let trimmed = context.trim_end();
    let (context, continuation) = if trimmed.len() < context.len() {
        (trimmed.to_string(), format!("{}{continuation}", &context[trimmed.len()..]))
    } else {
        (context.to_string(), continuation.to_string())
    };
    if context.is_empty() {
        let prefix = match tok.eot {
            Some(id) => vec![id],
            None => tok.encode("\n")?,
        };
        let cont = tok.encode(&continuation)?;
        let start = prefix.len();
        return Ok(([prefix, cont].concat(), start));
    }
    let whole = tok.encode(&format!("{context}{continuation}"))?;
    let ctx = tok.encode(&context)?;
    let start = ctx.len().min(whole.len());
    Ok((whole, start))
}

/// Every request has a continuation and fits a context of `max` tokens (callers [`fit`] them).
pub fn check_fits(requests: &[Request], max: usize) -> Result<()> {
    for r in requests {
        anyhow::ensure!(
            r.cont_start >= 1 && r.cont_start < r.tokens.len() && r.tokens.len() - 1 <= max,
            "internal: request of {} tokens (continuation from {}) does not fit a context of {max}",
            r.tokens.len(),
            r.cont_start
        );
    }
    Ok(())
}

/// Scores `requests`, reporting `progress(done, total)` in requests.
pub fn score_all(
    lm: &mut dyn LanguageModel,
    requests: &[Request],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Scored>> {
    let total = requests.len();
    let mut done = 0;
    progress(0, total);
    lm.score(requests, &mut |n| {
        done += n;
        progress(done, total)
    })
}

/// Keeps the last `max_len + 1` tokens, as lm-evaluation-harness does when a request exceeds the
/// model's context (HFLM `_loglikelihood_tokens`: the input is
/// `(context_enc + continuation_enc)[-(max_length + 1):][:-1]` and the last `len(continuation_enc)`
/// positions are scored). Returns the request and how many tokens were cut from the front. A
/// continuation longer than `max_len` cannot be scored whole (the harness stops on
/// `assert len(continuation_enc) <= self.max_length`): that is bad input, named here.
pub fn fit(mut tokens: Vec<u32>, cont_start: usize, max_len: usize) -> Result<(Request, usize)> {
    let cont = tokens.len() - cont_start;
    if cont > max_len {
        return Err(InputError(format!(
            "an answer (continuation) of {cont} tokens does not fit the model's context of {max_len} tokens, so it cannot be scored whole (lm-evaluation-harness refuses it too)\n  shorten that item's answer, or score a model with a longer context"
        ))
        .into());
    }
    let cut = tokens.len().saturating_sub(max_len + 1);
    if cut > 0 {
        tokens.drain(..cut);
    }
    Ok((Request { cont_start: cont_start - cut, tokens }, cut))
}

// A finished run is loaded through the run directory's own module.
pub use crate::run_dir::{load_run, run_tokenizer, LoadedRun};

/// A keel model answering requests in padded batches.
pub struct KeelLm {
    pub run: LoadedRun,
    pub batch_size: usize,
    /// Sub-layer whose branch is removed (the layer-removal study), if any.
    pub removed: Option<usize>,
}

/// Most logits rows materialized at once (rows x vocab floats stay near 128 MB).
const LOGIT_FLOATS: usize = 32 << 20;

impl KeelLm {
    pub fn new(run: LoadedRun, batch_size: usize) -> Self {
        KeelLm { run, batch_size: batch_size.max(1), removed: None }
    }

    /// Scores the requests that share each of `inputs` (one padded batch of distinct input
    /// sequences; a request's input is `tokens[..len - 1]`).
    fn score_batch(&self, inputs: &[&[u32]], groups: &[Vec<&Request>]) -> Result<Vec<Vec<Scored>>> {
        let model = &self.run.model;
        let device = model.tok_emb.device().clone();
        let t = inputs.iter().map(|x| x.len()).max().unwrap_or(1);
        let mut flat = vec![0u32; inputs.len() * t];
        // Rows of the (B*T, C) hidden state whose next-token prediction is scored, and their targets.
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (b, (x, group)) in inputs.iter().zip(groups).enumerate() {
            flat[b * t..b * t + x.len()].copy_from_slice(x);
            for r in group {
                for p in r.cont_start - 1..x.len() {
                    rows.push((b * t + p) as u32);
                    targets.push(r.tokens[p + 1]);
                }
            }
        }
        let tokens = Tensor::from_vec(flat, (inputs.len(), t), &device)?;
        let hidden = model.hidden_removing(&tokens, self.removed)?;
        let vocab = model.vocab_size;
        let chunk = (LOGIT_FLOATS / vocab).max(1);
        let mut token_scores = Vec::with_capacity(rows.len());
        for (rows, targets) in rows.chunks(chunk).zip(targets.chunks(chunk)) {
            let idx = Tensor::new(rows, &device)?;
            let logits = model.logits(&hidden.index_select(&idx, 0)?)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            let logits: Vec<f32> = logits.flatten_all()?.to_vec1()?;
            for (row, &target) in logits.chunks(vocab).zip(targets) {
                token_scores.push(log_softmax_at(row, target as usize));
            }
        }
        let mut next = token_scores.into_iter();
        let mut out = Vec::with_capacity(groups.len());
        for group in groups {
            let mut scored = Vec::with_capacity(group.len());
            for r in group {
                let n = r.tokens.len() - r.cont_start;
                let mut s = Scored { logprob: 0.0, greedy: true, n_tokens: n };
                for (lp, greedy) in next.by_ref().take(n) {
                    s.logprob += lp;
                    s.greedy &= greedy;
                }
                scored.push(s);
            }
            out.push(scored);
        }
        Ok(out)
    }
}

/// `log softmax(row)[target]` and whether `target` is the argmax (ties go to the lowest index).
pub fn log_softmax_at(row: &[f32], target: usize) -> (f64, bool) {
    let mut max = f32::NEG_INFINITY;
    let mut arg = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > max {
            max = v;
            arg = i;
        }
    }
    let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
    ((row[target] - max) as f64 - sum.ln(), arg == target || row[target] == max)
}

impl LanguageModel for KeelLm {
    fn describe(&self) -> String {
        let m = self.run.resolved.model();
        format!(
            "keel run {} ({}, depth {}, d_model {}, {} params)",
            self.run.dir.display(),
            m.placement.as_str(),
            m.depth,
            m.d_model,
            self.run.model.n_params()
        )
    }

    fn max_len(&self) -> usize {
        self.run.resolved.train().seq_len
    }

    fn tokenizer(&self) -> &KeelTokenizer {
        &self.run.tokenizer
    }

    fn greedy(
        &mut self,
        prompts: &[Vec<u32>],
        max_new: usize,
        done: &mut dyn FnMut(usize, &[u32]) -> bool,
    ) -> Result<Vec<Vec<u32>>> {
        crate::decode::greedy_batch(&self.run.model, self.run.tokenizer.vocab_size(), prompts, max_new, done)
    }

    fn generation_batch(&self) -> usize {
        self.batch_size
    }

    fn score(&mut self, requests: &[Request], done: &mut dyn FnMut(usize)) -> Result<Vec<Scored>> {
        check_fits(requests, self.max_len())?;
        // Requests with the same input (MMLU's four answers after one context) share a forward row.
        let mut unique: std::collections::HashMap<&[u32], usize> = std::collections::HashMap::new();
        let mut inputs: Vec<&[u32]> = Vec::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            let x = &r.tokens[..r.tokens.len() - 1];
            let u = *unique.entry(x).or_insert_with(|| {
                inputs.push(x);
                members.push(Vec::new());
                inputs.len() - 1
            });
            members[u].push(i);
        }
        // Longest first, so batches hold similar lengths and padding stays small.
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&u| std::cmp::Reverse(inputs[u].len()));
        let mut out = vec![Scored { logprob: 0.0, greedy: false, n_tokens: 0 }; requests.len()];
        for chunk in order.chunks(self.batch_size) {
            let batch_inputs: Vec<&[u32]> = chunk.iter().map(|&u| inputs[u]).collect();
            let groups: Vec<Vec<&Request>> =
                chunk.iter().map(|&u| members[u].iter().map(|&i| &requests[i]).collect()).collect();
            let scored = self.score_batch(&batch_inputs, &groups).context("scoring a batch")?;
            let mut finished = 0;
            for (&u, s) in chunk.iter().zip(scored) {
                for (&i, s) in members[u].iter().zip(s) {
                    out[i] = s;
                }
                finished += members[u].len();
            }
            done(finished);
        }
        Ok(out)
    }
}

/// Where a benchmark's results go: `--out`, else `RUN/eval/NAME`; an existing folder needs `--force`.
pub fn results_dir(out: Option<&Path>, default: PathBuf, force: bool) -> Result<PathBuf> {
    let dir = out.map(Path::to_path_buf).unwrap_or(default);
    // keel's own scratch files (a temporary results.json of a killed eval) are not results.
    if dir.exists() && crate::files::real_entries(&dir).is_ok_and(|e| !e.is_empty()) && !force {
        return Err(InputError(format!(
            "results folder {} already holds results; keel does not overwrite them\n  pass --force to replace them, or --out DIR",
            dir.display()
        ))
        .into());
    }
    std::fs::create_dir_all(&dir).map_err(|e| {
        InputError(format!("cannot create results folder {}: {e}\n  choose a writable --out", dir.display()))
    })?;
    Ok(dir)
}
