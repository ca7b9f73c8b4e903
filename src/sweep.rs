//! Sweeps: grids of experiments (depth x placement x learning rate x seed x any config key), each
//! an ordinary run directory, run through the grid runner (skips finished runs, resumes
//! interrupted ones, records divergence as a result), scored by `keel eval` where asked, and
//! summarized in `summary.csv`; or written out as a Slurm job array.

use crate::config::{Config, Placement};
use crate::eval::registry::Bench;
use crate::files::write_atomic;
use crate::grid::{self, parse_depths, Axis, Job};
use crate::memory::{self, Room};
use crate::run_dir::{RunDir, Summary};
use crate::InputError;
use anyhow::{Context, Result};
use std::path::Path;
use std::process::Stdio;

/// `--depths` when it is not given.
pub const DEFAULT_DEPTHS: &str = "64..1024";

/// The axes of a sweep, in the order they vary (depth outermost), and the other flags that give a
/// run's config keys their values: each key takes its values from one of them, never two.
#[derive(Debug, Clone, Default)]
pub struct Axes {
    /// `A..B` (doubling) or a comma list.
    pub depths: String,
    pub placements: Vec<String>,
    pub lrs: Vec<f64>,
    pub seeds: Vec<u64>,
    /// `section.key=v1,v2`, each another axis.
    pub grid: Vec<String>,
    /// `--set section.key=value`: one value for every run.
    pub sets: Vec<String>,
    /// `--device` and `--devices`, which choose each run's `run.device`.
    pub device: Option<String>,
    pub devices: Vec<String>,
}

/// Where one config key gets values in a sweep.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// `--depths`, `--placements`, `--lrs` or `--seeds` (the flag).
    Axis(&'static str),
    /// `--grid key=v1,v2`.
    Grid,
    /// `--set key=v`.
    Set,
    /// `--device` or `--devices`.
    Device,
    /// The sweep itself: it names each run and places it in `--out`.
    Sweep,
}

/// One flag's values for one key.
#[derive(Debug, Clone)]
struct Given {
    key: String,
    /// As the user wrote it (`--lrs 2e-3`, `--grid train.lr=1e-3`), for messages.
    flag: String,
    values: Vec<String>,
    source: Source,
}

impl Given {
    fn varies(&self) -> bool {
        matches!(self.source, Source::Axis(_) | Source::Grid)
    }
}

impl Axes {
    /// The grid axes; an axis left empty takes the config's value. A key given values by two
    /// flags is refused (keel would train one and name the run after the other, or both), and so
    /// is an axis listing one value twice (two grid points, one config, one folder).
    pub fn axes(&self) -> Result<Vec<Axis>> {
        let given = self.given()?;
        one_source_per_key(&given, self.depths == DEFAULT_DEPTHS)?;
        let mut axes = Vec::new();
        for g in given.iter().filter(|g| g.varies()) {
            distinct(g)?;
            axes.push(Axis { key: g.key.clone(), values: g.values.clone() });
        }
        Ok(axes)
    }

