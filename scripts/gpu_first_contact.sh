#!/usr/bin/env bash
# First contact with a GPU, in one command under 8 minutes of device time: everything a session
# with a borrowed GPU needs to find a wrong kernel, and the numbers that decide what to tune.
#
#   scripts/gpu_first_contact.sh [OUT_DIR]        (default runs/gpu_first_contact)
#
# Prepared on a machine without a GPU by scripts/gpu_prepare.sh (binaries in .gpu/, about 40 MB,
# small enough for the device tool's 64 MiB carry). On the GPU machine it runs, each step with a
# time limit so that a hang cannot eat the session:
#   (a) every kernel of src/ops/cuda/ against PyTorch through CuPy (scripts/cuda_check/run_all.py:
#       the same sources and NVRTC options keel uses, no keel build needed)   -> kernel_checks.csv
#   (b) tests/cuda.rs: each fused op on CUDA against its CPU twin, forward and backward, and
#       training steps per placement against the CPU run                        -> tests.log
#   (c) keel bench with train.kernels=fused and =composite, and PyTorch eager, in bf16 mixed
#       precision and f32, at G (d_model 1024, 16 heads, depth 64, seq 1024, batch 4), R (keel
#       bench's default) and deep-narrow (d_model 128, depth 512, seq 128, batch 8), each with its
#       peak GPU memory (nvidia-smi, sampled every 50 ms, above the idle level)
#                                                      -> bench.csv, torch.csv, memory.csv, summary.md
#   (d) CUPTI profiles of G in bf16, fused and composite (scripts/gpu_profile.sh)  -> profile-*/
# A kernel can be fixed without a Rust rebuild: copy src/ops/cuda, edit, and rerun with
# KEEL_CUDA_KERNELS=DIR (keel and the CuPy checks both read it); ONLY=a,b,c,d runs some steps.
# Environment: PYTHON (with CUDA torch and CuPy), KEEL_BIN, KEEL_CUDA_TEST, KEEL_CUPTI_DIR (default
# the prepared .gpu/ files), STEPS (timed steps per bench run, default 5), COMPILE=1 adds
# torch.compile at G bf16, BUDGET (seconds, default 450): a benchmark or profile that would start
# after BUDGET seconds is skipped with a note, so the whole command stays under 8 minutes and what
# was measured comes back.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_first_contact}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/console.log") 2>&1
PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-5}
ONLY=${ONLY:-a,b,c,d}
KEEL_BIN=${KEEL_BIN:-.gpu/keel}
KEEL_CUDA_TEST=${KEEL_CUDA_TEST:-.gpu/cuda_tests}
KEEL_CUPTI_DIR=${KEEL_CUPTI_DIR:-.gpu/tracer}
if [ -e .gpu/bins.tar.gz ] && { [ ! -x "$KEEL_BIN" ] || [ .gpu/bins.tar.gz -nt "$KEEL_BIN" ]; }; then
  tar xzf .gpu/bins.tar.gz -C .gpu
fi
# Compiled kernels go to a cache inside OUT: the first compile is part of what this measures.
export KEEL_CUDA_CACHE=${KEEL_CUDA_CACHE:-$OUT/kernel-cache}
# CUDA's runtime libraries from pip wheels (PyTorch's nvidia-* packages), for keel's dynamic links.
if libs=$("$PYTHON" -c 'import nvidia, os; print(":".join(sorted({r for p in nvidia.__path__ for r, d, f in os.walk(p) if any(x.endswith(".so") or ".so." in x for x in f)})))' 2>/dev/null); then
  export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader || { echo "no NVIDIA GPU visible"; exit 1; }
grep -m1 'model name' /proc/cpuinfo
status=0
t0=$SECONDS
BUDGET=${BUDGET:-450}
step() { echo "== [$((SECONDS - t0)) s] $*"; }
# in_budget WHAT: true while the time budget lasts; says what it skips once it is spent.
in_budget() {
  if [ $((SECONDS - t0)) -lt "$BUDGET" ]; then return 0; fi
  echo "skipped (time budget of $BUDGET s spent): $*"
  return 1
}
want() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
if [ -x "$KEEL_BIN" ]; then
  missing=$(ldd "$KEEL_BIN" | grep 'not found' || true)
  [ -z "$missing" ] || { echo "keel's libraries not found:"; echo "$missing"; status=1; }
fi

if want a; then
  step "(a) CUDA kernels against PyTorch (CuPy; no keel build)"
  timeout 150 "$PYTHON" scripts/cuda_check/run_all.py "$OUT" || status=1
