//! `keel eval`: MMLU prompts and scoring against lm-evaluation-harness's format, the other
//! benchmarks' bookkeeping, and a real (tiny) model's scores against an independent computation.

mod common;

use common::eval::{keel, FakeLm};
use common::tiny_run;

use candle_core::{Device, Tensor};
use keel::cli::ShotSource;
use keel::data::tokenizer::KeelTokenizer;
use keel::eval::{self, mc, mmlu, ppl, synthetic, KeelLm, LanguageModel, Request, Scored};
use keel::model::Model;
use std::path::Path;
use std::process::Command;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mmlu");

fn subjects() -> Vec<mmlu::Subject> {
    mmlu::load_dir(Path::new(FIXTURE), &[]).unwrap()
}

#[test]
fn csv_quoting_commas_and_newlines_are_read_as_fields() {
    let s = subjects();
    let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["abstract_algebra", "high_school_geography", "virology", "world_religions"]);
    let aa = &s[0];
    assert_eq!(aa.test.len(), 3);
    assert_eq!(
        aa.test[1].question,
        "Statement 1 | Every group of order 4 is abelian.\nStatement 2 | Every cyclic group is abelian."
    );
    assert_eq!(aa.test[1].choices[0], "True, True");
    assert_eq!(aa.test[2].question, "Let p = \"x\"; what is p, quoted?");
    assert_eq!(aa.test[2].choices, ["\"x\"", "x", "'x'", "none of these"].map(String::from));
    assert_eq!(s[2].test[0].choices[0], "Herpesviridae, e.g. HSV-1");
    assert!(s[2].dev.is_none(), "virology has no dev split in the fixture");
    assert_eq!(s[3].test.iter().map(|q| q.answer).collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn prompts_match_the_harness_format_byte_for_byte() {
    let s = subjects();
    let aa = &s[0];
    let zero = mmlu::prompt(&aa.name, &[], &aa.test[0]);
    assert_eq!(
        zero,
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n\
         How many elements does the symmetric group S_3 have?\nA. 6\nB. 3\nC. 9\nD. 12\nAnswer:"
    );
    let dev = aa.dev.as_ref().unwrap();
    let two = mmlu::prompt(&aa.name, &dev[..2], &aa.test[1]);
    let expected = "The following are multiple choice questions (with answers) about abstract algebra.\n\n\
        Find the order of the element 2 in Z_5, the integers modulo 5, under addition.\nA. 5\nB. 2\nC. 10\nD. 1\nAnswer: A\n\n\
        Which of the following is a group under multiplication?\nA. the integers\nB. the nonzero rationals\nC. the even integers, with 0\nD. the natural numbers\nAnswer: B\n\n\
        Statement 1 | Every group of order 4 is abelian.\nStatement 2 | Every cyclic group is abelian.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer:";
    assert_eq!(two, expected);
    // 5 shots requested from a dev split of 2: all of dev, in file order.
    let mut lm = FakeLm::new(100_000);
    let opts =
        mmlu::Options { shots: 5, shots_from: ShotSource::Dev, overflow: mmlu::Overflow::TruncateLeft, limit: None };
    let err = mmlu::build(lm.tokenizer(), lm.max_len(), &s, &opts).unwrap_err().to_string();
    assert!(err.contains("virology has no dev split") && err.contains("--shots-from"), "{err}");
    let only_aa = vec![aa.clone()];
    let (items, reqs) = mmlu::build(lm.tokenizer(), lm.max_len(), &only_aa, &opts).unwrap();
    assert_eq!(items[1].context, expected);
    assert_eq!(items[1].shots_used, 2);
    assert_eq!(reqs.len(), 4 * 3);
    let _ = lm.score(&reqs, &mut |_| {}).unwrap();
}

#[test]
fn five_shot_prompt_matches_the_harness_byte_for_byte() {
    let s = subjects();
    let geo = vec![s[1].clone()];
    let opts =
        mmlu::Options { shots: 5, shots_from: ShotSource::Dev, overflow: mmlu::Overflow::TruncateLeft, limit: None };
    let (items, reqs) = mmlu::build(&KeelTokenizer::byte(), 100_000, &geo, &opts).unwrap();
    let expected = "The following are multiple choice questions (with answers) about high school geography.\n\n\
        Which river is the longest?\nA. Nile\nB. Thames\nC. Seine\nD. Rhine\nAnswer: A\n\n\
        Which of these is a desert, by rainfall?\nA. Amazon basin\nB. Sahara\nC. Siberia\nD. Bavaria\nAnswer: B\n\n\
        What is the capital of Australia?\nA. Sydney\nB. Melbourne\nC. Canberra\nD. Perth\nAnswer: C\n\n\
        Which ocean is the largest?\nA. Atlantic\nB. Indian\nC. Arctic\nD. Pacific\nAnswer: D\n\n\
        Mount Everest lies in which range?\nA. Himalaya\nB. Andes\nC. Alps\nD. Rockies\nAnswer: A\n\n\
        Which line divides the Earth into northern and southern hemispheres?\nA. the prime meridian\nB. the equator\nC. the Tropic of Cancer\nD. the date line\nAnswer:";
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].context, expected, "the first five dev questions, in file order; the sixth is not used");
    assert_eq!((items[0].shots_used, items[0].shots_dropped, items[0].shots_source), (5, 0, "dev"));
    for (r, letter) in reqs.iter().zip(["A", "B", "C", "D"]) {
        let text: String = r.tokens.iter().map(|&t| t as u8 as char).collect();
        assert_eq!(text, format!("{expected} {letter}"));
        assert_eq!(r.cont_start, expected.len());
    }
}

