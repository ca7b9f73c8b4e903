//! MMLU (Hendrycks et al.) in its original layout, prompted and scored as lm-evaluation-harness's
//! default `mmlu` task (v0.4):
//!
//! ```text
//! The following are multiple choice questions (with answers) about {subject}.\n\n
//! {shot question}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer: {letter}\n\n      (each shot, dev split, file order)
//! {question}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:
//! ```
//!
//! Each question is stripped of surrounding whitespace, the choices are not. The four continuations
//! ` A` .. ` D` are scored by log-likelihood; the prediction is the argmax (first on ties) and the
//! accuracy is micro-averaged over questions, overall and per category (the harness's groups).

use super::bench::{Benchmark, Data, Outcome, Session, Settings};
use super::{encode_pair, fit, LanguageModel, Request, Scored};
use crate::data::tokenizer::KeelTokenizer;
use crate::InputError;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use super::bench::{Overflow, ShotSource};

pub const LETTERS: [&str; 4] = ["A", "B", "C", "D"];
pub const PROMPT_VARIANT: &str = "lm-evaluation-harness mmlu (default, v0.4): subject header, 'Answer:' + ' A'..' D' log-likelihood, shots from dev in file order";

/// One question of a subject's split.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub subject: String,
    /// Row number in its file, from 0.
    pub row: usize,
    pub question: String,
    pub choices: [String; 4],
    /// Index of the correct choice.
    pub answer: usize,
}

/// A subject's splits (`val` is read for validation of the layout but not scored).
#[derive(Debug, Clone)]
pub struct Subject {
    pub name: String,
    pub dev: Option<Vec<Question>>,
    pub test: Vec<Question>,
}

/// The harness's category of each of the 57 subjects (`mmlu_stem`, `mmlu_humanities`,
/// `mmlu_social_sciences`, `mmlu_other`); unknown subjects count as "other".
pub fn category(subject: &str) -> &'static str {
    const STEM: [&str; 19] = [
        "abstract_algebra",
        "anatomy",
        "astronomy",
        "college_biology",
        "college_chemistry",
        "college_computer_science",
        "college_mathematics",
        "college_physics",
        "computer_security",
        "conceptual_physics",
        "electrical_engineering",
        "elementary_mathematics",
        "high_school_biology",
        "high_school_chemistry",
        "high_school_computer_science",
        "high_school_mathematics",
        "high_school_physics",
        "high_school_statistics",
        "machine_learning",
    ];
    const HUMANITIES: [&str; 13] = [
        "formal_logic",
        "high_school_european_history",
        "high_school_us_history",
        "high_school_world_history",
        "international_law",
        "jurisprudence",
        "logical_fallacies",
        "moral_disputes",
        "moral_scenarios",
        "philosophy",
        "prehistory",
        "professional_law",
        "world_religions",
    ];
    const SOCIAL: [&str; 12] = [
        "econometrics",
        "high_school_geography",
        "high_school_government_and_politics",
        "high_school_macroeconomics",
        "high_school_microeconomics",
        "high_school_psychology",
        "human_sexuality",
        "professional_psychology",
        "public_relations",
        "security_studies",
        "sociology",
        "us_foreign_policy",
    ];
    if STEM.contains(&subject) {
        "stem"
    } else if HUMANITIES.contains(&subject) {
        "humanities"
    } else if SOCIAL.contains(&subject) {
        "social_sciences"
    } else {
        "other"
    }
}

fn bad(msg: String) -> anyhow::Error {
    InputError(msg).into()
}

