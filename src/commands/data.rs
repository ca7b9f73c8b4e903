//! `keel data prepare`.

use crate::cli::PrepareArgs;
use crate::data::documents::{self, InvalidUtf8};
use crate::data::prepare::{prepare as run_prepare, PrepareOptions};
use crate::{ExitStatus, InputError};
use anyhow::Result;
use std::io::IsTerminal;

pub fn prepare(args: &PrepareArgs) -> Result<ExitStatus> {
    if !(0.0..1.0).contains(&args.val_fraction) {
        return Err(InputError(format!("--val-fraction {} must lie in [0, 1)", args.val_fraction)).into());
    }
    if args.shard_tokens == 0 {
        return Err(InputError("--shard-tokens must be at least 1".into()).into());
    }
    crate::data::tokenizer::TokenizerSpec::parse(&args.tokenizer)?;
    let inputs = documents::expand(&args.input)?;
    crate::files::new_output_dir(&args.out)?;
    let opts = PrepareOptions {
        tokenizer: args.tokenizer.clone(),
        val_fraction: args.val_fraction,
        seed: args.seed,
        on_invalid_utf8: if args.skip_invalid_utf8 { InvalidUtf8::Skip } else { InvalidUtf8::Fail },
        shard_tokens: args.shard_tokens,
        progress: !args.quiet && std::io::stderr().is_terminal(),
    };
    let meta = run_prepare(&inputs, &args.out, &opts)?;
    if !args.quiet {
        let bytes: u64 = meta.inputs.iter().map(|i| i.bytes).sum();
        println!(
            "prepared {} input file(s), {:.1} MB in {:.1}s ({:.1} MB/s): {} train tokens in {} docs, {} val tokens in {} docs, vocab {} ({}){}{}; outputs in {}",
            meta.inputs.len(),
            bytes as f64 / 1e6,
            meta.seconds,
            bytes as f64 / 1e6 / meta.seconds.max(1e-9),
            meta.train.tokens,
            meta.train.documents,
            meta.val.tokens,
            meta.val.documents,
            meta.vocab_size,
            meta.tokenizer,
            if meta.skipped_invalid_utf8_lines > 0 { format!(", {} non-UTF-8 lines skipped", meta.skipped_invalid_utf8_lines) } else { String::new() },
            if meta.val_is_last_document { " (no document drew validation, so the last one is the validation split)" } else { "" },
            args.out.display()
        );
    }
    Ok(ExitStatus::Success)
}
