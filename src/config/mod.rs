//! Experiment configuration: typed TOML sections with defaults, `--set` overrides, and one
//! validation pass that turns the raw config into a [`Resolved`] experiment.
//!
//! Flow (ripgrep-style: raw -> resolved, once):
//! 1. the TOML file is parsed into a table (syntax errors name the line);
//! 2. `--set section.key=value` overrides are applied to that table;
//! 3. every key is checked against the known keys (derived from the structs themselves), and an
//!    unknown one is reported with the closest valid key;
//! 4. the table is deserialized into [`Config`] (type errors name the key);
//! 5. [`Config::resolve`] checks ranges and cross-field rules and fills derived values.
//!
//! `schema.rs` holds the sections (1, 4), `keys.rs` the loading and overrides (1-4),
//! `resolve.rs` the validation (5).

mod keys;
mod resolve;
mod schema;

pub use keys::{apply_overrides, known_keys};
pub use resolve::{Resolved, SAFE_TO_CHANGE_ON_RESUME};
pub use schema::*;

#[cfg(test)]
mod tests {
    use super::keys::from_table;
    use super::*;

    fn load(text: &str, sets: &[&str]) -> Result<Config, ConfigError> {
        Config::parse(text, "test", &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn defaults_resolve() {
        let r = Config::default().resolve(256).unwrap();
        assert_eq!(r.alpha, 8.0);
        assert_eq!(r.d_ff(), 192);
        assert_eq!(r.n_kv_heads(), 4);
        assert!(!r.final_norm());
    }

    #[test]
    fn unknown_key_names_closest() {
        let e = load("[model]\ndepht = 4\n", &[]).unwrap_err().0;
        assert!(e.contains("model.depht") && e.contains("model.depth"), "{e}");
        let e = load("[modle]\ndepth = 4\n", &[]).unwrap_err().0;
        assert!(e.contains("[model]"), "{e}");
        let e = load("", &["train.lrr=1"]).unwrap_err().0;
        assert!(e.contains("train.lr`?"), "{e}");
    }

    #[test]
    fn overrides_are_typed() {
        let c = load("", &["model.depth=64", "model.placement=pre_ln", "train.lr=1e-3", "model.alpha=2.5"]).unwrap();
        assert_eq!(c.model.depth, 64);
        assert_eq!(c.model.placement, Placement::PreLn);
        assert_eq!(c.train.lr, 1e-3);
        assert_eq!(c.model.alpha, Alpha::Value(2.5));
        let e = load("", &["model.depth=abc"]).unwrap_err().0;
        assert!(e.contains("model.depth") || e.contains("depth"), "{e}");
        let e = load("", &["model.placement=preln"]).unwrap_err().0;
        assert!(e.contains("pre_ln"), "{e}");
        assert!(load("", &["model.depth"]).is_err());
        assert!(load("", &["depth=3"]).is_err());
    }

    #[test]
    fn alpha_modes() {
        let c = load("[model]\nalpha = \"sqrtL\"\ndepth = 16\n", &[]).unwrap();
        assert_eq!(c.resolve(256).unwrap().alpha, 4.0);
        assert!(load("[model]\nalpha = \"M\"\n", &[]).is_err());
        for (text, at16) in [("L", 16.0), ("4L", 64.0), ("0.5L", 8.0), ("sqrtL", 4.0), ("2sqrtL", 8.0), ("3", 3.0)] {
            let c = load("[model]\ndepth = 16\n", &[&format!("model.alpha={text}")]).unwrap();
            assert_eq!(c.resolve(256).unwrap().alpha, at16, "{text}");
            // Written back to config.toml in the same spelling, and read back the same.
            let written = toml::to_string(&c).unwrap();
            assert!(
                written.contains(&format!("alpha = {}", if text == "3" { "3.0".into() } else { format!("{text:?}") })),
                "{written}"
            );
            assert_eq!(Config::parse_table(&written, "t").and_then(from_table).unwrap(), c);
        }
        for bad in ["xL", "-2L", "0L", "Lsqrt"] {
            assert!(
                load("[model]\ndepth = 16\n", &[&format!("model.alpha={bad}")])
                    .and_then(|c| c.resolve(256).map(|_| ()))
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn validation_lists_problems_with_fixes() {
        let mut c = Config::default();
        c.model.depth = 7;
        c.model.n_heads = 3;
        c.train.lr = -1.0;
        let e = c.resolve(256).unwrap_err().0;
        assert!(e.contains("odd") && e.contains("6 or 8"), "{e}");
        assert!(e.contains("divide"), "{e}");
        assert!(e.contains("train.lr"), "{e}");
        let mut c = Config::default();
        c.model.n_kv_heads = Some(3);
        assert!(c.resolve(256).unwrap_err().0.contains("n_kv_heads"));
    }

    #[test]
    fn meta_is_keel_s_and_cannot_be_set() {
        for set in ["meta.seed=5", "meta.bogus=1", "meta.data_identity=x"] {
            let e = Config::parse("", "test", &[set.to_string()]).unwrap_err().0;
            assert!(e.contains("[meta]") && e.contains("--config"), "{set}: {e}");
        }
        let e = Config::parse("", "test", &["meta.seed=5".to_string()]).unwrap_err().0;
        assert!(e.contains("train.seed"), "{e}");
        // A run's config.toml, [meta] and all, is still a valid --config.
        let c = Config::parse("[meta]\nseed = 5\nbogus = 1\n", "test", &["train.seed=3".to_string()]).unwrap();
        assert_eq!(c.train.seed, 3);
    }

    #[test]
    fn float_keys_are_finite_and_in_range() {
        let floats = [
            "model.norm_eps",
            "model.rope_theta",
            "model.init_std",
            "model.mix_ln_fraction",
            "model.alpha",
            "train.lr",
            "train.min_lr",
            "train.weight_decay",
            "train.beta1",
            "train.beta2",
            "train.eps",
            "train.grad_clip",
            "data.val_fraction",
            "divergence.spike_factor",
            "divergence.recover_factor",
            "divergence.ema",
            "divergence.stall_tolerance",
            "divergence.min_improvement",
        ];
        // Every float key is in this list and has a range: a new one fails here until it has.
        let mut known = super::keys::float_keys();
        known.sort();
        let mut listed: Vec<String> = floats.iter().map(|k| k.to_string()).collect();
        listed.sort();
        assert_eq!(known, listed);
        let mut ranged: Vec<String> = super::resolve::FLOAT_RANGES.iter().map(|(k, _)| k.to_string()).collect();
        ranged.push("model.alpha".into());
        ranged.sort();
        assert_eq!(known, ranged);
        for bad in ["inf", "-inf", "nan", "1e308"] {
            let sets: Vec<String> = floats.iter().map(|k| format!("{k}={bad}")).collect();
            let e = Config::parse("", "test", &sets).unwrap().resolve(256).unwrap_err().0;
            for k in floats {
                assert!(e.contains(&format!("{k} = ")), "{bad}: {k} not named:\n{e}");
            }
        }
        // One key per section, out of range but finite.
        for (set, needle) in [
            ("model.norm_eps=2", "model.norm_eps"),
            ("model.init_std=5", "model.init_std"),
            ("train.lr=1e31", "train.lr"),
            ("data.val_fraction=1", "data.val_fraction"),
            ("divergence.spike_factor=1e9", "divergence.spike_factor"),
        ] {
            let e = Config::parse("", "test", &[set.to_string()]).unwrap().resolve(256).unwrap_err().0;
            assert!(e.contains(needle), "{set}: {e}");
        }
        // Integers in another radix are not numbers a float key means, in a file or a --set.
        for literal in ["0x10", "0o10", "0b1"] {
            let e = Config::parse(&format!("[train]\nlr = {literal}\n"), "test", &[])
                .and_then(|c| c.resolve(256).map(|_| ()))
                .unwrap_err()
                .0;
            assert!(e.contains("train.lr") && e.contains(literal), "{literal}: {e}");
            let e = Config::parse("", "test", &[format!("model.alpha={literal}"), "train.beta1=2".into()])
                .and_then(|c| c.resolve(256).map(|_| ()))
                .unwrap_err()
                .0;
            assert!(e.contains("model.alpha") && e.contains(literal) && e.contains("train.beta1"), "{literal}: {e}");
        }
        // A later --set replaces the file's literal; decimal integers stay numbers.
        let c = Config::parse("[train]\nlr = 0x10\n", "test", &["train.lr=1".into(), "model.alpha=3".into()]).unwrap();
        assert_eq!(c.resolve(256).unwrap().alpha, 3.0);
        let c = Config::parse("model = { init_std = 1 }\ntrain.grad_clip = 2\n", "test", &[]).unwrap();
        assert!(c.resolve(256).is_ok());
    }

    #[test]
    fn mix_ln_needs_a_post_ln_block() {
        let load = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Config::parse("", "test", &sets).unwrap().resolve(256)
        };
        let e = load(&["model.placement=mix_ln", "model.depth=4"]).unwrap_err().0;
        assert!(e.contains("mix_ln_fraction") && e.contains("pre_ln") && e.contains("model.depth"), "{e}");
        let e = load(&["model.placement=mix_ln", "model.depth=8", "model.mix_ln_fraction=0"]).unwrap_err().0;
        assert!(e.contains("mix_ln_fraction"), "{e}");
        assert!(load(&["model.placement=mix_ln", "model.depth=8"]).is_ok());
        assert!(load(&["model.placement=mix_ln", "model.depth=4", "model.mix_ln_fraction=0.5"]).is_ok());
        // Other placements do not read the fraction.
        assert!(load(&["model.placement=pre_ln", "model.depth=4"]).is_ok());
    }

    #[test]
    fn resolved_round_trips_through_toml() {
        let r = Config::default().resolve(256).unwrap();
        let mut meta = toml::Table::new();
        meta.insert("keel_version".into(), "0".into());
        let text = r.to_toml(meta);
        let back = Config::from_toml_str(&text).unwrap().resolve(256).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn init_from_leaves_earlier_fingerprints_alone() {
        let sets = [
            "model.depth=2",
            "model.d_model=16",
            "model.n_heads=2",
            "train.steps=1",
            "train.seq_len=8",
            "train.batch_size=2",
            "data.synthetic_bytes=10000",
        ];
        let r = load("", &sets).unwrap().resolve(256).unwrap();
        // What keel computed before train.init_from existed (its checkpoints carry it, and must
        // still resume).
        assert_eq!(r.fingerprint(), "08deb859e297364cf51674c91fa2eebe29a123c65abaa16026580fdfd440391f");
        // Set, the source is part of the experiment: another source is another experiment, which
        // a resume refuses.
        let mut with = sets.to_vec();
        with.push("train.init_from=runs/base");
        let f = load("", &with).unwrap().resolve(256).unwrap();
        assert_eq!(f.train().init_from.as_deref(), Some("runs/base"));
        assert_ne!(f.fingerprint(), r.fingerprint());
        assert!(!SAFE_TO_CHANGE_ON_RESUME.contains(&"train.init_from"));
        // Written into config.toml and read back.
        let back = Config::from_toml_str(&f.to_toml(toml::Table::new())).unwrap().resolve(256).unwrap();
        assert_eq!(back, f);
        let e = load("", &["train.init_from=\"  \""]).unwrap().resolve(256).unwrap_err().0;
        assert!(e.contains("train.init_from is empty"), "{e}");
    }

    #[test]
    fn known_keys_cover_issue_names() {
        let keys = known_keys();
        let has = |s: &str, k: &str| keys.iter().any(|(a, ks)| a == s && ks.iter().any(|x| x == k));
        for k in [
            "depth",
            "d_model",
            "n_heads",
            "n_kv_heads",
            "d_ff",
            "placement",
            "norm",
            "ffn",
            "alpha",
            "keel_first_layer",
            "tie_embeddings",
            "rope_theta",
            "init_std",
        ] {
            assert!(has("model", k), "{k}");
        }
        for k in [
            "steps",
            "batch_size",
            "seq_len",
            "lr",
            "min_lr",
            "warmup_steps",
            "schedule",
            "weight_decay",
            "beta1",
            "beta2",
            "grad_clip",
            "grad_accum",
            "seed",
            "log_every",
            "eval_every",
            "grad_norm_every",
        ] {
            assert!(has("train", k), "{k}");
        }
        assert!(has("data", "source") && has("run", "name"));
    }
}
