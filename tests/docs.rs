//! The documentation mirrors the code:
//! - docs/configuration.md has a table row for every config key keel accepts (the keys come from
//!   the config structs themselves), with the struct's default, and names no key that does not exist;
//! - every relative link and `#anchor` of README.md and docs/*.md resolves (files exist, anchors
//!   are headings of the target page under GitHub's slug rules);
//! - `keel --version` names the git revision, and every subcommand's long help has examples that
//!   the docs also give.

use clap::CommandFactory;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md, in name order.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn shown(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

/// The lines of a markdown text outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// `line` without its inline code spans (their text is not markdown: `[a, b]` is no link).
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The heading's text, if `line` is an ATX heading (`#` to `######`, then a space).
fn heading(line: &str) -> Option<&str> {
    let hashes = line.chars().take_while(|&c| c == '#').count();
    (1..=6).contains(&hashes).then(|| line[hashes..].strip_prefix(' ')).flatten().map(str::trim)
}

/// GitHub's anchor for a heading: the rendered text (code spans without their backticks, links
/// as their text, no emphasis markers), lower-cased, every character that is not a letter, a
/// digit, a space, `-` or `_` dropped, spaces turned into `-`.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    // A link [text](target) renders as its text.
    while let Some(open) = rest.find('[') {
        text.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find("](").and_then(|close| after[close..].find(')').map(|end| (close, close + end))) {
            Some((close, end)) => {
                text.push_str(&after[..close]);
                rest = &after[end + 1..];
            }
            None => {
                text.push('[');
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text.chars()
        .filter(|&c| c != '`' && c != '*')
        .flat_map(char::to_lowercase)
        .filter(|&c| c.is_alphanumeric() || c == ' ' || c == '-' || c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a page offers: its headings' slugs, a repeated slug numbered `-1`, `-2`, ... as
/// GitHub numbers them.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        if let Some(h) = heading(line) {
            let s = slug(h);
            let n = seen.entry(s.clone()).or_insert(0);
            out.insert(if *n == 0 { s.clone() } else { format!("{s}-{n}") });
            *n += 1;
        }
    }
    out
}

/// The targets of the inline links and images of a text, `(line, target)`, outside code.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (number, line) in prose_lines(text) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            // A title ("...") after the target is not part of it.
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((number, target.to_string()));
            rest = &after[end + 1..];
        }
    }
    out
}

