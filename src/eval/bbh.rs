//! BIG-Bench Hard (27 subtasks) scored as lm-evaluation-harness's generative groups score it:
//! `bbh_zeroshot` (`lm_eval/tasks/bbh/zeroshot/`, template v3.0, group v3.0), `bbh_fewshot`
//! (`lm_eval/tasks/bbh/fewshot/`, template v2.0, group v3.0) and `bbh_cot_fewshot`
//! (`lm_eval/tasks/bbh/cot_fewshot/`, template v4.0, group v3.0; lm-eval's plain `bbh` group is
//! this one), as released in lm-eval 0.4.13.
//!
//! Per subtask and item (`input`, `target` of the hub dataset `SaylorTwift/bbh`, split `test`):
//!
//! ```text
//! {description}Q: {shot input}\nA: {shot target}\n\n      (bbh_fewshot: the 3 fixed first_n exemplars)
//! Q: {input}\nA:
//! ```
//!
//! and for `bbh_cot_fewshot` (`target_delimiter: ""`, chain-of-thought exemplar targets):
//!
//! ```text
//! {description}Q: {shot input}\nA: Let's think step by step.\n{shot target}\n\n      (3 exemplars)
//! Q: {input}\nA: Let's think step by step.\n
//! ```
//!
//! The description ends in `\n\n` (it is the subtask YAML's `description`, prepended verbatim by
//! `ConfigurableTask.fewshot_context`); `target_delimiter` is `" "` and `fewshot_delimiter` `"\n\n"`
//! (`build_qa_turn`). The descriptions and exemplars are lm-eval's text, not keel's: they are read
//! from `DATA/prompts/{task}.json`, which `scripts/get_bbh.sh` extracts from lm-eval's wheel.
//!
//! Generation is greedy (`generation::generate_until`) until the template's stop strings, at most
//! 256 new tokens (lm-eval's default; `--max-gen-toks` overrides it). Scoring, per template:
//! - `bbh_zeroshot`: stops `["</s>", "Q:", "<|im_end|>"]`; two filters, `strict-match` (the
//!   generation itself, `take_first`) and `flexible-extract` (per subtask: a `regex` filter, or one
//!   of `zeroshot/utils.py`'s `MultiChoiceRegexFilter`, `NumberParseRegexFilter`, `MapRegexFilter`,
//!   `WordSortFilter`, reproduced below); `exact_match` with `ignore_case` and `regexes_to_ignore:
//!   ["\\.$", ",", "\n", "\\\\", '"']` on both sides. The group reports `flexible-extract` only.
//! - `bbh_fewshot`: stops `["</s>", "Q", "\n\n"]`; no filter_list (lm-eval's `none`: the generation
//!   itself); `exact_match` with no normalisation.
//! - `bbh_cot_fewshot` (`cot_fewshot/`, template v4.0; the default `bbh` group): the prompt
//!   `Q: {input}\nA: Let's think step by step.\n`, `target_delimiter ""`, 3 chain-of-thought
//!   exemplars, 1024 new tokens, the fewshot stops, filter `get-answer` (regex
//!   `(?<=the answer is )(.*)(?=.)`, `take_first`), plain `exact_match`.
//!
//! The group value (`aggregate_metric_list`: `mean`, `weight_by_size: true`) is the size-weighted
//! (micro) mean over subtasks, with lm-eval's pooled standard error (`pooled_sample_stderr`); keel
//! also reports the macro mean (each subtask counts once).
//!
//! lm-eval 0.4.13's `MultiChoiceRegexFilter` tries the options' texts longest first; its
//! development tree before the release (0.4.13.dev0, 4e7e0d47) tried them in order, so an option
//! that is a prefix of another could shadow it. keel follows the release.
//!
//! The only departure from lm-eval: where `NumberParseRegexFilter` hands word2number a phrase it
//! rejects (`w2n.word_to_num` raises, e.g. for "thousand thousand"), lm-eval stops with the
//! exception; keel gives that item the filter's fallback `[invalid]`. (Unicode tables, for
//! punctuation and lowercasing, are Rust's, which may differ from a Python build's for characters
//! of recent Unicode versions.)
//!
//! `--data DIR` holds the subtasks' test items, per subtask `{task}/test-*.parquet` (the hub's
//! `SaylorTwift/bbh`), `{task}/test/*.parquet` (its parquet-converter branch), or
//! `{task}.json` / `bbh/{task}.json` (the original release: `{"examples": [{"input", "target"}]}`),
//! plus `prompts/{task}.json` from `scripts/get_bbh.sh DIR`. `--subtasks a,b` scores some of the
//! 27; `--limit N` the first N items of each.

