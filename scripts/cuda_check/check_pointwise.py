"""SwiGLU and GELU kernels (src/ops/cuda/swiglu.cu, gelu.cu) against PyTorch autograd.

    swiglu: h (N, 2F) -> y = silu(h[:, :F]) * h[:, F:] (N, F); bwd: (h, dy) -> dh = [da | db] (N, 2F)
    gelu:   x (n) -> y = x Phi(x) (exact erf); bwd: (x, dy) -> dx

Each kernel is launched as keel launches it (256 threads, ceil(work / 1024) blocks capped at
8192) and also with a small grid, so the grid-stride loops run more than once. Odd widths and
offset pointers exercise the scalar fallback next to the four-element vector path.
"""
import torch

from common import i32, i64, launch, suffix

THREADS = 256


def blocks(work):
    return max(1, min(8192, -(-work // (4 * THREADS))))


def randn(shape, dtype, scale=1.0, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(shape, generator=g, device="cuda") * scale).to(dtype)


def tol(dtype):
    # (atol, rtol): f32 to the CPU twins' 1e-5; bf16 a few ulps of its 8-bit mantissa.
    return (1e-5, 1e-5) if dtype == torch.float32 else (1e-2, 1e-2)


def swiglu_ref(h):
    f = h.shape[1] // 2
    return torch.nn.functional.silu(h[:, :f]) * h[:, f:]


def swiglu_case(report, n, f, dtype, grid=None, offset=0):
    # offset > 0: h and dy are views into a larger buffer, starting `offset` elements in.
    buf = randn((n * 2 * f + offset,), dtype, 2.0, seed=n * 7919 + f)
    h = buf[offset:].view(n, 2 * f)
    gbuf = randn((n * f + offset,), dtype, 1.0, seed=n * 31 + f)
    dy = gbuf[offset:].view(n, f)
    hf = h.float().requires_grad_(True)
    y_ref = swiglu_ref(hf)
    (dh_ref,) = torch.autograd.grad(y_ref, hf, dy.float())
    s = suffix(dtype)
    grid = grid or blocks(n * f)
    y = torch.empty((n, f), dtype=dtype, device="cuda")
    launch("swiglu", f"keel_swiglu_fwd_{s}", grid, THREADS, [h, y, i32(n), i32(f)])
    dh = torch.empty((n, 2 * f), dtype=dtype, device="cuda")
    launch("swiglu", f"keel_swiglu_bwd_{s}", grid, THREADS, [h, dy, dh, i32(n), i32(f)])
    atol, rtol = tol(dtype)
    name = f"swiglu {s} N={n} F={f} grid={grid} offset={offset}"
    report.close(name + " fwd", y, y_ref, atol, rtol)
    report.close(name + " bwd", dh, dh_ref, atol, rtol)


def gelu_case(report, n, f, dtype, grid=None, offset=0):
    buf = randn((n * f + offset,), dtype, 3.0, seed=n * 104729 + f)
    x = buf[offset:]
    gbuf = randn((n * f + offset,), dtype, 1.0, seed=n * 17 + f)
    dy = gbuf[offset:]
    xf = x.float().requires_grad_(True)
    y_ref = torch.nn.functional.gelu(xf, approximate="none")
    (dx_ref,) = torch.autograd.grad(y_ref, xf, dy.float())
    s = suffix(dtype)
    m = n * f
    grid = grid or blocks(m)
    y = torch.empty((m,), dtype=dtype, device="cuda")
    launch("gelu", f"keel_gelu_fwd_{s}", grid, THREADS, [x, y, i64(m)])
    dx = torch.empty((m,), dtype=dtype, device="cuda")
    launch("gelu", f"keel_gelu_bwd_{s}", grid, THREADS, [x, dy, dx, i64(m)])
    atol, rtol = tol(dtype)
    name = f"gelu {s} n={n}x{f} grid={grid} offset={offset}"
    report.close(name + " fwd", y, y_ref, atol, rtol)
    report.close(name + " bwd", dx, dx_ref, atol, rtol)


def run(report):
    for dtype in (torch.float32, torch.bfloat16):
        for n in (1, 7, 333, 4096):
            for f in (33, 344, 1024, 2816):
                swiglu_case(report, n, f, dtype)
                gelu_case(report, n, f, dtype)
        # Grid-stride loops that wrap, and pointers one element past an aligned address.
        swiglu_case(report, 333, 344, dtype, grid=3)
        swiglu_case(report, 333, 1024, dtype, offset=1)
        swiglu_case(report, 7, 33, dtype, grid=1, offset=3)
        gelu_case(report, 333, 1024, dtype, grid=5)
        gelu_case(report, 333, 1025, dtype, offset=1)
        gelu_case(report, 7, 33, dtype, grid=1, offset=2)
    # The far tails in f32: x Phi(x) for x near -12 is ~1e-32, which erfc keeps. Its relative
    # error grows like x^2 eps there (the f32 rounding of x / sqrt 2 is amplified by erfc's slope,
    # the CPU twin's too): ~2e-5 at x = -12, hence rtol 1e-4 against the f64 reference.
    x = torch.linspace(-12, 12, 4099, device="cuda")
    y = torch.empty_like(x)
    launch("gelu", "keel_gelu_fwd_f32", blocks(x.numel()), THREADS, [x, y, i64(x.numel())])
    # The reference through erfc in f64 (1 + erf cancels below x ~ -8 even in f64).
    xd = x.double()
    want = xd * 0.5 * torch.special.erfc(-xd * 0.5 ** 0.5)
    report.close("gelu f32 tails fwd", y, want.float(), 0.0, 1e-4)

    # Timing at a realistic FFN size: 16K tokens, d_ff = 2816 (SwiGLU) / 4096 (GELU), bf16.
    n, f = 16384, 2816
    h = randn((n, 2 * f), torch.bfloat16, 2.0, seed=1)
    dy = randn((n, f), torch.bfloat16, 1.0, seed=2)
    y = torch.empty((n, f), dtype=torch.bfloat16, device="cuda")
    dh = torch.empty((n, 2 * f), dtype=torch.bfloat16, device="cuda")
    report.time(f"swiglu bf16 fwd keel ({n}x{f})",
                lambda: launch("swiglu", "keel_swiglu_fwd_bf16", blocks(n * f), THREADS, [h, y, i32(n), i32(f)]))
    report.time(f"swiglu bf16 fwd torch ({n}x{f})", lambda: swiglu_ref(h))
    report.time(f"swiglu bf16 bwd keel ({n}x{f})",
                lambda: launch("swiglu", "keel_swiglu_bwd_bf16", blocks(n * f), THREADS,
                               [h, dy, dh, i32(n), i32(f)]))

    def torch_swiglu_bwd():
        hh = h.detach().requires_grad_(True)
        torch.autograd.grad(swiglu_ref(hh), hh, dy)

    report.time(f"swiglu bf16 fwd+bwd torch autograd ({n}x{f})", torch_swiglu_bwd)
    m = 16384 * 4096
    x = randn((m,), torch.bfloat16, 3.0, seed=3)
    gy = randn((m,), torch.bfloat16, 1.0, seed=4)
    y = torch.empty_like(x)
    dx = torch.empty_like(x)
    report.time("gelu bf16 fwd keel (16384x4096)",
                lambda: launch("gelu", "keel_gelu_fwd_bf16", blocks(m), THREADS, [x, y, i64(m)]))
    report.time("gelu bf16 fwd torch (16384x4096)", lambda: torch.nn.functional.gelu(x))
    report.time("gelu bf16 bwd keel (16384x4096)",
                lambda: launch("gelu", "keel_gelu_bwd_bf16", blocks(m), THREADS, [x, gy, dx, i64(m)]))
    report.time("gelu bf16 bwd torch (16384x4096)", lambda: torch.ops.aten.gelu_backward(gy, x))
