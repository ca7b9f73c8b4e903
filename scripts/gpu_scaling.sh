#!/usr/bin/env bash
# Data-parallel training on the GPUs of one machine, over NCCL: tests/mpi.rs on CUDA (2 ranks
# against 1 process, kill -9 and resume, refusals), then keel bench under mpirun on 1, 2, 4 and 8
# GPUs (as many as nvidia-smi lists), R with a global batch of 32 and d_model 1024 x depth 64 x
# seq 1024 with a global batch of 8, bf16: tokens/s of the whole job and the all-reduce's ms.
#
#   scripts/gpu_scaling.sh [OUT_DIR]          (default runs/gpu_scaling)
#
# Needs Open MPI, libnccl (e.g. pip install nvidia-nccl-cu13, on LD_LIBRARY_PATH) and cargo, or
# prebuilt KEEL_BIN (keel built with --features nccl) and KEEL_MPI_TEST (the test executable of
# `cargo test --release --features nccl --test mpi --no-run`).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_scaling}
mkdir -p "$OUT"
gpus=$(nvidia-smi --list-gpus | wc -l)
[ "$gpus" -ge 2 ] || { echo "gpu_scaling: $gpus GPU(s) here; NCCL data parallelism needs at least 2 (one per rank)"; exit 1; }
if [ -z "${KEEL_BIN:-}" ]; then
  cargo build --release --features nccl || exit 1
  KEEL_BIN=target/release/keel
fi
MPI=(mpirun --mca plm isolated --oversubscribe --allow-run-as-root -x LD_LIBRARY_PATH -x RAYON_NUM_THREADS=2)
status=0
echo "== tests/mpi.rs on CUDA"
if [ -n "${KEEL_MPI_TEST:-}" ]; then
  KEEL_MPI_TEST_DEVICE=cuda "$KEEL_MPI_TEST" --test-threads 1 2>&1 | tee "$OUT/tests.log" || status=1
else
  KEEL_MPI_TEST_DEVICE=cuda cargo test --release --features nccl --test mpi -- --test-threads 1 2>&1 | tee "$OUT/tests.log" || status=1
fi
echo "== keel bench on 1..$gpus GPUs"
R=(--placements keel --device cuda --steps 20 --warmup 3 --set train.batch_size=32 --csv "$OUT/bench.csv")
BIG=(--placements keel --device cuda --steps 10 --warmup 2 --set train.precision=bf16 --set model.d_model=1024
  --set model.n_heads=16 --set model.depth=64 --set train.seq_len=1024 --set train.batch_size=8 --csv "$OUT/bench.csv")
for n in 1 2 4 8; do
  [ "$n" -le "$gpus" ] || break
  "${MPI[@]}" -np "$n" "$KEEL_BIN" bench "${R[@]}" || status=1
  "${MPI[@]}" -np "$n" "$KEEL_BIN" bench "${BIG[@]}" || status=1
done
echo "== results in $OUT (tests.log, bench.csv: columns ranks, tokens_per_s, reduce_ms); exit $status"
exit $status
