//! From TOML text and `--set` overrides to a [`Config`]: overrides applied to the raw table, every
//! key checked against the known keys (with the closest one suggested), then deserialized.

use super::schema::{err, Config, ConfigError};
use serde::Deserialize;
use std::path::Path;

/// Known `(section, keys)`, derived from the structs so they can never drift from them.
pub fn known_keys() -> Vec<(String, Vec<String>)> {
    let value = serde_json::to_value(Config::default()).expect("config serializes");
    let mut out = Vec::new();
    for (section, body) in value.as_object().expect("object") {
        if let Some(fields) = body.as_object() {
            out.push((section.clone(), fields.keys().cloned().collect()));
        }
    }
    out
}

/// The keys that hold a real number, as `section.key`: every `f64` field (from the defaults, like
/// [`known_keys`]), and `model.alpha`, a number unless written as a multiple of L.
pub(crate) fn float_keys() -> Vec<String> {
    let value = serde_json::to_value(Config::default()).expect("config serializes");
    let mut out = vec!["model.alpha".to_string()];
    for (section, body) in value.as_object().expect("object") {
        for (key, v) in body.as_object().into_iter().flatten() {
            if v.is_f64() {
                out.push(format!("{section}.{key}"));
            }
        }
    }
    out
}

/// `0x10`, `0o17`, `0b1`: the radix of an integer literal, or `None` for any other text.
fn radix_of(literal: &str) -> Option<&'static str> {
    let t = literal.trim();
    [("0x", "hexadecimal"), ("0o", "octal"), ("0b", "binary")]
        .into_iter()
        .find(|(prefix, _)| t.starts_with(prefix))
        .map(|(_, radix)| radix)
}

/// Float keys whose final value is an integer written in another radix (`lr = 0x10`, read by
/// TOML as 16), as `(key, literal, radix)`: the radix is gone once the text is parsed into a table,
/// so it is looked up here, in the file and the `--set` values (the last one for a key wins, as
/// it does for the value), and reported by [`Config::resolve`] with the other problems.
fn radix_floats(text: &str, overrides: &[String]) -> Vec<(String, String, String)> {
    let floats = float_keys();
    let mut literal: std::collections::BTreeMap<String, String> = Default::default();
    // A text that does not parse was refused before this is called.
    if let Ok(doc) = text.parse::<toml_edit::DocumentMut>() {
        for key in &floats {
            let (section, name) = key.split_once('.').expect("section.key");
            let value = doc.get(section).and_then(|s| s.get(name)).and_then(|item| item.as_value());
            if let Some(toml_edit::Value::Integer(i)) = value {
                if let Some(raw) = i.as_repr().and_then(|r| r.as_raw().as_str()) {
                    literal.insert(key.clone(), raw.to_string());
                }
            }
        }
    }
    for item in overrides {
        if let Some((path, raw)) = item.split_once('=') {
            if floats.iter().any(|k| k == path.trim()) {
                let raw = raw.trim();
                let integer = matches!(parse_override_value(raw), toml::Value::Integer(_));
                literal.insert(path.trim().to_string(), if integer { raw.to_string() } else { String::new() });
            }
        }
    }
    literal
        .into_iter()
        .filter_map(|(key, raw)| radix_of(&raw).map(|radix| (key, raw.clone(), radix.to_string())))
        .collect()
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .min()
        .filter(|(d, c)| *d <= c.len().max(name.len()) / 2 + 1)
        .map(|(_, c)| c)
}

fn check_known_keys(table: &toml::Table) -> Result<(), ConfigError> {
    let known = known_keys();
    let sections: Vec<&str> = known.iter().map(|(s, _)| s.as_str()).collect();
    for (section, body) in table {
        if section == "meta" {
            continue;
        }
        let Some((_, keys)) = known.iter().find(|(s, _)| s == section) else {
            let hint = match closest(section, sections.iter().copied()) {
                Some(c) => format!("did you mean [{c}]?"),
                None => format!("valid sections: {}", sections.join(", ")),
            };
            return err(format!("unknown config section [{section}]: {hint}"));
        };
        let Some(body) = body.as_table() else {
            return err(format!("`{section}` must be a section ([{section}] with keys under it), not a value"));
        };
        for key in body.keys() {
            if !keys.iter().any(|k| k == key) {
                let hint = match closest(key, keys.iter().map(|s| s.as_str())) {
                    Some(c) => format!("did you mean `{section}.{c}`?"),
                    None => format!("valid keys in [{section}]: {}", keys.join(", ")),
                };
                return err(format!("unknown config key `{section}.{key}`: {hint}"));
            }
        }
    }
    Ok(())
}

