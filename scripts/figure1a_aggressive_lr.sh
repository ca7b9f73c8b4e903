#!/usr/bin/env bash
# Figure 1(a) at CPU scale: training loss of Post-LN, DeepNorm, Pre-LN and Keel at an aggressive
# peak LR, on the King James Bible (BPE-8k; the synthetic tasks when data/bible-bpe8k is absent,
# see scripts/corpus.sh): depth 64 sub-layers, d_model 64, seq 64, batch 8, 400 steps, peak LR
# 2e-2 (the paper's 4.5e-3 scaled up for a 16-32x narrower model), then the loss figure with
# divergence marked. 2 min 11 s on a 2-core AMD EPYC (Zen 4), 8 min 8 s on a 2-core Intel Xeon with
# nothing else running (identical losses). Not part of CI.
#   scripts/figure1a_aggressive_lr.sh [OUT=runs/fig1a]
set -euo pipefail
source "$(dirname "$0")/corpus.sh"
out=${1:-runs/fig1a}
"$keel" sweep --depths 64 --placements post_ln,deepnorm,pre_ln,keel --jobs 2 --out "$out" "${corpus_sets[@]}" "${model_sets[@]}" \
  --set train.steps=400 --set train.warmup_steps=40 --set train.lr=2e-2 --set train.log_every=10 \
  --set train.eval_every=200 --set train.grad_norm_every=0
"$keel" plot "$out"/d64-* --out "$out/figures"
column -s, -t < "$out/summary.csv"
