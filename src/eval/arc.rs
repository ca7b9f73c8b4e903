//! ARC-Easy and ARC-Challenge (`--bench arc_easy`, `--bench arc_challenge`), and the
//! lm-evaluation-harness `multiple_choice` machinery that `hellaswag`, `piqa` and `winogrande` share
//! with them.
//!
//! # ARC
//!
//! lm-evaluation-harness's `arc_easy` (`lm_eval/tasks/arc/arc_easy.yaml`, version 1.0; commit
//! 4e7e0d47, lm-eval 0.4.13.dev0) and `arc_challenge` (`arc_challenge.yaml`, which includes it with
//! `dataset_name: ARC-Challenge`): split `test` of `allenai/ai2_arc`, 0-shot.
//!
//! ```text
//! Question: {question}\nAnswer:                          (doc_to_text, question verbatim)
//!  {choices.text[i]}                                     (each choice, after target_delimiter " ")
//! ```
//!
//! The gold answer is `choices.label.index(answerKey)`; labels are `A`..`E` or `1`..`5` in the real
//! data. Metrics `acc` and `acc_norm`.
//!
//! # The shared scoring ([`Task`], [`Doc`], [`run`])
//!
//! Each item becomes requests as `ConfigurableTask.construct_requests` builds them
//! (`lm_eval/api/task.py`): `(context, " " + choice)` per choice, or, for tasks whose `doc_to_text`
//! is the gold index (winogrande's "multiple inputs"), `(context_i, " " + target)` with one context
//! per choice. `process_results` then takes `acc` = `argmax(ll)` and `acc_norm` =
//! `argmax(ll / len(choice))`, `len` counting Python characters of `doc_to_choice`'s strings (numpy
//! argmax: the first on ties), and the aggregate is the mean with `mean_stderr` (sample standard
//! deviation over `sqrt(n)`, `lm_eval/api/metrics.py`).
//!
//! `--shots N` reproduces lm-eval's default sampler (`lm_eval/api/samplers.py::ContextSampler`): the
//! few-shot pool is the task's `train` split (none of these tasks sets `fewshot_split`, so
//! `Task.fewshot_docs` falls back to `training_docs`), and for each scored item, in file order,
//! `random.Random(1234).sample(pool, N)` draws the exemplars from one generator seeded once per task
//! (`evaluator.py` calls `set_fewshot_seed(1234)`). When the task has no `test_split`
//! (`hellaswag`, `piqa`, `winogrande`), lm-eval's `fewshot_cfg.split == test_split` holds
//! (`None == None`), so it draws `N + 1` and drops exemplars equal to the item itself. [`PyRandom`](super::py_random::PyRandom)
//! is CPython's Mersenne Twister and `random.sample`, so the exemplars are the ones lm-eval picks.
//! Each exemplar is `doc_to_text + " " + gold choice + "\n\n"` (`build_qa_turn`).

use super::bench::{Benchmark, Data, Outcome, Session, Settings};
use super::generative::mean_and_stderr;
use super::mmlu::{argmax, argmax_per_char};
use super::records::{self, Record};
use super::{encode_pair, fit, LanguageModel, Request};
use crate::InputError;
use anyhow::Result;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn bad(msg: String) -> anyhow::Error {
    InputError(msg).into()
}

pub use super::{FEWSHOT_DELIMITER, FEWSHOT_SEED, TARGET_DELIMITER};

/// How one item becomes requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Form {
    /// `doc_to_text` is the context; each choice is scored after it as `" " + choice`.
    Query(String),
    /// `doc_to_text` is the gold index (lm-eval's "multiple inputs", winogrande): choice `i`'s context
    /// is `before + options[i]`, and `" " + after` is scored after each.
    Blank { before: String, options: Vec<String>, after: String },
}

/// One item after the task's `process_docs`, `doc_to_text`, `doc_to_choice` and `doc_to_target`.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub id: String,
    /// The row as read: lm-eval leaves exemplars equal to the scored item out (`rm_eval_doc`).
    pub raw: Value,
    pub form: Form,
    /// `doc_to_choice`; `acc_norm` divides by their lengths in characters.
    pub choices: Vec<String>,
    pub gold: usize,
}

