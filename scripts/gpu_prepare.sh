#!/usr/bin/env bash
# Builds, on a machine without a GPU, everything scripts/gpu_check.sh needs on the GPU machine,
# into .gpu/ (git-ignored; about 35 MB, small enough to carry): the CUDA build of keel and of the
# GPU test binary (stripped, in bins.tar.gz), and the CUPTI tracer with its libcupti.so.13. On the
# GPU machine, from the repository root, one command runs the tests, benchmarks and profiles:
#
#   tar xzf .gpu/bins.tar.gz -C .gpu && KEEL_BIN=.gpu/keel KEEL_CUDA_TEST=.gpu/cuda_tests \
#     KEEL_CUPTI_DIR=.gpu/tracer STEPS=10 SHORT=1 LONG=3 scripts/gpu_check.sh OUT_DIR
#
# A cold build takes about 25 minutes on 2 cores (candle-kernels' nvcc), in target-cuda/.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=/dev/null
source scripts/cuda_toolchain.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
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
du -sh .gpu
echo "ready: carry .gpu/ to the GPU machine and run the command at the top of this script"
