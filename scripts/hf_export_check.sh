#!/usr/bin/env bash
# `keel export --hf` against transformers, for every placement (outside CI; needs PyTorch).
#
#   scripts/hf_export_check.sh              (from anywhere; works in the repository root)
#
# For each case below it trains a tiny run on the built-in synthetic data (d_model 32, depth 8,
# 4 heads, 2 KV heads, context 64, f32, $STEPS steps: seconds each), exports it with
# `keel export --hf`, and runs scripts/hf_export_check.py: transformers loads the folder
# (AutoConfig, AutoModel, AutoModelForCausalLM, trust_remote_code=True), its logits on a fixed
# batch and on a left-padded batch equal keel's within 1e-4, and greedy generate() (with and
# without the cache, and on a left-padded batch of 2) returns keel's greedy tokens. keel's side
# is keel's own forward pass (tests/export.rs's `dump_keel_logits`), and `keel generate` when this
# keel has it. Prints one table row per case and attention implementation (eager, sdpa).
#
# Cases: the six placements (keel, pre_ln, post_ln, deepnorm, mix_ln, hybrid_norm; pre_ln exports
# as a plain Llama), plus keel_ln_tied (LayerNorm, tied embeddings) and pre_ln_gelu_ln (LayerNorm,
# GELU FFN, no final norm: a Pre-LN run that is not a Llama).
#
# Environment: CASES (default all, comma-separated), OUT (runs/hf_export_check), STEPS (200),
# VENV (default /work/torchenv when it exists, else data/hf-check-venv, created with
# `pip install torch transformers safetensors accelerate`), PYTHONPATH (e.g. a folder holding
# another transformers version), CARGO_FEATURES. Reruns reuse the trained runs and exports.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
OUT=${OUT:-runs/hf_export_check}
STEPS=${STEPS:-200}
CASES=${CASES:-keel,pre_ln,post_ln,deepnorm,mix_ln,hybrid_norm,keel_ln_tied,pre_ln_gelu_ln}
if [ -z "${VENV:-}" ]; then
  if [ -x /work/torchenv/bin/python ]; then VENV=/work/torchenv; else VENV=$root/data/hf-check-venv; fi
fi
say() { echo "== $*"; }

if [ ! -x "$VENV/bin/python" ]; then say "creating $VENV"; python3 -m venv "$VENV"; fi
py=$VENV/bin/python
if ! "$py" -c 'import torch, transformers, safetensors' 2>/dev/null; then
  say "pip install torch transformers safetensors accelerate into $VENV"
  "$py" -m pip install -q torch transformers safetensors accelerate
fi

say "cargo build --release ${CARGO_FEATURES:-}"
# shellcheck disable=SC2086
cargo build --release -q ${CARGO_FEATURES:-}
# The test binary that holds keel's logits dump (tests/export.rs, `dump_keel_logits`).
# shellcheck disable=SC2086
dump_bin=$(cargo test --release -q ${CARGO_FEATURES:-} --test export --no-run --message-format=json 2>/dev/null \
  | "$py" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "export":
        print(m["executable"])')
[ -x "$dump_bin" ] || { echo "could not build tests/export.rs" >&2; exit 1; }
keel=$root/target/release/keel

sets_for() {
  case $1 in
    keel | pre_ln | post_ln | deepnorm | mix_ln | hybrid_norm) echo "model.placement=$1" ;;
    keel_ln_tied) echo "model.placement=keel model.norm=layer_norm model.tie_embeddings=true" ;;
    pre_ln_gelu_ln) echo "model.placement=pre_ln model.norm=layer_norm model.ffn=gelu model.final_norm=false" ;;
    *) echo "unknown case $1" >&2; exit 2 ;;
  esac
}

mkdir -p "$OUT"
pairs=()
IFS=, read -r -a cases <<< "$CASES"
for c in "${cases[@]}"; do
  run=$OUT/$c
  hf=$OUT/$c-hf
  if [ ! -f "$run/model.safetensors" ]; then
    rm -rf "$run"
    say "training $run"
    args=()
    for s in $(sets_for "$c"); do args+=(--set "$s"); done
    "$keel" train --quiet --out "$run" "${args[@]}" \
      --set model.depth=8 --set model.d_model=32 --set model.n_heads=4 --set model.n_kv_heads=2 \
      --set train.seq_len=64 --set train.batch_size=8 --set train.steps="$STEPS" --set train.lr=3e-3 \
      --set train.warmup_steps=5 --set train.log_every=10 --set train.eval_every=0 \
      --set train.grad_norm_every=0 --set train.checkpoint_every=0 --set train.precision=f32 \
      --set data.source=synthetic --set data.synthetic_bytes=200000
  fi
  if [ ! -f "$hf/config.json" ]; then
    rm -rf "$hf"
    "$keel" export --run "$run" --hf "$hf"
  fi
  pairs+=(--run "$run" --hf "$hf")
done

say "transformers against keel"
"$py" scripts/hf_export_check.py --keel "$keel" --dump-cmd "$dump_bin dump_keel_logits --ignored --exact -q" \
  "${pairs[@]}" --json "$OUT/report-$("$py" -c 'import transformers; print(transformers.__version__)').json"