use super::bench::{Benchmark, Data, Outcome, Session, Settings};
use super::generation::{generate_until, Until};
use super::generative::{
    cut_at_stop, mean_and_stderr, py_isspace, py_strip, ExactMatch, Found, PyRegex, RegexError, RegexFilter,
};
use super::records;
use crate::InputError;
use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How a subtask's zero-shot `flexible-extract` filter finds the answer (`zeroshot/{task}.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flexible {
    /// `function: "regex"`, `group_select: 0`.
    Regex(&'static str),
    /// `utils.MultiChoiceRegexFilter`, `regex_pattern: "(\\([A-Z]\\))"`, `ignore_case` and
    /// `ignore_punctuation`.
    MultiChoice,
    /// `utils.NumberParseRegexFilter`, `regex_pattern: "([-0-9]+)"`.
    NumberParse,
    /// `utils.MapRegexFilter` with `ignore_case`: `regex_pattern_to_value` in YAML order.
    Map(&'static [(&'static str, &'static str)]),
    /// `utils.WordSortFilter`.
    WordSort,
}

const YES_NO: &str = r"\b(Yes|No|yes|no)\b";

/// The 27 subtasks in the order of lm-eval's group YAMLs, with their zero-shot `flexible-extract`.
pub const TASKS: [(&str, Flexible); 27] = [
    ("boolean_expressions", Flexible::Regex(r"\b(True|False)\b")),
    ("causal_judgement", Flexible::Regex(YES_NO)),
    ("date_understanding", Flexible::MultiChoice),
    ("disambiguation_qa", Flexible::MultiChoice),
    ("dyck_languages", Flexible::Regex(r#"(?<= )([" \[\(<{}>\)\]]+)|([" \[\(<{}>\)\]]+)"#)),
    ("formal_fallacies", Flexible::Regex(r"\b(valid|invalid)\b")),
    ("geometric_shapes", Flexible::MultiChoice),
    ("hyperbaton", Flexible::MultiChoice),
    ("logical_deduction_five_objects", Flexible::MultiChoice),
    ("logical_deduction_seven_objects", Flexible::MultiChoice),
    ("logical_deduction_three_objects", Flexible::MultiChoice),
    ("movie_recommendation", Flexible::MultiChoice),
    ("multistep_arithmetic_two", Flexible::NumberParse),
    ("navigate", Flexible::Regex(YES_NO)),
    ("object_counting", Flexible::NumberParse),
    ("penguins_in_a_table", Flexible::MultiChoice),
    ("reasoning_about_colored_objects", Flexible::MultiChoice),
    ("ruin_names", Flexible::MultiChoice),
    ("salient_translation_error_detection", Flexible::MultiChoice),
    ("snarks", Flexible::MultiChoice),
    ("sports_understanding", Flexible::Map(&[(r"\b(no|not plausible)\b", "no"), (r"\b(yes|plausible)\b", "yes")])),
    ("temporal_sequences", Flexible::MultiChoice),
    ("tracking_shuffled_objects_five_objects", Flexible::MultiChoice),
    ("tracking_shuffled_objects_seven_objects", Flexible::MultiChoice),
    ("tracking_shuffled_objects_three_objects", Flexible::MultiChoice),
    (
        "web_of_lies",
        Flexible::Map(&[
            (r"\b(no|does not tell the truth|is not telling the truth)\b", "no"),
            (r"\b(yes|tells the truth|is telling the truth)\b", "yes"),
        ]),
    ),
    ("word_sorting", Flexible::WordSort),
];

/// The subtask names, in lm-eval's order.
pub fn task_names() -> Vec<&'static str> {
    TASKS.iter().map(|(t, _)| *t).collect()
}

/// Which lm-eval group to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Zeroshot,
    Fewshot,
    CotFewshot,
}

impl Variant {
    /// The group's name (and `--bench` value).
    pub fn name(self) -> &'static str {
        match self {
            Variant::Zeroshot => "bbh_zeroshot",
            Variant::Fewshot => "bbh_fewshot",
            Variant::CotFewshot => "bbh_cot_fewshot",
        }
    }

    /// Its key in `prompts/{task}.json` (the lm-eval folder it comes from).
    pub fn key(self) -> &'static str {
        match self {
            Variant::Zeroshot => "zeroshot",
            Variant::Fewshot => "fewshot",
            Variant::CotFewshot => "cot_fewshot",
        }
    }

    /// `num_fewshot` of the template.
    pub fn default_shots(self) -> usize {
        match self {
            Variant::Zeroshot => 0,
            Variant::Fewshot | Variant::CotFewshot => 3,
        }
    }

    /// `generation_kwargs.until` of the template (the tokenizer's end-of-text string is added by
    /// `generate_until`).
    pub fn until(self) -> &'static [&'static str] {
        match self {
            Variant::Zeroshot => &["</s>", "Q:", "<|im_end|>"],
            Variant::Fewshot | Variant::CotFewshot => &["</s>", "Q", "\n\n"],
        }
    }

    /// `max_gen_toks`: lm-eval's default 256, the CoT template's 1024.
    pub fn max_gen_toks(self) -> usize {
        match self {
            Variant::CotFewshot => 1024,
            _ => 256,
        }
    }

    /// `target_delimiter` between an exemplar's text and its target.
    pub fn target_delimiter(self) -> &'static str {
        match self {
            Variant::CotFewshot => "",
            _ => " ",
        }
    }

    /// `doc_to_text`.
    pub fn doc_to_text(self, input: &str) -> String {
        match self {
            Variant::CotFewshot => format!("Q: {input}\nA: Let's think step by step.\n"),
            _ => format!("Q: {input}\nA:"),
        }
    }

    /// The filter the group aggregates (`aggregate_metric_list.filter_list`; `none` by default).
    pub fn group_filter(self) -> &'static str {
        match self {
            Variant::Zeroshot => "flexible-extract",
            Variant::Fewshot => "none",
            Variant::CotFewshot => "get-answer",
        }
    }
}

pub use super::FEWSHOT_DELIMITER;

/// The template's `exact_match` settings.
pub fn metric(variant: Variant) -> Result<ExactMatch, RegexError> {
    Ok(match variant {
        Variant::Zeroshot => ExactMatch {
            regexes_to_ignore: [r"\.$", ",", "\n", r"\\", "\""]
                .iter()
                .map(|p| PyRegex::new(p))
                .collect::<Result<_, _>>()?,
            ignore_case: true,
            ..ExactMatch::default()
        },
        Variant::Fewshot | Variant::CotFewshot => ExactMatch::default(),
    })
}

/// An exemplar or test item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub input: String,
    pub target: String,
}

/// A subtask's prompt parts for one variant (from `prompts/{task}.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub description: String,
    pub samples: Vec<Example>,
}

/// The prompt of one item: the description, the first `shots` exemplars, the question
/// (`fewshot_context` rendered as plain text).
pub fn build_prompt(variant: Variant, prompt: &Prompt, shots: usize, input: &str) -> String {
    let mut s = prompt.description.clone();
    for ex in prompt.samples.iter().take(shots) {
        s.push_str(&variant.doc_to_text(&ex.input));
        s.push_str(variant.target_delimiter());
        s.push_str(&ex.target);
        s.push_str(FEWSHOT_DELIMITER);
    }
    s.push_str(&variant.doc_to_text(input));
    s
}

fn bad(msg: String) -> anyhow::Error {
    InputError(msg).into()
}

/// The command that writes the prompts folder.
fn get_prompts(data: &Path) -> String {
    format!("scripts/get_bbh.sh {}", data.display())
}

