//! `keel eval`: load a run (or a Llama model), score one benchmark, write `results.json` and a
//! per-item CSV into the results folder, and print a table.

use crate::cli::{Bench, EvalArgs};
use crate::config::Config;
use crate::data::Corpus;
use crate::eval::{self, layer_removal, mc, mmlu, ppl, synthetic, KeelLm, LanguageModel};
use crate::metrics::write_atomic;
use crate::InputError;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The model being scored.
enum Scorer {
    Keel(Box<KeelLm>),
    Hf(Box<dyn LanguageModel>),
}

impl Scorer {
    fn lm(&mut self) -> &mut dyn LanguageModel {
        match self {
            Scorer::Keel(k) => k.as_mut(),
            Scorer::Hf(h) => h.as_mut(),
        }
    }
}

fn bench_name(args: &EvalArgs) -> String {
    let stem = |s: &str| Path::new(s).file_stem().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    match args.bench {
        Bench::Mmlu => format!("mmlu-{}shot", args.shots),
        Bench::Ppl => "ppl".into(),
        Bench::McJsonl => format!("mc-{}-{}shot", stem(args.data.as_deref().unwrap_or("")), args.shots),
        Bench::Bigbench => {
            let d = args.data.as_deref().unwrap_or("").trim_end_matches('/');
            let d = d.strip_suffix("/task.json").unwrap_or(d);
            format!(
                "bigbench-{}-{}shot",
                Path::new(d).file_name().map(|f| f.to_string_lossy()).unwrap_or_default(),
                args.shots
            )
        }
        Bench::Synthetic => "synthetic".into(),
        Bench::LayerRemoval => "layer-removal".into(),
    }
}

fn progress_bar(quiet: bool, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

fn need_data(args: &EvalArgs, what: &str) -> Result<String> {
    args.data
        .clone()
        .ok_or_else(|| InputError(format!("--bench {what} needs --data\n  {}", data_hint(args.bench))).into())
}

fn data_hint(bench: Bench) -> &'static str {
    match bench {
        Bench::Mmlu => {
            "pass --data DIR holding dev/, val/ and test/ (scripts/get_mmlu.sh makes one) or --data hf:ORG/NAME"
        }
        Bench::McJsonl => "pass --data FILE.jsonl (question or context, choices, answer per line)",
        Bench::Bigbench => "pass --data with a BIG-bench task folder (bigbench/benchmark_tasks/NAME)",
        _ => "pass --data with a prepared data folder or a text file",
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    write_atomic(path, &w.into_inner()?).with_context(|| format!("writing {}", path.display()))
}

/// Tokens for perplexity: a prepared folder's validation split, a text file, or (no `--data`) the
/// run's own validation data.
fn ppl_tokens(args: &EvalArgs, scorer: &mut Scorer) -> Result<(Vec<u32>, String)> {
    match (&args.data, scorer) {
        (Some(d), scorer) => {
            let path = PathBuf::from(d);
            if path.join("meta.json").exists() {
                let prepared = crate::data::prepare::open_prepared(&path)?;
                let spec = &scorer.lm().tokenizer().spec;
                if &prepared.meta.tokenizer != spec {
                    return Err(InputError(format!(
                        "{d} was prepared with tokenizer {} but the model uses {spec}\n  pass a text file as --data so keel tokenizes it with the model's tokenizer",
                        prepared.meta.tokenizer
                    ))
                    .into());
                }
                let tokens = prepared.val.iter().flat_map(|s| s.to_vec()).collect();
                Ok((tokens, format!("{d} (validation split)")))
            } else if path.is_file() {
                let bytes = std::fs::read(&path).map_err(|e| InputError(format!("cannot read {d}: {e}")))?;
                let text = String::from_utf8(bytes).map_err(|e| {
                    InputError(format!(
                        "{d} is not UTF-8 (byte {})\n  convert it to UTF-8 first",
                        e.utf8_error().valid_up_to()
                    ))
                })?;
                Ok((scorer.lm().tokenizer().encode(&text)?, d.clone()))
            } else {
                Err(InputError(format!("--data {d}: no such file or prepared folder\n  {}", data_hint(args.bench)))
                    .into())
            }
        }
        (None, Scorer::Keel(k)) => {
            let cfg = k.run.resolved.config.data.clone();
            let corpus = Corpus::load(&cfg, k.run.resolved.train().seq_len)
                .context("loading the run's own validation data (pass --data to score other text)")?;
            Ok((corpus.val.to_vec(), format!("the run's validation data: {}", corpus.description)))
        }
        (None, Scorer::Hf(_)) => {
            Err(InputError(format!("--hf-model needs --data here\n  {}", data_hint(args.bench))).into())
        }
    }
}

#[derive(Serialize)]
struct PplResults<'a> {
    bench: &'static str,
    model: String,
    placement: Option<String>,
    data: String,
    windowing: &'static str,
    #[serde(flatten)]
    ppl: &'a ppl::Perplexity,
    keel_version: &'static str,
}

