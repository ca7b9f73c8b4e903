//! Text generation: sampling one token at a time from a model, incrementally with a KV cache.
//!
//! A [`Decoder`] is anything that takes tokens after the ones it has seen and returns the logits
//! that follow: keel's own model with its [`KvCache`] ([`Cached`]), the same model re-running the
//! whole sequence every step ([`Uncached`], the reference and the benchmark's baseline), or a
//! Hugging Face Llama folder through candle-transformers. [`generate`] drives any of them.
//!
//! A model has a context of `train.seq_len` positions (its RoPE table). When prompt and sample
//! fill it, the window slides: the last half of the context is kept and read again from position 0
//! (one prefill), so no position the model was not trained on is ever asked of it. Both keel
//! decoders slide the same way, so cached and uncached generation stay equal token for token.

use crate::data::tokenizer::KeelTokenizer;
use crate::model::{KvCache, Model};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use std::io::Write;
use std::time::Instant;

/// A model that decodes a window of tokens incrementally.
pub trait Decoder {
    /// One line naming the model.
    fn describe(&self) -> String;
    /// The most positions the model takes.
    fn context_len(&self) -> usize;
    fn tokenizer(&self) -> &KeelTokenizer;
    /// Starts over: `tokens` from position 0, forgetting everything fed before. Returns the logits
    /// after the last of them (V, f32).
    fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// One more token at the next position; returns the logits after it.
    fn step(&mut self, token: u32) -> Result<Vec<f32>>;
}

/// The last row of `logits` (B*T, V) with B = 1, as f32 on the host.
fn last_row(logits: &Tensor) -> Result<Vec<f32>> {
    let n = logits.dim(0)?;
    Ok(logits.get(n - 1)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec1()?)
}

/// keel's model with a KV cache: each step runs one position through the model.
pub struct Cached<'a> {
    pub model: &'a Model,
    pub tokenizer: &'a KeelTokenizer,
    pub name: String,
    cache: KvCache,
}

impl<'a> Cached<'a> {
    pub fn new(model: &'a Model, tokenizer: &'a KeelTokenizer, name: String) -> Self {
        Cached { model, tokenizer, name, cache: KvCache::new() }
    }

    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let device = self.model.tok_emb.device();
        let x = Tensor::new(tokens, device)?.unsqueeze(0)?;
        last_row(&self.model.forward_cached(&x, &mut self.cache)?)
    }
}

impl Decoder for Cached<'_> {
    fn describe(&self) -> String {
        format!("{} (KV cache)", self.name)
    }
    fn context_len(&self) -> usize {
        self.model.context_len()
    }
    fn tokenizer(&self) -> &KeelTokenizer {
        self.tokenizer
    }
    fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.cache = KvCache::new();
        self.feed(tokens)
    }
    fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        self.feed(&[token])
    }
}

/// keel's model without a cache: each step runs the whole window through [`Model::forward`], as
/// nanoGPT's `generate` does.
pub struct Uncached<'a> {
    pub model: &'a Model,
    pub tokenizer: &'a KeelTokenizer,
    pub name: String,
    window: Vec<u32>,
}

impl<'a> Uncached<'a> {
    pub fn new(model: &'a Model, tokenizer: &'a KeelTokenizer, name: String) -> Self {
        Uncached { model, tokenizer, name, window: Vec::new() }
    }

    fn run(&self) -> Result<Vec<f32>> {
        let x = Tensor::new(self.window.as_slice(), self.model.tok_emb.device())?.unsqueeze(0)?;
        last_row(&self.model.forward(&x)?)
    }
}

