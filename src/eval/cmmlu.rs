//! CMMLU (Li et al., `haonan-li/CMMLU`) in its CSV layout, prompted and scored as
//! lm-evaluation-harness's group `cmmlu` (`lm_eval/tasks/cmmlu/_default_template_yaml`, the 67
//! `cmmlu_{subject}.yaml` files and `_cmmlu.yaml`, version 1.0, lm-eval 0.4.x):
//!
//! ```text
//! 以下是关于{中文学科名}的单项选择题，请直接给出正确答案的选项。\n\n      (the subject's description)
//! {shot Question.strip()}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案： {letter}\n\n   (each shot, dev split, file order)
//! {Question.strip()}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案：
//! ```
//!
//! - `doc_to_text: "{{Question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n答案："`: the
//!   question is stripped (Python's `str.strip`), the options are not.
//! - `description` per subject (`_generate_configs.py`): `以下是关于{name}的单项选择题，请直接给出正确答案的选项。\n\n`,
//!   prepended once, before the exemplars.
//! - `doc_to_choice: ["A", "B", "C", "D"]`, each scored as the continuation ` {letter}` (target
//!   delimiter " "); `doc_to_target` is the index of `Answer` among them.
//! - No `num_fewshot`, so 0-shot by default; `--shots N` takes the first N dev rows
//!   (`fewshot_split: dev`, `sampler: first_n`), each followed by ` {letter}\n\n`. The harness
//!   refuses more shots than the dev split holds, and so does keel.
//! - `acc` is the argmax of the log-likelihoods, `acc_norm` the argmax after dividing each by its
//!   choice's length in characters (always 1 for a letter, so the two agree, as they do in the
//!   harness). The group averages subjects weighted by their size (`weight_by_size: true`), which
//!   is the mean over all questions.
//!
//! The hub's `haonan-li/cmmlu` is a loading script over `cmmlu_v1_0_1.zip`, which holds
//! `{dev,test}/{subject}.csv` with the header `,Question,A,B,C,D,Answer` (the first column is an
//! unnamed row index). The script reads each file with pandas, which turns empty cells and words
//! like `NA` or `null` into missing values (printed as `nan`); keel reads the cells as text and
//! refuses such cells rather than prompt differently. (The released files have none, and pandas'
//! reading of their numeric cells prints back the same text.)

use super::bench::{Benchmark, Data, Outcome, Session, Settings};
use super::generative::py_strip;
use super::mmlu::{
    argmax, argmax_per_char, empty, enough_exemplars, fewshot_context, letter_requests, lettered, subject_names,
    Accuracy, LETTERS,
};
use super::LanguageModel;
use crate::InputError;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const PROMPT_VARIANT: &str = "lm-evaluation-harness cmmlu (v1.0): Chinese subject description, '答案：' + ' A'..' D' log-likelihood, shots from dev in file order";

