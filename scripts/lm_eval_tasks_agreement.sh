#!/usr/bin/env bash
# Agreement check: `keel eval --bench TASK` against lm-evaluation-harness 0.4.13 on the same exported
# model and the same items, for the generative and multiple-choice tasks beside MMLU (MMLU has
# scripts/lm_eval_agreement.sh), offline, on fixtures in the Hugging Face hub's layouts.
#
#   scripts/lm_eval_tasks_agreement.sh                              (Pre-LN, exported as Llama)
#   PLACEMENT=keel scripts/lm_eval_tasks_agreement.sh               (remote-code export)
#   TASKS=gsm8k,arc_easy LIMIT=40 MAX_GEN_TOKS=64 scripts/lm_eval_tasks_agreement.sh
#
# What it does (each step is skipped when its output already exists, so a rerun resumes):
#   1. the Python environment, corpus, keel build, trained model and its export for transformers,
#      exactly as scripts/lm_eval_agreement.sh makes them (scripts/lm_eval_common.sh; the two scripts
#      share runs/agree for Pre-LN)
#   2. fixtures: scripts/lm_eval_task/make_fixtures.py writes $N items per task (seeded, from the
#      King James Bible, templated arithmetic and a few Chinese words) in the hub's layouts into
#      $FIXTURES, and lm-eval task YAMLs that `include:` the installed harness's own task YAMLs with
#      only the task name and the data files changed (keel_gsm8k, keel_hellaswag, ..., groups
#      keel_cmmlu, keel_bbh_zeroshot, keel_bbh_fewshot, keel_bbh_cot_fewshot) into
#      $FIXTURES/lm_eval_tasks; for BBH, the
#      prompt parts keel reads (prompts/{subtask}.json) come from scripts/get_bbh.sh
#   3. per task: `keel eval --bench TASK --data FIXTURE --batch-size $BATCH --out $RUN/eval/agree-tasks*/TASK`
#      (generative tasks with --max-gen-toks $MAX_GEN_TOKS) and `lm_eval run --model hf --model_args
#      pretrained=$RUN-hf,dtype=float32,trust_remote_code=True,logits_cache=False --device cpu
#      --batch_size $BATCH --tasks keel_TASK --log_samples` (generative tasks with --gen_kwargs
#      max_gen_toks=$MAX_GEN_TOKS) into $RUN-lm-eval-tasks*/out/TASK, both timed: wall seconds
#      per task go to $RUN-lm-eval-tasks*/timing.tsv; for gsm8k, questions/s of both (wall, and
#      generation alone: keel's results.json, lm-eval's progress bar) to gsm8k_speed.txt
#   4. scripts/compare_tasks.py prints the agreement table (items, prompts identical, max |delta
#      log-likelihood|, generation / extracted-answer / score mismatches, aggregates on both sides)
#      and writes $RUN-lm-eval-tasks*/agreement.json; with FAIL_ABOVE=TOL it exits 1 on any
#      disagreement or a |delta log-likelihood| above TOL.
#
# Environment: PLACEMENT (pre_ln; keel, post_ln, deepnorm, mix_ln, hybrid_norm go through the
# remote-code export), RUN, STEPS, SEQ_LEN, INIT_STD (e.g. INIT_STD=0.2 STEPS=1: a random model, whose
# greedy generations differ from item to item), BATCH (16, both evaluators), VENV, KEEL, CARGO_FEATURES
# (see scripts/lm_eval_common.sh); TASKS (comma-separated, default all of: gsm8k gsm8k_cot hellaswag
# arc_easy arc_challenge piqa winogrande mmlu_pro cmmlu bbh_zeroshot bbh_fewshot bbh_cot_fewshot;
# with the default, tasks this keel build does not have are skipped with a note), LIMIT (score only
# the first LIMIT items of each task or subtask on both sides; results go to *-limitLIMIT folders),
# MAX_GEN_TOKS (256, lm-eval's default budget, given to both sides for every generative task, so
# also to bbh_cot_fewshot, whose own 1024 does not fit the small models; it must stay below the
# model's context), N (300 items per task), SEED (28), FIXTURES (data/agree-fixtures), FAIL_ABOVE,
# LOGITS_CACHE (0; 1 runs lm-eval with its default logits_cache=True, which in 0.4.13 scores a
# log-likelihood request wrongly when another request of the task has the same tokens
# (context + continuation)[:-1] with a longer continuation: models/huggingface.py,
# _loglikelihood_tokens, gathers the shorter continuation's tokens from the first positions of the
# longer one's logits; the fixtures hit this in hellaswag and winogrande, and compare_tasks.py names
# such requests; lm-eval's results then go to *-logitscache folders),
# CORPUS (kjv: train on the King James
# Bible, as the MMLU script does; fixtures: train on text in the generative tasks' formats written by
# make_fixtures.py --corpus-out (the GSM8K and BBH test items among it, so some answers are right),
# into RUN runs/agree-fmt[-$PLACEMENT] by default, so that greedy answers end in "#### N" / "The answer
# is N." and run into the stop strings; it needs more STEPS than the Bible, e.g. STEPS=250 with
# SEQ_LEN=512, about 8 minutes on 2 busy cores).
# Needs what scripts/lm_eval_agreement.sh needs; no network once the environment, corpus, build and
# BBH prompt parts are there (the evaluations run with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lm_eval_common.sh
. scripts/lm_eval_common.sh
CORPUS=${CORPUS:-kjv}
case $CORPUS in
  kjv) ;;
  fixtures) [ -n "${RUN:-}" ] || { RUN=runs/agree-fmt; [ "${PLACEMENT:-pre_ln}" = pre_ln ] || RUN=$RUN-$PLACEMENT; } ;;
  *) echo "CORPUS is kjv or fixtures, not $CORPUS" >&2; exit 2 ;;
