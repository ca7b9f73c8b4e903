//! Generic multiple choice scored by log-likelihood: JSONL sets (ARC, HellaSwag, PIQA exports) and
//! BIG-bench `task.json` multiple-choice tasks.
//!
//! Each item is a context and a list of choices; continuation `i` is ` {choice_i}` (the harness's
//! target delimiter). `acc` takes the argmax of the summed log-likelihoods; `acc_norm` divides each
//! by the choice's length in characters first (the harness's `acc_norm`).

use super::bench::{Benchmark, Data, Outcome, Session, Settings};
use super::mmlu::argmax;
use super::{encode_pair, fit, LanguageModel, Request};
use crate::InputError;
use anyhow::Result;
use serde::Serialize;
use std::path::Path;

/// One multiple-choice question.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: String,
    pub context: String,
    pub choices: Vec<String>,
    /// Indices of the choices that count as correct (one for JSONL sets; BIG-bench may list more).
    pub correct: Vec<usize>,
}

fn bad(msg: String) -> anyhow::Error {
    InputError(msg).into()
}

/// Reads a JSONL file: per line `choices` (strings), `answer` (index, or the correct choice's text)
/// and either `context` (used verbatim) or `question` (prompted as `Question: {q}\nAnswer:`).
pub fn read_jsonl(path: &Path) -> Result<Vec<Item>> {
    let shown = path.display();
    let mut items = Vec::new();
    for (n, v) in super::jsonl_objects(path, "pass --data with a JSONL file")? {
        let context = match (v.get("context").and_then(|c| c.as_str()), v.get("question").and_then(|q| q.as_str())) {
            (Some(c), _) => c.to_string(),
            (None, Some(q)) => format!("Question: {}\nAnswer:", q.trim()),
            (None, None) => {
                return Err(bad(format!(
                    "{shown}, line {n}: no \"context\" or \"question\" string\n  add one of them to every line"
                )))
            }
        };
        let choices: Vec<String> = v
            .get("choices")
            .and_then(|c| c.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default();
        if choices.len() < 2 {
            return Err(bad(format!(
                "{shown}, line {n}: \"choices\" must be a list of at least two strings\n  fix that line"
            )));
        }
        let answer = match v.get("answer") {
            Some(serde_json::Value::Number(x)) => x.as_u64().map(|x| x as usize),
            Some(serde_json::Value::String(s)) => choices.iter().position(|c| c == s),
            _ => None,
        };
        let answer = answer.filter(|&a| a < choices.len()).ok_or_else(|| {
            bad(format!(
                "{shown}, line {n}: \"answer\" must be an index below {} (or the text of a choice)\n  fix that line",
                choices.len()
            ))
        })?;
        let id =
            v.get("id").map(|x| x.as_str().map(String::from).unwrap_or_else(|| x.to_string())).unwrap_or(n.to_string());
        items.push(Item { id, context, choices, correct: vec![answer] });
    }
    if items.is_empty() {
        return Err(bad(format!("{shown} holds no questions\n  pass a JSONL file with one question per line")));
    }
    Ok(items)
}

/// Reads a BIG-bench task folder's `task.json`, keeping its multiple-choice examples and applying
/// the task's own prefixes (defaults `\nQ: `, `\nA: `, `\n  choice: `, choices appended to the
/// input) as BIG-bench's JSON task does.
pub fn read_bigbench(dir: &Path) -> Result<Vec<Item>> {
    let path = if dir.is_dir() { dir.join("task.json") } else { dir.to_path_buf() };
    let shown = path.display();
    let text = crate::files::read_to_string(&path).map_err(|e| {
        bad(format!("cannot read {shown}: {e}\n  pass --data with a BIG-bench task folder (benchmark_tasks/NAME)"))
    })?;
    let task: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("{shown} is not JSON: {e}\n  restore the task file")))?;
    let s = |key: &str, default: &str| task.get(key).and_then(|v| v.as_str()).unwrap_or(default).to_string();
    let task_prefix = s("task_prefix", "");
    let input_prefix = s("example_input_prefix", "\nQ: ");
    let output_prefix = s("example_output_prefix", "\nA: ");
    let choice_prefix = s("choice_prefix", "\n  choice: ");
    let append = task.get("append_choices_to_input").and_then(|v| v.as_bool()).unwrap_or(true);
    let examples = task.get("examples").and_then(|e| e.as_array()).ok_or_else(|| {
        bad(format!(
            "{shown} has no \"examples\" list (tasks with subtasks keep them in subfolders)\n  pass --data with the subtask's folder"
        ))
    })?;
    let mut items = Vec::new();
    for (i, ex) in examples.iter().enumerate() {
        let Some(scores) = ex.get("target_scores").and_then(|t| t.as_object()) else { continue };
        let input = ex.get("input").and_then(|x| x.as_str()).unwrap_or_default();
        let choices: Vec<String> = scores.keys().cloned().collect();
        let values: Vec<f64> = scores.values().map(|v| v.as_f64().unwrap_or(0.0)).collect();
        let best = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mut context = format!("{task_prefix}{input_prefix}{input}");
        if append {
            for c in &choices {
                context.push_str(&choice_prefix);
                context.push_str(c);
            }
        }
        context.push_str(&output_prefix);
        let correct = values.iter().enumerate().filter(|(_, v)| **v == best && best > 0.0).map(|(i, _)| i).collect();
        items.push(Item { id: i.to_string(), context, choices, correct });
    }
    if items.is_empty() {
        return Err(bad(format!(
            "{shown} has no multiple-choice examples (none with \"target_scores\")\n  keel scores BIG-bench multiple-choice tasks only; pick another task"
        )));
    }
    Ok(items)
}

