#!/usr/bin/env bash
# Where a training step's time goes on the GPU, for keel and for PyTorch eager on the same configs:
# kernels by name (count, time, share), launches per step, copies and memsets by direction (count,
# bytes, time), driver calls by count with their host time, synchronizing calls, and the share of
# the step's wall time that the GPU was busy (the rest is the host issuing work or waiting).
#
#   scripts/gpu_profile.sh [OUT_DIR]        (default runs/gpu_profile; needs an NVIDIA GPU)
#   scripts/gpu_profile.sh --self-test      (no GPU: builds the tracer, checks its rows and the
#                                           per-step arithmetic; CI runs this)
#
# How: scripts/cuda_profile/keel_cupti.c is a CUPTI activity tracer that the CUDA driver loads
# into any process through CUDA_INJECTION64_PATH (no nsys needed). Each config runs twice, with
# SHORT and LONG timed steps; scripts/cuda_profile/summarize.py divides the difference of the two
# traces by LONG - SHORT, so start-up, warm-up and the matmul-peak measurement cancel out.
#
# Needs: gcc and CUDA headers with CUPTI (CUDA_ROOT; default: `source scripts/cuda_toolchain.sh`,
# which includes nvidia-cuda-cupti 13.0), unless KEEL_CUPTI_DIR holds a prebuilt libkeel_cupti.so
# with libcupti.so.13 beside it. KEEL_BIN: keel built with --features cuda (default: built here).
# PYTHON: an interpreter with CUDA torch for the PyTorch side (skipped when it has none).
# Everything lands in OUT_DIR: per config, the traces, bench logs, summary .txt and .json.
# ONLY_CONFIG=NAME profiles one of the configs below; KEEL_EXTRA adds keel flags (for example
# "--set train.kernels=composite"); PROFILE_TORCH=0 leaves PyTorch out.
set -uo pipefail
cd "$(dirname "$0")/.."
SHORT=${SHORT:-2}
LONG=${LONG:-6}
PYTHON=${PYTHON:-python3}

build_tracer() { # DIR: libkeel_cupti.so with libcupti.so.13 beside it (rpath $ORIGIN)
  local dir=$1
  if [ -z "${CUDA_ROOT:-}" ] || [ ! -e "$CUDA_ROOT/include/cupti.h" ]; then
    # shellcheck source=/dev/null
    source scripts/cuda_toolchain.sh >/dev/null || return 1
  fi
  mkdir -p "$dir"
  cp -L "$CUDA_ROOT/lib64/libcupti.so.13" "$dir/" || return 1
  gcc -O2 -Wall -Wextra -Werror -shared -fPIC -o "$dir/libkeel_cupti.so" scripts/cuda_profile/keel_cupti.c \
    -I"$CUDA_ROOT/include" -L"$dir" -l:libcupti.so.13 -Wl,-rpath,'$ORIGIN' || return 1
  gcc -O2 -Wall -Wextra -Werror -o "$dir/selftest" scripts/cuda_profile/selftest.c \
    -I"$CUDA_ROOT/include" -L"$dir" -l:libcupti.so.13 -Wl,-rpath,'$ORIGIN' || return 1
}

if [ "${1:-}" = "--self-test" ]; then
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
  build_tracer "$dir" || { echo "gpu_profile: building the tracer failed"; exit 1; }
  nm -D "$dir/libkeel_cupti.so" | grep -q ' T InitializeInjection$' || { echo "gpu_profile: no InitializeInjection"; exit 1; }
  "$dir/selftest" "$dir/rows.csv" || { echo "gpu_profile: selftest failed"; exit 1; }
  python3 scripts/cuda_profile/summarize.py --self-test "$dir/rows.csv"
  exit $?
fi

