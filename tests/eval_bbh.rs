//! BBH (`src/eval/bbh.rs`) as lm-evaluation-harness 0.4.13 scores it (`lm_eval/tasks/bbh/`).
//! Expected prompts follow the YAMLs by hand; expected filter outputs are what lm-eval's
//! `zeroshot/utils.py` classes return on the same strings (worked out with lm-eval 0.4.13, regex
//! and word2number 1.1). The fixtures (descriptions, exemplars, items) are made up.

mod common;

use common::eval::{csv_rows, input_error, keel, read_json, write};
use common::tiny_run;

use keel::eval::bbh::{
    self, aggregate, build_prompt, filters, metric, word_sort, word_to_num, Example, Filter, MapRegexFilter,
    MultiChoiceRegexFilter, NumberParseRegexFilter, Prompt, Score, Variant,
};
use std::path::{Path, PathBuf};

/// A prompts file as scripts/get_bbh.sh writes it, with made-up text.
fn prompts_json(description: &str) -> String {
    serde_json::json!({
        "source": "test fixture",
        "zeroshot": {"description": description},
        "fewshot": {"description": description, "samples": [
            {"input": "first shot", "target": "T1"},
            {"input": "second shot", "target": "(B)"},
            {"input": "third shot\nwith two lines", "target": "T3"},
        ]},
        "cot_fewshot": {"description": description, "samples": [
            {"input": "c1", "target": "So the answer is x."},
            {"input": "c2", "target": "So the answer is y."},
            {"input": "c3", "target": "So the answer is z."},
        ]},
    })
    .to_string()
}

/// The original release's `{"examples": [...]}` file.
fn suzgun(items: &[(&str, &str)]) -> String {
    let examples: Vec<_> = items.iter().map(|(i, t)| serde_json::json!({"input": i, "target": t})).collect();
    serde_json::json!({"canary": "fixture", "examples": examples}).to_string()
}

/// A BBH folder with two subtasks in the original layout (bbh/{task}.json) and prompts/.
fn bbh_dir(root: &Path) -> PathBuf {
    let dir = root.join("bbh_data");
    write(
        &dir.join("bbh/boolean_expressions.json"),
        &suzgun(&[("True and not False is", "True"), ("not True is", "False"), ("True or x is", "True")]),
    );
    write(
        &dir.join("bbh/date_understanding.json"),
        &suzgun(&[("Pick a day.\nOptions:\n(A) Monday\n(B) Friday", "(B)")]),
    );
    for t in bbh::task_names() {
        write(&dir.join(format!("prompts/{t}.json")), &prompts_json("Made-up instruction.\n\n"));
    }
    dir
}

#[test]
fn zero_and_few_shot_prompts_match_the_yaml_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = bbh_dir(tmp.path());
    let only = vec!["boolean_expressions".to_string()];
    // zeroshot/boolean_expressions.yaml: "description": "...\n\n", "doc_to_text": "Q: {{input}}\nA:";
    // fewshot_context prepends the description as is; no target delimiter after the last "A:".
    let zero = bbh::load(&dir, Variant::Zeroshot, &only, 0, None).unwrap();
    assert_eq!(zero.len(), 1);
    assert_eq!(zero[0].items.len(), 3);
    assert_eq!(bbh::prompts(Variant::Zeroshot, &zero, 0)[1], "Made-up instruction.\n\nQ: not True is\nA:");
    // fewshot/*.yaml: fewshot_config.sampler first_n, num_fewshot 3; each exemplar is
    // doc_to_text + target_delimiter " " + target + fewshot_delimiter "\n\n".
    let few = bbh::load(&dir, Variant::Fewshot, &only, 3, Some(1)).unwrap();
    assert_eq!(few[0].items.len(), 1, "--limit 1");
    assert_eq!(
        bbh::prompts(Variant::Fewshot, &few, 3)[0],
        "Made-up instruction.\n\nQ: first shot\nA: T1\n\nQ: second shot\nA: (B)\n\n\
         Q: third shot\nwith two lines\nA: T3\n\nQ: True and not False is\nA:"
    );
    assert_eq!(
        bbh::prompts(Variant::Fewshot, &few, 1)[0],
        "Made-up instruction.\n\nQ: first shot\nA: T1\n\nQ: True and not False is\nA:"
    );
    // cot_fewshot: doc_to_text "Q: {{input}}\nA: Let's think step by step.\n", target_delimiter "".
    let p = Prompt { description: "D\n\n".into(), samples: vec![Example { input: "c1".into(), target: "t.".into() }] };
    assert_eq!(
        build_prompt(Variant::CotFewshot, &p, 1, "q"),
        "D\n\nQ: c1\nA: Let's think step by step.\nt.\n\nQ: q\nA: Let's think step by step.\n"
    );
    // Too many shots for the 3 exemplars: first_n's assertion, an input error.
    let msg = input_error(bbh::load(&dir, Variant::Fewshot, &only, 4, None).unwrap_err(), &[]);
    assert!(msg.contains("boolean_expressions.json") && msg.contains("--shots 3"), "{msg}");
}

