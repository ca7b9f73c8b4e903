# Sourced by scripts/bench_simd_rounds.sh and scripts/bench_compile_rounds.sh: builds keel, records
# the CPU, names the two configs' flags, and prints tokens/s per round at the end. Expects `out`
# (the output folder) to be set; sets `now` (keel now), `dn_keel` and `dn_torch` (deep-narrow).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --quiet
now=./target/release/keel
mkdir -p "$out"
grep -m1 'model name' /proc/cpuinfo | tee "$out/cpu.txt"
dn_keel=(--set model.d_model=64 --set model.n_heads=4 --set model.depth=512 --set train.seq_len=64 --set train.batch_size=4)
dn_torch=(--d-model 64 --n-heads 4 --depth 512 --seq-len 64 --batch-size 4)

# tokens_per_round ROUNDS VARIANT...: the placement rows of OUT_DIR/{R,DN}_VARIANT_ROUND.txt.
tokens_per_round() {
  local rounds=$1 cfg v r
  shift
  for cfg in R DN; do
    for v in "$@"; do
      ls "$out/${cfg}_${v}_1.txt" >/dev/null 2>&1 || continue
      printf '%s %s:' "$cfg" "$v"
      for r in $(seq 1 "$rounds"); do
        awk '($1=="keel"||$1=="pre_ln") && $2 ~ /^[0-9,]+$/ {printf " %s=%s", $1, $3}' "$out/${cfg}_${v}_$r.txt"
        printf ' |'
      done
      echo
    done
  done
}
