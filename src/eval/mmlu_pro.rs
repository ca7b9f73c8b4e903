//! MMLU-Pro (`TIGER-Lab/MMLU-Pro`) scored as lm-evaluation-harness's log-likelihood task
//! `leaderboard_mmlu_pro` (`lm_eval/tasks/leaderboard/mmlu_pro/mmlu_pro.yaml` + `utils.py`,
//! task version 0.1, lm-eval 0.4.x), the multiple-choice variant that matches keel's MMLU scorer
//! (lm-eval's default `mmlu_pro` is generative chain-of-thought, which this is not):
//!
//! ```text
//! {shot question}\nA. {option 1}\n...\n{L}. {option k}\nAnswer: {answer}\n\n   (each shot)
//! {question}\nA. {option 1}\n...\n{L}. {option k}\nAnswer:
//! ```
//!
//! - `doc_to_text` (`utils.py`) writes the question as it is (no strip) and every entry of
//!   `options` after its letter, so rows with fewer than 10 options get fewer letters, and an
//!   `N/A` option is kept and scored like any other (TIGER-Lab's own scripts drop them; the
//!   harness does not).
//! - `doc_to_choice` is the letters `A`.. (one per option); each continuation is ` {letter}`.
//! - `doc_to_target: answer` is the letter; a letter that is not among the row's choices makes the
//!   harness score the row wrong (`gold = -100`), and keel does the same and counts them.
//! - `num_fewshot: 5`, `fewshot_split: validation`, `sampler: first_n`: the first five rows of the
//!   validation split, whatever their category, before every question; no `description`, so no
//!   header.
//! - `acc` is the argmax (first on ties) of the summed log-likelihoods, averaged over questions
//!   (the leaderboard task is one task, so the mean is micro); keel also reports it per category.
//!
//! `--data` is the hub's folder (`data/test-00000-of-00001.parquet`,
//! `data/validation-00000-of-00001.parquet`), `hf:ORG/NAME` (that repo in the hub cache), or a
//! test split file (parquet, JSONL or JSON), with the validation split looked up beside it.

use super::bench::{Benchmark, Data, Outcome, Session, Settings};
use super::mmlu::{
    argmax, empty, enough_exemplars, fewshot_context, letter_requests, lettered, Accuracy, OPTION_LETTERS,
};
use super::records::{self, Record};
use super::LanguageModel;
use crate::InputError;
use anyhow::Result;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `num_fewshot` of `mmlu_pro.yaml`.
pub const DEFAULT_SHOTS: usize = 5;
pub const PROMPT_VARIANT: &str = "lm-evaluation-harness leaderboard_mmlu_pro (v0.1): '{question}\\nA. ..\\nAnswer:' + ' A'..' J' log-likelihood, first_n shots from validation";

fn bad(msg: String) -> anyhow::Error {
    InputError(msg).into()
}

/// One row of a split.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// `question_id` (else the row number).
    pub id: String,
    pub category: String,
    pub question: String,
    pub options: Vec<String>,
    /// The `answer` letter.
    pub answer: String,
}

impl Question {
    /// The gold choice: the index of `answer` among the row's letters, `None` when it is not one
    /// of them (the harness's `gold = -100`, scored wrong).
    pub fn gold(&self) -> Option<usize> {
        OPTION_LETTERS[..self.options.len()].iter().position(|l| *l == self.answer)
    }
}

/// The rows of one split file (parquet as the hub stores it, JSONL or a JSON array): each needs
/// `question` and `answer` strings, `options` (a list of 1 to 26 strings) and `category`.
pub fn read_split(path: &Path) -> Result<Vec<Question>> {
    let shown = path.display();
    let rows = records::read(path, "pass --data with MMLU-Pro's folder (data/test-*.parquet) or a split file")?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(question(path, r)?);
    }
    if out.is_empty() {
        return Err(bad(format!("{shown} holds no questions\n  pass a split file with one question per row")));
    }
    Ok(out)
}

fn question(path: &Path, r: &Record) -> Result<Question> {
    let shown = path.display();
    let options = match r.value.get("options") {
        Some(Value::Array(a)) => a.iter().map(|o| o.as_str().map(str::to_string)).collect::<Option<Vec<String>>>(),
        _ => None,
    };
    let options = options.filter(|o| !o.is_empty() && o.len() <= OPTION_LETTERS.len()).ok_or_else(|| {
        bad(format!(
            "{shown}, row {}: no \"options\" list of 1 to 26 strings\n  every MMLU-Pro row needs its options as a list of strings",
            r.line
        ))
    })?;
    let id = match r.value.get("question_id") {
        Some(Value::String(s)) => s.clone(),
        Some(v @ Value::Number(_)) => v.to_string(),
        _ => r.line.to_string(),
    };
    Ok(Question {
        id,
        category: records::string_field(path, r, "category")?,
        question: records::string_field(path, r, "question")?,
        options,
        answer: records::string_field(path, r, "answer")?,
    })
}

/// `utils.doc_to_text`: `{question}\n`, then `{letter}. {option}\n` per option, then `Answer:`.
pub fn doc_to_text(q: &Question) -> String {
    lettered(&q.question, &q.options, "Answer:")
}