/// Every broken relative link of `page`, as messages.
fn broken_links(page: &Path, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (line, target) in links(text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let at = format!("{}:{line}: link `{target}`", shown(page));
        let (file, anchor) = match target.split_once('#') {
            Some((file, anchor)) => (file, Some(anchor)),
            None => (target.as_str(), None),
        };
        if file.is_empty() && anchor.is_none() {
            problems.push(format!("{at} is empty"));
            continue;
        }
        let resolved = if file.is_empty() { page.to_path_buf() } else { page.parent().unwrap().join(file) };
        if !resolved.exists() {
            problems.push(format!("{at}: {} does not exist", shown(&resolved)));
            continue;
        }
        if let Some(anchor) = anchor {
            if resolved.extension().is_some_and(|e| e == "md") {
                let offered = if file.is_empty() { anchors(text) } else { anchors(&read(&resolved)) };
                if !offered.contains(anchor) {
                    problems.push(format!(
                        "{at}: {} has no heading whose anchor is #{anchor} (its anchors: {})",
                        shown(&resolved),
                        offered.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
    }
    problems
}

#[test]
fn every_relative_link_and_anchor_of_the_docs_resolves() {
    let pages = pages();
    assert!(pages.len() > 10, "README.md and docs/*.md: {pages:?}");
    let checked: usize = pages.iter().map(|p| links(&read(p)).len()).sum();
    assert!(checked > 100, "only {checked} links found in the docs");
    let problems: Vec<String> = pages.iter().flat_map(|p| broken_links(p, &read(p))).collect();
    assert!(problems.is_empty(), "dead links in the docs:\n{}", problems.join("\n"));
}

#[test]
fn the_link_checker_sees_dead_files_and_anchors() {
    let page = root().join("docs").join("configuration.md");
    let text = "# T\n\n## A `b` (c)\n\nSee [x](#a-b-c), [y](running.md#signals), [img](figures/alpha_ablation.png), \
                [web](https://example.com), `[not](a-link.md)`.\n\n```sh\n[not](a-link-either.md)\n```\n\
                Dead: [f](nowhere.md), [g](#nope), [h](running.md#nope), [i](figures/none.png).\n";
    let problems = broken_links(&page, text);
    assert_eq!(problems.len(), 4, "{problems:#?}");
    for dead in ["nowhere.md", "#nope", "running.md#nope", "figures/none.png"] {
        assert!(problems.iter().any(|p| p.contains(&format!("link `{dead}`"))), "{dead}: {problems:#?}");
    }
}

#[test]
fn headings_get_githubs_anchors() {
    assert_eq!(slug("`[model]`"), "model");
    assert_eq!(slug("What `keel bench` reports"), "what-keel-bench-reports");
    assert_eq!(slug("Memory: the estimate"), "memory-the-estimate");
    assert_eq!(slug("Weights & Biases"), "weights--biases");
    assert_eq!(slug("Checked against TensorBoard's reader"), "checked-against-tensorboards-reader");
    assert_eq!(slug("Maximum tolerable learning rate (Table 1)"), "maximum-tolerable-learning-rate-table-1");
    assert_eq!(slug("Pre-LN runs as Llama models"), "pre-ln-runs-as-llama-models");
    assert_eq!(slug("The [link](x.md) and *emphasis*"), "the-link-and-emphasis");
    let repeated = anchors("# A\n## Speed\n## Speed\n```\n# not a heading\n```\n");
    assert_eq!(repeated, ["a", "speed", "speed-1"].into_iter().map(String::from).collect());
}

/// One row of a reference table: the keys its first cell names and its default cell.
struct Row {
    line: usize,
    keys: Vec<String>,
    default: String,
}

/// The reference tables of the configuration page: section -> rows, from each `## `[section]``
/// heading to the next heading of that level.
fn reference_tables(text: &str) -> BTreeMap<String, Vec<Row>> {
    let mut tables: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for (number, line) in prose_lines(text) {
        if let Some(h) = heading(line) {
            if line.starts_with("## ") {
                section = h.strip_prefix("`[").and_then(|s| s.strip_suffix("]`")).map(String::from);
                if let Some(s) = &section {
                    tables.entry(s.clone()).or_default();
                }
            }
            continue;
        }
        let (Some(section), Some(row)) = (&section, line.strip_prefix('|')) else { continue };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if cells.len() < 3 || cells[0] == "key" || cells[0].starts_with("---") {
            continue;
        }
        let keys = cells[0].split('`').skip(1).step_by(2).map(String::from).collect();
        tables.get_mut(section).unwrap().push(Row { line: number, keys, default: cells[1].to_string() });
    }
    tables
}

/// The default a cell gives for one key, compared with the struct's: numbers by value, strings and
/// booleans exactly. A key whose struct default is unset (`None`) is described in words instead.
fn default_matches(cell: &str, expected: &serde_json::Value) -> Result<(), String> {
    if expected.is_null() {
        return Ok(());
    }
    let literal = cell.trim().trim_matches('`');
    let parsed: toml::Table =
        toml::from_str(&format!("v = {literal}")).map_err(|_| format!("`{cell}` is not a TOML value"))?;
    let same = match (&parsed["v"], expected) {
        (toml::Value::Integer(i), serde_json::Value::Number(n)) => n.as_f64() == Some(*i as f64),
        (toml::Value::Float(f), serde_json::Value::Number(n)) => n.as_f64() == Some(*f),
        (toml::Value::String(s), serde_json::Value::String(e)) => s == e,
        (toml::Value::Boolean(b), serde_json::Value::Bool(e)) => b == e,
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(format!("`{cell}`, where the struct's default is {expected}"))
    }
}

/// Everything the configuration page gets wrong, as messages.
fn configuration_page_problems(text: &str) -> Vec<String> {
    let known: BTreeMap<String, Vec<String>> = keel::config::known_keys().into_iter().collect();
    let defaults = serde_json::to_value(keel::config::Config::default()).expect("the config serializes");
    let tables = reference_tables(text);
    let mut problems = Vec::new();
    for (section, keys) in &known {
        let Some(rows) = tables.get(section) else {
            problems.push(format!("section [{section}] has no `## `[{section}]`` table"));
            continue;
        };
        for key in keys {
            if !rows.iter().any(|r| r.keys.contains(key)) {
                problems.push(format!("{section}.{key} is a config key, but no row of the [{section}] table names it"));
            }
        }
    }
    for (section, rows) in &tables {
        let Some(keys) = known.get(section) else {
            problems.push(format!("the page has a [{section}] table, but the config has no such section"));
            continue;
        };
        for row in rows {
            if row.keys.is_empty() {
                problems.push(format!("configuration.md:{}: a row of [{section}] names no `key`", row.line));
            }
            let cell_defaults: Vec<&str> =
                if row.keys.len() == 1 { vec![row.default.as_str()] } else { row.default.split(", ").collect() };
            for (i, key) in row.keys.iter().enumerate() {
                if !keys.contains(key) {
                    problems.push(format!(
                        "configuration.md:{}: {section}.{key} is not a config key (the [{section}] keys: {})",
                        row.line,
                        keys.join(", ")
                    ));
                    continue;
                }
                let expected = &defaults[section][key];
                let cell = cell_defaults.get(i).copied().unwrap_or("");
                if let Err(why) = default_matches(cell, expected) {
                    problems.push(format!("configuration.md:{}: the default of {section}.{key} is {why}", row.line));
                }
            }
        }
    }
    problems
}

#[test]
fn the_configuration_page_names_every_config_key_with_its_default_and_no_other() {
    let text = read(&root().join("docs").join("configuration.md"));
    let problems = configuration_page_problems(&text);
    assert!(problems.is_empty(), "docs/configuration.md does not match src/config/schema.rs:\n{}", problems.join("\n"));
    let rows: usize = reference_tables(&text).values().map(Vec::len).sum();
    assert!(rows > 40, "only {rows} rows read from the reference tables");
}

#[test]
fn the_configuration_check_sees_missing_unknown_and_wrong_keys() {
    let text = read(&root().join("docs").join("configuration.md"));
    let broken = text
        .replace("| `depth` | 8 |", "| `depht` | 8 |")
        .replace("| `seq_len` | 64 |", "| `seq_len` | 128 |")
        .replace("| `beta1`, `beta2`, `eps` | 0.9, 0.95, 1e-8 |", "| `beta1`, `beta2`, `eps` | 0.9, 0.999, 1e-8 |");
    let problems = configuration_page_problems(&broken);
    let expect = [
        "model.depth is a config key, but no row",
        "model.depht is not a config key",
        "the default of train.seq_len is `128`",
        "the default of train.beta2 is `0.999`",
    ];
    for e in expect {
        assert!(problems.iter().any(|p| p.contains(e)), "{e}: {problems:#?}");
    }
    assert_eq!(problems.len(), expect.len(), "{problems:#?}");
}

fn keel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel")).args(args).output().unwrap()
}

#[test]
fn keel_version_names_the_package_version_and_the_git_revision() {
    let out = keel(&["--version"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let prefix = format!("keel {} (git ", env!("CARGO_PKG_VERSION"));
    let revision = text
        .trim_end()
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("`{text}` is not `{prefix}REVISION)`"));
    let is_hash = (7..=40).contains(&revision.len()) && revision.chars().all(|c| c.is_ascii_hexdigit());
    assert!(is_hash || revision == "unknown", "revision `{revision}`");
}

/// Every subcommand's path, `["train"]`, `["data", "prepare"]`, ..., from the CLI's definition,
/// so that a new subcommand is checked without being listed here.
fn subcommands() -> Vec<Vec<String>> {
    fn walk(cmd: &clap::Command, path: &[String], out: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let mut p = path.to_vec();
            p.push(sub.get_name().to_string());
            out.push(p.clone());
            walk(sub, &p, out);
        }
    }
    let mut out = Vec::new();
    walk(&keel::cli::Cli::command(), &[], &mut out);
    out
}

#[test]
fn the_cli_definition_passes_claps_own_checks() {
    // Release builds skip clap's debug assertions; the long helps added to every subcommand must not
    // hide a conflicting definition.
    keel::cli::Cli::command().debug_assert();
}

#[test]
fn every_subcommands_help_has_examples_that_the_docs_give_too() {
    let docs: String = pages().iter().map(|p| read(p)).collect::<Vec<_>>().join("\n");
    let commands = subcommands();
    assert!(commands.len() >= 12, "{commands:?}");
    let mut problems = Vec::new();
    for path in &commands {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = keel(&args);
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let name = path.join(" ");
        if !out.status.success() {
            problems.push(format!("keel {name} --help failed: {out:?}"));
            continue;
        }
        let Some((_, examples)) = help.split_once("Examples:\n") else {
            problems.push(format!("keel {name} --help has no `Examples:`"));
            continue;
        };
        let lines: Vec<&str> =
            examples.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).filter(|l| !l.is_empty()).collect();
        if lines.is_empty() || lines.iter().any(|l| !l.starts_with(&format!("keel {name}"))) {
            problems
                .push(format!("keel {name} --help: its examples should each be a `keel {name} ...` line: {lines:?}"));
        }
        for line in lines {
            if !docs.contains(line) {
                problems.push(format!("keel {name} --help gives `{line}`, which README.md and docs/ do not"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
