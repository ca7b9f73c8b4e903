"""RMSNorm and LayerNorm kernels (src/ops/cuda/rms_norm.cu, layer_norm.cu), plain and residual
(h = alpha x + f), forward and backward, f32 and bf16, against PyTorch autograd in float64 on the
same (storage-rounded) inputs; then a timing at one realistic size against PyTorch's own norms.

The launches mirror `RowNorm` in src/ops/cuda_kernels.rs (`RowNorm::plan`, the backward grid, the
shared memory and the packed output), so a failure here is a kernel bug, not a launch mismatch.
"""
import cupy
import torch

from common import f32, i32, launch, suffix

EPS = 1e-5
NULL = cupy.uint64(0)  # a null pointer argument (no f / no df)
# Widths: odd (the 1-wide path) and 4-aligned, warp mode (C <= 512) and block mode, up to 4096.
# (64, 3) has tiny rows; C = 1 is left out: there RMSNorm's dx = r g (1 - h^2 r^2) cancels, and f32
# differs from the float64 reference by more than any kernel error when |h| is near sqrt(eps).
SHAPES = [(1, 33), (7, 128), (333, 1000), (4096, 1024), (5, 4096), (64, 3), (3, 513)]


def cdiv(a, b):
    return -(-a // b)


def plan(c):
    """(warp_mode, threads, groups), as `RowNorm::plan` in src/ops/cuda_kernels.rs."""
    if c <= 512:
        return 1, 256, 8
    threads = min(max(cdiv(cdiv(c, 16), 32) * 32, 64), 512)
    return 0, threads, 1


def bwd_blocks(n, c):
    """The backward grid of the Rust launchers: enough blocks to fill the device, no more."""
    _, threads, groups = plan(c)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    per_sm = min(max(2048 // threads, 1), 32)
    return max(min(cdiv(n, groups), sms * per_sm), 1)


def fwd(module, x, f, gamma, beta, alpha, blocks=None):
    """y = norm(alpha x + f) (f None: norm(x)); beta None for RMSNorm."""
    n, c = x.shape
    warp, threads, groups = plan(c)
    blocks = blocks or max(cdiv(n, groups), 1)
    y = torch.empty_like(x)
    params = [gamma] if beta is None else [gamma, beta]
    args = [x, NULL if f is None else f, *params, y, i32(n), i32(c), f32(alpha), f32(EPS), i32(warp)]
    launch(module, f"keel_{module}_fwd_{suffix(x.dtype)}", blocks, threads, args)
    return y


def bwd(module, x, f, gamma, dy, alpha, blocks=None):
    """The packed backward: rows [dx ; df (with f) ; dgamma (; dbeta for LayerNorm)]."""
    n, c = x.shape
    warp, threads, groups = plan(c)
    blocks = blocks or bwd_blocks(n, c)
    k = 1 if module == "rms_norm" else 2  # parameter rows
    grads = 1 if f is None else 2
    out = torch.empty((grads * n + k, c), dtype=x.dtype, device=x.device)
    partial = torch.empty((blocks, k * c), dtype=torch.float32, device=x.device)
    dx = out[:n]
    df = out[n:2 * n] if f is not None else None
    args = [x, NULL if f is None else f, gamma, dy, dx, NULL if df is None else df, partial,
            i32(n), i32(c), f32(alpha), f32(EPS), i32(warp)]
    launch(module, f"keel_{module}_bwd_{suffix(x.dtype)}", blocks, threads, args, shared=groups * k * c * 4)
    dparams = out[grads * n:]
    final = "dgamma" if module == "rms_norm" else "dparams"
    launch(module, f"keel_{module}_{final}_{suffix(x.dtype)}", cdiv(k * c, 32), 1024,
           [partial, dparams, i32(blocks), i32(k * c)])
    return out


def reference(module, x, f, gamma, beta, alpha, dy):
    """y and the gradients (x, f, gamma, beta) by float64 autograd."""
    ts = [t.double().requires_grad_() if t is not None else None for t in (x, f, gamma, beta)]
    xd, fd, gd, bd = ts
    h = xd if fd is None else alpha * xd + fd
    if module == "rms_norm":
        y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS) * gd
    else:
        y = torch.nn.functional.layer_norm(h, (h.shape[-1],), gd, bd, EPS)
    leaves = [t for t in ts if t is not None]
    grads = torch.autograd.grad(y, leaves, dy.double())
    return y.detach(), list(grads)


def check_case(report, module, n, c, dtype, residual, alpha, blocks=None):
    g = torch.Generator(device="cuda").manual_seed(n * 7919 + c)
    rnd = lambda *s: torch.randn(*s, generator=g, device="cuda", dtype=torch.float32).to(dtype)  # noqa: E731
    x = rnd(n, c)
    f = rnd(n, c) if residual else None
    gamma = 1.0 + 0.1 * rnd(c).float()
    gamma = gamma.to(dtype)
    beta = rnd(c) if module == "layer_norm" else None
    dy = rnd(n, c)
    name = f"{module}{' residual' if residual else ''} {n}x{c} alpha={alpha:g} {suffix(dtype)}"
    if blocks:
        name += f" grid={blocks}"
    atol, rtol = (1e-5, 1e-5) if dtype == torch.float32 else (1e-2, 1e-2)
    gatol, grtol = (1e-4, 1e-4) if dtype == torch.float32 else (2e-2, 1e-2)
    y_ref, g_ref = reference(module, x, f, gamma, beta, alpha, dy)
    y = fwd(module, x, f, gamma, beta, alpha, blocks)
    report.close(name + " y", y, y_ref, atol, rtol)
    out = bwd(module, x, f, gamma, dy, alpha, blocks)
    i = 0
    report.close(name + " dx", out[:n], g_ref[i], gatol, grtol)
    i += 1
    row = n
    if residual:
        report.close(name + " df", out[n:2 * n], g_ref[i], gatol, grtol)
        i += 1
        row = 2 * n
    # dgamma (and dbeta) are sums over n rows: their error grows with n.
    patol = gatol * max(1.0, n ** 0.5)
    report.close(name + " dgamma", out[row], g_ref[i], patol, grtol)
    if module == "layer_norm":
        report.close(name + " dbeta", out[row + 1], g_ref[i + 1], patol, grtol)
    # Deterministic: a second backward gives the same bits.
    again = bwd(module, x, f, gamma, dy, alpha, blocks)
    if not torch.equal(again, out):
        report.fail(name + " determinism", "two backward runs differ")


def timing(report, module, dtype):
    n, c = 16384, 1024
    x = torch.randn(n, c, device="cuda", dtype=dtype)
    fr = torch.randn(n, c, device="cuda", dtype=dtype)
    gamma = torch.ones(c, device="cuda", dtype=dtype)
    beta = torch.zeros(c, device="cuda", dtype=dtype) if module == "layer_norm" else None
    dy = torch.randn(n, c, device="cuda", dtype=dtype)
    tag = f"{module} residual {n}x{c} {suffix(dtype)}"
    report.time(f"keel {tag} fwd", lambda: fwd(module, x, fr, gamma, beta, 4.0))
    report.time(f"keel {tag} bwd", lambda: bwd(module, x, fr, gamma, dy, 4.0))
    xs = [x.clone().requires_grad_(), fr.clone().requires_grad_(), gamma.clone().requires_grad_()]
    if beta is not None:
        xs.append(beta.clone().requires_grad_())

    def torch_fwd():
        h = 4.0 * xs[0] + xs[1]
        if module == "rms_norm":
            if hasattr(torch.nn.functional, "rms_norm"):
                return torch.nn.functional.rms_norm(h, (c,), xs[2], EPS)
            return h * torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + EPS).to(h.dtype) * xs[2]
        return torch.nn.functional.layer_norm(h, (c,), xs[2], xs[3], EPS)

    report.time(f"torch {tag} fwd", torch_fwd)
    y = torch_fwd()
    report.time(f"torch {tag} bwd", lambda: torch.autograd.grad(y, xs, dy, retain_graph=True))


def run(report):
    for module in ("rms_norm", "layer_norm"):
        for dtype in (torch.float32, torch.bfloat16):
            for n, c in SHAPES:
                check_case(report, module, n, c, dtype, False, 1.0)
                for alpha in (1.0, 64.0):
                    check_case(report, module, n, c, dtype, True, alpha)
            # Fewer blocks than row groups: every block strides over several rows and
            # accumulates several rows into its partials.
            check_case(report, module, 333, 128, dtype, True, 3.0, blocks=5)
            check_case(report, module, 333, 1000, dtype, True, 3.0, blocks=7)
    for module in ("rms_norm", "layer_norm"):
        for dtype in (torch.float32, torch.bfloat16):
            timing(report, module, dtype)
