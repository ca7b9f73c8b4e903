//! lm-evaluation-harness's generative post-processing (`src/eval/generative.rs`) and GSM8K
//! (`src/eval/gsm8k.rs`): expected values follow CPython `re` and the harness's YAML by hand.

use keel::eval::generative::{
    cut_at_stop, mean_and_stderr, py_strip, until_with_eos, ExactMatch, FilterPipeline, FilterStep, Found, PyRegex,
    RegexFilter,
};
use keel::eval::gsm8k::{self, Item, Variant};
use std::io::Write;

fn texts(found: Vec<Found>) -> Vec<String> {
    found
        .into_iter()
        .map(|f| match f {
            Found::Text(t) => t,
            Found::Groups(g) => panic!("unexpected tuple {g:?}"),
        })
        .collect()
}

fn flexible() -> RegexFilter {
    RegexFilter::new(r"(-?[$0-9.,]{2,})|(-?[0-9]+)").unwrap().group_select(-1)
}

#[test]
fn findall_with_two_groups_gives_tuples_with_empty_strings() {
    let re = PyRegex::new(r"(-?[$0-9.,]{2,})|(-?[0-9]+)").unwrap();
    // re.findall(...) == [('$1,234.56', ''), ('', '7')]
    assert_eq!(
        re.findall("costs $1,234.56 or 7").unwrap(),
        vec![Found::Groups(vec!["$1,234.56".into(), "".into()]), Found::Groups(vec!["".into(), "7".into()])]
    );
}

#[test]
fn flexible_extract_takes_the_first_nonempty_group_of_the_last_match() {
    assert_eq!(flexible().apply("costs $1,234.56 or 7").unwrap(), "7");
    // "3." matches the first alternative ([$0-9.,]{2,}), so the dot stays until exact_match.
    assert_eq!(flexible().apply("I have 12 apples and 3.").unwrap(), "3.");
    assert_eq!(flexible().apply("no digits").unwrap(), "[invalid]");
    let first = RegexFilter::new(r"(-?[$0-9.,]{2,})|(-?[0-9]+)").unwrap();
    assert_eq!(first.apply("costs $1,234.56 or 7").unwrap(), "$1,234.56");
    let second = flexible().group_select(1);
    assert_eq!(second.apply("10 then 20 then 30").unwrap(), "20");
    assert!(flexible().group_select(3).apply("10 then 20").is_err(), "Python raises IndexError");
    assert!(flexible().group_select(-3).apply("10 then 20").is_err());
}

#[test]
fn strict_match_patterns_behave_as_python() {
    let strict = RegexFilter::new(r"#### (\-?[0-9\.\,]+)").unwrap();
    assert_eq!(strict.apply("so 5 + 5 = 10\n#### 1,000").unwrap(), "1,000");
    assert_eq!(strict.apply("The answer is 10").unwrap(), "[invalid]");
    let cot = RegexFilter::new(r"The answer is (\-?[0-9\.\,]+).").unwrap();
    assert_eq!(cot.apply("So 3 + 15 = 18. The answer is 18.").unwrap(), "18");
    // The trailing `.` is any character: without one after the number, backtracking gives "1".
    assert_eq!(cot.apply("The answer is 18").unwrap(), "1");
    // Greedy: "4." then the space as the trailing `.`; findall == ['4.', '5'], the first is taken.
    assert_eq!(cot.apply("The answer is 4. The answer is 5!").unwrap(), "4.");
}

#[test]
fn one_group_and_all_empty_groups() {
    // One group: findall gives the group's text, even empty, which is not the fallback.
    let one = RegexFilter::new(r"(a*)b").unwrap();
    assert_eq!(one.apply("b").unwrap(), "");
    // Two groups that are both empty: the fallback.
    let two = RegexFilter::new(r"(a)?(b)?c").unwrap();
    assert_eq!(two.apply("c").unwrap(), "[invalid]");
    // No groups: the whole match, stripped (Python's strip includes \x1c-\x1f).
    let none = RegexFilter::new(r"\s*x\s*").unwrap();
    assert_eq!(none.apply("a \x1cx\n b").unwrap(), "x");
    assert_eq!(py_strip("\x1f 7 \u{3000}"), "7");
}