/// The full context for `q` after `shots` (each followed by ` {answer}\n\n`; no description).
pub fn prompt(shots: &[Question], q: &Question) -> String {
    let shots: Vec<(String, &str)> = shots.iter().map(|s| (doc_to_text(s), s.answer.as_str())).collect();
    fewshot_context("", &shots, &doc_to_text(q))
}

/// The test split and, when shots are wanted, the validation split `--data` names.
pub fn locate(data: &str, shots: usize) -> Result<(PathBuf, Option<PathBuf>)> {
    let root = match data.strip_prefix("hf:") {
        Some(repo) => crate::data::hub::snapshot(repo, |f| {
            let name = f.rsplit('/').next().unwrap_or(f);
            name.ends_with(".parquet") && (name.starts_with("test") || name.starts_with("validation"))
        })?,
        None => PathBuf::from(data),
    };
    let test = records::split_file(&root, None, "test")?;
    if shots == 0 {
        return Ok((test, None));
    }
    // A split file given as --data: its validation split is a sibling (the hub keeps both in data/).
    let folder = if root.is_file() { root.parent().map(Path::to_path_buf).unwrap_or_default() } else { root };
    let validation = records::split_file(&folder, None, "validation").map_err(|e| {
        bad(format!(
            "{e}\n  --shots {shots} takes the first {shots} rows of MMLU-Pro's validation split (lm-evaluation-harness's first_n); pass --shots 0 to score without exemplars"
        ))
    })?;
    if validation == test {
        return Err(bad(format!(
            "{} would be both the test split and the validation split the shots come from\n  pass --data with the folder holding test-*.parquet and validation-*.parquet",
            test.display()
        )));
    }
    Ok((test, Some(validation)))
}

/// The categories to score: `--subjects` (spaces or underscores: `computer_science` is
/// `computer science`), else all.
pub fn select(questions: Vec<Question>, only: &[String], path: &Path) -> Result<Vec<Question>> {
    if only.is_empty() {
        return Ok(questions);
    }
    let key = |s: &str| s.replace(' ', "_");
    let mut found: Vec<&str> = questions.iter().map(|q| q.category.as_str()).collect();
    found.sort();
    found.dedup();
    for s in only {
        if !found.iter().any(|c| key(c) == key(s)) {
            return Err(bad(format!(
                "--subjects {s}: no MMLU-Pro category {s} in {}\n  categories found: {}",
                path.display(),
                found.join(", ")
            )));
        }
    }
    let wanted: Vec<String> = only.iter().map(|s| key(s)).collect();
    Ok(questions.into_iter().filter(|q| wanted.contains(&key(&q.category))).collect())
}

/// One question's outcome: a row of `questions.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct Answered {
    pub id: String,
    pub category: String,
    /// The `answer` letter (scored wrong whatever the prediction when it is not among the choices).
    pub gold: String,
    pub predicted: &'static str,
    pub acc: bool,
    /// Log-likelihoods of ` A`, ` B`, ..., `;`-separated.
    pub loglikelihoods: String,
    pub truncated_tokens: usize,
    /// The full context the letters were scored after (lm-evaluation-harness's `arguments`).
    pub prompt: String,
}

/// `acc` of one category.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CategoryScore {
    pub questions: usize,
    pub acc: f64,
}

/// Everything `results.json` records.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub bench: &'static str,
    /// The lm-evaluation-harness task reproduced.
    pub task: &'static str,
    pub model: String,
    pub data: String,
    pub prompt_variant: &'static str,
    pub shots: usize,
    pub questions: usize,
    /// Questions whose prompt was cut from the left to fit the context (the harness's rule).
    pub questions_truncated: usize,
    /// Rows whose `answer` is not one of their letters (scored wrong, as the harness does).
    pub gold_not_in_options: usize,
    /// Accuracy over all questions (micro, as the one lm-eval task reports it).
    pub acc: f64,
    pub categories: BTreeMap<String, CategoryScore>,
    pub elapsed_s: f64,
    pub questions_per_s: f64,
    pub keel_version: &'static str,
}

/// Pairs questions with their log-likelihoods (one list per question, one entry per option).
pub fn score(questions: &[Question], lls: &[Vec<f64>]) -> (Vec<(usize, bool)>, f64, BTreeMap<String, CategoryScore>) {
    let mut overall = empty();
    let mut by_category: BTreeMap<String, Accuracy> = BTreeMap::new();
    let mut outcomes = Vec::with_capacity(questions.len());
    for (q, ll) in questions.iter().zip(lls) {
        let predicted = argmax(ll);
        let ok = q.gold() == Some(predicted);
        overall.add(ok);
        by_category.entry(q.category.clone()).or_insert_with(empty).add(ok);
        outcomes.push((predicted, ok));
    }
    let categories =
        by_category.into_iter().map(|(c, a)| (c, CategoryScore { questions: a.total, acc: a.accuracy })).collect();
    (outcomes, overall.accuracy, categories)
}