/// Reads `{data}/prompts/{task}.json` for `variant`, checking it holds `shots` exemplars.
pub fn read_prompt(data: &Path, task: &str, variant: Variant, shots: usize) -> Result<Prompt> {
    let dir = data.join("prompts");
    if !dir.is_dir() {
        return Err(bad(format!(
            "{} does not exist: BBH's descriptions and exemplars (lm-evaluation-harness's text) are not part of keel\n  write them once with: {}",
            dir.display(),
            get_prompts(data)
        )));
    }
    let path = dir.join(format!("{task}.json"));
    let shown = path.display();
    let text = crate::files::read_to_string(&path).map_err(|e| {
        bad(format!("cannot read {shown}: {e}\n  write the prompts folder again: {}", get_prompts(data)))
    })?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| bad(format!("{shown} is not JSON: {e}\n  write it again: {}", get_prompts(data))))?;
    let key = variant.key();
    let part = v.get(key).ok_or_else(|| {
        bad(format!("{shown} has no \"{key}\" object\n  write the prompts folder again: {}", get_prompts(data)))
    })?;
    let description = part.get("description").and_then(Value::as_str).ok_or_else(|| {
        bad(format!("{shown}: \"{key}\" has no \"description\" string\n  write it again: {}", get_prompts(data)))
    })?;
    let mut samples = Vec::new();
    if let Some(list) = part.get("samples") {
        let list = list.as_array().ok_or_else(|| {
            bad(format!("{shown}: \"{key}.samples\" is not a list\n  write it again: {}", get_prompts(data)))
        })?;
        for (i, s) in list.iter().enumerate() {
            let field = |k: &str| {
                s.get(k).and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
                    bad(format!(
                        "{shown}: exemplar {} of \"{key}\" has no \"{k}\" string\n  write it again: {}",
                        i + 1,
                        get_prompts(data)
                    ))
                })
            };
            samples.push(Example { input: field("input")?, target: field("target")? });
        }
    }
    if samples.len() < shots {
        return Err(bad(format!(
            "{shown}: \"{key}\" holds {} exemplars, {shots} asked for (lm-evaluation-harness's first_n sampler refuses that too)\n  pass --shots {} or fewer",
            samples.len(),
            samples.len()
        )));
    }
    Ok(Prompt { description: description.to_string(), samples })
}

/// A test item of a subtask: `id` is its 0-based position in the file (lm-eval's `doc_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: usize,
    pub input: String,
    pub target: String,
}

/// The rows of a `.json` task file: the original release's `{"examples": [...]}`, or an array.
fn read_json_rows(path: &Path) -> Result<Vec<records::Record>> {
    let shown = path.display();
    let text = crate::files::read_to_string(path).map_err(|e| bad(format!("cannot read {shown}: {e}")))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        bad(format!(
            "{shown} is not JSON: {e}\n  a BBH .json file holds {{\"examples\": [{{\"input\", \"target\"}}, ...]}}"
        ))
    })?;
    let rows = match v {
        Value::Object(mut o) => match o.remove("examples") {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(bad(format!(
                    "{shown} has no \"examples\" list\n  a BBH .json file holds {{\"examples\": [{{\"input\", \"target\"}}, ...]}}"
                )))
            }
        },
        Value::Array(a) => a,
        _ => return Err(bad(format!("{shown} is neither an object with \"examples\" nor a list of rows"))),
    };
    Ok(rows.into_iter().enumerate().map(|(i, value)| records::Record { line: i + 1, value }).collect())
}

/// The file(s) holding subtask `task`'s test items under `data`, in the order tried:
/// `{task}.json` and `bbh/{task}.json` (the original release), `{task}/test/*.parquet` (the hub's
/// refs/convert/parquet layout), then `{task}/` as `records::split_file` reads a split folder
/// (`test-*.parquet`, `test.parquet`, `test.jsonl`, `test.json`, also under `data/`).
pub fn item_files(data: &Path, task: &str) -> Result<Vec<PathBuf>> {
    for p in [data.join(format!("{task}.json")), data.join("bbh").join(format!("{task}.json"))] {
        if p.is_file() {
            return Ok(vec![p]);
        }
    }
    let sub = data.join(task);
    let converted = sub.join("test");
    if converted.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&converted)
            .with_context(|| format!("reading {}", converted.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        files.sort();
        if !files.is_empty() {
            return Ok(files);
        }
    }
    if sub.is_dir() {
        return Ok(vec![records::split_file(&sub, None, "test")?]);
    }
    Err(bad(format!(
        "{} holds no test items of BBH subtask {task}: looked for {task}.json, bbh/{task}.json, {task}/test/*.parquet and {task}/test-*.parquet (or test.parquet, test.jsonl, test.json)\n  download the items (hf download SaylorTwift/bbh --repo-type dataset --local-dir {}), or pass --subtasks with the subtasks you have",
        data.display(),
        data.display()
    )))
}

/// Reads subtask `task`'s test items (`input` and `target` strings) under `data`.
pub fn read_items(data: &Path, task: &str) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for path in item_files(data, task)? {
        let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let rows =
            if is_json { read_json_rows(&path)? } else { records::read(&path, "pass --data with a BBH folder")? };
        for r in &rows {
            if !r.value.is_object() {
                return Err(bad(format!(
                    "{}, row {}: not a JSON object\n  each item needs \"input\" and \"target\" strings",
                    path.display(),
                    r.line
                )));
            }
            let input = records::string_field(&path, r, "input")?;
            let target = records::string_field(&path, r, "target")?;
            items.push(Item { id: items.len(), input, target });
        }
    }
    if items.is_empty() {
        return Err(bad(format!(
            "BBH subtask {task} in {} holds no items\n  restore its file, or leave it out with --subtasks",
            data.display()
        )));
    }
    Ok(items)
}

/// One subtask ready to score.
#[derive(Debug, Clone)]
pub struct Subtask {
    pub name: String,
    pub prompt: Prompt,
    pub items: Vec<Item>,
}