const WINDOWING: &str = "windows of the model's context T ending at T + k*stride; each token after the first scored once, with >= T - stride tokens of context after the first window";

pub fn run(args: &EvalArgs) -> Result<()> {
    let device = crate::device::parse(&args.device)?;
    let mut scorer = match (&args.run, &args.hf_model) {
        (Some(run), _) => {
            if !run.is_dir() {
                return Err(InputError(format!(
                    "run directory {} does not exist\n  pass --run with a folder written by `keel train`",
                    run.display()
                ))
                .into());
            }
            Scorer::Keel(Box::new(KeelLm::new(eval::load_run(run, &device)?, args.batch_size)))
        }
        (None, Some(spec)) => Scorer::Hf(eval::hf::load(spec, &device)?),
        (None, None) => unreachable!("clap requires --run or --hf-model"),
    };
    let placement = match &scorer {
        Scorer::Keel(k) => Some(k.run.resolved.model().placement.as_str().to_string()),
        Scorer::Hf(_) => Some("llama (pre_ln)".to_string()),
    };
    let default_out = match (&args.run, &args.hf_model) {
        (Some(run), _) => run.join("eval").join(bench_name(args)),
        (None, Some(spec)) => {
            let name: String = spec.chars().map(|c| if c.is_alphanumeric() || c == '-' { c } else { '_' }).collect();
            Path::new("runs").join("hf").join(name.trim_start_matches('_')).join("eval").join(bench_name(args))
        }
        _ => unreachable!(),
    };
    let name = bench_name(args);
    let bar = progress_bar(args.quiet, &name);
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    match args.bench {
        Bench::Mmlu => {
            let data = mmlu::resolve_data(&need_data(args, "mmlu")?)?;
            let subjects = mmlu::load_dir(&data, &args.subjects)?;
            let opts = mmlu::Options { shots: args.shots, shots_from: args.shots_from, limit: args.limit };
            // Validate the prompts (shot sources) before creating the output folder.
            let out = eval::results_dir(args.out.as_deref(), default_out, args.force)?;
            let (results, answered) = mmlu::evaluate(scorer.lm(), &subjects, &opts, &data, &mut progress)?;
            bar.finish_and_clear();
            mmlu::write(&out, &results, &answered)?;
            if !args.quiet {
                print!("{}", mmlu::table(&results));
                println!(
                    "{} questions, {} shots ({} with shots dropped, {} truncated), {:.1} questions/s; results in {}",
                    results.questions,
                    results.shots,
                    results.questions_with_dropped_shots,
                    results.questions_truncated,
                    results.questions_per_s,
                    out.display()
                );
            }
        }
        Bench::Ppl => {
            let (tokens, data) = ppl_tokens(args, &mut scorer)?;
            let out = eval::results_dir(args.out.as_deref(), default_out, args.force)?;
            let p = ppl::perplexity(scorer.lm(), &tokens, args.stride, args.limit, &mut progress)?;
            bar.finish_and_clear();
            let results = PplResults {
                bench: "ppl",
                model: scorer.lm().describe(),
                placement,
                data,
                windowing: WINDOWING,
                ppl: &p,
                keel_version: crate::VERSION,
            };
            write_json(&out.join("results.json"), &results)?;
            if !args.quiet {
                println!(
                    "perplexity {:.4} (nll {:.4}/token), {:.4} bits/byte over {} tokens in {} windows (context {}, stride {}); results in {}",
                    p.perplexity,
                    p.nll_per_token,
                    p.bits_per_byte,
                    p.tokens_scored,
                    p.windows,
                    p.context,
                    p.stride,
                    out.display()
                );
            }
        }
        Bench::McJsonl | Bench::Bigbench => {
            let data = need_data(args, if args.bench == Bench::McJsonl { "mc-jsonl" } else { "bigbench" })?;
            let items = if args.bench == Bench::McJsonl {
                mc::read_jsonl(Path::new(&data))?
            } else {
                mc::read_bigbench(Path::new(&data))?
            };
            let out = eval::results_dir(args.out.as_deref(), default_out, args.force)?;
            let (results, answered) =
                mc::evaluate(scorer.lm(), &name, &data, &items, args.shots, args.limit, &mut progress)?;
            bar.finish_and_clear();
            write_json(&out.join("results.json"), &results)?;
            write_csv(&out.join("questions.csv"), &answered)?;
            if !args.quiet {
                println!(
                    "{name}: acc {:.4}, acc_norm {:.4} over {} questions ({} truncated), {:.1} questions/s; results in {}",
                    results.acc,
                    results.acc_norm,
                    results.questions,
                    results.truncated,
                    results.questions_per_s,
                    out.display()
                );
            }
        }
        Bench::Synthetic => {
            let seed = match &scorer {
                Scorer::Keel(k) => k.run.resolved.config.data.synthetic_seed,
                Scorer::Hf(_) => Config::default().data.synthetic_seed,
            };
            let examples = synthetic::examples(seed, args.limit.unwrap_or(600));
            let out = eval::results_dir(args.out.as_deref(), default_out, args.force)?;
            let start = std::time::Instant::now();
            let (outcomes, by_task) = synthetic::evaluate(scorer.lm(), &examples, &mut progress)?;
            bar.finish_and_clear();
            #[derive(Serialize)]
            struct R<'a> {
                bench: &'static str,
                model: String,
                placement: Option<String>,
                scoring: &'static str,
                seed: u64,
                examples: usize,
                accuracy: f64,
                tasks: &'a std::collections::BTreeMap<String, synthetic::TaskAccuracy>,
                elapsed_s: f64,
                keel_version: &'static str,
            }
            let r = R {
                bench: "synthetic",
                model: scorer.lm().describe(),
                placement,
                scoring: "greedy exact match of '{answer}\\n' after '{task} {prompt}=' (one forward pass per example)",
                seed,
                examples: outcomes.len(),
                accuracy: by_task.get("all").map(|t| t.accuracy).unwrap_or(f64::NAN),
                tasks: &by_task,
                elapsed_s: start.elapsed().as_secs_f64(),
                keel_version: crate::VERSION,
            };
            write_json(&out.join("results.json"), &r)?;
            write_csv(&out.join("examples.csv"), &outcomes)?;
            if !args.quiet {
                println!("{:<10} {:>9} {:>9} {:>12}", "task", "accuracy", "examples", "mean logprob");
                for (task, t) in &by_task {
                    println!("{task:<10} {:>9.4} {:>9} {:>12.3}", t.accuracy, t.total, t.mean_logprob);
                }
                println!("results in {}", out.display());
            }
        }
        Bench::LayerRemoval => {
            let (tokens, data) = ppl_tokens(args, &mut scorer)?;
            let Scorer::Keel(lm) = &mut scorer else {
                return Err(InputError(
                    "--bench layer-removal needs a keel run (--run): it removes keel sub-layers\n  score the Llama model's perplexity with --bench ppl instead".into(),
                )
                .into());
            };
            let out = eval::results_dir(args.out.as_deref(), default_out, args.force)?;
            // Every sub-layer costs one perplexity pass: default to 16 windows unless --limit says.
            let limit = Some(args.limit.unwrap_or(16));
            let (full, rows) = layer_removal::study(lm, &tokens, args.stride, limit, &mut progress)?;
            bar.finish_and_clear();
            write_csv(&out.join("layer_removal.csv"), &rows)?;
            #[derive(Serialize)]
            struct R<'a> {
                bench: &'static str,
                model: String,
                placement: Option<String>,
                data: String,
                removal: &'static str,
                windowing: &'static str,
                full: &'a ppl::Perplexity,
                keel_version: &'static str,
            }
            write_json(
                &out.join("results.json"),
                &R {
                    bench: "layer-removal",
                    model: lm.describe(),
                    placement,
                    data,
                    removal: "branch F dropped, shortcut and its norms kept: Keel N_out(alpha x), Post-LN N(alpha x), Pre-LN x",
                    windowing: WINDOWING,
                    full: &full,
                    keel_version: crate::VERSION,
                },
            )?;
            let fig = crate::commands::plot::layer_removal_figure(std::slice::from_ref(&out))?;
            let written = crate::commands::plot::write(&fig, &out)?;
            if !args.quiet {
                let worst = rows.iter().skip(1).max_by(|a, b| a.delta_perplexity.total_cmp(&b.delta_perplexity));
                println!(
                    "full model perplexity {:.4}; {} sub-layers removed one at a time{}; results in {} ({})",
                    full.perplexity,
                    rows.len() - 1,
                    worst
                        .map(|w| format!(
                            ", largest increase +{:.4} at sub-layer {} ({})",
                            w.delta_perplexity, w.sublayer, w.kind
                        ))
                        .unwrap_or_default(),
                    out.display(),
                    written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                );
            }
        }
    }
    Ok(())
}