#[test]
fn continuation_split_follows_the_harness() {
    let tok = KeelTokenizer::byte();
    let (t, start) = eval::encode_pair(&tok, "Answer:", " A").unwrap();
    assert_eq!(t, b"Answer: A".iter().map(|&b| b as u32).collect::<Vec<_>>());
    assert_eq!(start, 7);
    // Trailing whitespace of the context moves to the continuation.
    let (t2, start2) = eval::encode_pair(&tok, "Answer: ", "A").unwrap();
    assert_eq!((t2, start2), (t, 7));
    // A BPE tokenizer: the continuation is whole[len(enc(context))..], as the harness slices it.
    let docs = (0..200).map(|i| format!("Answer: A{i} Answer: B Answer: C\n"));
    let bpe = KeelTokenizer::train_bpe(300, docs).unwrap();
    let (whole, start) = eval::encode_pair(&bpe, "Question?\nAnswer:", " B").unwrap();
    let ctx = bpe.encode("Question?\nAnswer:").unwrap();
    assert_eq!(start, ctx.len());
    assert_eq!(whole, bpe.encode("Question?\nAnswer: B").unwrap());
    assert_eq!(bpe.decode(&whole[start..]).unwrap(), " B");
    // Empty context: the end-of-text token stands in.
    let (t3, s3) = eval::encode_pair(&bpe, "", "hello").unwrap();
    assert_eq!(t3[0], bpe.eot.unwrap());
    assert_eq!(s3, 1);
}

#[test]
fn with_drop_shots_shots_are_dropped_from_the_front_then_the_prompt_is_left_truncated() {
    let s = subjects();
    let aa = vec![s[0].clone()];
    let opts =
        mmlu::Options { shots: 2, shots_from: ShotSource::Dev, overflow: mmlu::Overflow::DropShots, limit: Some(1) };
    let lens: Vec<usize> = (0..=2)
        .map(|k| mmlu::prompt("abstract_algebra", &aa[0].dev.as_ref().unwrap()[2 - k..], &aa[0].test[0]).len() + 2)
        .collect();
    // Room for exactly one shot: the first (oldest) is dropped.
    let (items, reqs) = mmlu::build(&KeelTokenizer::byte(), lens[1] - 1, &aa, &opts).unwrap();
    assert_eq!((items[0].shots_used, items[0].shots_dropped, items[0].truncated_tokens), (1, 1, 0));
    assert!(items[0].context.contains("Which of the following is a group") && !items[0].context.contains("Z_5"));
    assert!(reqs.iter().all(|r| r.tokens.len() == lens[1]));
    // Room for everything.
    let (items, _) = mmlu::build(&KeelTokenizer::byte(), lens[2] - 1, &aa, &opts).unwrap();
    assert_eq!((items[0].shots_used, items[0].shots_dropped), (2, 0));
    // Too small even for zero shots: all shots dropped, then the front cut off.
    let (items, reqs) = mmlu::build(&KeelTokenizer::byte(), 40, &aa, &opts).unwrap();
    assert_eq!((items[0].shots_used, items[0].shots_dropped), (0, 2));
    assert_eq!(items[0].truncated_tokens, lens[0] - 41);
    for (r, letter) in reqs.iter().zip(["A", "B", "C", "D"]) {
        assert_eq!(r.tokens.len(), 41);
        assert_eq!(r.cont_start, 39);
        assert_eq!(&r.tokens[39..], &[b' ' as u32, letter.as_bytes()[0] as u32]);
    }
}

