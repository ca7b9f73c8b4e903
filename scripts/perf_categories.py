#!/usr/bin/env python3
"""Where a training step's CPU time goes: `perf script` samples of `keel bench`, grouped by op.

Reads `perf script` output (samples recorded with call graphs, `perf record -g`, of a keel built
with frame pointers and line tables: `scripts/profile_step.sh` does all of it) on stdin and prints,
per thread that holds at least 2% of the samples, the share of all samples in each category: the
linear layers' forward, input-gradient and weight-gradient products, attention, norms, SwiGLU,
Candle's gradient accumulation in the backward pass, the optimizer, the rest of the backward
bookkeeping, and a worker thread's stolen matrix-product tiles and waiting.

The first rule whose pattern occurs anywhere in a sample's stack names its category, so the order
of RULES matters (the weight-gradient product is a product inside a backward pass). Not part of CI.
"""
import collections
import sys

RULES = [
    ("grad accumulation (Candle backward: zeros + add)", ["or_insert", "GradStore>::accumulate", "Tensor::add", "zeros_like"]),
    ("linear, weight gradient x^T dy", ["LinearGradWeight"]),
    ("linear, input gradient dy w^T", ["LinearGradInput"]),
    ("linear, forward x w", ["ops::linear::Linear as"]),
    ("attention, backward", ["attention::Attention as keel::ops::custom::FusedOp1>::bwd", "kv_group_backward"]),
    ("attention, forward", ["keel::ops::attention"]),
    ("norms (RMSNorm, residual + norm)", ["rms_norm", "layer_norm"]),
    ("SwiGLU", ["swiglu"]),
    ("cross-entropy", ["cross_entropy"]),
    ("optimizer (grad norm, clip, AdamW)", ["keel::optim"]),
    ("embedding", ["index_select", "embedding", "IndexSelect"]),
    ("backward bookkeeping (graph walk, maps)", ["backprop"]),
]


def classify(frames):
    stack = " ".join(frames)
    for name, keys in RULES:
        if any(k in stack for k in keys):
            return name
    leaf = frames[0] if frames else "?"
    if "gemm" in stack:
        return "matrix-product tiles (stolen by a worker)"
    if "sched_yield" in stack or "wait_until" in stack or "[k]" in leaf or "kernel" in leaf:
        return "waiting for work (rayon) or kernel"
    if "vectorized" in leaf:
        return "fused-kernel chunks (stolen by a worker)"
    return "other"


def main():
    by_thread = collections.defaultdict(collections.Counter)
    frames, tid = [], None

    def flush():
        if tid is not None and frames:
            by_thread[tid][classify(frames)] += 1

    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line.strip():
            flush()
            frames, tid = [], None
        elif line[0] not in " \t":
            fields = line.split()
            tid = fields[1] if len(fields) > 1 else "?"
        else:
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                frames.append(parts[1])
    flush()
    total = sum(sum(c.values()) for c in by_thread.values())
    if total == 0:
        sys.exit("perf_categories.py: no samples on stdin (pipe `perf script -i FILE` into it)")
    print(f"{total} samples; shares of all samples")
    for t, c in sorted(by_thread.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(c.values())
        if n < 0.02 * total:
            continue
        print(f"thread {t}: {100 * n / total:.1f}%")
        for name, v in c.most_common():
            if v >= 0.001 * total:
                print(f"  {100 * v / total:6.2f}%  {name}")


if __name__ == "__main__":
    main()