/// Scores `questions` with `shots` before each; `progress` counts requests (one per option).
pub fn evaluate(
    lm: &mut dyn LanguageModel,
    questions: &[Question],
    shots: &[Question],
    data: &str,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Results, Vec<Answered>)> {
    let start = std::time::Instant::now();
    let mut requests = Vec::new();
    let mut contexts = Vec::with_capacity(questions.len());
    for q in questions {
        let context = prompt(shots, q);
        let (reqs, cut) = letter_requests(lm.tokenizer(), lm.max_len(), &context, q.options.len())?;
        requests.extend(reqs);
        contexts.push((context, cut));
    }
    let scores = super::score_all(lm, &requests, progress)?;
    let mut lls = Vec::with_capacity(questions.len());
    let mut at = 0;
    for q in questions {
        lls.push(scores[at..at + q.options.len()].iter().map(|s| s.logprob).collect::<Vec<f64>>());
        at += q.options.len();
    }
    let (outcomes, acc, categories) = score(questions, &lls);
    let mut answered = Vec::with_capacity(questions.len());
    for (((q, ll), (predicted, ok)), (context, cut)) in questions.iter().zip(&lls).zip(outcomes).zip(contexts) {
        answered.push(Answered {
            id: q.id.clone(),
            category: q.category.clone(),
            gold: q.answer.clone(),
            predicted: OPTION_LETTERS[predicted],
            acc: ok,
            loglikelihoods: ll.iter().map(|l| format!("{l:.6}")).collect::<Vec<_>>().join(";"),
            truncated_tokens: cut,
            prompt: context,
        });
    }
    let n = questions.len();
    let elapsed = start.elapsed().as_secs_f64();
    let results = Results {
        bench: "mmlu_pro",
        task: "leaderboard_mmlu_pro",
        model: lm.describe(),
        data: data.to_string(),
        prompt_variant: PROMPT_VARIANT,
        shots: shots.len(),
        questions: n,
        questions_truncated: answered.iter().filter(|a| a.truncated_tokens > 0).count(),
        gold_not_in_options: questions.iter().filter(|q| q.gold().is_none()).count(),
        acc,
        categories,
        elapsed_s: elapsed,
        questions_per_s: n as f64 / elapsed.max(1e-9),
        keel_version: crate::VERSION,
    };
    Ok((results, answered))
}

/// The first `n` rows of the validation split (`first_n`; the harness refuses more than it has).
pub fn first_n(validation: Vec<Question>, n: usize, path: &Path) -> Result<Vec<Question>> {
    enough_exemplars(n, validation.len(), path)?;
    Ok(validation.into_iter().take(n).collect())
}

/// The table printed after a run.
pub fn table(results: &Results) -> String {
    let mut out = format!("{:<40} {:>9} {:>9}\n", "MMLU-Pro", "acc", "questions");
    for (name, c) in &results.categories {
        out.push_str(&format!("{name:<40} {:>9.4} {:>9}\n", c.acc, c.questions));
    }
    out.push_str(&format!("{:<40} {:>9.4} {:>9}\n", "overall (micro)", results.acc, results.questions));
    out
}

/// `--bench mmlu_pro`.
pub struct MmluPro;

impl Benchmark for MmluPro {
    fn name(&self) -> &'static str {
        "mmlu_pro"
    }

    fn about(&self) -> &'static str {
        "MMLU-Pro (up to 10 options) scored as lm-evaluation-harness's log-likelihood leaderboard_mmlu_pro"
    }

    fn data(&self) -> Data {
        Data::Required(
            "pass --data with TIGER-Lab/MMLU-Pro's folder (data/test-*.parquet, data/validation-*.parquet), hf:TIGER-Lab/MMLU-Pro, or a test split file",
        )
    }

    fn takes_shots(&self) -> bool {
        true
    }

    fn metrics(&self) -> &'static [&'static str] {
        &["acc"]
    }

    /// `mmlu_pro-{shots}shot`.
    fn folder(&self, s: &Settings) -> String {
        format!("mmlu_pro-{}shot", s.shots_or(DEFAULT_SHOTS))
    }

    fn run(&self, s: &mut Session) -> Result<Outcome> {
        let n_shots = s.settings.shots_or(DEFAULT_SHOTS);
        let data = s.data().to_string();
        let (test_path, validation_path) = locate(&data, n_shots)?;
        let mut questions = select(read_split(&test_path)?, &s.settings.subjects, &test_path)?;
        if let Some(limit) = s.settings.limit {
            questions.truncate(limit);
        }
        let shots = match &validation_path {
            Some(p) => first_n(read_split(p)?, n_shots, p)?,
            None => Vec::new(),
        };
        s.start()?;
        let (results, answered) = evaluate(s.scorer.lm(), &questions, &shots, &data, s.progress)?;
        let summary = format!(
            "{}{} questions, {} shots ({} truncated), {:.1} questions/s; ",
            table(&results),
            results.questions,
            results.shots,
            results.questions_truncated,
            results.questions_per_s
        );
        Outcome::new(&results, summary)?.rows("questions.csv", &answered)
    }
}