impl Decoder for Uncached<'_> {
    fn describe(&self) -> String {
        format!("{} (no cache)", self.name)
    }
    fn context_len(&self) -> usize {
        self.model.context_len()
    }
    fn tokenizer(&self) -> &KeelTokenizer {
        self.tokenizer
    }
    fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.window = tokens.to_vec();
        self.run()
    }
    fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        self.window.push(token);
        self.run()
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingOptions {
    /// 0 = greedy (argmax); otherwise logits are divided by it before the softmax.
    pub temperature: f64,
    /// Keep the k most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches p, in (0, 1].
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl SamplingOptions {
    fn sampling(&self) -> Sampling {
        let temperature = self.temperature;
        let top_p = self.top_p.filter(|&p| p < 1.0);
        if temperature == 0.0 {
            return Sampling::ArgMax;
        }
        match (self.top_k, top_p) {
            (None, None) => Sampling::All { temperature },
            (Some(k), None) => Sampling::TopK { k, temperature },
            (None, Some(p)) => Sampling::TopP { p, temperature },
            (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
        }
    }

    /// Why these options cannot be used, if they cannot.
    pub fn check(&self) -> std::result::Result<(), String> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!(
                "--temperature {} is not allowed: it must be 0 (greedy) or a positive number\n  pass e.g. --temperature 0.8, or 0 for greedy decoding",
                self.temperature
            ));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(format!(
                    "--top-p {p} is outside (0, 1]: it is the probability mass kept\n  pass e.g. --top-p 0.9 (1 keeps every token)"
                ));
            }
        }
        if self.top_k == Some(0) {
            return Err(
                "--top-k 0 keeps no token\n  pass a positive --top-k, or leave it out to keep every token".into()
            );
        }
        Ok(())
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingOptions,
    /// Generation stops at the first of these in the generated text, which is cut before it.
    pub stop: Vec<String>,
    /// Stop at the tokenizer's end-of-text token.
    pub stop_at_eot: bool,
    pub num_samples: usize,
}

/// Why a sample ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    Length,
    Stop,
    EndOfText,
}

/// One generated sample.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    /// The generated token ids (after the prompt), including a stop string's tokens.
    pub tokens: Vec<u32>,
    /// Their text, cut before a stop string.
    pub text: String,
    pub finish: Finish,
    /// Seconds spent reading the prompt, then generating.
    pub prefill_s: f64,
    pub decode_s: f64,
    /// Times the window slid (see the module's doc).
    pub slides: usize,
}

impl Sample {
    /// Generated tokens per second, prompt excluded.
    pub fn tokens_per_s(&self) -> f64 {
        if self.decode_s > 0.0 {
            self.tokens.len() as f64 / self.decode_s
        } else {
            0.0
        }
    }
}

/// The text before the first stop string, and whether one was found.
fn cut_at_stop<'t>(text: &'t str, stop: &[String]) -> (&'t str, bool) {
    let first = stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min();
    match first {
        Some(at) => (&text[..at], true),
        None => (text, false),
    }
}