impl Doc {
    /// An item scored as `(query, " " + choice)` per choice.
    pub fn query(id: String, raw: Value, query: String, choices: Vec<String>, gold: usize) -> Doc {
        Doc { id, raw, form: Form::Query(query), choices, gold }
    }

    /// An item scored as `(before + option, " " + after)` per option.
    pub fn blank(id: String, raw: Value, before: String, options: Vec<String>, after: String, gold: usize) -> Doc {
        let choices = options.iter().map(|o| format!("{before}{o}")).collect();
        Doc { id, raw, form: Form::Blank { before, options, after }, choices, gold }
    }

    /// The item as a few-shot exemplar (`build_qa_turn` with its answer): question, target delimiter,
    /// answer, few-shot delimiter. lm-eval adds neither delimiter when the answer is the empty string
    /// (`has_answer = a is not None and a != ""`), which only a blank at the end of a sentence gives.
    pub fn exemplar(&self) -> String {
        let (q, a) = match &self.form {
            Form::Query(q) => (q.as_str(), self.choices[self.gold].as_str()),
            Form::Blank { after, .. } => (self.choices[self.gold].as_str(), after.as_str()),
        };
        match &self.form {
            Form::Blank { .. } if a.is_empty() => q.to_string(),
            _ => format!("{q}{TARGET_DELIMITER}{a}{FEWSHOT_DELIMITER}"),
        }
    }

    /// The `(context, continuation)` pairs scored for this item after the few-shot `prefix`.
    pub fn requests(&self, prefix: &str) -> Vec<(String, String)> {
        match &self.form {
            Form::Query(q) => {
                self.choices.iter().map(|c| (format!("{prefix}{q}"), format!("{TARGET_DELIMITER}{c}"))).collect()
            }
            Form::Blank { after, .. } => {
                self.choices.iter().map(|c| (format!("{prefix}{c}"), format!("{TARGET_DELIMITER}{after}"))).collect()
            }
        }
    }
}

/// One lm-evaluation-harness `multiple_choice` task as keel reads and scores it.
pub struct Task {
    /// The lm-eval task name, also the `--bench` value.
    pub name: &'static str,
    /// The task's YAML in lm-evaluation-harness and its version, for `results.json`.
    pub yaml: &'static str,
    /// The split lm-eval scores (`test_split`, else `validation_split`).
    pub split: &'static str,
    /// The hub dataset's config folder (`ARC-Easy`, `winogrande_xl`), if any.
    pub subdir: Option<&'static str>,
    /// File names of the dataset's original release, looked for in a `--data` folder before the
    /// hub's layout: for the scored split, then for the train split.
    pub originals: (&'static [&'static str], &'static [&'static str]),
    /// lm-eval draws one extra exemplar and drops the item itself (the task has no `test_split`).
    pub excludes_item: bool,
    /// `acc_norm` is one of the task's metrics.
    pub acc_norm: bool,
    /// Reads a split file into items.
    pub read: fn(&Path) -> Result<Vec<Doc>>,
}

impl Task {
    pub fn metrics(&self) -> &'static [&'static str] {
        if self.acc_norm {
            &["acc", "acc_norm"]
        } else {
            &["acc"]
        }
    }

    /// `{task}-{shots}shot`.
    pub fn folder(&self, s: &Settings) -> String {
        format!("{}-{}shot", self.name, s.shots_or(0))
    }

    /// The file holding `split` under `data` (a folder, or a file whose folder holds the other
    /// splits): an original release's file name first, then the hub's layouts
    /// ([`records::split_file`]).
    pub fn split_file(&self, data: &Path, split: &str, originals: &[&str]) -> Result<PathBuf> {
        if data.is_dir() {
            let mut dirs = vec![data.to_path_buf()];
            dirs.extend(self.subdir.map(|s| data.join(s)));
            let found = dirs.iter().flat_map(|d| originals.iter().map(move |n| d.join(n))).find(|p| p.is_file());
            if let Some(found) = found {
                return Ok(found);
            }
        }
        records::split_file(data, self.subdir, split).map_err(|e| match originals {
            [] => e,
            _ => bad(format!("{e}\n  (or the original release's {})", originals.join(" or "))),
        })
    }

    /// `--data`: a path, or `hf:ORG/NAME`, the dataset repo in the hub cache (downloaded if needed),
    /// with the scored split's parquet files (and the train split's when `shots > 0`).
    pub fn resolve(&self, spec: &str, shots: usize) -> Result<PathBuf> {
        let Some(repo) = spec.strip_prefix("hf:") else { return Ok(PathBuf::from(spec)) };
        let (split, sub) = (self.split, self.subdir);
        let wanted = move |f: &str| {
            let name = f.rsplit('/').next().unwrap_or(f);
            let in_config = sub.is_none_or(|s| f.starts_with(&format!("{s}/")));
            let split_named = name.starts_with(&format!("{split}-")) || (shots > 0 && name.starts_with("train-"));
            in_config && split_named && name.ends_with(".parquet")
        };
        Ok(crate::data::hub::snapshot(repo, wanted)?)
    }
}