#[test]
fn test_split_exemplars_are_excluded_from_scoring() {
    let s = subjects();
    let wr = vec![mmlu::Subject { dev: None, ..s[3].clone() }];
    let opts =
        mmlu::Options { shots: 1, shots_from: ShotSource::Test, overflow: mmlu::Overflow::TruncateLeft, limit: None };
    let (items, _) = mmlu::build(&KeelTokenizer::byte(), 10_000, &wr, &opts).unwrap();
    assert_eq!(items.len(), 1, "the exemplar is not scored");
    assert_eq!(items[0].question.row, 1);
    assert_eq!(items[0].shots_source, "test");
    assert!(items[0]
        .context
        .contains("In which city is the Kaaba?\nA. Medina\nB. Mecca\nC. Jerusalem\nD. Cairo\nAnswer: B\n\n"));
    let none =
        mmlu::Options { shots: 1, shots_from: ShotSource::None, overflow: mmlu::Overflow::TruncateLeft, limit: None };
    let (items, _) = mmlu::build(&KeelTokenizer::byte(), 10_000, &wr, &none).unwrap();
    assert_eq!((items.len(), items[0].shots_used, items[0].shots_source), (2, 0, "none"));
}

#[test]
fn accuracy_is_micro_averaged_overall_and_per_category() {
    let q = |subject: &str, answer: usize| mmlu::Item {
        question: mmlu::Question {
            subject: subject.into(),
            row: 0,
            question: "q".into(),
            choices: ["a", "b", "c", "d"].map(String::from),
            answer,
        },
        context: String::new(),
        shots_used: 0,
        shots_dropped: 0,
        truncated_tokens: 0,
        shots_source: "none",
    };
    // Scores favour A except the last question, which ties A and C (the first wins, as np.argmax).
    let sc = |lls: [f64; 4]| lls.map(|l| Scored { logprob: l, greedy: false, n_tokens: 1 }).to_vec();
    let items = vec![q("anatomy", 0), q("anatomy", 0), q("anatomy", 0), q("virology", 1), q("philosophy", 2)];
    let mut scores = Vec::new();
    for _ in 0..4 {
        scores.extend(sc([-1.0, -2.0, -3.0, -4.0]));
    }
    scores.extend(sc([-1.0, -2.0, -1.0, -4.0]));
    let (answered, summary) = mmlu::score(&items, &scores);
    assert_eq!(answered.iter().map(|a| a.predicted).collect::<Vec<_>>(), ["A", "A", "A", "A", "A"]);
    assert_eq!((summary.overall.correct, summary.overall.total), (3, 5));
    assert!((summary.overall.accuracy - 0.6).abs() < 1e-12, "micro, not the subject mean (1/3)");
    assert_eq!(summary.subjects["anatomy"].accuracy, 1.0);
    assert_eq!(summary.subjects["virology"].accuracy, 0.0);
    assert_eq!(summary.categories["stem"].total, 3, "the harness puts anatomy in STEM");
    assert_eq!(summary.categories["other"].total, 1);
    assert_eq!(summary.categories["humanities"].accuracy, 0.0);
    assert_eq!(mmlu::category("high_school_government_and_politics"), "social_sciences");
}

/// log p(tokens[cont_start..]) from one unpadded forward pass per request, in f64 on the host.
fn independent_logprob(model: &Model, r: &Request) -> (f64, bool) {
    let n = r.tokens.len() - 1;
    let input = Tensor::from_vec(r.tokens[..n].to_vec(), (1, n), &Device::Cpu).unwrap();
    let logits: Vec<Vec<f32>> = model.forward(&input).unwrap().to_vec2().unwrap();
    let mut total = 0.0;
    let mut greedy = true;
    for (p, logits) in logits.iter().enumerate().take(n).skip(r.cont_start - 1) {
        let row: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        let target = r.tokens[p + 1] as usize;
        total += row[target] - lse;
        greedy &= row[target] == max;
    }
    (total, greedy)
}

#[test]
fn a_real_model_scores_as_an_independent_computation_and_mmlu_predicts_its_argmax() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_run(&tmp.path().join("run"), "keel", 400);
    let run = eval::load_run(&dir, &Device::Cpu).unwrap();
    let mut lm = KeelLm::new(run, 3);
    let s = subjects();
    let opts =
        mmlu::Options { shots: 1, shots_from: ShotSource::Test, overflow: mmlu::Overflow::TruncateLeft, limit: None };
    let (items, reqs) = mmlu::build(lm.tokenizer(), lm.max_len(), &s, &opts).unwrap();
    assert!(reqs.iter().map(|r| r.tokens.len()).collect::<std::collections::BTreeSet<_>>().len() > 3, "mixed lengths");
    let scores = lm.score(&reqs, &mut |_| {}).unwrap();
    for (r, sc) in reqs.iter().zip(&scores) {
        let (lp, greedy) = independent_logprob(&lm.run.model, r);
        assert!((lp - sc.logprob).abs() < 1e-4, "batched {} vs independent {lp}", sc.logprob);
        assert_eq!(greedy, sc.greedy);
        assert_eq!(sc.n_tokens, 2, "' A' is two bytes");
    }
    let (results, answered) = mmlu::evaluate(&mut lm, &s, &opts, Path::new(FIXTURE), &mut |_, _| {}).unwrap();
    assert_eq!(answered.len(), items.len());
    let mut correct = 0;
    for (a, chunk) in answered.iter().zip(reqs.chunks(4)) {
        let lls: Vec<f64> = chunk.iter().map(|r| independent_logprob(&lm.run.model, r).0).collect();
        let expect = mmlu::argmax(&lls);
        assert_eq!(a.predicted, mmlu::LETTERS[expect], "{}", a.id);
        correct += (a.predicted == a.gold) as usize;
    }
    assert_eq!(results.summary.overall.correct, correct);
    assert_eq!(results.questions, items.len());
}