/// The subtasks `only` names (all 27 when empty), in lm-eval's order, each with its prompt parts
/// and at most `limit` items.
pub fn load(
    data: &Path,
    variant: Variant,
    only: &[String],
    shots: usize,
    limit: Option<usize>,
) -> Result<Vec<Subtask>> {
    if !data.is_dir() {
        return Err(bad(format!(
            "{} is not a folder\n  pass --data with a BBH folder: the subtasks' test items plus prompts/ from {}",
            data.display(),
            get_prompts(data)
        )));
    }
    let names = task_names();
    if let Some(unknown) = only.iter().find(|s| !names.contains(&s.as_str())) {
        return Err(bad(format!("--subtasks {unknown}: not a BBH subtask\n  the 27 subtasks: {}", names.join(", "))));
    }
    let mut out = Vec::new();
    for name in names.into_iter().filter(|n| only.is_empty() || only.iter().any(|o| o == n)) {
        let prompt = read_prompt(data, name, variant, shots)?;
        let mut items = read_items(data, name)?;
        items.truncate(limit.unwrap_or(usize::MAX));
        out.push(Subtask { name: name.to_string(), prompt, items });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// zeroshot/utils.py's filters.

/// `ExtendedRegexFilter.filter_ignores` as BBH configures it (no `regexes_to_ignore`):
/// lowercasing, then every Unicode punctuation character (general category P*, its `punct_tbl`)
/// removed.
pub fn filter_ignores(s: &str, ignore_case: bool, ignore_punctuation: bool) -> String {
    let mut s = s.to_string();
    if ignore_case {
        s = s.to_lowercase();
    }
    if ignore_punctuation {
        s = punctuation().replace_all(&s, "").into_owned();
    }
    s
}

fn punctuation() -> &'static fancy_regex::Regex {
    static RE: std::sync::OnceLock<fancy_regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| fancy_regex::Regex::new(r"\p{P}").expect("valid"))
}

/// `ExtendedRegexFilter.find_match` with `group_select` 0: the first `findall` result (for a tuple,
/// its first non-empty group), stripped, mapped through `convert` when it is a key. Empty when
/// nothing matched (Python's falsy `[]` or `""`). A tuple with no non-empty group is Python's
/// IndexError, an error here.
pub fn find_match(regex: &PyRegex, resp: &str, convert: &HashMap<String, String>) -> Result<String, RegexError> {
    let found = regex.findall(resp)?;
    let Some(first) = found.into_iter().next() else { return Ok(String::new()) };
    let text = match first {
        Found::Text(t) => t,
        Found::Groups(g) => g.into_iter().find(|s| !s.is_empty()).ok_or_else(|| RegexError {
            pattern: regex.pattern().to_string(),
            why: "a match whose groups are all empty (Python's IndexError in find_match)".into(),
        })?,
    };
    let text = py_strip(&text).to_string();
    Ok(match convert.get(&text) {
        Some(v) if !text.is_empty() => v.clone(),
        _ => text,
    })
}

/// Python's `re.escape` (3.7+): a backslash before each of `()[]{}?*+-|^$\.&~# \t\n\r\v\f`.
pub fn py_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "()[]{}?*+-|^$\\.&~# \t\n\r\u{b}\u{c}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

const FALLBACK: &str = "[invalid]";

/// `utils.MultiChoiceRegexFilter` (lm-eval 0.4.13): the pattern on the raw response; else the
/// options' texts (`\([A-Z]\)([^\n^(]*)` in the item's input, each stripped and passed through
/// `filter_ignores`) searched in the filtered response, longest escaped pattern first, the found
/// text mapped to `(A)`, `(B)`... by position; else `:[\s]*(A|B|...)` on the raw response, mapped
/// to `(A)`...; else `[invalid]`.
#[derive(Debug, Clone)]
pub struct MultiChoiceRegexFilter {
    pub regex: PyRegex,
    pub ignore_case: bool,
    pub ignore_punctuation: bool,
}

impl MultiChoiceRegexFilter {
    /// The BBH zero-shot configuration: `(\([A-Z]\))`, `ignore_case`, `ignore_punctuation`.
    pub fn bbh() -> Result<Self, RegexError> {
        Ok(Self { regex: PyRegex::new(r"(\([A-Z]\))")?, ignore_case: true, ignore_punctuation: true })
    }

    pub fn apply(&self, resp: &str, input: &str) -> Result<String, RegexError> {
        let ignores = |s: &str| filter_ignores(s, self.ignore_case, self.ignore_punctuation);
        let options = PyRegex::new(r"\([A-Z]\)([^\n^(]*)")?;
        let mut fallback = Vec::new();
        let mut choice_to_alpha = HashMap::new();
        let mut letters = Vec::new();
        let mut letter_to_target = HashMap::new();
        let mut next = 'A';
        for m in options.findall(input)? {
            let Found::Text(m) = m else { unreachable!("one group") };
            let m = ignores(py_strip(&m));
            fallback.push(py_escape(&m));
            choice_to_alpha.insert(m, format!("({next})"));
            letters.push(next.to_string());
            letter_to_target.insert(next.to_string(), format!("({next})"));
            next = char::from_u32(next as u32 + 1).unwrap_or(next);
        }
        // Python's sorted(..., key=len, reverse=True) is stable, as sort_by is.
        fallback.sort_by_key(|p| std::cmp::Reverse(p.chars().count()));
        let fallback = PyRegex::new(&fallback.join("|"))?;
        let without_paren = PyRegex::new(&format!(r":[\s]*({})", letters.join("|")))?;
        let mut found = find_match(&self.regex, resp, &HashMap::new())?;
        if found.is_empty() {
            found = find_match(&fallback, &ignores(resp), &choice_to_alpha)?;
            if found.is_empty() {
                found = find_match(&without_paren, resp, &letter_to_target)?;
            }
        }
        Ok(if found.is_empty() { FALLBACK.to_string() } else { found })
    }
}

/// `utils.MapRegexFilter`: the patterns joined by `|` find the first answer in the (lowercased)
/// response; the first pattern that also matches that answer gives the value; else `[invalid]`.
#[derive(Debug, Clone)]
pub struct MapRegexFilter {
    pub whole: PyRegex,
    pub map: Vec<(PyRegex, String)>,
    pub ignore_case: bool,
}

impl MapRegexFilter {
    pub fn new(patterns: &[(&str, &str)], ignore_case: bool) -> Result<Self, RegexError> {
        let joined: Vec<&str> = patterns.iter().map(|(p, _)| *p).collect();
        Ok(Self {
            whole: PyRegex::new(&joined.join("|"))?,
            map: patterns.iter().map(|(p, v)| Ok((PyRegex::new(p)?, v.to_string()))).collect::<Result<_, _>>()?,
            ignore_case,
        })
    }

    pub fn apply(&self, resp: &str) -> Result<String, RegexError> {
        let none = HashMap::new();
        let whole = find_match(&self.whole, &filter_ignores(resp, self.ignore_case, false), &none)?;
        if !whole.is_empty() {
            for (re, value) in &self.map {
                if !find_match(re, &filter_ignores(&whole, self.ignore_case, false), &none)?.is_empty() {
                    return Ok(value.clone());
                }
            }
        }
        Ok(FALLBACK.to_string())
    }
}

