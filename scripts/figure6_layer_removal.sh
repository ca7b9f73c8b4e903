#!/usr/bin/env bash
# Figure 6 at CPU scale: perplexity with each sub-layer's branch removed in turn, for Pre-LN and
# Keel at depth 64, on Figure 1(c)'s depth-64 runs (trained here with the same settings when
# scripts/figure1c_depth_sweep.sh has not made them; the sweep skips them when it has). 64
# validation windows. 44 s on a 2-core AMD EPYC (Zen 4) with the runs there, about 2 minutes without. Not part of CI.
#   scripts/figure6_layer_removal.sh [FIG1C_OUT=runs/fig1c]
set -euo pipefail
source "$(dirname "$0")/corpus.sh"
out=${1:-runs/fig1c}
"$keel" sweep --depths 64 --placements pre_ln,keel --jobs 2 --out "$out" "${corpus_sets[@]}" "${model_sets[@]}" \
  "${depth_sweep_sets[@]}"
for p in pre_ln keel; do
  [ -f "$out/removal-$p/layer_removal.csv" ] || "$keel" eval --bench layer-removal --run "$out/d64-$p" --limit 64 --out "$out/removal-$p"
done
"$keel" plot "$out"/removal-pre_ln "$out"/removal-keel --out "$out/figures"