/// Reads one `{subject}_{split}.csv`: no header, `question,A,B,C,D,answer`, RFC-4180 quoting.
pub fn read_csv(path: &Path, subject: &str) -> Result<Vec<Question>> {
    let shown = path.display();
    let file = crate::files::open_regular(path)
        .map_err(|e| bad(format!("cannot read {shown}: {e}\n  check the path given to --data")))?;
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(file);
    let mut out = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let line = row + 1;
        let record = record.map_err(|e| {
            bad(format!("{shown}, row {line}: not valid CSV: {e}\n  fix the quoting of that row (fields with commas, quotes or newlines must be in double quotes)"))
        })?;
        if record.len() != 6 {
            return Err(bad(format!(
                "{shown}, row {line}: {} fields, MMLU rows have 6 (question,A,B,C,D,answer)\n  fix that row; fields holding commas must be quoted",
                record.len()
            )));
        }
        let answer = record[5].trim();
        let answer = LETTERS.iter().position(|l| *l == answer).ok_or_else(|| {
            bad(format!(
                "{shown}, row {line}: answer {answer:?} is not one of A, B, C, D\n  fix the last field of that row"
            ))
        })?;
        out.push(Question {
            subject: subject.to_string(),
            row,
            question: record[0].to_string(),
            choices: [1, 2, 3, 4].map(|i| record[i].to_string()),
            answer,
        });
    }
    if out.is_empty() {
        return Err(bad(format!("{shown} holds no questions\n  remove the empty file or restore its rows")));
    }
    Ok(out)
}

/// `--shots n` taken by lm-evaluation-harness's `first_n` sampler from a split of `available`
/// rows in `path`: the harness refuses more shots than the split holds, and so does keel.
pub fn enough_exemplars(n: usize, available: usize, path: &Path) -> Result<()> {
    if n > available {
        return Err(bad(format!(
            "--shots {n}: {} holds only {available} rows to take exemplars from (lm-evaluation-harness's first_n sampler refuses too)\n  pass --shots {available} or fewer",
            path.display()
        )));
    }
    Ok(())
}

/// The subjects of a folder of per-subject CSV files (MMLU's `test/`, CMMLU's `test/`): the
/// names of its `{subject}{suffix}` files, sorted, or those of `only` (each must be there).
/// `folder` names the dataset in the error for an empty folder ("an MMLU").
pub fn subject_names(test_dir: &Path, suffix: &str, folder: &str, only: &[String]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(test_dir).map_err(|e| bad(format!("cannot read {}: {e}", test_dir.display())))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(subject) = name.strip_suffix(suffix) {
            names.push(subject.to_string());
        }
    }
    names.sort();
    if names.is_empty() {
        return Err(bad(format!(
            "{} holds no {{subject}}{suffix} files\n  point --data at {folder} folder",
            test_dir.display()
        )));
    }
    if !only.is_empty() {
        for s in only {
            if !names.contains(s) {
                return Err(bad(format!(
                    "--subjects {s}: no {s}{suffix} in {}\n  subjects found: {}",
                    test_dir.display(),
                    names.join(", ")
                )));
            }
        }
        names.retain(|n| only.contains(n));
    }
    Ok(names)
}

/// Subjects found in `DIR/test/*_test.csv` (sorted), with their dev splits where present.
pub fn load_dir(dir: &Path, only: &[String]) -> Result<Vec<Subject>> {
    let test_dir = dir.join("test");
    if !test_dir.is_dir() {
        return Err(bad(format!(
            "{} has no test/ folder: MMLU's layout is DIR/{{dev,val,test}}/{{subject}}_{{split}}.csv\n  point --data at the folder that holds dev/, val/ and test/ (scripts/get_mmlu.sh makes one)",
            dir.display()
        )));
    }
    let names = subject_names(&test_dir, "_test.csv", "an MMLU", only)?;
    let mut subjects = Vec::new();
    for name in names {
        let test = read_csv(&test_dir.join(format!("{name}_test.csv")), &name)?;
        let dev_path = dir.join("dev").join(format!("{name}_dev.csv"));
        let dev = if dev_path.exists() { Some(read_csv(&dev_path, &name)?) } else { None };
        subjects.push(Subject { name, dev, test });
    }
    Ok(subjects)
}

/// `{question}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:` (the harness's `doc_to_text`).
pub fn format_question(q: &Question) -> String {
    lettered(q.question.trim(), &q.choices, "Answer:")
}

