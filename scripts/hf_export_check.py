#!/usr/bin/env python3
"""Checks keel's Hugging Face exports against keel itself, with transformers (outside CI).

    python3 scripts/hf_export_check.py --keel target/release/keel --dump-cmd "CMD" \
        --run RUN --hf DIR [--run RUN2 --hf DIR2 ...] [--json report.json] [--attn eager,sdpa]

(scripts/hf_export_check.sh trains the runs, exports them and calls this.) For each exported run:

- AutoConfig, AutoModel and AutoModelForCausalLM load the folder with trust_remote_code=True
  (a Pre-LN Llama export loads without it);
- logits on a fixed batch of 3 sequences, and on a left-padded batch of 3 (attention_mask),
  equal keel's logits of the same (unpadded) sequences within --tol (1e-4), for each attention
  implementation in --attn; `labels` gives the loss computed from keel's logits;
- greedy `generate()` with and without the cache (6 prompts: 4 texts, 2 of random tokens), and
  on a left-padded batch of 2 prompts, returns keel's greedy tokens ("distinct": how many
  different tokens keel's greedy continuations hold);
- with sdpa, a custom attention function registered in transformers' AttentionInterface (as vLLM's
  Transformers backend does) is called by every layer with the keyword arguments given to the
  model's forward, and the logits stay keel's ("attention backend");
- when the keel binary has a `generate` subcommand, `keel generate --temperature 0 --json`
  returns the same tokens too, with its KV cache and with --no-cache.

keel's side comes from keel itself: DUMP_CMD (run with KEEL_DUMP_REQUEST and KEEL_DUMP_OUT set;
tests/export.rs's `dump_keel_logits`) computes keel's logits of each sequence and keel's greedy
continuation of each prompt (a full forward pass per token). Prints one table row per run and
attention implementation; exits 1 when any check fails.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

PROMPTS = ["12+34=", "copy abc:", "sort 31", "rev xyz="]
NEW_TOKENS = 12


def keel_dump(dump_cmd, run, sequences, greedy):
    with tempfile.TemporaryDirectory() as tmp:
        req, out = os.path.join(tmp, "req.json"), os.path.join(tmp, "out.json")
        with open(req, "w") as f:
            json.dump({"run": os.path.abspath(run), "sequences": sequences, "greedy": greedy}, f)
        env = dict(os.environ, KEEL_DUMP_REQUEST=req, KEEL_DUMP_OUT=out)
        p = subprocess.run(dump_cmd, shell=True, env=env, capture_output=True, text=True)
        if p.returncode != 0 or not os.path.exists(out):
            sys.exit(f"keel's logits dump failed ({dump_cmd}):\n{p.stdout}\n{p.stderr}")
        with open(out) as f:
            return json.load(f)


def keel_generate(keel, run, prompt, n, extra=()):
    """keel's own greedy decoding, or None when this keel has no `generate` subcommand."""
    if subprocess.run([keel, "generate", "--help"], capture_output=True).returncode != 0:
        return None
    p = subprocess.run(
        [keel, "generate", "--run", run, "--prompt", prompt, "--max-new-tokens", str(n), "--temperature", "0",
         "--json", *extra],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        return {"error": p.stderr.strip()}
    # One JSON object on stdout (possibly pretty-printed).
    obj, _ = json.JSONDecoder().raw_decode(p.stdout[p.stdout.index("{"):])
    return obj


def attention_backend(hf, seq, want, tol):
    """vLLM's Transformers backend registers its own attention function and passes its own
    keyword arguments through the model's forward: a registered function must be called by every
    layer with those arguments, and the logits stay keel's. None when this transformers has no
    AttentionInterface (or the folder is a plain Llama, which needs no such check)."""
    try:
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
    except ImportError:
        return None
    seen = []

    def probe(module, query, key, value, attention_mask, **kwargs):
        seen.append(kwargs.get("keel_probe_marker"))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("keel_probe", probe)
    model = AutoModelForCausalLM.from_pretrained(hf, trust_remote_code=True, attn_implementation="keel_probe")
    if model.config.model_type != "keel":
        return None
    with torch.no_grad():
        logits = model(torch.tensor([seq]), keel_probe_marker=7).logits[0]
    return seen == [7] * model.config.num_hidden_layers and float((logits - want).abs().max()) <= tol


def left_pad(seqs, pad):
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    return ids, mask


def check(args, run, hf, attn_impls):
    rows, ok = [], True
    tok = AutoTokenizer.from_pretrained(hf, trust_remote_code=True)
    cfg = AutoConfig.from_pretrained(hf, trust_remote_code=True)
    vocab = cfg.vocab_size
    gen = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (24, 9, 17)]
    # Text prompts (for keel generate too), then random-token prompts, whose continuations vary
    # more on these tiny models.
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    prompts += [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (5, 11)]
    keel = keel_dump(
        args.dump_cmd, run, sequences + prompts, [{"tokens": p, "n": NEW_TOKENS} for p in prompts]
    )
    keel_logits = [torch.tensor(x) for x in keel["logits"]]
    keel_greedy = keel["greedy"]
    distinct = len({t for g in keel_greedy for t in g})
    spread = max(float(x.max() - x.min()) for x in keel_logits)
    # keel generate, with its KV cache and without (--no-cache), on each prompt.
    kg = [keel_generate(args.keel, run, p, NEW_TOKENS, extra) for p in PROMPTS for extra in ((), ("--no-cache",))]

    for impl in attn_impls:
        base = AutoModel.from_pretrained(hf, trust_remote_code=True, attn_implementation=impl)
        model = AutoModelForCausalLM.from_pretrained(hf, trust_remote_code=True, attn_implementation=impl)
        model.eval()
        r = {"run": run, "model_type": cfg.model_type, "class": type(model).__name__, "attn": impl,
             "transformers": transformers.__version__, "logit_spread": spread, "greedy_distinct_tokens": distinct}
        with torch.no_grad():
            # Batch of equal length: the first 9 tokens of each sequence, then each whole sequence.
            same = torch.tensor([s[:9] for s in sequences])
            d_batch = float((model(same).logits - torch.stack([k[:9] for k in keel_logits[:3]])).abs().max())
            for s, k in zip(sequences, keel_logits):
                out = model(torch.tensor([s]))
                d_batch = max(d_batch, float((out.logits[0] - k).abs().max()))
            # Left-padded batch with its attention mask; pad id 0 (any id: it is masked).
            ids, mask = left_pad(sequences, 0)
            out = model(ids, attention_mask=mask, use_cache=False)
            d_pad = 0.0
            for i, (s, k) in enumerate(zip(sequences, keel_logits)):
                d_pad = max(d_pad, float((out.logits[i, ids.shape[1] - len(s):] - k).abs().max()))
            # The loss with labels: keel's logits' mean next-token cross-entropy.
            s, k = sequences[0], keel_logits[0]
            loss = float(model(torch.tensor([s]), labels=torch.tensor([s])).loss)
            want = float(torch.nn.functional.cross_entropy(k[:-1].double(), torch.tensor(s[1:])))
            d_loss = abs(loss - want)
            # The base model (AutoModel): the same hidden states as the causal LM's decoder.
            h = base(torch.tensor([s])).last_hidden_state
            d_base = float((h - model.model(torch.tensor([s])).last_hidden_state).abs().max())

            greedy = {}
            for use_cache in (True, False):
                match = True
                for p, want in zip(prompts, keel_greedy):
                    g = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                       max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=use_cache,
                                       pad_token_id=0)
                    match &= g[0, len(p):].tolist() == want
                greedy["cache" if use_cache else "no_cache"] = match
            ids, mask = left_pad(prompts[:2], 0)
            g = model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                               use_cache=True, pad_token_id=0)
            greedy["left_padded"] = all(g[i, ids.shape[1]:].tolist() == keel_greedy[i] for i in range(2))
        greedy["attention_backend"] = attention_backend(hf, sequences[0], keel_logits[0], args.tol) if impl == "sdpa" else None
        if any(k is None for k in kg):
            greedy["keel_generate"] = None
        elif any("error" in k for k in kg):
            greedy["keel_generate"] = False
            r["keel_generate_error"] = next(k["error"] for k in kg if "error" in k)
        else:
            # Each prompt twice (cache, no cache): keel generate's tokens are keel's full-forward
            # greedy tokens, which the checks above compare with transformers'.
            pairs = zip(kg, [(p, g) for p, g in zip(prompts[: len(PROMPTS)], keel_greedy) for _ in range(2)])
            greedy["keel_generate"] = all(
                k["prompt_tokens"] == p and k["samples"][0]["tokens"] == g for k, (p, g) in pairs
            )
        r.update(max_diff_batch=d_batch, max_diff_left_padded=d_pad, loss_diff=d_loss, base_diff=d_base, greedy=greedy)
        passed = (d_batch <= args.tol and d_pad <= args.tol and d_loss <= args.tol and d_base <= args.tol
                  and spread > 1.0 and all(v is not False for v in greedy.values()))
        r["pass"] = passed
        ok &= passed
        rows.append(r)
    return rows, ok