#[test]
fn perplexity_windows_score_every_token_once() {
    for (n, t, s) in [(2, 4, 2), (10, 4, 2), (11, 4, 3), (100, 16, 16), (100, 16, 1), (17, 16, 8)] {
        let w = ppl::windows(n, t, s);
        let mut scored = vec![0; n];
        for &(start, end, first) in &w {
            assert!(end - start <= t, "inputs fit the context");
            assert!(first > start, "each scored token has a prediction in the window");
            assert!(first == 1 || first - start >= t - s, "context of at least T - S");
            for c in &mut scored[first..=end] {
                *c += 1;
            }
        }
        assert_eq!(scored[0], 0);
        assert!(scored[1..].iter().all(|&c| c == 1), "n={n} t={t} s={s}: {scored:?}");
    }
    // A model that gives every token probability 1/256 has perplexity 256 and 8 bits per byte.
    struct Uniform(KeelTokenizer);
    impl LanguageModel for Uniform {
        fn describe(&self) -> String {
            "uniform".into()
        }
        fn max_len(&self) -> usize {
            16
        }
        fn tokenizer(&self) -> &KeelTokenizer {
            &self.0
        }
        fn score(&mut self, r: &[Request], _: &mut dyn FnMut(usize)) -> anyhow::Result<Vec<Scored>> {
            Ok(r.iter()
                .map(|r| {
                    let n = r.tokens.len() - r.cont_start;
                    Scored { logprob: -(n as f64) * 256f64.ln(), greedy: false, n_tokens: n }
                })
                .collect())
        }
    }
    let text: Vec<u32> =
        "the quick brown fox jumps over the lazy dog, again and again".bytes().map(u32::from).collect();
    let p = ppl::perplexity(&mut Uniform(KeelTokenizer::byte()), &text, None, None, &mut |_, _| {}).unwrap();
    assert_eq!(p.tokens_scored, text.len() - 1);
    assert_eq!(p.bytes_scored, text.len() - 1);
    assert!((p.perplexity - 256.0).abs() < 1e-9 && (p.bits_per_byte - 8.0).abs() < 1e-12);
    assert_eq!(p.stride, 8);
}

#[test]
fn removing_a_sublayer_equals_zeroing_its_output_projection() {
    let tmp = tempfile::tempdir().unwrap();
    for placement in ["keel", "pre_ln", "post_ln"] {
        let dir = tiny_run(&tmp.path().join(placement), placement, 32);
        let run = eval::load_run(&dir, &Device::Cpu).unwrap();
        let tokens =
            Tensor::from_vec((0..24u32).map(|i| (i * 37) % 256).collect::<Vec<_>>(), (2, 12), &Device::Cpu).unwrap();
        let full = run.model.hidden(&tokens).unwrap();
        for l in [1, 2] {
            let removed = run.model.hidden_removing(&tokens, Some(l)).unwrap();
            assert!(common::max_rel_diff(&removed, &full) > 1e-3, "{placement}: removing {l} changes the output");
            // The same model with sub-layer l's output weights zeroed: F = 0 exactly.
            let zeroed = eval::load_run(&dir, &Device::Cpu).unwrap();
            let out_name =
                if l % 2 == 0 { format!("blocks.{}.attn.wo", l / 2) } else { format!("blocks.{}.ffn.w_out", l / 2) };
            let p = zeroed.model.params.iter().find(|p| p.name == out_name).unwrap();
            p.var.set(&p.var.as_tensor().zeros_like().unwrap()).unwrap();
            let reference = zeroed.model.hidden(&tokens).unwrap();
            assert!(common::max_rel_diff(&removed, &reference) < 1e-5, "{placement} sub-layer {l}");
        }
        assert!(common::max_rel_diff(&run.model.hidden_removing(&tokens, None).unwrap(), &full) == 0.0);
    }
}