/// The BIG-bench output prefix ends in a space; the context keeps it and the continuation is the
/// bare choice, so [`encode_pair`] moves the space over exactly as the harness would.
fn continuation(context: &str, choice: &str) -> String {
    if context.ends_with(char::is_whitespace) {
        choice.to_string()
    } else {
        format!(" {choice}")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Answered {
    pub id: String,
    pub correct: String,
    pub predicted: usize,
    pub predicted_norm: usize,
    pub acc: bool,
    pub acc_norm: bool,
    /// Log-likelihoods of the choices, `;`-separated.
    pub loglikelihoods: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub bench: String,
    pub model: String,
    pub data: String,
    pub shots: usize,
    pub questions: usize,
    pub acc: f64,
    pub acc_norm: f64,
    pub truncated: usize,
    pub elapsed_s: f64,
    pub questions_per_s: f64,
    pub keel_version: &'static str,
}

/// Scores `items`, with the first `shots` items as exemplars (`{context} {gold}\n\n` each, then
/// excluded from scoring).
pub fn evaluate(
    lm: &mut dyn LanguageModel,
    bench: &str,
    data: &str,
    items: &[Item],
    shots: usize,
    limit: Option<usize>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Results, Vec<Answered>)> {
    let start = std::time::Instant::now();
    let shots = shots.min(items.len().saturating_sub(1));
    let mut prefix = String::new();
    for ex in &items[..shots] {
        let gold = ex.correct.first().copied().unwrap_or(0);
        prefix.push_str(&format!("{}{}\n\n", ex.context, continuation(&ex.context, &ex.choices[gold])));
    }
    let scored = &items[shots..];
    let scored = &scored[..limit.unwrap_or(usize::MAX).min(scored.len())];
    let mut requests: Vec<Request> = Vec::new();
    let mut truncated = 0;
    for item in scored {
        let context = format!("{prefix}{}", item.context);
        let mut cut_any = false;
        for c in &item.choices {
            let (tokens, start) = encode_pair(lm.tokenizer(), &context, &continuation(&item.context, c))?;
            let (req, cut) = fit(tokens, start, lm.max_len())?;
            cut_any |= cut > 0;
            requests.push(req);
        }
        truncated += cut_any as usize;
    }
    let scores = super::score_all(lm, &requests, progress)?;
    let mut answered = Vec::new();
    let mut at = 0;
    let (mut acc, mut acc_norm) = (0usize, 0usize);
    for item in scored {
        let k = item.choices.len();
        let ll: Vec<f64> = scores[at..at + k].iter().map(|s| s.logprob).collect();
        at += k;
        let norm: Vec<f64> = ll.iter().zip(&item.choices).map(|(l, c)| l / c.chars().count().max(1) as f64).collect();
        let (p, pn) = (argmax(&ll), argmax(&norm));
        let (ok, ok_norm) = (item.correct.contains(&p), item.correct.contains(&pn));
        acc += ok as usize;
        acc_norm += ok_norm as usize;
        answered.push(Answered {
            id: item.id.clone(),
            correct: item.correct.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(";"),
            predicted: p,
            predicted_norm: pn,
            acc: ok,
            acc_norm: ok_norm,
            loglikelihoods: ll.iter().map(|l| format!("{l:.6}")).collect::<Vec<_>>().join(";"),
        });
    }
    let n = scored.len();
    let elapsed = start.elapsed().as_secs_f64();
    let results = Results {
        bench: bench.to_string(),
        model: lm.describe(),
        data: data.to_string(),
        shots,
        questions: n,
        acc: acc as f64 / n.max(1) as f64,
        acc_norm: acc_norm as f64 / n.max(1) as f64,
        truncated,
        elapsed_s: elapsed,
        questions_per_s: n as f64 / elapsed.max(1e-9),
        keel_version: crate::VERSION,
    };
    Ok((results, answered))
}

/// Scores the items `read` finds in `--data`; the summary is named after the results folder.
fn run_with(bench: &dyn Benchmark, s: &mut Session, read: fn(&Path) -> Result<Vec<Item>>) -> Result<Outcome> {
    let name = bench.folder(s.settings);
    let data = s.data().to_string();
    let items = read(Path::new(&data))?;
    s.start()?;
    let (results, answered) =
        evaluate(s.scorer.lm(), &name, &data, &items, s.settings.shots_or(0), s.settings.limit, s.progress)?;
    let summary = format!(
        "{name}: acc {:.4}, acc_norm {:.4} over {} questions ({} truncated), {:.1} questions/s; ",
        results.acc, results.acc_norm, results.questions, results.truncated, results.questions_per_s
    );
    Outcome::new(&results, summary)?.rows("questions.csv", &answered)
}

/// `--bench mc-jsonl`.
pub struct McJsonl;

impl Benchmark for McJsonl {
    fn name(&self) -> &'static str {
        "mc-jsonl"
    }

    fn about(&self) -> &'static str {
        "Multiple choice from JSONL: question/context, choices, answer index"
    }

    fn data(&self) -> Data {
        Data::Required("pass --data FILE.jsonl (question or context, choices, answer per line)")
    }

    fn takes_shots(&self) -> bool {
        true
    }

    fn metrics(&self) -> &'static [&'static str] {
        &["acc", "acc_norm"]
    }

    /// `mc-{file stem}-{shots}shot`.
    fn folder(&self, s: &Settings) -> String {
        let data = s.data.as_deref().unwrap_or("");
        let stem = Path::new(data).file_stem().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        format!("mc-{stem}-{}shot", s.shots_or(0))
    }

    fn run(&self, s: &mut Session) -> Result<Outcome> {
        run_with(self, s, read_jsonl)
    }
}

/// `--bench bigbench`.
pub struct Bigbench;

impl Benchmark for Bigbench {
    fn name(&self) -> &'static str {
        "bigbench"
    }

    fn about(&self) -> &'static str {
        "A BIG-bench multiple-choice task folder (task.json)"
    }

    fn data(&self) -> Data {
        Data::Required("pass --data with a BIG-bench task folder (bigbench/benchmark_tasks/NAME)")
    }

    fn takes_shots(&self) -> bool {
        true
    }

    fn metrics(&self) -> &'static [&'static str] {
        &["acc", "acc_norm"]
    }

    /// `bigbench-{task folder}-{shots}shot`.
    fn folder(&self, s: &Settings) -> String {
        let d = s.data.as_deref().unwrap_or("").trim_end_matches('/');
        let d = d.strip_suffix("/task.json").unwrap_or(d);
        format!(
            "bigbench-{}-{}shot",
            Path::new(d).file_name().map(|f| f.to_string_lossy()).unwrap_or_default(),
            s.shots_or(0)
        )
    }

    fn run(&self, s: &mut Session) -> Result<Outcome> {
        run_with(self, s, read_bigbench)
    }
}
