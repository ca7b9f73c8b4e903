#!/usr/bin/env bash
# keel on an NVIDIA GPU, in one go: build with CUDA, run the GPU tests (tests/cuda.rs: training
# steps on CUDA against the CPU, f32 and bf16; composite ops against the fused CPU ops), and time
# keel against PyTorch eager on the same GPU for the reference config R (d_model 128, 4 heads,
# depth 32, seq 128, batch 8) and for d_model 1024, 16 heads, depth 64, seq 1024, batch 4, in f32
# and bf16 mixed precision; then profiles both (scripts/gpu_profile.sh: kernels, launches, copies,
# synchronizations per step).
#
#   scripts/gpu_check.sh [OUT_DIR]        (default runs/gpu_check)
#
# Needs cargo and a CUDA toolkit (nvcc; `source scripts/cuda_toolchain.sh` installs one from PyPI)
# to build, unless prebuilt executables are given: KEEL_BIN (keel built with --features cuda) and
# KEEL_CUDA_TEST (the test executable printed by
# `cargo test --release --features cuda --test cuda --no-run`). The PyTorch side needs python3 with
# a CUDA build of torch (PYTHON to choose the interpreter). Everything lands in OUT_DIR:
# bench.csv (keel), torch.csv (PyTorch), tests.log, and the console log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-20}

# CUDA's runtime libraries from pip wheels (PyTorch's own nvidia-* packages), for keel's dynamic links.
if libs=$("$PYTHON" -c 'import nvidia, os; print(":".join(sorted({os.path.join(r) for p in nvidia.__path__ for r, d, f in os.walk(p) if any(x.endswith(".so") or ".so." in x for x in f)})))' 2>/dev/null); then
  export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no NVIDIA GPU visible"; exit 1; }

if [ -z "${KEEL_BIN:-}" ]; then
  cargo build --release --features cuda || exit 1
  KEEL_BIN=target/release/keel
fi
if [ -z "${KEEL_CUDA_TEST:-}" ]; then
  KEEL_CUDA_TEST=$(cargo test --release --features cuda --test cuda --no-run --message-format=json 2>/dev/null \
    | "$PYTHON" -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "cuda" and m.get("executable"):
        print(m["executable"])')
fi

status=0
echo "== GPU tests"
"$KEEL_CUDA_TEST" --test-threads 1 2>&1 | tee "$OUT/tests.log" || status=1

echo "== keel bench on the GPU"
R=(--placements keel,pre_ln --steps "$STEPS" --warmup 3 --device cuda --csv "$OUT/bench.csv")
BIG=(--set model.d_model=1024 --set model.n_heads=16 --set model.depth=64 --set train.seq_len=1024 --set train.batch_size=4)
"$KEEL_BIN" bench "${R[@]}" || status=1
"$KEEL_BIN" bench "${R[@]}" --set train.precision=bf16 || status=1
"$KEEL_BIN" bench "${R[@]}" "${BIG[@]}" || status=1
"$KEEL_BIN" bench "${R[@]}" "${BIG[@]}" --set train.precision=bf16 || status=1

echo "== PyTorch eager on the same GPU"
T=(--placements keel,pre_ln --steps "$STEPS" --warmup 3 --device cuda --csv "$OUT/torch.csv")
TBIG=(--d-model 1024 --n-heads 16 --depth 64 --seq-len 1024 --batch-size 4)
"$PYTHON" scripts/bench_torch.py "${T[@]}" || status=1
"$PYTHON" scripts/bench_torch.py "${T[@]}" --bf16 || status=1
"$PYTHON" scripts/bench_torch.py "${T[@]}" "${TBIG[@]}" || status=1
"$PYTHON" scripts/bench_torch.py "${T[@]}" "${TBIG[@]}" --bf16 || status=1

echo "== profile: where a step's time goes, keel and PyTorch (scripts/gpu_profile.sh)"
KEEL_BIN="$KEEL_BIN" PYTHON="$PYTHON" scripts/gpu_profile.sh "$OUT/profile" || status=1

echo "== results in $OUT (bench.csv, torch.csv, tests.log, profile/); exit $status"
exit $status
