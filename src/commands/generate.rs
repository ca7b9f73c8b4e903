//! `keel generate`: samples from a run (or a Llama folder), streamed to stdout as they come, with
//! the decoding speed on stderr. The decoding itself lives in `crate::decode`.

use crate::cli::GenerateArgs;
use crate::decode::{self, Cached, Decoder, Request, SamplingOptions, Uncached};
use crate::{ExitStatus, InputError};
use anyhow::Result;
use std::io::{IsTerminal, Read, Write};

/// The prompt: `--prompt`, else standard input.
fn prompt_text(args: &GenerateArgs) -> Result<String> {
    if let Some(p) = &args.prompt {
        return Ok(p.clone());
    }
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(InputError(
            "no prompt: pass --prompt TEXT, or pipe it in (echo 'In the beginning' | keel generate ...)\n  --prompt '' starts from the end-of-text token"
                .into(),
        )
        .into());
    }
    let mut text = String::new();
    stdin.read_to_string(&mut text).map_err(|e| {
        InputError(format!("cannot read the prompt from standard input: {e}\n  pass --prompt TEXT (UTF-8) instead"))
    })?;
    Ok(text)
}

/// The prompt's tokens; an empty prompt is the end-of-text token (a newline for tokenizers
/// without one), as `keel eval` starts an empty context.
fn prompt_tokens(decoder: &dyn Decoder, text: &str) -> Result<Vec<u32>> {
    let tok = decoder.tokenizer();
    let tokens = match (text.is_empty(), tok.eot) {
        (true, Some(eot)) => vec![eot],
        (true, None) => tok.encode("\n")?,
        (false, _) => tok.encode(text)?,
    };
    let ctx = decoder.context_len();
    if tokens.len() > ctx {
        return Err(InputError(format!(
            "the prompt is {} tokens, longer than the model's context of {ctx} tokens (train.seq_len)\n  shorten the prompt to at most {ctx} tokens (e.g. keep its end)",
            tokens.len()
        ))
        .into());
    }
    Ok(tokens)
}

pub fn run(args: &GenerateArgs) -> Result<ExitStatus> {
    crate::signals::install_for("generate", "nothing was written; run the same command again");
    let sampling =
        SamplingOptions { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p, seed: args.seed };
    sampling.check().map_err(InputError)?;
    let text = prompt_text(args)?;
    let device = crate::device::parse(&args.device)?;
    let (run, mut hf);
    let mut keel_decoder;
    let decoder: &mut dyn Decoder = match (&args.run, &args.hf_model) {
        (Some(dir), _) => {
            run = crate::run_dir::load_run(dir, &device)?;
            let name = format!("run {}", dir.display());
            keel_decoder = if args.no_cache {
                Box::new(Uncached::new(&run.model, &run.tokenizer, name)) as Box<dyn Decoder>
            } else {
                Box::new(Cached::new(&run.model, &run.tokenizer, name))
            };
            keel_decoder.as_mut()
        }
        (None, Some(spec)) => {
            if args.no_cache {
                return Err(InputError(
                    "--no-cache works with --run only (a Llama folder always decodes with its KV cache)\n  drop --no-cache".into(),
                )
                .into());
            }
            hf = crate::eval::hf::HfLlama::load(spec, &device)?;
            &mut hf
        }
        (None, None) => unreachable!("clap requires --run or --hf-model"),
    };
    let prompt = prompt_tokens(decoder, &text)?;
    let req = Request {
        prompt: prompt.clone(),
        max_new_tokens: args.max_new_tokens,
        sampling,
        stop: args.stop.clone(),
        stop_at_eot: !args.ignore_eot,
        num_samples: args.num_samples,
    };
    let stdout = std::io::stdout();
    let samples = if args.json {
        decode::generate(decoder, &req, |_| {}, &mut std::io::sink())?
    } else {
        let mut out = stdout.lock();
        let samples = decode::generate(
            decoder,
            &req,
            |i| {
                let sep = if i > 0 { "\n---------------\n" } else { "" };
                let _ = write!(out, "{sep}{text}");
            },
            &mut std::io::stdout(),
        )?;
        writeln!(out)?;
        samples
    };
    let new_tokens: usize = samples.iter().map(|s| s.tokens.len()).sum();
    let decode_s: f64 = samples.iter().map(|s| s.decode_s).sum();
    let prefill_s: f64 = samples.iter().map(|s| s.prefill_s).sum::<f64>() / samples.len() as f64;
    let tokens_per_s = if decode_s > 0.0 { new_tokens as f64 / decode_s } else { 0.0 };
    if args.json {
        let json = serde_json::json!({
            "model": decoder.describe(),
            "prompt": text,
            "prompt_tokens": prompt,
            "temperature": args.temperature,
            "top_k": args.top_k,
            "top_p": args.top_p,
            "seed": args.seed,
            "cache": !args.no_cache,
            "samples": samples,
            "new_tokens": new_tokens,
            "tokens_per_s": tokens_per_s,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    if !args.quiet {
        let slides: usize = samples.iter().map(|s| s.slides).sum();
        let slid =
            if slides > 0 { format!("; the context was full {slides} times and slid by half") } else { String::new() };
        eprintln!(
            "generate: {} sample(s), {new_tokens} tokens in {decode_s:.2} s: {tokens_per_s:.1} tokens/s ({}; prompt of {} tokens read in {:.1} ms{slid})",
            samples.len(),
            decoder.describe(),
            prompt.len(),
            prefill_s * 1e3,
        );
    }
    Ok(ExitStatus::Success)
}