    /// Every flag that gives a key values, axes first in the order they vary.
    fn given(&self) -> Result<Vec<Given>> {
        let axis = |key: &str, flag: &'static str, values: Vec<String>| Given {
            key: key.into(),
            flag: format!("{flag} {}", values.join(",")),
            values,
            source: Source::Axis(flag),
        };
        let mut depth =
            axis("model.depth", "--depths", parse_depths(&self.depths)?.iter().map(|d| d.to_string()).collect());
        depth.flag = format!("--depths {}", self.depths);
        if self.depths == DEFAULT_DEPTHS {
            depth.flag.push_str(" (the default)");
        }
        let mut given = vec![depth];
        if !self.placements.is_empty() {
            let names = self.placements.iter().map(|p| Ok(Placement::parse(p)?.as_str().to_string()));
            given.push(axis("model.placement", "--placements", names.collect::<Result<_>>()?));
        }
        if !self.lrs.is_empty() {
            given.push(axis("train.lr", "--lrs", self.lrs.iter().map(|x| format!("{x:e}")).collect()));
        }
        if !self.seeds.is_empty() {
            given.push(axis("train.seed", "--seeds", self.seeds.iter().map(|x| x.to_string()).collect()));
        }
        for g in &self.grid {
            let Some((key, values)) = g.split_once('=') else {
                return Err(InputError(format!("--grid `{g}`: write it as section.key=v1,v2")).into());
            };
            let values = values.split(',').map(|v| v.trim().to_string()).collect();
            given.push(Given { key: key.trim().into(), flag: format!("--grid {g}"), values, source: Source::Grid });
        }
        // A --set without `=` is left to the config loader's message.
        for s in &self.sets {
            if let Some((key, value)) = s.split_once('=') {
                let values = vec![value.trim().to_string()];
                given.push(Given { key: key.trim().into(), flag: format!("--set {s}"), values, source: Source::Set });
            }
        }
        let device = |flag: String, values: Vec<String>| Given {
            key: "run.device".into(),
            flag,
            values,
            source: Source::Device,
        };
        if let Some(d) = &self.device {
            given.push(device(format!("--device {d}"), vec![d.clone()]));
        }
        if !self.devices.is_empty() {
            given.push(device(format!("--devices {}", self.devices.join(",")), self.devices.clone()));
        }
        let sweep = |key: &str, flag: &str| Given {
            key: key.into(),
            flag: flag.into(),
            values: Vec::new(),
            source: Source::Sweep,
        };
        given.push(sweep("run.name", "the sweep, which names each run after its grid point (d64-keel-lr3e-3)"));
        given.push(sweep("run.out_dir", "--out, which holds the sweep's runs"));
        Ok(given)
    }
}

/// `Err` naming the first key that two flags give values, both flags, and the one flag to give
/// instead. Two fixed values (`--set` and `--device`) are not the sweep's concern: the later one
/// wins there as in `keel train`.
fn one_source_per_key(given: &[Given], default_depths: bool) -> Result<(), InputError> {
    for (i, first) in given.iter().enumerate() {
        let owns = |g: &Given| g.varies() || g.source == Source::Sweep;
        let Some(second) = given[i + 1..].iter().find(|g| g.key == first.key && (owns(first) || owns(g))) else {
            continue;
        };
        let key = &first.key;
        let fix = if [first, second].iter().any(|g| g.source == Source::Sweep) {
            let other = if first.source == Source::Sweep { second } else { first };
            format!(
                "drop {}: {}",
                other.flag,
                if key == "run.name" { "the sweep names each run" } else { "choose the sweep's folder with --out" }
            )
        } else if [first, second].iter().any(|g| g.source == Source::Device) {
            let (device, grid) = if first.source == Source::Device { (first, second) } else { (second, first) };
            format!("drop {} (the grid gives each run its device), or {}", device.flag, grid.flag)
        } else {
            // Both sets of values, the default depths left out: the fix keeps what was asked for.
            let mut values: Vec<String> = Vec::new();
            for g in [first, second] {
                if !(default_depths && g.source == Source::Axis("--depths")) {
                    for v in &g.values {
                        if !values.iter().any(|w| same_value(key, w, v)) {
                            values.push(v.clone());
                        }
                    }
                }
            }
            let flag = [first, second].iter().find_map(|g| match g.source {
                Source::Axis(flag) => Some(flag),
                _ => None,
            });
            match flag {
                Some(flag) => format!("{flag} {}", values.join(",")),
                None => format!("--grid {key}={}", values.join(",")),
            }
        };
        return Err(InputError(format!(
            "{key} is given twice, by {} and by {}: a sweep takes each key's values from one flag (keel would use only one of them)\n  give {key} once: {fix}",
            first.flag, second.flag
        )));
    }
    Ok(())
}

/// `Err` when an axis lists one value twice, compared as the config reads them (`0.001` is
/// `1e-3`), naming the values and the list without repeats.
fn distinct(g: &Given) -> Result<()> {
    let mut kept: Vec<(&str, String)> = Vec::new();
    let mut repeat = None;
    for v in &g.values {
        let value = config_value(&g.key, v)?;
        match kept.iter().find(|(_, w)| *w == value) {
            Some(&(first, _)) => repeat = repeat.or(Some((first, v.as_str(), value))),
            None => kept.push((v, value)),
        }
    }
    let Some((first, again, value)) = repeat else { return Ok(()) };
    let values = kept.iter().map(|(v, _)| *v).collect::<Vec<_>>().join(",");
    let fix = match g.source {
        Source::Axis(flag) => format!("{flag} {values}"),
        _ => format!("--grid {}={values}", g.key),
    };
    let twice =
        if first == again { format!("{again} twice") } else { format!("{value} twice, as {first} and {again}") };
    Err(InputError(format!(
        "{} gives {} the value {twice}: two grid points would be one run, in one folder\n  give each value once: {fix}",
        g.flag, g.key
    ))
    .into())
}

