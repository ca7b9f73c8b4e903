#!/usr/bin/env python3
"""Agreement between `keel eval --bench mmlu` and lm-evaluation-harness on the same questions.

    python3 scripts/compare_mmlu.py --keel runs/agree/eval/mmlu-0shot \
        --harness runs/agree-lm-eval/out [--show 20] [--json report.json] [--fail-above TOL]

--keel     keel's results folder: results.json and questions.csv (id = subject/row, gold,
           predicted, ll_a..ll_d).
--harness  the harness's --output_path (searched recursively): its results_*.json and the
           samples_keel_mmlu_{subject}_*.jsonl written by --log_samples (tasks made by
           scripts/lm_eval_task/make_tasks.py; doc_id is the row of the subject's test file).
           With several runs in the folder, the newest file of each kind is used.

Prints the overall accuracy of each side (as each reports it, and recomputed from the
per-question log-likelihoods), how many questions get a different predicted letter, the max and
mean |delta log-likelihood| over all four choices of every question, each side's distribution of
predicted letters, keel's smallest top-two margin (when it exceeds the max |delta|, identical
predictions were guaranteed), and the questions whose predictions differ (with each side's four
log-likelihoods and keel's top-two margin).
--fail-above TOL exits 1 when any |delta| exceeds TOL or any prediction differs.
"""
import argparse
import csv
import glob
import json
import math
import os
import re
import sys

LETTERS = "ABCD"


def argmax(xs):
    best = 0
    for i, x in enumerate(xs):
        if x > xs[best]:
            best = i
    return best


def margin(ll):
    s = sorted(ll, reverse=True)
    return s[0] - s[1]


def newest(paths):
    return max(paths, key=os.path.getmtime) if paths else None


def read_keel(folder):
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    rows = {}
    with open(os.path.join(folder, "questions.csv"), newline="") as f:
        for r in csv.DictReader(f):
            rows[r["id"]] = {
                "gold": LETTERS.index(r["gold"]),
                "pred": LETTERS.index(r["predicted"]),
                "ll": [float(r["ll_" + l.lower()]) for l in LETTERS],
                "truncated": int(r.get("truncated_tokens") or 0),
            }
    return results, rows


def harness_samples(folder):
    """{task: newest samples file} for the keel_mmlu_* tasks under folder."""
    by_task = {}
    for p in glob.glob(os.path.join(folder, "**", "samples_*.jsonl"), recursive=True):
        m = re.match(r"samples_(keel_mmlu_.+)_(\d{4}-\d{2}-\d{2}T[\d\-.]+)\.jsonl$", os.path.basename(p))
        if m:
            by_task.setdefault(m.group(1), []).append(p)
    return {t: newest(ps) for t, ps in by_task.items()}


def read_harness(folder):
    results_path = newest(glob.glob(os.path.join(folder, "**", "results_*.json"), recursive=True))
    results = None
    if results_path:
        with open(results_path) as f:
            results = json.load(f)
    rows = {}
    files = harness_samples(folder)
    if not files:
        sys.exit(f"no samples_keel_mmlu_*.jsonl under {folder}: run lm_eval with --log_samples")
    for task, path in files.items():
        subject = task[len("keel_mmlu_"):]
        with open(path) as f:
            for line in f:
                s = json.loads(line)
                resps = s["filtered_resps"] if "filtered_resps" in s else s["resps"]
                ll = []
                for r in resps:
                    # [loglik, is_greedy], sometimes nested one level deeper, sometimes strings
                    while isinstance(r, list) and isinstance(r[0], list):
                        r = r[0]
                    ll.append(float(r[0]))
                doc = s.get("doc", {})
                gold = s.get("target", doc.get("answer"))
                rows[f"{subject}/{s['doc_id']}"] = {"gold": int(gold), "pred": argmax(ll), "ll": ll}
    return results, results_path, rows