/// Parses a `--set` value as a TOML value; anything that is not valid TOML is taken as a string,
/// so `--set model.placement=keel` works without quotes.
fn parse_override_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

/// Applies `section.key=value` overrides to a raw table.
pub fn apply_overrides(table: &mut toml::Table, overrides: &[String]) -> Result<(), ConfigError> {
    for item in overrides {
        // One TOML value per --set: a newline would let a second table in, and it was dropped.
        if item.contains(['\n', '\r']) {
            return err(format!(
                "--set {item:?} holds a line break: give one section.key=value per --set, e.g. --set train.lr=1e-3 --set model.depth=2, or put the rest in a --config file"
            ));
        }
        let Some((path, raw)) = item.split_once('=') else {
            return err(format!("--set `{item}` has no `=`: write it as section.key=value, e.g. --set train.lr=1e-3"));
        };
        let path = path.trim();
        let Some((section, key)) = path.split_once('.') else {
            return err(format!("--set `{item}`: the key must name its section, e.g. train.lr or model.depth"));
        };
        if section.is_empty() || key.is_empty() || key.contains('.') {
            return err(format!("--set `{item}`: expected exactly section.key, e.g. model.depth=64"));
        }
        // [meta] records how a run was made (resume compares the data's identity against it): a
        // --set there would change nothing but that record, so it is refused rather than ignored.
        if section == "meta" {
            let hint = known_keys()
                .into_iter()
                .find(|(_, keys)| keys.iter().any(|k| k == key))
                .map(|(s, _)| format!("; for the setting, use --set {s}.{key}=..."))
                .unwrap_or_default();
            return err(format!(
                "--set `{item}`: [meta] is keel's record of a run (written into its config.toml), not a setting: remove this --set{hint} ([meta] in a --config file is accepted and ignored)"
            ));
        }
        let entry = table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section_table) = entry.as_table_mut() else {
            return err(format!("--set `{item}`: `{section}` is not a section"));
        };
        section_table.insert(key.to_string(), parse_override_value(raw.trim()));
    }
    Ok(())
}

/// Deserializes a table into a config; type errors name the key.
pub(crate) fn from_table(table: toml::Table) -> Result<Config, ConfigError> {
    check_known_keys(&table)?;
    Config::deserialize(toml::Value::Table(table)).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.trim();
        ConfigError(format!(
            "config value has the wrong type or is not allowed: {msg}\n  fix the value in the file or with --set section.key=value"
        ))
    })
}

impl Config {
    /// Reads `path` (or the defaults when `None`) and applies overrides.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Config, ConfigError> {
        match path {
            None => Self::parse("", "defaults", overrides),
            Some(p) => {
                let text = crate::files::read_to_string(p).map_err(|e| {
                    ConfigError(format!(
                        "cannot read config file {}: {e}\n  check the path (configs/ holds the shipped examples)",
                        p.display()
                    ))
                })?;
                Self::parse(&text, &p.display().to_string(), overrides)
            }
        }
    }

    /// TOML text plus `--set` overrides; `origin` names the text in messages.
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> Result<Config, ConfigError> {
        let mut table = Self::parse_table(text, origin)?;
        apply_overrides(&mut table, overrides)?;
        let mut config = from_table(table)?;
        config.radix_floats = radix_floats(text, overrides);
        Ok(config)
    }

    pub fn parse_table(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
        text.parse::<toml::Table>().map_err(|e| ConfigError(format!("{origin} is not valid TOML: {e}")))
    }

    /// Parses TOML text (no overrides); for tests and tools.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Self::parse(text, "config", &[])
    }
}
