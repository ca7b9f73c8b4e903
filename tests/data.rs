//! Data preparation end to end, offline: every tokenizer kind round-trips text through shards,
//! the hub path works from a pre-filled cache and fails clearly without one, the sampler stays in
//! bounds, splits never share a document, and corrupt data is refused.

use keel::data::documents::{expand, InvalidUtf8};
use keel::data::prepare::{load_prepared, open_prepared, prepare, read_meta, PrepareOptions};
use keel::data::shard::Shard;
use keel::data::tokenizer::{byte_to_char, KeelTokenizer};
use keel::data::{Sampler, Tokens};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small corpus with several documents, Unicode, and a JSONL file.
fn write_corpus(dir: &Path) -> String {
    let mut text = String::new();
    for i in 0..60 {
        text.push_str(&format!(
            "Document {i}: the quick brown fox, naïve café, {} — ünïcödé ✓\nsecond line {}\n\n",
            i * 7,
            i % 5
        ));
    }
    std::fs::write(dir.join("corpus.txt"), &text).unwrap();
    text
}

fn opts(tokenizer: &str, val_fraction: f64, shard_tokens: u64) -> PrepareOptions {
    PrepareOptions {
        tokenizer: tokenizer.into(),
        val_fraction,
        seed: 3,
        on_invalid_utf8: InvalidUtf8::Fail,
        shard_tokens,
        progress: false,
    }
}

fn prepare_into(inputs: &[PathBuf], out: &Path, o: &PrepareOptions) {
    std::fs::create_dir_all(out).unwrap();
    let specs: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    prepare(&expand(&specs).unwrap(), out, o).unwrap();
}

/// Decodes all train tokens of a prepared folder with its own tokenizer.json.
fn decode_train(dir: &Path) -> String {
    let meta = read_meta(dir).unwrap();
    let tok = KeelTokenizer::from_prepared(&dir.join("tokenizer.json"), &meta.tokenizer).unwrap();
    tok.decode(&train_tokens(dir)).unwrap()
}

fn train_tokens(dir: &Path) -> Vec<u32> {
    Tokens::Shards(open_prepared(dir).unwrap().train).to_vec()
}

/// A GPT-2 style encoder.json + vocab.bpe: the byte alphabet plus two merges.
fn write_gpt2_pair(dir: &Path) {
    let chars = byte_to_char();
    let mut vocab = serde_json::Map::new();
    for (b, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), serde_json::json!(b));
    }
    vocab.insert("th".into(), serde_json::json!(256));
    vocab.insert("ca".into(), serde_json::json!(257));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("encoder.json"), serde_json::Value::Object(vocab).to_string()).unwrap();
    std::fs::write(dir.join("vocab.bpe"), "#version: 0.2\nt h\nc a\n").unwrap();
}

#[test]
fn every_tokenizer_kind_round_trips_through_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let text = write_corpus(d);
    let input = vec![d.join("corpus.txt")];
    // byte, and a trained BPE, with several shards each.
    prepare_into(&input, &d.join("byte"), &opts("byte", 0.0, 500));
    assert_eq!(decode_train(&d.join("byte")), text);
    assert!(read_meta(&d.join("byte")).unwrap().train.shards.len() > 1);
    prepare_into(&input, &d.join("bpe"), &opts("bpe:300", 0.0, 500));
    assert_eq!(decode_train(&d.join("bpe")), text);
    let meta = read_meta(&d.join("bpe")).unwrap();
    assert_eq!(meta.vocab_size, 300);
    assert_eq!(meta.eot_token, Some(0));
    assert!(meta.train.tokens < text.len() as u64, "the BPE should compress");
    // The trained tokenizer.json loads back and encodes identically.
    let saved = d.join("bpe/tokenizer.json").display().to_string();
    prepare_into(&input, &d.join("reload"), &opts(&saved, 0.0, 500));
    assert_eq!(train_tokens(&d.join("bpe")), train_tokens(&d.join("reload")));
    // A GPT-2 encoder.json + vocab.bpe pair.
    write_gpt2_pair(&d.join("gpt2"));
    prepare_into(&input, &d.join("g"), &opts(&d.join("gpt2").display().to_string(), 0.0, 1 << 20));
    assert_eq!(decode_train(&d.join("g")), text);
    let tokens = train_tokens(&d.join("g"));
    assert!(tokens.contains(&256) && tokens.contains(&257), "the merges are applied");
}