/// How much of `text` can be shown: all of it, less a trailing partial UTF-8 character (the
/// tokenizer decodes it as U+FFFD) and any tail that may still grow into a stop string.
fn safe_to_show(text: &str, stop: &[String]) -> usize {
    let mut end = text.len();
    if text.ends_with('\u{FFFD}') {
        end = text.trim_end_matches('\u{FFFD}').len();
    }
    let shown = &text[..end];
    for s in stop.iter().filter(|s| !s.is_empty()) {
        // The longest proper prefix of `s` that `shown` ends with.
        for (i, _) in s.char_indices().skip(1) {
            if shown.ends_with(&s[..i]) {
                end = end.min(shown.len() - i);
                break;
            }
        }
    }
    let mut end = end.min(shown.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// Logits restricted to the tokenizer's vocabulary (a model may have padding rows past it).
fn sample_from(processor: &mut LogitsProcessor, logits: &[f32], vocab: usize) -> Result<u32> {
    let n = vocab.min(logits.len());
    let t = Tensor::from_slice(&logits[..n], n, &Device::Cpu)?;
    Ok(processor.sample(&t)?)
}

/// Generates `req.num_samples` samples in turn from one seeded sampler; `out` receives each
/// sample's text as it comes (after `on_sample_start(i)`), ending before any stop string.
pub fn generate(
    decoder: &mut dyn Decoder,
    req: &Request,
    mut on_sample_start: impl FnMut(usize),
    out: &mut dyn Write,
) -> Result<Vec<Sample>> {
    let ctx = decoder.context_len();
    anyhow::ensure!(!req.prompt.is_empty(), "internal: an empty prompt");
    anyhow::ensure!(req.prompt.len() <= ctx, "internal: prompt longer than the context");
    let mut processor = LogitsProcessor::from_sampling(req.sampling.seed, req.sampling.sampling());
    let vocab = decoder.tokenizer().vocab_size();
    let eot = if req.stop_at_eot { decoder.tokenizer().eot } else { None };
    let mut samples = Vec::with_capacity(req.num_samples);
    for i in 0..req.num_samples {
        on_sample_start(i);
        let t0 = Instant::now();
        let mut window = req.prompt.clone();
        let mut logits = decoder.prefill(&window).context("reading the prompt")?;
        let prefill_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let (mut tokens, mut shown, mut slides) = (Vec::new(), 0usize, 0usize);
        let mut text = String::new();
        let mut finish = Finish::Length;
        while tokens.len() < req.max_new_tokens {
            let next = sample_from(&mut processor, &logits, vocab)?;
            tokens.push(next);
            if Some(next) == eot {
                finish = Finish::EndOfText;
                break;
            }
            text = decoder.tokenizer().decode(&tokens)?;
            let (kept, stopped) = cut_at_stop(&text, &req.stop);
            let end = if stopped { kept.len() } else { safe_to_show(&text, &req.stop) };
            if end > shown {
                out.write_all(&text.as_bytes()[shown..end])?;
                out.flush()?;
                shown = end;
            }
            if stopped {
                finish = Finish::Stop;
                break;
            }
            if tokens.len() == req.max_new_tokens {
                break;
            }
            window.push(next);
            logits = if window.len() <= ctx {
                decoder.step(next)?
            } else {
                // The context is full: keep its last half and read it again from position 0.
                window.drain(..window.len() - ctx / 2);
                slides += 1;
                decoder.prefill(&window)?
            };
        }
        let decoded =
            if finish == Finish::EndOfText { decoder.tokenizer().decode(&tokens[..tokens.len() - 1])? } else { text };
        let text = cut_at_stop(&decoded, &req.stop).0.to_string();
        if text.len() > shown {
            out.write_all(&text.as_bytes()[shown..])?;
            out.flush()?;
        }
        samples.push(Sample { tokens, text, finish, prefill_s, decode_s: t1.elapsed().as_secs_f64(), slides });
    }
    Ok(samples)
}

/// Greedy decoding of one prompt on any [`Decoder`]: new tokens until `done(its new tokens)` or
/// `max_new_tokens`. Prompt and budget must fit the context (the caller truncates).
pub fn greedy_one(
    decoder: &mut dyn Decoder,
    prompt: &[u32],
    max_new_tokens: usize,
    mut done: impl FnMut(&[u32]) -> bool,
) -> Result<Vec<u32>> {
    anyhow::ensure!(!prompt.is_empty(), "internal: an empty prompt");
    anyhow::ensure!(
        prompt.len() + max_new_tokens <= decoder.context_len(),
        "internal: a prompt of {} tokens and {max_new_tokens} new ones exceed the context of {}",
        prompt.len(),
        decoder.context_len()
    );
    let vocab = decoder.tokenizer().vocab_size();
    let mut argmax = LogitsProcessor::from_sampling(0, Sampling::ArgMax);
    let mut out = Vec::new();
    if max_new_tokens == 0 {
        return Ok(out);
    }
    let mut logits = decoder.prefill(prompt)?;
    loop {
        out.push(sample_from(&mut argmax, &logits, vocab)?);
        if out.len() >= max_new_tokens || done(&out) {
            return Ok(out);
        }
        logits = decoder.step(*out.last().expect("a token"))?;
    }
}

/// Greedy decoding of several prompts at once, left-padded to the longest as
/// lm-evaluation-harness batches `generate_until`: each row attends only to its own tokens and
/// counts positions from its first, so it gets the tokens it would get decoded alone. Row i stops
/// when `done(i, its new tokens)` says so or at `max_new_tokens`; the batch ends when every row
/// has. Prompt and budget must fit the context (the caller truncates, as the harness does).
/// Returns each row's new tokens, argmax over the first `vocab` logits as [`generate`] takes it.
pub fn greedy_batch(
    model: &Model,
    vocab: usize,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    mut done: impl FnMut(usize, &[u32]) -> bool,
) -> Result<Vec<Vec<u32>>> {
    let batch = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    anyhow::ensure!(prompts.iter().all(|p| !p.is_empty()), "internal: an empty prompt in a batch");
    anyhow::ensure!(
        width + max_new_tokens <= model.context_len(),
        "internal: a prompt of {width} tokens and {max_new_tokens} new ones exceed the context of {}",
        model.context_len()
    );
    let mut out = vec![Vec::new(); batch];
    if batch == 0 || max_new_tokens == 0 {
        return Ok(out);
    }
    let device = model.tok_emb.device();
    let pads: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
    let grid: Vec<u32> =
        prompts.iter().flat_map(|p| std::iter::repeat_n(0, width - p.len()).chain(p.iter().copied())).collect();
    let mut cache = KvCache::left_padded(pads);
    let logits = model.forward_cached(&Tensor::from_vec(grid, (batch, width), device)?, &mut cache)?;
    let last_rows = Tensor::from_vec((0..batch).map(|b| (b * width + width - 1) as u32).collect(), batch, device)?;
    let mut logits = logits.index_select(&last_rows, 0)?;
    let mut argmax = LogitsProcessor::from_sampling(0, Sampling::ArgMax);
    let mut active = vec![true; batch];
    loop {
        let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec2()?;
        for (i, row) in rows.iter().enumerate() {
            if !active[i] {
                continue;
            }
            out[i].push(sample_from(&mut argmax, row, vocab)?);
            active[i] = out[i].len() < max_new_tokens && !done(i, &out[i]);
        }
        if !active.contains(&true) {
            return Ok(out);
        }
        // Finished rows are fed their last token again; what follows it is never read.
        let next: Vec<u32> = out.iter().map(|t| *t.last().expect("every row has a token")).collect();
        logits = model.forward_cached(&Tensor::from_vec(next, (batch, 1), device)?, &mut cache)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn text_is_cut_before_the_first_stop_string() {
        assert_eq!(cut_at_stop("a\n\nQ: b", &stops(&["Q:", "\n\n"])), ("a", true));
        assert_eq!(cut_at_stop("abc", &stops(&["x"])), ("abc", false));
        assert_eq!(cut_at_stop("abc", &stops(&[""])), ("abc", false));
    }

    #[test]
    fn a_possible_start_of_a_stop_string_is_held_back() {
        assert_eq!(safe_to_show("hello Q", &stops(&["Q:"])), 6);
        assert_eq!(safe_to_show("hello Q", &stops(&[])), 7);
        assert_eq!(safe_to_show("ab\u{FFFD}", &stops(&[])), 2);
        assert_eq!(safe_to_show("end\n", &stops(&["\n\n"])), 3);
    }

    #[test]
    fn bad_sampling_options_are_named() {
        let ok = SamplingOptions { temperature: 0.8, top_k: Some(50), top_p: Some(1.0), seed: 1 };
        assert!(ok.check().is_ok());
        for bad in [
            SamplingOptions { temperature: -0.1, ..ok.clone() },
            SamplingOptions { temperature: f64::NAN, ..ok.clone() },
            SamplingOptions { top_p: Some(0.0), ..ok.clone() },
            SamplingOptions { top_p: Some(1.5), ..ok.clone() },
            SamplingOptions { top_k: Some(0), ..ok.clone() },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        assert_eq!(SamplingOptions { temperature: 0.0, ..ok.clone() }.sampling(), Sampling::ArgMax);
        assert_eq!(ok.sampling(), Sampling::TopK { k: 50, temperature: 0.8 });
    }
}
