# Shared steps of the keel-vs-lm-evaluation-harness agreement scripts, sourced (not run) by
# scripts/lm_eval_agreement.sh (MMLU) and scripts/lm_eval_tasks_agreement.sh (the other tasks), from
# the repository root. Each step is skipped when its output already exists, so a rerun resumes, and
# both scripts can share one trained model (runs/agree for Pre-LN).
#
#   agree_defaults   PLACEMENT (pre_ln), RUN (runs/agree, or runs/agree-$PLACEMENT), STEPS (70),
#                    SEQ_LEN (1024), BATCH (16), INIT_STD (unset), VENV (/work/torchenv when it exists,
#                    else data/lm-eval-venv), LM_EVAL_VERSION (0.4.13), KEEL (a keel binary to use
#                    instead of building target/release/keel, e.g. another branch's); sets root, keel,
#                    py, hf
#   agree_python     a Python environment at $VENV with lm-eval[hf]==$LM_EVAL_VERSION (transformers,
#                    accelerate, torch), pyarrow, pandas and word2number (BBH's object_counting filter);
#                    pip installs only what is missing
#   agree_model      data/raw/kjv.txt and data/raw/gpt2/{encoder.json,vocab.bpe}
#                    (scripts/get_data.sh --no-prepare), `keel data prepare` of $CORPUS_FILE (default
#                    data/raw/kjv.txt) into data/{its name}-gpt2 (data/kjv-gpt2),
#                    `cargo build --release $CARGO_FEATURES`, trains $RUN from $RUN.toml (written when
#                    absent: $PLACEMENT, RMSNorm, SwiGLU, depth 8, d_model 128, 4 heads, seq_len $SEQ_LEN,
#                    batch 4, $STEPS steps; about 5 minutes on 2 busy CPU cores), `keel export --run $RUN
#                    --hf $RUN-hf` (Pre-LN: LlamaForCausalLM; any other placement: KeelForCausalLM with
#                    remote code) and checks that transformers loads it and encodes as keel does
# shellcheck shell=bash

now() { date +%s.%N; }
say() { echo "== $*"; }

agree_defaults() {
  root=$PWD
  PLACEMENT=${PLACEMENT:-pre_ln}
  if [ "$PLACEMENT" = pre_ln ]; then RUN=${RUN:-runs/agree}; else RUN=${RUN:-runs/agree-$PLACEMENT}; fi
  INIT_STD=${INIT_STD:-}
  STEPS=${STEPS:-70}
  SEQ_LEN=${SEQ_LEN:-1024}
  BATCH=${BATCH:-16}
  LM_EVAL_VERSION=${LM_EVAL_VERSION:-0.4.13}
  if [ -z "${VENV:-}" ]; then
    if [ -x /work/torchenv/bin/python ]; then VENV=/work/torchenv; else VENV=$root/data/lm-eval-venv; fi
  fi
  keel=${KEEL:-$root/target/release/keel}
  py=$VENV/bin/python
  hf=$RUN-hf
}

agree_python() {
  if [ ! -x "$py" ]; then say "creating $VENV"; python3 -m venv "$VENV"; fi
  if ! "$py" -c 'import lm_eval, transformers, accelerate' 2>/dev/null; then
    say "pip install lm-eval[hf]==$LM_EVAL_VERSION (transformers, accelerate, peft, torch) into $VENV"
    "$py" -m pip install -q "lm-eval[hf]==$LM_EVAL_VERSION"
  fi
  local missing=()
  "$py" -c 'import pyarrow, pandas' 2>/dev/null || missing+=(pyarrow pandas)
  "$py" -c 'import word2number' 2>/dev/null || missing+=(word2number)
  if [ ${#missing[@]} -gt 0 ]; then
    say "pip install ${missing[*]} into $VENV"
    "$py" -m pip install -q "${missing[@]}"
  fi
  "$py" -c 'import importlib.metadata as m; print("lm-eval", m.version("lm_eval"), "| transformers", m.version("transformers"), "| torch", m.version("torch"), "| datasets", m.version("datasets"))'
}

agree_model() {
  local raw=data/raw
  if [ ! -s "$raw/kjv.txt" ] || [ ! -s "$raw/gpt2/encoder.json" ]; then
    say "corpora and GPT-2 vocabulary (scripts/get_data.sh --no-prepare)"
    scripts/get_data.sh "$raw" --no-prepare
  fi
  if [ -n "${KEEL:-}" ]; then
    say "using KEEL=$KEEL (no build)"
  else
    say "cargo build --release ${CARGO_FEATURES:-}"
    # shellcheck disable=SC2086
    cargo build --release -q ${CARGO_FEATURES:-}
  fi
  local corpus=${CORPUS_FILE:-$raw/kjv.txt}
  local prepared
  prepared=data/$(basename "$corpus" .txt)-gpt2
  [ -f "$prepared/meta.json" ] || "$keel" data prepare -q --input "$corpus" --tokenizer "$raw/gpt2" --out "$prepared"
  if [ ! -f "$RUN.toml" ]; then
    mkdir -p "$(dirname "$RUN")"
    cat > "$RUN.toml" <<EOF
# Small $PLACEMENT model on $corpus with the GPT-2 tokenizer, for the
# keel-vs-lm-evaluation-harness agreement checks (scripts/lm_eval_agreement.sh,
# scripts/lm_eval_tasks_agreement.sh).
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
path = "$prepared"
EOF
  fi
  if [ ! -f "$RUN/model.safetensors" ]; then
    say "training $RUN"
    "$keel" train --config "$RUN.toml" --out "$RUN"
  fi

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
  # written; the check below proves that encoding is unchanged. (Generation: the harness also pads
  # with that token and decodes with skip_special_tokens, so it drops out of generated text as the
  # end-of-text token does in keel.)
  "$py" - "$hf" <<'EOF'
import json, os, sys, transformers
hf = sys.argv[1]
m = transformers.AutoModelForCausalLM.from_pretrained(hf, trust_remote_code=True)
print(f"transformers loads {hf}: {type(m).__name__}, {sum(p.numel() for p in m.parameters())} params,"
      f" generation eos_token_id {getattr(m.generation_config, 'eos_token_id', None)}")

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
}
