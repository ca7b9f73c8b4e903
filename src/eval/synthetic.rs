//! Held-out accuracy on keel's built-in synthetic tasks (`src/data/synthetic.rs`).
//!
//! Examples come from their own seeded stream, disjoint from the training and validation text.
//! Each is scored like a harness `loglikelihood` request with greedy matching: context
//! `{task} {prompt}=`, continuation `{answer}\n`; an example is correct when every continuation
//! token is the model's argmax (exact match under greedy decoding, from one forward pass).

use super::bench::{self, Benchmark, Data, Scorer, Session};
use super::{encode_pair, fit, LanguageModel};
use crate::config::Config;
use crate::data::synthetic;
use crate::rng::Rng;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;

/// One held-out example.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub id: usize,
    pub task: &'static str,
    pub prompt: String,
    pub answer: String,
}

/// `n` examples from the evaluation stream of `seed` (the config's `data.synthetic_seed`).
pub fn examples(seed: u64, n: usize) -> Vec<Example> {
    let mut rng = Rng::stream(seed, "synthetic-eval");
    (0..n)
        .map(|id| {
            let (task, prompt, answer) = synthetic::example(&mut rng);
            Example { id, task, prompt, answer }
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub id: usize,
    pub task: &'static str,
    pub prompt: String,
    pub answer: String,
    pub correct: bool,
    pub logprob: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskAccuracy {
    pub correct: usize,
    pub total: usize,
    pub accuracy: f64,
    /// Mean log-likelihood of the answer, per example.
    pub mean_logprob: f64,
}

/// Scores `examples`; returns per-example outcomes and per-task plus overall ("all") accuracy.
pub fn evaluate(
    lm: &mut dyn LanguageModel,
    examples: &[Example],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<Outcome>, BTreeMap<String, TaskAccuracy>)> {
    let mut requests = Vec::with_capacity(examples.len());
    for e in examples {
        let (tokens, start) =
            encode_pair(lm.tokenizer(), &format!("{} {}=", e.task, e.prompt), &format!("{}\n", e.answer))?;
        requests.push(fit(tokens, start, lm.max_len())?.0);
    }
    let scores = super::score_all(lm, &requests, progress)?;
    let outcomes: Vec<Outcome> = examples
        .iter()
        .zip(&scores)
        .map(|(e, s)| Outcome {
            id: e.id,
            task: e.task,
            prompt: e.prompt.clone(),
            answer: e.answer.clone(),
            correct: s.greedy,
            logprob: s.logprob,
        })
        .collect();
    let mut by_task: BTreeMap<String, TaskAccuracy> = BTreeMap::new();
    for o in &outcomes {
        for key in [o.task, "all"] {
            let t = by_task.entry(key.to_string()).or_insert(TaskAccuracy {
                correct: 0,
                total: 0,
                accuracy: 0.0,
                mean_logprob: 0.0,
            });
            t.total += 1;
            t.correct += o.correct as usize;
            t.mean_logprob += o.logprob;
        }
    }
    for t in by_task.values_mut() {
        t.accuracy = t.correct as f64 / t.total as f64;
        t.mean_logprob /= t.total as f64;
    }
    Ok((outcomes, by_task))
}

/// `results.json` of `--bench synthetic`.
#[derive(Serialize)]
struct Results<'a> {
    bench: &'static str,
    model: String,
    placement: Option<String>,
    scoring: &'static str,
    seed: u64,
    examples: usize,
    accuracy: f64,
    tasks: &'a BTreeMap<String, TaskAccuracy>,
    elapsed_s: f64,
    keel_version: &'static str,
}

/// `--bench synthetic`.
pub struct Synthetic;

impl Benchmark for Synthetic {
    fn name(&self) -> &'static str {
        "synthetic"
    }

    fn about(&self) -> &'static str {
        "Held-out accuracy on keel's built-in synthetic tasks"
    }

    fn data(&self) -> Data {
        Data::None
    }

    fn metrics(&self) -> &'static [&'static str] {
        &["accuracy"]
    }

    fn run(&self, s: &mut Session) -> Result<bench::Outcome> {
        let placement = s.scorer.placement();
        let seed = match &*s.scorer {
            Scorer::Keel(k) => k.run.resolved.config.data.synthetic_seed,
            Scorer::Hf(_) => Config::default().data.synthetic_seed,
        };
        let examples = examples(seed, s.settings.limit.unwrap_or(600));
        s.start()?;
        let start = std::time::Instant::now();
        let (outcomes, by_task) = evaluate(s.scorer.lm(), &examples, s.progress)?;
        let results = Results {
            bench: "synthetic",
            model: s.scorer.lm().describe(),
            placement,
            scoring: "greedy exact match of '{answer}\\n' after '{task} {prompt}=' (one forward pass per example)",
            seed,
            examples: outcomes.len(),
            accuracy: by_task.get("all").map(|t| t.accuracy).unwrap_or(f64::NAN),
            tasks: &by_task,
            elapsed_s: start.elapsed().as_secs_f64(),
            keel_version: crate::VERSION,
        };
        let mut summary = format!("{:<10} {:>9} {:>9} {:>12}\n", "task", "accuracy", "examples", "mean logprob");
        for (task, t) in &by_task {
            summary.push_str(&format!("{task:<10} {:>9.4} {:>9} {:>12.3}\n", t.accuracy, t.total, t.mean_logprob));
        }
        bench::Outcome::new(&results, summary)?.rows("examples.csv", &outcomes)
    }
}
