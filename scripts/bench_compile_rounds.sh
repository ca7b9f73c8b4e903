#!/usr/bin/env bash
# Interleaved speed rounds against PyTorch eager AND torch.compile, for the speed tables of
# docs/speed.md: keel before (a binary built from an older commit), keel now, PyTorch eager and
# PyTorch with `--compile`, at R and at deep-narrow, then the matrix products at the model's shapes
# (`keel bench --matmul` against `scripts/matmul_torch.py`). Not part of CI.
#
#   scripts/bench_compile_rounds.sh BEFORE_KEEL PYTHON [ROUNDS] [OUT_DIR]
#   e.g. git worktree add ../before ba61baf && (cd ../before && CARGO_TARGET_DIR=../target-before cargo build --release)
#        scripts/bench_compile_rounds.sh ../target-before/release/keel ~/torchenv/bin/python 3 rounds-compile
#
# DN_COMPILE=0 leaves torch.compile out at deep-narrow (depth 512: its compilation is long; each
# round gives it 10 minutes and records how long it ran in OUT_DIR/DN_compile_ROUND.txt). Each
# command's output is kept as OUT_DIR/{R,DN,MM}_{before,now,eager,compile}_ROUND.txt. Run it on an
# idle machine.
set -euo pipefail
before=${1:?usage: bench_compile_rounds.sh BEFORE_KEEL PYTHON [ROUNDS] [OUT_DIR]}
py=${2:?usage: bench_compile_rounds.sh BEFORE_KEEL PYTHON [ROUNDS] [OUT_DIR]}
rounds=${3:-3}
out=${4:-bench-rounds-compile}
source "$(dirname "$0")/bench_rounds_common.sh"
for r in $(seq 1 "$rounds"); do
  "$before" bench --placements keel,pre_ln --steps 10 >"$out/R_before_$r.txt" 2>&1
  "$now" bench --placements keel,pre_ln --steps 10 >"$out/R_now_$r.txt" 2>&1
  "$py" scripts/bench_torch.py --placements keel,pre_ln --steps 10 >"$out/R_eager_$r.txt" 2>&1
  "$py" scripts/bench_torch.py --placements keel,pre_ln --steps 10 --compile >"$out/R_compile_$r.txt" 2>&1
  "$before" bench --placements keel,pre_ln --steps 5 --warmup 2 "${dn_keel[@]}" >"$out/DN_before_$r.txt" 2>&1
  "$now" bench --placements keel,pre_ln --steps 5 --warmup 2 "${dn_keel[@]}" >"$out/DN_now_$r.txt" 2>&1
  "$py" scripts/bench_torch.py --placements keel,pre_ln --steps 5 --warmup 2 "${dn_torch[@]}" >"$out/DN_eager_$r.txt" 2>&1
  if [ "${DN_COMPILE:-1}" = 1 ]; then
    # Given up after 10 minutes; the file says how long it ran.
    start=$SECONDS
    timeout 600 "$py" scripts/bench_torch.py --placements keel,pre_ln --steps 5 --warmup 2 \
      "${dn_torch[@]}" --compile >"$out/DN_compile_$r.txt" 2>&1 || echo "stopped (exit $?)" >>"$out/DN_compile_$r.txt"
    echo "wall $((SECONDS - start)) s" >>"$out/DN_compile_$r.txt"
  fi
  "$now" bench --matmul >"$out/MM_now_$r.txt" 2>&1
  "$py" scripts/matmul_torch.py --threads 2 >"$out/MM_torch_$r.txt" 2>&1
  echo "round $r of $rounds done"
done
tokens_per_round "$rounds" before now eager compile