#[test]
fn splits_never_share_a_document_and_the_sampler_stays_in_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let lines: Vec<String> = (0..200).map(|i| format!("{{\"text\": \"record {i} {}\"}}", "x".repeat(i % 17))).collect();
    std::fs::write(d.join("docs.jsonl"), lines.join("\n")).unwrap();
    prepare_into(&[d.join("docs.jsonl")], &d.join("p"), &opts("bpe:280", 0.3, 300));
    let meta = read_meta(&d.join("p")).unwrap();
    assert_eq!(meta.train.documents + meta.val.documents, 200);
    let tok = KeelTokenizer::from_prepared(&d.join("p/tokenizer.json"), &meta.tokenizer).unwrap();
    let eot = meta.eot_token.unwrap();
    let corpus = load_prepared(&d.join("p"), None, 8, false).unwrap();
    let docs = |t: &Tokens| -> Vec<String> {
        t.to_vec().split(|&x| x == eot).filter(|s| !s.is_empty()).map(|s| tok.decode(s).unwrap()).collect()
    };
    let (train, val) = (docs(&corpus.train), docs(&corpus.val));
    assert!(!val.is_empty() && !train.is_empty());
    for v in &val {
        assert!(!train.contains(v), "{v:?} is in both splits");
    }
    let mut all: Vec<String> = train.iter().chain(&val).cloned().collect();
    all.sort();
    let mut want: Vec<String> = (0..200).map(|i| format!("record {i} {}", "x".repeat(i % 17))).collect();
    want.sort();
    assert_eq!(all, want);
    // Windows come from inside one shard, and the same seed gives the same windows.
    let Tokens::Shards(shards) = &corpus.train else { panic!("prepared data is memory-mapped") };
    assert!(shards.len() > 2);
    let contents: Vec<Vec<u32>> = shards.iter().map(|s| s.to_vec()).collect();
    let (mut s1, mut s2) = (Sampler::new(5, "train", 4, 8), Sampler::new(5, "train", 4, 8));
    for _ in 0..300 {
        let (x, y) = s1.next_host(&corpus.train);
        assert_eq!((x.clone(), y.clone()), s2.next_host(&corpus.train));
        for (row_x, row_y) in x.chunks(8).zip(y.chunks(8)) {
            let mut window = row_x.to_vec();
            window.push(*row_y.last().unwrap());
            assert_eq!(&row_x[1..], &row_y[..7]);
            assert!(
                contents.iter().any(|c| c.windows(9).any(|w| w == window.as_slice())),
                "window crosses a shard boundary"
            );
        }
    }
}