def yes(v):
    return "n/a" if v is None else ("yes" if v else "NO")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keel", required=True, help="the keel binary")
    ap.add_argument("--dump-cmd", required=True, help="command printing keel's logits (see above)")
    ap.add_argument("--run", action="append", required=True)
    ap.add_argument("--hf", action="append", required=True)
    ap.add_argument("--attn", default="eager,sdpa")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--json")
    args = ap.parse_args()
    if len(args.run) != len(args.hf):
        sys.exit("pass --run and --hf in pairs")
    torch.manual_seed(0)
    all_rows, ok = [], True
    for run, hf in zip(args.run, args.hf):
        rows, good = check(args, run, hf, args.attn.split(","))
        all_rows += rows
        ok &= good
    print(f"\ntransformers {transformers.__version__}, torch {torch.__version__}; tolerance {args.tol:g} (float32)\n")
    head = ("run", "class", "attn", "logit spread", "max|dlogit| batch", "left-padded", "|dloss|", "greedy cache",
            "no cache", "left-padded x2", "distinct", "keel generate", "attention backend", "pass")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in all_rows:
        g = r["greedy"]
        cells = (os.path.basename(r["run"].rstrip("/")), r["class"], r["attn"], f"{r['logit_spread']:.1f}",
                 f"{r['max_diff_batch']:.2e}",
                 f"{r['max_diff_left_padded']:.2e}", f"{r['loss_diff']:.1e}", yes(g["cache"]), yes(g["no_cache"]),
                 yes(g["left_padded"]), str(r["greedy_distinct_tokens"]), yes(g["keel_generate"]),
                 yes(g["attention_backend"]), "ok" if r["pass"] else "FAIL")
        print("| " + " | ".join(cells) + " |")
        if "keel_generate_error" in r:
            print(f"  keel generate failed: {r['keel_generate_error']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_rows, f, indent=2)
    print("\nall checks pass" if ok else "\nSOME CHECKS FAIL")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
