#!/usr/bin/env python3
"""Reads keel's TensorBoard event files with the `tensorboard` package's own readers and checks
them against the run's CSVs. Outside CI (needs `pip install tensorboard`).

    python scripts/check_tensorboard.py LOGDIR [LOGDIR ...]

LOGDIR is a run directory, a sweep folder or a stress folder: every folder under it that holds
event files is one TensorBoard run (EventMultiplexer.AddRunsFromDirectory, as `tensorboard
--logdir` finds them). For each run it checks, with TensorBoard's EventFileLoader over the files in
TensorBoard's order, that no (tag, step) is there twice, and with its EventAccumulator that:
  train/loss, train/lr, train/grad_norm, train/tokens_per_s  == metrics.csv, every step
  val/loss                                                    == eval.csv, every row
  grad_norm/<layer>_<kind>, grad_norm/<kind>                  == grad_norms.csv, every row
  grad_norm_by_depth (histogram)                              == the sub-layer rows of each block
values compared as float32 (tokens/s to the CSV's 0.1). Prints one line per run and a table of
the first steps; exits 1 on any mismatch.
"""
import csv
import math
import os
import sys
from collections import defaultdict

from tensorboard.backend.event_processing import event_accumulator, event_file_loader, event_multiplexer
from tensorboard.backend.event_processing import io_wrapper


def f32(x):
    import struct

    return struct.unpack("f", struct.pack("f", float(x)))[0]


def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def same(a, b, tol=0.0):
    if math.isnan(a) and math.isnan(b):
        return True
    return abs(a - b) <= tol


def check_run(name, run_dir, acc):
    problems = []
    # Every (tag, step) once over the files, read as TensorBoard orders them.
    files = sorted(f for f in os.listdir(run_dir) if io_wrapper.IsTensorFlowEventsFile(f))
    seen = defaultdict(int)
    for f in files:
        for event in event_file_loader.EventFileLoader(os.path.join(run_dir, f)).Load():
            if event.HasField("summary"):
                for v in event.summary.value:
                    seen[(v.tag, event.step)] += 1
    twice = [k for k, n in seen.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} (tag, step) pairs twice, e.g. {twice[:3]}")

    scalars = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    metrics = read_csv(os.path.join(run_dir, "metrics.csv"))
    columns = [("train/loss", "loss", 0.0), ("train/lr", "lr", 0.0), ("train/grad_norm", "grad_norm", 0.0)]
    checked = 0
    for row in metrics:
        step = int(row["step"])
        for tag, col, tol in columns:
            got = scalars.get(tag, {}).get(step)
            if got is None or not same(got, f32(row[col]), tol):
                problems.append(f"{tag} step {step}: events {got}, metrics.csv {row[col]}")
            checked += 1
        tps = scalars.get("train/tokens_per_s", {}).get(step)
        if tps is None or abs(tps - float(row["tokens_per_s"])) > 0.05 + 1e-6 * float(row["tokens_per_s"]):
            problems.append(f"train/tokens_per_s step {step}: events {tps}, metrics.csv {row['tokens_per_s']}")
        checked += 1
    if len(scalars.get("train/loss", {})) != len(metrics):
        problems.append(f"train/loss has {len(scalars.get('train/loss', {}))} steps, metrics.csv {len(metrics)} rows")
    for row in read_csv(os.path.join(run_dir, "eval.csv")):
        got = scalars.get("val/loss", {}).get(int(row["step"]))
        if got is None or not same(got, f32(row["val_loss"])):
            problems.append(f"val/loss step {row['step']}: events {got}, eval.csv {row['val_loss']}")
        checked += 1
    grad_rows = read_csv(os.path.join(run_dir, "grad_norms.csv"))
    depth = max([int(r["layer"]) for r in grad_rows if r["layer"]] or [0]) + 1
    width = max(4, len(str(depth - 1)))
    blocks = defaultdict(list)
    for row in grad_rows:
        step = int(row["step"])
        if row["layer"]:
            tag = f"grad_norm/{int(row['layer']):0{width}d}_{row['kind']}"
            blocks[step].append(float(row["grad_norm"]))
        else:
            tag = f"grad_norm/{row['kind']}"
        got = scalars.get(tag, {}).get(step)
        if got is None or not same(got, f32(row["grad_norm"])):
            problems.append(f"{tag} step {step}: events {got}, grad_norms.csv {row['grad_norm']}")
        checked += 1
    hist = {}
    if "grad_norm_by_depth" in acc.Tags()["histograms"]:
        hist = {e.step: e.histogram_value for e in acc.Histograms("grad_norm_by_depth")}
    for step, norms in blocks.items():
        if not all(math.isfinite(x) for x in norms):
            continue
        h = hist.get(step)
        if h is None or [round(x, 12) for x in h.bucket] != [round(x, 12) for x in norms]:
            problems.append(f"grad_norm_by_depth step {step}: histogram differs from grad_norms.csv")
        checked += 1
    status = "OK" if not problems else "MISMATCH"
    print(
        f"{status} run {name!r}: {len(files)} event file(s), {len(scalars)} scalar tags, "
        f"{len(hist)} histograms, {checked} values checked against the CSVs"
    )
    for p in problems[:10]:
        print("   ", p)
    return not problems, scalars


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    ok = True
    for logdir in sys.argv[1:]:
        mux = event_multiplexer.EventMultiplexer(size_guidance={"scalars": 0, "histograms": 0})
        mux.AddRunsFromDirectory(logdir)
        mux.Reload()
        runs = sorted(mux.Runs())
        print(f"== {logdir}: {len(runs)} TensorBoard run(s): {', '.join(runs)}")
        if not runs:
            ok = False
        first = None
        for name in runs:
            run_dir = os.path.join(logdir, name) if name != "." else logdir
            good, scalars = check_run(name, run_dir, mux.GetAccumulator(name))
            ok &= good
            first = first or (name, scalars)
        if first:
            name, scalars = first
            print(f"   first steps of {name!r} as TensorBoard reads them:")
            print("   step  train/loss  train/lr    train/grad_norm")
            for step in sorted(scalars.get("train/loss", {}))[:5]:
                print(
                    f"   {step:>4}  {scalars['train/loss'][step]:.6f}  {scalars['train/lr'][step]:.4e}  "
                    f"{scalars['train/grad_norm'][step]:.6f}"
                )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
