#!/usr/bin/env bash
# Interleaved speed rounds for the speed tables of docs/speed.md: keel before (a binary you built from
# an older commit), keel now capped at AVX2 (KEEL_SIMD=avx2), keel now, and PyTorch eager, at R
# and deep-narrow, then the matrix products at the model's shapes. Not part of CI.
#
#   scripts/bench_simd_rounds.sh BEFORE_KEEL PYTHON [ROUNDS] [OUT_DIR]
#   e.g. git worktree add ../before 35276b2 && (cd ../before && CARGO_TARGET_DIR=../target-before cargo build --release)
#        scripts/bench_simd_rounds.sh ../target-before/release/keel ~/torchenv/bin/python 5 bench-rounds
#
# Each command's output is kept as OUT_DIR/{R,DN,MM}_{before,avx2,now,torch}_ROUND.txt. Run it on
# an idle machine: one benchmark at a time, nothing else running.
set -euo pipefail
before=${1:?usage: bench_simd_rounds.sh BEFORE_KEEL PYTHON [ROUNDS] [OUT_DIR]}
py=${2:?usage: bench_simd_rounds.sh BEFORE_KEEL PYTHON [ROUNDS] [OUT_DIR]}
rounds=${3:-5}
out=${4:-bench-rounds}
source "$(dirname "$0")/bench_rounds_common.sh"
for r in $(seq 1 "$rounds"); do
  "$before" bench --placements keel,pre_ln --steps 10 >"$out/R_before_$r.txt" 2>&1
  KEEL_SIMD=avx2 "$now" bench --placements keel,pre_ln --steps 10 >"$out/R_avx2_$r.txt" 2>&1
  "$now" bench --placements keel,pre_ln --steps 10 >"$out/R_now_$r.txt" 2>&1
  "$py" scripts/bench_torch.py --placements keel,pre_ln --steps 10 >"$out/R_torch_$r.txt" 2>&1
  "$before" bench --placements keel,pre_ln --steps 5 --warmup 2 "${dn_keel[@]}" >"$out/DN_before_$r.txt" 2>&1
  KEEL_SIMD=avx2 "$now" bench --placements keel,pre_ln --steps 5 --warmup 2 "${dn_keel[@]}" >"$out/DN_avx2_$r.txt" 2>&1
  "$now" bench --placements keel,pre_ln --steps 5 --warmup 2 "${dn_keel[@]}" >"$out/DN_now_$r.txt" 2>&1
  "$py" scripts/bench_torch.py --placements keel,pre_ln --steps 5 --warmup 2 "${dn_torch[@]}" >"$out/DN_torch_$r.txt" 2>&1
  "$now" bench --matmul >"$out/MM_now_$r.txt" 2>&1
  "$py" scripts/matmul_torch.py --threads 2 >"$out/MM_torch_$r.txt" 2>&1
  echo "round $r of $rounds done"
done
tokens_per_round "$rounds" before avx2 now torch
