#!/usr/bin/env bash
# An ablation the paper does not report: Keel's residual scale alpha in {1, sqrt L, L, 4L} at
# depths 64 and 256 sub-layers, on the King James Bible (BPE-8k; the synthetic tasks when
# data/bible-bpe8k is absent, see scripts/corpus.sh), with Figure 1(c)'s settings (d_model 64,
# seq 64, batch 8, 300 steps, peak LR 3e-3), then validation loss against alpha. 7 min 17 s on a
# 2-core AMD EPYC (Zen 4). Not part of CI.
#   scripts/alpha_ablation.sh [OUT=runs/alpha]
set -euo pipefail
source "$(dirname "$0")/corpus.sh"
out=${1:-runs/alpha}
"$keel" sweep --depths 64,256 --placements keel --grid model.alpha=1,sqrtL,L,4L --jobs 2 --out "$out" \
  "${corpus_sets[@]}" "${model_sets[@]}" "${depth_sweep_sets[@]}" --set train.grad_norm_every=299
"$keel" plot "$out" --against alpha --column final_val_loss --out "$out/figures"
column -s, -t < "$out/summary.csv"
