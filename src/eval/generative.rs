//! lm-evaluation-harness's post-processing of `generate_until` tasks, as pure functions: cutting a
//! generation at the task's stop strings, the answer-extraction filters (`regex`, `take_first`),
//! and the `exact_match` metric with its normalisations.
//!
//! The behaviour follows lm-evaluation-harness 0.4.x (checked against commit 4e7e0d47):
//! `lm_eval/models/utils.py` (`postprocess_generated_text`, `handle_stop_sequences`),
//! `lm_eval/filters/extraction.py` (`RegexFilter`), `lm_eval/filters/selection.py`
//! (`TakeFirstFilter`) and `lm_eval/api/metrics.py` (`exact_match_hf_evaluate`, `mean_stderr`).
//!
//! Task patterns are Python `re` patterns. [`PyRegex`] translates them for `fancy-regex` (which has
//! lookaround and backreferences, as BBH's chain-of-thought filter needs) and keeps Python's
//! meaning where the two dialects differ: `$` also matches before a final newline, `\Z` is the end
//! of the text, `\s` includes `\x1c`-`\x1f`, `{` that is not a repetition is a literal, `[` inside a
//! class is a literal, and `findall`/`sub` report an empty match right after a non-empty one. What
//! it cannot translate faithfully (the `a`, `L` and `x` flags, scoped or inline `m` flags, `--`
//! inside a class, `\N{...}`) is refused with an error naming the pattern, never matched
//! differently.

use fancy_regex::Regex;

/// A Python pattern keel cannot run with Python's meaning, or a match that failed at run time.
#[derive(Debug, thiserror::Error)]
#[error("regex `{pattern}`: {why}")]
pub struct RegexError {
    pub pattern: String,
    pub why: String,
}

fn regex_err(pattern: &str, why: impl Into<String>) -> RegexError {
    RegexError { pattern: pattern.to_string(), why: why.into() }
}

