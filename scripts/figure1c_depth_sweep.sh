#!/usr/bin/env bash
# Figure 1(c) at CPU scale: Pre-LN against Keel at depths 64..1024 sub-layers on the King James
# Bible (BPE-8k; the synthetic tasks when data/bible-bpe8k is absent, see scripts/corpus.sh):
# d_model 64, 4 heads, seq 64, batch 8, 300 steps (153,600 tokens), peak LR 3e-3 with warmup and
# cosine decay. Then the figures. 22 min 10 s on a 2-core AMD EPYC (Zen 4; two runs at a time,
# one thread each). Not part of CI. scripts/figure6_layer_removal.sh reuses its depth-64 runs.
#   scripts/figure1c_depth_sweep.sh [OUT=runs/fig1c]
set -euo pipefail
source "$(dirname "$0")/corpus.sh"
out=${1:-runs/fig1c}
"$keel" sweep --depths 64..1024 --placements pre_ln,keel --jobs 2 --out "$out" "${corpus_sets[@]}" "${model_sets[@]}" \
  "${depth_sweep_sets[@]}"
"$keel" plot "$out" --column final_val_loss --out "$out/figures"
"$keel" plot "$out"/d1024-* --out "$out/figures"
column -s, -t < "$out/summary.csv"