def harness_acc(results):
    if not results:
        return None
    r = results.get("results", {}).get("keel_mmlu") or results.get("groups", {}).get("keel_mmlu")
    if not r:
        return None
    for k in ("acc,none", "acc"):
        if k in r:
            return float(r[k])
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keel", required=True)
    ap.add_argument("--harness", required=True)
    ap.add_argument("--show", type=int, default=20, help="differing questions to list (default 20; -1: all)")
    ap.add_argument("--json", help="also write the report here")
    ap.add_argument("--fail-above", type=float, help="exit 1 if any |delta loglik| exceeds this or a prediction differs")
    args = ap.parse_args()

    k_results, k = read_keel(args.keel)
    h_results, h_path, h = read_harness(args.harness)
    common = sorted(set(k) & set(h), key=lambda i: (i.split("/")[0], int(i.split("/")[1])))
    only_k, only_h = sorted(set(k) - set(h)), sorted(set(h) - set(k))

    gold_mismatch = [i for i in common if k[i]["gold"] != h[i]["gold"]]
    deltas, per_q = [], []
    differ = []
    for i in common:
        d = [abs(a - b) for a, b in zip(k[i]["ll"], h[i]["ll"])]
        deltas.extend(d)
        per_q.append((max(d), i))
        if k[i]["pred"] != h[i]["pred"]:
            differ.append(i)
    n = len(common)
    k_acc_re = sum(k[i]["pred"] == k[i]["gold"] for i in common) / max(n, 1)
    h_acc_re = sum(h[i]["pred"] == h[i]["gold"] for i in common) / max(n, 1)
    max_d = max(deltas) if deltas else float("nan")
    mean_d = sum(deltas) / len(deltas) if deltas else float("nan")
    per_q.sort(reverse=True)
    # relative to the log-likelihoods' size
    mean_abs_ll = sum(abs(x) for i in common for x in k[i]["ll"]) / max(4 * n, 1)

    margins = sorted((margin(k[i]["ll"]), i) for i in common)
    pred_dist = {side: {L: sum(1 for i in common if rows[i]["pred"] == j) for j, L in enumerate(LETTERS)}
                 for side, rows in (("keel", k), ("harness", h))}
    gold_dist = {L: sum(1 for i in common if k[i]["gold"] == j) for j, L in enumerate(LETTERS)}

    report = {
        "keel_results": os.path.join(args.keel, "results.json"),
        "harness_results": h_path,
        "questions_keel": len(k),
        "questions_harness": len(h),
        "questions_compared": n,
        "only_in_keel": len(only_k),
        "only_in_harness": len(only_h),
        "gold_mismatches": len(gold_mismatch),
        "accuracy_keel_reported": k_results.get("accuracy"),
        "accuracy_harness_reported": harness_acc(h_results),
        "accuracy_keel_recomputed": k_acc_re,
        "accuracy_harness_recomputed": h_acc_re,
        "predictions_differ": len(differ),
        "max_abs_delta_loglik": max_d,
        "mean_abs_delta_loglik": mean_d,
        "mean_abs_loglik_keel": mean_abs_ll,
        "questions_over_1e-3": sum(1 for d, _ in per_q if d > 1e-3),
        "questions_over_1e-2": sum(1 for d, _ in per_q if d > 1e-2),
        "predicted_letters": pred_dist,
        "gold_letters": gold_dist,
        "min_keel_top2_margin": margins[0][0] if margins else None,
        "questions_margin_below_2x_max_delta": sum(1 for m, _ in margins if m <= 2 * max_d),
        "keel_questions_truncated": sum(1 for i in common if k[i]["truncated"] > 0),
        "keel_questions_per_s": k_results.get("questions_per_s"),
        "largest_deltas": [{"id": i, "max_abs_delta": d} for d, i in per_q[:10]],
        "differing": [
            {"id": i, "gold": LETTERS[k[i]["gold"]], "keel": LETTERS[k[i]["pred"]], "harness": LETTERS[h[i]["pred"]],
             "ll_keel": k[i]["ll"], "ll_harness": h[i]["ll"], "keel_margin": margin(k[i]["ll"]),
             "keel_truncated_tokens": k[i]["truncated"]}
            for i in differ
        ],
    }

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.2f}%"

    print(f"questions: keel {len(k)}, harness {len(h)}, compared {n}"
          f" (only keel {len(only_k)}, only harness {len(only_h)}, gold mismatches {len(gold_mismatch)})")
    print(f"accuracy  keel    {pct(report['accuracy_keel_reported'])} reported, {pct(k_acc_re)} recomputed")
    print(f"accuracy  harness {pct(report['accuracy_harness_reported'])} reported, {pct(h_acc_re)} recomputed")
    print(f"predicted letter differs: {len(differ)} of {n}")
    print(f"|delta loglik| over {len(deltas)} choice scores: max {max_d:.3e}, mean {mean_d:.3e}"
          f" (mean |loglik| {mean_abs_ll:.3f}); questions with max > 1e-3: {report['questions_over_1e-3']},"
          f" > 1e-2: {report['questions_over_1e-2']}")
    print(f"predicted letters: keel {pred_dist['keel']}, harness {pred_dist['harness']}; gold {gold_dist}")
    if margins:
        print(f"smallest keel top-2 log-likelihood margin {margins[0][0]:.3e} ({margins[0][1]}); questions whose"
              f" margin is within 2 x max |delta| (a flip possible): {report['questions_margin_below_2x_max_delta']}")
    print(f"keel questions truncated to the context: {report['keel_questions_truncated']}")
    print("largest deltas: " + ", ".join(f"{x['id']} {x['max_abs_delta']:.2e}" for x in report["largest_deltas"][:5]))
    if only_k[:5] or only_h[:5]:
        print(f"only in keel: {only_k[:5]}  only in harness: {only_h[:5]}")
    shown = differ if args.show < 0 else differ[: args.show]
    if shown:
        print(f"{'id':<45} gold keel harness  keel margin  ll keel (A..D) | ll harness (A..D)")
        for d in report["differing"][: len(shown)]:
            print(f"{d['id']:<45} {d['gold']:>4} {d['keel']:>4} {d['harness']:>7}  {d['keel_margin']:.3e}  "
                  + " ".join(f"{x:.5f}" for x in d["ll_keel"]) + " | " + " ".join(f"{x:.5f}" for x in d["ll_harness"]))
        if len(differ) > len(shown):
            print(f"... {len(differ) - len(shown)} more (--show -1 lists all)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.fail_above is not None and (differ or (deltas and max_d > args.fail_above) or only_k or only_h):
        sys.exit(1)


if __name__ == "__main__":
    main()
