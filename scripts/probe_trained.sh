#!/usr/bin/env bash
# The gradient probe before and after training, beside the residual-path theory: Post-LN, Pre-LN
# and Keel at depths 16, 64 and 256 sub-layers trained 400 steps on the King James Bible (BPE-8k;
# the synthetic tasks when data/bible-bpe8k is absent, see scripts/corpus.sh), d_model 64, seq 64,
# batch 8, peak LR 3e-3; then `keel probe --run` at step 0 (the initialization) and at the end, on
# the run's own data, and one figure per depth and moment: each sub-layer's input-gradient ratio
# to the top's, with the prediction from the measured branch ratios dashed. 9 min 45 s on a
# 2-core AMD EPYC (Zen 4). Not part of CI.
#   scripts/probe_trained.sh [OUT=runs/probe-trained]
set -euo pipefail
source "$(dirname "$0")/corpus.sh"
out=${1:-runs/probe-trained}
depths=(16 64 256)
placements=(post_ln pre_ln keel)
"$keel" sweep --depths "$(IFS=,; echo "${depths[*]}")" --placements "$(IFS=,; echo "${placements[*]}")" --jobs 2 \
  --out "$out" "${corpus_sets[@]}" "${model_sets[@]}" --set train.steps=400 --set train.warmup_steps=40 \
  --set train.lr=3e-3 --set train.eval_every=200 --set train.grad_norm_every=399 --set train.log_every=20
mkdir -p "$out/probes"
for d in "${depths[@]}"; do
  for moment in init trained; do
    csv="$out/probes/$moment-d$d.csv"
    [ -s "$csv" ] && continue
    rm -f "$csv.part"
    for p in "${placements[@]}"; do
      step=(); [ "$moment" = init ] && step=(--step 0)
      one="$out/probes/$moment-d$d-$p.csv"
      rm -f "$one"
      "$keel" probe --run "$out/d$d-$p" "${step[@]}" --out "$one" >/dev/null
      if [ -s "$csv.part" ]; then tail -n +2 "$one" >> "$csv.part"; else cp "$one" "$csv.part"; fi
      rm "$one"
    done
    mv "$csv.part" "$csv"
  done
done
"$keel" plot "$out"/probes/*.csv --out "$out/figures"
column -s, -t < "$out/summary.csv"
