//! GSM8K scored as lm-evaluation-harness's generative tasks `gsm8k` (`lm_eval/tasks/gsm8k/gsm8k.yaml`,
//! v3.0) and `gsm8k_cot` (`gsm8k-cot.yaml`, v3.0) score it: greedy generation until a stop string,
//! the `strict-match` and `flexible-extract` filters, and `exact_match` with the tasks' ignore
//! rules (see `generative.rs`).
//!
//! Items come from the hub's files (`openai/gsm8k`: `main/{train,test}-00000-of-00001.parquet`) or
//! JSONL/JSON copies (`question`, `answer` per row). Scoring takes a closure from prompts to
//! generations, so it runs without a model; `--bench gsm8k` generates with
//! `generation::generate_until`.
//!
//! `gsm8k` draws 5 exemplars from the train split per test problem, in test order, from one
//! `random.Random(1234)` as lm-evaluation-harness's default sampler does; `py_random.rs`
//! reproduces those draws. `gsm8k_cot` uses 8 fixed exemplars (`first_n`), reproduced byte for
//! byte.

use super::bench::{Benchmark, Data, Outcome, Session, Settings};
use super::generation::{generate_until, Until};
use super::generative::{
    cut_at_stop, mean_and_stderr, py_strip, ExactMatch, FilterPipeline, FilterStep, PyRegex, RegexError, RegexFilter,
};
use super::records;
use crate::InputError;
use anyhow::Result;
use serde::Serialize;
use std::path::Path;

/// One GSM8K problem: `answer` is the worked solution ending in `#### N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub question: String,
    pub answer: String,
}

fn bad(msg: String) -> anyhow::Error {
    InputError(msg).into()
}

/// Reads GSM8K items from a split file: parquet as the hub stores it (`main/test-*.parquet`),
/// JSONL or a JSON array, each row with `question` and `answer` strings.
pub fn read(path: &Path) -> Result<Vec<Item>> {
    let fix = "pass --data with GSM8K's folder (main/test-*.parquet, main/train-*.parquet) or a split file";
    let mut items = Vec::new();
    for r in records::read(path, fix)? {
        items.push(Item {
            question: records::string_field(path, &r, "question")?,
            answer: records::string_field(path, &r, "answer")?,
        });
    }
    if items.is_empty() {
        return Err(bad(format!("{} holds no problems\n  pass a file with one problem per row", path.display())));
    }
    Ok(items)
}

/// The gold answer: the text after the last `####`, stripped (`gsm8k-cot.yaml`'s
/// `answer.split('####')[-1].strip()`).
pub fn gold_answer(answer: &str) -> String {
    py_strip(answer.rsplit("####").next().unwrap_or(answer)).to_string()
}

/// Which lm-evaluation-harness task to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `gsm8k`: `Question: {q}\nAnswer:`, 5 exemplars with full solutions as targets.
    Gsm8k,
    /// `gsm8k_cot`: `Q: {q}\nA:`, the 8 fixed chain-of-thought exemplars.
    Gsm8kCot,
}

/// The 8 `first_n` exemplars of `gsm8k-cot.yaml` (question, target), YAML folding applied.
pub const COT_EXEMPLARS: [(&str, &str); 8] = [
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8."),
];

pub use super::{FEWSHOT_DELIMITER, FEWSHOT_SEED, TARGET_DELIMITER};

/// A task's question text (`doc_to_text`).
pub fn doc_to_text(variant: Variant, question: &str) -> String {
    match variant {
        Variant::Gsm8k => format!("Question: {question}\nAnswer:"),
        Variant::Gsm8kCot => format!("Q: {question}\nA:"),
    }
}

/// The reference `exact_match` compares against (`doc_to_target`): the whole solution for `gsm8k`
/// (its `(?s).*#### ` rule removes the working), the gold number for `gsm8k_cot`.
pub fn doc_to_target(variant: Variant, answer: &str) -> String {
    match variant {
        Variant::Gsm8k => answer.to_string(),
        Variant::Gsm8kCot => gold_answer(answer),
    }
}

fn fewshot_prompt<'a>(variant: Variant, shots: impl Iterator<Item = (&'a str, &'a str)>, question: &str) -> String {
    let mut s = String::new();
    for (q, t) in shots {
        s.push_str(&doc_to_text(variant, q));
        s.push_str(TARGET_DELIMITER);
        s.push_str(t);
        s.push_str(FEWSHOT_DELIMITER);
    }
    s.push_str(&doc_to_text(variant, question));
    s
}

