#!/usr/bin/env python3
"""The unigram baseline of a prepared folder: validation NLL per token (nats) of a model that
predicts every token with its training-split frequency (add-one smoothed). A language model stuck
at this level has learned token frequencies and nothing else. Standard library only.
    python3 scripts/unigram_nll.py data/bible-bpe8k
"""
import array, collections, glob, json, math, os, struct, sys

def tokens(path):
    with open(path, "rb") as f:
        head = f.read(32)
        assert head[:8] == b"KEELTOKS", f"{path} is not a keel shard"
        width, count = struct.unpack("<I", head[12:16])[0], struct.unpack("<Q", head[16:24])[0]
        a = array.array("H" if width == 2 else "I")
        a.frombytes(f.read(count * width))
        return a

folder = sys.argv[1] if len(sys.argv) > 1 else "data/bible-bpe8k"
vocab = json.load(open(os.path.join(folder, "meta.json")))["vocab_size"]
train, val = collections.Counter(), collections.Counter()
for f in sorted(glob.glob(os.path.join(folder, "train_*.bin"))):
    train.update(tokens(f))
for f in sorted(glob.glob(os.path.join(folder, "val_*.bin"))):
    val.update(tokens(f))
n = sum(train.values())
nll = sum(c * -math.log((train[t] + 1) / (n + vocab)) for t, c in val.items()) / sum(val.values())
print(f"{folder}: unigram validation NLL {nll:.4f} nats/token (perplexity {math.exp(nll):.1f}), vocab {vocab}")