#[test]
fn jsonl_and_bigbench_multiple_choice() {
    let tmp = tempfile::tempdir().unwrap();
    let jsonl = tmp.path().join("set.jsonl");
    std::fs::write(
        &jsonl,
        concat!(
            r#"{"question": "Pick one", "choices": ["aaaa", "b"], "answer": 1}"#,
            "\n",
            r#"{"context": "Raw context:", "choices": ["zz", "a"], "answer": "a"}"#,
            "\n"
        ),
    )
    .unwrap();
    let items = mc::read_jsonl(&jsonl).unwrap();
    assert_eq!(items[0].context, "Question: Pick one\nAnswer:");
    assert_eq!(items[1].correct, vec![1]);
    // FakeLm: log p = -sum(bytes)/100. " aaaa" = -(32+4*97)/100 = -4.2, " b" = -1.3: acc picks b.
    // Per character: -4.2/4 = -1.05 vs -1.3: acc_norm picks aaaa.
    let mut lm = FakeLm::new(1000);
    let (r, answered) = mc::evaluate(&mut lm, "mc", "set", &items, 0, None, &mut |_, _| {}).unwrap();
    assert_eq!((answered[0].predicted, answered[0].predicted_norm), (1, 0));
    assert_eq!((r.acc, r.acc_norm), (1.0, 0.5));
    assert_eq!(lm.seen[0].tokens, b"Question: Pick one\nAnswer: aaaa".iter().map(|&b| b as u32).collect::<Vec<_>>());
    // One shot: the first item becomes the exemplar and is not scored.
    let mut lm = FakeLm::new(1000);
    let (r, _) = mc::evaluate(&mut lm, "mc", "set", &items, 1, None, &mut |_, _| {}).unwrap();
    assert_eq!(r.questions, 1);
    let ctx: String = lm.seen[0].tokens[..lm.seen[0].cont_start].iter().map(|&t| t as u8 as char).collect();
    assert_eq!(ctx, "Question: Pick one\nAnswer: b\n\nRaw context:");

    let task = tmp.path().join("task");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(
        task.join("task.json"),
        r#"{"name": "t", "examples": [{"input": "2+2?", "target_scores": {"4": 1, "5": 0}},
            {"input": "gen only", "target": "x"}]}"#,
    )
    .unwrap();
    let items = mc::read_bigbench(&task).unwrap();
    assert_eq!(items.len(), 1, "examples without target_scores are skipped");
    assert_eq!(items[0].context, "\nQ: 2+2?\n  choice: 4\n  choice: 5\nA: ");
    assert_eq!(items[0].correct, vec![0]);
    let mut lm = FakeLm::new(1000);
    mc::evaluate(&mut lm, "bb", "t", &items, 0, None, &mut |_, _| {}).unwrap();
    let r = &lm.seen[0];
    assert_eq!(&r.tokens[r.cont_start..], &[b' ' as u32, b'4' as u32], "the prefix's trailing space moves over");
}

#[test]
fn synthetic_examples_are_seeded_and_scored_by_greedy_match() {
    let a = synthetic::examples(1234, 50);
    assert_eq!(a.len(), 50);
    assert_eq!(format!("{:?}", a), format!("{:?}", synthetic::examples(1234, 50)));
    assert_ne!(format!("{:?}", a), format!("{:?}", synthetic::examples(1, 50)));
    // FakeLm calls a continuation greedy when all its bytes are below 100: digits, "no\n", "yes\n"
    // are; lowercase answers of rev/copy ('e' = 101 and up, mostly) are not.
    let mut lm = FakeLm::new(1000);
    let (outcomes, by_task) = synthetic::evaluate(&mut lm, &a, &mut |_, _| {}).unwrap();
    for o in &outcomes {
        let expect = format!("{}\n", o.answer).bytes().all(|b| b < 100);
        assert_eq!(o.correct, expect, "{o:?}");
    }
    assert_eq!(by_task["all"].total, 50);
    assert_eq!(by_task["add"].accuracy, 1.0);
}