#[test]
fn template_rules() {
    assert_eq!(Variant::Zeroshot.until(), ["</s>", "Q:", "<|im_end|>"]);
    assert_eq!(Variant::Fewshot.until(), ["</s>", "Q", "\n\n"]);
    assert_eq!(Variant::Zeroshot.max_gen_toks(), 256);
    assert_eq!(Variant::CotFewshot.max_gen_toks(), 1024);
    assert_eq!(bbh::task_names().len(), 27);
    let names: Vec<&str> = filters(Variant::Zeroshot, "snarks").unwrap().iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["strict-match", "flexible-extract"]);
    assert!(matches!(filters(Variant::Zeroshot, "snarks").unwrap()[1].1, Filter::MultiChoice(_)));
    assert!(matches!(filters(Variant::Zeroshot, "object_counting").unwrap()[1].1, Filter::NumberParse(_)));
    assert!(matches!(filters(Variant::Zeroshot, "web_of_lies").unwrap()[1].1, Filter::Map(_)));
    assert!(matches!(filters(Variant::Zeroshot, "word_sorting").unwrap()[1].1, Filter::WordSort));
    assert!(matches!(filters(Variant::Zeroshot, "navigate").unwrap()[1].1, Filter::Regex(_)));
    // Every subtask's filters compile.
    for t in bbh::task_names() {
        for v in [Variant::Zeroshot, Variant::Fewshot, Variant::CotFewshot] {
            filters(v, t).unwrap();
        }
    }
}

const FRUIT: &str = "Which fruit is red?\nOptions:\n(A) a banana\n(B) an apple\n(C) a plum, ripe";

#[test]
fn multi_choice_regex_filter_as_utils_py() {
    let f = MultiChoiceRegexFilter::bbh().unwrap();
    let cases = [
        // Step 0: the pattern (\([A-Z]\)) on the raw response, first match.
        ("The answer is (B).", FRUIT, "(B)"),
        // Case-sensitive: "(b)" is not a match, "(C)" is.
        ("(b) maybe, or (C)", FRUIT, "(C)"),
        // Step 1: an option's text, lowercased and without punctuation, mapped to its letter.
        ("I think it's an apple", FRUIT, "(B)"),
        ("A PLUM, RIPE", FRUIT, "(C)"),
        // Step 2: ":" then a bare letter on the raw response.
        ("Answer: C", FRUIT, "(C)"),
        ("answer:\n B", FRUIT, "(B)"),
        ("nothing here", FRUIT, "[invalid]"),
        // No options in the input: both fallbacks match only empty strings.
        ("so: A", "", "[invalid]"),
        // lm-eval 0.4.13 tries the longest option first, so "Guilty" does not shadow the longer one.
        ("guilty of romance!", "Pick one.\nOptions:\n(A) Guilty\n(B) Guilty of Romance", "(B)"),
        // Unicode punctuation is removed on both sides (the apostrophe and the period).
        ("It's MINE!", "Whose is it?\nOptions:\n(A) It's mine.\n(B) Yours", "(A)"),
    ];
    for (resp, input, want) in cases {
        assert_eq!(f.apply(resp, input).unwrap(), want, "{resp:?}");
    }
}