/// `NumberParseRegexFilter`'s English-number pattern (third-party `regex` module). Its branch
/// resets `(?|teen|ty)` hold no groups, so they are the plain groups written here; `\s` is the
/// `regex` module's Unicode White_Space, as in Rust.
const ENGLISH_NUMBER: &str = r"((?:(?:zero|one|two|three|four|five|(?:twen|thir|for|fif|six|seven|nine)(?:teen|ty)|eight(?:|een|y)|ten|eleven|twelve|fourteen|hundred|thousand|(?:m|b|tr)illion)(?:zero|one|two|three|four|five|(?:twen|thir|for|fif|six|seven|nine)(?:|teen|ty)|eight(?:een|y)|ten|eleven|twelve|fourteen|hundred|thousand|(?:m|b|tr)illion|[^\S\r\n]|,|and|&)+)?(?:zero|one|two|three|four|five|(?:twen|thir|for|fif|six|seven|nine)(?:teen|ty)|eight(?:een|y)|ten|eleven|twelve|fourteen|hundred|thousand|(?:m|b|tr)illion))";

/// `utils.NumberParseRegexFilter`: the pattern's first match on the response; else the first run
/// of English number words in the lowercased response, converted by word2number; else `[invalid]`.
#[derive(Debug, Clone)]
pub struct NumberParseRegexFilter {
    pub regex: PyRegex,
}

impl NumberParseRegexFilter {
    /// The BBH configuration: `([-0-9]+)`.
    pub fn bbh() -> Result<Self, RegexError> {
        Ok(Self { regex: PyRegex::new(r"([-0-9]+)")? })
    }

    pub fn apply(&self, resp: &str) -> Result<String, RegexError> {
        let found = find_match(&self.regex, resp, &HashMap::new())?;
        if !found.is_empty() {
            return Ok(found);
        }
        static RE: std::sync::OnceLock<fancy_regex::Regex> = std::sync::OnceLock::new();
        let re = RE.get_or_init(|| fancy_regex::Regex::new(ENGLISH_NUMBER).expect("valid"));
        let lower = resp.to_lowercase();
        let caps =
            re.captures(&lower).map_err(|e| RegexError { pattern: "english numbers".into(), why: e.to_string() })?;
        let words = caps.and_then(|c| c.get(1)).map(|m| py_strip(m.as_str()).to_string()).unwrap_or_default();
        if words.is_empty() {
            return Ok(FALLBACK.to_string());
        }
        Ok(word_to_num(&words).map(|n| n.to_string()).unwrap_or_else(|| FALLBACK.to_string()))
    }
}

fn number_word(w: &str) -> Option<u128> {
    const WORDS: [(&str, u128); 31] = [
        ("zero", 0),
        ("one", 1),
        ("two", 2),
        ("three", 3),
        ("four", 4),
        ("five", 5),
        ("six", 6),
        ("seven", 7),
        ("eight", 8),
        ("nine", 9),
        ("ten", 10),
        ("eleven", 11),
        ("twelve", 12),
        ("thirteen", 13),
        ("fourteen", 14),
        ("fifteen", 15),
        ("sixteen", 16),
        ("seventeen", 17),
        ("eighteen", 18),
        ("nineteen", 19),
        ("twenty", 20),
        ("thirty", 30),
        ("forty", 40),
        ("fifty", 50),
        ("sixty", 60),
        ("seventy", 70),
        ("eighty", 80),
        ("ninety", 90),
        ("hundred", 100),
        ("thousand", 1000),
        ("million", 1_000_000),
    ];
    if w == "billion" {
        return Some(1_000_000_000);
    }
    WORDS.iter().find(|(k, _)| *k == w).map(|(_, v)| *v)
}

/// word2number 1.1's `number_formation`; `None` for an empty list (Python's IndexError).
fn number_formation(words: &[&str]) -> Option<u128> {
    let n: Vec<u128> = words.iter().map(|w| number_word(w).expect("number words only")).collect();
    Some(match n.len() {
        0 => return None,
        4 => n[0] * n[1] + n[2] + n[3],
        3 => n[0] * n[1] + n[2],
        2 if n.contains(&100) => n[0] * n[1],
        2 => n[0] + n[1],
        _ => n[0],
    })
}

/// word2number 1.1's `w2n.word_to_num` for the phrases the English-number pattern yields (number
/// words, whitespace, `,`, `and`, `&`; never `point`, so no decimals). `None` where it raises
/// (no number word, a repeated `thousand`/`million`/`billion`, scales out of order, an empty
/// multiplier such as "thousand five").
pub fn word_to_num(sentence: &str) -> Option<u128> {
    let s = sentence.replace('-', " ").to_lowercase();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
        return s.parse().ok();
    }
    let clean: Vec<&str> = s.split(py_isspace).filter(|w| !w.is_empty() && number_word(w).is_some()).collect();
    if clean.is_empty() {
        return None;
    }
    let count = |w: &str| clean.iter().filter(|x| **x == w).count();
    if count("thousand") > 1 || count("million") > 1 || count("billion") > 1 {
        return None;
    }
    let index = |w: &str| clean.iter().position(|x| *x == w).map_or(-1, |i| i as i64);
    let (b, m, t) = (index("billion"), index("million"), index("thousand"));
    if (t > -1 && (t < m || t < b)) || (m > -1 && m < b) {
        return None;
    }
    if clean.len() == 1 {
        return number_word(clean[0]);
    }
    let slice = |from: i64, to: i64| &clean[from as usize..to as usize];
    let mut total = 0u128;
    if b > -1 {
        total += number_formation(slice(0, b))? * 1_000_000_000;
    }
    if m > -1 {
        let from = if b > -1 { b + 1 } else { 0 };
        total += number_formation(slice(from, m))? * 1_000_000;
    }
    if t > -1 {
        let from = if m > -1 {
            m + 1
        } else if b > -1 {
            b + 1
        } else {
            0
        };
        total += number_formation(slice(from, t))? * 1000;
    }
    let last = clean.len() as i64 - 1;
    let hundreds = if t > -1 && t != last {
        number_formation(slice(t + 1, last + 1))?
    } else if m > -1 && m != last {
        number_formation(slice(m + 1, last + 1))?
    } else if b > -1 && b != last {
        number_formation(slice(b + 1, last + 1))?
    } else if t == -1 && m == -1 && b == -1 {
        number_formation(&clean)?
    } else {
        0
    };
    Some(total + hundreds)
}