esac
agree_defaults
ALL_TASKS="gsm8k gsm8k_cot hellaswag arc_easy arc_challenge piqa winogrande mmlu_pro cmmlu bbh_zeroshot bbh_fewshot bbh_cot_fewshot"
TASKS=${TASKS:-}
LIMIT=${LIMIT:-}
MAX_GEN_TOKS=${MAX_GEN_TOKS:-256}
N=${N:-300}
SEED=${SEED:-28}
FIXTURES=${FIXTURES:-data/agree-fixtures}
FAIL_ABOVE=${FAIL_ABOVE:-}
LOGITS_CACHE=${LOGITS_CACHE:-0}
lm_model_args="pretrained=$hf,dtype=float32,trust_remote_code=True"
[ "$LOGITS_CACHE" = 1 ] || lm_model_args+=",logits_cache=False"
suffix=${LIMIT:+-limit$LIMIT}
[ "$MAX_GEN_TOKS" = 256 ] || suffix=$suffix-gen$MAX_GEN_TOKS
[ "$N" = 300 ] && [ "$SEED" = 28 ] || suffix=$suffix-n$N-seed$SEED
keel_root=$RUN/eval/agree-tasks$suffix
lm_dir=$RUN-lm-eval-tasks$suffix
if [ "$LOGITS_CACHE" = 1 ]; then lm_dir=$lm_dir-logitscache; fi

# 1. environment, model, export
agree_python
if [ "$CORPUS" = fixtures ]; then
  [ -s data/raw/kjv.txt ] || scripts/get_data.sh data/raw --no-prepare
  CORPUS_FILE=data/agree-corpus-n$N-seed$SEED.txt
  [ -s "$CORPUS_FILE" ] || "$py" scripts/lm_eval_task/make_fixtures.py --kjv data/raw/kjv.txt --out "$FIXTURES" \
    --n "$N" --seed "$SEED" --corpus-out "$CORPUS_FILE"
fi
agree_model
context=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["max_position_embeddings"])' "$hf/config.json")
if [ "$MAX_GEN_TOKS" -ge "$context" ]; then
  echo "MAX_GEN_TOKS=$MAX_GEN_TOKS leaves no room for the prompt in the model's context of $context tokens (lm-eval asserts max_length - max_gen_toks > 0)" >&2
  exit 2
