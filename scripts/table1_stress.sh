#!/usr/bin/env bash
# Table 1 at CPU scale: maximum tolerable LR of all six placements at depths 64 and 512 under a
# linear ramp 0 -> 5e-2 over 400 steps (d_model 32, seq 32, batch 8), then the figures. About
# 3-6 minutes on 2 cores. Not part of CI.
#   scripts/table1_stress.sh [OUT=runs/stress-cpu]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/stress-cpu}
cargo build --release -q
keel=target/release/keel
"$keel" stress --set model.d_model=32 --set model.n_heads=2 --set train.seq_len=32 --set train.batch_size=8 \
  --set train.log_every=20 --set train.grad_norm_every=0 --depths 64,512 --peak-lr 5e-2 --warmup-steps 400 \
  --jobs 2 --out "$out"
"$keel" plot "$out" "$out"/keel-d512 "$out"/pre_ln-d512 "$out"/post_ln-d512 --out "$out/figures"