/// The `gsm8k_cot` prompt: the 8 fixed exemplars, then the question.
pub fn cot_prompt(question: &str) -> String {
    fewshot_prompt(Variant::Gsm8kCot, COT_EXEMPLARS.iter().copied(), question)
}

/// The `gsm8k` prompt with the train items at `shots` (in that order) as exemplars, each target the
/// full solution ([`harness_shots`] gives the indices lm-evaluation-harness draws). (The fewshot
/// split is train and the test split test, so the harness never has to drop the evaluated item
/// from the exemplars.)
pub fn fewshot_prompt_from_train(train: &[Item], shots: &[usize], question: &str) -> Result<String> {
    if let Some(&i) = shots.iter().find(|&&i| i >= train.len()) {
        return Err(bad(format!("few-shot index {i} is past the {} train items", train.len())));
    }
    let pairs = shots.iter().map(|&i| (train[i].question.as_str(), train[i].answer.as_str()));
    Ok(fewshot_prompt(Variant::Gsm8k, pairs, question))
}

/// The task's `until` stop strings (the caller adds the tokenizer's end-of-text string, see
/// `generative::until_with_eos`). `max_gen_toks` is the harness default, 256.
pub fn until(variant: Variant) -> [&'static str; 3] {
    match variant {
        Variant::Gsm8k => ["Question:", "</s>", "<|im_end|>"],
        Variant::Gsm8kCot => ["Q:", "</s>", "<|im_end|>"],
    }
}

/// The harness's default generation length for these tasks.
pub const MAX_GEN_TOKS: usize = 256;

/// The `filter_list` of the task's YAML: `strict-match`, then `flexible-extract`.
pub fn filters(variant: Variant) -> Result<Vec<FilterPipeline>, RegexError> {
    let strict = match variant {
        Variant::Gsm8k => r"#### (\-?[0-9\.\,]+)",
        Variant::Gsm8kCot => r"The answer is (\-?[0-9\.\,]+).",
    };
    Ok(vec![
        FilterPipeline {
            name: "strict-match".into(),
            steps: vec![FilterStep::Regex(Box::new(RegexFilter::new(strict)?)), FilterStep::TakeFirst],
        },
        FilterPipeline {
            name: "flexible-extract".into(),
            steps: vec![
                FilterStep::Regex(Box::new(RegexFilter::new(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")?.group_select(-1))),
                FilterStep::TakeFirst,
            ],
        },
    ])
}

/// The task's `exact_match` settings (the same for both variants).
pub fn metric() -> Result<ExactMatch, RegexError> {
    Ok(ExactMatch {
        regexes_to_ignore: [",", r"\$", "(?s).*#### ", r"\.$"]
            .iter()
            .map(|p| PyRegex::new(p))
            .collect::<Result<_, _>>()?,
        ignore_case: true,
        ignore_punctuation: false,
        ignore_numbers: false,
    })
}

/// One scored problem.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub id: usize,
    pub prompt: String,
    /// What `exact_match` compares against (`doc_to_target`).
    pub target: String,
    /// The generation cut at the first stop string.
    pub generation: String,
    /// Per filter, in `filters` order: the extracted answer and its score.
    pub extracted: Vec<String>,
    pub scores: Vec<bool>,
}

/// `exact_match` of one filter over all problems.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FilterScore {
    pub filter: String,
    pub exact_match: f64,
    pub stderr: Option<f64>,
    pub n: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub rows: Vec<Row>,
    pub scores: Vec<FilterScore>,
}

/// Scores `items` with `prompts[i]` as item i's prompt: `generate` returns one raw generation per
/// prompt, each is cut at the first of `until` (task stops plus end-of-text), filtered by each
/// pipeline and scored by `exact_match` against `doc_to_target`.
pub fn evaluate(
    variant: Variant,
    items: &[Item],
    prompts: Vec<String>,
    until: &[String],
    generate: impl FnOnce(&[String]) -> Result<Vec<String>>,
) -> Result<Report> {
    anyhow::ensure!(prompts.len() == items.len(), "{} prompts for {} items", prompts.len(), items.len());
    let raw = generate(&prompts)?;
    anyhow::ensure!(raw.len() == prompts.len(), "{} generations for {} prompts", raw.len(), prompts.len());
    let pipelines = filters(variant)?;
    let metric = metric()?;
    let mut rows = Vec::with_capacity(items.len());
    for (id, ((item, prompt), gen)) in items.iter().zip(prompts).zip(raw).enumerate() {
        let generation = cut_at_stop(&gen, until).to_string();
        let target = doc_to_target(variant, &item.answer);
        let mut extracted = Vec::new();
        let mut scores = Vec::new();
        for p in &pipelines {
            let e = p.apply(std::slice::from_ref(&generation))?;
            scores.push(metric.score(&e, &target)?);
            extracted.push(e);
        }
        rows.push(Row { id, prompt, target, generation, extracted, scores });
    }
    let scores = pipelines
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let xs: Vec<f64> = rows.iter().map(|r| if r.scores[k] { 1.0 } else { 0.0 }).collect();
            let (mean, stderr) = mean_and_stderr(&xs);
            FilterScore { filter: p.name.clone(), exact_match: mean, stderr, n: xs.len() }
        })
        .collect();
    Ok(Report { rows, scores })
}