#[test]
fn python_regex_dialect_is_kept() {
    // Empty matches, including one right after a non-empty match (CPython 3.7+).
    assert_eq!(texts(PyRegex::new("x*").unwrap().findall("abxd").unwrap()), ["", "", "x", "", ""]);
    // `$` also matches before a final newline.
    assert_eq!(PyRegex::new(r"\.$").unwrap().remove_all("12.\n").unwrap(), "12\n");
    assert_eq!(PyRegex::new(r"\.$").unwrap().remove_all("1.2.").unwrap(), "1.2");
    assert_eq!(PyRegex::new(r"\.\Z").unwrap().remove_all("12.\n").unwrap(), "12.\n");
    // `{` that is not a repetition is a literal; `{,n}` is `{0,n}`.
    assert_eq!(texts(PyRegex::new(r"a{").unwrap().findall("a{").unwrap()), ["a{"]);
    assert_eq!(texts(PyRegex::new(r"a{,2}").unwrap().findall("aaa").unwrap()), ["aa", "a", ""]);
    // `]` first in a class and `[` inside one are literals.
    assert_eq!(texts(PyRegex::new(r"[]a]+").unwrap().findall("x]a]y").unwrap()), ["]a]"]);
    assert_eq!(texts(PyRegex::new(r"[[]").unwrap().findall("a[b").unwrap()), ["["]);
    // `\s` includes the separators \x1c-\x1f.
    assert_eq!(texts(PyRegex::new(r"\s").unwrap().findall("a\x1cb").unwrap()), ["\x1c"]);
    // Octal escapes and backreferences.
    assert_eq!(texts(PyRegex::new(r"\101").unwrap().findall("BAB").unwrap()), ["A"]);
    assert_eq!(texts(PyRegex::new(r"(a)\1").unwrap().findall("aab").unwrap()), ["a"]);
    // Lookaround (BBH's chain-of-thought filter).
    let bbh = PyRegex::new(r"(?<=the answer is )(.*)(?=.)").unwrap();
    assert_eq!(texts(bbh.findall("So the answer is (B).").unwrap()), ["(B)"]);
    // Inline global flags.
    assert_eq!(PyRegex::new("(?s).*#### ").unwrap().remove_all("a\nb #### 7").unwrap(), "7");
    assert_eq!(texts(PyRegex::new("(?i)ab").unwrap().findall("xAB").unwrap()), ["AB"]);
    // `(?m)` at the start: `$` before every newline.
    assert_eq!(PyRegex::new(r"(?m)\.$").unwrap().remove_all("a.\nb.\n").unwrap(), "a\nb\n");
}

#[test]
fn untranslatable_python_patterns_are_refused() {
    // Python compiles all but `\q` and `[ab`; keel cannot run them with Python's meaning, so refuses.
    for p in [r"(?x) a b", r"\N{DIGIT ONE}", r"a(?m:b$)", r"\q", r"[+--]", r"(?a)\w", r"[ab"] {
        let err = PyRegex::new(p).expect_err(p).to_string();
        assert!(err.contains(p), "{err}");
    }
}

#[test]
fn stop_strings_cut_at_the_earliest() {
    let until = ["Q:", "</s>", "<|im_end|>"];
    assert_eq!(cut_at_stop(" 5 + 3 = 8.\n\nQ: next", &until), " 5 + 3 = 8.\n\n");
    assert_eq!(cut_at_stop("x</s>yQ:z", &until), "x");
    assert_eq!(cut_at_stop("no stop here", &until), "no stop here");
    assert_eq!(cut_at_stop("abc", &["", "c"]), "ab", "an empty stop string is skipped");
    assert_eq!(until_with_eos(&until, Some("<|endoftext|>")), ["Q:", "</s>", "<|im_end|>", "<|endoftext|>"]);
    assert_eq!(until_with_eos(&until, Some("</s>")), ["Q:", "</s>", "<|im_end|>"]);
}