#[test]
fn number_parse_regex_filter_as_utils_py() {
    let f = NumberParseRegexFilter::bbh().unwrap();
    let cases = [
        ("There are 12 apples", "12"),
        ("-5 or 3", "-5"),
        // ([-0-9]+) also matches a bare dash.
        ("four-five", "-"),
        // English words, through word2number.
        ("twenty three", "23"),
        ("One hundred and five", "105"),
        ("twelve hundred", "1200"),
        ("Eighteen, then two", "18"),
        ("seventeen", "17"),
        // The pattern has no word boundaries...
        ("someone", "1"),
        // ...and needs "teen"/"ty" after six/seven/nine when they stand last.
        ("I count seven", "[invalid]"),
        ("nine", "[invalid]"),
        ("no numbers", "[invalid]"),
        // word2number raises here (ValueError, IndexError), which stops lm-eval; keel falls back.
        ("thousand thousand", "[invalid]"),
        ("thousand five", "[invalid]"),
    ];
    for (resp, want) in cases {
        assert_eq!(f.apply(resp).unwrap(), want, "{resp:?}");
    }
    assert_eq!(word_to_num("two million twenty three thousand and forty nine"), Some(2_023_049));
    assert_eq!(word_to_num("five hundred"), Some(500));
    assert_eq!(word_to_num("one billion"), Some(1_000_000_000));
    assert_eq!(word_to_num("thousand million"), None, "malformed order");
    assert_eq!(word_to_num("and"), None);
}

#[test]
fn map_regex_and_word_sort_filters_as_utils_py() {
    let sports =
        MapRegexFilter::new(&[(r"\b(no|not plausible)\b", "no"), (r"\b(yes|plausible)\b", "yes")], true).unwrap();
    let lies = MapRegexFilter::new(
        &[
            (r"\b(no|does not tell the truth|is not telling the truth)\b", "no"),
            (r"\b(yes|tells the truth|is telling the truth)\b", "yes"),
        ],
        true,
    )
    .unwrap();
    for (resp, s, l) in [
        ("Plausible.", "yes", "[invalid]"),
        ("not plausible", "no", "[invalid]"),
        ("Yes", "yes", "yes"),
        ("maybe", "[invalid]", "[invalid]"),
        ("Jim tells the truth", "[invalid]", "yes"),
        ("Jim is not telling the truth", "[invalid]", "no"),
        ("No, it is implausible", "no", "no"),
    ] {
        assert_eq!(sports.apply(resp).unwrap(), s, "sports {resp:?}");
        assert_eq!(lies.apply(resp).unwrap(), l, "web_of_lies {resp:?}");
    }
    let input = "Sort these words: List: pear apple fig";
    // Each word at its last occurrence, in order.
    assert_eq!(word_sort("apple fig pear apple", input).unwrap(), "fig pear apple");
    assert_eq!(word_sort("figs and apples", input).unwrap(), "", "\\b around each word");
    assert_eq!(word_sort("x", "List:").unwrap(), "", "no words: the empty pattern");
    assert!(word_sort("x", "no list here").is_err(), "Python's IndexError");
}

#[test]
fn dyck_regex_takes_the_first_nonempty_group_then_strips() {
    let f = filters(Variant::Zeroshot, "dyck_languages").unwrap().remove(1).1;
    for (resp, want) in [(" ] )", "] )"), ("] >", "] >"), ("close with } ] )", ""), ("none", "[invalid]")] {
        assert_eq!(f.apply(resp, "").unwrap(), want, "{resp:?}");
    }
    let f = filters(Variant::Zeroshot, "boolean_expressions").unwrap().remove(1).1;
    assert_eq!(f.apply("It is False, not True", "").unwrap(), "False");
    let cot = filters(Variant::CotFewshot, "snarks").unwrap().remove(0).1;
    assert_eq!(cot.apply("so the answer is (A).", "").unwrap(), "(A)");
    assert_eq!(cot.apply("The answer is (A).", "").unwrap(), "[invalid]", "case-sensitive lookbehind");
}