/// Each item's few-shot prefix: `shots` exemplars from `pool` drawn as lm-eval's default sampler
/// draws them (see the module documentation), in item order.
pub fn fewshot_prefixes(
    task: &Task,
    docs: &[Doc],
    pool: &[Doc],
    shots: usize,
    pool_file: &Path,
) -> Result<Vec<String>> {
    if shots == 0 {
        return Ok(vec![String::new(); docs.len()]);
    }
    let draw = shots + task.excludes_item as usize;
    if draw > pool.len() {
        return Err(bad(format!(
            "--shots {shots}: lm-evaluation-harness draws {draw} exemplars per item from the train split, and {} holds {} rows\n  pass fewer --shots, or the full train split",
            pool_file.display(),
            pool.len()
        )));
    }
    let mut rnd = super::py_random::PyRandom::new(FEWSHOT_SEED);
    let mut out = Vec::with_capacity(docs.len());
    for doc in docs {
        let picked: Vec<&Doc> = rnd.sample(pool.len(), draw).into_iter().map(|i| &pool[i]).collect();
        let kept: Vec<&Doc> = if task.excludes_item {
            picked.into_iter().filter(|d| d.raw != doc.raw).take(shots).collect()
        } else {
            picked
        };
        if kept.len() < shots {
            return Err(bad(format!(
                "item {}: {} holds it more than once, so lm-evaluation-harness cannot find {shots} other exemplars for it either\n  remove the duplicate rows from the train split",
                doc.id,
                pool_file.display()
            )));
        }
        out.push(kept.iter().map(|d| d.exemplar()).collect());
    }
    Ok(out)
}

/// One scored item, as lm-eval's `--log_samples` records it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub id: String,
    /// The text every request's context begins with: the few-shot prefix and the question (for
    /// winogrande: the prefix and the sentence up to the blank).
    pub context: String,
    /// JSON list: the choices, each scored as `" " + choice` after `context` (winogrande: the
    /// options, each appended to `context`).
    pub choices: String,
    /// Winogrande: the sentence after the blank, scored as `" " + continuation` after each context;
    /// empty for the other tasks.
    pub continuation: String,
    pub gold: usize,
    /// The gold choice's text (winogrande: the gold option).
    pub target: String,
    /// The choices' summed log-likelihoods, `;`-separated.
    pub loglikelihoods: String,
    pub predicted: usize,
    /// Empty for tasks without `acc_norm`.
    pub predicted_norm: Option<usize>,
    pub acc: bool,
    pub acc_norm: Option<bool>,
    /// Tokens cut from the front of the longest request to fit the model's context.
    pub truncated_tokens: usize,
}

/// `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub bench: &'static str,
    /// The lm-evaluation-harness task reproduced.
    pub task: &'static str,
    pub model: String,
    /// The scored split's file.
    pub data: String,
    pub split: &'static str,
    pub shots: usize,
    /// Where exemplars came from: "none", or the train file and how they were drawn.
    pub shots_source: String,
    pub questions: usize,
    pub acc: f64,
    pub acc_stderr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm_stderr: Option<Option<f64>>,
    /// Items with a request cut from the left to fit the model's context.
    pub truncated: usize,
    pub elapsed_s: f64,
    pub questions_per_s: f64,
    pub keel_version: &'static str,
}

