#!/usr/bin/env python3
"""PyTorch eager reference of keel's model and training step, for a side-by-side speed comparison.

What it is: a hand-written PyTorch (f32, CPU) copy of the Transformer that `keel` trains
(same parameter shapes and counts, same residual placements, same optimizer settings), timed
per phase: forward + loss, backward, and grad clipping + AdamW step. It measures how fast a
plain PyTorch user would run the same training step, so that keel's tokens/s can be compared
against it on the same machine.

It is NOT part of CI and nothing in the Rust build or tests calls it. PyTorch is not a project
dependency; it lives in a separate virtualenv outside the repo, e.g.:

    python3 -m venv /work/torchenv
    /work/torchenv/bin/pip install torch numpy

Run it (from the repo root):

    /work/torchenv/bin/python scripts/bench_torch.py --placements keel,pre_ln

Model (mirrors keel; `--depth` counts sub-layers, attention and FFN each count one):
  * token embedding (V, C), no positional embedding (RoPE instead), untied LM head (C -> V).
  * RMSNorm with learnable gain (init 1), no bias, eps 1e-5.
  * attention: fused qkv projection C -> (H + 2 Hkv) D, D = C / H, RoPE (non-interleaved,
    "rotate half", theta 10000) on q and k, kv heads repeated to H (kv head j serves query heads
    j*rep .. j*rep+rep-1), causal softmax attention with scale 1/sqrt(D), output projection.
  * FFN: SwiGLU, d_ff = 3 C, one C -> 2 d_ff projection split [gate | up], then d_ff -> C.
  * residual placements, F = the branch, N = RMSNorm:
      pre_ln : x + F(N(x)), final RMSNorm before the head.
      post_ln: N(x + F(x)), no final norm.
      keel   : N_out(L * x + F(N_in(x))), no final norm; sub-layer 0 is x + F(N(x)) and
               sub-layer 1 uses alpha = 1.
  * init: every weight matrix N(0, 0.02^2), gains 1.
  * step: zero_grad(set_to_none=True), forward + mean next-token cross-entropy, backward,
    clip_grad_norm_(1.0), AdamW(lr 1e-3, betas (0.9, 0.95), eps 1e-8, wd 0.01 on 2-D weights only).
"""

import argparse
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PLACEMENTS = ("keel", "pre_ln", "post_ln")


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class ManualRMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * g, written out with elementwise ops."""

    def __init__(self, c, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(c))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(kind, c, eps):
    # Default "torch": nn.RMSNorm measured faster in eager than the hand-written version
    # (fwd+bwd of a (1024, 128) input on one thread: ~0.69 ms vs ~1.12 ms with torch 2.15).
    if kind == "torch":
        return nn.RMSNorm(c, eps=eps, elementwise_affine=True)
    return ManualRMSNorm(c, eps)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c, n_heads, n_kv_heads):
        super().__init__()
        assert c % n_heads == 0, "d_model must be divisible by n_heads"
        assert n_heads % n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads"
        self.h = n_heads
        self.hkv = n_kv_heads
        self.d = c // n_heads
        self.wqkv = nn.Linear(c, (n_heads + 2 * n_kv_heads) * self.d, bias=False)
        self.wo = nn.Linear(n_heads * self.d, c, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        qkv = self.wqkv(x).view(b, t, self.h + 2 * self.hkv, self.d)
        q, k, v = qkv.split([self.h, self.hkv, self.hkv], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.h // self.hkv
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        # Fused kernel (flash / memory-efficient attention on CPU): causal mask, default scale
        # 1/sqrt(D). This is what a PyTorch user would write; keel's attention is its own op.
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(o.transpose(1, 2).reshape(b, t, self.h * self.d))


class SwiGLU(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.d_ff = 3 * c
        self.w_in = nn.Linear(c, 2 * self.d_ff, bias=False)
        self.w_out = nn.Linear(self.d_ff, c, bias=False)

    def forward(self, x, cos=None, sin=None):
        gate, up = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(F.silu(gate) * up)


class SubLayer(nn.Module):
    """One residual sub-layer (attention or FFN) with its placement's norms."""

    def __init__(self, index, placement, depth, c, branch, norm_kind, eps):
        super().__init__()
        self.branch = branch
        self.n_in = None
        self.n_out = None
        self.alpha = 1.0
        if placement == "pre_ln" or (placement == "keel" and index == 0):
            self.form = "pre"
            self.n_in = make_norm(norm_kind, c, eps)
        elif placement == "post_ln":
            self.form = "post"
            self.n_out = make_norm(norm_kind, c, eps)
        elif placement == "keel":
            self.form = "keel"
            self.n_in = make_norm(norm_kind, c, eps)
            self.n_out = make_norm(norm_kind, c, eps)
            self.alpha = 1.0 if index == 1 else float(depth)
        else:
            raise ValueError(f"unknown placement {placement!r}")

    def forward(self, x, cos, sin):
        if self.form == "pre":
            return x + self.branch(self.n_in(x), cos, sin)
        if self.form == "post":
            return self.n_out(x + self.branch(x, cos, sin))
        h = x if self.alpha == 1.0 else x * self.alpha
        return self.n_out(h + self.branch(self.n_in(x), cos, sin))