/// `utils.WordSortFilter`: the words after the input's first `List:` matched as `\bword\b`
/// alternatives in the response; each distinct match kept at its last occurrence, in order,
/// joined by spaces. An input without `List:` is Python's IndexError, an error here.
pub fn word_sort(resp: &str, input: &str) -> Result<String, RegexError> {
    let list = input.split("List:").nth(1).ok_or_else(|| RegexError {
        pattern: String::new(),
        why: "word_sorting input without \"List:\" (lm-eval's WordSortFilter raises IndexError)".into(),
    })?;
    let words: Vec<String> =
        py_strip(list).split(py_isspace).filter(|w| !w.is_empty()).map(|w| format!(r"\b{w}\b")).collect();
    let re = PyRegex::new(&words.join("|"))?;
    let found: Vec<String> = re
        .findall(resp)?
        .into_iter()
        .map(|f| match f {
            Found::Text(t) => t,
            Found::Groups(g) => g.into_iter().next().unwrap_or_default(),
        })
        .collect();
    let mut kept: Vec<String> = Vec::new();
    for w in found.into_iter().rev() {
        if !kept.contains(&w) {
            kept.push(w);
        }
    }
    kept.reverse();
    Ok(kept.join(" "))
}

/// One filter of a subtask's `filter_list`; each ends in `take_first`, which one generation per
/// item makes the identity.
#[derive(Debug, Clone)]
pub enum Filter {
    /// The generation itself (`strict-match`: `take_first` only; lm-eval's `none`).
    Identity,
    Regex(Box<RegexFilter>),
    MultiChoice(Box<MultiChoiceRegexFilter>),
    NumberParse(Box<NumberParseRegexFilter>),
    Map(Box<MapRegexFilter>),
    WordSort,
}

impl Filter {
    /// The filtered response to item `input`'s generation.
    pub fn apply(&self, generation: &str, input: &str) -> Result<String, RegexError> {
        match self {
            Filter::Identity => Ok(generation.to_string()),
            Filter::Regex(f) => f.apply(generation),
            Filter::MultiChoice(f) => f.apply(generation, input),
            Filter::NumberParse(f) => f.apply(generation),
            Filter::Map(f) => f.apply(generation),
            Filter::WordSort => word_sort(generation, input),
        }
    }
}

/// The named filters of a subtask, in the YAML's order.
pub fn filters(variant: Variant, task: &str) -> Result<Vec<(&'static str, Filter)>> {
    Ok(match variant {
        Variant::Zeroshot => {
            let (_, flexible) = TASKS
                .iter()
                .find(|(t, _)| *t == task)
                .ok_or_else(|| anyhow::anyhow!("internal: unknown BBH subtask {task}"))?;
            let flexible = match *flexible {
                Flexible::Regex(p) => Filter::Regex(Box::new(RegexFilter::new(p)?)),
                Flexible::MultiChoice => Filter::MultiChoice(Box::new(MultiChoiceRegexFilter::bbh()?)),
                Flexible::NumberParse => Filter::NumberParse(Box::new(NumberParseRegexFilter::bbh()?)),
                Flexible::Map(m) => Filter::Map(Box::new(MapRegexFilter::new(m, true)?)),
                Flexible::WordSort => Filter::WordSort,
            };
            vec![("strict-match", Filter::Identity), ("flexible-extract", flexible)]
        }
        Variant::Fewshot => vec![("none", Filter::Identity)],
        Variant::CotFewshot => {
            vec![("get-answer", Filter::Regex(Box::new(RegexFilter::new(r"(?<=the answer is )(.*)(?=.)")?)))]
        }
    })
}

/// The filter names of a variant (the same for every subtask).
pub fn filter_names(variant: Variant) -> &'static [&'static str] {
    match variant {
        Variant::Zeroshot => &["strict-match", "flexible-extract"],
        Variant::Fewshot => &["none"],
        Variant::CotFewshot => &["get-answer"],
    }
}

// ---------------------------------------------------------------------------------------------
// Scoring.

/// One scored item.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub subtask: String,
    pub id: usize,
    pub prompt: String,
    pub target: String,
    /// The generation cut at the first stop string.
    pub generation: String,
    /// Per filter, in [`filter_names`] order: the filtered answer and its `exact_match`.
    pub extracted: Vec<String>,
    pub scores: Vec<bool>,
}

/// `exact_match` of one filter on one subtask (lm-eval's `mean` and `mean_stderr`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub n: usize,
    pub mean: f64,
    pub stderr: Option<f64>,
}

/// A group value over subtasks: `micro` is lm-eval's (`weight_by_size: true`), `macro` the plain
/// mean of the subtask means, `stderr` lm-eval's `pooled_sample_stderr` (none where a subtask has
/// none, which lm-eval prints as N/A).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Group {
    pub n: usize,
    pub micro: f64,
    pub macro_: f64,
    pub stderr: Option<f64>,
}

/// Aggregates subtask scores as lm-eval's `aggregate_subtask_metrics` (weighted by size) and
/// `pooled_sample_stderr` do, plus the macro mean.
pub fn aggregate(scores: &[Score]) -> Group {
    let n: usize = scores.iter().map(|s| s.n).sum();
    let k = scores.len();
    let micro = scores.iter().map(|s| s.mean * s.n as f64).sum::<f64>() / n as f64;
    let macro_ = scores.iter().map(|s| s.mean).sum::<f64>() / k as f64;
    let stderr = if n > k && scores.iter().all(|s| s.stderr.is_some()) {
        let pooled: f64 =
            scores.iter().map(|s| (s.n as f64 - 1.0) * s.stderr.unwrap().powi(2) * s.n as f64).sum::<f64>()
                / (n - k) as f64;
        Some((pooled / n as f64).sqrt())
    } else {
        None
    };
    Group { n, micro, macro_, stderr }
}

/// Per-subtask and group scores with the scored rows.
#[derive(Debug, Clone)]
pub struct Report {
    pub rows: Vec<Row>,
    /// Per subtask (in the given order): its name and one [`Score`] per filter.
    pub subtasks: Vec<(String, Vec<Score>)>,
    /// Per filter, in [`filter_names`] order.
    pub groups: Vec<Group>,
}