OUT=${1:-runs/gpu_profile}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no NVIDIA GPU visible"; exit 1; }
# CUDA's runtime libraries from pip wheels (PyTorch's nvidia-* packages), for keel's dynamic links.
if libs=$("$PYTHON" -c 'import nvidia, os; print(":".join(sorted({os.path.join(r) for p in nvidia.__path__ for r, d, f in os.walk(p) if any(x.endswith(".so") or ".so." in x for x in f)})))' 2>/dev/null); then
  export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
TRACER_DIR=${KEEL_CUPTI_DIR:-$OUT/tracer}
if [ ! -e "$TRACER_DIR/libkeel_cupti.so" ]; then
  build_tracer "$TRACER_DIR" || { echo "gpu_profile: cannot build the tracer (set KEEL_CUPTI_DIR)"; exit 1; }
fi
TRACER=$(cd "$TRACER_DIR" && pwd)/libkeel_cupti.so
if [ -z "${KEEL_BIN:-}" ]; then
  cargo build --release --features cuda || exit 1
  KEEL_BIN=target/release/keel
fi
HAVE_TORCH=0
[ "${PROFILE_TORCH:-1}" = 0 ] || "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null && HAVE_TORCH=1

# name | keel bench flags | bench_torch.py flags
CONFIGS=(
  "R-keel-f32|--placements keel|--placements keel"
  "R-keel-bf16|--placements keel --set train.precision=bf16|--placements keel --bf16"
  "d1024-keel-bf16|--placements keel --set train.precision=bf16 --set model.d_model=1024 --set model.n_heads=16 --set model.depth=64 --set train.seq_len=1024 --set train.batch_size=4|--placements keel --bf16 --d-model 1024 --n-heads 16 --depth 64 --seq-len 1024 --batch-size 4"
  "deep-narrow-keel-f32|--placements keel --set model.depth=512 --set train.seq_len=128 --set train.batch_size=8|--placements keel --depth 512 --seq-len 128 --batch-size 8"
)

# trace NAME TOOL STEPS CMD...: runs CMD under the tracer; its bench log and trace land in OUT.
trace() {
  local name=$1 tool=$2 steps=$3
  shift 3
  CUDA_INJECTION64_PATH=$TRACER KEEL_CUPTI_OUT="$OUT/$name.$tool.$steps.csv" "$@" >"$OUT/$name.$tool.$steps.log" 2>&1
}

status=0
for c in "${CONFIGS[@]}"; do
  IFS='|' read -r name kflags tflags <<<"$c"
  [ -z "${ONLY_CONFIG:-}" ] || [ "$name" = "$ONLY_CONFIG" ] || continue
  kflags="$kflags ${KEEL_EXTRA:-}"
  # shellcheck disable=SC2086
  for steps in "$SHORT" "$LONG"; do
    trace "$name" keel "$steps" "$KEEL_BIN" bench --device cuda --warmup 2 --steps "$steps" $kflags || status=1
    if [ "$HAVE_TORCH" = 1 ]; then
      trace "$name" torch "$steps" "$PYTHON" scripts/bench_torch.py --device cuda --warmup 2 --steps "$steps" $tflags || status=1
    fi
  done
  for tool in keel torch; do
    [ -e "$OUT/$name.$tool.$LONG.csv" ] || continue
    # ms/step of the long run: the 4th column of the placement's row in either tool's table.
    wall=$(awk '$1=="keel" && $2 ~ /^[0-9,]+$/ && $4 ~ /^[0-9.]+$/ {print $4}' "$OUT/$name.$tool.$LONG.log" | tail -1)
    echo "== $name, $tool (wall ${wall:-?} ms/step)"
    python3 scripts/cuda_profile/summarize.py "$OUT/$name.$tool.$SHORT.csv" "$SHORT" "$OUT/$name.$tool.$LONG.csv" "$LONG" \
      ${wall:+--wall-ms "$wall"} --json "$OUT/$name.$tool.json" | tee "$OUT/$name.$tool.txt" || status=1
  done
done
echo "== profiles in $OUT; exit $status"
exit $status
