#!/usr/bin/env bash
# Runs keel's CUDA kernels on the CPU under the emulator (scripts/cuda_emu/README.md): preprocesses
# every module of src/ops/cuda/ (prep.py), builds each harness emu_<family>.cpp with
# g++ -O2 -std=c++20 -pthread and runs it, once with warps scheduled in ascending order (every check
# printed) and once in descending order (failures and a count printed), then prints
# "N passed, M failed" and exits 1 on any failure.
#
#   bash scripts/cuda_emu/run.sh [family ...]     families: norms pointwise cross_entropy adamw attention
#   EMU_BUILD=dir   build directory (default: target/cuda_emu)
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build="${EMU_BUILD:-$repo/target/cuda_emu}"
mkdir -p "$build"

families=("$@")
[ ${#families[@]} -eq 0 ] && families=(norms pointwise cross_entropy adamw attention)

start=$SECONDS
passed=0
failed=0
fail() {
  echo "FAIL $1"
  failed=$((failed + 1))
}

if ! command -v g++ >/dev/null; then
  fail "cuda_emu: g++ not found"
  echo "$passed passed, $failed failed"
  exit 1
fi

for m in rms_norm layer_norm swiglu gelu cross_entropy adamw attention; do
  if ! python3 "$here/prep.py" "$repo" "$m" "$build/$m.inc"; then
    fail "cuda_emu: preprocessing $m"
  fi
done

# Misaligned vector loads and stores (float4 / uint2 through a pointer that is not 16- / 8-byte
# aligned) work on a CPU but fault on the GPU: UBSan's alignment check stops the harness there.
flags=(-O2 -std=c++20 -pthread -fno-strict-aliasing -I"$build" -I"$here")
san=(-fsanitize=alignment -fno-sanitize-recover=alignment)
if echo 'int main() { return 0; }' | g++ "${san[@]}" -x c++ - -o "$build/san_probe" 2>/dev/null; then
  flags+=("${san[@]}")
else
  echo "warning: g++ cannot link -fsanitize=alignment; misaligned vector accesses go unchecked"
fi

# One harness: $1 family, $2 schedule, $3 1 to print every check (else failures only).
run_one() {
  local fam=$1 sched=$2 all=$3 out rc summary p f
  out=$(EMU_SCHED=$sched "$build/emu_$fam" 2>&1)
  rc=$?
  summary=$(grep '^emu-summary ' <<<"$out" | tail -1)
  if [ "$all" = 1 ]; then
    grep -v '^emu-summary ' <<<"$out"
  else
    grep -v -e '^ok ' -e '^emu-summary ' <<<"$out"
  fi
  if [ -n "$summary" ]; then
    read -r _ p f <<<"$summary"
    passed=$((passed + p))
    failed=$((failed + f))
    [ "$all" = 1 ] || echo "-- $fam (EMU_SCHED=$sched): $p passed, $f failed"
    if [ "$rc" != 0 ] && [ "$f" = 0 ]; then fail "$fam (EMU_SCHED=$sched): exit status $rc"; fi
  else
    fail "$fam (EMU_SCHED=$sched): stopped before its summary (exit status $rc)"
  fi
}

for fam in "${families[@]}"; do
  src="$here/emu_$fam.cpp"
  if [ ! -f "$src" ]; then
    fail "cuda_emu: no harness $src"
    continue
  fi
  echo "== $fam"
  if ! g++ "${flags[@]}" -o "$build/emu_$fam" "$src"; then
    fail "$fam: build"
    continue
  fi
  run_one "$fam" fwd 1
  run_one "$fam" rev 0
done

echo "cuda_emu: $((SECONDS - start)) s"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