/// The train indices lm-evaluation-harness's default sampler draws for each of the first
/// `problems` test problems: `Random(1234).sample(train, shots)` once per problem, in order.
pub fn harness_shots(train_len: usize, shots: usize, problems: usize) -> Vec<Vec<usize>> {
    let mut rnd = super::py_random::PyRandom::new(FEWSHOT_SEED);
    (0..problems).map(|_| rnd.sample(train_len, shots)).collect()
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Gsm8k => "gsm8k",
            Variant::Gsm8kCot => "gsm8k_cot",
        }
    }

    /// `num_fewshot` of the task's YAML.
    fn default_shots(self) -> usize {
        match self {
            Variant::Gsm8k => 5,
            Variant::Gsm8kCot => COT_EXEMPLARS.len(),
        }
    }
}

/// One problem of `samples.csv`.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    id: usize,
    prompt: String,
    target: String,
    generation: String,
    strict_match_extracted: String,
    strict_match: bool,
    flexible_extract_extracted: String,
    flexible_extract: bool,
    generated_tokens: usize,
    truncated_tokens: usize,
}

/// Everything `results.json` records.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub bench: &'static str,
    pub model: String,
    pub data: String,
    pub shots: usize,
    /// How exemplars were chosen.
    pub shots_source: String,
    pub max_gen_toks: usize,
    pub questions: usize,
    /// `exact_match` after the `strict-match` filter, with its standard error.
    pub exact_match_strict_match: f64,
    pub exact_match_strict_match_stderr: Option<f64>,
    /// `exact_match` after the `flexible-extract` filter.
    pub exact_match_flexible_extract: f64,
    pub exact_match_flexible_extract_stderr: Option<f64>,
    /// Problems whose prompt lost tokens from the left to fit the context.
    pub questions_truncated: usize,
    pub generated_tokens: usize,
    pub elapsed_s: f64,
    pub questions_per_s: f64,
    pub generated_tokens_per_s: f64,
    pub keel_version: &'static str,
}

/// `--bench gsm8k` and `--bench gsm8k_cot`.
pub struct Gsm8kBench(pub Variant);