/// The 67 subjects and their Chinese names, as lm-evaluation-harness's
/// `lm_eval/tasks/cmmlu/_generate_configs.py` lists them (`SUBJECTS`).
pub const SUBJECTS: [(&str, &str); 67] = [
    ("agronomy", "农学"),
    ("anatomy", "解剖学"),
    ("ancient_chinese", "古汉语"),
    ("arts", "艺术学"),
    ("astronomy", "天文学"),
    ("business_ethics", "商业伦理"),
    ("chinese_civil_service_exam", "中国公务员考试"),
    ("chinese_driving_rule", "中国驾驶规则"),
    ("chinese_food_culture", "中国饮食文化"),
    ("chinese_foreign_policy", "中国外交政策"),
    ("chinese_history", "中国历史"),
    ("chinese_literature", "中国文学"),
    ("chinese_teacher_qualification", "中国教师资格"),
    ("clinical_knowledge", "临床知识"),
    ("college_actuarial_science", "大学精算学"),
    ("college_education", "大学教育学"),
    ("college_engineering_hydrology", "大学工程水文学"),
    ("college_law", "大学法律"),
    ("college_mathematics", "大学数学"),
    ("college_medical_statistics", "大学医学统计"),
    ("college_medicine", "大学医学"),
    ("computer_science", "计算机科学"),
    ("computer_security", "计算机安全"),
    ("conceptual_physics", "概念物理学"),
    ("construction_project_management", "建设工程管理"),
    ("economics", "经济学"),
    ("education", "教育学"),
    ("electrical_engineering", "电气工程"),
    ("elementary_chinese", "小学语文"),
    ("elementary_commonsense", "小学常识"),
    ("elementary_information_and_technology", "小学信息技术"),
    ("elementary_mathematics", "初等数学"),
    ("ethnology", "民族学"),
    ("food_science", "食品科学"),
    ("genetics", "遗传学"),
    ("global_facts", "全球事实"),
    ("high_school_biology", "高中生物"),
    ("high_school_chemistry", "高中化学"),
    ("high_school_geography", "高中地理"),
    ("high_school_mathematics", "高中数学"),
    ("high_school_physics", "高中物理学"),
    ("high_school_politics", "高中政治"),
    ("human_sexuality", "人类性行为"),
    ("international_law", "国际法学"),
    ("journalism", "新闻学"),
    ("jurisprudence", "法理学"),
    ("legal_and_moral_basis", "法律与道德基础"),
    ("logical", "逻辑学"),
    ("machine_learning", "机器学习"),
    ("management", "管理学"),
    ("marketing", "市场营销"),
    ("marxist_theory", "马克思主义理论"),
    ("modern_chinese", "现代汉语"),
    ("nutrition", "营养学"),
    ("philosophy", "哲学"),
    ("professional_accounting", "专业会计"),
    ("professional_law", "专业法学"),
    ("professional_medicine", "专业医学"),
    ("professional_psychology", "专业心理学"),
    ("public_relations", "公共关系"),
    ("security_study", "安全研究"),
    ("sociology", "社会学"),
    ("sports_science", "体育学"),
    ("traditional_chinese_medicine", "中医中药"),
    ("virology", "病毒学"),
    ("world_history", "世界历史"),
    ("world_religions", "世界宗教"),
];

/// The cells pandas' `read_csv` reads as missing values by default (`na_values`), which the hub's
/// loading script would pass to the prompt as `nan`.
const PANDAS_NA: [&str; 19] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
    "NULL", "NaN", "None", "n/a", "nan", "null",
];

fn bad(msg: String) -> anyhow::Error {
    InputError(msg).into()
}

/// A subject's description (`description` of `cmmlu_{subject}.yaml`), `None` for a name that is
/// not one of the 67.
pub fn description(subject: &str) -> Option<String> {
    SUBJECTS
        .iter()
        .find(|(s, _)| *s == subject)
        .map(|(_, zh)| format!("以下是关于{zh}的单项选择题，请直接给出正确答案的选项。\n\n"))
}

/// A question and a subject's splits are MMLU's: `row` counts from 0 after the header (the
/// file's own index column), `answer` is the index of `Answer` among A-D, and `dev` is read only
/// when shots are wanted.
pub use super::mmlu::{Question, Subject};