fi

if want b; then
  step "(b) tests/cuda.rs: fused CUDA ops against the CPU twins, training steps against the CPU"
  timeout 200 "$KEEL_CUDA_TEST" --test-threads 1 2>&1 | tee "$OUT/tests.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi

# peak NAME CMD...: runs CMD while sampling the GPU's used memory; appends NAME,peak_mib to memory.csv.
peak() {
  local name=$1
  shift
  local idle log=$OUT/.mem.$$
  idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 50 >"$log" 2>/dev/null &
  local sampler=$!
  "$@"
  local rc=$?
  kill "$sampler" 2>/dev/null
  wait "$sampler" 2>/dev/null
  local max
  max=$(sort -n "$log" | tail -1)
  [ -e "$OUT/memory.csv" ] || echo "run,peak_mib_above_idle" >"$OUT/memory.csv"
  echo "$name,$(( ${max:-0} - ${idle:-0} ))" >>"$OUT/memory.csv"
  rm -f "$log"
  return $rc
}

G_K=(--set model.d_model=1024 --set model.n_heads=16 --set model.depth=64 --set train.seq_len=1024 --set train.batch_size=4)
G_T=(--d-model 1024 --n-heads 16 --depth 64 --seq-len 1024 --batch-size 4)
DN_K=(--set model.d_model=128 --set model.depth=512 --set train.seq_len=128 --set train.batch_size=8)
DN_T=(--d-model 128 --depth 512 --seq-len 128 --batch-size 8)

# benchmarks PREC: keel fused, PyTorch eager, keel composite at G, R and deep-narrow (most telling
# first, so a spent budget drops the least).
benchmarks() {
  local prec=$1 cfg run
  local tb=()
  [ "$prec" = bf16 ] && tb=(--bf16)
  step "(c) keel (fused, composite) and PyTorch eager in $prec at G, R and deep-narrow"
  for cfg in G R DN; do
    case $cfg in
      G) kf=("${G_K[@]}"); tf=("${G_T[@]}") ;;
      R) kf=(); tf=() ;;
      DN) kf=("${DN_K[@]}"); tf=("${DN_T[@]}") ;;
    esac
    for run in keel-fused torch-eager keel-composite; do
      in_budget "$cfg $prec $run" || continue
      case $run in
        keel-*)
          peak "$cfg-$prec-$run" timeout 120 "$KEEL_BIN" bench --device cuda --placements keel --warmup 2 \
            --steps "$STEPS" --csv "$OUT/bench.csv" --set train.precision="$prec" --set "train.kernels=${run#keel-}" \
            "${kf[@]}" || status=1 ;;
        torch-eager)
          peak "$cfg-$prec-$run" timeout 120 "$PYTHON" scripts/bench_torch.py --device cuda --placements keel \
            --warmup 2 --steps "$STEPS" --csv "$OUT/torch.csv" "${tb[@]}" "${tf[@]}" || status=1 ;;
      esac
    done
    if [ "${COMPILE:-0}" = 1 ] && [ $cfg = G ] && [ "$prec" = bf16 ] && in_budget "$cfg $prec torch compile"; then
      peak "$cfg-$prec-torch-compile" timeout 240 "$PYTHON" scripts/bench_torch.py --device cuda --placements keel \
        --compile --warmup 2 --steps "$STEPS" --csv "$OUT/torch.csv" "${tb[@]}" "${tf[@]}" || status=1
    fi
  done
}

# The order: bf16 benchmarks, the profiles (before and after), then f32.
want c && benchmarks bf16

if want d; then
  step "(d) profiles of G in bf16: fused, then composite (scripts/gpu_profile.sh)"
  for kernels in fused composite; do
    in_budget "profile $kernels" || continue
    torch=0; [ $kernels = fused ] && torch=1
    ONLY_CONFIG=d1024-keel-bf16 KEEL_EXTRA="--set train.kernels=$kernels" PROFILE_TORCH=$torch KEEL_BIN="$KEEL_BIN" \
      KEEL_CUPTI_DIR="$KEEL_CUPTI_DIR" PYTHON="$PYTHON" SHORT=2 LONG=4 \
      timeout 150 scripts/gpu_profile.sh "$OUT/profile-$kernels" || status=1
  done
fi

if want c; then
  benchmarks f32
  python3 scripts/gpu_summary.py "$OUT" | tee "$OUT/summary.md" || status=1
fi

step "done: results in $OUT; exit $status"
exit $status