/// The full prompt for `q` after `shots`.
pub fn prompt(subject: &str, shots: &[Question], q: &Question) -> String {
    let description =
        format!("The following are multiple choice questions (with answers) about {}.\n\n", subject.replace('_', " "));
    let shots: Vec<(String, &str)> = shots.iter().map(|s| (format_question(s), LETTERS[s.answer])).collect();
    fewshot_context(&description, &shots, &format_question(q))
}

/// The letters lm-evaluation-harness labels options with (`string.ascii_uppercase`, as
/// `leaderboard/mmlu_pro/utils.py` indexes it): MMLU and CMMLU use the first four, MMLU-Pro up to ten.
pub const OPTION_LETTERS: [&str; 26] = [
    "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "P", "Q", "R", "S", "T", "U", "V", "W",
    "X", "Y", "Z",
];

/// `{question}\nA. {option}\nB. {option}...\n{cue}`: the text the lettered multiple-choice tasks
/// share (MMLU's and CMMLU's `doc_to_text` templates, MMLU-Pro's `utils.doc_to_text`). The caller
/// strips the question where its task does. At most 26 options (the caller checks).
pub fn lettered(question: &str, options: &[String], cue: &str) -> String {
    let mut s = question.to_string();
    for (letter, option) in OPTION_LETTERS.iter().zip(options) {
        s.push_str(&format!("\n{letter}. {option}"));
    }
    s.push('\n');
    s.push_str(cue);
    s
}

/// lm-evaluation-harness's plain-text few-shot context (`ConfigurableTask.fewshot_context` and
/// `build_qa_turn` in `lm_eval/api/task.py`, 0.4.x, no chat template): the task's `description`,
/// then each exemplar as its text, `target_delimiter` (" "), its target and `fewshot_delimiter`
/// ("\n\n"), then the question's text with no delimiter after it.
pub fn fewshot_context(description: &str, shots: &[(String, &str)], text: &str) -> String {
    let mut s = description.to_string();
    for (shot, target) in shots {
        s.push_str(shot);
        s.push(' ');
        s.push_str(target);
        s.push_str("\n\n");
    }
    s.push_str(text);
    s
}

/// The `n` requests ` A`, ` B`, ... after `context` (`construct_requests` of a `multiple_choice`
/// task whose choices are letters: target delimiter " " then the letter), each left-truncated as
/// the harness does ([`fit`]), with the most tokens any of them lost.
pub fn letter_requests(tok: &KeelTokenizer, max_len: usize, context: &str, n: usize) -> Result<(Vec<Request>, usize)> {
    let mut requests = Vec::with_capacity(n);
    let mut truncated = 0;
    for letter in &OPTION_LETTERS[..n] {
        let (tokens, start) = encode_pair(tok, context, &format!(" {letter}"))?;
        let (req, cut) = fit(tokens, start, max_len)?;
        truncated = truncated.max(cut);
        requests.push(req);
    }
    Ok((requests, truncated))
}

/// Few-shot settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub shots: usize,
    pub shots_from: ShotSource,
    /// What a prompt that does not fit the context gives up.
    pub overflow: Overflow,
    /// Questions scored per subject at most.
    pub limit: Option<usize>,
}

/// One scored question's prompt, with what had to give way to fit the context.
#[derive(Debug, Clone)]
pub struct Item {
    pub question: Question,
    pub context: String,
    pub shots_used: usize,
    pub shots_dropped: usize,
    /// Tokens cut from the front (of the longest of the four requests).
    pub truncated_tokens: usize,
    /// Where the exemplars came from: "dev", "test" or "none".
    pub shots_source: &'static str,
}

