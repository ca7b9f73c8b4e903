"""Softmax cross-entropy kernels (src/ops/cuda/cross_entropy.cu) against PyTorch autograd.

    fwd:  z (N, V), targets (N) u32 -> stats (2N) f32 = [loss_i | lse_i]   grid N, block row_threads(V)
    mean: stats -> loss (1) = mean_i loss_i                               grid 1, block 512
    bwd:  z (N, V) overwritten by dz = (softmax(z) - onehot(t)) dloss / N  grid N, block row_threads(V)
          (targets, lse = stats[N:], dloss (1) read from device memory)

Targets travel as int32 (the kernels read them as u32; all values here are >= 0).
"""
import torch

from common import i32, launch, suffix

MEAN_THREADS = 512


def row_threads(v):
    # As keel (src/ops/cross_entropy.rs): about one four-column vector per thread, 32..512.
    vectors = -(-v // 4)
    return min(512, max(32, -(-vectors // 32) * 32))


def tol(dtype):
    return (1e-5, 1e-5) if dtype == torch.float32 else (1e-2, 1e-2)


def targets_for(n, v, g):
    t = torch.randint(0, v, (n,), generator=g, device="cuda", dtype=torch.int32)
    t[0] = 0
    t[-1] = v - 1
    return t


def forward(z, t, threads=None):
    n, v = z.shape
    s = suffix(z.dtype)
    stats = torch.empty((2 * n,), dtype=torch.float32, device="cuda")
    loss = torch.empty((1,), dtype=z.dtype, device="cuda")
    launch("cross_entropy", f"keel_cross_entropy_fwd_{s}", n, threads or row_threads(v), [z, t, stats, i32(n), i32(v)])
    launch("cross_entropy", f"keel_cross_entropy_mean_{s}", 1, MEAN_THREADS, [stats, loss, i32(n)])
    return stats, loss


def backward(z, t, stats, dloss, threads=None):
    """Overwrites z with dz."""
    n, v = z.shape
    s = suffix(z.dtype)
    lse = stats[n:]
    launch("cross_entropy", f"keel_cross_entropy_bwd_{s}", n, threads or row_threads(v),
           [z, t, lse, dloss, i32(n), i32(v)])


def case(report, n, v, dtype, offset=0, threads=None):
    g = torch.Generator(device="cuda").manual_seed(n * 100003 + v)
    # offset > 0: z starts `offset` elements into its buffer (every row's alignment shifts).
    buf = (torch.randn((n * v + offset,), generator=g, device="cuda") * 3.0).to(dtype)
    z = buf[offset:].view(n, v)
    t = targets_for(n, v, g)
    dloss = torch.tensor([2.5], dtype=dtype, device="cuda")
    zf = z.float().requires_grad_(True)
    loss_rows = torch.nn.functional.cross_entropy(zf, t.long(), reduction="none")
    loss_ref = loss_rows.mean()
    (dz_ref,) = torch.autograd.grad(loss_ref, zf, dloss.float())
    lse_ref = torch.logsumexp(zf.detach(), dim=1)
    stats, loss = forward(z, t, threads)
    zk = z.clone()
    backward(zk, t, stats, dloss, threads)
    atol, rtol = tol(dtype)
    s = suffix(dtype)
    name = f"cross_entropy {s} N={n} V={v} offset={offset} threads={threads or row_threads(v)}"
    report.close(name + " row loss", stats[:n], loss_rows, 1e-5, 1e-5)
    report.close(name + " lse", stats[n:], lse_ref, 1e-5, 1e-5)
    report.close(name + " mean", loss, loss_ref.reshape(1), atol, rtol)
    # dz is O(dloss / N): compare N dz / dloss, O(1), so the tolerance is relative to the probabilities.
    report.close(name + " dz", zk.float() * (n / 2.5), dz_ref * (n / 2.5), atol, rtol)


def run(report):
    for dtype in (torch.float32, torch.bfloat16):
        for n in (1, 5, 1000):
            for v in (256, 257, 8000, 50257):
                case(report, n, v, dtype)
        # Rows that start off the vector alignment, a block smaller than the row, a row shorter
        # than the four-column head, a one-warp block.
        case(report, 5, 50257, dtype, offset=1)
        case(report, 7, 8000, dtype, offset=3, threads=64)
        case(report, 3, 2, dtype, offset=1)
        case(report, 2, 1, dtype)
        case(report, 1000, 257, dtype, threads=32)

    # A target outside [0, V): that row's loss (and the mean) is NaN, nothing is read out of
    # bounds, and the backward leaves the row at softmax * dloss / N.
    n, v = 3, 257
    z = torch.randn((n, v), device="cuda")
    t = torch.tensor([1, v, 0], dtype=torch.int32, device="cuda")
    stats, loss = forward(z, t)
    ok = bool(torch.isnan(stats[1]).item()) and not bool(torch.isnan(stats[[0, 2]]).any().item()) \
        and bool(torch.isnan(loss).item())
    if ok:
        report.close("cross_entropy f32 target V: row NaN, others finite", stats[[0, 2]],
                     torch.nn.functional.cross_entropy(z[[0, 2]], t[[0, 2]].long(), reduction="none"), 1e-5, 1e-5)
    else:
        report.fail("cross_entropy f32 target V", f"stats {stats.tolist()}, loss {loss.item()}")
    dloss = torch.ones((1,), device="cuda")
    zk = z.clone()
    backward(zk, t, stats, dloss)
    report.close("cross_entropy f32 target V: bwd row = softmax / N", zk[1], torch.softmax(z[1], 0) / n, 1e-6, 1e-5)

    # Logits with -inf entries (masked columns) stay finite, as on the CPU.
    z = torch.randn((4, 300), device="cuda")
    z[:, :7] = float("-inf")
    z[2, 100:] = float("-inf")
    t = torch.tensor([10, 299, 50, 7], dtype=torch.int32, device="cuda")
    stats, loss = forward(z, t)
    report.close("cross_entropy f32 -inf logits", stats[:4],
                 torch.nn.functional.cross_entropy(z, t.long(), reduction="none"), 1e-5, 1e-5)

    # Timing: 16 rows of 1024 tokens, GPT-2's vocabulary, bf16 logits; forward + backward
    # against PyTorch's fused cross_entropy and its autograd backward.
    n, v = 16384, 50257
    g = torch.Generator(device="cuda").manual_seed(5)
    z = (torch.randn((n, v), generator=g, device="cuda") * 3).to(torch.bfloat16)
    t = targets_for(n, v, g)
    dloss = torch.ones((1,), dtype=torch.bfloat16, device="cuda")
    report.time(f"cross_entropy bf16 fwd keel ({n}x{v})", lambda: forward(z, t))
    stats, _ = forward(z, t)
    zk = z.clone()
    # In place on zk: repeated runs overwrite the same buffer (timing only; values not checked).
    report.time(f"cross_entropy bf16 bwd keel ({n}x{v})", lambda: backward(zk, t, stats, dloss))
    tl = t.long()
    report.time(f"cross_entropy bf16 fwd torch ({n}x{v})", lambda: torch.nn.functional.cross_entropy(z, tl))

    def torch_fwd_bwd():
        zz = z.detach().requires_grad_(True)
        torch.autograd.grad(torch.nn.functional.cross_entropy(zz, tl), zz)

    report.time(f"cross_entropy bf16 fwd+bwd torch autograd ({n}x{v})", torch_fwd_bwd)
