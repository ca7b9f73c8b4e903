//! Property test of the config loader and the `--set` parser: thousands of random documents and
//! overrides, built from valid and invalid pieces, never panic; each either loads and validates
//! or fails with a message.

use keel::config::{known_keys, Config};
use keel::rng::Rng;

fn pick<'a>(rng: &mut Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.below(xs.len() as u64) as usize]
}

fn value(rng: &mut Rng) -> String {
    let atoms = [
        "0",
        "1",
        "-1",
        "2",
        "7",
        "64",
        "1e-3",
        "-0.0",
        "nan",
        "inf",
        "-inf",
        "1e308",
        "18446744073709551615",
        "9223372036854775807",
        "-9223372036854775808",
        "true",
        "false",
        "\"keel\"",
        "\"pre_ln\"",
        "\"post_ln\"",
        "\"L\"",
        "\"sqrtL\"",
        "\"v1\"",
        "\"rms_norm\"",
        "\"gelu\"",
        "\"f64\"",
        "\"cosine\"",
        "\"synthetic\"",
        "\"\"",
        "\"ünï\\u00e9\"",
        "[]",
        "[1, 2]",
        "{ a = 1 }",
        "1979-05-27",
        "0x10",
        "1_000",
        "3.",
        "'x'",
        "\"\"\"m\"\"\"",
    ];
    pick(rng, &atoms).to_string()
}

fn key(rng: &mut Rng, keys: &[(String, Vec<String>)], section: &str) -> String {
    if rng.below(5) == 0 {
        return pick(rng, &["depht", "lr ", "a.b", "\"quoted\"", "x", "model", "steps", ""]).to_string();
    }
    keys.iter()
        .find(|(s, _)| s == section)
        .map(|(_, ks)| ks[rng.below(ks.len() as u64) as usize].clone())
        .unwrap_or_else(|| "depth".into())
}

fn document(rng: &mut Rng, keys: &[(String, Vec<String>)]) -> String {
    let sections: Vec<&str> = keys.iter().map(|(s, _)| s.as_str()).chain(["meta", "bogus", "model.sub"]).collect();
    let mut doc = String::new();
    for _ in 0..rng.below(5) {
        let section = pick(rng, &sections).to_string();
        match rng.below(12) {
            0 => doc.push_str(&format!("[{section}\n")),
            1 => doc.push_str(&format!("{section} = 3\n")),
            _ => doc.push_str(&format!("[{section}]\n")),
        }
        for _ in 0..rng.below(6) {
            let k = key(rng, keys, &section);
            match rng.below(15) {
                0 => doc.push_str(&format!("{k} =\n")),
                1 => doc.push_str(&format!("{k}\n")),
                _ => doc.push_str(&format!("{k} = {}\n", value(rng))),
            }
        }
    }
    doc
}

fn override_arg(rng: &mut Rng, keys: &[(String, Vec<String>)]) -> String {
    let (section, ks) = &keys[rng.below(keys.len() as u64) as usize];
    let k = ks[rng.below(ks.len() as u64) as usize].clone();
    match rng.below(10) {
        0 => format!("{section}.{k}"),
        1 => format!("{k}={}", value(rng)),
        2 => "=".into(),
        3 => format!("{section}.{k}.x={}", value(rng)),
        4 => format!("{section}.{k}=[unclosed"),
        _ => format!("{section}.{k}={}", value(rng)),
    }
}

#[test]
fn random_configs_and_overrides_never_panic() {
    let keys = known_keys();
    let mut rng = Rng::new(2026);
    let (mut loaded, mut resolved) = (0, 0);
    for case in 0..4000 {
        let doc = document(&mut rng, &keys);
        let overrides: Vec<String> = (0..rng.below(4)).map(|_| override_arg(&mut rng, &keys)).collect();
        let outcome = std::panic::catch_unwind(|| {
            let config = Config::parse(&doc, "fuzz.toml", &overrides)?;
            config.resolve(256).map(|_| true).or_else(|e| if e.0.is_empty() { Err(e) } else { Ok(false) })
        });
        match outcome {
            Err(_) => panic!("case {case} panicked:\n{doc}\noverrides: {overrides:?}"),
            Ok(Ok(valid)) => {
                loaded += 1;
                resolved += valid as usize;
            }
            Ok(Err(e)) => assert!(!e.0.is_empty(), "case {case}: empty error message"),
        }
    }
    // The generator must reach past the parser often enough to exercise validation too.
    eprintln!("{loaded} of 4000 loaded, {resolved} validated");
    assert!(loaded > 200, "only {loaded} of 4000 documents loaded");
    assert!(resolved > 50, "only {resolved} validated");
}