#[test]
fn eval_cli_end_to_end_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(&tmp.path().join("run"), "keel", 64);
    let five_shot = || {
        let args = ["eval", "--bench", "mmlu", "--quiet", "--shots", "5", "--shots-from", "test", "--data", FIXTURE];
        keel().args(args).arg("--run").arg(&run).output().unwrap()
    };
    let out = five_shot();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval/mmlu-5shot/results.json")).unwrap()).unwrap();
    assert_eq!(res["questions"], 7, "virology's single question cannot spare an exemplar and stays scored");
    assert_eq!(res["shots_source"]["virology"], "none");
    assert_eq!(res["shots_source"]["abstract_algebra"], "dev");
    let csv = std::fs::read_to_string(run.join("eval/mmlu-5shot/questions.csv")).unwrap();
    assert!(
        csv.starts_with("id,subject,gold,predicted,ll_a,ll_b,ll_c,ll_d,shots,shots_dropped,truncated_tokens,prompt\n")
    );
    // The last column is the full context each question's answers were scored after (quoted: it
    // holds newlines), as lm-evaluation-harness's --log_samples records it.
    let rows: Vec<csv::StringRecord> = csv::Reader::from_reader(csv.as_bytes()).records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 7);
    let opts =
        mmlu::Options { shots: 5, shots_from: ShotSource::Test, overflow: mmlu::Overflow::TruncateLeft, limit: None };
    let (items, _) = mmlu::build(&KeelTokenizer::byte(), 64, &subjects(), &opts).unwrap();
    for (row, item) in rows.iter().zip(&items) {
        assert_eq!(&row[0], format!("{}/{}", item.question.subject, item.question.row));
        assert_eq!(&row[11], item.context);
    }
    assert!(rows[0][11]
        .starts_with("The following are multiple choice questions (with answers) about abstract algebra.\n\n"));
    // Results are never overwritten without --force.
    let again = five_shot();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let removal = keel()
        .args(["eval", "--bench", "layer-removal", "--quiet", "--limit", "2", "--run"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(removal.status.success(), "{}", String::from_utf8_lossy(&removal.stderr));
    let rows = std::fs::read_to_string(run.join("eval/layer-removal/layer_removal.csv")).unwrap();
    assert_eq!(rows.lines().count(), 1 + 1 + 4, "header, full model, 4 sub-layers");
    assert!(run.join("eval/layer-removal/layer_removal.png").exists());

    // Bad MMLU folders: each names the file and row, exit status 2.
    let bad = tmp.path().join("bad");
    let cases: [(&str, &str, &[&str]); 4] = [
        ("", "", &["has no test/ folder"]),
        ("test/x_test.csv", "q,a,b,c,A\n", &["x_test.csv, row 1", "5 fields"]),
        (
            "test/x_test.csv",
            "q,a,b,c,d,A\n\"q2\",a,b,c,d,E\n",
            &["x_test.csv, row 2", "\"E\" is not one of A, B, C, D"],
        ),
        ("test/x_test.csv", "", &["x_test.csv holds no questions"]),
    ];
    for (file, content, expect) in cases {
        let _ = std::fs::remove_dir_all(&bad);
        std::fs::create_dir_all(&bad).unwrap();
        if !file.is_empty() {
            std::fs::create_dir_all(bad.join("test")).unwrap();
            std::fs::write(bad.join(file), content).unwrap();
        }
        let o = keel()
            .args(["eval", "--bench", "mmlu", "--quiet", "--out"])
            .arg(tmp.path().join("o"))
            .arg("--data")
            .arg(&bad)
            .arg("--run")
            .arg(&run)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        for e in expect {
            assert!(err.contains(e), "{err} lacks {e}");
        }
        assert!(!err.contains("panicked"));
    }
    for (args, expect) in [
        (vec!["--bench", "mmlu"], "needs --data"),
        (vec!["--bench", "ppl", "--data", "/no/such/file"], "no such file"),
        (vec!["--bench", "mc-jsonl", "--data", FIXTURE], "cannot read"),
    ] {
        let o = keel().arg("eval").args(&args).arg("--run").arg(&run).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expect), "{err}");
    }
    let o = keel().args(["eval", "--bench", "ppl", "--run", "/no/such/run"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}

/// `--data hf:ORG/NAME`: MMLU's layout from a dataset repo in the hub cache (under `data/` here),
/// and the data issue's clear message when it is neither cached nor reachable.
#[test]
fn mmlu_from_the_hub_cache_and_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(&tmp.path().join("run"), "pre_ln", 64);
    let hf = tmp.path().join("hf_home");
    let repo = hf.join("hub/datasets--test-org--mmlu");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    let snap = repo.join("snapshots/0123abcd/data");
    for split in ["dev", "test"] {
        std::fs::create_dir_all(snap.join(split)).unwrap();
        for f in std::fs::read_dir(Path::new(FIXTURE).join(split)).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), snap.join(split).join(f.file_name())).unwrap();
        }
    }
    let out = keel()
        .args([
            "eval",
            "--bench",
            "mmlu",
            "--quiet",
            "--data",
            "hf:test-org/mmlu",
            "--subjects",
            "world_religions,virology",
        ])
        .args(["--out"])
        .arg(tmp.path().join("hub-out"))
        .arg("--run")
        .arg(&run)
        .env("HF_HOME", &hf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("hub-out/results.json")).unwrap()).unwrap();
    assert_eq!(res["questions"], 3, "two world_religions questions and one virology question");
    assert_eq!(res["summary"]["subjects"].as_object().unwrap().len(), 2);
    let out = keel()
        .args(["eval", "--bench", "mmlu", "--quiet", "--data", "hf:test-org/absent", "--run"])
        .arg(&run)
        .env("HF_HOME", tmp.path().join("empty"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in ["dataset test-org/absent", "Hugging Face hub", "not in the cache", "HF_HOME"] {
        assert!(err.contains(needle), "{err} lacks {needle}");
    }
}

/// The harness's rule for a request longer than the context (lm-eval 0.4.13, HFLM
/// `_loglikelihood_tokens`): input `(context_enc + continuation_enc)[-(max_length + 1):][:-1]`,
/// the last `len(continuation_enc)` positions scored. Computed here from the prompt text alone.
fn harness_truncation(context: &str, answer: &str, max_len: usize) -> Request {
    let whole: Vec<u32> = format!("{context}{answer}").bytes().map(u32::from).collect();
    let keep = whole.len().min(max_len + 1);
    let tokens = whole[whole.len() - keep..].to_vec();
    Request { cont_start: tokens.len() - answer.len(), tokens }
}

/// `keel eval --bench mmlu --shots 5` on a model with a 64-token context: every 5-shot prompt
/// overflows, and by default each of the four answers is scored on the harness's left-truncated
/// sequence (checked through the binary against the model scoring that sequence directly);
/// `--overflow drop-shots` drops exemplars instead and says so in results.json.
#[test]
fn overflowing_five_shot_prompts_are_left_truncated_as_the_harness_does() {
    let tmp = tempfile::tempdir().unwrap();
    let max_len = 64;
    let run = tiny_run(&tmp.path().join("run"), "pre_ln", max_len);
    let eval = |extra: &[&str], out: &str| {
        let args = ["eval", "--bench", "mmlu", "--quiet", "--shots", "5", "--subjects", "high_school_geography"];
        let o = keel()
            .args(args)
            .args(extra)
            .arg("--data")
            .arg(FIXTURE)
            .arg("--out")
            .arg(tmp.path().join(out))
            .arg("--run")
            .arg(&run)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let res: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join(out).join("results.json")).unwrap()).unwrap();
        let csv = std::fs::read_to_string(tmp.path().join(out).join("questions.csv")).unwrap();
        let first = csv::Reader::from_reader(csv.as_bytes()).records().next().unwrap().unwrap();
        let row: Vec<String> = first.iter().map(String::from).collect();
        (res, row)
    };
    let model = eval::load_run(&run, &Device::Cpu).unwrap().model;
    let geo = &subjects()[1];
    let dev = geo.dev.as_ref().unwrap();
    let context = mmlu::prompt(&geo.name, &dev[..5], &geo.test[0]);
    assert!(context.len() + 2 > max_len + 1, "the 5-shot prompt overflows");

    let (res, row) = eval(&[], "default");
    assert_eq!(res["overflow"], "truncate-left");
    assert_eq!((res["questions_truncated"].as_u64(), res["questions_with_dropped_shots"].as_u64()), (Some(1), Some(0)));
    for (i, letter) in ["A", "B", "C", "D"].iter().enumerate() {
        let r = harness_truncation(&context, &format!(" {letter}"), max_len);
        assert_eq!((r.tokens.len(), r.cont_start), (max_len + 1, max_len - 1));
        let (want, _) = independent_logprob(&model, &r);
        let got: f64 = row[4 + i].parse().unwrap();
        assert!((got - want).abs() < 1e-4, "{letter}: keel {got}, harness rule {want}");
    }
    assert_eq!((row[8].as_str(), row[9].as_str()), ("5", "0"), "all five shots are kept");
    assert_eq!(row[11], context, "the prompt column holds the context before truncation");

    let (res, row) = eval(&["--overflow", "drop-shots"], "drop");
    assert_eq!(res["overflow"], "drop-shots");
    assert_eq!(res["questions_with_dropped_shots"], 1);
    assert_eq!((row[8].as_str(), row[9].as_str()), ("0", "5"), "a 64-token context holds no exemplar");
    let zero_shot = mmlu::prompt(&geo.name, &[], &geo.test[0]);
    assert_eq!(row[11], zero_shot, "the prompt column holds the context actually scored");
    let r = harness_truncation(&zero_shot, " A", max_len);
    let got: f64 = row[4].parse().unwrap();
    assert!((got - independent_logprob(&model, &r).0).abs() < 1e-4);
}