fn keel(args: &[&str], cwd: &Path, env: &[(&str, &Path)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keel"));
    c.args(args).current_dir(cwd).env("HF_ENDPOINT", "http://127.0.0.1:9");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn expect_exit_2(out: &std::process::Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// Lays out `file` in a hub cache the way hf-hub does: refs/main names a snapshot.
fn fill_cache(hf_home: &Path, kind: &str, repo: &str, file: &str, contents: &[u8]) {
    let folder = hf_home.join("hub").join(format!("{kind}--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::write(folder.join("refs/main"), "0123abcd").unwrap();
    let snap = folder.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(snap.join(file), contents).unwrap();
}

#[test]
fn hub_tokenizer_and_dataset_come_from_the_cache_and_fail_clearly_without_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let text = write_corpus(d);
    let hf = d.join("hf_home");
    // A tokenizer.json in the model cache, a JSONL file in the dataset cache.
    prepare_into(&[d.join("corpus.txt")], &d.join("src"), &opts("bpe:290", 0.0, 1 << 20));
    fill_cache(&hf, "models", "test-org/tiny", "tokenizer.json", &std::fs::read(d.join("src/tokenizer.json")).unwrap());
    fill_cache(&hf, "datasets", "test-org/ds", "train.jsonl", b"{\"text\": \"from the hub\"}\n");
    let env = [("HF_HOME", hf.as_path())];
    let out = keel(
        &[
            "data",
            "prepare",
            "-q",
            "--input",
            "corpus.txt",
            "--tokenizer",
            "hf:test-org/tiny",
            "--out",
            "h",
            "--val-fraction",
            "0",
        ],
        d,
        &env,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(decode_train(&d.join("h")), text);
    let out = keel(
        &[
            "data",
            "prepare",
            "-q",
            "--input",
            "hf-dataset:test-org/ds:train.jsonl",
            "--tokenizer",
            "byte",
            "--out",
            "ds",
            "--val-fraction",
            "0",
        ],
        d,
        &env,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8(
            Shard::open(&d.join("ds/train_000.bin")).unwrap().to_vec().iter().map(|&t| t as u8).collect()
        )
        .unwrap(),
        "from the hub"
    );
    // Empty cache, unreachable hub: one clear message, exit 2.
    let empty = d.join("empty_home");
    std::fs::create_dir_all(&empty).unwrap();
    let out = keel(
        &["data", "prepare", "--input", "corpus.txt", "--tokenizer", "hf:test-org/other", "--out", "x"],
        d,
        &[("HF_HOME", empty.as_path())],
    );
    expect_exit_2(&out, &["test-org/other/tokenizer.json", "Hugging Face hub", "not in the cache", "HF_HOME"]);
    assert!(!d.join("x/meta.json").exists());
}

#[test]
fn bad_data_inputs_exit_2_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_corpus(d);
    std::fs::write(d.join("latin1.txt"), b"fine\ncaf\xe9\n").unwrap();
    std::fs::write(d.join("empty.txt"), "").unwrap();
    std::fs::write(d.join("broken.json"), "{ not a tokenizer").unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["--input", "missing.txt", "--tokenizer", "byte", "--out", "o1"], &["missing.txt"]),
        (&["--input", "empty.txt", "--tokenizer", "byte", "--out", "o2"], &["empty"]),
        (&["--input", "*.none", "--tokenizer", "byte", "--out", "o3"], &["matches no file"]),
        (
            &["--input", "latin1.txt", "--tokenizer", "byte", "--out", "o4"],
            &["line 2", "not UTF-8", "--skip-invalid-utf8"],
        ),
        (&["--input", "corpus.txt", "--tokenizer", "broken.json", "--out", "o5"], &["broken.json", "does not parse"]),
        (&["--input", "corpus.txt", "--tokenizer", "bpe:12", "--out", "o6"], &["larger than 256"]),
        (
            &["--input", "corpus.txt", "--tokenizer", "byte", "--out", "o7", "--val-fraction", "1.5"],
            &["--val-fraction"],
        ),
    ];
    for (args, needles) in cases {
        let mut all = vec!["data", "prepare"];
        all.extend_from_slice(args);
        expect_exit_2(&keel(&all, d, &[]), needles);
    }
    // Skipping invalid lines works and is counted.
    let out = keel(
        &[
            "data",
            "prepare",
            "-q",
            "--input",
            "latin1.txt",
            "--tokenizer",
            "byte",
            "--out",
            "skip",
            "--skip-invalid-utf8",
            "--val-fraction",
            "0",
        ],
        d,
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read_meta(&d.join("skip")).unwrap().skipped_invalid_utf8_lines, 1);

    // Training on prepared data: a wrong tokenizer expectation, and corrupt or truncated shards.
    let out = keel(&["data", "prepare", "-q", "--input", "corpus.txt", "--tokenizer", "byte", "--out", "good"], d, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let train = |extra: &[&str]| tiny_train(d, "good", extra);
    let ok = train(&["--out", "run_ok"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    expect_exit_2(
        &train(&["--set", "data.tokenizer=bpe:8192", "--out", "r1"]),
        &["prepared with tokenizer `byte`", "bpe:8192"],
    );
    expect_exit_2(&train(&["--set", "model.vocab_size=100", "--out", "r2"]), &["vocab_size"]);
    let shard = d.join("good/train_000.bin");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 3]).unwrap();
    expect_exit_2(&train(&["--out", "r3"]), &["train_000.bin", "truncated"]);
    let mut wrong = bytes.clone();
    wrong[..8].copy_from_slice(b"NOTKEEL!");
    std::fs::write(&shard, &wrong).unwrap();
    expect_exit_2(&train(&["--out", "r4"]), &["magic"]);
    std::fs::remove_file(d.join("good/meta.json")).unwrap();
    expect_exit_2(&train(&["--out", "r5"]), &["not a prepared data folder", "keel data prepare"]);
}

/// A tiny `keel train` on the prepared folder `data`, with `extra` flags.
fn tiny_train(d: &Path, data: &str, extra: &[&str]) -> std::process::Output {
    let data = format!("data.path={data}");
    let mut args = vec![
        "train",
        "--quiet",
        "--set",
        &data,
        "--set",
        "model.depth=2",
        "--set",
        "model.d_model=16",
        "--set",
        "train.steps=2",
        "--set",
        "train.seq_len=8",
    ];
    args.extend_from_slice(extra);
    keel(&args, d, &[])
}

#[test]
fn token_ids_outside_the_vocabulary_are_refused_naming_the_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_corpus(d);
    let out = keel(&["data", "prepare", "-q", "--input", "corpus.txt", "--tokenizer", "byte", "--out", "p"], d, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ok = tiny_train(d, "p", &["--out", "run_ok"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // Body bytes overwritten with 0xFF: token 5 of the first training shard becomes 65535.
    let shard = d.join("p/train_000.bin");
    let good = std::fs::read(&shard).unwrap();
    let mut bad = good.clone();
    bad[32 + 10..32 + 12].copy_from_slice(&[0xFF, 0xFF]);
    std::fs::write(&shard, &bad).unwrap();
    expect_exit_2(
        &tiny_train(d, "p", &["--out", "r1"]),
        &["train_000.bin", "token id 65535 at token 5", "vocabulary of 256", "keel data prepare"],
    );
    // The same through `keel eval --bench ppl` on the folder (its validation split).
    let val = d.join("p/val_000.bin");
    let val_good = std::fs::read(&val).unwrap();
    std::fs::write(&shard, &good).unwrap();
    let mut val_bad = val_good.clone();
    let at = val_bad.len() - 2;
    val_bad[at..].copy_from_slice(&[0x00, 0x01]);
    std::fs::write(&val, &val_bad).unwrap();
    let ppl = keel(&["eval", "--bench", "ppl", "--quiet", "--run", "run_ok", "--data", "p"], d, &[]);
    expect_exit_2(&ppl, &["val_000.bin", "token id 256", "vocabulary of 256"]);
    std::fs::write(&val, &val_good).unwrap();
    // vocab_size lowered in meta.json: the first byte above it is named.
    let meta_path = d.join("p/meta.json");
    let mut meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["vocab_size"] = serde_json::json!(100);
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    let first_high = good[32..].chunks(2).position(|b| u16::from_le_bytes([b[0], b[1]]) >= 100).unwrap();
    let id = u16::from_le_bytes([good[32 + 2 * first_high], good[33 + 2 * first_high]]);
    expect_exit_2(
        &tiny_train(d, "p", &["--out", "r2"]),
        &["train_000.bin", &format!("token id {id} at token {first_high}"), "vocabulary of 100", "meta.json"],
    );
}

#[test]
fn a_text_file_without_blank_lines_still_gets_a_validation_split() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // 4,000 one-line sentences, 0.24 MB: four documents of at most 64 KiB, none drawing validation.
    let text: String =
        (0..4000).map(|i| format!("Sentence number {i} says the fox is quick and the dog lazy.\n")).collect();
    std::fs::write(d.join("lines.txt"), &text).unwrap();
    let out = keel(&["data", "prepare", "--input", "lines.txt", "--tokenizer", "byte", "--out", "p"], d, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("the last one is the validation split"), "{said}");
    let meta = read_meta(&d.join("p")).unwrap();
    assert_eq!((meta.train.documents, meta.val.documents), (3, 1), "{meta:?}");
    assert!(meta.val_is_last_document);
    // The validation split is the end of the file; train + val is the whole file.
    let corpus = load_prepared(&d.join("p"), None, 32, false).unwrap();
    let bytes: Vec<u8> = corpus.train.to_vec().iter().chain(&corpus.val.to_vec()).map(|&t| t as u8).collect();
    assert_eq!(String::from_utf8(bytes).unwrap(), text);
    let ok = tiny_train(d, "p", &["--out", "run"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // The same seed gives the same split.
    let again = keel(&["data", "prepare", "-q", "--input", "lines.txt", "--tokenizer", "byte", "--out", "p2"], d, &[]);
    assert!(again.status.success());
    assert_eq!(std::fs::read(d.join("p/val_000.bin")).unwrap(), std::fs::read(d.join("p2/val_000.bin")).unwrap());

    // One document cannot be split: refused with the fix, and the folder is left as it was (absent)
    // for a rerun.
    std::fs::write(d.join("one.txt"), &text[..20_000]).unwrap();
    let one = keel(&["data", "prepare", "--input", "one.txt", "--tokenizer", "byte", "--out", "q"], d, &[]);
    expect_exit_2(&one, &["1 document(s)", "--val-fraction 0.05", "blank lines", "--val-fraction 0"]);
    assert!(!d.join("q").exists(), "no partial shards are left behind");
    let zero = keel(
        &["data", "prepare", "-q", "--input", "one.txt", "--tokenizer", "byte", "--out", "q", "--val-fraction", "0"],
        d,
        &[],
    );
    assert!(zero.status.success(), "{}", String::from_utf8_lossy(&zero.stderr));
    // Training on a folder prepared without validation says so and how to fix it.
    expect_exit_2(
        &tiny_train(d, "q", &["--out", "r"]),
        &["empty validation split", "--val-fraction 0", "--val-fraction above 0"],
    );
}

#[test]
fn hub_offline_mode_never_tries_the_network_for_a_tokenizer_or_dataset_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_corpus(d);
    let empty = d.join("empty_home");
    std::fs::create_dir_all(&empty).unwrap();
    let offline = [("HF_HOME", empty.as_path()), ("HF_HUB_OFFLINE", Path::new("1"))];
    let out = keel(
        &["data", "prepare", "--input", "corpus.txt", "--tokenizer", "hf:test-org/other", "--out", "x"],
        d,
        &offline,
    );
    expect_exit_2(
        &out,
        &["test-org/other/tokenizer.json", "not in the Hugging Face hub cache", "HF_HUB_OFFLINE", "offline"],
    );
    let out = keel(
        &["data", "prepare", "--input", "hf-dataset:test-org/ds:train.jsonl", "--tokenizer", "byte", "--out", "y"],
        d,
        &[("HF_HOME", empty.as_path()), ("TRANSFORMERS_OFFLINE", Path::new("1"))],
    );
    expect_exit_2(&out, &["dataset test-org/ds/train.jsonl", "TRANSFORMERS_OFFLINE"]);
}