impl Benchmark for Gsm8kBench {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn about(&self) -> &'static str {
        match self.0 {
            Variant::Gsm8k => "GSM8K, generative: 5 exemplars drawn as lm-evaluation-harness draws them, strict and flexible exact_match",
            Variant::Gsm8kCot => "GSM8K with the 8 fixed chain-of-thought exemplars (lm-evaluation-harness's gsm8k_cot)",
        }
    }

    fn data(&self) -> Data {
        Data::Required(
            "pass --data with GSM8K's folder (main/test-*.parquet and main/train-*.parquet, as the hub's openai/gsm8k has them) or the test split's file (parquet, JSONL or JSON)",
        )
    }

    fn takes_shots(&self) -> bool {
        true
    }

    fn metrics(&self) -> &'static [&'static str] {
        &["exact_match_strict_match", "exact_match_flexible_extract"]
    }

    /// `{task}-{shots}shot`.
    fn folder(&self, s: &Settings) -> String {
        format!("{}-{}shot", self.0.name(), s.shots_or(self.0.default_shots()))
    }

    fn run(&self, s: &mut Session) -> Result<Outcome> {
        let variant = self.0;
        let data = s.data().to_string();
        let shots = s.settings.shots_or(variant.default_shots());
        let max_gen_toks = s.settings.max_gen_toks.unwrap_or(MAX_GEN_TOKS);
        let test_path = records::split_file(Path::new(&data), Some("main"), "test")?;
        let mut items = read(&test_path)?;
        items.truncate(s.settings.limit.unwrap_or(usize::MAX));
        let (prompts, shots_source) = match variant {
            Variant::Gsm8kCot => {
                if shots > COT_EXEMPLARS.len() {
                    return Err(bad(format!(
                        "--shots {shots}: gsm8k_cot has {} fixed exemplars\n  pass --shots {} or fewer",
                        COT_EXEMPLARS.len(),
                        COT_EXEMPLARS.len()
                    )));
                }
                let prompts =
                    items.iter().map(|i| fewshot_prompt(variant, COT_EXEMPLARS[..shots].iter().copied(), &i.question));
                (prompts.collect::<Vec<_>>(), format!("the task's {shots} fixed exemplars (first_n)"))
            }
            Variant::Gsm8k if shots == 0 => {
                (items.iter().map(|i| doc_to_text(variant, &i.question)).collect(), "none".to_string())
            }
            Variant::Gsm8k => {
                let dir = if Path::new(&data).is_file() {
                    test_path.parent().map(Path::to_path_buf).unwrap_or_default()
                } else {
                    Path::new(&data).to_path_buf()
                };
                let train_path = records::split_file(&dir, Some("main"), "train").map_err(|e| {
                    bad(format!(
                        "{e}\n  gsm8k draws its exemplars from the train split; put it beside the test split, or pass --shots 0"
                    ))
                })?;
                let train = read(&train_path)?;
                if shots > train.len() {
                    return Err(bad(format!(
                        "--shots {shots}: {} holds only {} problems\n  pass --shots {} or fewer",
                        train_path.display(),
                        train.len(),
                        train.len()
                    )));
                }
                let draws = harness_shots(train.len(), shots, items.len());
                let prompts = items
                    .iter()
                    .zip(&draws)
                    .map(|(i, d)| fewshot_prompt_from_train(&train, d, &i.question))
                    .collect::<Result<Vec<_>>>()?;
                (prompts, format!("{shots} per problem from {} drawn as lm-evaluation-harness draws them (Random({FEWSHOT_SEED}).sample in test order)", train_path.display()))
            }
        };
        let eos_until = until(variant).map(String::from).to_vec();
        let requests: Vec<Until> =
            prompts.iter().map(|p| Until { context: p.clone(), until: eos_until.clone(), max_gen_toks }).collect();
        s.start()?;
        let start = std::time::Instant::now();
        let lm = s.scorer.lm();
        let model = lm.describe();
        let generated = generate_until(lm, &requests, s.progress)?;
        let elapsed = start.elapsed().as_secs_f64();
        let texts: Vec<String> = generated.iter().map(|g| g.text.clone()).collect();
        // The texts are already cut at the stops, end-of-text included.
        let report = evaluate(variant, &items, prompts, &eos_until, |_| Ok(texts))?;
        let samples: Vec<Sample> = report
            .rows
            .iter()
            .zip(&generated)
            .map(|(r, g)| Sample {
                id: r.id,
                prompt: r.prompt.clone(),
                target: r.target.clone(),
                generation: r.generation.clone(),
                strict_match_extracted: r.extracted[0].clone(),
                strict_match: r.scores[0],
                flexible_extract_extracted: r.extracted[1].clone(),
                flexible_extract: r.scores[1],
                generated_tokens: g.tokens,
                truncated_tokens: g.truncated_tokens,
            })
            .collect();
        let generated_tokens: usize = generated.iter().map(|g| g.tokens).sum();
        let n = items.len();
        let results = Results {
            bench: variant.name(),
            model,
            data,
            shots,
            shots_source,
            max_gen_toks,
            questions: n,
            exact_match_strict_match: report.scores[0].exact_match,
            exact_match_strict_match_stderr: report.scores[0].stderr,
            exact_match_flexible_extract: report.scores[1].exact_match,
            exact_match_flexible_extract_stderr: report.scores[1].stderr,
            questions_truncated: generated.iter().filter(|g| g.truncated_tokens > 0).count(),
            generated_tokens,
            elapsed_s: elapsed,
            questions_per_s: n as f64 / elapsed.max(1e-9),
            generated_tokens_per_s: generated_tokens as f64 / elapsed.max(1e-9),
            keel_version: crate::VERSION,
        };
        let summary = format!(
            "{}: exact_match strict-match {:.4}, flexible-extract {:.4} over {n} problems ({} truncated), {:.2} problems/s, {:.1} tokens/s; ",
            variant.name(),
            results.exact_match_strict_match,
            results.exact_match_flexible_extract,
            results.questions_truncated,
            results.questions_per_s,
            results.generated_tokens_per_s
        );
        Outcome::new(&results, summary)?.rows("samples.csv", &samples)
    }
}
