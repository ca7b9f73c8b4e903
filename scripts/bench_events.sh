#!/usr/bin/env bash
# The cost of TensorBoard event files: `keel train` with run.tensorboard on and off, interleaved
# (the order alternates each round), at R (d_model 128, 4 heads, depth 32, seq 128, batch 8) and
# deep-narrow (d_model 64, 4 heads, depth 512, seq 64, batch 4), on the built-in synthetic data,
# gradient norms logged every 5 steps (a 512-row block and its histogram at deep-narrow). Prints
# ms per step of wall time (summary.json's wall_time_s / steps: the step, the CSV rows, the events,
# the evaluation at the end and the final checkpoint). Not part of CI; run it on an idle machine.
#
#   scripts/bench_events.sh [ROUNDS] [OUT_DIR]
set -euo pipefail
rounds=${1:-5}
out=${2:-bench-events}
cd "$(dirname "$0")/.."
cargo build --release --quiet
keel=./target/release/keel
mkdir -p "$out"
grep -m1 'model name' /proc/cpuinfo | tee "$out/cpu.txt"
common=(--set train.eval_every=0 --set train.grad_norm_every=5 --set train.checkpoint_every=0 --set data.synthetic_bytes=400000)
R=(--set model.d_model=128 --set model.n_heads=4 --set model.depth=32 --set train.seq_len=128 --set train.batch_size=8 --set train.steps=40)
DN=(--set model.d_model=64 --set model.n_heads=4 --set model.depth=512 --set train.seq_len=64 --set train.batch_size=4 --set train.steps=15)
ms_per_step() {
  python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"{1000*s['wall_time_s']/s['steps_completed']:.1f}\")" "$1/summary.json"
}
printf 'config round events_on_ms events_off_ms\n' | tee "$out/table.txt"
for r in $(seq 1 "$rounds"); do
  order="true false"; [ $((r % 2)) = 0 ] && order="false true"
  for cfg in R DN; do
    declare -A ms=()
    for tb in $order; do
      dir="$out/$cfg-$tb-$r"; rm -rf "$dir"
      if [ "$cfg" = R ]; then args=("${R[@]}"); else args=("${DN[@]}"); fi
      "$keel" train --quiet --out "$dir" "${common[@]}" "${args[@]}" --set run.tensorboard=$tb
      ms[$tb]=$(ms_per_step "$dir")
    done
    printf '%s %s %s %s\n' "$cfg" "$r" "${ms[true]}" "${ms[false]}" | tee -a "$out/table.txt"
  done
done