/// `v` as the config holds it at `key` (the defaults otherwise), in the config's own text.
fn config_value(key: &str, v: &str) -> Result<String> {
    let text = Config::load(None, &[format!("{key}={v}")])?.flatten().remove(key).unwrap_or_else(|| v.to_string());
    Ok(serde_json::from_str::<String>(&text).unwrap_or(text))
}

/// Whether `a` and `b` are one value of `key`; text that does not load compares as text.
fn same_value(key: &str, a: &str, b: &str) -> bool {
    match (config_value(key, a), config_value(key, b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// One resolved run per grid point: `config_file` (or the defaults) with `sets`, the point's own
/// overrides and `run.name`, on `device` when given; each run's folder is `out/NAME`.
pub fn jobs(
    axes: &[Axis],
    config_file: Option<&Path>,
    sets: &[String],
    device: Option<&str>,
    out: &Path,
) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    // Each distinct [data] section is loaded once, for its vocabulary (a --grid may vary it).
    let mut vocab_by_data: Vec<(String, usize)> = Vec::new();
    let mut points: Vec<(String, Vec<String>)> = Vec::new();
    for (point, name) in grid::expand(axes) {
        // Distinct values can still give one name (names keep only `A-Za-z0-9._-`): one folder.
        if let Some((_, other)) = points.iter().find(|(n, _)| *n == name) {
            return Err(InputError(format!(
                "grid points {} and {} would share the folder {}: a run's name keeps only letters, digits, `.`, `-` and `_`\n  give that axis values that differ in those characters, or sweep them into separate --out folders",
                other.join(" "),
                point.join(" "),
                out.join(&name).display()
            ))
            .into());
        }
        points.push((name.clone(), point.clone()));
        let mut all = sets.to_vec();
        all.extend(point);
        all.push(format!("run.name={name}"));
        let mut c = Config::load(config_file, &all)?;
        if let Some(d) = device {
            c.run.device = d.to_string();
        }
        let key = format!("{:?}", c.data);
        // A run too big for any device is refused later; its data (synthetic text grows with
        // train.seq_len) is not generated for it.
        let early = c.resolve(crate::data::BYTE_VOCAB).with_context(|| format!("run {name}"))?;
        let hopeless = memory::estimate(&early).total() > memory::ACCELERATOR_LIMIT.max(Room::of_spec("cpu").limit());
        let vocab = match vocab_by_data.iter().find(|(k, _)| *k == key) {
            _ if hopeless => crate::data::BYTE_VOCAB,
            Some(&(_, v)) => v,
            None => {
                let v = crate::data::Corpus::load(&c.data, c.train.seq_len)?.vocab_size;
                vocab_by_data.push((key, v));
                v
            }
        };
        let resolved = c.resolve(vocab).with_context(|| format!("run {name}"))?;
        jobs.push(Job { dir: out.join(&name), name, config: resolved });
    }
    Ok(jobs)
}

/// A run's size, memory and rough training time, for `--dry-run`; nothing is built.
pub struct Estimate {
    pub params: f64,
    pub tokens: f64,
    pub minutes: f64,
    pub memory: memory::Estimate,
}

/// Rough time: 6 x parameters x tokens at 50 GFLOP/s, about what keel sustains on 2 CPU cores
/// (docs/speed.md); attention and per-op overhead come on top for deep-narrow models. Parameters
/// and memory are counted from the config (`memory`), so a dry run of a huge grid allocates nothing.
pub fn estimate(job: &Job) -> Estimate {
    let t = job.config.train();
    let memory = memory::estimate(&job.config);
    let tokens = t.steps as f64 * t.batch_size as f64 * t.seq_len as f64 * t.grad_accum as f64;
    Estimate { params: memory.params, tokens, minutes: 6.0 * memory.params * tokens / 5e10 / 60.0, memory }
}

/// `Err` naming the run when `job` cannot fit in memory on its device, or on any of `devices`
/// (the `--devices` it may be given to).
pub fn check_memory(job: &Job, devices: &[String]) -> Result<(), InputError> {
    let own = [job.config.config.run.device.clone()];
    let specs = if devices.is_empty() { &own[..] } else { devices };
    for spec in specs {
        memory::check_in(&job.config, &Room::of_spec(spec))
            .map_err(|e| InputError(format!("run {} (on {spec}): {}", job.name, e.0)))?;
    }
    Ok(())
}

/// Writes `out/sweep.slurm` (a job array) and `out/runs.txt` (one `keel train` per line), with
/// each run's config in `out/.configs/`.
pub fn emit_slurm(jobs: &[Job], out: &Path, ntasks: usize) -> Result<()> {
    let configs = out.join(".configs");
    std::fs::create_dir_all(&configs)?;
    let mut lines = String::new();
    for j in jobs {
        let file = configs.join(format!("{}.toml", j.name));
        write_atomic(&file, j.config.to_toml(toml::Table::new()).as_bytes())?;
        // A multi-process run is one MPI job of `ntasks` ranks inside the array task's allocation.
        let launcher = if ntasks > 1 { format!("srun -n {ntasks} ") } else { String::new() };
        lines.push_str(&format!(
            "{launcher}keel train --quiet --config {} --out {}\n",
            file.display(),
            j.dir.display()
        ));
    }
    write_atomic(&out.join("runs.txt"), lines.as_bytes())?;
    write_atomic(&out.join("sweep.slurm"), slurm_script(jobs.len(), out, ntasks).as_bytes())?;
    Ok(())
}

/// `--devices`: a bare number is a CUDA ordinal.
pub fn devices(given: &[String]) -> Vec<String> {
    given.iter().map(|d| if d.chars().all(|c| c.is_ascii_digit()) { format!("cuda:{d}") } else { d.clone() }).collect()
}

/// `alpha` is Keel's residual scale at the run's depth (`model.alpha` resolved), empty for the
/// placements that do not read it.
pub const SUMMARY_HEADER: &str = "run,placement,depth,blocks,d_model,alpha,lr,seed,parameters,tokens,final_train_loss,final_val_loss,final_val_ppl,diverged_at_step,tokens_per_s,wall_time_s,peak_rss_mb";

fn opt(v: Option<f64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

/// Where a run sits in its grid: depth, then placement (in `Placement::ALL`'s order), Keel's alpha
/// (by value: 1, sqrt L, L, 4L), learning rate, seed, and the run's name for any other axis.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub struct GridOrder(usize, usize, f64, f64, u64, String);

/// A summary.csv row from a finished run directory (its config.toml and summary.json), with its
/// place in the grid.
pub fn summary_row(dir: &Path) -> Result<Option<(GridOrder, String)>> {
    let run = RunDir::at(dir);
    let (cfg, sum) = (run.config(), run.summary());
    if !cfg.exists() || !sum.exists() {
        return Ok(None);
    }
    let c = run.read_config()?;
    let s: Summary =
        serde_json::from_slice(&crate::files::read(&sum)?).with_context(|| format!("reading {}", sum.display()))?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
    let placement = crate::placement::Placement::parse(&s.placement)
        .ok()
        .and_then(|p| crate::placement::Placement::ALL.iter().position(|&q| q == p))
        .unwrap_or(usize::MAX);
    let keel = c.model.placement == crate::placement::Placement::Keel;
    let alpha = keel.then(|| c.model.alpha.at_depth(s.depth));
    let order = GridOrder(s.depth, placement, alpha.unwrap_or(0.0), c.train.lr, c.train.seed, name.clone());
    Ok(Some((
        order,
        format!(
            "{name},{},{},{},{},{},{:e},{},{},{},{},{},{},{},{},{},{}",
            s.placement,
            s.depth,
            s.depth / 2,
            s.d_model,
            opt(alpha),
            c.train.lr,
            c.train.seed,
            s.n_params,
            s.tokens,
            opt(s.final_train_loss),
            opt(s.final_val_loss),
            opt(s.final_val_ppl),
            s.diverged_at_step.map(|k| k.to_string()).unwrap_or_default(),
            s.tokens_per_s,
            s.wall_time_s,
            opt(s.peak_rss_mb)
        ),
    )))
}

/// Rebuilds `OUT/summary.csv` from the run directories under `out`, however they were produced.
/// Evaluation scores found in the runs add columns after the standard ones.
pub fn collect(out: &Path) -> Result<usize> {
    let dirs: Vec<_> = std::fs::read_dir(out)
        .map_err(|e| InputError(format!("cannot read {}: {e}", out.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    let mut rows = Vec::new();
    let mut columns = std::collections::BTreeSet::new();
    for d in dirs {
        if let Some((order, row)) = summary_row(&d)? {
            let scores = crate::eval::registry::scores(&d);
            columns.extend(scores.keys().cloned());
            rows.push((order, row, scores));
        }
    }
    // Grid order (depth 16, 64, 256; not the names' string order d16, d256, d64).
    rows.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    let mut text = String::from(SUMMARY_HEADER);
    for c in &columns {
        text.push(',');
        text.push_str(c);
    }
    text.push('\n');
    for (_, row, scores) in &rows {
        text.push_str(row);
        for c in &columns {
            text.push(',');
            text.push_str(&scores.get(c).map(|x| x.to_string()).unwrap_or_default());
        }
        text.push('\n');
    }
    crate::fault::pause_point("collect-before-write");
    write_atomic(&out.join("summary.csv"), text.as_bytes())?;
    Ok(rows.len())
}

/// What `keel sweep --eval` scores each finished run on.
#[derive(Debug, Clone, Default)]
pub struct Evals {
    pub benches: Vec<Bench>,
    /// `--data` for the benchmarks that need it.
    pub data: crate::eval::registry::EvalData,
    /// `--shots` (from the test split) for the benchmarks that take them (`None`: their own).
    pub shots: Option<usize>,
    /// `--max-gen-toks` for the generative benchmarks (`None`: their own).
    pub max_gen_toks: Option<usize>,
    pub limit: Option<usize>,
}

/// Runs `keel eval` for each requested benchmark on a finished run, unless its results exist.
pub fn evaluate_run(dir: &Path, evals: &Evals) -> Result<(), String> {
    if !RunDir::at(dir).has_weights() {
        return Ok(()); // diverged: nothing to score
    }
    for bench in &evals.benches {
        let name = bench.name();
        let mut cmd = crate::child::keel().map_err(|e| e.to_string())?;
        cmd.args(bench.sweep_args(dir, &evals.data, evals.shots, evals.max_gen_toks, evals.limit));
        let Some(out) =
            crate::child::run(cmd.stdout(Stdio::piped()).stderr(Stdio::piped())).map_err(|e| e.to_string())?
        else {
            return Ok(()); // the sweep is stopping
        };
        if crate::child::stopping() && !out.status.success() {
            return Ok(()); // ended by the stop; the next start scores the run
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(2) && err.contains("already holds results") {
            continue;
        }
        if !out.status.success() {
            return Err(format!("keel eval --bench {name}: {}", err.lines().next().unwrap_or("")));
        }
    }
    Ok(())
}

/// A Slurm job-array script: task i runs line i of runs.txt, with `ntasks` processes per run.
pub fn slurm_script(n: usize, out: &Path, ntasks: usize) -> String {
    let tasks = if ntasks > 1 {
        format!("#SBATCH --ntasks={ntasks}\n# each run is one data-parallel MPI job of {ntasks} ranks (keel built with --features mpi)\n")
    } else {
        String::new()
    };
    format!(
        "#!/bin/bash\n# keel sweep: one array task per run; each line of runs.txt is one `keel train` command.\n#SBATCH --job-name=keel-sweep\n#SBATCH --array=0-{}\n{tasks}#SBATCH --output={}/slurm-%A_%a.out\nset -euo pipefail\ncmd=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {}/runs.txt)\neval \"$cmd\"\n# afterwards: keel sweep --collect --out {}\n",
        n.saturating_sub(1),
        out.display(),
        out.display(),
        out.display()
    )
}
