#!/usr/bin/env python3
"""Joins scripts/gpu_first_contact.sh's bench.csv (keel), torch.csv (PyTorch) and memory.csv into
one markdown table per config and precision: tokens/s, ratio to PyTorch eager, peak GPU memory, and
bf16 model FLOPs utilisation against a dense bf16 peak (PEAK_TFLOPS, default 989: H100/H200 SXM).

    python3 scripts/gpu_summary.py OUT_DIR
"""
import csv
import os
import sys

CONFIGS = {(1024, 64, 1024, 4): "G", (128, 32, 128, 8): "R", (128, 512, 128, 8): "DN"}


def rows(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def main():
    out = sys.argv[1]
    peak = float(os.environ.get("PEAK_TFLOPS", "989"))
    mem = {r["run"]: r["peak_mib_above_idle"] for r in rows(os.path.join(out, "memory.csv"))}
    table = {}
    for r in rows(os.path.join(out, "bench.csv")):
        key = (int(r["d_model"]), int(r["depth"]), int(r["seq_len"]), int(r["batch_size"]))
        cfg = CONFIGS.get(key, "x".join(map(str, key)))
        table[(cfg, r["precision"], "keel-" + r.get("kernels", "?"))] = (float(r["tokens_per_s"]), float(r["model_gflops_per_s"]))
    for r in rows(os.path.join(out, "torch.csv")):
        key = (int(r["d_model"]), int(r["depth"]), int(r["seq_len"]), int(r["batch_size"]))
        cfg = CONFIGS.get(key, "x".join(map(str, key)))
        table[(cfg, r["precision"], r["framework"].replace("pytorch-", "torch-"))] = (float(r["tokens_per_s"]), None)
    print("| config | precision | run | tokens/s | vs torch eager | peak GPU MiB | bf16 MFU |")
    print("|---|---|---|---|---|---|---|")
    for (cfg, prec, run), (tps, gflops) in sorted(table.items()):
        base = table.get((cfg, prec, "torch-eager"), (None, None))[0]
        ratio = f"{tps / base:.2f}x" if base else ""
        m = mem.get(f"{cfg}-{prec}-{run}", "")
        mfu = f"{gflops / (peak * 1e3):.1%}" if gflops and prec == "bf16" else ""
        print(f"| {cfg} | {prec} | {run} | {tps:,.0f} | {ratio} | {m} | {mfu} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