/// Python's `str.isspace` (Unicode White_Space plus the separators `\x1c`-`\x1f`).
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` with no argument.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// One element of Python's `re.findall` result: the whole match when the pattern has no groups,
/// the group's text (empty when it did not take part) with one group, a tuple with more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Text(String),
    Groups(Vec<String>),
}

/// The byte ranges of one match: the whole match, then each group (`None` when it took no part).
type Spans = Vec<Option<(usize, usize)>>;

/// A Python `re` pattern compiled with Python's semantics (see the module documentation).
#[derive(Debug, Clone)]
pub struct PyRegex {
    pattern: String,
    re: Regex,
    /// Capturing groups, not counting the whole match.
    groups: usize,
}

impl PyRegex {
    /// Compiles a Python pattern (as written in a task's YAML, after YAML unescaping).
    pub fn new(pattern: &str) -> Result<Self, RegexError> {
        let translated = translate(pattern)?;
        let re = Regex::new(&translated).map_err(|e| regex_err(pattern, e.to_string()))?;
        let groups = re.captures_len() - 1;
        Ok(Self { pattern: pattern.to_string(), re, groups })
    }

    /// The pattern as given.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Match spans, each a list of `groups + 1` optional byte ranges, in the order CPython's
    /// `findall`/`sub` produce them: after an empty match the next one must not be empty at the same
    /// place, while an empty match may directly follow a non-empty one.
    ///
    /// One difference remains: at a place where the preferred match is empty but must not be,
    /// CPython backtracks into a lower-priority non-empty match there (possible only for patterns
    /// that can match the empty string, e.g. `a??`); here the search moves on one character.
    fn spans(&self, text: &str) -> Result<Vec<Spans>, RegexError> {
        let mut out = Vec::new();
        let mut pos = 0;
        let mut must_advance = false;
        while pos <= text.len() {
            let caps = self.re.captures_from_pos(text, pos).map_err(|e| regex_err(&self.pattern, e.to_string()))?;
            let Some(caps) = caps else { break };
            let whole = caps.get(0).expect("group 0 always matches");
            if must_advance && whole.start() == pos && whole.end() == pos {
                match text[pos..].chars().next() {
                    Some(c) => {
                        pos += c.len_utf8();
                        must_advance = false;
                        continue;
                    }
                    None => break,
                }
            }
            out.push((0..=self.groups).map(|i| caps.get(i).map(|m| (m.start(), m.end()))).collect());
            must_advance = whole.start() == whole.end();
            pos = whole.end();
        }
        Ok(out)
    }

    /// Python's `re.findall(pattern, text)`.
    pub fn findall(&self, text: &str) -> Result<Vec<Found>, RegexError> {
        let get = |s: Option<(usize, usize)>| s.map_or(String::new(), |(a, b)| text[a..b].to_string());
        Ok(self
            .spans(text)?
            .into_iter()
            .map(|m| match self.groups {
                0 => Found::Text(get(m[0])),
                1 => Found::Text(get(m[1])),
                _ => Found::Groups(m[1..].iter().map(|&s| get(s)).collect()),
            })
            .collect())
    }

    /// Python's `re.sub(pattern, "", text)`: every match removed.
    pub fn remove_all(&self, text: &str) -> Result<String, RegexError> {
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for m in self.spans(text)? {
            let (a, b) = m[0].expect("group 0 always matches");
            out.push_str(&text[last..a]);
            last = b;
        }
        out.push_str(&text[last..]);
        Ok(out)
    }
}

/// `c` written so that the Rust dialect reads it as the literal character, in or out of a class.
fn literal(c: char, out: &mut String) {
    if r"\.+*?()|[]{}^$#&-~".contains(c) {
        out.push('\\');
    }
    out.push(c);
}

fn take_hex(chars: &[char], i: usize, n: usize) -> Option<u32> {
    if i + n > chars.len() {
        return None;
    }
    let s: String = chars[i..i + n].iter().collect();
    if s.chars().all(|c| c.is_ascii_hexdigit()) {
        u32::from_str_radix(&s, 16).ok()
    } else {
        None
    }
}

fn push_code(code: u32, out: &mut String) {
    out.push_str(&format!("\\x{{{code:X}}}"));
}

/// Translates a Python `re` pattern into fancy-regex's dialect with the same meaning, or refuses it.
pub fn translate(pattern: &str) -> Result<String, RegexError> {
    let bad = |why: &str| regex_err(pattern, why);
    let chars: Vec<char> = pattern.chars().collect();
    // Global flags: Python 3.11 only allows them at the very start.
    let mut multiline = false;
    let mut out = String::new();
    let mut i = 0;
    let mut in_class = false;
    let mut class_first = false; // the next char is the first of the class (a `]` there is literal)
    let mut prev_class_dash = false; // the last thing emitted in the class was an unescaped `-`
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            let Some(&e) = chars.get(i + 1) else { return Err(bad("bad escape (end of pattern)")) };
            i += 2;
            class_first = false;
            prev_class_dash = false;
            match e {
                'a' => push_code(7, &mut out),
                'f' => out.push_str("\\f"),
                'n' => out.push_str("\\n"),
                'r' => out.push_str("\\r"),
                't' => out.push_str("\\t"),
                'v' => push_code(0x0B, &mut out),
                'x' | 'u' | 'U' => {
                    let n = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let code = take_hex(&chars, i, n).ok_or_else(|| bad(&format!("bad escape \\{e}")))?;
                    i += n;
                    char::from_u32(code).ok_or_else(|| bad(&format!("bad escape \\{e}: not a character")))?;
                    push_code(code, &mut out);
                }
                'N' => return Err(bad("named characters (\\N{...}) are not supported; write the character itself")),
                'd' | 'D' | 'w' | 'W' => {
                    out.push('\\');
                    out.push(e);
                }
                's' => out.push_str(if in_class { "\\s\\x1C-\\x1F" } else { "[\\s\\x1C-\\x1F]" }),
                // A nested negated class, which the Rust dialect also allows inside a class.
                'S' => out.push_str("[^\\s\\x1C-\\x1F]"),
                'b' if in_class => push_code(8, &mut out),
                'A' | 'b' | 'B' if !in_class => {
                    out.push('\\');
                    out.push(e);
                }
                'Z' if !in_class => out.push_str("\\z"),
                '0'..='9' => {
                    // Octal escape (`\0`, three octal digits, or any digits in a class) or backreference.
                    let octal_at = |k: usize| chars.get(k).is_some_and(|d| ('0'..='7').contains(d));
                    let three_octal = ('0'..='7').contains(&e) && octal_at(i) && octal_at(i + 1);
                    if e == '0' || three_octal || in_class {
                        if !('0'..='7').contains(&e) {
                            return Err(bad(&format!("bad escape \\{e}")));
                        }
                        let mut code = e.to_digit(8).unwrap();
                        let mut taken = 0;
                        while taken < 2 && octal_at(i) {
                            code = code * 8 + chars[i].to_digit(8).unwrap();
                            i += 1;
                            taken += 1;
                        }
                        if code > 0o377 {
                            return Err(bad("octal escape above \\377"));
                        }
                        push_code(code, &mut out);
                    } else {
                        // Backreference \N or \NN.
                        out.push('\\');
                        out.push(e);
                        if chars.get(i).is_some_and(|d| d.is_ascii_digit()) {
                            out.push(chars[i]);
                            i += 1;
                        }
                    }
                }
                e if e.is_ascii_alphabetic() => return Err(bad(&format!("bad escape \\{e}"))),
                e => literal(e, &mut out),
            }
            continue;
        }
        if in_class {
            let first = class_first;
            class_first = false;
            match c {
                ']' if !first => {
                    in_class = false;
                    out.push(']');
                }
                '[' | '&' | '~' | ']' => literal(c, &mut out),
                '-' => {
                    if prev_class_dash || chars.get(i + 1) == Some(&'-') {
                        return Err(bad("`--` inside a character class is not supported; escape the dashes"));
                    }
                    out.push('-');
                    prev_class_dash = true;
                    i += 1;
                    continue;
                }
                _ => out.push(c),
            }
            prev_class_dash = false;
            i += 1;
            continue;
        }
        match c {
            '[' => {
                in_class = true;
                out.push('[');
                i += 1;
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                class_first = true;
                prev_class_dash = false;
                continue;
            }
            '$' => out.push_str(if multiline { "$" } else { "(?=\\n?\\z)" }),
            '{' => {
                // A repetition only in the forms {m}, {m,}, {,n}, {m,n}, {,}; otherwise a literal.
                let mut j = i + 1;
                let lo_start = j;
                while chars.get(j).is_some_and(|d| d.is_ascii_digit()) {
                    j += 1;
                }
                let lo: String = chars[lo_start..j].iter().collect();
                let mut hi: Option<String> = None;
                if chars.get(j) == Some(&',') {
                    j += 1;
                    let hi_start = j;
                    while chars.get(j).is_some_and(|d| d.is_ascii_digit()) {
                        j += 1;
                    }
                    hi = Some(chars[hi_start..j].iter().collect());
                }
                let empty = lo.is_empty() && hi.is_none();
                if !empty && chars.get(j) == Some(&'}') {
                    let lo = if lo.is_empty() { "0".to_string() } else { lo };
                    match hi {
                        None => out.push_str(&format!("{{{lo}}}")),
                        Some(h) => out.push_str(&format!("{{{lo},{h}}}")),
                    }
                    i = j + 1;
                    continue;
                }
                out.push_str("\\{");
            }
            '}' => out.push_str("\\}"),
            '(' if chars.get(i + 1) == Some(&'?') => {
                let rest: String = chars[i + 2..].iter().collect();
                if rest.starts_with('#') {
                    // A comment: dropped up to its `)`.
                    let end = rest.find(')').ok_or_else(|| bad("unterminated comment"))?;
                    i += 2 + rest[..end].chars().count() + 1;
                    continue;
                }
                if let Some(name_end) = rest.strip_prefix("P=").and_then(|r| r.find(')')) {
                    let name = &rest[2..2 + name_end];
                    out.push_str(&format!("\\k<{name}>"));
                    i += 2 + 2 + name.chars().count() + 1;
                    continue;
                }
                let flags: String = rest.chars().take_while(|f| f.is_ascii_alphabetic() || *f == '-').collect();
                if !flags.is_empty() && !rest.starts_with("P<") && !rest.starts_with("P=") {
                    let after = rest.chars().nth(flags.chars().count());
                    for f in flags.chars() {
                        match f {
                            'i' | 's' | 'u' | '-' => {}
                            'm' => {
                                if after == Some(')') && i == 0 && !flags.contains('-') {
                                    multiline = true;
                                } else {
                                    return Err(bad("the m flag is supported only as a global flag at the start"));
                                }
                            }
                            'a' | 'L' => return Err(bad(&format!("the {f} flag is not supported"))),
                            'x' => return Err(bad("verbose patterns (the x flag) are not supported")),
                            _ => return Err(bad(&format!("unknown flag {f}"))),
                        }
                    }
                    let kept: String = flags.chars().filter(|f| *f != 'u').collect();
                    i += 2 + flags.chars().count();
                    if kept.is_empty() || kept == "-" {
                        // Only `u` (Python's default for str patterns): a plain group or nothing.
                        if after == Some(')') {
                            i += 1;
                        } else {
                            out.push_str("(?");
                        }
                        continue;
                    }
                    out.push_str("(?");
                    out.push_str(&kept);
                    continue;
                }
                out.push('(');
            }
            _ => out.push(c),
        }
        i += 1;
    }
    if in_class {
        return Err(bad("unterminated character set"));
    }
    Ok(out)
}

/// Cuts a generation at the earliest occurrence of any stop string, as lm-evaluation-harness's
/// `postprocess_generated_text` does (`generation.split(term)[0]` for each term in turn; empty
/// terms are skipped). The caller adds the tokenizer's end-of-text string to `until`, as
/// `handle_stop_sequences` does.
pub fn cut_at_stop<'a, S: AsRef<str>>(generation: &'a str, until: &[S]) -> &'a str {
    let end = until
        .iter()
        .map(AsRef::as_ref)
        .filter(|t| !t.is_empty())
        .filter_map(|t| generation.find(t))
        .min()
        .unwrap_or(generation.len());
    &generation[..end]
}

/// The `until` list lm-evaluation-harness decodes with: the task's stop strings plus the
/// tokenizer's end-of-text string when it is not already there (`handle_stop_sequences`).
pub fn until_with_eos(until: &[&str], eos: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = until.iter().map(|s| s.to_string()).collect();
    if let Some(eos) = eos {
        if !out.iter().any(|s| s == eos) {
            out.push(eos.to_string());
        }
    }
    out
}

/// lm-evaluation-harness's `regex` filter (`RegexFilter` in `lm_eval/filters/extraction.py`):
/// `findall`, the `group_select`-th match (Python indexing, so -1 is the last), for a tuple of
/// groups its first non-empty group, stripped; `fallback` when nothing matches (or every group of
/// the selected match is empty).
#[derive(Debug, Clone)]
pub struct RegexFilter {
    pub regex: PyRegex,
    pub group_select: i64,
    pub fallback: String,
}

impl RegexFilter {
    /// `group_select` 0 and fallback `[invalid]`, the filter's defaults.
    pub fn new(pattern: &str) -> Result<Self, RegexError> {
        Ok(Self { regex: PyRegex::new(pattern)?, group_select: 0, fallback: "[invalid]".to_string() })
    }

    pub fn group_select(mut self, group_select: i64) -> Self {
        self.group_select = group_select;
        self
    }

    pub fn apply(&self, response: &str) -> Result<String, RegexError> {
        let found = self.regex.findall(response)?;
        if found.is_empty() {
            return Ok(self.fallback.clone());
        }
        let n = found.len() as i64;
        let k = if self.group_select < 0 { n + self.group_select } else { self.group_select };
        if k < 0 || k >= n {
            return Err(regex_err(
                self.regex.pattern(),
                format!("group_select {} is out of range for {n} matches (Python's IndexError)", self.group_select),
            ));
        }
        let text = match &found[k as usize] {
            Found::Text(t) => t.clone(),
            Found::Groups(g) => match g.iter().find(|s| !s.is_empty()) {
                Some(s) => s.clone(),
                None => self.fallback.clone(),
            },
        };
        Ok(py_strip(&text).to_string())
    }
}

/// One step of a filter pipeline.
#[derive(Debug, Clone)]
pub enum FilterStep {
    Regex(Box<RegexFilter>),
    /// `take_first`: keeps the first of a document's responses (`TakeFirstFilter`).
    TakeFirst,
}

/// A named pipeline of a task's `filter_list`; its result is what `exact_match` scores.
#[derive(Debug, Clone)]
pub struct FilterPipeline {
    pub name: String,
    pub steps: Vec<FilterStep>,
}

impl FilterPipeline {
    /// Runs the steps over one document's responses (one per repeat) and returns the first
    /// response that remains, as lm-evaluation-harness's `process_results` scores `results[0]`.
    pub fn apply(&self, responses: &[String]) -> Result<String, RegexError> {
        let mut resps: Vec<String> = responses.to_vec();
        for step in &self.steps {
            resps = match step {
                FilterStep::Regex(f) => resps.iter().map(|r| f.apply(r)).collect::<Result<_, _>>()?,
                FilterStep::TakeFirst => resps.into_iter().take(1).collect(),
            };
        }
        resps.into_iter().next().ok_or_else(|| regex_err("", format!("filter {}: no response to score", self.name)))
    }
}

/// lm-evaluation-harness's `exact_match` metric (`exact_match_hf_evaluate` in
/// `lm_eval/api/metrics.py`). Prediction and reference are normalised alike, in this order: each
/// of `regexes_to_ignore` removed in turn (`re.sub(s, "", x)`), then lowercasing (`ignore_case`),
/// then Python's `string.punctuation` removed (`ignore_punctuation`), then the digits 0-9
/// (`ignore_numbers`). The strings are compared as NumPy `str_` arrays compare them, which drops
/// trailing NUL characters.
#[derive(Debug, Clone, Default)]
pub struct ExactMatch {
    pub regexes_to_ignore: Vec<PyRegex>,
    pub ignore_case: bool,
    pub ignore_punctuation: bool,
    pub ignore_numbers: bool,
}

impl ExactMatch {
    pub fn normalize(&self, s: &str) -> Result<String, RegexError> {
        let mut s = s.to_string();
        for re in &self.regexes_to_ignore {
            s = re.remove_all(&s)?;
        }
        if self.ignore_case {
            s = s.to_lowercase();
        }
        if self.ignore_punctuation {
            s.retain(|c| !c.is_ascii_punctuation());
        }
        if self.ignore_numbers {
            s.retain(|c| !c.is_ascii_digit());
        }
        Ok(s.trim_end_matches('\0').to_string())
    }

    /// 1 when the normalised prediction equals the normalised reference.
    pub fn score(&self, prediction: &str, reference: &str) -> Result<bool, RegexError> {
        Ok(self.normalize(prediction)? == self.normalize(reference)?)
    }
}

/// Mean and standard error of per-item scores as lm-evaluation-harness aggregates them (`mean`,
/// and `mean_stderr`: sample standard deviation over `sqrt(n)`; none for fewer than two items,
/// where the harness prints N/A).
pub fn mean_and_stderr(scores: &[f64]) -> (f64, Option<f64>) {
    let n = scores.len();
    if n == 0 {
        return (f64::NAN, None);
    }
    let mean = scores.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, None);
    }
    let var = scores.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, Some(var.sqrt() / (n as f64).sqrt()))
}