/// Builds each question's prompt and its four requests (` A`..` D`). A request longer than
/// `max_len + 1` tokens is left-truncated as the harness does ([`fit`]); with
/// [`Overflow::DropShots`], shots are first dropped from the front while the longest request does
/// not fit.
pub fn build(
    tok: &KeelTokenizer,
    max_len: usize,
    subjects: &[Subject],
    opts: &Options,
) -> Result<(Vec<Item>, Vec<Request>)> {
    let mut items = Vec::new();
    let mut requests = Vec::new();
    for subject in subjects {
        let (pool, source, skip): (&[Question], &'static str, usize) = match (&subject.dev, opts.shots) {
            (_, 0) => (&[], "none", 0),
            (Some(dev), _) => (dev, "dev", 0),
            (None, n) => match opts.shots_from {
                ShotSource::Test => {
                    let k = n.min(subject.test.len().saturating_sub(1));
                    (&subject.test[..k], if k > 0 { "test" } else { "none" }, k)
                }
                ShotSource::None => (&[], "none", 0),
                ShotSource::Dev => {
                    return Err(bad(format!(
                        "subject {} has no dev split (dev/{}_dev.csv) to take {n} shots from\n  pass --shots-from test (exemplars from the test split, excluded from scoring), --shots-from none, or --shots 0",
                        subject.name, subject.name
                    )))
                }
            },
        };
        let shots_wanted = opts.shots.min(pool.len());
        let scored = &subject.test[skip..];
        let scored = &scored[..opts.limit.unwrap_or(usize::MAX).min(scored.len())];
        for q in scored {
            let mut dropped = 0;
            let (context, pairs) = loop {
                let shots = &pool[dropped..shots_wanted];
                let context = prompt(&subject.name, shots, q);
                let pairs: Vec<(Vec<u32>, usize)> =
                    LETTERS.iter().map(|l| encode_pair(tok, &context, &format!(" {l}"))).collect::<Result<_>>()?;
                let longest = pairs.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
                if opts.overflow == Overflow::TruncateLeft || longest <= max_len + 1 || dropped == shots_wanted {
                    break (context, pairs);
                }
                dropped += 1;
            };
            let mut truncated = 0;
            for (tokens, start) in pairs {
                let (req, cut) = fit(tokens, start, max_len)?;
                truncated = truncated.max(cut);
                requests.push(req);
            }
            items.push(Item {
                question: q.clone(),
                context,
                shots_used: shots_wanted - dropped,
                shots_dropped: dropped,
                truncated_tokens: truncated,
                shots_source: source,
            });
        }
    }
    Ok((items, requests))
}

/// Index of the largest value, the first on ties (numpy's argmax, as the harness uses).
pub fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// The `acc_norm` prediction: the argmax of each log-likelihood divided by its choice's length in
/// characters (Python's `len`, not bytes), as a `multiple_choice` task's `process_results` divides.
pub fn argmax_per_char<S: AsRef<str>>(ll: &[f64], choices: &[S]) -> usize {
    let norm: Vec<f64> = ll.iter().zip(choices).map(|(l, c)| l / c.as_ref().chars().count() as f64).collect();
    argmax(&norm)
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Accuracy {
    pub correct: usize,
    pub total: usize,
    pub accuracy: f64,
}

impl Accuracy {
    pub fn add(&mut self, ok: bool) {
        self.total += 1;
        self.correct += ok as usize;
        self.accuracy = self.correct as f64 / self.total as f64;
    }
}

/// No questions yet (accuracy NaN until the first).
pub fn empty() -> Accuracy {
    Accuracy { correct: 0, total: 0, accuracy: f64::NAN }
}

/// One question's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Answered {
    pub id: String,
    pub subject: String,
    pub gold: &'static str,
    pub predicted: &'static str,
    pub ll_a: f64,
    pub ll_b: f64,
    pub ll_c: f64,
    pub ll_d: f64,
    pub shots: usize,
    pub shots_dropped: usize,
    pub truncated_tokens: usize,
    /// The full context the four answers were scored after (lm-evaluation-harness's
    /// `--log_samples` `arguments`), before any left truncation. Last, so that readers of the
    /// earlier columns keep working.
    pub prompt: String,
}

/// Micro-averaged accuracy overall, per category and per subject.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub overall: Accuracy,
    pub categories: BTreeMap<String, Accuracy>,
    pub subjects: BTreeMap<String, Accuracy>,
}

