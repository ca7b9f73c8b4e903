#!/usr/bin/env bash
# Table 1 at CPU scale: maximum tolerable LR of all six placements at depths 64 and 512 under a
# linear ramp 0 -> 5e-2 over 400 steps, on the King James Bible (BPE-8k; the synthetic tasks when
# data/bible-bpe8k is absent, see scripts/corpus.sh): d_model 64, seq 64, batch 8. Then the
# figures. 16 min 12 s on a 2-core AMD EPYC (Zen 4; runs stop at their first divergence). Not part of CI.
#   scripts/table1_stress.sh [OUT=runs/stress]
set -euo pipefail
source "$(dirname "$0")/corpus.sh"
out=${1:-runs/stress}
"$keel" stress "${corpus_sets[@]}" "${model_sets[@]}" --set train.log_every=10 --set train.grad_norm_every=0 \
  --set train.eval_every=0 --depths 64,512 --peak-lr 5e-2 --warmup-steps 400 --jobs 2 --out "$out"
"$keel" plot "$out" "$out"/keel-d512 "$out"/pre_ln-d512 "$out"/post_ln-d512 --out "$out/figures"
cat "$out/table1.md"
