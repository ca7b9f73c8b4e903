//! `keel eval --bench mmlu_pro` and `--bench cmmlu`: prompts pinned byte for byte against
//! lm-evaluation-harness's task files (`leaderboard/mmlu_pro/{mmlu_pro.yaml,utils.py}`,
//! `cmmlu/_default_template_yaml` and the per-subject YAMLs, 0.4.x), the scoring rules on
//! hand-made log-likelihoods, the hub's file layouts (parquet written here, CSV), every malformed
//! input, and the `keel` binary end to end on a tiny model checked against direct forward passes.

mod common;

use common::eval::{input_error, keel, read_json, read_rows, FakeLm};
use common::tiny_run;

use candle_core::{Device, Tensor};
use keel::eval::{self, cmmlu, mmlu_pro};
use keel::model::Model;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::{SerializedFileWriter, SerializedRowGroupWriter};
use parquet::schema::parser::parse_message_type;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// MMLU-Pro fixtures: parquet as the hub stores TIGER-Lab/MMLU-Pro (data/{split}-00000-of-00001.parquet)
// ---------------------------------------------------------------------------------------------

/// TIGER-Lab/MMLU-Pro's columns as pyarrow writes them (`options` a 3-level list of strings).
const PRO_SCHEMA: &str = "message schema {
    optional int64 question_id;
    optional binary question (STRING);
    optional group options (LIST) {
        repeated group list {
            optional binary element (STRING);
        }
    }
    optional binary answer (STRING);
    optional int64 answer_index;
    optional binary cot_content (STRING);
    optional binary category (STRING);
    optional binary src (STRING);
}";

struct ProRow<'a> {
    id: i64,
    question: &'a str,
    options: Option<Vec<&'a str>>,
    answer: Option<&'a str>,
    category: &'a str,
}

fn row<'a>(id: i64, category: &'a str, question: &'a str, options: &[&'a str], answer: &'a str) -> ProRow<'a> {
    ProRow { id, question, options: Some(options.to_vec()), answer: Some(answer), category }
}

fn string_column(rg: &mut SerializedRowGroupWriter<'_, File>, values: &[Option<&str>]) {
    let mut col = rg.next_column().unwrap().unwrap();
    let present: Vec<ByteArray> = values.iter().flatten().map(|v| ByteArray::from(*v)).collect();
    let def: Vec<i16> = values.iter().map(|v| v.is_some() as i16).collect();
    col.typed::<ByteArrayType>().write_batch(&present, Some(&def), None).unwrap();
    col.close().unwrap();
}

fn int_column(rg: &mut SerializedRowGroupWriter<'_, File>, values: &[i64]) {
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<Int64Type>().write_batch(values, Some(&vec![1; values.len()]), None).unwrap();
    col.close().unwrap();
}

