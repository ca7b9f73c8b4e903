//! The paper's evaluation domains as groups of tasks, averaged as lm-evaluation-harness averages a
//! group (`lm_eval/api/group.py`, `aggregate_metric_list` with its default `weight_by_size: true`):
//! for each metric, the mean over the member tasks that report it, weighted by their item counts
//! (`lm_eval/api/metrics.py::aggregate_subtask_metrics`). The unweighted mean over tasks is
//! reported beside it (`METRIC_macro`).
//!
//! `--data ROOT` holds one folder (or file) per member, named after its `--bench` name
//! (`ROOT/hellaswag`, `ROOT/arc_easy`, ...; links are fine). Each member's own results folder is
//! written inside the group's, as `keel eval --bench MEMBER` would write it.

use super::bench::{Benchmark, Data, Outcome, Session, Settings};
use super::{arc, bbh, cmmlu, gsm8k, hellaswag, mmlu, piqa, winogrande};
use crate::InputError;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One domain.
pub struct Group {
    pub name: &'static str,
    pub about: &'static str,
    pub members: &'static [&'static dyn Benchmark],
}

/// The paper's three domains, with the tasks keel has for each.
pub static KNOWLEDGE: Group = Group {
    name: "knowledge",
    about: "Knowledge and common sense: mmlu, hellaswag, arc_easy, arc_challenge, piqa, winogrande (averaged as lm-evaluation-harness averages a group)",
    members: &[&mmlu::Mmlu, &hellaswag::Hellaswag, &arc::ArcEasy, &arc::ArcChallenge, &piqa::Piqa, &winogrande::Winogrande],
};
pub static MATH_CODE: Group = Group {
    name: "math_code",
    about: "Math and reasoning: gsm8k, bbh_fewshot (no code task: keel does not execute generated code)",
    members: &[&gsm8k::Gsm8kBench(gsm8k::Variant::Gsm8k), &bbh::BbhFewshot],
};
pub static MULTILINGUAL: Group =
    Group { name: "multilingual", about: "Multilingual understanding: cmmlu (Chinese)", members: &[&cmmlu::Cmmlu] };

/// Member metrics under the names lm-evaluation-harness gives them (keel's MMLU says `accuracy`).
fn harness_metric(metric: &str) -> &str {
    match metric {
        "accuracy" => "acc",
        m => m,
    }
}

/// One member's outcome in the group's `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub bench: String,
    pub folder: String,
    pub items: usize,
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub bench: &'static str,
    pub model: String,
    pub data: String,
    pub members: Vec<Member>,
    /// Per metric: the size-weighted mean over the members that report it (lm-evaluation-harness's
    /// group value), and `METRIC_macro`, the plain mean.
    #[serde(flatten)]
    pub aggregates: BTreeMap<String, f64>,
    pub elapsed_s: f64,
    pub keel_version: &'static str,
}

/// Size-weighted and plain means of each metric over the members that report it.
pub fn aggregate(members: &[Member]) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<&str, (f64, f64, f64, usize)> = BTreeMap::new();
    for m in members {
        for (k, v) in &m.metrics {
            let e = sums.entry(k).or_default();
            e.0 += v * m.items as f64;
            e.1 += m.items as f64;
            e.2 += v;
            e.3 += 1;
        }
    }
    let mut out = BTreeMap::new();
    for (k, (weighted, n, plain, tasks)) in sums {
        out.insert(k.to_string(), weighted / n.max(1.0));
        out.insert(format!("{k}_macro"), plain / tasks as f64);
    }
    out
}

impl Benchmark for Group {
    fn name(&self) -> &'static str {
        self.name
    }

    fn about(&self) -> &'static str {
        self.about
    }

    fn data(&self) -> Data {
        Data::Required(
            "pass --data ROOT holding one folder per member task, named after it (ROOT/gsm8k, ROOT/hellaswag, ...)",
        )
    }

    fn takes_shots(&self) -> bool {
        true
    }

    fn metrics(&self) -> &'static [&'static str] {
        &["acc", "acc_norm", "exact_match_flexible_extract", "exact_match_strict_match", "exact_match"]
    }

    /// `{group}` or `{group}-{shots}shot` when `--shots` is given.
    fn folder(&self, s: &Settings) -> String {
        match s.shots {
            Some(n) => format!("{}-{n}shot", self.name),
            None => self.name.to_string(),
        }
    }

    fn run(&self, s: &mut Session) -> Result<Outcome> {
        let start = std::time::Instant::now();
        let root = Path::new(s.data()).to_path_buf();
        for b in self.members {
            let path = root.join(b.name());
            if !path.exists() {
                return Err(InputError(format!(
                    "{}: no {} for member task {}\n  put that task's data there (a folder or a link to one), as `keel eval --bench {}` reads it",
                    root.display(),
                    path.display(),
                    b.name(),
                    b.name()
                ))
                .into());
            }
        }
        let dir = s.dir()?;
        let mut members = Vec::new();
        let mut summary = String::new();
        for &b in self.members {
            let settings = Settings { data: Some(root.join(b.name()).display().to_string()), ..s.settings.clone() };
            let folder = b.folder(&settings);
            let out = dir.join(&folder);
            let mut sub = Session::new(&mut *s.scorer, &settings, &mut *s.progress, Some(out), dir.clone(), true);
            let outcome = b.run(&mut sub)?;
            outcome.write_to(&sub.finish()?)?;
            let v: serde_json::Value = serde_json::from_str(&outcome.results)?;
            let metrics = b
                .metrics()
                .iter()
                .filter_map(|m| v.get(*m).and_then(|x| x.as_f64()).map(|x| (harness_metric(m).to_string(), x)))
                .collect();
            let items = v.get("questions").and_then(|q| q.as_u64()).unwrap_or(0) as usize;
            summary.push_str(&outcome.summary);
            summary.push('\n');
            members.push(Member { bench: b.name().to_string(), folder, items, metrics });
        }
        let aggregates = aggregate(&members);
        let results = Results {
            bench: self.name,
            model: s.scorer.lm().describe(),
            data: root.display().to_string(),
            members,
            aggregates,
            elapsed_s: start.elapsed().as_secs_f64(),
            keel_version: crate::VERSION,
        };
        let line: Vec<String> = results
            .aggregates
            .iter()
            .filter(|(k, _)| !k.ends_with("_macro"))
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect();
        summary.push_str(&format!("{} (size-weighted over its tasks): {}; ", self.name, line.join(", ")));
        Outcome::new(&results, summary)
    }
}