#[test]
fn exact_match_normalisation_per_template() {
    // zeroshot: ignore_case, regexes_to_ignore ["\\.$", ",", "\n", "\\\\", '"'] on both sides.
    let zero = metric(Variant::Zeroshot).unwrap();
    for (pred, gold, want) in [
        ("True.", "True", true),
        ("true", "True", true),
        ("True\n", "True", true),
        ("\"(A)\"", "(a)", true),
        ("a, b", "a b", true),
        ("a\\b", "ab", true),
        // strict-match scores the raw generation: the leading space stays.
        (" True", "True", false),
        ("True. ", "True", false),
    ] {
        assert_eq!(zero.score(pred, gold).unwrap(), want, "zeroshot {pred:?} vs {gold:?}");
    }
    // fewshot: plain exact_match.
    let few = metric(Variant::Fewshot).unwrap();
    assert!(few.score("True", "True").unwrap());
    assert!(!few.score("True.", "True").unwrap());
    assert!(!few.score("true", "True").unwrap());
}

#[test]
fn group_is_size_weighted_and_macro_is_reported_too() {
    // Subtask a: 1 of 1 right; b: 1 of 4 right.
    let a = Score { n: 1, mean: 1.0, stderr: None };
    let b = Score { n: 4, mean: 0.25, stderr: Some(0.25) };
    let g = aggregate(&[a, b]);
    assert_eq!(g.n, 5);
    assert!((g.micro - 0.4).abs() < 1e-12, "2 of 5 items");
    assert!((g.macro_ - 0.625).abs() < 1e-12, "(1 + 0.25) / 2");
    assert_eq!(g.stderr, None, "a subtask of one item has N/A stderr, so the group too");
    // pooled_sample_stderr: sqrt(sum((n-1) * se^2 * n) / (N - k) / N).
    let c = Score { n: 3, mean: 2.0 / 3.0, stderr: Some(1.0 / 3.0) };
    let g = aggregate(&[b, c]);
    let pooled = (3.0 * 0.0625 * 4.0 + 2.0 * (1.0 / 9.0) * 3.0) / 5.0;
    assert!((g.stderr.unwrap() - (pooled / 7.0f64).sqrt()).abs() < 1e-12);
    assert!((g.micro - 3.0 / 7.0).abs() < 1e-12);
}