#[test]
fn fit_is_the_harness_rule_and_refuses_an_answer_longer_than_the_context() {
    let tokens: Vec<u32> = (0..20).collect();
    // Fits: untouched.
    assert_eq!(eval::fit(tokens.clone(), 15, 19).unwrap(), (Request { tokens: tokens.clone(), cont_start: 15 }, 0));
    // Overflows: the last max_len + 1 tokens, the continuation's 5 at the end.
    let (r, cut) = eval::fit(tokens.clone(), 15, 10).unwrap();
    assert_eq!((r.tokens, r.cont_start, cut), ((9..20).collect::<Vec<u32>>(), 6, 9));
    // A continuation of exactly max_len tokens keeps one context token.
    let (r, _) = eval::fit(tokens.clone(), 10, 10).unwrap();
    assert_eq!((r.tokens.len(), r.cont_start), (11, 1));
    // Longer than the context: refused, as the harness's assertion refuses it.
    let e = eval::fit(tokens, 5, 10).unwrap_err();
    assert!(e.downcast_ref::<keel::InputError>().is_some());
    assert!(e.to_string().contains("15 tokens does not fit the model's context of 10"), "{e}");
}

/// A loopback "hub" that accepts connections and never answers, and counts them: a keel that
/// tries the network either hangs on it (killed after `limit`) or is seen connecting.
struct SilentHub {
    listener: std::net::TcpListener,
}

