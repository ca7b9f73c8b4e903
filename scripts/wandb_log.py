#!/usr/bin/env python3
"""Weights & Biases from keel's TensorBoard event files: one W&B run per keel run directory under
each LOGDIR (a run, a sweep or a stress folder), named by its folder (the grid point), with the
run's config.toml as the W&B config, every scalar of its event files logged at its step (the union
of the files, in TensorBoard's order), the gradient norms over depth as a W&B histogram, and
summary.json as the W&B summary. Outside CI: `pip install wandb tensorboard`.

    python scripts/wandb_log.py LOGDIR [LOGDIR ...] [--project keel] [--entity E] [--offline]

--offline writes W&B's offline runs (./wandb/offline-run-*), which `wandb sync wandb/offline-run-*`
uploads later (from a machine that can reach W&B). Checked with wandb 0.31.0.

Why not `wandb sync DIR` of the event files: wandb 0.30 removed `wandb sync --sync-tensorboard`
("The following options have been removed: --sync-tensorboard. Downgrade to wandb<=0.29.0 to use
them."); on wandb <= 0.29 `wandb sync --sync-tensorboard RUN_DIR` still imports a run's event files.
"""
import argparse
import os
import sys
import tomllib
import json
from collections import defaultdict

import numpy as np
import wandb
from tensorboard.backend.event_processing import event_file_loader, io_wrapper


def run_dirs(logdir):
    for root, dirs, files in os.walk(logdir):
        dirs.sort()
        if any(io_wrapper.IsTensorFlowEventsFile(f) for f in files):
            yield root


def events_by_step(run_dir):
    """{step: {tag: value}} and {step: (counts, edges)} over the run's event files."""
    scalars, histograms = defaultdict(dict), {}
    for f in sorted(f for f in os.listdir(run_dir) if io_wrapper.IsTensorFlowEventsFile(f)):
        for event in event_file_loader.LegacyEventFileLoader(os.path.join(run_dir, f)).Load():
            if not event.HasField("summary"):
                continue
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    scalars[event.step][v.tag] = v.simple_value
                elif v.HasField("histo"):
                    h = v.histo
                    edges = [h.min] + list(h.bucket_limit[:-1]) + [h.max]
                    histograms[event.step] = (v.tag, np.array(h.bucket), np.array(edges))
    return scalars, histograms


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logdirs", nargs="+")
    ap.add_argument("--project", default="keel")
    ap.add_argument("--entity", default=None)
    ap.add_argument("--offline", action="store_true")
    args = ap.parse_args()
    count = 0
    for logdir in args.logdirs:
        for run_dir in run_dirs(logdir):
            name = os.path.relpath(run_dir, os.path.dirname(os.path.abspath(logdir).rstrip("/")))
            config = {}
            if os.path.exists(os.path.join(run_dir, "config.toml")):
                with open(os.path.join(run_dir, "config.toml"), "rb") as f:
                    config = tomllib.load(f)
            scalars, histograms = events_by_step(run_dir)
            run = wandb.init(
                project=args.project,
                entity=args.entity,
                name=name,
                config=config,
                mode="offline" if args.offline else "online",
                reinit="finish_previous",
            )
            for step in sorted(set(scalars) | set(histograms)):
                row = dict(scalars.get(step, {}))
                if step in histograms:
                    tag, counts, edges = histograms[step]
                    row[tag] = wandb.Histogram(np_histogram=(counts, edges))
                run.log(row, step=step)
            summary = os.path.join(run_dir, "summary.json")
            if os.path.exists(summary):
                with open(summary) as f:
                    run.summary.update({f"keel/{k}": v for k, v in json.load(f).items()})
            run.finish()
            count += 1
            print(f"{name}: {len(scalars)} steps, {len(histograms)} histograms")
    if count == 0:
        sys.exit(f"no TensorBoard event files under {' '.join(args.logdirs)}")


if __name__ == "__main__":
    main()