class Transformer(nn.Module):
    def __init__(self, placement, vocab, c, n_heads, n_kv_heads, depth, seq_len,
                 norm_kind="torch", eps=1e-5, rope_theta=10000.0, init_std=0.02):
        super().__init__()
        assert depth % 2 == 0, "depth counts sub-layers and must be even"
        self.embed = nn.Embedding(vocab, c)
        layers = []
        for i in range(depth):
            branch = Attention(c, n_heads, n_kv_heads) if i % 2 == 0 else SwiGLU(c)
            layers.append(SubLayer(i, placement, depth, c, branch, norm_kind, eps))
        self.layers = nn.ModuleList(layers)
        self.final_norm = make_norm(norm_kind, c, eps) if placement == "pre_ln" else None
        self.head = nn.Linear(c, vocab, bias=False)

        d = c // n_heads
        inv_freq = 1.0 / (rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        freqs = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)  # (T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, D), non-interleaved
        self.register_buffer("cos", emb.cos().float(), persistent=False)
        self.register_buffer("sin", emb.sin().float(), persistent=False)

        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, mean=0.0, std=init_std)
            else:
                nn.init.ones_(p)

    def forward(self, tokens):
        t = tokens.shape[1]
        cos, sin = self.cos[:t], self.sin[:t]
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return self.head(x)


def expected_params(placement, vocab, c, n_heads, n_kv_heads, depth):
    """Parameter count from keel's shapes, computed independently of the modules above."""
    d = c // n_heads
    blocks = depth // 2
    attn = c * (n_heads + 2 * n_kv_heads) * d + n_heads * d * c
    ffn = c * 6 * c + 3 * c * c
    weights = 2 * vocab * c + blocks * (attn + ffn)
    if placement == "pre_ln":
        norms = depth + 1
    elif placement == "post_ln":
        norms = depth
    else:  # keel: one norm on sub-layer 0, two on every other
        norms = 1 + 2 * (depth - 1)
    return weights + norms * c


# Values quoted for keel at the defaults (d_model 128, 4 heads, depth 32, vocab 256).
KNOWN_DEFAULT_PARAMS = {"keel": 3_481_472, "pre_ln": 3_477_632, "post_ln": 3_477_504}


# ---------------------------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------------------------


def make_optimizer(model):
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() != 2]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8)