#[test]
fn exact_match_normalisations() {
    let plain = ExactMatch::default();
    assert!(!plain.score("ABC", "abc").unwrap());
    let case = ExactMatch { ignore_case: true, ..Default::default() };
    assert!(case.score("ABC", "abc").unwrap());
    let punct = ExactMatch { ignore_punctuation: true, ..Default::default() };
    assert!(punct.score("a.b!\"#$%&'()*+,-/:;<=>?@[\\]^_`{|}~", "ab").unwrap());
    assert!(!punct.score("a\u{3002}", "a").unwrap(), "only string.punctuation (ASCII) is removed");
    // The task's rules: `,` then `\$` then `(?s).*#### ` then `\.$`, on both sides.
    let m = gsm8k::metric().unwrap();
    assert!(m.score("$1,234.", "He has 5, so 5.\n#### 1,234").unwrap());
    assert!(!m.score("1234.5", "#### 1234").unwrap());
    assert_eq!(m.normalize("[invalid]").unwrap(), "[invalid]");
    // Order matters: the regexes are applied in the order given.
    let re = |ps: &[&str]| ExactMatch {
        regexes_to_ignore: ps.iter().map(|p| PyRegex::new(p).unwrap()).collect(),
        ..Default::default()
    };
    assert_eq!(re(&[r"\.$", ","]).normalize("1.,").unwrap(), "1.");
    assert_eq!(re(&[",", r"\.$"]).normalize("1.,").unwrap(), "1");
}

#[test]
fn filter_pipeline_takes_the_first_response() {
    let p = FilterPipeline {
        name: "f".into(),
        steps: vec![FilterStep::Regex(Box::new(flexible())), FilterStep::TakeFirst],
    };
    assert_eq!(p.apply(&["a 12".to_string(), "b 13".to_string()]).unwrap(), "12");
    assert!(p.apply(&[]).is_err());
}

#[test]
fn gold_answer_is_after_the_hashes() {
    assert_eq!(gsm8k::gold_answer("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72"), "72");
    assert_eq!(gsm8k::gold_answer("#### 1,000 \n"), "1,000");
    assert_eq!(gsm8k::doc_to_target(Variant::Gsm8k, "x\n#### 5"), "x\n#### 5");
    assert_eq!(gsm8k::doc_to_target(Variant::Gsm8kCot, "x\n#### 5"), "5");
}

/// Built from `gsm8k-cot.yaml` with PyYAML: each exemplar `"Q: " + question + "\nA:" + " " + target
/// + "\n\n"`, then the question.
const COT_PROMPT: &str = "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?\nA: There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6.\n\nQ: If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?\nA: There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.\n\nQ: Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?\nA: Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The answer is 39.\n\nQ: Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?\nA: Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The answer is 8.\n\nQ: Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?\nA: Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The answer is 9.\n\nQ: There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?\nA: There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.\n\nQ: Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?\nA: Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33.\n\nQ: Olivia has $23. She bought five bagels for $3 each. How much money does she have left?\nA: Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.\n\nQ: Janet has 3 apples. How many?\nA:";

#[test]
fn cot_prompt_matches_the_yaml_byte_for_byte() {
    assert_eq!(gsm8k::cot_prompt("Janet has 3 apples. How many?"), COT_PROMPT);
}