/// Per-item rows and `(acc, acc_norm)` from each item's choice log-likelihoods (`lls[i]` for
/// `docs[i]`, in choice order), as `process_results` computes them.
pub fn score(
    task: &Task,
    docs: &[Doc],
    prefixes: &[String],
    lls: &[Vec<f64>],
    truncated: &[usize],
) -> (Vec<Row>, Vec<f64>, Vec<f64>) {
    let mut rows = Vec::with_capacity(docs.len());
    let (mut acc, mut acc_norm) = (Vec::new(), Vec::new());
    for (((doc, prefix), ll), &cut) in docs.iter().zip(prefixes).zip(lls).zip(truncated) {
        let (p, pn) = (argmax(ll), argmax_per_char(ll, &doc.choices));
        let (context, choices, continuation, target) = match &doc.form {
            Form::Query(q) => (format!("{prefix}{q}"), &doc.choices, String::new(), doc.choices[doc.gold].clone()),
            Form::Blank { before, options, after } => {
                (format!("{prefix}{before}"), options, after.clone(), options[doc.gold].clone())
            }
        };
        acc.push((p == doc.gold) as u8 as f64);
        acc_norm.push((pn == doc.gold) as u8 as f64);
        rows.push(Row {
            id: doc.id.clone(),
            context,
            choices: serde_json::to_string(choices).unwrap_or_default(),
            continuation,
            gold: doc.gold,
            target,
            loglikelihoods: ll.iter().map(|l| format!("{l:.6}")).collect::<Vec<_>>().join(";"),
            predicted: p,
            predicted_norm: task.acc_norm.then_some(pn),
            acc: p == doc.gold,
            acc_norm: task.acc_norm.then_some(pn == doc.gold),
            truncated_tokens: cut,
        });
    }
    (rows, acc, acc_norm)
}

/// Scores `docs` after their few-shot `prefixes`; `progress` counts requests.
pub fn evaluate(
    lm: &mut dyn LanguageModel,
    task: &Task,
    docs: &[Doc],
    prefixes: &[String],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<Row>, Vec<f64>, Vec<f64>)> {
    let mut requests: Vec<Request> = Vec::new();
    let mut truncated = Vec::with_capacity(docs.len());
    for (doc, prefix) in docs.iter().zip(prefixes) {
        let mut cut_most = 0;
        for (context, continuation) in doc.requests(prefix) {
            let (tokens, start) = encode_pair(lm.tokenizer(), &context, &continuation)?;
            let (req, cut) = fit(tokens, start, lm.max_len())?;
            cut_most = cut_most.max(cut);
            requests.push(req);
        }
        truncated.push(cut_most);
    }
    let scores = super::score_all(lm, &requests, progress)?;
    let mut lls = Vec::with_capacity(docs.len());
    let mut at = 0;
    for doc in docs {
        lls.push(scores[at..at + doc.choices.len()].iter().map(|s| s.logprob).collect());
        at += doc.choices.len();
    }
    Ok(score(task, docs, prefixes, &lls, &truncated))
}

/// Reads a split file's items; a file without any is an input error.
pub fn read_docs(task: &Task, path: &Path) -> Result<Vec<Doc>> {
    let docs = (task.read)(path)?;
    if docs.is_empty() {
        return Err(bad(format!(
            "{} holds no items\n  pass a {} split file with one item per row (parquet, JSONL or JSON)",
            path.display(),
            task.name
        )));
    }
    Ok(docs)
}