/// The prompts of `subtasks`' items, in order.
pub fn prompts(variant: Variant, subtasks: &[Subtask], shots: usize) -> Vec<String> {
    subtasks.iter().flat_map(|t| t.items.iter().map(|i| build_prompt(variant, &t.prompt, shots, &i.input))).collect()
}

/// Scores `subtasks`: `generate` returns one generation per prompt (of [`prompts`]); each is cut
/// at the variant's stop strings (as `generate_until` already did), filtered and scored.
pub fn evaluate(
    variant: Variant,
    subtasks: &[Subtask],
    shots: usize,
    generate: impl FnOnce(&[String]) -> Result<Vec<String>>,
) -> Result<Report> {
    let prompts = prompts(variant, subtasks, shots);
    let raw = generate(&prompts)?;
    anyhow::ensure!(raw.len() == prompts.len(), "{} generations for {} prompts", raw.len(), prompts.len());
    let metric = metric(variant)?;
    let names = filter_names(variant);
    let mut rows = Vec::with_capacity(prompts.len());
    let mut per_task = Vec::new();
    let mut next = prompts.into_iter().zip(raw);
    for t in subtasks {
        let filters = filters(variant, &t.name)?;
        let mut hits = vec![Vec::with_capacity(t.items.len()); filters.len()];
        for item in &t.items {
            let (prompt, gen) = next.next().expect("one prompt per item");
            let generation = cut_at_stop(&gen, variant.until()).to_string();
            let mut extracted = Vec::new();
            let mut scores = Vec::new();
            for (k, (name, f)) in filters.iter().enumerate() {
                let e = f
                    .apply(&generation, &item.input)
                    .with_context(|| format!("filter {name} on {} item {}", t.name, item.id))?;
                let ok = metric.score(&e, &item.target)?;
                hits[k].push(if ok { 1.0 } else { 0.0 });
                extracted.push(e);
                scores.push(ok);
            }
            rows.push(Row {
                subtask: t.name.clone(),
                id: item.id,
                prompt,
                target: item.target.clone(),
                generation,
                extracted,
                scores,
            });
        }
        let scores = hits
            .iter()
            .map(|xs| {
                let (mean, stderr) = mean_and_stderr(xs);
                Score { n: xs.len(), mean, stderr }
            })
            .collect();
        per_task.push((t.name.clone(), scores));
    }
    let groups = (0..names.len())
        .map(|k| aggregate(&per_task.iter().map(|(_, s): &(String, Vec<Score>)| s[k]).collect::<Vec<_>>()))
        .collect();
    Ok(Report { rows, subtasks: per_task, groups })
}

/// `samples.csv`: `subtask,id,prompt,target,generation`, then per filter `extracted_{filter}` and
/// `exact_match_{filter}` (filter names with `_` for `-`), then `truncated_tokens` (context tokens
/// cut from the left to fit the model).
pub fn samples_csv(variant: Variant, rows: &[Row], truncated: &[usize]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = ["subtask", "id", "prompt", "target", "generation"].map(String::from).into();
    for f in filter_names(variant) {
        let f = f.replace('-', "_");
        header.push(format!("extracted_{f}"));
        header.push(format!("exact_match_{f}"));
    }
    header.push("truncated_tokens".into());
    w.write_record(&header)?;
    for (i, r) in rows.iter().enumerate() {
        let mut rec =
            vec![r.subtask.clone(), r.id.to_string(), r.prompt.clone(), r.target.clone(), r.generation.clone()];
        for (e, s) in r.extracted.iter().zip(&r.scores) {
            rec.push(e.clone());
            rec.push(s.to_string());
        }
        rec.push(truncated.get(i).copied().unwrap_or(0).to_string());
        w.write_record(&rec)?;
    }
    Ok(w.into_inner()?)
}

fn key(filter: &str) -> String {
    filter.replace('-', "_")
}

/// `results.json`: the group values at the top level (see [`Benchmark::metrics`] of each variant),
/// each subtask under `subtasks` with lm-eval's own keys (`exact_match,{filter}`,
/// `exact_match_stderr,{filter}`, `sample_len`).
pub fn results_json(variant: Variant, report: &Report, meta: serde_json::Map<String, Value>) -> Value {
    let names = filter_names(variant);
    let mut out = serde_json::Map::new();
    out.insert("bench".into(), variant.name().into());
    let g = names.iter().position(|f| *f == variant.group_filter()).expect("the group's filter is listed");
    let group = report.groups[g];
    out.insert("exact_match".into(), group.micro.into());
    out.insert("exact_match_stderr".into(), group.stderr.map_or(Value::Null, Value::from));
    out.insert("exact_match_filter".into(), variant.group_filter().into());
    out.insert(
        "exact_match_is".into(),
        format!(
            "lm-eval's {} group value: exact_match of filter {}, mean over all items (subtasks weighted by size)",
            variant.name(),
            variant.group_filter()
        )
        .into(),
    );
    for (f, group) in names.iter().zip(&report.groups) {
        let suffix = if names.len() > 1 { format!("_{}", key(f)) } else { String::new() };
        out.insert(format!("exact_match{suffix}_micro"), group.micro.into());
        out.insert(format!("exact_match{suffix}_macro"), group.macro_.into());
    }
    out.insert("questions".into(), report.rows.len().into());
    out.insert("subtasks_scored".into(), report.subtasks.len().into());
    for (k, v) in meta {
        out.insert(k, v);
    }
    let mut subtasks = serde_json::Map::new();
    for (name, scores) in &report.subtasks {
        let mut s = serde_json::Map::new();
        s.insert("sample_len".into(), scores.first().map_or(0, |s| s.n).into());
        for (f, sc) in names.iter().zip(scores) {
            s.insert(format!("exact_match,{f}"), sc.mean.into());
            s.insert(format!("exact_match_stderr,{f}"), sc.stderr.map_or(Value::Null, Value::from));
        }
        subtasks.insert(name.clone(), Value::Object(s));
    }
    out.insert("subtasks".into(), Value::Object(subtasks));
    Value::Object(out)
}