fi

# which tasks: all that this keel has, or the ones asked for
bench_list=$("$keel" eval --help | sed -n 's/^ *- \([a-z0-9_-]*\): .*/\1/p')
tasks=()
if [ -z "$TASKS" ]; then
  for t in $ALL_TASKS; do
    if grep -qx "$t" <<<"$bench_list"; then tasks+=("$t"); else say "skipping $t: this keel has no --bench $t"; fi
  done
else
  for t in ${TASKS//,/ }; do
    grep -qx "$t" <<< "${ALL_TASKS// /$'\n'}" || { echo "unknown task $t (known: $ALL_TASKS)" >&2; exit 2; }
    grep -qx "$t" <<<"$bench_list" || { echo "this keel has no --bench $t" >&2; exit 2; }
    tasks+=("$t")
  done
fi
[ ${#tasks[@]} -gt 0 ] || { echo "no task to run" >&2; exit 2; }

# 2. fixtures and task YAMLs
if [ ! -f "$FIXTURES/fixtures.json" ] || ! "$py" -c 'import json,sys; m=json.load(open(sys.argv[1])); sys.exit(m["n"]!=int(sys.argv[2]) or m["seed"]!=int(sys.argv[3]))' "$FIXTURES/fixtures.json" "$N" "$SEED"; then
  say "fixtures ($N items per task, seed $SEED) -> $FIXTURES"
  rm -rf "$FIXTURES"
fi
# cheap, and the YAMLs name the installed harness's files: rewritten every time
"$py" scripts/lm_eval_task/make_fixtures.py --kjv data/raw/kjv.txt --out "$FIXTURES" --n "$N" --seed "$SEED" \
  --tasks-out "$FIXTURES/lm_eval_tasks"
bbh_subtasks=$("$py" -c 'import json,sys; print(",".join(json.load(open(sys.argv[1]))["bbh_subtasks"]))' "$FIXTURES/fixtures.json")
if [[ " ${tasks[*]} " == *" bbh_"* ]] && [ ! -d "$FIXTURES/bbh/prompts" ]; then
  say "BBH prompt parts (scripts/get_bbh.sh)"
  scripts/get_bbh.sh "$FIXTURES/bbh"
fi

data_of() {
  case $1 in
    gsm8k | gsm8k_cot) echo "$FIXTURES/gsm8k" ;;
    hellaswag) echo "$FIXTURES/hellaswag" ;;
    arc_easy | arc_challenge) echo "$FIXTURES/ai2_arc" ;;
    piqa) echo "$FIXTURES/piqa" ;;
    winogrande) echo "$FIXTURES/winogrande" ;;
    mmlu_pro) echo "$FIXTURES/mmlu_pro" ;;
    cmmlu) echo "$FIXTURES/cmmlu" ;;
    bbh_*) echo "$FIXTURES/bbh" ;;
  esac
}
generative() { case $1 in gsm8k | gsm8k_cot | bbh_*) return 0 ;; *) return 1 ;; esac; }