/// Pairs items with their four scores (in request order) and aggregates.
pub fn score(items: &[Item], scores: &[Scored]) -> (Vec<Answered>, Summary) {
    let mut answered = Vec::with_capacity(items.len());
    let mut summary = Summary { overall: empty(), categories: BTreeMap::new(), subjects: BTreeMap::new() };
    for (item, s) in items.iter().zip(scores.chunks(4)) {
        let ll: Vec<f64> = s.iter().map(|x| x.logprob).collect();
        let predicted = argmax(&ll);
        let q = &item.question;
        let ok = predicted == q.answer;
        summary.overall.add(ok);
        summary.categories.entry(category(&q.subject).to_string()).or_insert_with(empty).add(ok);
        summary.subjects.entry(q.subject.clone()).or_insert_with(empty).add(ok);
        answered.push(Answered {
            id: format!("{}/{}", q.subject, q.row),
            subject: q.subject.clone(),
            gold: LETTERS[q.answer],
            predicted: LETTERS[predicted],
            ll_a: ll[0],
            ll_b: ll[1],
            ll_c: ll[2],
            ll_d: ll[3],
            shots: item.shots_used,
            shots_dropped: item.shots_dropped,
            truncated_tokens: item.truncated_tokens,
            prompt: item.context.clone(),
        });
    }
    (answered, summary)
}

/// Everything `results.json` records.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub bench: &'static str,
    pub model: String,
    pub data: String,
    pub prompt_variant: &'static str,
    pub shots: usize,
    /// What a prompt longer than the context gave up: "truncate-left" (the harness's rule) or
    /// "drop-shots".
    pub overflow: &'static str,
    /// Where exemplars came from per subject: "dev", "test" (excluded from scoring) or "none".
    pub shots_source: BTreeMap<String, String>,
    pub questions: usize,
    pub questions_with_dropped_shots: usize,
    pub questions_truncated: usize,
    pub accuracy: f64,
    pub summary: Summary,
    pub elapsed_s: f64,
    pub questions_per_s: f64,
    pub keel_version: &'static str,
}

/// Runs MMLU end to end; `progress(n)` counts scored requests (4 per question).
pub fn evaluate(
    lm: &mut dyn LanguageModel,
    subjects: &[Subject],
    opts: &Options,
    data: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Results, Vec<Answered>)> {
    let start = std::time::Instant::now();
    let (items, requests) = build(lm.tokenizer(), lm.max_len(), subjects, opts)?;
    let scores = super::score_all(lm, &requests, progress)?;
    let (answered, summary) = score(&items, &scores);
    let elapsed = start.elapsed().as_secs_f64();
    let shots_source = items.iter().map(|i| (i.question.subject.clone(), i.shots_source.to_string())).collect();
    let results = Results {
        bench: "mmlu",
        model: lm.describe(),
        data: data.display().to_string(),
        prompt_variant: PROMPT_VARIANT,
        shots: opts.shots,
        overflow: opts.overflow.as_str(),
        shots_source,
        questions: items.len(),
        questions_with_dropped_shots: items.iter().filter(|i| i.shots_dropped > 0).count(),
        questions_truncated: items.iter().filter(|i| i.truncated_tokens > 0).count(),
        accuracy: summary.overall.accuracy,
        summary,
        elapsed_s: elapsed,
        questions_per_s: items.len() as f64 / elapsed.max(1e-9),
        keel_version: crate::VERSION,
    };
    Ok((results, answered))
}

/// The table printed after a run: overall, categories, and subjects when there are few.
pub fn table(results: &Results) -> String {
    let s = &results.summary;
    let mut out = format!("{:<40} {:>9} {:>9}\n", "MMLU", "accuracy", "questions");
    let row = |name: &str, a: &Accuracy| format!("{name:<40} {:>9.4} {:>9}\n", a.accuracy, a.total);
    if s.subjects.len() <= 20 {
        for (name, a) in &s.subjects {
            out.push_str(&row(name, a));
        }
    }
    for (name, a) in &s.categories {
        out.push_str(&row(&format!("[{name}]"), a));
    }
    out.push_str(&row("overall (micro)", &s.overall));
    out
}