/// `keel eval --bench {task}`: reads the split (and the train split for `--shots`), scores, and
/// returns `results.json` with the per-item `questions.csv`.
pub fn run(task: &Task, s: &mut Session) -> Result<Outcome> {
    let start = std::time::Instant::now();
    let shots = s.settings.shots_or(0);
    let data = task.resolve(s.data(), shots)?;
    let file = task.split_file(&data, task.split, task.originals.0)?;
    let mut docs = read_docs(task, &file)?;
    docs.truncate(s.settings.limit.unwrap_or(usize::MAX));
    let (prefixes, shots_source) = if shots == 0 {
        (vec![String::new(); docs.len()], "none".to_string())
    } else {
        let folder = if data.is_dir() { data.clone() } else { data.parent().unwrap_or(Path::new(".")).to_path_buf() };
        let train = task.split_file(&folder, "train", task.originals.1).map_err(|e| {
            bad(format!(
                "--shots {shots} takes exemplars from the train split, as lm-evaluation-harness does: {e}\n  or pass --shots 0 (the task's default)"
            ))
        })?;
        let pool = read_docs(task, &train)?;
        let prefixes = fewshot_prefixes(task, &docs, &pool, shots, &train)?;
        let how = if task.excludes_item {
            format!("{} drawn, the item itself left out", shots + 1)
        } else {
            format!("{shots} drawn")
        };
        (
            prefixes,
            format!(
                "{}: lm-evaluation-harness's default sampler, random.Random({FEWSHOT_SEED}).sample per item in order ({how})",
                train.display()
            ),
        )
    };
    s.start()?;
    let (rows, acc, acc_norm) = evaluate(s.scorer.lm(), task, &docs, &prefixes, s.progress)?;
    let (acc, acc_stderr) = mean_and_stderr(&acc);
    let (norm, norm_stderr) = mean_and_stderr(&acc_norm);
    let elapsed = start.elapsed().as_secs_f64();
    let results = Results {
        bench: task.name,
        task: task.yaml,
        model: s.scorer.lm().describe(),
        data: file.display().to_string(),
        split: task.split,
        shots,
        shots_source,
        questions: rows.len(),
        acc,
        acc_stderr,
        acc_norm: task.acc_norm.then_some(norm),
        acc_norm_stderr: task.acc_norm.then_some(norm_stderr),
        truncated: rows.iter().filter(|r| r.truncated_tokens > 0).count(),
        elapsed_s: elapsed,
        questions_per_s: rows.len() as f64 / elapsed.max(1e-9),
        keel_version: crate::VERSION,
    };
    let pm = |e: Option<f64>| e.map(|e| format!(" ± {e:.4}")).unwrap_or_default();
    let norm_text = if task.acc_norm { format!(", acc_norm {norm:.4}{}", pm(norm_stderr)) } else { String::new() };
    let summary = format!(
        "{}: acc {acc:.4}{}{norm_text} over {} questions ({} truncated), {:.1} questions/s; ",
        task.folder(s.settings),
        pm(acc_stderr),
        results.questions,
        results.truncated,
        results.questions_per_s
    );
    Outcome::new(&results, summary)?.rows("questions.csv", &rows)
}

/// Field `key` of a row as a JSON value, or an input error naming file, row and field.
pub fn field<'a>(path: &Path, r: &'a Record, key: &str, what: &str) -> Result<&'a Value> {
    r.value.get(key).filter(|v| !v.is_null()).ok_or_else(|| {
        bad(format!(
            "{}, row {}: no \"{key}\" field\n  every row of this task needs \"{key}\" ({what})",
            path.display(),
            r.line
        ))
    })
}

/// A list of strings at `v`, or an input error naming file, row and field.
pub fn strings(path: &Path, r: &Record, v: &Value, key: &str) -> Result<Vec<String>> {
    v.as_array().and_then(|a| a.iter().map(|x| x.as_str().map(str::to_string)).collect::<Option<Vec<_>>>()).ok_or_else(
        || bad(format!("{}, row {}: \"{key}\" is not a list of strings\n  fix that row", path.display(), r.line)),
    )
}

/// A row's id: its `key` field (string or number) if present, else its row number.
pub fn row_id(r: &Record, key: &str) -> String {
    match r.value.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(v @ Value::Number(_)) => v.to_string(),
        _ => r.line.to_string(),
    }
}

