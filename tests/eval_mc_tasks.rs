//! `hellaswag`, `arc_easy`, `arc_challenge`, `piqa` and `winogrande`: prompts pinned against
//! lm-evaluation-harness's task files (commit 4e7e0d47), the scoring rules on hand-made
//! log-likelihoods, CPython's seeded few-shot draw, the hub's parquet layouts and the original
//! releases' files, every malformed input, and each task end to end on a tiny trained run.

mod common;

use common::eval::{input_error, keel, read_json, write, FakeLm};
use common::tiny_run;

use keel::eval::arc::{self, Doc, Form, Task};
use keel::eval::hellaswag::{self, py_capitalize};
use keel::eval::py_random::PyRandom;
use keel::eval::{piqa, winogrande};
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// Fixtures

/// One parquet leaf column, in schema order.
enum Col {
    Str(Vec<&'static str>),
    Int(Vec<i64>),
    /// A list of strings per row (a `LIST` group, possibly inside a struct).
    Strs(Vec<Vec<&'static str>>),
}

/// Writes `cols` under `schema` as one snappy row group, the way pyarrow lays the hub's files out.
fn write_parquet(path: &Path, schema: &str, cols: Vec<Col>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let mut w = SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut cols = cols.into_iter();
    while let Some(mut c) = rg.next_column().unwrap() {
        match cols.next().expect("a column per leaf") {
            Col::Str(v) => {
                let w = c.typed::<ByteArrayType>();
                let max = w.get_descriptor().max_def_level();
                let vals: Vec<ByteArray> = v.iter().map(|s| ByteArray::from(*s)).collect();
                w.write_batch(&vals, Some(&vec![max; v.len()]), None).unwrap();
            }
            Col::Int(v) => {
                let w = c.typed::<Int64Type>();
                let max = w.get_descriptor().max_def_level();
                w.write_batch(&v, Some(&vec![max; v.len()]), None).unwrap();
            }
            Col::Strs(rows) => {
                let w = c.typed::<ByteArrayType>();
                let max = w.get_descriptor().max_def_level();
                let (mut vals, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
                for row in rows {
                    if row.is_empty() {
                        def.push(max - 2);
                        rep.push(0);
                    }
                    for (i, s) in row.iter().enumerate() {
                        vals.push(ByteArray::from(*s));
                        def.push(max);
                        rep.push((i > 0) as i16);
                    }
                }
                w.write_batch(&vals, Some(&def), Some(&rep)).unwrap();
            }
        }
        c.close().unwrap();
    }
    rg.close().unwrap();
    w.close().unwrap();
}

const STR_LIST: &str = "(LIST) { repeated group list { optional binary element (STRING); } }";

/// allenai/ai2_arc's schema: `choices: struct<text: list<string>, label: list<string>>`.
fn arc_schema() -> String {
    format!(
        "message schema {{ optional binary id (STRING); optional binary question (STRING); \
         optional group choices {{ optional group text {STR_LIST} optional group label {STR_LIST} }} \
         optional binary answerKey (STRING); }}"
    )
}

const ARC_Q1: &str = "An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most likely effect of this increase in rotation?";
const ARC_C1: [&str; 4] = [
    "Planetary density will decrease.",
    "Planetary years will become longer.",
    "Planetary days will become shorter.",
    "Planetary gravity will become stronger.",
];

/// Three ARC rows: letter labels, numeric labels, and a five-way question with a non-ASCII choice.
fn write_arc(path: &Path) {
    write_parquet(
        path,
        &arc_schema(),
        vec![
            Col::Str(vec!["Mercury_7175875", "NYSEDREGENTS_2015_8_12", "X_5"]),
            Col::Str(vec![ARC_Q1, "Which unit is used to record wind speed?", "Which word names a café drink?"]),
            Col::Strs(vec![
                ARC_C1.to_vec(),
                vec!["meters per second", "degrees Celsius", "millimeters", "kilograms"],
                vec!["latte", "crêpe", "baguette", "soufflé", "brie"],
            ]),
            Col::Strs(vec![vec!["A", "B", "C", "D"], vec!["1", "2", "3", "4"], vec!["A", "B", "C", "D", "E"]]),
            Col::Str(vec!["C", "1", "A"]),
        ],
    );
}

fn hellaswag_schema() -> String {
    format!(
        "message schema {{ optional int64 ind; optional binary activity_label (STRING); \
         optional binary ctx_a (STRING); optional binary ctx_b (STRING); optional binary ctx (STRING); \
         optional group endings {STR_LIST} optional binary source_id (STRING); optional binary split (STRING); \
         optional binary split_type (STRING); optional binary label (STRING); }}"
    )
}

const HS_CTX_A: &str =
    "Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles.";
const HS_ENDINGS: [&str; 4] = [
    ", the man adds wax to the windshield and cuts it.",
    ", a person board a ski lift, while two men supporting the head of the person wearing winter clothes snow as the we girls sled.",
    ", the man puts on a christmas coat, knitted with netting.",
    ", the man continues removing the snow on his car.",
];

/// Rowan/hellaswag's validation rows 0 (ActivityNet) and a WikiHow row with bracket markup.
fn write_hellaswag(path: &Path, split: &'static str) {
    write_parquet(
        path,
        &hellaswag_schema(),
        vec![
            Col::Int(vec![24, 41]),
            Col::Str(vec!["Removing ice from car", "Home and Garden"]),
            Col::Str(vec![HS_CTX_A, "[header] How to clean a grill [title] Scrub the grates. [step] Use a brush."]),
            Col::Str(vec!["then", "THE grill IS clean"]),
            Col::Str(vec!["", ""]),
            Col::Strs(vec![
                HS_ENDINGS.to_vec(),
                vec!["  Rinse it [substeps] well.", "Burn it [title] now", "Paint it  ", "Sell it"],
            ]),
            Col::Str(vec!["activitynet~v_-1IBHYS3L-Y", "wikihow~1"]),
            Col::Str(vec![split, split]),
            Col::Str(vec!["indomain", "zeroshot"]),
            Col::Str(vec!["3", "0"]),
        ],
    );
}

const PIQA_SCHEMA: &str = "message schema { optional binary goal (STRING); optional binary sol1 (STRING); \
     optional binary sol2 (STRING); optional int64 label; }";

const PIQA_GOAL: &str = "How do I ready a guinea pig cage for it's new occupants?";
const PIQA_SOL1: &str = "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also need to supply it with a water bottle and a food dish.";
const PIQA_SOL2: &str = "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, you will also need to supply it with a water bottle and a food dish.";

fn write_piqa(path: &Path) {
    write_parquet(
        path,
        PIQA_SCHEMA,
        vec![
            Col::Str(vec![PIQA_GOAL, "To make a cake fluffy,"]),
            Col::Str(vec![PIQA_SOL1, "whisk the eggs."]),
            Col::Str(vec![PIQA_SOL2, "freeze the eggs."]),
            Col::Int(vec![0, 0]),
        ],
    );
}

const WINO_SCHEMA: &str = "message schema { optional binary sentence (STRING); optional binary option1 (STRING); \
     optional binary option2 (STRING); optional binary answer (STRING); }";

const WINO_S1: &str = "Sarah was a much better surgeon than Maria so _ always got the harder cases.";

fn write_winogrande(path: &Path) {
    write_parquet(
        path,
        WINO_SCHEMA,
        vec![
            Col::Str(vec![WINO_S1, "The trophy didn't fit in the suitcase because _ was too big. ", "_ won."]),
            Col::Str(vec!["Sarah", "the trophy", "Zoë"]),
            Col::Str(vec!["Maria", "the suitcase", "Ann"]),
            Col::Str(vec!["1", "1", "2"]),
        ],
    );
}

fn jsonl(rows: &[Value]) -> String {
    rows.iter().map(|r| r.to_string() + "\n").collect()
}

/// The (context, continuation) text of each request a fake model was asked to score.
fn seen_text(lm: &FakeLm) -> Vec<(String, String)> {
    lm.seen
        .iter()
        .map(|r| {
            let t = |ids: &[u32]| String::from_utf8(ids.iter().map(|&i| i as u8).collect()).unwrap();
            (t(&r.tokens[..r.cont_start]), t(&r.tokens[r.cont_start..]))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// CPython's random, as lm-eval's few-shot sampler uses it

#[test]
fn py_random_reproduces_cpython_seeding_getrandbits_and_sample() {
    // Values printed by CPython 3.11: random.Random(1234).getrandbits(32) three times, etc.
    let mut r = PyRandom::new(1234);
    assert_eq!([r.getrandbits(32), r.getrandbits(32), r.getrandbits(32)], [4150886329, 3342196574, 1892932127]);
    let mut r = PyRandom::new(1234);
    assert_eq!((r.getrandbits(40), r.getrandbits(64)), (858849378233, 2155511622373988895));
    assert_eq!(PyRandom::new(0).getrandbits(32), 3626764237);
    assert_eq!(PyRandom::new((1 << 40) + 5).getrandbits(32), 2166296868, "a seed wider than 32 bits");
    // random.sample's set branch (population above its set size), consecutive calls.
    let mut r = PyRandom::new(1234);
    assert_eq!(r.sample(39905, 10), [28883, 7657, 490, 5940, 38156, 2288, 5500, 6450, 23241, 15519]);
    assert_eq!(r.sample(39905, 6), [1142, 2019, 1038, 22681, 31735, 30379]);
    // Its pool branch (a partial shuffle), small and large k.
    let mut r = PyRandom::new(1234);
    assert_eq!(r.sample(20, 5), [14, 3, 0, 2, 1]);
    assert_eq!(r.sample(20, 5), [2, 3, 11, 7, 0]);
    let mut r = PyRandom::new(1234);
    let draws: Vec<Vec<usize>> = (0..4).map(|_| r.sample(3, 2)).collect();
    assert_eq!(draws, [[1, 0], [0, 2], [2, 0], [2, 0]]);
    let mut r = PyRandom::new(1234);
    assert_eq!(
        r.sample(100, 25),
        [99, 56, 14, 0, 11, 74, 4, 85, 88, 10, 12, 45, 30, 2, 3, 86, 44, 82, 79, 61, 78, 59, 19, 95, 23]
    );
}

// ---------------------------------------------------------------------------------------------
// Prompts, pinned against the YAML

#[test]
fn arc_prompts_choices_and_gold_from_the_hubs_parquet() {
    let tmp = tempfile::tempdir().unwrap();
    // The hub's layout: ARC-Easy/test-00000-of-00001.parquet under the dataset folder.
    write_arc(&tmp.path().join("ARC-Easy/test-00000-of-00001.parquet"));
    let file = arc::ARC_EASY.split_file(tmp.path(), "test", arc::ARC_EASY.originals.0).unwrap();
    assert!(file.ends_with("ARC-Easy/test-00000-of-00001.parquet"));
    let docs = arc::read_docs(&arc::ARC_EASY, &file).unwrap();
    assert_eq!(docs.len(), 3);
    // doc_to_text: "Question: {{question}}\nAnswer:"; doc_to_choice: "{{choices.text}}";
    // doc_to_target: "{{choices.label.index(answerKey)}}".
    assert_eq!(docs[0].id, "Mercury_7175875");
    assert_eq!(docs[0].form, Form::Query(format!("Question: {ARC_Q1}\nAnswer:")));
    assert_eq!(docs[0].choices, ARC_C1);
    assert_eq!(docs[0].gold, 2, "answerKey C");
    assert_eq!(docs[1].gold, 0, "answerKey \"1\" among labels \"1\"..\"4\"");
    assert_eq!(docs[2].choices.len(), 5);
    assert_eq!(
        docs[1].requests(""),
        [
            ("Question: Which unit is used to record wind speed?\nAnswer:", " meters per second"),
            ("Question: Which unit is used to record wind speed?\nAnswer:", " degrees Celsius"),
            ("Question: Which unit is used to record wind speed?\nAnswer:", " millimeters"),
            ("Question: Which unit is used to record wind speed?\nAnswer:", " kilograms"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    // ARC-Challenge looks in its own config folder.
    let none = arc::ARC_CHALLENGE.split_file(tmp.path(), "test", arc::ARC_CHALLENGE.originals.0).unwrap_err();
    input_error(none, &["holds no test split", "ARC-Challenge/test-*.parquet", "ARC-Challenge-Test.jsonl"]);
}

#[test]
fn arc_original_release_jsonl_reads_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let row = json!({"id": "Mercury_7175875", "question": {"stem": ARC_Q1, "choices": [
        {"text": ARC_C1[0], "label": "A"}, {"text": ARC_C1[1], "label": "B"},
        {"text": ARC_C1[2], "label": "C"}, {"text": ARC_C1[3], "label": "D"}]}, "answerKey": "C"});
    let f = write(&tmp.path().join("ARC-Easy/ARC-Easy-Test.jsonl"), &jsonl(&[row]));
    // The folder above ARC-Easy/ finds the original file name in the config folder.
    assert_eq!(arc::ARC_EASY.split_file(tmp.path(), "test", arc::ARC_EASY.originals.0).unwrap(), f);
    let docs = arc::read_docs(&arc::ARC_EASY, &f).unwrap();
    assert_eq!(docs[0].form, Form::Query(format!("Question: {ARC_Q1}\nAnswer:")));
    assert_eq!((docs[0].choices.clone(), docs[0].gold), (ARC_C1.map(String::from).to_vec(), 2));
}

#[test]
fn hellaswag_query_and_endings_as_utils_process_docs() {
    let tmp = tempfile::tempdir().unwrap();
    write_hellaswag(&tmp.path().join("data/validation-00000-of-00001.parquet"), "val");
    let file = hellaswag::HELLASWAG.split_file(tmp.path(), "validation", &[]).unwrap();
    let docs = arc::read_docs(&hellaswag::HELLASWAG, &file).unwrap();
    // preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()), printed by Python.
    assert_eq!(
        docs[0].form,
        Form::Query("Removing ice from car: Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles. Then".into())
    );
    assert_eq!(docs[0].choices, HS_ENDINGS, "these endings need no preprocessing");
    assert_eq!((docs[0].gold, docs[0].id.as_str()), (3, "24"));
    // Markup: " [title]" -> ". ", other [..] dropped, double spaces halved once, ends stripped;
    // capitalize() lowercases the rest of ctx_b.
    assert_eq!(
        docs[1].form,
        Form::Query("Home and Garden: How to clean a grill. Scrub the grates. Use a brush. The grill is clean".into())
    );
    assert_eq!(docs[1].choices, ["Rinse it well.", "Burn it. now", "Paint it", "Sell it"]);
    assert_eq!(docs[1].gold, 0);
    assert_eq!(docs[0].requests("")[3].1, format!(" {}", HS_ENDINGS[3]), "target_delimiter, then the ending");
}

#[test]
fn hellaswag_preprocess_and_capitalize_match_python() {
    // Outputs of lm-eval's utils.preprocess and str.capitalize under CPython 3.11.
    assert_eq!(
        hellaswag::preprocess(
            "How to clean a grill [title] Scrub the grates.   [step] Use a brush [header] done [unclosed\n] x"
        ),
        "How to clean a grill. Scrub the grates.  Use a brush done [unclosed\n] x"
    );
    assert_eq!(hellaswag::preprocess(" \u{3000}[a [b] c]d\t"), " c]d", "lazy match from the first '['; Unicode strip");
    for (s, want) in [
        ("ΑΣ ΟΔΟΣ", "Ας οδος"),
        ("ǆemal ÉCOLE", "ǅemal école"),
        ("ßtraße", "Sstraße"),
        ("ﬁne DAY", "Fine day"),
        ("ᾳ", "ᾼ"),
        ("İSTANBUL", "İstanbul"),
        ("σΣ.", "Σς."),
        ("ΣΑΣ", "Σας"),
        ("aΣ b", "Aς b"),
        ("hello WORLD. how", "Hello world. how"),
        ("", ""),
        (" x", " x"),
        ("1ABC", "1abc"),
        ("ŉ", "ʼN"),
        ("é", "É"),
    ] {
        assert_eq!(py_capitalize(s), want, "{s:?}");
    }
    // Every character whose Python titlecase differs from its uppercase (Unicode 14), printed by
    // CPython as `code=titlecase code points`.
    let table = concat!(
        "df=53,73 1c4=1c5 1c5=1c5 1c6=1c5 1c7=1c8 1c8=1c8 1c9=1c8 1ca=1cb 1cb=1cb 1cc=1cb 1f1=1f2 1f2=1f2 1f3=1f2 ",
        "587=535,582 10d0=10d0 10d1=10d1 10d2=10d2 10d3=10d3 10d4=10d4 10d5=10d5 10d6=10d6 10d7=10d7 10d8=10d8 ",
        "10d9=10d9 10da=10da 10db=10db 10dc=10dc 10dd=10dd 10de=10de 10df=10df 10e0=10e0 10e1=10e1 10e2=10e2 10e3=10e3 ",
        "10e4=10e4 10e5=10e5 10e6=10e6 10e7=10e7 10e8=10e8 10e9=10e9 10ea=10ea 10eb=10eb 10ec=10ec 10ed=10ed 10ee=10ee ",
        "10ef=10ef 10f0=10f0 10f1=10f1 10f2=10f2 10f3=10f3 10f4=10f4 10f5=10f5 10f6=10f6 10f7=10f7 10f8=10f8 10f9=10f9 ",
        "10fa=10fa 10fd=10fd 10fe=10fe 10ff=10ff 1f80=1f88 1f81=1f89 1f82=1f8a 1f83=1f8b 1f84=1f8c 1f85=1f8d 1f86=1f8e ",
        "1f87=1f8f 1f88=1f88 1f89=1f89 1f8a=1f8a 1f8b=1f8b 1f8c=1f8c 1f8d=1f8d 1f8e=1f8e 1f8f=1f8f 1f90=1f98 1f91=1f99 ",
        "1f92=1f9a 1f93=1f9b 1f94=1f9c 1f95=1f9d 1f96=1f9e 1f97=1f9f 1f98=1f98 1f99=1f99 1f9a=1f9a 1f9b=1f9b 1f9c=1f9c ",
        "1f9d=1f9d 1f9e=1f9e 1f9f=1f9f 1fa0=1fa8 1fa1=1fa9 1fa2=1faa 1fa3=1fab 1fa4=1fac 1fa5=1fad 1fa6=1fae 1fa7=1faf ",
        "1fa8=1fa8 1fa9=1fa9 1faa=1faa 1fab=1fab 1fac=1fac 1fad=1fad 1fae=1fae 1faf=1faf 1fb2=1fba,345 1fb3=1fbc ",
        "1fb4=386,345 1fb7=391,342,345 1fbc=1fbc 1fc2=1fca,345 1fc3=1fcc 1fc4=389,345 1fc7=397,342,345 1fcc=1fcc ",
        "1ff2=1ffa,345 1ff3=1ffc 1ff4=38f,345 1ff7=3a9,342,345 1ffc=1ffc fb00=46,66 fb01=46,69 fb02=46,6c fb03=46,66,69 ",
        "fb04=46,66,6c fb05=53,74 fb06=53,74 fb13=544,576 fb14=544,565 fb15=544,56b fb16=54e,576 fb17=544,56d"
    );
    let hex = |h: &str| char::from_u32(u32::from_str_radix(h, 16).unwrap()).unwrap();
    for entry in table.split(' ') {
        let (c, t) = entry.split_once('=').unwrap();
        let want: String = t.split(',').map(hex).collect();
        let got = py_capitalize(&format!("{}x", hex(c)));
        assert_eq!(got.strip_suffix('x').unwrap(), want, "U+{c}");
    }
}

#[test]
fn hellaswag_original_jsonl_with_integer_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let row = json!({"ind": 24, "activity_label": "Removing ice from car", "ctx_a": HS_CTX_A, "ctx_b": "then",
        "ctx": "", "split": "val", "split_type": "indomain", "label": 3, "endings": HS_ENDINGS,
        "source_id": "activitynet~v_-1IBHYS3L-Y"});
    let f = write(&tmp.path().join("hellaswag_val.jsonl"), &jsonl(&[row]));
    assert_eq!(hellaswag::HELLASWAG.split_file(tmp.path(), "validation", hellaswag::HELLASWAG.originals.0).unwrap(), f);
    let docs = arc::read_docs(&hellaswag::HELLASWAG, &f).unwrap();
    assert_eq!((docs[0].gold, docs[0].id.as_str()), (3, "24"));
}

#[test]
fn piqa_prompt_from_parquet_and_the_original_labels_file() {
    let tmp = tempfile::tempdir().unwrap();
    write_piqa(&tmp.path().join("data/validation-00000-of-00001.parquet"));
    let file = piqa::PIQA.split_file(tmp.path(), "validation", piqa::PIQA.originals.0).unwrap();
    let docs = arc::read_docs(&piqa::PIQA, &file).unwrap();
    // doc_to_text: "Question: {{goal}}\nAnswer:"; doc_to_choice: "{{[sol1, sol2]}}"; doc_to_target: label.
    let q = format!("Question: {PIQA_GOAL}\nAnswer:");
    assert_eq!(docs[0].requests(""), [(q.clone(), format!(" {PIQA_SOL1}")), (q, format!(" {PIQA_SOL2}"))]);
    assert_eq!(docs[0].gold, 0);
    // The original release: valid.jsonl without labels, valid-labels.lst beside it.
    let orig = tmp.path().join("orig");
    write(
        &orig.join("valid.jsonl"),
        &jsonl(&[
            json!({"id": "p0", "goal": "g0", "sol1": "a", "sol2": "b"}),
            json!({"id": "p1", "goal": "g1", "sol1": "c", "sol2": "d"}),
        ]),
    );
    write(&orig.join("valid-labels.lst"), "1\n0\n");
    let f = piqa::PIQA.split_file(&orig, "validation", piqa::PIQA.originals.0).unwrap();
    assert!(f.ends_with("valid.jsonl"));
    let docs = arc::read_docs(&piqa::PIQA, &f).unwrap();
    assert_eq!(docs.iter().map(|d| (d.id.as_str(), d.gold)).collect::<Vec<_>>(), [("p0", 1), ("p1", 0)]);
}

#[test]
fn winogrande_partial_scoring_contexts_and_shared_continuation() {
    let tmp = tempfile::tempdir().unwrap();
    write_winogrande(&tmp.path().join("winogrande_xl/validation-00000-of-00001.parquet"));
    let file = winogrande::WINOGRANDE.split_file(tmp.path(), "validation", &[]).unwrap();
    let docs = arc::read_docs(&winogrande::WINOGRANDE, &file).unwrap();
    // doc_to_choice: [sentence[:idx] + opt for opt in options]; doc_to_target:
    // sentence[idx + 1:].strip(); construct_requests: (context, target_delimiter + cont).
    assert_eq!(
        docs[0].requests(""),
        [
            ("Sarah was a much better surgeon than Maria so Sarah", " always got the harder cases."),
            ("Sarah was a much better surgeon than Maria so Maria", " always got the harder cases."),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(docs[0].gold, 0, "answer \"1\"");
    assert_eq!(docs[1].requests("")[1].1, " was too big.", "the continuation is stripped");
    assert_eq!(docs[2].requests("")[0], ("Zoë".to_string(), " won.".to_string()));
    assert_eq!(docs[2].gold, 1);
    assert_eq!(docs[2].choices, ["Zoë", "Ann"]);
}

// ---------------------------------------------------------------------------------------------
// Few-shot exemplars

#[test]
fn exemplars_follow_build_qa_turn() {
    let q = Doc::query("1".into(), json!({}), "Question: q\nAnswer:".into(), vec!["x".into(), "y".into()], 1);
    assert_eq!(q.exemplar(), "Question: q\nAnswer: y\n\n");
    assert_eq!(q.requests("P\n\n")[0], ("P\n\nQuestion: q\nAnswer:".to_string(), " x".to_string()));
    let b = Doc::blank("2".into(), json!({}), "A ".into(), vec!["B".into(), "C".into()], "d.".into(), 1);
    assert_eq!(b.exemplar(), "A C d.\n\n", "the gold context, the delimiter, the continuation");
    assert_eq!(b.requests("P\n\n")[0], ("P\n\nA B".to_string(), " d.".to_string()));
    // An empty answer is no answer to build_qa_turn: neither delimiter is added.
    let end = Doc::blank("3".into(), json!({}), "A ".into(), vec!["B".into(), "C".into()], String::new(), 0);
    assert_eq!(end.exemplar(), "A B");
}

/// lm-eval's default sampler: random.Random(1234).sample(train, n) per item in order; for tasks
/// without a test split, n + 1 drawn and the item itself removed.
#[test]
fn fewshot_draws_are_lm_evals_and_leave_the_item_out() {
    let tmp = tempfile::tempdir().unwrap();
    let row =
        |i: usize| json!({"goal": format!("g{i}"), "sol1": format!("a{i}"), "sol2": format!("b{i}"), "label": i % 2});
    let train = write(&tmp.path().join("train.jsonl"), &jsonl(&(0..6).map(row).collect::<Vec<_>>()));
    let val = write(
        &tmp.path().join("validation.jsonl"),
        &jsonl(&[
            json!({"goal": "v0", "sol1": "x", "sol2": "y", "label": 0}),
            row(0),
            json!({"goal": "v2", "sol1": "x", "sol2": "y", "label": 1}),
        ]),
    );
    let pool = arc::read_docs(&piqa::PIQA, &train).unwrap();
    let docs = arc::read_docs(&piqa::PIQA, &val).unwrap();
    let ex = |i: usize| format!("Question: g{i}\nAnswer: {}{i}\n\n", if i.is_multiple_of(2) { "a" } else { "b" });
    // CPython: [Random(1234).sample(range(6), 3) for 3 items] = [3,0,4], [0,4,5], [5,0,4].
    let got = arc::fewshot_prefixes(&piqa::PIQA, &docs, &pool, 2, &train).unwrap();
    assert_eq!(got, [ex(3) + &ex(0), ex(4) + &ex(5), ex(5) + &ex(0)], "item 1 is train row 0 and is left out");
    // ARC has a test split, so lm-eval draws exactly n: [3,0], [0,5], [4,0].
    let got = arc::fewshot_prefixes(&arc::ARC_EASY, &docs, &pool, 2, &train).unwrap();
    assert_eq!(got, [ex(3) + &ex(0), ex(0) + &ex(5), ex(4) + &ex(0)]);
    // Too few train rows for the draw, and an item the pool holds twice.
    let e = arc::fewshot_prefixes(&piqa::PIQA, &docs, &pool, 6, &train).unwrap_err();
    input_error(e, &["--shots 6", "draws 7 exemplars", "train.jsonl holds 6 rows"]);
    let twice = write(&tmp.path().join("twice.jsonl"), &jsonl(&[row(0), row(0)]));
    let pool = arc::read_docs(&piqa::PIQA, &twice).unwrap();
    let e = arc::fewshot_prefixes(&piqa::PIQA, &docs[1..2], &pool, 1, &twice).unwrap_err();
    input_error(e, &["twice.jsonl holds it more than once"]);
}

// ---------------------------------------------------------------------------------------------
// Scoring

#[test]
fn acc_norm_divides_by_characters_not_bytes_and_ties_go_first() {
    let task = &arc::ARC_EASY;
    // "ééé" is 3 characters and 6 bytes: per character -1.1 < -1.0 picks "abcd"; per byte it would
    // be -0.55 and pick "ééé".
    let d = Doc::query("a".into(), json!({}), "Q".into(), vec!["ééé".into(), "abcd".into()], 1);
    let (rows, acc, norm) = arc::score(task, std::slice::from_ref(&d), &[String::new()], &[vec![-3.3, -4.0]], &[0]);
    assert_eq!((acc, norm), (vec![0.0], vec![1.0]));
    assert_eq!((rows[0].predicted, rows[0].predicted_norm), (0, Some(1)));
    assert_eq!(rows[0].loglikelihoods, "-3.300000;-4.000000");
    assert_eq!(rows[0].choices, r#"["ééé","abcd"]"#);
    assert_eq!(rows[0].target, "abcd");
    // Equal log-likelihoods: numpy's argmax takes the first.
    let (rows, _, _) = arc::score(task, &[d], &[String::new()], &[vec![-1.0, -1.0]], &[0]);
    assert_eq!(rows[0].predicted, 0);
    // Winogrande reports acc only; its row shows the options and the shared continuation.
    let w = Doc::blank("w".into(), json!({}), "So ".into(), vec!["he".into(), "she".into()], "won.".into(), 1);
    let (rows, acc, _) = arc::score(&winogrande::WINOGRANDE, &[w], &["P ".into()], &[vec![-2.0, -1.0]], &[0]);
    assert_eq!(acc, [1.0]);
    assert_eq!((rows[0].predicted_norm, rows[0].acc_norm), (None, None));
    assert_eq!((rows[0].context.as_str(), rows[0].continuation.as_str()), ("P So ", "won."));
    assert_eq!((rows[0].choices.as_str(), rows[0].target.as_str()), (r#"["he","she"]"#, "she"));
}

#[test]
fn requests_reach_the_model_as_lm_eval_builds_them() {
    let tmp = tempfile::tempdir().unwrap();
    write_winogrande(&tmp.path().join("v.parquet"));
    let docs = arc::read_docs(&winogrande::WINOGRANDE, &tmp.path().join("v.parquet")).unwrap();
    let mut lm = FakeLm::new(4096);
    let prefixes = vec![String::new(); docs.len()];
    let (rows, acc, _) = arc::evaluate(&mut lm, &winogrande::WINOGRANDE, &docs, &prefixes, &mut |_, _| {}).unwrap();
    let seen = seen_text(&lm);
    assert_eq!(seen.len(), 6);
    assert_eq!(
        seen[0],
        ("Sarah was a much better surgeon than Maria so Sarah".into(), " always got the harder cases.".into())
    );
    assert_eq!(seen[1].1, seen[0].1, "one continuation shared by both contexts");
    // The fake model's score depends on the continuation only, so both options tie and the first
    // wins: answers "1", "1", "2" score 1, 1, 0.
    assert_eq!(acc, [1.0, 1.0, 0.0]);
    assert_eq!(rows[2].loglikelihoods.split(';').count(), 2);
}

// ---------------------------------------------------------------------------------------------
// Malformed inputs

#[test]
fn malformed_rows_are_input_errors_naming_file_and_row() {
    let tmp = tempfile::tempdir().unwrap();
    let arc_ok =
        json!({"id": "a", "question": "q", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "A"});
    let hs_ok = json!({"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["x", "y"], "label": "1"});
    let pq_ok = json!({"goal": "g", "sol1": "a", "sol2": "b", "label": 1});
    let wg_ok = json!({"sentence": "a _ b", "option1": "x", "option2": "y", "answer": "2"});
    let with = |base: &Value, key: &str, v: Value| {
        let mut b = base.clone();
        if v.is_null() {
            b.as_object_mut().unwrap().remove(key);
        } else {
            b[key] = v;
        }
        b
    };
    let cases: Vec<(&Task, Value, Vec<&str>)> = vec![
        (&arc::ARC_EASY, with(&arc_ok, "question", Value::Null), vec!["row 2", "no \"question\""]),
        (
            &arc::ARC_EASY,
            with(&arc_ok, "answerKey", json!("C")),
            vec!["row 2", "answerKey \"C\" is not one of the labels"],
        ),
        (
            &arc::ARC_EASY,
            with(&arc_ok, "choices", json!({"text": ["x"], "label": ["A", "B"]})),
            vec!["row 2", "1 choice texts and 2 labels"],
        ),
        (
            &arc::ARC_EASY,
            with(&arc_ok, "choices", json!({"text": ["x", 3], "label": ["A", "B"]})),
            vec!["row 2", "\"choices.text\" is not a list of strings"],
        ),
        (
            &arc::ARC_CHALLENGE,
            with(&arc_ok, "choices", json!({"text": ["x", "y"]})),
            vec!["row 2", "\"choices\" has no \"label\" list"],
        ),
        (
            &hellaswag::HELLASWAG,
            with(&hs_ok, "label", json!("")),
            vec!["row 2", "\"label\" must be the index", "test split has no labels"],
        ),
        (&hellaswag::HELLASWAG, with(&hs_ok, "label", json!("2")), vec!["row 2", "one of the 2 endings"]),
        (&hellaswag::HELLASWAG, with(&hs_ok, "ctx_b", Value::Null), vec!["row 2", "no \"ctx_b\" string"]),
        (
            &hellaswag::HELLASWAG,
            with(&hs_ok, "endings", json!("x")),
            vec!["row 2", "\"endings\" is not a list of strings"],
        ),
        (&piqa::PIQA, with(&pq_ok, "label", json!(2)), vec!["row 2", "\"label\" 2 is not 0 or 1"]),
        (&piqa::PIQA, with(&pq_ok, "label", Value::Null), vec!["row 2", "no \"label\" field", "-labels.lst"]),
        (&piqa::PIQA, with(&pq_ok, "sol2", Value::Null), vec!["row 2", "no \"sol2\" string"]),
        (&winogrande::WINOGRANDE, with(&wg_ok, "sentence", json!("no blank")), vec!["row 2", "no \"_\" blank"]),
        (
            &winogrande::WINOGRANDE,
            with(&wg_ok, "answer", json!("")),
            vec!["row 2", "\"answer\" \"\" is not \"1\" or \"2\""],
        ),
        (&winogrande::WINOGRANDE, with(&wg_ok, "option1", Value::Null), vec!["row 2", "no \"option1\" string"]),
    ];
    for (i, (task, bad_row, expect)) in cases.into_iter().enumerate() {
        let ok = match task.name {
            "hellaswag" => &hs_ok,
            "piqa" => &pq_ok,
            "winogrande" => &wg_ok,
            _ => &arc_ok,
        };
        let f = write(&tmp.path().join(format!("case{i}.jsonl")), &jsonl(&[ok.clone(), bad_row]));
        let e = arc::read_docs(task, &f).unwrap_err();
        let name = format!("case{i}.jsonl");
        let expect: Vec<&str> = expect.iter().copied().chain([name.as_str()]).collect();
        input_error(e, &expect);
        assert!(arc::read_docs(task, &write(&tmp.path().join("ok.jsonl"), &jsonl(std::slice::from_ref(ok)))).is_ok());
    }
    // Not JSON, empty, not parquet, no file, and a labels file of the wrong length.
    let f = write(&tmp.path().join("broken.jsonl"), "{\"goal\": 1}\n{oops\n");
    input_error(arc::read_docs(&piqa::PIQA, &f).unwrap_err(), &["broken.jsonl, line 2", "not JSON"]);
    let f = write(&tmp.path().join("empty.jsonl"), "\n");
    input_error(arc::read_docs(&piqa::PIQA, &f).unwrap_err(), &["empty.jsonl holds no items"]);
    let f = write(&tmp.path().join("fake.parquet"), "PAR1 not really");
    input_error(arc::read_docs(&piqa::PIQA, &f).unwrap_err(), &["fake.parquet is not a readable parquet file"]);
    let e = piqa::PIQA.split_file(&tmp.path().join("missing"), "validation", &[]).unwrap_err();
    input_error(e, &["missing does not exist"]);
    let dir = tmp.path().join("lst");
    write(&dir.join("valid.jsonl"), &jsonl(&[json!({"goal": "g", "sol1": "a", "sol2": "b"})]));
    write(&dir.join("valid-labels.lst"), "0\n1\n");
    input_error(
        arc::read_docs(&piqa::PIQA, &dir.join("valid.jsonl")).unwrap_err(),
        &["valid-labels.lst holds 2 labels for the 1 rows"],
    );
    write(&dir.join("valid-labels.lst"), "7\n");
    input_error(
        arc::read_docs(&piqa::PIQA, &dir.join("valid.jsonl")).unwrap_err(),
        &["valid-labels.lst, line 1", "\"7\" is not 0 or 1"],
    );
    // A folder without the split names the layouts it looked for.
    let e =
        winogrande::WINOGRANDE.split_file(tmp.path(), "validation", winogrande::WINOGRANDE.originals.0).unwrap_err();
    input_error(e, &["holds no validation split", "winogrande_xl/validation-*.parquet", "dev.jsonl"]);
}

// ---------------------------------------------------------------------------------------------
// End to end: `keel eval` on a tiny trained run

fn eval(run: &Path, args: &[&str], data: &Path) -> std::process::Output {
    keel().args(["eval", "--quiet", "--run"]).arg(run).args(args).arg("--data").arg(data).output().unwrap()
}

fn results(run: &Path, folder: &str) -> (Value, Vec<csv::StringRecord>, csv::StringRecord) {
    let dir = run.join("eval").join(folder);
    let res = read_json(&dir.join("results.json"));
    let mut r = csv::Reader::from_path(dir.join("questions.csv")).unwrap();
    let header = r.headers().unwrap().clone();
    (res, r.records().map(|x| x.unwrap()).collect(), header)
}

const HEADER: [&str; 12] = [
    "id",
    "context",
    "choices",
    "continuation",
    "gold",
    "target",
    "loglikelihoods",
    "predicted",
    "predicted_norm",
    "acc",
    "acc_norm",
    "truncated_tokens",
];

/// results.json's accuracy is the CSV's mean and its stderr lm-eval's `mean_stderr`.
fn check_results(res: &Value, rows: &[csv::StringRecord], header: &csv::StringRecord, task: &str, n: usize) {
    assert_eq!(header.iter().collect::<Vec<_>>(), HEADER);
    assert_eq!(rows.len(), n);
    assert_eq!(res["bench"], task);
    assert_eq!(res["questions"], n);
    let acc: Vec<f64> = rows.iter().map(|r| if &r[9] == "true" { 1.0 } else { 0.0 }).collect();
    let p = acc.iter().sum::<f64>() / n as f64;
    assert!((res["acc"].as_f64().unwrap() - p).abs() < 1e-12);
    let stderr = (p * (1.0 - p) / (n as f64 - 1.0)).sqrt();
    assert!((res["acc_stderr"].as_f64().unwrap() - stderr).abs() < 1e-12, "{res}");
    for r in rows {
        let lls: Vec<f64> = r[6].split(';').map(|x| x.parse().unwrap()).collect();
        assert!(lls.iter().all(|l| *l < 0.0 && l.is_finite()));
        let best = lls.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let predicted: usize = r[7].parse().unwrap();
        assert!((lls[predicted] - best).abs() < 1e-5, "the prediction is the argmax");
        assert_eq!(&r[9] == "true", r[7] == r[4]);
    }
}

#[test]
fn each_task_end_to_end_on_a_tiny_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(&tmp.path().join("run"), "keel", 512);
    let ok = |o: &std::process::Output| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // ARC: the hub folder, both configs; arc_challenge reads its own config's file.
    let arc_dir = tmp.path().join("ai2_arc");
    write_arc(&arc_dir.join("ARC-Easy/test-00000-of-00001.parquet"));
    write_arc(&arc_dir.join("ARC-Challenge/test-00000-of-00001.parquet"));
    write_arc(&arc_dir.join("ARC-Easy/train-00000-of-00001.parquet"));
    ok(&eval(&run, &["--bench", "arc_easy"], &arc_dir));
    let (res, rows, header) = results(&run, "arc_easy-0shot");
    check_results(&res, &rows, &header, "arc_easy", 3);
    assert_eq!(res["shots_source"], "none");
    assert_eq!(res["split"], "test");
    assert!(res["acc_norm"].is_f64() && res["acc_norm_stderr"].is_f64());
    assert!(res["data"].as_str().unwrap().ends_with("ARC-Easy/test-00000-of-00001.parquet"));
    assert_eq!(&rows[0][1], format!("Question: {ARC_Q1}\nAnswer:"));
    assert_eq!(&rows[0][2], serde_json::to_string(&ARC_C1).unwrap());
    assert_eq!((&rows[0][4], &rows[0][5]), ("2", ARC_C1[2]));
    ok(&eval(&run, &["--bench", "arc_challenge", "--limit", "2"], &arc_dir));
    let (res, rows, header) = results(&run, "arc_challenge-0shot");
    check_results(&res, &rows, &header, "arc_challenge", 2);
    assert!(res["data"].as_str().unwrap().contains("ARC-Challenge"));
    // --shots 2 from the train split (a file as --data: its folder holds the train split).
    ok(&eval(&run, &["--bench", "arc_easy", "--shots", "2"], &arc_dir.join("ARC-Easy/test-00000-of-00001.parquet")));
    let (res, rows, _) = results(&run, "arc_easy-2shot");
    assert_eq!(res["shots"], 2);
    let source = res["shots_source"].as_str().unwrap();
    assert!(source.contains("train-00000-of-00001.parquet") && source.contains("random.Random(1234)"), "{source}");
    // Random(1234).sample(range(3), 2) for 3 items: [1, 0], [0, 2], [2, 0] (no item left out: ARC has
    // a test split).
    assert!(rows[0][1].starts_with(
        "Question: Which unit is used to record wind speed?\nAnswer: meters per second\n\nQuestion: An astronomer"
    ));
    assert!(rows[0][1].ends_with(&format!("Answer: {}\n\nQuestion: {ARC_Q1}\nAnswer:", ARC_C1[2])));
    // ARC-Challenge has no train split here: --shots names what it looked for.
    let o = eval(&run, &["--bench", "arc_challenge", "--shots", "1"], &arc_dir);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--shots 1 takes exemplars from the train split") && err.contains("ARC-Challenge/train-*.parquet"),
        "{err}"
    );

    // HellaSwag: the hub folder (data/validation-*.parquet).
    let hs = tmp.path().join("hellaswag");
    write_hellaswag(&hs.join("data/validation-00000-of-00001.parquet"), "val");
    ok(&eval(&run, &["--bench", "hellaswag"], &hs));
    let (res, rows, header) = results(&run, "hellaswag-0shot");
    check_results(&res, &rows, &header, "hellaswag", 2);
    assert!(rows[0][1].ends_with("winter clothes smiles. Then"));
    assert_eq!(&rows[1][2], r#"["Rinse it well.","Burn it. now","Paint it","Sell it"]"#);

    // PIQA: the validation parquet file itself.
    let pq = tmp.path().join("piqa/data/validation-00000-of-00001.parquet");
    write_piqa(&pq);
    ok(&eval(&run, &["--bench", "piqa"], &pq));
    let (res, rows, header) = results(&run, "piqa-0shot");
    check_results(&res, &rows, &header, "piqa", 2);
    assert_eq!(&rows[0][1], format!("Question: {PIQA_GOAL}\nAnswer:"));

    // WinoGrande: acc only, both in results.json and in the CSV.
    let wg = tmp.path().join("winogrande");
    write_winogrande(&wg.join("winogrande_xl/validation-00000-of-00001.parquet"));
    ok(&eval(&run, &["--bench", "winogrande"], &wg));
    let (res, rows, header) = results(&run, "winogrande-0shot");
    check_results(&res, &rows, &header, "winogrande", 3);
    assert!(res.get("acc_norm").is_none() && res.get("acc_norm_stderr").is_none(), "{res}");
    assert_eq!(
        (&rows[0][1], &rows[0][2], &rows[0][3]),
        ("Sarah was a much better surgeon than Maria so ", r#"["Sarah","Maria"]"#, "always got the harder cases.")
    );
    assert_eq!((&rows[0][8], &rows[0][10]), ("", ""));

    // Bad inputs: exit 2 with the file and row named, no panic.
    let bad = write(
        &tmp.path().join("bad/validation.jsonl"),
        &jsonl(&[json!({"goal": "g", "sol1": "a", "sol2": "b", "label": 5})]),
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for (bench, data, expect) in [
        ("piqa", bad.clone(), "validation.jsonl, row 1"),
        ("winogrande", empty.clone(), "winogrande_xl/validation-*.parquet"),
        ("hellaswag", tmp.path().join("nowhere"), "does not exist"),
        ("arc_easy", bad.clone(), "no \"question\""),
    ] {
        let o = eval(&run, &["--bench", bench, "--out", tmp.path().join("o").to_str().unwrap(), "--force"], &data);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bench}: {err}");
        assert!(err.contains(expect) && !err.contains("panicked"), "{bench}: {err}");
    }
    let o = keel().args(["eval", "--quiet", "--bench", "winogrande", "--run"]).arg(&run).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs --data"));
}
