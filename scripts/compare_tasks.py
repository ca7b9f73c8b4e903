#!/usr/bin/env python3
"""Agreement between `keel eval --bench TASK` and lm-evaluation-harness on the same items, per task:
prompts, log-likelihoods, generations, extracted answers, per-item scores and aggregate scores.

    python3 scripts/compare_tasks.py \
        --task gsm8k runs/agree/eval/agree-tasks/gsm8k runs/agree-lm-eval-tasks/out/gsm8k \
        --task hellaswag runs/agree/eval/agree-tasks/hellaswag runs/agree-lm-eval-tasks/out/hellaswag \
        [--show 5] [--json report.json] [--fail-above TOL] [--tokenizer runs/agree-hf] [--model runs/agree-hf]

--task NAME KEEL_DIR HARNESS_DIR (repeatable)
    NAME        one of: gsm8k gsm8k_cot hellaswag arc_easy arc_challenge piqa winogrande mmlu_pro cmmlu
                bbh_zeroshot bbh_fewshot bbh_cot_fewshot mmlu
    KEEL_DIR    keel's results folder: results.json and the per-item CSV (samples.csv for generative
                tasks, questions.csv for multiple-choice ones)
    HARNESS_DIR lm-eval's --output_path (searched recursively): its results_*.json and the
                samples_keel_{task}_*.jsonl files --log_samples writes (the task YAMLs of
                scripts/lm_eval_task/make_fixtures.py, or make_tasks.py for mmlu); with several runs
                there, the newest file of each kind is used.

Items are paired by (subtask, position): lm-eval's doc_id is an item's position among its
(sub)task's documents, and keel writes its CSV rows in file order (subtasks: cmmlu's `subject`,
bbh's `subtask`, mmlu's id prefix). What is compared, per item:
  - prompts: every request lm-eval logged (`arguments`: context and continuation for a
    log-likelihood request, context for generate_until) against the one keel's row implies:
    multiple choice `context` + " " + each choice; winogrande `context` + each option, then
    " " + `continuation`; lettered tasks (mmlu, mmlu_pro, cmmlu) `prompt` + " A", " B", ...;
    generative `prompt`. "prompts identical" counts items whose requests are all byte-identical.
  - log-likelihoods: |keel - lm-eval| over every choice (keel writes 6 decimals, so a difference
    up to 5e-7 is rounding alone), also relative to max(1, |log-likelihood|): above 1e-4 it is
    more than float32 rounding and counts as a disagreement;
  - generations (the text cut at the first stop string) and, per filter, the extracted answer;
  - per-item scores: acc / acc_norm, or exact_match per filter;
  - aggregates: keel's results.json values against lm-eval's results_*.json (task or group), and
    both recomputed from the per-item scores.
--fail-above TOL exits 1 when any |delta log-likelihood| exceeds TOL or anything else differs
(prompts, item sets, generations, extracted answers, scores, aggregates beyond 1e-9, generation
budgets).
--tokenizer DIR (the exported model) explains large log-likelihood differences that come from
lm-eval's own logits cache: with `logits_cache=True` (HFLM's default) lm-eval 0.4.13 scores a request
wrongly when another request of the task has the same tokens (context + continuation)[:-1] split
with a longer continuation (see cache_collisions); run it with logits_cache=False to compare.
--model DIR (the exported model) explains generation mismatches: it decodes the prompt alone with
transformers and prints the top-2 logit margin where keel's and lm-eval's generations part (see
near_tie); a margin of float32 rounding size is a near-tie the two broke differently.
"""
import argparse
import csv
import glob
import json
import os
import re
import sys

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
AGG_TOL = 1e-9
# |delta log-likelihood| / max(1, |log-likelihood|) above this is more than float32 rounding (which
# reaches ~1e-5 on a random model whose logits are in the hundreds: a log-likelihood is a difference
# of two such numbers)
REL_TOL = 1e-4