/// Reads ARC rows: the hub's (`question`, `choices: {text, label}`, `answerKey`) or the original
/// release's JSONL (`question: {stem, choices: [{text, label}]}`, `answerKey`).
pub fn read_arc(path: &Path) -> Result<Vec<Doc>> {
    let shown = path.display();
    let mut docs = Vec::new();
    for r in records::read(path, "pass --data with the ARC split file or the allenai/ai2_arc folder")? {
        let q = field(path, &r, "question", "the question text")?;
        let (question, text, labels) = if let Some(stem) = q.get("stem") {
            // The original release nests the choices in the question.
            let stem = stem.as_str().ok_or_else(|| {
                bad(format!("{shown}, row {}: \"question.stem\" is not a string\n  fix that row", r.line))
            })?;
            let list = q
                .get("choices")
                .and_then(Value::as_array)
                .ok_or_else(|| bad(format!("{shown}, row {}: no \"question.choices\" list\n  fix that row", r.line)))?;
            let get = |k: &str| -> Result<Vec<String>> {
                list.iter()
                    .map(|c| c.get(k).and_then(Value::as_str).map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        bad(format!("{shown}, row {}: a choice without a \"{k}\" string\n  fix that row", r.line))
                    })
            };
            (stem.to_string(), get("text")?, get("label")?)
        } else {
            let question = records::string_field(path, &r, "question")?;
            let choices = field(path, &r, "choices", "an object of \"text\" and \"label\" lists")?;
            let sub = |k: &str| -> Result<Vec<String>> {
                let v = choices.get(k).ok_or_else(|| {
                    bad(format!("{shown}, row {}: \"choices\" has no \"{k}\" list\n  fix that row", r.line))
                })?;
                strings(path, &r, v, &format!("choices.{k}"))
            };
            (question, sub("text")?, sub("label")?)
        };
        let key = match field(path, &r, "answerKey", "the gold choice's label")? {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        if text.is_empty() || text.len() != labels.len() {
            return Err(bad(format!(
                "{shown}, row {}: {} choice texts and {} labels\n  every choice needs a text and a label",
                r.line,
                text.len(),
                labels.len()
            )));
        }
        let gold = labels.iter().position(|l| *l == key).ok_or_else(|| {
            bad(format!(
                "{shown}, row {}: answerKey {key:?} is not one of the labels {labels:?}\n  fix that row's answerKey",
                r.line
            ))
        })?;
        let id = row_id(&r, "id");
        docs.push(Doc::query(id, r.value, format!("Question: {question}\nAnswer:"), text, gold));
    }
    Ok(docs)
}

pub static ARC_EASY: Task = Task {
    name: "arc_easy",
    yaml: "lm_eval/tasks/arc/arc_easy.yaml (version 1.0)",
    split: "test",
    subdir: Some("ARC-Easy"),
    originals: (&["ARC-Easy-Test.jsonl"], &["ARC-Easy-Train.jsonl"]),
    excludes_item: false,
    acc_norm: true,
    read: read_arc,
};

pub static ARC_CHALLENGE: Task = Task {
    name: "arc_challenge",
    yaml: "lm_eval/tasks/arc/arc_challenge.yaml (version 1.0)",
    split: "test",
    subdir: Some("ARC-Challenge"),
    originals: (&["ARC-Challenge-Test.jsonl"], &["ARC-Challenge-Train.jsonl"]),
    excludes_item: false,
    acc_norm: true,
    read: read_arc,
};

/// `--bench arc_easy`.
pub struct ArcEasy;

impl Benchmark for ArcEasy {
    fn name(&self) -> &'static str {
        ARC_EASY.name
    }

    fn about(&self) -> &'static str {
        "ARC-Easy (allenai/ai2_arc test split), scored as lm-evaluation-harness's arc_easy"
    }

    fn data(&self) -> Data {
        Data::Required("pass --data with the allenai/ai2_arc folder (ARC-Easy/test-*.parquet), the test split's file, or hf:allenai/ai2_arc")
    }

    fn takes_shots(&self) -> bool {
        true
    }

    fn metrics(&self) -> &'static [&'static str] {
        ARC_EASY.metrics()
    }

    /// `arc_easy-{shots}shot`.
    fn folder(&self, s: &Settings) -> String {
        ARC_EASY.folder(s)
    }

    fn run(&self, s: &mut Session) -> Result<Outcome> {
        run(&ARC_EASY, s)
    }
}

/// `--bench arc_challenge`.
pub struct ArcChallenge;

impl Benchmark for ArcChallenge {
    fn name(&self) -> &'static str {
        ARC_CHALLENGE.name
    }

    fn about(&self) -> &'static str {
        "ARC-Challenge (allenai/ai2_arc test split), scored as lm-evaluation-harness's arc_challenge"
    }

    fn data(&self) -> Data {
        Data::Required("pass --data with the allenai/ai2_arc folder (ARC-Challenge/test-*.parquet), the test split's file, or hf:allenai/ai2_arc")
    }

    fn takes_shots(&self) -> bool {
        true
    }

    fn metrics(&self) -> &'static [&'static str] {
        ARC_CHALLENGE.metrics()
    }

    /// `arc_challenge-{shots}shot`.
    fn folder(&self, s: &Settings) -> String {
        ARC_CHALLENGE.folder(s)
    }

    fn run(&self, s: &mut Session) -> Result<Outcome> {
        run(&ARC_CHALLENGE, s)
    }
}
