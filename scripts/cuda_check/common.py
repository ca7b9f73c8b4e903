"""Shared helpers for the first-contact kernel checks: each keel CUDA module is loaded from the
same source keel compiles (src/ops/cuda/prelude.cuh + <module>.cu, or the files of
KEEL_CUDA_KERNELS=DIR where present) with the same NVRTC options, by CuPy's RawModule, and its
kernels are run on PyTorch tensors and compared with PyTorch references. No keel build needed.

A check file `check_<name>.py` defines `run(report)`; run_all.py runs them all.
"""
import os
import sys
import time

import cupy
import torch

# The module source and NVRTC options come from the CI compile check, so both build what keel does.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cuda_kernels_check  # noqa: E402


def options():
    return tuple(cuda_kernels_check.options())


_modules = {}


def load(module):
    """The CuPy RawModule of src/ops/cuda/<module>.cu (prelude prepended), compiled by NVRTC."""
    if module not in _modules:
        src = cuda_kernels_check.module_source(module, os.environ.get("KEEL_CUDA_KERNELS") or None)
        m = cupy.RawModule(code=src, options=options(), backend="nvrtc")
        m.compile()
        _modules[module] = m
    return _modules[module]


def kernel(module, name):
    return load(module).get_function(name)


def arg(t):
    """A torch CUDA tensor as a kernel argument (bf16 travels as its 16 bits)."""
    assert t.is_cuda and t.is_contiguous(), "kernel arguments must be contiguous CUDA tensors"
    if t.dtype == torch.bfloat16:
        return cupy.asarray(t.view(torch.int16))
    if t.dtype == torch.uint32:
        return cupy.asarray(t.view(torch.int32))
    return cupy.asarray(t)


def i32(x):
    return cupy.int32(x)


def i64(x):
    return cupy.int64(x)


def f32(x):
    return cupy.float32(x)


def launch(module, name, grid, block, args, shared=0):
    """Runs kernel `name` of `module`; grid is an int or a tuple, block an int."""
    if isinstance(grid, int):
        grid = (grid,)
    f = kernel(module, name)
    if shared > 48 * 1024:
        f.max_dynamic_shared_size_bytes = shared
    f(tuple(grid), (block,), tuple(a if not isinstance(a, torch.Tensor) else arg(a) for a in args), shared_mem=shared)


def suffix(dtype):
    return {torch.float32: "f32", torch.bfloat16: "bf16"}[dtype]


class Report:
    """Collects one row per comparison; `ok` is False once any fails or raises."""

    def __init__(self):
        self.rows = []
        self.ok = True

    def close(self, name, got, want, atol, rtol):
        got, want = got.detach().float().cpu(), want.detach().float().cpu()
        if got.shape != want.shape:
            self.fail(name, f"shape {tuple(got.shape)} != {tuple(want.shape)}")
            return False
        err = (got - want).abs()
        tol = atol + rtol * want.abs()
        bad = ~(err <= tol)
        max_abs = err.max().item() if err.numel() else 0.0
        ok = not bad.any().item()
        self.rows.append((name, "ok" if ok else "FAIL", max_abs, int(bad.sum().item())))
        print(f"{'ok  ' if ok else 'FAIL'} {name}: max abs err {max_abs:.3e} (atol {atol:g}, rtol {rtol:g})"
              + ("" if ok else f", {int(bad.sum())} of {err.numel()} elements outside"), flush=True)
        self.ok &= ok
        return ok

    def fail(self, name, why):
        self.rows.append((name, "FAIL", float("nan"), -1))
        print(f"FAIL {name}: {why}", flush=True)
        self.ok = False

    def time(self, name, fn, reps=20):
        """Median milliseconds of fn() over reps runs (after one warm-up), printed and recorded."""
        fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            ts.append((time.perf_counter() - t0) * 1e3)
        ts.sort()
        ms = ts[len(ts) // 2]
        self.rows.append((name, "time_ms", ms, 0))
        print(f"time {name}: {ms:.3f} ms", flush=True)
        return ms

    def write(self, path):
        with open(path, "w") as f:
            f.write("check,status,max_abs_err_or_ms,bad_elements\n")
            for r in self.rows:
                f.write(",".join(str(x) for x in r) + "\n")