/// Reads one `{split}/{subject}.csv`: a header naming `Question`, `A`-`D` and `Answer` (the
/// released files start with an unnamed index column), RFC-4180 quoting, UTF-8.
pub fn read_csv(path: &Path, subject: &str) -> Result<Vec<Question>> {
    let shown = path.display();
    let file = crate::files::open_regular(path)
        .map_err(|e| bad(format!("cannot read {shown}: {e}\n  check the path given to --data")))?;
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(file);
    let header = reader
        .headers()
        .map_err(|e| {
            bad(format!("{shown}: the header is not valid CSV: {e}\n  CMMLU files start with ,Question,A,B,C,D,Answer"))
        })?
        .clone();
    let names: Vec<&str> = header.iter().map(|h| h.trim_start_matches('\u{feff}')).collect();
    let column = |name: &str| -> Result<usize> {
        names.iter().position(|h| *h == name).ok_or_else(|| {
            bad(format!(
                "{shown}: the header has no {name} column (it has {})\n  CMMLU files start with the header ,Question,A,B,C,D,Answer",
                names.join(",")
            ))
        })
    };
    let question_col = column("Question")?;
    let choice_cols = [column("A")?, column("B")?, column("C")?, column("D")?];
    let answer_col = column("Answer")?;
    let mut out = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let n = row + 1;
        let record = record.map_err(|e| {
            bad(format!("{shown}, row {n} after the header: not valid CSV: {e}\n  fix the quoting of that row (fields with commas, quotes or newlines must be in double quotes)"))
        })?;
        if record.len() != names.len() {
            return Err(bad(format!(
                "{shown}, row {n} after the header: {} fields, the header has {}\n  fix that row; fields holding commas must be quoted",
                record.len(),
                names.len()
            )));
        }
        for (col, name) in std::iter::once((question_col, "Question")).chain(choice_cols.iter().copied().zip(LETTERS)) {
            if PANDAS_NA.contains(&&record[col]) {
                return Err(bad(format!(
                    "{shown}, row {n} after the header: {name} is {:?}, which the hub's loader (pandas) reads as a missing value and lm-evaluation-harness prompts as \"nan\"\n  fill in that cell",
                    &record[col]
                )));
            }
        }
        let answer = &record[answer_col];
        let answer = LETTERS.iter().position(|l| *l == answer).ok_or_else(|| {
            bad(format!(
                "{shown}, row {n} after the header: Answer {answer:?} is not one of A, B, C, D\n  fix that row's Answer"
            ))
        })?;
        out.push(Question {
            subject: subject.to_string(),
            row,
            question: record[question_col].to_string(),
            choices: choice_cols.map(|c| record[c].to_string()),
            answer,
        });
    }
    if out.is_empty() {
        return Err(bad(format!("{shown} holds no questions\n  remove the empty file or restore its rows")));
    }
    Ok(out)
}

/// The folder holding `dev/` and `test/`: `data` itself, or its `data/` (the GitHub repository's
/// layout). A `.zip` (the hub's `cmmlu_v1_0_1.zip`) is refused with the command that unpacks it.
pub fn resolve_data(data: &str) -> Result<PathBuf> {
    let p = PathBuf::from(data);
    if p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("zip")) {
        return Err(bad(format!(
            "{data} is a zip archive; keel reads CMMLU's CSV files unpacked\n  unpack it once: unzip {data} -d data/cmmlu, then pass --data data/cmmlu"
        )));
    }
    for dir in [p.clone(), p.join("data")] {
        if dir.join("test").is_dir() {
            return Ok(dir);
        }
    }
    Err(bad(format!(
        "{data} has no test/ folder: CMMLU's layout is DIR/{{dev,test}}/{{subject}}.csv\n  download cmmlu_v1_0_1.zip from the hub's dataset haonan-li/cmmlu (or clone github.com/haonan-li/CMMLU), unzip it and pass --data with the folder holding dev/ and test/"
    )))
}

/// Subjects found in `DIR/test/*.csv` (sorted), or those of `only`, with their dev splits when
/// `shots > 0` (which then must exist).
pub fn load_dir(dir: &Path, only: &[String], shots: usize) -> Result<Vec<Subject>> {
    let test_dir = dir.join("test");
    let names = subject_names(&test_dir, ".csv", "a CMMLU", only)?;
    let mut subjects = Vec::new();
    for name in names {
        let test_path = test_dir.join(format!("{name}.csv"));
        if description(&name).is_none() {
            return Err(bad(format!(
                "{}: {name} is not one of CMMLU's 67 subjects, so lm-evaluation-harness has no task (nor Chinese subject name) for it\n  remove the file, or pick subjects with --subjects",
                test_path.display()
            )));
        }
        let test = read_csv(&test_path, &name)?;
        let dev = if shots > 0 {
            let dev_path = dir.join("dev").join(format!("{name}.csv"));
            if !dev_path.is_file() {
                return Err(bad(format!(
                    "{} does not exist: --shots {shots} takes exemplars from the subject's dev split (lm-evaluation-harness's fewshot_split)\n  restore the dev/ folder, or pass --shots 0",
                    dev_path.display()
                )));
            }
            let dev = read_csv(&dev_path, &name)?;
            enough_exemplars(shots, dev.len(), &dev_path)?;
            Some(dev)
        } else {
            None
        };
        subjects.push(Subject { name, dev, test });
    }
    Ok(subjects)
}

