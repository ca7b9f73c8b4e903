//! `keel data prepare`.

use crate::cli::PrepareArgs;
use crate::data::documents::{self, InvalidUtf8};
use crate::data::prepare::{prepare as run_prepare, PrepareOptions};
use crate::{ExitStatus, InputError};
use anyhow::Result;
use std::io::IsTerminal;
use std::path::Path;

/// Removes what a preparation that did not finish wrote into `out`, and `out` itself when this
/// command created it; returns the line telling the user what happened.
fn remove_partial(out: &Path, existed: bool) -> String {
    let (removed, found) = crate::data::prepare::remove_unfinished(out);
    crate::files::remove_scratch(out);
    if !existed {
        let _ = std::fs::remove_dir(out);
    }
    if removed < found {
        format!(
            "{} holds {} file(s) of the unfinished preparation that keel could not remove; the same command removes them when it runs again",
            out.display(),
            found - removed
        )
    } else {
        format!("the partial shards in {} were removed; run the same command again", out.display())
    }
}

pub fn prepare(args: &PrepareArgs) -> Result<ExitStatus> {
    crate::signals::install_for("data prepare", "nothing was written; run the same command again");
    if !(0.0..1.0).contains(&args.val_fraction) {
        return Err(InputError(format!("--val-fraction {} must lie in [0, 1)", args.val_fraction)).into());
    }
    if args.shard_tokens == 0 {
        return Err(InputError("--shard-tokens must be at least 1".into()).into());
    }
    crate::data::tokenizer::TokenizerSpec::parse(&args.tokenizer)?;
    let inputs = documents::expand(&args.input)?;
    // A folder holding only what an interrupted preparation left (kill -9, a full disk) counts as
    // empty: those files are removed and the preparation starts over.
    let (removed, found) = crate::data::prepare::remove_unfinished(&args.out);
    if found > 0 {
        eprintln!(
            "note: {} held an unfinished preparation (no meta.json, {removed} shard or tokenizer file(s)): removed them; preparing again",
            args.out.display()
        );
    }
    let existed = args.out.exists();
    crate::files::new_output_dir(&args.out)?;
    let out = args.out.clone();
    crate::signals::on_stop(move || remove_partial(&out, existed));
    let opts = PrepareOptions {
        tokenizer: args.tokenizer.clone(),
        val_fraction: args.val_fraction,
        seed: args.seed,
        on_invalid_utf8: if args.skip_invalid_utf8 { InvalidUtf8::Skip } else { InvalidUtf8::Fail },
        shard_tokens: args.shard_tokens,
        progress: !args.quiet && std::io::stderr().is_terminal(),
    };
    let meta = match run_prepare(&inputs, &args.out, &opts) {
        Ok(meta) => meta,
        Err(e) => {
            // Unless it finished, nothing of it stays: the same command runs again as it is.
            if !args.out.join(crate::data::prepare::META_FILE).exists() {
                remove_partial(&args.out, existed);
            }
            return Err(e.into());
        }
    };
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