def bench(placement, args):
    torch.manual_seed(args.seed)
    model = Transformer(placement, args.vocab, args.d_model, args.n_heads, args.n_kv_heads,
                        args.depth, args.seq_len, norm_kind=args.norm)
    model.to(args.device)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    expected = expected_params(placement, args.vocab, args.d_model, args.n_heads,
                               args.n_kv_heads, args.depth)
    params = list(model.parameters())
    opt = make_optimizer(model)
    fwd_model = torch.compile(model) if args.compile else model

    g = torch.Generator().manual_seed(args.seed + 1)
    total = args.warmup + args.steps
    batches = [torch.randint(0, args.vocab, (args.batch_size, args.seq_len + 1), generator=g).to(args.device)
               for _ in range(total)]
    cuda = args.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    t_fwd = t_bwd = t_opt = 0.0
    loss_val = float("nan")
    for step in range(total):
        tokens = batches[step]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = fwd_model(inputs)
            loss = F.cross_entropy(logits.reshape(-1, args.vocab).float(), targets.reshape(-1))
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sync()
        t3 = time.perf_counter()
        if step >= args.warmup:
            t_fwd += t1 - t0
            t_bwd += t2 - t1
            t_opt += t3 - t2
        loss_val = loss.item()  # after t3: outside the timed phases

    elapsed = t_fwd + t_bwd + t_opt
    n = args.steps
    tokens = args.batch_size * args.seq_len * n
    return {
        "placement": placement,
        "params": n_params,
        "expected": expected,
        "tok_s": tokens / elapsed,
        "ms_step": 1e3 * elapsed / n,
        "fwd": 1e3 * t_fwd / n,
        "bwd": 1e3 * t_bwd / n,
        "opt": 1e3 * t_opt / n,
        "loss": loss_val,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--placement", "--placements", dest="placements", default="keel",
                   help="comma list of keel, pre_ln, post_ln (default keel)")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--n-kv-heads", type=int, default=None, help="default: n_heads")
    p.add_argument("--depth", type=int, default=32, help="number of sub-layers (even)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before the timed ones")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--norm", choices=("torch", "manual"), default="torch",
                   help="RMSNorm: torch.nn.RMSNorm (default, faster in eager) or hand-written")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--bf16", action="store_true", help="autocast the forward pass to bf16 (mixed precision, f32 weights)")
    p.add_argument("--csv", default=None, help="append the results to this CSV file")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (compilation happens in the first, untimed warmup step: keep --warmup >= 1)")
    args = p.parse_args(argv)
    if args.n_kv_heads is None:
        args.n_kv_heads = args.n_heads
    args.placements = [s.strip() for s in args.placements.split(",") if s.strip()]
    for s in args.placements:
        if s not in PLACEMENTS:
            p.error(f"unknown placement {s!r} (choose from {', '.join(PLACEMENTS)})")
    if args.steps < 1:
        p.error("--steps must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.device}, "
          f"{'bf16 autocast' if args.bf16 else 'f32'}, "
          f"norm {'nn.RMSNorm' if args.norm == 'torch' else 'manual'}"
          f"{', torch.compile' if args.compile else ', eager'}")
    print(f"d_model {args.d_model}, heads {args.n_heads}/{args.n_kv_heads} kv, depth {args.depth}, "
          f"seq {args.seq_len}, batch {args.batch_size}, vocab {args.vocab}, "
          f"steps {args.steps} (+{args.warmup} warmup)")

    defaults = (args.d_model, args.n_heads, args.n_kv_heads, args.depth, args.vocab) == (128, 4, 4, 32, 256)
    rows = []
    ok = True
    for placement in args.placements:
        r = bench(placement, args)
        rows.append(r)
        if r["params"] != r["expected"]:
            ok = False
            print(f"PARAM COUNT MISMATCH for {placement}: model {r['params']}, expected {r['expected']}",
                  file=sys.stderr)
        if defaults and r["params"] != KNOWN_DEFAULT_PARAMS[placement]:
            ok = False
            print(f"PARAM COUNT MISMATCH for {placement}: model {r['params']}, keel reports "
                  f"{KNOWN_DEFAULT_PARAMS[placement]}", file=sys.stderr)

    header = f"{'placement':<10} {'params':>11} {'tokens/s':>10} {'ms/step':>9} {'fwd ms':>8} {'bwd ms':>8} {'opt ms':>8} {'loss':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['placement']:<10} {r['params']:>11,} {r['tok_s']:>10.0f} {r['ms_step']:>9.1f} "
              f"{r['fwd']:>8.1f} {r['bwd']:>8.1f} {r['opt']:>8.1f} {r['loss']:>7.3f}")
    if args.csv:
        import os
        new = not os.path.exists(args.csv)
        with open(args.csv, "a") as f:
            if new:
                f.write("framework,device,precision,d_model,depth,seq_len,batch_size,placement,n_params,tokens_per_s,ms_per_step,forward_ms,backward_ms,optimizer_ms\n")
            for r in rows:
                f.write(f"{'pytorch-compile' if args.compile else 'pytorch-eager'},{args.device},{'bf16' if args.bf16 else 'f32'},{args.d_model},{args.depth},"
                        f"{args.seq_len},{args.batch_size},{r['placement']},{r['params']},{r['tok_s']:.0f},"
                        f"{r['ms_step']:.2f},{r['fwd']:.2f},{r['bwd']:.2f},{r['opt']:.2f}\n")
    if not ok:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
