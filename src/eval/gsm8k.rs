//! GSM8K scored as lm-evaluation-harness's generative tasks `gsm8k` (`lm_eval/tasks/gsm8k/gsm8k.yaml`,
//! v3.0) and `gsm8k_cot` (`gsm8k-cot.yaml`, v3.0) score it: greedy generation until a stop string,
//! the `strict-match` and `flexible-extract` filters, and `exact_match` with the tasks' ignore
//! rules (see `generative.rs`).
//!
//! Items come from a local JSONL file (`question`, `answer` per line). Generation is a closure from
//! prompts to raw generations, so the scoring runs without a model.
//!
//! `gsm8k` draws its 5 exemplars from the train split with Python's `random.Random(1234)`; that draw
//! is not reproduced here: the caller passes the train indices to use. `gsm8k_cot` uses 8 fixed
//! exemplars (`first_n`), reproduced byte for byte.

use super::generative::{
    cut_at_stop, mean_and_stderr, py_strip, ExactMatch, FilterPipeline, FilterStep, PyRegex, RegexError, RegexFilter,
};
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

/// Reads GSM8K items from a JSONL file (one object per line with `question` and `answer` strings;
/// blank lines are skipped). A `.parquet` file (the hub's `main/test-*.parquet`) is refused with the
/// conversion command.
pub fn read_jsonl(path: &Path) -> Result<Vec<Item>> {
    let shown = path.display();
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet")) {
        return Err(bad(format!(
            "{shown} is parquet, which keel does not read\n  convert it to JSONL once: python3 -c \"import pandas as pd; \
             pd.read_parquet('{shown}').to_json('gsm8k.jsonl', orient='records', lines=True, force_ascii=False)\" \
             (needs pandas and pyarrow), then pass gsm8k.jsonl"
        )));
    }
    let mut items = Vec::new();
    for (n, v) in super::jsonl_objects(path, "pass a JSONL file with question and answer per line")? {
        let field = |k: &str| -> Result<String> {
            v.get(k).and_then(|x| x.as_str()).map(str::to_string).ok_or_else(|| {
                bad(format!(
                    "{shown}, line {n}: no \"{k}\" string\n  every line needs \"question\" and \"answer\" strings"
                ))
            })
        };
        items.push(Item { question: field("question")?, answer: field("answer")? });
    }
    if items.is_empty() {
        return Err(bad(format!("{shown} holds no problems\n  pass a JSONL file with one problem per line")));
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

/// lm-evaluation-harness's defaults: `target_delimiter` between an exemplar's text and target,
/// `fewshot_delimiter` after each exemplar (`lm_eval/api/task.py::build_qa_turn`).
pub const TARGET_DELIMITER: &str = " ";
pub const FEWSHOT_DELIMITER: &str = "\n\n";

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
/// full solution. lm-evaluation-harness picks 5 with `random.Random(1234).sample`; keel does not
/// reproduce that draw, so the indices are the caller's. (The fewshot split is train and the test
/// split test, so the harness never has to drop the evaluated item from the exemplars.)
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