#[test]
fn fewshot_prompt_uses_the_given_train_items_in_order() {
    let train = vec![
        Item { question: "q0".into(), answer: "a0\n#### 0".into() },
        Item { question: "q1".into(), answer: "a1\n#### 1".into() },
    ];
    assert_eq!(
        gsm8k::fewshot_prompt_from_train(&train, &[1, 0], "Q?").unwrap(),
        "Question: q1\nAnswer: a1\n#### 1\n\nQuestion: q0\nAnswer: a0\n#### 0\n\nQuestion: Q?\nAnswer:"
    );
    assert_eq!(gsm8k::fewshot_prompt_from_train(&train, &[], "Q?").unwrap(), "Question: Q?\nAnswer:");
    let err = gsm8k::fewshot_prompt_from_train(&train, &[2], "Q?").unwrap_err();
    assert!(keel::is_input_error(&err), "{err}");
}

fn jsonl(body: &str, name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::File::create(&path).unwrap().write_all(body.as_bytes()).unwrap();
    (dir, path)
}

#[test]
fn reads_jsonl_and_reports_bad_lines() {
    let (_d, p) = jsonl(
        "{\"question\": \"q\", \"answer\": \"a\\n#### 3\"}\n\n{\"question\": \"r\", \"answer\": \"#### 4\"}\n",
        "ok.jsonl",
    );
    let items = gsm8k::read(&p).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0], Item { question: "q".into(), answer: "a\n#### 3".into() });

    let (_d, p) = jsonl("{\"question\": \"q\", \"answer\": \"a\"}\n{not json\n", "bad.jsonl");
    let err = gsm8k::read(&p).unwrap_err();
    let msg = err.to_string();
    assert!(keel::is_input_error(&err));
    assert!(msg.contains("bad.jsonl") && msg.contains("line 2") && msg.contains("not JSON"), "{msg}");

    let (_d, p) = jsonl("{\"question\": \"q\", \"answer\": \"a\"}\n{\"question\": \"q\"}\n", "missing.jsonl");
    let msg = gsm8k::read(&p).unwrap_err().to_string();
    assert!(msg.contains("missing.jsonl, row 2") && msg.contains("\"answer\""), "{msg}");

    let (_d, p) = jsonl("\n", "empty.jsonl");
    assert!(gsm8k::read(&p).unwrap_err().to_string().contains("no problems"));

    let (_d, p) = jsonl("PAR1", "test-00000-of-00001.parquet");
    let err = gsm8k::read(&p).unwrap_err();
    assert!(keel::is_input_error(&err));
    let msg = err.to_string();
    assert!(msg.contains("test-00000-of-00001.parquet is not a readable parquet file"), "{msg}");
}