# kind: "mc" (log-likelihood) or "gen" (generate_until)
# lm: lm-eval task name, or prefix of its subtasks' names (subtasks=True)
# group: lm-eval group holding the aggregate (None: the task itself)
# filters: generate_until filter names, in keel's column order
# metrics: per-item score names (mc)
# aggregates: keel results.json key -> (lm-eval task or group, metric key)
SPECS = {
    "gsm8k": dict(kind="gen", lm="keel_gsm8k", filters=["strict-match", "flexible-extract"],
                  aggregates={"exact_match_strict_match": ("keel_gsm8k", "exact_match,strict-match"),
                              "exact_match_flexible_extract": ("keel_gsm8k", "exact_match,flexible-extract")}),
    "gsm8k_cot": dict(kind="gen", lm="keel_gsm8k_cot", filters=["strict-match", "flexible-extract"],
                      aggregates={"exact_match_strict_match": ("keel_gsm8k_cot", "exact_match,strict-match"),
                                  "exact_match_flexible_extract": ("keel_gsm8k_cot", "exact_match,flexible-extract")}),
    "bbh_zeroshot": dict(kind="gen", lm="keel_bbh_zeroshot_", subtasks=True, subtask_col="subtask",
                         filters=["strict-match", "flexible-extract"],
                         aggregates={"exact_match": ("keel_bbh_zeroshot", "exact_match,flexible-extract")}),
    "bbh_fewshot": dict(kind="gen", lm="keel_bbh_fewshot_", subtasks=True, subtask_col="subtask", filters=["none"],
                        aggregates={"exact_match": ("keel_bbh_fewshot", "exact_match,none")}),
    "bbh_cot_fewshot": dict(kind="gen", lm="keel_bbh_cot_fewshot_", subtasks=True, subtask_col="subtask",
                            filters=["get-answer"],
                            aggregates={"exact_match": ("keel_bbh_cot_fewshot", "exact_match,get-answer")}),
    "hellaswag": dict(kind="mc", lm="keel_hellaswag", metrics=["acc", "acc_norm"],
                      aggregates={"acc": ("keel_hellaswag", "acc,none"), "acc_norm": ("keel_hellaswag", "acc_norm,none")}),
    "arc_easy": dict(kind="mc", lm="keel_arc_easy", metrics=["acc", "acc_norm"],
                     aggregates={"acc": ("keel_arc_easy", "acc,none"), "acc_norm": ("keel_arc_easy", "acc_norm,none")}),
    "arc_challenge": dict(kind="mc", lm="keel_arc_challenge", metrics=["acc", "acc_norm"],
                          aggregates={"acc": ("keel_arc_challenge", "acc,none"),
                                      "acc_norm": ("keel_arc_challenge", "acc_norm,none")}),
    "piqa": dict(kind="mc", lm="keel_piqa", metrics=["acc", "acc_norm"],
                 aggregates={"acc": ("keel_piqa", "acc,none"), "acc_norm": ("keel_piqa", "acc_norm,none")}),
    "winogrande": dict(kind="mc", lm="keel_winogrande", metrics=["acc"],
                       aggregates={"acc": ("keel_winogrande", "acc,none")}),
    "mmlu_pro": dict(kind="mc", lm="keel_mmlu_pro", metrics=["acc"], aggregates={"acc": ("keel_mmlu_pro", "acc,none")}),
    "cmmlu": dict(kind="mc", lm="keel_cmmlu_", subtasks=True, subtask_col="subject", metrics=["acc", "acc_norm"],
                  aggregates={"acc": ("keel_cmmlu", "acc,none"), "acc_norm": ("keel_cmmlu", "acc_norm,none")}),
    "mmlu": dict(kind="mc", lm="keel_mmlu_", subtasks=True, subtask_col=None, metrics=["acc"],
                 aggregates={"accuracy": ("keel_mmlu", "acc,none")}),
}


def newest(paths):
    return max(paths, key=os.path.getmtime) if paths else None


def as_bool(s):
    if isinstance(s, bool):
        return s
    if isinstance(s, (int, float)):
        return bool(s)
    s = str(s).strip().lower()
    if s in ("true", "1", "1.0"):
        return True
    if s in ("false", "0", "0.0"):
        return False
    return None


def fkey(f):
    return f.replace("-", "_")


# ------------------------------------------------------------------------------------------ keel

def keel_csv(folder, kind):
    names = ["samples.csv"] if kind == "gen" else ["questions.csv"]
    for n in names + ["samples.csv", "questions.csv"]:
        p = os.path.join(folder, n)
        if os.path.isfile(p):
            return p
    sys.exit(f"{folder}: no {' or '.join(names)} (run keel eval first)")