/// `doc_to_text`: `{Question.strip()}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案：`.
pub fn doc_to_text(q: &Question) -> String {
    lettered(py_strip(&q.question), &q.choices, "答案：")
}

/// The full context for `q` after `shots`: the subject's description, each shot followed by
/// ` {letter}\n\n`, then the question.
pub fn prompt(shots: &[Question], q: &Question) -> String {
    let description = description(&q.subject).unwrap_or_default();
    let shots: Vec<(String, &str)> = shots.iter().map(|s| (doc_to_text(s), LETTERS[s.answer])).collect();
    fewshot_context(&description, &shots, &doc_to_text(q))
}

/// The predictions by `acc` (argmax) and `acc_norm` (argmax of each log-likelihood divided by its
/// choice's length in characters, as `process_results` of a `multiple_choice` task divides).
pub fn predict(ll: &[f64]) -> (usize, usize) {
    (argmax(ll), argmax_per_char(ll, &LETTERS))
}

/// One question's outcome: a row of `questions.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct Answered {
    pub id: String,
    pub subject: String,
    pub gold: &'static str,
    pub predicted: &'static str,
    pub predicted_norm: &'static str,
    pub acc: bool,
    pub acc_norm: bool,
    /// Log-likelihoods of ` A` .. ` D`, `;`-separated.
    pub loglikelihoods: String,
    pub truncated_tokens: usize,
    /// The full context the letters were scored after (lm-evaluation-harness's `arguments`).
    pub prompt: String,
}

/// One subject's scores.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SubjectScore {
    pub questions: usize,
    pub acc: f64,
    pub acc_norm: f64,
}

/// Everything `results.json` records.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub bench: &'static str,
    pub model: String,
    pub data: String,
    pub prompt_variant: &'static str,
    pub shots: usize,
    pub questions: usize,
    /// Questions whose prompt was cut from the left to fit the context (the harness's rule).
    pub questions_truncated: usize,
    /// The group's scores: subjects weighted by size, i.e. the mean over all questions.
    pub acc: f64,
    pub acc_norm: f64,
    pub subjects: BTreeMap<String, SubjectScore>,
    pub elapsed_s: f64,
    pub questions_per_s: f64,
    pub keel_version: &'static str,
}