#[test]
fn evaluate_scores_each_filter() {
    let items = vec![
        Item { question: "q0".into(), answer: "w\n#### 18".into() },
        Item { question: "q1".into(), answer: "w\n#### 1,000".into() },
        Item { question: "q2".into(), answer: "w\n#### 5".into() },
    ];
    let prompts: Vec<String> = items.iter().map(|i| gsm8k::cot_prompt(&i.question)).collect();
    let until = until_with_eos(&gsm8k::until(Variant::Gsm8kCot), Some("<|endoftext|>"));
    let mut seen = Vec::new();
    let report = gsm8k::evaluate(Variant::Gsm8kCot, &items, prompts.clone(), &until, |p| {
        seen = p.to_vec();
        Ok(vec![
            " 3 * 6 = 18. The answer is 18.\n\nQ: The answer is 99.".into(),
            " It is $1,000.<|endoftext|>junk 7".into(),
            " 2 + 2 = 4. The answer is 4.".into(),
        ])
    })
    .unwrap();
    assert_eq!(seen, prompts);
    let r = &report.rows;
    assert_eq!(r[0].generation, " 3 * 6 = 18. The answer is 18.\n\n");
    assert_eq!(r[0].extracted, ["18", "18."]);
    assert_eq!(r[0].scores, [true, true]);
    assert_eq!(r[1].generation, " It is $1,000.");
    assert_eq!(r[1].target, "1,000");
    assert_eq!(r[1].extracted, ["[invalid]", "$1,000."]);
    assert_eq!(r[1].scores, [false, true]);
    assert_eq!(r[2].scores, [false, false]);
    assert_eq!(report.scores[0].filter, "strict-match");
    assert!((report.scores[0].exact_match - 1.0 / 3.0).abs() < 1e-12);
    assert!((report.scores[1].exact_match - 2.0 / 3.0).abs() < 1e-12);
    // sample std of [1,1,0] is sqrt(1/3); over sqrt(3): 1/3.
    assert!((report.scores[1].stderr.unwrap() - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(mean_and_stderr(&[1.0]), (1.0, None));

    let err = gsm8k::evaluate(Variant::Gsm8kCot, &items, vec![], &until, |_| Ok(vec![])).unwrap_err();
    assert!(err.to_string().contains("0 prompts for 3 items"));
}

#[test]
fn python_random_sample_is_reproduced_draw_for_draw() {
    // python3 -c "import random; r=random.Random(1234); print(r.sample(range(7473),5));
    //   print(r.sample(range(7473),5)); print(r.sample(range(30),5)); print(r.sample(range(10),5));
    //   print(r.sample(range(100),8))"
    let mut r = keel::eval::py_random::PyRandom::new(1234);
    assert_eq!(r.sample(7473, 5), [6374, 3610, 957, 61, 742]);
    assert_eq!(r.sample(7473, 5), [7462, 6610, 4769, 286, 5501]);
    assert_eq!(r.sample(30, 5), [22, 2, 3, 24, 11]);
    assert_eq!(r.sample(10, 5), [3, 0, 8, 6, 7]);
    assert_eq!(r.sample(100, 8), [44, 82, 79, 61, 78, 59, 19, 11]);
    // The harness's draws for the first test problems of GSM8K (7473 train problems, 5 shots).
    assert_eq!(
        gsm8k::harness_shots(7473, 5, 2),
        vec![vec![6374, 3610, 957, 61, 742], vec![7462, 6610, 4769, 286, 5501]]
    );
}

mod common;

use common::eval::{keel, temp_dir};

fn gsm8k_files(dir: &std::path::Path) {
    let row = |a: u32, b: u32| {
        serde_json::json!({
            "question": format!("Tom has {a} apples and buys {b} more. How many apples?"),
            "answer": format!("{a}+{b}=<<{a}+{b}={}>>{}\n#### {}", a + b, a + b, a + b),
        })
        .to_string()
    };
    std::fs::create_dir_all(dir.join("main")).unwrap();
    let test: Vec<String> = (0..5).map(|i| row(i, 2 * i + 1)).collect();
    let train: Vec<String> = (0..7).map(|i| row(10 + i, i)).collect();
    std::fs::write(dir.join("main/test.jsonl"), test.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("main/train.jsonl"), train.join("\n") + "\n").unwrap();
}

fn samples(dir: &std::path::Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(dir.join("samples.csv")).unwrap();
    r.records().map(|x| x.unwrap().iter().map(String::from).collect()).collect()
}

/// `keel eval --bench gsm8k` end to end: prompts with the harness's exemplar draws, generations
/// independent of the batch size and equal to `keel generate` (greedy, one prompt at a time, on
/// the prompt's last `context - budget` tokens), and bad input exiting 2.
#[test]
fn gsm8k_generates_as_keel_generate_does_whatever_the_batch_size() {
    let root = temp_dir("gen-gsm8k");
    let run = common::tiny_run(&root.join("run"), "keel", 96);
    let data = root.join("data");
    gsm8k_files(&data);
    let eval = |bench: &str, batch: &str, out: &str, extra: &[&str]| {
        let o = keel()
            .args(["eval", "--quiet", "--bench", bench, "--run"])
            .arg(&run)
            .arg("--data")
            .arg(&data)
            .args(["--max-gen-toks", "24", "--batch-size", batch, "--out"])
            .arg(root.join(out))
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        samples(&root.join(out))
    };
    let one = eval("gsm8k", "1", "b1", &[]);
    let three = eval("gsm8k", "3", "b3", &[]);
    assert_eq!(one.len(), 5);
    assert_eq!(one, three, "generations depend on the batch size");

    // Each prompt holds the train problems Random(1234).sample(range(7), 5) draws, in order:
    // python3 -c "import random; r=random.Random(1234); [print(r.sample(range(7),5)) for _ in range(2)]"
    // [6, 3, 0, 4, 5] then [6, 4, 0, 5, 3].
    let train: Vec<Item> = gsm8k::read(&data.join("main/train.jsonl")).unwrap();
    let test: Vec<Item> = gsm8k::read(&data.join("main/test.jsonl")).unwrap();
    assert_eq!(gsm8k::harness_shots(7, 5, 2), vec![vec![6, 3, 0, 4, 5], vec![6, 4, 0, 5, 3]]);
    for (i, shots) in gsm8k::harness_shots(7, 5, 2).iter().enumerate() {
        let expected = gsm8k::fewshot_prompt_from_train(&train, shots, &test[i].question).unwrap();
        assert_eq!(one[i][1], expected);
    }

    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("b1/results.json")).unwrap()).unwrap();
    assert_eq!(results["questions"], 5);
    assert_eq!(results["shots"], 5);
    assert_eq!(results["max_gen_toks"], 24);
    // Every 5-shot prompt is longer than 96 - 24 bytes, so every one lost its head.
    assert_eq!(results["questions_truncated"], 5);
    let strict: f64 = one.iter().map(|r| if r[5] == "true" { 1.0 } else { 0.0 }).sum::<f64>() / 5.0;
    assert_eq!(results["exact_match_strict_match"].as_f64().unwrap(), strict);

    for row in one.iter().take(2) {
        let prompt = &row[1];
        let kept = &prompt[prompt.len() - (96 - 24)..];
        let o = keel()
            .args(["generate", "--run"])
            .arg(&run)
            .args(["--prompt", kept, "--temperature", "0", "--max-new-tokens", "24", "--stop", "Question:"])
            .args(["--stop", "</s>", "--stop", "<|im_end|>"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // `keel generate` prints the prompt, then the generation.
        let shown = String::from_utf8_lossy(&o.stdout).into_owned();
        let generation = shown.strip_prefix(kept).expect("the prompt is printed first");
        assert_eq!(generation.trim_end_matches('\n'), row[3].trim_end_matches('\n'));
    }

    // gsm8k_cot: the fixed exemplars; --shots 9 is more than it has.
    let cot = eval("gsm8k_cot", "2", "cot", &["--shots", "2"]);
    assert!(cot[0][1].starts_with("Q: There are 15 trees in the grove."));
    assert_eq!(cot[0][1].matches("\nA: ").count(), 2);
    for (args, needle) in [
        (vec!["--bench", "gsm8k_cot", "--shots", "9"], "gsm8k_cot has 8 fixed exemplars"),
        (vec!["--bench", "gsm8k", "--shots", "8"], "holds only 7 problems"),
        (vec!["--bench", "gsm8k", "--max-gen-toks", "96"], "leaves no room for the prompt"),
    ] {
        let o = keel()
            .args(["eval", "--quiet", "--run"])
            .arg(&run)
            .arg("--data")
            .arg(&data)
            .args(&args)
            .arg("--out")
            .arg(root.join("bad"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(needle), "{}", String::from_utf8_lossy(&o.stderr));
    }
    std::fs::remove_file(data.join("main/train.jsonl")).unwrap();
    let o = keel()
        .args(["eval", "--quiet", "--bench", "gsm8k", "--run"])
        .arg(&run)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no train split"), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&root).unwrap();
}