impl SilentHub {
    fn new() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        SilentHub { listener }
    }
    fn endpoint(&self) -> String {
        format!("http://{}", self.listener.local_addr().unwrap())
    }
    fn connections(&self) -> usize {
        std::iter::from_fn(|| self.listener.accept().ok()).count()
    }
}

/// Runs `cmd`, killing it after 20 s; returns its output and how long it took.
fn run_bounded(mut cmd: Command) -> (std::process::Output, std::time::Duration) {
    let start = std::time::Instant::now();
    let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    while child.try_wait().unwrap().is_none() && start.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    (child.wait_with_output().unwrap(), start.elapsed())
}

/// `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE`, as huggingface_hub reads them): the cache only.
/// A miss is exit 2 saying offline and not cached, at once and without a connection; a parquet
/// MMLU (the hub's cais/mmlu layout) is refused with the conversion command.
#[test]
fn hub_offline_mode_uses_the_cache_only_and_parquet_mmlu_gets_the_conversion() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(&tmp.path().join("run"), "pre_ln", 64);
    let empty = tmp.path().join("empty_home");
    std::fs::create_dir_all(&empty).unwrap();
    let hub = SilentHub::new();
    let offline_cases: [(&str, &str); 3] =
        [("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "yes"), ("HF_HUB_OFFLINE", "TRUE")];
    for (var, value) in offline_cases {
        let mut cmd = keel();
        cmd.args(["eval", "--bench", "mmlu", "--quiet", "--data", "hf:test-org/absent", "--run"])
            .arg(&run)
            .env("HF_HOME", &empty)
            .env("HF_ENDPOINT", hub.endpoint())
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("TRANSFORMERS_OFFLINE")
            .env(var, value);
        let (out, took) = run_bounded(cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {err}");
        for needle in ["dataset test-org/absent", "not in the Hugging Face hub cache", var, "offline", "HF_HOME"] {
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
        assert!(took < std::time::Duration::from_secs(10), "{var}: took {took:?}");
        assert_eq!(hub.connections(), 0, "{var}={value}: keel connected to the hub");
    }
    // `keel eval ARGS` offline with `home` as HF_HOME: exit 2, and its stderr.
    let offline_refusal = |args: &[&str], home: &Path| -> String {
        let mut cmd = keel();
        cmd.args(args)
            .env("HF_HOME", home)
            .env("HF_ENDPOINT", hub.endpoint())
            .env_remove("TRANSFORMERS_OFFLINE")
            .env("HF_HUB_OFFLINE", "1");
        let (out, _) = run_bounded(cmd);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{err}");
        err
    };
    // The same for a model (--hf-model ORG/NAME).
    let err = offline_refusal(&["eval", "--bench", "synthetic", "--quiet", "--hf-model", "test-org/tiny"], &empty);
    assert!(err.contains("test-org/tiny/config.json") && err.contains("HF_HUB_OFFLINE"), "{err}");
    assert_eq!(hub.connections(), 0);

    // cais/mmlu's own layout in the cache: parquet, refused with the conversion command.
    let hf = tmp.path().join("hf_home");
    let snap = hf.join("hub/datasets--cais--mmlu/snapshots/0123abcd");
    std::fs::create_dir_all(hf.join("hub/datasets--cais--mmlu/refs")).unwrap();
    std::fs::write(hf.join("hub/datasets--cais--mmlu/refs/main"), "0123abcd").unwrap();
    for split in ["dev", "validation", "test"] {
        std::fs::create_dir_all(snap.join("abstract_algebra")).unwrap();
        std::fs::write(snap.join(format!("abstract_algebra/{split}-00000-of-00001.parquet")), b"PAR1").unwrap();
    }
    let run_arg = run.display().to_string();
    let err =
        offline_refusal(&["eval", "--bench", "mmlu", "--quiet", "--data", "hf:cais/mmlu", "--run", &run_arg], &hf);
    for needle in ["cais/mmlu stores MMLU as parquet", "scripts/mmlu_parquet_to_csv.py", "--data data/mmlu"] {
        assert!(err.contains(needle), "{err} lacks {needle}");
    }
    assert!(err.contains(&snap.display().to_string()), "the cached snapshot is the source: {err}");
    assert_eq!(hub.connections(), 0);
}