/// Scores the first `limit` test questions of each subject after its first `shots` dev rows;
/// `progress` counts requests (4 per question).
pub fn evaluate(
    lm: &mut dyn LanguageModel,
    subjects: &[Subject],
    shots: usize,
    limit: Option<usize>,
    data: &str,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Results, Vec<Answered>)> {
    let start = std::time::Instant::now();
    let mut items = Vec::new();
    let mut requests = Vec::new();
    for subject in subjects {
        let exemplars = subject.dev.as_deref().map(|d| &d[..shots.min(d.len())]).unwrap_or_default();
        let scored = &subject.test[..limit.unwrap_or(usize::MAX).min(subject.test.len())];
        for q in scored {
            let context = prompt(exemplars, q);
            let (reqs, cut) = letter_requests(lm.tokenizer(), lm.max_len(), &context, LETTERS.len())?;
            requests.extend(reqs);
            items.push((q, context, cut));
        }
    }
    let scores = super::score_all(lm, &requests, progress)?;
    let (mut acc, mut acc_norm) = (empty(), empty());
    let mut per_subject: BTreeMap<String, (Accuracy, Accuracy)> = BTreeMap::new();
    let mut answered = Vec::with_capacity(items.len());
    for ((q, context, cut), s) in items.into_iter().zip(scores.chunks(LETTERS.len())) {
        let ll: Vec<f64> = s.iter().map(|x| x.logprob).collect();
        let (p, pn) = predict(&ll);
        let (ok, ok_norm) = (p == q.answer, pn == q.answer);
        acc.add(ok);
        acc_norm.add(ok_norm);
        let entry = per_subject.entry(q.subject.clone()).or_insert_with(|| (empty(), empty()));
        entry.0.add(ok);
        entry.1.add(ok_norm);
        answered.push(Answered {
            id: format!("{}/{}", q.subject, q.row),
            subject: q.subject.clone(),
            gold: LETTERS[q.answer],
            predicted: LETTERS[p],
            predicted_norm: LETTERS[pn],
            acc: ok,
            acc_norm: ok_norm,
            loglikelihoods: ll.iter().map(|l| format!("{l:.6}")).collect::<Vec<_>>().join(";"),
            truncated_tokens: cut,
            prompt: context,
        });
    }
    let n = answered.len();
    let elapsed = start.elapsed().as_secs_f64();
    let results = Results {
        bench: "cmmlu",
        model: lm.describe(),
        data: data.to_string(),
        prompt_variant: PROMPT_VARIANT,
        shots,
        questions: n,
        questions_truncated: answered.iter().filter(|a| a.truncated_tokens > 0).count(),
        acc: acc.accuracy,
        acc_norm: acc_norm.accuracy,
        subjects: per_subject
            .into_iter()
            .map(|(s, (a, an))| (s, SubjectScore { questions: a.total, acc: a.accuracy, acc_norm: an.accuracy }))
            .collect(),
        elapsed_s: elapsed,
        questions_per_s: n as f64 / elapsed.max(1e-9),
        keel_version: crate::VERSION,
    };
    Ok((results, answered))
}

/// The table printed after a run: overall, and the subjects when there are few.
pub fn table(results: &Results) -> String {
    let mut out = format!("{:<40} {:>9} {:>9} {:>9}\n", "CMMLU", "acc", "acc_norm", "questions");
    let row = |name: &str, acc: f64, norm: f64, n: usize| format!("{name:<40} {acc:>9.4} {norm:>9.4} {n:>9}\n");
    if results.subjects.len() <= 20 {
        for (name, s) in &results.subjects {
            out.push_str(&row(name, s.acc, s.acc_norm, s.questions));
        }
    }
    out.push_str(&row("overall (micro)", results.acc, results.acc_norm, results.questions));
    out
}

/// `--bench cmmlu`.
pub struct Cmmlu;

impl Benchmark for Cmmlu {
    fn name(&self) -> &'static str {
        "cmmlu"
    }

    fn about(&self) -> &'static str {
        "CMMLU (Chinese, 67 subjects) in its CSV layout, scored as lm-evaluation-harness's cmmlu group"
    }

    fn data(&self) -> Data {
        Data::Required("pass --data DIR holding dev/ and test/ (cmmlu_v1_0_1.zip from haonan-li/cmmlu, unzipped)")
    }

    fn takes_shots(&self) -> bool {
        true
    }

    fn metrics(&self) -> &'static [&'static str] {
        &["acc", "acc_norm"]
    }

    /// `cmmlu-{shots}shot`.
    fn folder(&self, s: &Settings) -> String {
        format!("cmmlu-{}shot", s.shots_or(0))
    }

    fn run(&self, s: &mut Session) -> Result<Outcome> {
        let shots = s.settings.shots_or(0);
        let data = s.data().to_string();
        let dir = resolve_data(&data)?;
        let subjects = load_dir(&dir, &s.settings.subjects, shots)?;
        s.start()?;
        let (results, answered) = evaluate(s.scorer.lm(), &subjects, shots, s.settings.limit, &data, s.progress)?;
        let summary = format!(
            "{}{} questions in {} subjects, {} shots ({} truncated), {:.1} questions/s; ",
            table(&results),
            results.questions,
            results.subjects.len(),
            results.shots,
            results.questions_truncated,
            results.questions_per_s
        );
        Outcome::new(&results, summary)?.rows("questions.csv", &answered)
    }
}
