#!/usr/bin/env bash
# Where keel's training step spends its time on this CPU: builds keel with frame pointers and line
# tables (a separate target folder, so the normal build is untouched; about 5 minutes on 2 cores),
# samples `keel bench` after its start-up with `perf record -g`, and groups the samples by op with
# scripts/perf_categories.py. Not part of CI. Needs `perf` (Debian: apt-get install linux-perf).
#
#   scripts/profile_step.sh [OUT_DIR] [-- extra keel bench arguments]
#   e.g. scripts/profile_step.sh prof-R -- --placements keel
#        scripts/profile_step.sh prof-DN -- --placements keel --set model.d_model=64 --set model.n_heads=4 \
#            --set model.depth=512 --set train.seq_len=64 --set train.batch_size=4
set -euo pipefail
out=${1:-profile}
shift || true
[ "${1:-}" = "--" ] && shift
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "profile_step.sh: perf not found (Debian: apt-get install linux-perf)" >&2; exit 2; }
target=${KEEL_PROFILE_TARGET:-target-profile}
CARGO_TARGET_DIR=$target CARGO_PROFILE_RELEASE_DEBUG=line-tables-only RUSTFLAGS="-C force-frame-pointers=yes" \
  cargo build --release --quiet --bin keel
mkdir -p "$out"
grep -m1 'model name' /proc/cpuinfo | tee "$out/cpu.txt"
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--placements keel)
# -D: skip start-up (model init, the matmul peak measurement) so that only steps are sampled.
perf record -F 1999 -g -D 2500 -o "$out/perf.data" "$target/release/keel" bench --steps 25 "${args[@]}" \
  2>&1 | tee "$out/bench.txt"
perf script -i "$out/perf.data" 2>/dev/null | python3 scripts/perf_categories.py | tee "$out/categories.txt"
