#!/usr/bin/env bash
# Figure 1(c) at CPU scale: Pre-LN vs Keel, depth 64..1024 sub-layers, on a narrow model and a
# short budget (d_model 32, 2 heads, seq 32, batch 8, 300 steps, peak LR 3e-3 with cosine decay,
# synthetic tasks), then the figures. About 5 minutes on 2 cores (two runs at a time, one thread
# each). Not part of CI.
#   scripts/figure1c_depth_sweep.sh [OUT=runs/fig1c]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/fig1c}
cargo build --release -q
keel=target/release/keel
"$keel" sweep --depths 64..1024 --placements pre_ln,keel --jobs 2 --out "$out" \
  --set model.d_model=32 --set model.n_heads=2 --set train.seq_len=32 --set train.batch_size=8 \
  --set train.steps=300 --set train.warmup_steps=30 --set train.lr=3e-3 --set train.eval_every=100 \
  --set train.grad_norm_every=100 --set train.log_every=20
"$keel" plot "$out" --column final_val_loss --out "$out/figures"
"$keel" plot "$out" --column peak_rss_mb --out "$out/figures"
"$keel" plot "$out"/d1024-* --out "$out/figures"
column -s, -t < "$out/summary.csv"
