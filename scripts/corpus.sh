# Sourced by the figure scripts: the corpus they train on, in one place.
# The King James Bible with keel's BPE-8k tokenizer (data/bible-bpe8k, made by scripts/get_data.sh)
# when it is there; otherwise the built-in synthetic tasks, with a note. After sourcing:
#   corpus        "bible-bpe8k" or "synthetic"
#   corpus_sets   the --set arguments that select it (an array)
#   keel          the release binary, built
# KEEL_CORPUS=synthetic forces the synthetic tasks; KEEL_CORPUS=DIR uses another prepared folder.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -q
keel=target/release/keel
want=${KEEL_CORPUS:-data/bible-bpe8k}
if [ "$want" != synthetic ] && [ -f "$want/meta.json" ]; then
  corpus=$(basename "$want")
  corpus_sets=(--set "data.path=$want")
else
  if [ "$want" != synthetic ]; then
    echo "note: $want is absent (scripts/get_data.sh prepares it): training on the built-in synthetic tasks instead;"
    echo "      the figures will not be comparable with docs/results.md's, which are on the Bible."
  fi
  corpus=synthetic
  corpus_sets=(--set data.source=synthetic)
fi
echo "corpus: $corpus"
# The model every real-text figure uses: d_model 64, 4 heads, windows of 64 tokens, batch 8.
model_sets=(--set model.d_model=64 --set model.n_heads=4 --set train.seq_len=64 --set train.batch_size=8)
# Figure 1(c)'s training budget, shared by Figure 6 and the alpha ablation: 300 steps (153,600
# tokens), peak LR 3e-3 after 30 warmup steps, cosine decay.
depth_sweep_sets=(--set train.steps=300 --set train.warmup_steps=30 --set train.lr=3e-3 --set train.eval_every=100
  --set train.grad_norm_every=100 --set train.log_every=20)
