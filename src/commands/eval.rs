//! `keel eval`: load a run (or a Llama model), score one benchmark, write `results.json` and a
//! per-item CSV into the results folder, and print a table. The benchmarks live in `eval/`.

use crate::cli::EvalArgs;
use crate::eval::bench::{Figure, Settings};
use crate::eval::registry::{Evaluation, Job, Model};
use crate::ExitStatus;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

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

pub fn run(args: &EvalArgs) -> Result<ExitStatus> {
    crate::signals::install_for(
        "eval",
        "nothing was written (results.json and the per-item CSV are written once scoring completes); run the same command again",
    );
    let job = Job {
        bench: args.bench,
        model: match (&args.run, &args.hf_model) {
            (Some(run), _) => Model::Run(run.clone()),
            (None, Some(spec)) => Model::Hf(spec.clone()),
            (None, None) => unreachable!("clap requires --run or --hf-model"),
        },
        device: args.device.clone(),
        batch_size: args.batch_size,
        out: args.out.clone(),
        force: args.force,
        settings: Settings {
            data: args.data.clone(),
            shots: args.shots,
            shots_from: args.shots_from,
            overflow: args.overflow,
            subjects: args.subjects.clone(),
            limit: args.limit,
            stride: args.stride,
            max_gen_toks: args.max_gen_toks,
        },
    };
    let mut eval = Evaluation::open(&job)?;
    let bar = progress_bar(args.quiet, &eval.folder());
    let report = eval.run(&mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    crate::fault::pause_point("eval-before-write");
    report.write()?;
    let figures = match report.outcome.figure {
        Some(Figure::LayerRemoval) => {
            let fig = crate::plot::layer_removal_figure(std::slice::from_ref(&report.out))?;
            crate::plot::write(std::slice::from_ref(&fig), &report.out)?
        }
        None => Vec::new(),
    };
    if !args.quiet {
        let figures = if figures.is_empty() {
            String::new()
        } else {
            format!(" ({})", figures.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))
        };
        println!("{}results in {}{figures}", report.outcome.summary, report.out.display());
    }
    Ok(ExitStatus::Success)
}
