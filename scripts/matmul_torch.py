#!/usr/bin/env python3
"""f32 matrix products at keel's model shapes, timed with PyTorch, beside `keel bench --matmul`.

The same list as keel's `bench::model_matmul_shapes` (B*T = 1024 rows, d_model 128): for each
linear layer in -> out its forward (1024, in) x (in, out), its input gradient (1024, out) x
(out, in) and its weight gradient (in, 1024) x (1024, out), then 1024^3; each the best of 20
products of contiguous f32 matrices, in GFLOP/s. Not part of CI; PyTorch lives in its own
virtualenv (see scripts/bench_torch.py):

    /work/torchenv/bin/python scripts/matmul_torch.py --threads 2
    cargo run --release -- bench --matmul
"""

import argparse
import time

import torch

LAYERS = [("qkv 128->384", 128, 384), ("ffn in 128->768", 128, 768), ("ffn out 384->128", 384, 128), ("head 128->256", 128, 256)]


def shapes(rows=1024):
    out = []
    for name, i, o in LAYERS:
        out += [(name, (rows, i, o)), (name, (rows, o, i)), (name, (i, rows, o))]
    out.append(("square", (1024, 1024, 1024)))
    return out


def gflops(n, k, m, rounds=20):
    a = torch.randn(n, k)
    b = torch.randn(k, m)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        c = a @ b
        c.sum().item()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n * k * m / best / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__} matmul: f32, threads {torch.get_num_threads()}")
    print(f"{'layer':<18} {'(n, k, m)':>18} {'GFLOP/s':>9}")
    for name, (n, k, m) in shapes():
        print(f"{name:<18} {str((n, k, m)):>18} {gflops(n, k, m):>9.1f}")


if __name__ == "__main__":
    main()
