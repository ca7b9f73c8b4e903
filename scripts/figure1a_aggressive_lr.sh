#!/usr/bin/env bash
# Figure 1(a) at CPU scale: training loss of Pre-LN and Keel at an aggressive peak LR (the paper's
# 4.5e-3 scaled to a narrow model: 2e-2), depth 64 sub-layers, 400 steps, then the loss figure with
# divergence marked. About 35 seconds on 2 cores. Not part of CI.
#   scripts/figure1a_aggressive_lr.sh [OUT=runs/fig1a]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/fig1a}
cargo build --release -q
keel=target/release/keel
"$keel" sweep --depths 64 --placements pre_ln,keel --jobs 2 --out "$out" \
  --set model.d_model=32 --set model.n_heads=2 --set train.seq_len=32 --set train.batch_size=8 \
  --set train.steps=400 --set train.warmup_steps=40 --set train.lr=2e-2 --set train.log_every=20
"$keel" plot "$out"/d64-* --out "$out/figures"