# 3. both evaluations per task
mkdir -p "$lm_dir" "$keel_root"
timing=$lm_dir/timing.tsv
[ -f "$timing" ] || printf 'task\tside\twall_s\titems\n' > "$timing"
limit_args=()
[ -n "$LIMIT" ] && limit_args=(--limit "$LIMIT")
compare_args=()
for t in "${tasks[@]}"; do
  data=$(data_of "$t")
  keel_out=$keel_root/$t
  out=$lm_dir/out/$t
  keel_args=(--bench "$t" --run "$RUN" --data "$data" --batch-size "$BATCH" --out "$keel_out" "${limit_args[@]}")
  lm_args=(--tasks "keel_$t" "${limit_args[@]}")
  if generative "$t"; then
    keel_args+=(--max-gen-toks "$MAX_GEN_TOKS")
    lm_args+=(--gen_kwargs "max_gen_toks=$MAX_GEN_TOKS")
  fi
  if [[ $t == bbh_* ]]; then keel_args+=(--subtasks "$bbh_subtasks"); fi
  if [ ! -f "$keel_out/results.json" ]; then
    say "keel eval --bench $t"
    t0=$(now)
    "$keel" eval "${keel_args[@]}"
    t1=$(now)
    items=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("questions", ""))' "$keel_out/results.json")
    awk -v t="$t" -v a="$t0" -v b="$t1" -v n="$items" 'BEGIN { printf "%s\tkeel\t%.1f\t%s\n", t, b - a, n }' >> "$timing"
  fi
  if [ -z "$(find "$out" -name "samples_keel_${t}_*" 2>/dev/null | head -n 1)" ]; then
    say "lm-evaluation-harness: keel_$t"
    mkdir -p "$out"
    t0=$(now)
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false "$VENV/bin/lm_eval" run \
      --model hf --model_args "$lm_model_args" --device cpu --batch_size "$BATCH" \
      --include_path "$FIXTURES/lm_eval_tasks" "${lm_args[@]}" \
      --log_samples --output_path "$out" > "$out/lm_eval.log" 2>&1 || { tail -n 40 "$out/lm_eval.log"; exit 1; }
    t1=$(now)
    items=$(find "$out" -name "samples_keel_${t}_*.jsonl" -print0 | xargs -0 "$py" -c 'import json,sys; print(sum(len({json.loads(l)["doc_id"] for l in open(p)}) for p in sys.argv[1:]))')
    awk -v t="$t" -v a="$t0" -v b="$t1" -v n="$items" 'BEGIN { printf "%s\tlm_eval\t%.1f\t%s\n", t, b - a, n }' >> "$timing"
    sed -n '/^|/p' "$out/lm_eval.log"
  fi
  compare_args+=(--task "$t" "$keel_out" "$out")
done

say "wall seconds per task ($timing; lm-eval's include loading the model and the data, as keel's do)"
column -t -s $'\t' "$timing" || cat "$timing"
if grep -q '^gsm8k	' "$timing"; then
  "$py" - "$timing" "$keel_root/gsm8k/results.json" "$lm_dir/out/gsm8k/lm_eval.log" "$BATCH" "$MAX_GEN_TOKS" <<'EOF' | tee "$lm_dir/gsm8k_speed.txt"
import csv, json, re, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]), delimiter="\t") if r["task"] == "gsm8k"]
last = {r["side"]: r for r in rows}
keel = json.load(open(sys.argv[2]))
parts = []
for side in ("keel", "lm_eval"):
    if side in last and last[side]["items"]:
        n, s = int(last[side]["items"]), float(last[side]["wall_s"])
        parts.append(f"{side} {n} questions in {s:.1f} s wall = {n / s:.2f} questions/s")
gen = [f"keel {keel.get('questions_per_s', 0):.2f} questions/s ({keel.get('generated_tokens_per_s', 0):.0f} tokens/s)"]
try:
    # the harness's progress bar: "Running generate_until requests: 100%|...| 300/300 [01:23<00:00, ...]"
    bars = re.findall(r"Running generate_until requests: 100%\|[^|]*\| (\d+)/\d+ \[(?:(\d+):)?(\d+):(\d+)<", open(sys.argv[3]).read())
    n, h, m, s = bars[-1]
    secs = int(h or 0) * 3600 + int(m) * 60 + int(s)
    gen.append(f"lm_eval {int(n) / max(secs, 1):.2f} questions/s ({int(n)} in {secs} s by its progress bar)")
except (OSError, IndexError):
    pass
print(f"gsm8k on CPU, batch {sys.argv[4]}, max_gen_toks {sys.argv[5]}: " + "; ".join(parts)
      + "; generation alone: " + ", ".join(gen))
EOF
fi

# 4. comparison
say "agreement"
fail=()
[ -n "$FAIL_ABOVE" ] && fail=(--fail-above "$FAIL_ABOVE")
"$py" scripts/compare_tasks.py "${compare_args[@]}" --tokenizer "$hf" --model "$hf" --json "$lm_dir/agreement.json" "${fail[@]}"
