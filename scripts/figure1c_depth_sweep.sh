#!/usr/bin/env bash
# Figure 1(c) at CPU scale: Pre-LN against Keel at depths 64..1024 sub-layers on the King James
# Bible (BPE-8k; the synthetic tasks when data/bible-bpe8k is absent, see scripts/corpus.sh):
# d_model 64, 4 heads, seq 64, batch 8, 300 steps (153,600 tokens), peak LR 3e-3 with warmup and
# cosine decay. Then the figures, and Figure 6 (layer removal) on the depth-64 runs. About 25
# minutes on 2 cores (two runs at a time, one thread each). Not part of CI.
#   scripts/figure1c_depth_sweep.sh [OUT=runs/fig1c]
set -euo pipefail
source "$(dirname "$0")/corpus.sh"
out=${1:-runs/fig1c}
"$keel" sweep --depths 64..1024 --placements pre_ln,keel --jobs 2 --out "$out" "${corpus_sets[@]}" "${model_sets[@]}" \
  --set train.steps=300 --set train.warmup_steps=30 --set train.lr=3e-3 --set train.eval_every=100 \
  --set train.grad_norm_every=100 --set train.log_every=20
"$keel" plot "$out" --column final_val_loss --out "$out/figures"
"$keel" plot "$out"/d1024-* --out "$out/figures"
for p in pre_ln keel; do
  "$keel" eval --bench layer-removal --run "$out/d64-$p" --limit 64 --out "$out/removal-$p"
done
"$keel" plot "$out"/removal-pre_ln "$out"/removal-keel --out "$out/figures"
column -s, -t < "$out/summary.csv"
