#!/usr/bin/env bash
# Builds, on a machine without a GPU, everything scripts/gpu_first_contact.sh needs on the GPU
# machine, into .gpu/ (git-ignored; about 40 MB, small enough for the device tool's 64 MiB carry):
# the CUDA build of keel and of the GPU test binary (stripped, in bins.tar.gz), and the CUPTI tracer
# with its libcupti.so.13. The kernels themselves travel as source (src/ops/cuda/, compiled by
# NVRTC on first use), so a kernel fix there needs no rebuild. On the GPU machine, from the
# repository root, one command checks, tests, benchmarks and profiles (under 8 minutes):
#
#   scripts/gpu_first_contact.sh runs/gpu_first_contact
#
# (with the device tool: carry [".gpu"], and copy runs/gpu_first_contact to $OUT at the end).
# Before building, it checks that every kernel compiles (scripts/cuda_kernels_check.py), and after,
# that keel's own NVRTC path compiles every module for sm_80 and sm_90 without a GPU (the
# `nvrtc_compiles_every_module_without_a_gpu` test of tests/cuda.rs, run against the stub driver).
# A cold build takes about 25 minutes on 2 cores (candle-kernels' nvcc), in target-cuda/.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=/dev/null
source scripts/cuda_toolchain.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
python3 scripts/cuda_kernels_check.py
cargo build --release --features cuda
tests=$(cargo test --release --features cuda --test cuda --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "cuda" and m.get("executable"):
        print(m["executable"])')
rm -rf .gpu && mkdir -p .gpu/tracer
cp "$CARGO_TARGET_DIR/release/keel" .gpu/keel
cp "$tests" .gpu/cuda_tests
strip .gpu/keel .gpu/cuda_tests
tar czf .gpu/bins.tar.gz -C .gpu keel cuda_tests
rm .gpu/keel .gpu/cuda_tests
cp -L "$CUDA_ROOT/lib64/libcupti.so.13" .gpu/tracer/
gcc -O2 -Wall -Wextra -Werror -shared -fPIC -o .gpu/tracer/libkeel_cupti.so scripts/cuda_profile/keel_cupti.c \
  -I"$CUDA_ROOT/include" -L.gpu/tracer -l:libcupti.so.13 -Wl,-rpath,'$ORIGIN'
# keel's run-time NVRTC path, without a GPU: the test binary starts against the stub libcuda.
LD_LIBRARY_PATH="$KEEL_CUDA_CPU_LD_LIBRARY_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  "$tests" nvrtc_compiles_every_module_without_a_gpu --exact --nocapture
du -sh .gpu
echo "ready: carry .gpu/ to the GPU machine and run scripts/gpu_first_contact.sh there"