/// Writes `rows` as one snappy-compressed row group with the hub's schema.
fn write_pro_parquet(path: &Path, rows: &[ProRow]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let schema = Arc::new(parse_message_type(PRO_SCHEMA).unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let mut w = SerializedFileWriter::new(File::create(path).unwrap(), schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    int_column(&mut rg, &rows.iter().map(|r| r.id).collect::<Vec<_>>());
    string_column(&mut rg, &rows.iter().map(|r| Some(r.question)).collect::<Vec<_>>());
    // options.list.element: definition 3 for an element, 1 for an empty list, 0 for a null list;
    // repetition 0 starts a row's list.
    let (mut values, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
    for r in rows {
        match &r.options {
            None => {
                def.push(0);
                rep.push(0);
            }
            Some(o) if o.is_empty() => {
                def.push(1);
                rep.push(0);
            }
            Some(o) => {
                for (j, x) in o.iter().enumerate() {
                    values.push(ByteArray::from(*x));
                    def.push(3);
                    rep.push((j > 0) as i16);
                }
            }
        }
    }
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<ByteArrayType>().write_batch(&values, Some(&def), Some(&rep)).unwrap();
    col.close().unwrap();
    string_column(&mut rg, &rows.iter().map(|r| r.answer).collect::<Vec<_>>());
    let index = |r: &ProRow| r.answer.and_then(|a| a.bytes().next()).map(|b| (b - b'A') as i64).unwrap_or(-1);
    int_column(&mut rg, &rows.iter().map(index).collect::<Vec<_>>());
    string_column(&mut rg, &rows.iter().map(|_| Some("")).collect::<Vec<_>>());
    string_column(&mut rg, &rows.iter().map(|r| Some(r.category)).collect::<Vec<_>>());
    string_column(&mut rg, &rows.iter().map(|_| Some("ori_mmlu-test")).collect::<Vec<_>>());
    rg.close().unwrap();
    w.close().unwrap();
}

fn pro_test_rows() -> Vec<ProRow<'static>> {
    vec![
        row(101, "math", "What is 2 + 3?", &["4", "5", "6", "7", "8", "9", "10", "11", "12", "13"], "B"),
        // The question keeps its trailing newline: utils.doc_to_text does not strip.
        row(102, "computer science", "Which structure is LIFO?\n", &["stack", "queue", "heap"], "A"),
        row(103, "math", "Pick the prime.", &["4", "N/A", "7", "9"], "C"),
        row(104, "history", "Who wrote the Analects, 论语?", &["孔子", "老子", "孟子", "庄子"], "A"),
    ]
}

fn pro_validation_rows() -> Vec<ProRow<'static>> {
    vec![
        row(1, "biology", "Q1?", &["x", "y", "z"], "C"),
        row(2, "law", "Q2?", &["p", "q", "r", "s"], "A"),
        row(3, "math", "Q3?", &["1", "2"], "B"),
        row(4, "math", "Q4?", &["u", "v", "w"], "A"),
        row(5, "other", "Q5?", &["k", "l", "m", "n", "o"], "E"),
    ]
}

/// The hub's folder: `data/test-00000-of-00001.parquet` and `data/validation-00000-of-00001.parquet`.
fn pro_folder(dir: &Path) -> PathBuf {
    write_pro_parquet(&dir.join("data/test-00000-of-00001.parquet"), &pro_test_rows());
    write_pro_parquet(&dir.join("data/validation-00000-of-00001.parquet"), &pro_validation_rows());
    dir.to_path_buf()
}

fn q(id: &str, category: &str, question: &str, options: &[&str], answer: &str) -> mmlu_pro::Question {
    mmlu_pro::Question {
        id: id.into(),
        category: category.into(),
        question: question.into(),
        options: options.iter().map(|o| o.to_string()).collect(),
        answer: answer.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// MMLU-Pro
// ---------------------------------------------------------------------------------------------

/// utils.py:
/// ```python
/// doc_to_text = f"{doc['question']}\n"
/// for i in range(len(doc["options"])):
///     doc_to_text += f"{string.ascii_uppercase[i]}. {doc['options'][i]}\n"
/// doc_to_text += "Answer:"
/// ```
/// and the few-shot context of `fewshot_context`/`build_qa_turn` (no description; each shot is
/// its text, target_delimiter " ", its `answer`, fewshot_delimiter "\n\n").
#[test]
fn mmlu_pro_prompts_match_the_harness_byte_for_byte() {
    let ten = q("1", "math", "What is 2 + 3?", &["4", "5", "6", "7", "8", "9", "10", "11", "12", "13"], "B");
    assert_eq!(
        mmlu_pro::doc_to_text(&ten),
        "What is 2 + 3?\nA. 4\nB. 5\nC. 6\nD. 7\nE. 8\nF. 9\nG. 10\nH. 11\nI. 12\nJ. 13\nAnswer:"
    );
    // Three options, three letters; the question's surrounding whitespace is kept (no strip).
    let three = q("2", "cs", "  Which structure is LIFO?\n", &["stack", " queue ", "heap"], "A");
    assert_eq!(mmlu_pro::doc_to_text(&three), "  Which structure is LIFO?\n\nA. stack\nB.  queue \nC. heap\nAnswer:");
    // An "N/A" option is an option like any other (the harness does not drop it).
    let na = q("3", "math", "Pick the prime.", &["4", "N/A", "7", "9"], "C");
    assert_eq!(mmlu_pro::doc_to_text(&na), "Pick the prime.\nA. 4\nB. N/A\nC. 7\nD. 9\nAnswer:");
    assert_eq!(mmlu_pro::prompt(&[], &na), mmlu_pro::doc_to_text(&na), "0-shot: no description, no header");
    let shots = [q("s1", "biology", "Q1?", &["x", "y", "z"], "C"), q("s2", "law", "Q2?", &["p", "q", "r", "s"], "A")];
    assert_eq!(
        mmlu_pro::prompt(&shots, &three),
        "Q1?\nA. x\nB. y\nC. z\nAnswer: C\n\n\
         Q2?\nA. p\nB. q\nC. r\nD. s\nAnswer: A\n\n  \
         Which structure is LIFO?\n\nA. stack\nB.  queue \nC. heap\nAnswer:"
    );
    // Requests: one per option, ` {letter}` after the context.
    let mut lm = FakeLm::new(100_000);
    let (_, answered) =
        mmlu_pro::evaluate(&mut lm, &[ten.clone(), three.clone()], &shots, "x", &mut |_, _| {}).unwrap();
    assert_eq!(lm.seen.len(), 10 + 3);
    let context = mmlu_pro::prompt(&shots, &three);
    for (r, letter) in lm.seen[10..].iter().zip(["A", "B", "C"]) {
        assert_eq!(r.tokens, format!("{context} {letter}").bytes().map(u32::from).collect::<Vec<_>>());
        assert_eq!(r.cont_start, context.len());
    }
    assert_eq!(answered[1].prompt, context);
    assert_eq!(answered[1].loglikelihoods, "-0.970000;-0.980000;-0.990000");
    assert_eq!(answered[0].loglikelihoods.split(';').count(), 10);
}

/// `acc` is the argmax of the log-likelihoods (numpy's, the first on ties) against the `answer`
/// letter; a letter that is not among the row's choices is scored wrong (the harness's gold -100);
/// the overall mean is over questions, and categories are reported alongside.
#[test]
fn mmlu_pro_scoring_rules_on_hand_made_loglikelihoods() {
    let qs = [
        q("1", "math", "a", &["1", "2", "3"], "B"),
        q("2", "math", "b", &["1", "2", "3"], "A"),
        q("3", "law", "c", &["1", "2", "3", "4"], "D"),
        q("4", "law", "d", &["1", "2"], "C"), // C is not one of A, B
    ];
    let lls = vec![
        vec![-2.0, -1.0, -1.0],       // tie between B and C: B, the first, is right
        vec![-1.0, -1.0, -3.0],       // tie between A and B: A
        vec![-4.0, -3.0, -2.0, -2.5], // C, wrong
        vec![-9.0, -0.1],             // B; gold is not a choice, wrong whatever is predicted
    ];
    let (outcomes, acc, categories) = mmlu_pro::score(&qs, &lls);
    assert_eq!(outcomes, [(1, true), (0, true), (2, false), (1, false)]);
    assert_eq!(acc, 0.5);
    assert_eq!(categories["math"], mmlu_pro::CategoryScore { questions: 2, acc: 1.0 });
    assert_eq!(categories["law"], mmlu_pro::CategoryScore { questions: 2, acc: 0.0 });
    assert_eq!(qs[3].gold(), None);
    assert_eq!(qs[2].gold(), Some(3));
    // Micro, not macro: three math questions right and one law question wrong is 0.75.
    let qs = [qs[0].clone(), qs[0].clone(), qs[0].clone(), qs[2].clone()];
    let lls = vec![vec![0.0, 1.0, 0.0]; 3].into_iter().chain([vec![0.0, 0.0, 0.0, -1.0]]).collect::<Vec<_>>();
    assert_eq!(mmlu_pro::score(&qs, &lls).1, 0.75);
}

#[test]
fn mmlu_pro_reads_the_hubs_parquet_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = pro_folder(tmp.path());
    let data = dir.display().to_string();
    let (test, validation) = mmlu_pro::locate(&data, 5).unwrap();
    assert_eq!(test, dir.join("data/test-00000-of-00001.parquet"));
    assert_eq!(validation, Some(dir.join("data/validation-00000-of-00001.parquet")));
    assert_eq!(mmlu_pro::locate(&data, 0).unwrap().1, None, "0-shot needs no validation split");
    let rows = mmlu_pro::read_split(&test).unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows[0],
        q("101", "math", "What is 2 + 3?", &["4", "5", "6", "7", "8", "9", "10", "11", "12", "13"], "B")
    );
    assert_eq!(rows[1].question, "Which structure is LIFO?\n");
    assert_eq!(rows[3].options, ["孔子", "老子", "孟子", "庄子"]);
    // A split file as --data: the validation split is found beside it.
    let (t, v) = mmlu_pro::locate(&test.display().to_string(), 2).unwrap();
    assert_eq!((t, v), (test.clone(), validation.clone()));
    // --subjects picks categories, with underscores for spaces.
    let picked = mmlu_pro::select(rows.clone(), &["computer_science".into(), "history".into()], &test).unwrap();
    assert_eq!(picked.iter().map(|q| q.id.as_str()).collect::<Vec<_>>(), ["102", "104"]);
    // The same rows as JSONL (a local copy) read the same.
    let jsonl = tmp.path().join("copy/test.jsonl");
    std::fs::create_dir_all(jsonl.parent().unwrap()).unwrap();
    let lines: Vec<String> = rows
        .iter()
        .map(|r| {
            serde_json::json!({"question_id": r.id.parse::<i64>().unwrap(), "question": r.question, "options": r.options, "answer": r.answer, "category": r.category})
                .to_string()
        })
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    assert_eq!(mmlu_pro::read_split(&jsonl).unwrap(), rows);
}

#[test]
fn mmlu_pro_refuses_malformed_inputs_naming_file_and_row() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = |name: &str, rows: Vec<ProRow>| -> anyhow::Error {
        let p = tmp.path().join(name);
        write_pro_parquet(&p, &rows);
        mmlu_pro::read_split(&p).unwrap_err()
    };
    let mut no_options = pro_test_rows();
    no_options[2].options = None;
    input_error(bad("a/test.parquet", no_options), &["a/test.parquet, row 3", "\"options\""]);
    let mut empty_options = pro_test_rows();
    empty_options[0].options = Some(vec![]);
    input_error(bad("b/test.parquet", empty_options), &["b/test.parquet, row 1", "1 to 26 strings"]);
    let mut no_answer = pro_test_rows();
    no_answer[1].answer = None;
    input_error(bad("c/test.parquet", no_answer), &["c/test.parquet, row 2", "no \"answer\" string"]);
    input_error(bad("d/test.parquet", vec![]), &["d/test.parquet holds no questions"]);
    // JSONL: options of the wrong type, no category, a line that is not JSON.
    let jsonl = |name: &str, text: &str| -> anyhow::Error {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        mmlu_pro::read_split(&p).unwrap_err()
    };
    let good = r#"{"question": "q", "options": ["a", "b"], "answer": "A", "category": "math"}"#;
    input_error(
        jsonl(
            "e.jsonl",
            &format!("{good}\n{}", r#"{"question": "q", "options": "a, b", "answer": "A", "category": "m"}"#),
        ),
        &["e.jsonl, row 2", "\"options\""],
    );
    input_error(
        jsonl("f.jsonl", &format!("{good}\n\n{}", r#"{"question": "q", "options": ["a"], "answer": "A"}"#)),
        &["f.jsonl, row 3", "no \"category\" string"],
    );
    input_error(jsonl("g.jsonl", "{not json"), &["g.jsonl, line 1", "not JSON"]);
    let too_many: Vec<String> = (0..27).map(|i| i.to_string()).collect();
    let line = serde_json::json!({"question": "q", "options": too_many, "answer": "A", "category": "m"}).to_string();
    input_error(jsonl("h.jsonl", &line), &["h.jsonl, row 1", "1 to 26"]);
    // Splits: no test split; shots without a validation split; more shots than it holds.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    input_error(mmlu_pro::locate(&empty.display().to_string(), 0).unwrap_err(), &["holds no test split"]);
    let only_test = tmp.path().join("only_test");
    write_pro_parquet(&only_test.join("data/test-00000-of-00001.parquet"), &pro_test_rows());
    let e = mmlu_pro::locate(&only_test.display().to_string(), 5).unwrap_err();
    input_error(e, &["holds no validation split", "--shots 0"]);
    let dir = pro_folder(&tmp.path().join("full"));
    let (_, v) = mmlu_pro::locate(&dir.display().to_string(), 6).unwrap();
    let v = v.unwrap();
    input_error(
        mmlu_pro::first_n(mmlu_pro::read_split(&v).unwrap(), 6, &v).unwrap_err(),
        &["holds only 5 rows", "--shots 5"],
    );
    // An unknown category.
    let rows = mmlu_pro::read_split(&dir.join("data/test-00000-of-00001.parquet")).unwrap();
    let e = mmlu_pro::select(rows, &["chemistry".into()], Path::new("t.parquet")).unwrap_err();
    input_error(e, &["--subjects chemistry", "categories found: computer science, history, math"]);
}

// ---------------------------------------------------------------------------------------------
// CMMLU fixtures: the CSV layout of cmmlu_v1_0_1.zip (DIR/{dev,test}/{subject}.csv)
// ---------------------------------------------------------------------------------------------

const AGRONOMY_TEST: &str = ",Question,A,B,C,D,Answer\n\
0,\"  水稻属于哪一类作物？\u{3000}\",粮食作物,经济作物,\"饲料作物, 绿肥\", 蔬菜 ,A\n\
1,小麦的原产地是？,西亚,东亚,南美,非洲,B\n\
2,\"下列哪项是氮肥？\n（单选）\",尿素,过磷酸钙,氯化钾,石灰,A\n";

const AGRONOMY_DEV: &str = ",Question,A,B,C,D,Answer\n\
0,玉米是什么科植物？,禾本科,豆科,茄科,十字花科,A\n\
1,大豆的主要营养成分是？,淀粉,蛋白质,维生素,纤维素,B\n";

/// With a UTF-8 byte-order mark before the header.
const WORLD_HISTORY_TEST: &str =
    "\u{feff},Question,A,B,C,D,Answer\n0,第一次世界大战开始于哪一年？,1914,1918,1939,1945,C\n";

const WORLD_HISTORY_DEV: &str = ",Question,A,B,C,D,Answer\n0,罗马帝国的首都是？,罗马,雅典,开罗,巴黎,A\n1,工业革命始于哪个国家？,法国,英国,德国,美国,B\n";

fn cmmlu_folder(dir: &Path) -> PathBuf {
    for (path, text) in [
        ("test/agronomy.csv", AGRONOMY_TEST),
        ("dev/agronomy.csv", AGRONOMY_DEV),
        ("test/world_history.csv", WORLD_HISTORY_TEST),
        ("dev/world_history.csv", WORLD_HISTORY_DEV),
    ] {
        std::fs::create_dir_all(dir.join(path).parent().unwrap()).unwrap();
        std::fs::write(dir.join(path), text).unwrap();
    }
    dir.to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// CMMLU
// ---------------------------------------------------------------------------------------------

/// `_default_template_yaml`:
/// `doc_to_text: "{{Question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n答案："`,
/// `doc_to_choice: ["A", "B", "C", "D"]`; `cmmlu_agronomy.yaml`:
/// `"description": "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n"`; exemplars
/// (`fewshot_split: dev`, `sampler: first_n`) end in target_delimiter " ", the letter and
/// fewshot_delimiter "\n\n".
#[test]
fn cmmlu_prompts_match_the_harness_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = cmmlu_folder(tmp.path());
    let subjects = cmmlu::load_dir(&dir, &[], 2).unwrap();
    let agro = &subjects[0];
    assert_eq!(agro.name, "agronomy");
    // Question.strip() removes the spaces and the ideographic space (U+3000, which Python's
    // str.isspace counts); the options keep theirs.
    assert_eq!(
        cmmlu::prompt(&[], &agro.test[0]),
        "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n\
         水稻属于哪一类作物？\nA. 粮食作物\nB. 经济作物\nC. 饲料作物, 绿肥\nD.  蔬菜 \n答案："
    );
    let dev = agro.dev.as_ref().unwrap();
    assert_eq!(
        cmmlu::prompt(&dev[..2], &agro.test[1]),
        "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n\
         玉米是什么科植物？\nA. 禾本科\nB. 豆科\nC. 茄科\nD. 十字花科\n答案： A\n\n\
         大豆的主要营养成分是？\nA. 淀粉\nB. 蛋白质\nC. 维生素\nD. 纤维素\n答案： B\n\n\
         小麦的原产地是？\nA. 西亚\nB. 东亚\nC. 南美\nD. 非洲\n答案："
    );
    assert_eq!(
        cmmlu::doc_to_text(&agro.test[2]),
        "下列哪项是氮肥？\n（单选）\nA. 尿素\nB. 过磷酸钙\nC. 氯化钾\nD. 石灰\n答案："
    );
    // The 67 subjects and their descriptions, from _generate_configs.py.
    assert_eq!(cmmlu::SUBJECTS.len(), 67);
    let mut names: Vec<&str> = cmmlu::SUBJECTS.iter().map(|s| s.0).collect();
    names.dedup();
    assert_eq!(names.len(), 67);
    assert_eq!(
        cmmlu::description("college_engineering_hydrology").unwrap(),
        "以下是关于大学工程水文学的单项选择题，请直接给出正确答案的选项。\n\n"
    );
    assert_eq!(
        cmmlu::description("world_religions").unwrap(),
        "以下是关于世界宗教的单项选择题，请直接给出正确答案的选项。\n\n"
    );
    assert_eq!(cmmlu::description("mmlu"), None);
    // Requests: ` A`..` D` after the context, one per letter.
    let mut lm = FakeLm::new(100_000);
    let (_, answered) = cmmlu::evaluate(&mut lm, &subjects[..1], 2, Some(2), "x", &mut |_, _| {}).unwrap();
    assert_eq!(lm.seen.len(), 2 * 4);
    let context = cmmlu::prompt(&dev[..2], &agro.test[1]);
    for (r, letter) in lm.seen[4..].iter().zip(["A", "B", "C", "D"]) {
        assert_eq!(r.tokens, format!("{context} {letter}").bytes().map(u32::from).collect::<Vec<_>>());
        assert_eq!(r.cont_start, context.len());
    }
    assert_eq!(answered[1].prompt, context);
    assert_eq!(answered[1].id, "agronomy/1");
}

/// `acc` and `acc_norm` are argmaxes (first on ties) of the log-likelihoods, `acc_norm` after
/// dividing by the choice's length in characters, which is 1 for every letter, so they agree; the
/// group mean weights subjects by size (micro), not equally (macro).
#[test]
fn cmmlu_scoring_rules_and_the_size_weighted_group() {
    assert_eq!(cmmlu::predict(&[-2.0, -1.0, -1.0, -3.0]), (1, 1));
    assert_eq!(cmmlu::predict(&[-0.5, -0.5, -0.5, -0.5]), (0, 0));
    assert_eq!(cmmlu::predict(&[-3.0, -2.0, -4.0, -1.5]), (3, 3));
    let tmp = tempfile::tempdir().unwrap();
    let dir = cmmlu_folder(tmp.path());
    let subjects = cmmlu::load_dir(&dir, &[], 0).unwrap();
    assert!(subjects.iter().all(|s| s.dev.is_none()), "0-shot reads no dev split");
    // The fake model always prefers ` A`: agronomy's answers are A, B, A (2 of 3), world history's C.
    let mut lm = FakeLm::new(100_000);
    let (res, answered) = cmmlu::evaluate(&mut lm, &subjects, 0, None, "x", &mut |_, _| {}).unwrap();
    assert_eq!(res.questions, 4);
    assert_eq!((res.acc, res.acc_norm), (0.5, 0.5), "2 of 4 questions; the macro mean would be 1/3");
    assert_eq!(res.subjects["agronomy"], cmmlu::SubjectScore { questions: 3, acc: 2.0 / 3.0, acc_norm: 2.0 / 3.0 });
    assert_eq!(res.subjects["world_history"].acc, 0.0);
    assert_eq!(
        answered.iter().map(|a| (a.gold, a.predicted, a.acc)).collect::<Vec<_>>(),
        [("A", "A", true), ("B", "A", false), ("A", "A", true), ("C", "A", false)]
    );
    assert_eq!(answered[0].loglikelihoods, "-0.970000;-0.980000;-0.990000;-1.000000");
    // --limit takes the first N questions of each subject.
    let (res, _) = cmmlu::evaluate(&mut lm, &subjects, 0, Some(1), "x", &mut |_, _| {}).unwrap();
    assert_eq!((res.questions, res.subjects["agronomy"].questions), (2, 1));
}

#[test]
fn cmmlu_reads_the_csv_layout() {
    let tmp = tempfile::tempdir().unwrap();
    // The GitHub repository's layout (data/{dev,test}) resolves to its data/ folder.
    let repo = tmp.path().join("CMMLU");
    cmmlu_folder(&repo.join("data"));
    let dir = cmmlu::resolve_data(&repo.display().to_string()).unwrap();
    assert_eq!(dir, repo.join("data"));
    let subjects = cmmlu::load_dir(&dir, &["world_history".into()], 2).unwrap();
    assert_eq!(subjects.len(), 1);
    let wh = &subjects[0];
    assert_eq!(wh.test[0].question, "第一次世界大战开始于哪一年？", "the byte-order mark is not part of the header");
    assert_eq!(wh.test[0].choices, ["1914", "1918", "1939", "1945"].map(String::from));
    assert_eq!(wh.test[0].answer, 2);
    assert_eq!(wh.dev.as_ref().unwrap().len(), 2);
    let agro = cmmlu::read_csv(&dir.join("test/agronomy.csv"), "agronomy").unwrap();
    assert_eq!(agro[0].question, "  水稻属于哪一类作物？\u{3000}", "read verbatim, stripped when prompted");
    assert_eq!(agro[0].choices[2], "饲料作物, 绿肥");
    assert_eq!(agro[0].choices[3], " 蔬菜 ");
    assert_eq!(agro[2].question, "下列哪项是氮肥？\n（单选）");
    assert_eq!(agro.iter().map(|q| q.answer).collect::<Vec<_>>(), [0, 1, 0]);
}

#[test]
fn cmmlu_refuses_malformed_inputs_naming_file_and_row() {
    let tmp = tempfile::tempdir().unwrap();
    let read = |name: &str, text: &str| -> anyhow::Error {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        cmmlu::read_csv(&p, "agronomy").unwrap_err()
    };
    input_error(read("a.csv", ",Question,A,B,C,Answer\n0,q,a,b,c,A\n"), &["a.csv", "no D column"]);
    input_error(
        read("b.csv", ",Question,A,B,C,D,Answer\n0,q,a,b,c,d,A\n1,q,a,b,c,A\n"),
        &["b.csv, row 2 after the header", "6 fields, the header has 7"],
    );
    input_error(
        read("c.csv", ",Question,A,B,C,D,Answer\n0,q,a,b,c,d,A\n1,q,a,b,c,d,E\n"),
        &["c.csv, row 2 after the header", "Answer \"E\" is not one of A, B, C, D"],
    );
    input_error(
        read("d.csv", ",Question,A,B,C,D,Answer\n0,q,a,,c,d,A\n"),
        &["d.csv, row 1 after the header", "B is \"\"", "nan"],
    );
    input_error(read("e.csv", ",Question,A,B,C,D,Answer\n0,q,a,b,N/A,d,A\n"), &["e.csv, row 1", "C is \"N/A\""]);
    input_error(read("f.csv", ",Question,A,B,C,D,Answer\n"), &["f.csv holds no questions"]);
    input_error(read("g.csv", ",Question,A,B,C,D,Answer\n0,\"q,a,b,c,d,A\n"), &["g.csv"]);
    // Layouts: a zip, a folder without test/, an unknown subject, an unknown --subjects name.
    let zip = tmp.path().join("cmmlu_v1_0_1.zip");
    std::fs::write(&zip, b"PK").unwrap();
    input_error(cmmlu::resolve_data(&zip.display().to_string()).unwrap_err(), &["zip archive", "unzip"]);
    input_error(cmmlu::resolve_data(&tmp.path().display().to_string()).unwrap_err(), &["has no test/ folder"]);
    let dir = cmmlu_folder(&tmp.path().join("d1"));
    std::fs::write(dir.join("test/bmw.csv"), AGRONOMY_TEST).unwrap();
    input_error(cmmlu::load_dir(&dir, &[], 0).unwrap_err(), &["bmw.csv", "not one of CMMLU's 67 subjects"]);
    assert_eq!(cmmlu::load_dir(&dir, &["agronomy".into()], 0).unwrap().len(), 1, "unselected files are not read");
    input_error(
        cmmlu::load_dir(&dir, &["arts".into()], 0).unwrap_err(),
        &["--subjects arts", "agronomy, bmw, world_history"],
    );
    // Shots: more than the dev split holds (first_n refuses), or no dev split at all.
    let e = cmmlu::load_dir(&dir, &["agronomy".into()], 3).unwrap_err();
    input_error(e, &["--shots 3", "dev/agronomy.csv holds only 2 rows", "--shots 2 or fewer"]);
    std::fs::remove_file(dir.join("dev/world_history.csv")).unwrap();
    let e = cmmlu::load_dir(&dir, &["world_history".into()], 1).unwrap_err();
    input_error(e, &["dev/world_history.csv does not exist", "--shots 0"]);
    assert!(cmmlu::load_dir(&dir, &["world_history".into()], 0).is_ok(), "0-shot needs no dev split");
}

// ---------------------------------------------------------------------------------------------
// End to end through the binary on a tiny model
// ---------------------------------------------------------------------------------------------

/// log p(continuation) of `context + continuation` (bytes) under lm-evaluation-harness's left
/// truncation, from one unpadded forward pass in f64 on the host.
fn direct_logprob(model: &Model, context: &str, continuation: &str, max_len: usize) -> f64 {
    let whole: Vec<u32> = format!("{context}{continuation}").bytes().map(u32::from).collect();
    let tokens = whole[whole.len() - whole.len().min(max_len + 1)..].to_vec();
    let cont_start = tokens.len() - continuation.len();
    let n = tokens.len() - 1;
    let input = Tensor::from_vec(tokens[..n].to_vec(), (1, n), &Device::Cpu).unwrap();
    let logits: Vec<Vec<f32>> = model.forward(&input).unwrap().to_vec2().unwrap();
    let mut total = 0.0;
    for (p, logits) in logits.iter().enumerate().take(n).skip(cont_start - 1) {
        let row: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        total += row[tokens[p + 1] as usize] - lse;
    }
    total
}

/// Each CSV row's log-likelihoods are the model's on its `prompt` column followed by ` A`, ` B`,
/// ... (truncated from the left as the harness truncates), its prediction their argmax.
fn check_rows_against_the_model(rows: &[HashMap<String, String>], model: &Model, max_len: usize) {
    for row in rows {
        let lls: Vec<f64> = row["loglikelihoods"].split(';').map(|x| x.parse().unwrap()).collect();
        for (i, ll) in lls.iter().enumerate() {
            let letter = eval::mmlu::OPTION_LETTERS[i];
            let want = direct_logprob(model, &row["prompt"], &format!(" {letter}"), max_len);
            assert!((ll - want).abs() < 1e-4, "{} {letter}: keel {ll}, direct {want}", row["id"]);
        }
        let best = eval::mmlu::argmax(&lls);
        assert_eq!(row["predicted"], eval::mmlu::OPTION_LETTERS[best], "{}", row["id"]);
        assert_eq!(row["acc"] == "true", row["predicted"] == row["gold"], "{}", row["id"]);
    }
}

#[test]
fn mmlu_pro_end_to_end_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let max_len = 128;
    let run = tiny_run(&tmp.path().join("run"), "keel", max_len);
    let data = pro_folder(&tmp.path().join("mmlu-pro"));
    let out = keel()
        .args(["eval", "--bench", "mmlu_pro", "--quiet", "--data"])
        .arg(&data)
        .arg("--run")
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let folder = run.join("eval/mmlu_pro-5shot");
    let res = read_json(&folder.join("results.json"));
    assert_eq!((res["shots"].as_u64(), res["questions"].as_u64()), (Some(5), Some(4)), "5 shots by default");
    assert_eq!(res["task"], "leaderboard_mmlu_pro");
    let (header, rows) = read_rows(&folder.join("questions.csv"));
    assert_eq!(header, ["id", "category", "gold", "predicted", "acc", "loglikelihoods", "truncated_tokens", "prompt"]);
    assert_eq!(rows.iter().map(|r| r["id"].as_str()).collect::<Vec<_>>(), ["101", "102", "103", "104"]);
    assert_eq!(rows.iter().map(|r| r["loglikelihoods"].split(';').count()).collect::<Vec<_>>(), [10, 3, 4, 4]);
    let shots: Vec<mmlu_pro::Question> =
        mmlu_pro::read_split(&data.join("data/validation-00000-of-00001.parquet")).unwrap();
    let tests = mmlu_pro::read_split(&data.join("data/test-00000-of-00001.parquet")).unwrap();
    for (row, q) in rows.iter().zip(&tests) {
        assert_eq!(row["prompt"], mmlu_pro::prompt(&shots, q));
    }
    assert!(rows[0]["prompt"].starts_with("Q1?\nA. x\nB. y\nC. z\nAnswer: C\n\nQ2?"));
    let truncated = rows.iter().filter(|r| r["truncated_tokens"] != "0").count();
    assert!(truncated > 0, "5-shot prompts overflow a 128-token context");
    assert_eq!(res["questions_truncated"].as_u64(), Some(truncated as u64));
    let model = eval::load_run(&run, &Device::Cpu).unwrap().model;
    check_rows_against_the_model(&rows, &model, max_len);
    let right = rows.iter().filter(|r| r["acc"] == "true").count();
    assert_eq!(res["acc"].as_f64(), Some(right as f64 / 4.0));
    let math: Vec<_> = rows.iter().filter(|r| r["category"] == "math").collect();
    let math_acc = math.iter().filter(|r| r["acc"] == "true").count() as f64 / 2.0;
    assert_eq!(res["categories"]["math"]["acc"].as_f64(), Some(math_acc));
    assert_eq!(res["categories"]["computer science"]["questions"], 1);

    // 0-shot of one category through hf:ORG/NAME (the hub cache, offline).
    let hf = tmp.path().join("hf_home");
    let repo = hf.join("hub/datasets--test-org--mmlu-pro");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    pro_folder(&repo.join("snapshots/0123abcd"));
    let out = keel()
        .args([
            "eval",
            "--bench",
            "mmlu_pro",
            "--quiet",
            "--shots",
            "0",
            "--subjects",
            "math",
            "--data",
            "hf:test-org/mmlu-pro",
        ])
        .arg("--run")
        .arg(&run)
        .env("HF_HOME", &hf)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let res = read_json(&run.join("eval/mmlu_pro-0shot/results.json"));
    assert_eq!((res["shots"].as_u64(), res["questions"].as_u64()), (Some(0), Some(2)));
    let (_, rows) = read_rows(&run.join("eval/mmlu_pro-0shot/questions.csv"));
    assert_eq!(rows[0]["prompt"], mmlu_pro::doc_to_text(&tests[0]));
    check_rows_against_the_model(&rows, &model, max_len);

    // Bad input: a row without options exits 2 naming the file and row, and writes no results.
    let broken = tmp.path().join("broken");
    let mut rows = pro_test_rows();
    rows[1].options = None;
    write_pro_parquet(&broken.join("data/test-00000-of-00001.parquet"), &rows);
    write_pro_parquet(&broken.join("data/validation-00000-of-00001.parquet"), &pro_validation_rows());
    let out = keel()
        .args(["eval", "--bench", "mmlu_pro", "--quiet", "--shots", "1", "--data"])
        .arg(&broken)
        .arg("--run")
        .arg(&run)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("test-00000-of-00001.parquet, row 2") && err.contains("\"options\""), "{err}");
    assert!(!run.join("eval/mmlu_pro-1shot").exists());
}

#[test]
fn cmmlu_end_to_end_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let max_len = 256;
    let run = tiny_run(&tmp.path().join("run"), "pre_ln", max_len);
    let data = cmmlu_folder(&tmp.path().join("cmmlu"));
    let eval = |extra: &[&str]| {
        keel()
            .args(["eval", "--bench", "cmmlu", "--quiet"])
            .args(extra)
            .arg("--data")
            .arg(&data)
            .arg("--run")
            .arg(&run)
            .output()
            .unwrap()
    };
    let out = eval(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let res = read_json(&run.join("eval/cmmlu-0shot/results.json"));
    assert_eq!((res["shots"].as_u64(), res["questions"].as_u64()), (Some(0), Some(4)), "0 shots by default");
    let (header, rows) = read_rows(&run.join("eval/cmmlu-0shot/questions.csv"));
    assert_eq!(
        header,
        [
            "id",
            "subject",
            "gold",
            "predicted",
            "predicted_norm",
            "acc",
            "acc_norm",
            "loglikelihoods",
            "truncated_tokens",
            "prompt"
        ]
    );
    assert_eq!(rows[0]["prompt"], "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n水稻属于哪一类作物？\nA. 粮食作物\nB. 经济作物\nC. 饲料作物, 绿肥\nD.  蔬菜 \n答案：");
    let model = eval::load_run(&run, &Device::Cpu).unwrap().model;
    check_rows_against_the_model(&rows, &model, max_len);
    for r in &rows {
        assert_eq!((&r["predicted_norm"], &r["acc_norm"]), (&r["predicted"], &r["acc"]), "letters all have length 1");
    }
    let right = rows.iter().filter(|r| r["acc"] == "true").count();
    assert_eq!(res["acc"].as_f64(), Some(right as f64 / 4.0), "the mean over all questions");
    assert_eq!(res["acc_norm"], res["acc"]);
    assert_eq!(res["subjects"]["agronomy"]["questions"], 3);

    // Two shots from dev, for one subject.
    let out = eval(&["--shots", "2", "--subjects", "agronomy"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let res = read_json(&run.join("eval/cmmlu-2shot/results.json"));
    assert_eq!(res["questions"], 3);
    let (_, rows) = read_rows(&run.join("eval/cmmlu-2shot/questions.csv"));
    assert!(rows[1]["prompt"].contains("答案： A\n\n大豆的主要营养成分是？"));
    check_rows_against_the_model(&rows, &model, max_len);

    // Bad input: more shots than the dev split holds, and a bad answer, exit 2 naming the file.
    let out = eval(&["--shots", "3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("agronomy.csv holds only 2 rows"), "{err}");
    std::fs::write(data.join("test/world_history.csv"), ",Question,A,B,C,D,Answer\n0,q,a,b,c,d,X\n").unwrap();
    let out = eval(&["--force"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("world_history.csv, row 1 after the header"), "{err}");
}