#[test]
fn evaluate_scores_each_filter_and_aggregates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = bbh_dir(tmp.path());
    let tasks = bbh::load(&dir, Variant::Zeroshot, &[], 0, None);
    // Only two subtasks are present: the first missing one is named.
    let msg = input_error(tasks.unwrap_err(), &[]);
    assert!(msg.contains("causal_judgement") && msg.contains("--subtasks"), "{msg}");
    let only = vec!["date_understanding".to_string(), "boolean_expressions".to_string()];
    let tasks = bbh::load(&dir, Variant::Zeroshot, &only, 0, None).unwrap();
    // lm-eval's order, whatever the order of --subtasks.
    assert_eq!(tasks[0].name, "boolean_expressions");
    let gens = [" True", "False.Q: next", " maybe", "It is Friday."];
    let report = bbh::evaluate(Variant::Zeroshot, &tasks, 0, |p| {
        assert_eq!(p.len(), 4);
        Ok(gens.iter().map(|g| g.to_string()).collect())
    })
    .unwrap();
    let r = &report.rows;
    assert_eq!(r[1].generation, "False.", "cut at the stop string Q:");
    assert_eq!(r[0].extracted, [" True", "True"]);
    assert_eq!(r[0].scores, [false, true]);
    assert_eq!(r[1].scores, [true, true]);
    assert_eq!(r[2].extracted[1], "[invalid]");
    assert_eq!(
        (r[3].subtask.as_str(), r[3].extracted[1].as_str(), r[3].scores[1]),
        ("date_understanding", "(B)", true)
    );
    // flexible-extract: 2/3 and 1/1; strict-match: 1/3 and 0/1.
    let flex = report.groups[1];
    assert!((flex.micro - 0.75).abs() < 1e-12 && (flex.macro_ - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
    let strict = report.groups[0];
    assert!((strict.micro - 0.25).abs() < 1e-12 && (strict.macro_ - 1.0 / 6.0).abs() < 1e-12);
    let json = bbh::results_json(Variant::Zeroshot, &report, serde_json::Map::new());
    let num = |k: &str| json[k].as_f64().unwrap();
    assert!((num("exact_match") - 0.75).abs() < 1e-12, "lm-eval's group value: flexible-extract, micro");
    assert_eq!(json["exact_match_filter"], "flexible-extract");
    assert_eq!(num("exact_match_flexible_extract_micro"), num("exact_match"));
    assert!((num("exact_match_flexible_extract_macro") - flex.macro_).abs() < 1e-12);
    assert!((num("exact_match_strict_match_micro") - 0.25).abs() < 1e-12);
    assert!((num("exact_match_strict_match_macro") - 1.0 / 6.0).abs() < 1e-12);
    assert_eq!(json["subtasks"]["boolean_expressions"]["sample_len"], 3);
    assert_eq!(json["subtasks"]["date_understanding"]["exact_match,flexible-extract"], 1.0);
    assert!(json["subtasks"]["date_understanding"]["exact_match_stderr,flexible-extract"].is_null());
    let csv = String::from_utf8(bbh::samples_csv(Variant::Zeroshot, &report.rows, &[0, 0, 0, 7]).unwrap()).unwrap();
    let header = csv.lines().next().unwrap();
    assert_eq!(
        header,
        "subtask,id,prompt,target,generation,extracted_strict_match,exact_match_strict_match,\
         extracted_flexible_extract,exact_match_flexible_extract,truncated_tokens"
    );
    // Few-shot: one filter, `none`, and no normalisation.
    let tasks = bbh::load(&dir, Variant::Fewshot, &only, 3, None).unwrap();
    let report = bbh::evaluate(Variant::Fewshot, &tasks, 3, |_| {
        Ok(vec![" True".into(), "False".into(), "True\n\nQ".into(), "(B)".into()])
    })
    .unwrap();
    assert_eq!(report.rows.iter().map(|r| r.scores[0]).collect::<Vec<_>>(), [false, true, true, true]);
    let json = bbh::results_json(Variant::Fewshot, &report, serde_json::Map::new());
    assert!((json["exact_match"].as_f64().unwrap() - 0.75).abs() < 1e-12);
    assert!((json["exact_match_macro"].as_f64().unwrap() - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
    assert_eq!(json["exact_match_filter"], "none");
}

/// A hub-layout parquet file (optional UTF-8 columns, snappy), `None` for a null.
fn write_parquet(path: &Path, rows: &[(&str, Option<&str>)]) {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let schema = Arc::new(
        parse_message_type("message schema { OPTIONAL BYTE_ARRAY input (UTF8); OPTIONAL BYTE_ARRAY target (UTF8); }")
            .unwrap(),
    );
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let mut w = SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    let mut g = w.next_row_group().unwrap();
    let columns: [Vec<Option<&str>>; 2] =
        [rows.iter().map(|r| Some(r.0)).collect(), rows.iter().map(|r| r.1).collect()];
    for col in columns {
        let mut c = g.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = col.iter().flatten().map(|s| ByteArray::from(*s)).collect();
        let def: Vec<i16> = col.iter().map(|v| v.is_some() as i16).collect();
        c.typed::<ByteArrayType>().write_batch(&values, Some(&def), None).unwrap();
        c.close().unwrap();
    }
    g.close().unwrap();
    w.close().unwrap();
}

#[test]
fn reads_the_hub_layouts_and_names_bad_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    // SaylorTwift/bbh's main branch, and the refs/convert/parquet branch.
    write_parquet(&dir.join("navigate/test-00000-of-00001.parquet"), &[("go left", Some("No")), ("stay", Some("Yes"))]);
    write_parquet(&dir.join("snarks/test/0000.parquet"), &[("which one", Some("(A)"))]);
    let items = bbh::read_items(&dir, "navigate").unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!((items[1].id, items[1].input.as_str(), items[1].target.as_str()), (1, "stay", "Yes"));
    assert_eq!(bbh::read_items(&dir, "snarks").unwrap()[0].target, "(A)");
    // A null target names the file and row.
    write_parquet(&dir.join("hyperbaton/test-00000-of-00001.parquet"), &[("a", Some("(A)")), ("b", None)]);
    let msg = input_error(bbh::read_items(&dir, "hyperbaton").unwrap_err(), &[]);
    assert!(msg.contains("hyperbaton/test-00000-of-00001.parquet, row 2") && msg.contains("\"target\""), "{msg}");
    // The original release: a row without input.
    write(&dir.join("bbh/ruin_names.json"), r#"{"examples": [{"input": "a", "target": "b"}, {"target": "c"}]}"#);
    let msg = input_error(bbh::read_items(&dir, "ruin_names").unwrap_err(), &[]);
    assert!(msg.contains("ruin_names.json, row 2") && msg.contains("\"input\""), "{msg}");
    write(&dir.join("web_of_lies.json"), r#"{"canary": "x"}"#);
    let msg = input_error(bbh::read_items(&dir, "web_of_lies").unwrap_err(), &[]);
    assert!(msg.contains("web_of_lies.json has no \"examples\""), "{msg}");
    write(&dir.join("word_sorting.json"), r#"{"examples": []}"#);
    assert!(input_error(bbh::read_items(&dir, "word_sorting").unwrap_err(), &[]).contains("holds no items"));
    let msg = input_error(bbh::read_items(&dir, "hyperbaton_x").unwrap_err(), &[]);
    assert!(msg.contains("no test items of BBH subtask hyperbaton_x") && msg.contains("hf download SaylorTwift/bbh"));
}

#[test]
fn bad_subtasks_and_prompts_are_input_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = bbh_dir(tmp.path());
    let msg = input_error(bbh::load(&dir, Variant::Zeroshot, &["boolean".to_string()], 0, None).unwrap_err(), &[]);
    assert!(
        msg.contains("--subtasks boolean") && msg.contains("word_sorting") && msg.contains("causal_judgement"),
        "{msg}"
    );
    let only = vec!["boolean_expressions".to_string()];
    std::fs::remove_file(dir.join("prompts/boolean_expressions.json")).unwrap();
    let msg = input_error(bbh::load(&dir, Variant::Zeroshot, &only, 0, None).unwrap_err(), &[]);
    assert!(msg.contains("prompts/boolean_expressions.json") && msg.contains("scripts/get_bbh.sh"), "{msg}");
    write(&dir.join("prompts/boolean_expressions.json"), r#"{"zeroshot": {"descr": "x"}}"#);
    let msg = input_error(bbh::load(&dir, Variant::Zeroshot, &only, 0, None).unwrap_err(), &[]);
    assert!(msg.contains("no \"description\""), "{msg}");
    let msg = input_error(bbh::load(&dir, Variant::Fewshot, &only, 3, None).unwrap_err(), &[]);
    assert!(msg.contains("no \"fewshot\""), "{msg}");
    std::fs::remove_dir_all(dir.join("prompts")).unwrap();
    let msg = input_error(bbh::load(&dir, Variant::Zeroshot, &only, 0, None).unwrap_err(), &[]);
    assert!(
        msg.contains("prompts does not exist") && msg.contains(&format!("scripts/get_bbh.sh {}", dir.display())),
        "{msg}"
    );
}

#[test]
fn keel_eval_bbh_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(&tmp.path().join("run"), "keel", 96);
    let dir = bbh_dir(tmp.path());
    let eval = |bench: &str, batch: &str, out: &str, extra: &[&str]| {
        keel()
            .args(["eval", "--quiet", "--bench", bench, "--max-gen-toks", "8", "--batch-size", batch])
            .args(["--subtasks", "boolean_expressions,date_understanding", "--data"])
            .arg(&dir)
            .arg("--out")
            .arg(tmp.path().join(out))
            .args(extra)
            .arg("--run")
            .arg(&run)
            .output()
            .unwrap()
    };
    let one = eval("bbh_zeroshot", "1", "z1", &[]);
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    let three = eval("bbh_zeroshot", "3", "z3", &[]);
    assert!(three.status.success(), "{}", String::from_utf8_lossy(&three.stderr));
    let res: serde_json::Value = read_json(&tmp.path().join("z1/results.json"));
    assert_eq!(res["bench"], "bbh_zeroshot");
    assert_eq!(res["questions"], 4);
    assert_eq!(res["shots"], 0);
    assert_eq!(res["max_gen_toks"], 8);
    assert_eq!(res["prompts"], "test fixture");
    for m in ["exact_match", "exact_match_flexible_extract_macro", "exact_match_strict_match_micro", "questions_per_s"]
    {
        assert!(res[m].is_f64(), "{m} in {res}");
    }
    assert_eq!(res["exact_match"], res["exact_match_flexible_extract_micro"]);
    assert_eq!(res["subtasks"]["boolean_expressions"]["sample_len"], 3);
    let rows1 = csv_rows(&tmp.path().join("z1/samples.csv"));
    let rows3 = csv_rows(&tmp.path().join("z3/samples.csv"));
    assert_eq!(rows1.len(), 4);
    assert_eq!(&rows1[1][0], "boolean_expressions");
    assert_eq!(&rows1[1][2], "Made-up instruction.\n\nQ: not True is\nA:");
    assert_eq!(&rows1[3][3], "(B)");
    // The same generations, hence scores, whatever the batch size.
    for (a, b) in rows1.iter().zip(&rows3) {
        assert_eq!(a, b);
    }
    let res3: serde_json::Value = read_json(&tmp.path().join("z3/results.json"));
    assert_eq!(res["exact_match"], res3["exact_match"]);
    assert_eq!(res["exact_match_strict_match_micro"], res3["exact_match_strict_match_micro"]);

    let few = eval("bbh_fewshot", "2", "f", &["--limit", "2"]);
    assert!(few.status.success(), "{}", String::from_utf8_lossy(&few.stderr));
    let res: serde_json::Value = read_json(&tmp.path().join("f/results.json"));
    assert_eq!((res["shots"].as_u64(), res["questions"].as_u64()), (Some(3), Some(3)));
    let rows = csv_rows(&tmp.path().join("f/samples.csv"));
    assert!(rows[0][2].starts_with("Made-up instruction.\n\nQ: first shot\nA: T1\n\n"));
    assert!(!rows[0][4].contains("\n\n") && !rows[0][4].contains('Q'), "cut at the few-shot stops");

    // The chain-of-thought variant (lm-eval's default `bbh`): its prompt, its `get-answer` filter.
    let cot = eval("bbh_cot_fewshot", "2", "c", &["--limit", "1"]);
    assert!(cot.status.success(), "{}", String::from_utf8_lossy(&cot.stderr));
    let res: serde_json::Value = read_json(&tmp.path().join("c/results.json"));
    assert_eq!((res["exact_match_filter"].as_str(), res["questions"].as_u64()), (Some("get-answer"), Some(2)));
    assert!(res["exact_match_macro"].is_f64());
    let text = std::fs::read_to_string(tmp.path().join("c/samples.csv")).unwrap();
    assert!(text.starts_with("subtask,id,prompt,target,generation,extracted_get_answer,exact_match_get_answer,"));
    let rows = csv_rows(&tmp.path().join("c/samples.csv"));
    assert!(rows[0][2]
        .starts_with("Made-up instruction.\n\nQ: c1\nA: Let's think step by step.\nSo the answer is x.\n\nQ: c2\n"));
    assert!(rows[0][2].ends_with("Q: True and not False is\nA: Let's think step by step.\n"));

    // Bad input: exit 2 with the reason.
    for (bench, extra, needle) in [
        ("bbh_zeroshot", vec!["--subtasks", "nope"], "--subtasks nope: not a BBH subtask"),
        ("bbh_zeroshot", vec!["--subtasks", "navigate"], "no test items of BBH subtask navigate"),
        ("bbh_zeroshot", vec!["--shots", "3"], "zero-shot"),
        ("bbh_fewshot", vec!["--subtasks", "boolean_expressions", "--max-gen-toks", "96"], "--max-gen-toks below 96"),
    ] {
        let o = keel()
            .args(["eval", "--quiet", "--bench", bench, "--data"])
            .arg(&dir)
            .args(&extra)
            .arg("--out")
            .arg(tmp.path().join("bad"))
            .arg("--force")
            .arg("--run")
            .arg(&run)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(needle) && !err.contains("panicked"), "{err} lacks {needle}");
    }
}