/// A local MMLU folder for `--data`: a path, or `hf:ORG/NAME` (a dataset repo holding the original
/// layout, at its root or under `data/`), fetched through the hub cache.
pub fn resolve_data(spec: &str) -> Result<PathBuf> {
    match spec.strip_prefix("hf:") {
        Some(repo) => {
            let root = crate::data::hub::snapshot(repo, |f| {
                let f = f.strip_prefix("data/").unwrap_or(f);
                f.ends_with(".csv") && (f.starts_with("dev/") || f.starts_with("val/") || f.starts_with("test/"))
            })
            .map_err(|e| match e {
                crate::data::DataError::HubNoFiles { ref files, ref root, .. }
                    if files.iter().any(|f| f.ends_with(".parquet")) =>
                {
                    parquet_refusal(repo, files, root.as_deref())
                }
                e => e.into(),
            })?;
            Ok(if root.join("test").is_dir() { root } else { root.join("data") })
        }
        None => {
            let p = PathBuf::from(spec);
            if !p.exists() {
                return Err(bad(format!(
                    "MMLU folder {spec} does not exist\n  pass --data with the folder holding dev/, val/ and test/ (scripts/get_mmlu.sh makes one)"
                )));
            }
            Ok(p)
        }
    }
}

/// The hub's own MMLU (`cais/mmlu`: `SUBJECT/{dev,validation,test}-00000-of-00001.parquet`) is
/// parquet. keel has no parquet reader (the `parquet` crate brings arrow-rs and its compression
/// codecs into every build, for one dataset's format), so the answer is a one-time conversion to
/// the original layout by `scripts/mmlu_parquet_to_csv.py`.
fn parquet_refusal(repo: &str, files: &[String], root: Option<&Path>) -> anyhow::Error {
    let parquet: Vec<String> = files.iter().filter(|f| f.ends_with(".parquet")).cloned().collect();
    let (fetch, src) = match root {
        Some(r) => (String::new(), r.display().to_string()),
        None => (
            format!("hf download {repo} --repo-type dataset --local-dir data/mmlu-parquet && "),
            "data/mmlu-parquet".to_string(),
        ),
    };
    bad(format!(
        "dataset {repo} stores MMLU as parquet ({} files, e.g. {}); keel reads MMLU's original CSV layout and has no parquet reader\n  convert it once (needs pandas and pyarrow): {fetch}python3 scripts/mmlu_parquet_to_csv.py {src} data/mmlu\n  then pass --data data/mmlu",
        parquet.len(),
        parquet.first().map(String::as_str).unwrap_or_default()
    ))
}

/// `--bench mmlu`.
pub struct Mmlu;

impl Benchmark for Mmlu {
    fn name(&self) -> &'static str {
        "mmlu"
    }

    fn about(&self) -> &'static str {
        "MMLU in its original CSV layout, scored as lm-evaluation-harness's default task"
    }

    fn data(&self) -> Data {
        Data::Required(
            "pass --data DIR holding dev/, val/ and test/ (scripts/get_mmlu.sh makes one) or --data hf:ORG/NAME",
        )
    }

    fn takes_shots(&self) -> bool {
        true
    }

    fn metrics(&self) -> &'static [&'static str] {
        &["accuracy"]
    }

    /// `mmlu-{shots}shot`.
    fn folder(&self, s: &Settings) -> String {
        format!("mmlu-{}shot", s.shots_or(0))
    }

    fn run(&self, s: &mut Session) -> Result<Outcome> {
        let data = resolve_data(s.data())?;
        let subjects = load_dir(&data, &s.settings.subjects)?;
        let opts = Options {
            shots: s.settings.shots_or(0),
            shots_from: s.settings.shots_from,
            overflow: s.settings.overflow,
            limit: s.settings.limit,
        };
        s.start()?;
        let (results, answered) = evaluate(s.scorer.lm(), &subjects, &opts, &data, s.progress)?;
        let summary = format!(
            "{}{} questions, {} shots ({} with shots dropped, {} truncated), {:.1} questions/s; ",
            table(&results),
            results.questions,
            results.shots,
            results.questions_with_dropped_shots,
            results.questions_truncated,
            results.questions_per_s
        );
        Outcome::new(&results, summary)?.rows("questions.csv", &answered)
    }
}