/// `keel eval --bench bbh_*`.
fn run(variant: Variant, s: &mut Session) -> Result<Outcome> {
    let start = std::time::Instant::now();
    let data = s.data().to_string();
    let shots = s.settings.shots_or(variant.default_shots());
    if variant == Variant::Zeroshot && shots > 0 {
        return Err(bad(format!(
            "--bench bbh_zeroshot is zero-shot (--shots {shots} given)\n  use --bench bbh_fewshot for lm-evaluation-harness's 3 fixed exemplars"
        )));
    }
    let subtasks = load(Path::new(&data), variant, &s.settings.subjects, shots, s.settings.limit)?;
    let max_gen_toks = s.settings.max_gen_toks.unwrap_or(variant.max_gen_toks());
    s.start()?;
    let lm = s.scorer.lm();
    let model = lm.describe();
    let mut truncated = Vec::new();
    let progress = &mut *s.progress;
    let report = evaluate(variant, &subtasks, shots, |prompts| {
        let until: Vec<String> = variant.until().iter().map(|u| u.to_string()).collect();
        let requests: Vec<Until> =
            prompts.iter().map(|p| Until { context: p.clone(), until: until.clone(), max_gen_toks }).collect();
        let out = generate_until(lm, &requests, progress)?;
        truncated = out.iter().map(|g| g.truncated_tokens).collect();
        Ok(out.into_iter().map(|g| g.text).collect())
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    let n = report.rows.len();
    // Where the prompts folder says its text comes from (the lm-eval version), for the record.
    let source = (|| {
        let p = Path::new(&data).join("prompts").join(format!("{}.json", subtasks.first()?.name));
        let v: Value = serde_json::from_str(&crate::files::read_to_string(&p).ok()?).ok()?;
        v.get("source").and_then(Value::as_str).map(str::to_string)
    })()
    .unwrap_or_default();
    let mut meta = serde_json::Map::new();
    meta.insert("model".into(), model.into());
    meta.insert("data".into(), data.clone().into());
    meta.insert("prompts".into(), source.into());
    meta.insert("shots".into(), shots.into());
    meta.insert("max_gen_toks".into(), max_gen_toks.into());
    meta.insert("until".into(), variant.until().into());
    meta.insert("truncated".into(), truncated.iter().filter(|&&t| t > 0).count().into());
    meta.insert("elapsed_s".into(), elapsed.into());
    meta.insert("questions_per_s".into(), (n as f64 / elapsed.max(1e-9)).into());
    meta.insert("keel_version".into(), crate::VERSION.into());
    let results = results_json(variant, &report, meta);
    let names = filter_names(variant);
    let g = names.iter().position(|f| *f == variant.group_filter()).expect("listed");
    let mut summary = format!(
        "{}: exact_match {:.4} ({}, {} subtasks weighted by size; macro {:.4})",
        variant.name(),
        report.groups[g].micro,
        variant.group_filter(),
        report.subtasks.len(),
        report.groups[g].macro_
    );
    for (f, group) in names.iter().zip(&report.groups).filter(|(f, _)| **f != variant.group_filter()) {
        summary.push_str(&format!(", {f} {:.4}", group.micro));
    }
    summary.push_str(&format!(" over {n} questions, {:.1} questions/s; ", n as f64 / elapsed.max(1e-9)));
    let mut outcome = Outcome::new(&results, summary)?;
    outcome.rows = Some(("samples.csv", samples_csv(variant, &report.rows, &truncated)?));
    Ok(outcome)
}

const DATA_HINT: &str = "pass --data DIR holding the subtasks' test items (hf download SaylorTwift/bbh --repo-type dataset --local-dir DIR) and DIR/prompts from scripts/get_bbh.sh DIR";

/// `--bench bbh_zeroshot`.
pub struct BbhZeroshot;

impl Benchmark for BbhZeroshot {
    fn name(&self) -> &'static str {
        "bbh_zeroshot"
    }

    fn about(&self) -> &'static str {
        "BIG-Bench Hard, 27 subtasks, zero-shot generation, as lm-evaluation-harness's bbh_zeroshot"
    }

    fn data(&self) -> Data {
        Data::Required(DATA_HINT)
    }

    fn metrics(&self) -> &'static [&'static str] {
        &[
            "exact_match",
            "exact_match_flexible_extract_macro",
            "exact_match_strict_match_micro",
            "exact_match_strict_match_macro",
        ]
    }

    fn run(&self, s: &mut Session) -> Result<Outcome> {
        run(Variant::Zeroshot, s)
    }
}

/// `bbh_fewshot` (lm-eval's 3 exemplars), else `bbh_fewshot-{n}shot`.
fn fewshot_folder(variant: Variant, s: &Settings) -> String {
    let shots = s.shots_or(variant.default_shots());
    if shots == variant.default_shots() {
        variant.name().to_string()
    } else {
        format!("{}-{shots}shot", variant.name())
    }
}

/// `--bench bbh_fewshot`.
pub struct BbhFewshot;

impl Benchmark for BbhFewshot {
    fn name(&self) -> &'static str {
        "bbh_fewshot"
    }

    fn about(&self) -> &'static str {
        "BIG-Bench Hard, 27 subtasks, 3 fixed exemplars, generation, as lm-evaluation-harness's bbh_fewshot"
    }

    fn data(&self) -> Data {
        Data::Required(DATA_HINT)
    }

    fn metrics(&self) -> &'static [&'static str] {
        &["exact_match", "exact_match_macro"]
    }

    /// `bbh_fewshot`, or `bbh_fewshot-{n}shot` with `--shots n` other than 3.
    fn folder(&self, s: &Settings) -> String {
        fewshot_folder(Variant::Fewshot, s)
    }

    fn run(&self, s: &mut Session) -> Result<Outcome> {
        run(Variant::Fewshot, s)
    }
}

/// `--bench bbh_cot_fewshot` (lm-eval's default `bbh` group).
pub struct BbhCotFewshot;

impl Benchmark for BbhCotFewshot {
    fn name(&self) -> &'static str {
        "bbh_cot_fewshot"
    }

    fn about(&self) -> &'static str {
        "BIG-Bench Hard, 27 subtasks, 3 chain-of-thought exemplars, as lm-evaluation-harness's bbh (bbh_cot_fewshot)"
    }

    fn data(&self) -> Data {
        Data::Required(DATA_HINT)
    }

    fn metrics(&self) -> &'static [&'static str] {
        &["exact_match", "exact_match_macro"]
    }

    /// `bbh_cot_fewshot`, or `bbh_cot_fewshot-{n}shot` with `--shots n` other than 3.
    fn folder(&self, s: &Settings) -> String {
        fewshot_folder(Variant::CotFewshot, s)
    }

    fn run(&self, s: &mut Session) -> Result<Outcome> {
        run(Variant::CotFewshot, s)
    }
}
