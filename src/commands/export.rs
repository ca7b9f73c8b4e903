//! `keel export --run RUN --hf OUT`: the run as a Hugging Face Llama folder when it is one, else as
//! a transformers model with remote code, `KeelForCausalLM` (see `crate::export`).

use crate::cli::ExportArgs;
use crate::export::{export_dir, Format};
use crate::ExitStatus;
use anyhow::Result;

pub fn run(args: &ExportArgs) -> Result<ExitStatus> {
    crate::signals::install_for("export", "nothing was written; run the same command again");
    let done = export_dir(&args.run, &args.hf)?;
    match &done.format {
        Format::Llama => println!(
            "exported {} as LlamaForCausalLM ({} params) to {}: {}",
            args.run.display(),
            done.n_params,
            done.out.display(),
            done.files.join(", ")
        ),
        Format::Keel { reason } => {
            println!("not a Llama model: {reason}");
            println!(
                "exported {} as KeelForCausalLM ({} params; load with trust_remote_code=True) to {}: {}",
                args.run.display(),
                done.n_params,
                done.out.display(),
                done.files.join(", ")
            );
        }
    }
    Ok(ExitStatus::Success)
}