def read_keel(name, spec, folder):
    with open(os.path.join(folder, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    path = keel_csv(folder, spec["kind"])
    items = {}
    ordinal = {}
    with open(path, encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            if spec.get("subtasks"):
                col = spec.get("subtask_col")
                sub = r[col] if col else r["id"].rsplit("/", 1)[0]
            else:
                sub = ""
            k = ordinal.get(sub, 0)
            ordinal[sub] = k + 1
            items[(sub, k)] = keel_item(spec, r)
    return results, path, items


def keel_item(spec, r):
    it = {"id": r.get("id"), "truncated": int(r.get("truncated_tokens") or 0)}
    if spec["kind"] == "gen":
        it["requests"] = [(r["prompt"],)]
        it["generation"] = r["generation"]
        it["extracted"], it["scores"] = {}, {}
        for f in spec["filters"]:
            k = fkey(f)
            ex = r.get(f"{k}_extracted", r.get(f"extracted_{k}"))
            sc = r.get(k, r.get(f"exact_match_{k}"))
            if ex is None and f == "none" and len(spec["filters"]) == 1:
                ex = r["generation"]  # lm-eval's "none" filter: the generation itself
            if sc is None and len(spec["filters"]) == 1:
                sc = r.get("exact_match")
            it["extracted"][f] = ex
            it["scores"][f] = {"exact_match": as_bool(sc) if sc is not None else None}
        return it
    if "loglikelihoods" in r:
        lls = [float(x) for x in r["loglikelihoods"].split(";")]
    else:
        lls = [float(r[f"ll_{c.lower()}"]) for c in LETTERS[:4] if f"ll_{c.lower()}" in r]
    it["ll"] = lls
    context = r.get("prompt", r.get("context"))
    if context is None:
        it["requests"] = None
    elif r.get("choices"):
        choices = json.loads(r["choices"])
        if r.get("continuation"):
            it["requests"] = [(context + c, " " + r["continuation"]) for c in choices]
        else:
            it["requests"] = [(context, " " + c) for c in choices]
    else:
        it["requests"] = [(context, " " + L) for L in LETTERS[:len(lls)]]
    scores = {}
    for m in spec["metrics"]:
        v = r.get(m)
        if v is None and m == "acc" and "predicted" in r and "gold" in r:
            v = r["predicted"] == r["gold"]
        scores[m] = as_bool(v) if v not in (None, "") else None
    it["scores"] = {"none": scores}
    return it


# ------------------------------------------------------------------------------------------ lm-eval

def harness_files(spec, folder):
    """{lm-eval task: newest samples file}."""
    pat = re.compile(r"samples_(.+)_(\d{4}-\d{2}-\d{2}T[\d\-.]+)\.jsonl$")
    by = {}
    for p in glob.glob(os.path.join(folder, "**", "samples_*.jsonl"), recursive=True):
        m = pat.match(os.path.basename(p))
        if not m:
            continue
        t = m.group(1)
        if (spec.get("subtasks") and t.startswith(spec["lm"])) or t == spec["lm"]:
            by.setdefault(t, []).append(p)
    return {t: newest(ps) for t, ps in by.items()}


def harness_results(folder):
    merged = {}
    for p in sorted(glob.glob(os.path.join(folder, "**", "results_*.json"), recursive=True), key=os.path.getmtime):
        with open(p, encoding="utf-8") as f:
            r = json.load(f)
        for sect in ("results", "groups"):
            for k, v in (r.get(sect) or {}).items():
                merged.setdefault(k, {}).update(v)
    return merged


def to_float(x):
    while isinstance(x, list):
        x = x[0]
    return float(x)


def read_harness(name, spec, folder):
    files = harness_files(spec, folder)
    if not files:
        sys.exit(f"no samples_{spec['lm']}{'*' if spec.get('subtasks') else ''}_*.jsonl under {folder}: run lm_eval with --log_samples")
    items = {}
    for task, path in files.items():
        sub = task[len(spec["lm"]):] if spec.get("subtasks") else ""
        with open(path, encoding="utf-8") as f:
            for line in f:
                s = json.loads(line)
                key = (sub, int(s["doc_id"]))
                it = items.setdefault(key, {"scores": {}, "extracted": {}})
                args = s["arguments"]
                if isinstance(args, dict):
                    args = [args[k] for k in sorted(args, key=lambda k: int(k.rsplit("_", 1)[1]))]
                    args = [[a[k] for k in sorted(a, key=lambda k: int(k.rsplit("_", 1)[1]))] for a in args]
                filt = s.get("filter", "none")
                metrics = {m: s[m] for m in s.get("metrics", []) if m in s}
                it["scores"][filt] = {m: as_bool(v) if m in ("acc", "acc_norm", "exact_match") else v
                                      for m, v in metrics.items()}
                if spec["kind"] == "gen":
                    it["requests"] = [(a[0],) for a in args]
                    it["gen_kwargs"] = args[0][1] if len(args[0]) > 1 else None
                    resp = s["resps"][0]
                    it["generation"] = resp[0] if isinstance(resp, list) else resp
                    fr = s["filtered_resps"][0]
                    it["extracted"][filt] = fr[0] if isinstance(fr, list) else fr
                else:
                    it["requests"] = [(a[0], a[1]) for a in args]
                    it["ll"] = [to_float(r) for r in s["resps"]]
                    it["doc_id"] = s["doc_id"]
    return harness_results(folder), files, items


# ------------------------------------------------------------------------------------------ comparison

def first_diff(a, b):
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return {"at": n, "keel": a[max(0, n - 20):n + 40], "lm_eval": b[max(0, n - 20):n + 40],
            "len_keel": len(a), "len_lm_eval": len(b)}


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def cache_collisions(h, tokenizer):
    """lm-eval's HFLM (0.4.13, `logits_cache=True`, its default) computes the logits once for all
    log-likelihood requests whose tokens `(context + continuation)[:-1]` coincide (`Collator` with
    group_by="contexts", `_lookup_one_token_cont`), and then gathers each request's continuation
    tokens from the first positions of the longest continuation's logits (`torch.gather(logits, 2,
    cont_toks...)` in `_loglikelihood_tokens`, models/huggingface.py; only `max_equal` takes the
    trailing slice). A request sharing those tokens with a longer continuation (the same text split
    elsewhere between context and continuation) so gets a wrong log-likelihood. Returns
    {(item, choice): the request it collides with} for such requests."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=True)
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    groups = {}
    for i, it in h.items():
        for j, (ctx, cont) in enumerate(it["requests"]):
            # lm-eval's _encode_pair: trailing spaces of the context move to the continuation
            n = len(ctx) - len(ctx.rstrip())
            if n:
                ctx, cont = ctx[:-n], ctx[-n:] + cont
            whole, c = enc(ctx + cont), enc(ctx)
            groups.setdefault(tuple(whole[:-1]), []).append((len(whole) - len(c), i, j))
    out = {}
    for members in groups.values():
        longest = max(m[0] for m in members)
        if len({m[0] for m in members}) > 1:
            rep = next(m for m in members if m[0] == longest)
            for n, i, j in members:
                if n < longest:
                    out[(i, j)] = f"item {'/'.join(str(x) for x in rep[1] if x != '')} choice {rep[2]}"
    return out


_MODEL = {}


def near_tie(model_dir, prompt, max_gen_toks, gen_keel, gen_lm):
    """Where greedy generations part, decode the prompt alone (batch 1, no padding) with
    transformers and report the top-2 logit margin at the step where keel's and lm-eval's texts
    first differ, and which side the lone decoding follows. A margin near float32 rounding (~1e-5)
    means the two evaluators only broke a near-tie differently (lm-eval decodes left-padded batches,
    which changes the float arithmetic; keel decodes each row as it would alone)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_dir not in _MODEL:
        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
        m = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32).eval()
        _MODEL[model_dir] = (tok, m)
    tok, m = _MODEL[model_dir]
    max_len = m.config.max_position_embeddings
    ctx = tok(prompt, add_special_tokens=False)["input_ids"][-(max_len - max_gen_toks):]
    ids = torch.tensor([ctx])
    with torch.no_grad():
        out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_gen_toks, do_sample=False,
                         output_scores=True, return_dict_in_generate=True, pad_token_id=tok.eos_token_id)
    new = out.sequences[0, len(ctx):].tolist()
    text = tok.decode(new, skip_special_tokens=True)
    c = next((j for j, (x, y) in enumerate(zip(gen_keel, gen_lm)) if x != y), min(len(gen_keel), len(gen_lm)))
    step = next((j for j in range(len(new)) if len(tok.decode(new[:j + 1], skip_special_tokens=True)) > c), len(new) - 1)
    top = torch.topk(out.scores[step][0].double(), 2)
    return {"alone_follows": "keel" if text.startswith(gen_keel) else "lm-eval" if text.startswith(gen_lm) else "neither",
            "step": step, "top2_margin": (top.values[0] - top.values[1]).item(),
            "top2": [tok.decode([t]) for t in top.indices.tolist()]}


def compare(name, spec, keel_dir, harness_dir, tokenizer=None, model=None):
    k_results, k_path, k = read_keel(name, spec, keel_dir)
    h_results, h_files, h = read_harness(name, spec, harness_dir)
    common = sorted(set(k) & set(h))
    only_k, only_h = sorted(set(k) - set(h)), sorted(set(h) - set(k))
    rep = {"task": name, "keel_dir": keel_dir, "keel_csv": k_path, "harness_samples": sorted(h_files.values()),
           "items_keel": len(k), "items_lm_eval": len(h), "items_compared": len(common),
           "only_keel": [list(x) for x in only_k[:20]], "only_lm_eval": [list(x) for x in only_h[:20]],
           "prompts_identical": 0, "prompts_compared": 0, "prompt_mismatches": [], "max_abs_delta_ll": None,
           "generation_mismatches": [], "extracted_mismatches": [], "score_mismatches": [],
           "keel_truncated_items": sum(1 for i in common if k[i]["truncated"] > 0)}
    deltas, rel, per_item = [], [], []
    filters = spec.get("filters", ["none"])
    per_filter_scores = {"keel": {}, "lm_eval": {}}
    for i in common:
        a, b = k[i], h[i]
        ident = "/".join(str(x) for x in i if x != "")
        if a["requests"] is not None:
            rep["prompts_compared"] += 1
            if a["requests"] == b["requests"]:
                rep["prompts_identical"] += 1
            else:
                d = {"item": ident, "keel_id": a["id"], "requests_keel": len(a["requests"]),
                     "requests_lm_eval": len(b["requests"])}
                for j, (ra, rb) in enumerate(zip(a["requests"], b["requests"])):
                    if ra != rb:
                        part = 0 if ra[0] != rb[0] else 1
                        d.update({"request": j, "part": ["context", "continuation"][part]}, **first_diff(ra[part], rb[part]))
                        break
                rep["prompt_mismatches"].append(d)
        if spec["kind"] == "mc":
            if len(a["ll"]) == len(b["ll"]):
                dd = [abs(x - y) for x, y in zip(a["ll"], b["ll"])]
                deltas.extend(dd)
                rel.extend(d / max(1.0, abs(y)) for d, y in zip(dd, b["ll"]))
                per_item.append((max(dd), ident, a["ll"], b["ll"], a["truncated"]))
            else:
                rep["prompt_mismatches"].append({"item": ident, "choices_keel": len(a["ll"]), "choices_lm_eval": len(b["ll"])})
        else:
            if a["generation"] != b["generation"]:
                d = {"item": ident, "keel": a["generation"], "lm_eval": b["generation"],
                     "first_diff_at": first_diff(a["generation"], b["generation"])["at"]}
                if model and len(rep["generation_mismatches"]) < 20:
                    budget = int(k_results.get("max_gen_toks") or (b.get("gen_kwargs") or {}).get("max_gen_toks") or 256)
                    d["near_tie"] = near_tie(model, a["requests"][0][0], budget, a["generation"], b["generation"])
                rep["generation_mismatches"].append(d)
            for f in filters:
                ea, eb = a["extracted"].get(f), b["extracted"].get(f)
                if ea != eb:
                    rep["extracted_mismatches"].append({"item": ident, "filter": f, "keel": ea, "lm_eval": eb})
        for f in filters:
            sa, sb = a["scores"].get(f, {}), b["scores"].get(f, {})
            for m in (spec.get("metrics") or ["exact_match"]):
                va, vb = sa.get(m), sb.get(m)
                per_filter_scores["keel"].setdefault(f"{m},{f}", []).append(va)
                per_filter_scores["lm_eval"].setdefault(f"{m},{f}", []).append(vb)
                if va != vb:
                    rep["score_mismatches"].append({"item": ident, "metric": f"{m},{f}", "keel": va, "lm_eval": vb,
                                                    "ll_keel": a.get("ll"), "ll_lm_eval": b.get("ll")})
    if tokenizer and spec["kind"] == "mc" and any(d / max(1.0, min(abs(x) for x in lb)) > REL_TOL for d, _, _, lb, _ in per_item):
        hits = cache_collisions(h, tokenizer)
        rep["lm_eval_cache_collisions"] = [{"item": "/".join(str(x) for x in i if x != ""), "choice": j, "with": w}
                                           for (i, j), w in sorted(hits.items())]
    per_item.sort(key=lambda x: -x[0])
    rep["largest_deltas"] = [{"item": i, "max_abs_delta": d, "ll_keel": la, "ll_lm_eval": lb, "keel_truncated_tokens": t}
                             for d, i, la, lb, t in per_item[:5]]
    rep["max_abs_delta_ll"] = max(deltas) if deltas else None
    # relative to |log-likelihood| (at least 1): float32 rounding shows up as ~1e-7 here
    rep["max_rel_delta_ll"] = max(rel) if rel else None
    rep["mean_abs_delta_ll"] = sum(deltas) / len(deltas) if deltas else None
    rep["recomputed"] = {side: {m: mean(v) for m, v in d.items()} for side, d in per_filter_scores.items()}
    aggs = []
    for kk, (lt, lk) in spec["aggregates"].items():
        kv = k_results.get(kk)
        lv = (h_results.get(lt) or {}).get(lk)
        same = kv is not None and lv is not None and abs(float(kv) - float(lv)) <= AGG_TOL
        aggs.append({"keel_key": kk, "keel": kv, "lm_eval_key": f"{lt} {lk}", "lm_eval": lv, "identical": same})
    if spec.get("subtasks") and name.startswith("bbh"):
        # per subtask as well: keel's results.json subtasks.{name}.exact_match,{filter}
        for sub, vals in (k_results.get("subtasks") or {}).items():
            for f in filters:
                kv = vals.get(f"exact_match,{f}")
                lv = (h_results.get(spec["lm"] + sub) or {}).get(f"exact_match,{f}")
                if kv is not None or lv is not None:
                    same = kv is not None and lv is not None and abs(float(kv) - float(lv)) <= AGG_TOL
                    aggs.append({"keel_key": f"subtasks.{sub}.exact_match,{f}", "keel": kv,
                                 "lm_eval_key": f"{spec['lm']}{sub} exact_match,{f}", "lm_eval": lv, "identical": same})
    rep["aggregates"] = aggs
    if spec["kind"] == "gen":
        # the same budget on both sides: lm-eval's generation_kwargs as logged, keel's results.json
        kw = next((h[i].get("gen_kwargs") for i in common if h[i].get("gen_kwargs")), None) or {}
        rep["max_gen_toks_lm_eval"] = kw.get("max_gen_toks")
        rep["until_lm_eval"] = kw.get("until")
        rep["max_gen_toks_keel"] = k_results.get("max_gen_toks")
        rep["budget_differs"] = (rep["max_gen_toks_lm_eval"] is not None and rep["max_gen_toks_keel"] is not None
                                 and int(rep["max_gen_toks_lm_eval"]) != int(rep["max_gen_toks_keel"]))
    rep["keel_questions_per_s"] = k_results.get("questions_per_s")
    rep["agree"] = (not only_k and not only_h and rep["prompts_identical"] == rep["prompts_compared"]
                    and not rep["prompt_mismatches"] and not rep["generation_mismatches"]
                    and not rep["extracted_mismatches"] and not rep["score_mismatches"]
                    and all(x["identical"] for x in aggs) and not rep.get("budget_differs")
                    and (rep["max_rel_delta_ll"] is None or rep["max_rel_delta_ll"] <= REL_TOL))
    return rep


def fmt(x, nd=4):
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def short(s, n=70):
    s = repr(s)
    return s if len(s) <= n else s[:n - 3] + "..."


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", nargs=3, action="append", required=True, metavar=("NAME", "KEEL_DIR", "HARNESS_DIR"))
    ap.add_argument("--show", type=int, default=5, help="disagreements to print per kind and task (default 5)")
    ap.add_argument("--json", help="also write the full report here")
    ap.add_argument("--fail-above", type=float, help="exit 1 on any disagreement or |delta loglik| above this")
    ap.add_argument("--tokenizer", help="the exported model's folder: where log-likelihoods differ, look for requests"
                    " that lm-eval's logits cache mixes up (transformers needed)")
    ap.add_argument("--model", help="the exported model's folder: where generations differ, decode the prompt alone"
                    " and report the top-2 logit margin where they part (transformers needed)")
    args = ap.parse_args()

    reports = []
    for name, kd, hd in args.task:
        if name not in SPECS:
            sys.exit(f"unknown task {name}; known: {' '.join(SPECS)}")
        reports.append(compare(name, SPECS[name], kd, hd, args.tokenizer, args.model))

    hdr = ["task", "items keel/lm", "prompts identical", "max|dLL| (rel.)", "gen mism.", "extr. mism.", "score mism.",
           "aggregates keel / lm-eval"]
    rows = []
    for r in reports:
        aggs = [a for a in r["aggregates"] if not a["keel_key"].startswith("subtasks.")]
        agg = "; ".join(f"{a['keel_key']} {fmt(a['keel'])} / {fmt(a['lm_eval'])}{'' if a['identical'] else ' DIFFER'}"
                        for a in aggs)
        gen = SPECS[r["task"]]["kind"] == "gen"
        rows.append([r["task"], f"{r['items_keel']}/{r['items_lm_eval']}",
                     f"{r['prompts_identical']}/{r['prompts_compared']}",
                     "n/a" if r["max_abs_delta_ll"] is None else f"{r['max_abs_delta_ll']:.1e} ({r['max_rel_delta_ll']:.0e})",
                     str(len(r["generation_mismatches"])) if gen else "-",
                     str(len(r["extracted_mismatches"])) if gen else "-",
                     str(len(r["score_mismatches"])), agg])
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(hdr))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))

    for r in reports:
        extra = [a for a in r["aggregates"] if a["keel_key"].startswith("subtasks.") and not a["identical"]]
        issues = (r["prompt_mismatches"], r["generation_mismatches"], r["extracted_mismatches"], r["score_mismatches"])
        if args.fail_above is not None:
            big = r["max_abs_delta_ll"] is not None and r["max_abs_delta_ll"] > args.fail_above
        else:
            big = r["max_rel_delta_ll"] is not None and r["max_rel_delta_ll"] > REL_TOL
        if r["agree"] and not extra and not big:
            continue
        print(f"\n== {r['task']}: {'disagreements' if not r['agree'] else 'log-likelihood differences above --fail-above'} (keel {r['keel_dir']})")
        if r["only_keel"] or r["only_lm_eval"]:
            print(f"  items only in keel: {r['only_keel'][:5]}  only in lm-eval: {r['only_lm_eval'][:5]}")
        for label, lst in zip(("prompt", "generation", "extracted", "score"), issues):
            for d in lst[:args.show]:
                print(f"  {label}: " + ", ".join(f"{k}={short(v)}" for k, v in d.items() if k != "near_tie"))
                if "near_tie" in d:
                    t = d["near_tie"]
                    print(f"    decoded alone by transformers, the prompt follows {t['alone_follows']}; at new token"
                          f" {t['step']} the top two {t['top2']} differ by {t['top2_margin']:.2e} in logit")
            if len(lst) > args.show:
                print(f"  ... {len(lst) - args.show} more {label} mismatches")
        if big:
            for d in r["largest_deltas"][:args.show]:
                print(f"  |dLL| {d['max_abs_delta']:.2e} at item {d['item']} (keel cut {d['keel_truncated_tokens']} tokens):"
                      f" keel {d['ll_keel']} lm-eval {d['ll_lm_eval']}")
            for c in r.get("lm_eval_cache_collisions", [])[:args.show]:
                print(f"  lm-eval logits_cache collision: item {c['item']} choice {c['choice']} shares its tokens"
                      f" (context + continuation)[:-1] with {c['with']}, whose continuation is longer, so lm-eval"
                      f" scored it on the wrong positions (rerun lm-eval with logits_cache=False)")
        if r.get("budget_differs"):
            print(f"  max_gen_toks: keel {r['max_gen_toks_keel']}, lm-eval {r['max_gen_toks_lm_eval']}")
        for a in [a for a in r["aggregates"] if not a["identical"]]:
            print(f"  aggregate {a['keel_key']}: keel {a['keel']} vs lm-eval {a['lm_eval_key']} {a['lm_eval']}")
        rc = r["recomputed"]
        print("  recomputed from items: keel " + json.dumps(rc["keel"]) + " | lm-eval " + json.dumps(rc["lm_eval"]))

    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(reports, f, indent=2, ensure_ascii=False)
    if args.fail_above is not None:
        bad = [r["task"] for r in reports
               if not r["agree"] or (r["max_abs_delta_ll"] is not None and r["max_abs_delta_ll"] > args.fail_above)]
        if bad:
            print(f"\ndisagreement in: {' '.join(bad)}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
