"""First-contact check of src/ops/cuda/attention_mma.cu: the tensor-core (mma.sync) FlashAttention-2
forward and backward, bf16, causal, GQA, against PyTorch.

Inputs are plain random tensors already in the packed layouts the kernels read (no RoPE: the pack
kernel applies it before these run): q (B, H, T, D), k, v (B, Hkv, T, D) bf16, dout (B, T, H, D)
bf16. The reference is float64 attention on the same bf16 values (k, v expanded over the group,
autograd for the gradients). Tolerances: the larger of twice PyTorch's own bf16 error (SDPA in bf16
against the same float64 reference) and a small fraction of the reference's largest magnitude; a
fragment-layout or masking bug gives errors of the order of the values themselves.

Outputs are filled with NaN before each launch, so an element a kernel fails to write fails the
comparison. Timing: forward and forward + backward against SDPA's flash backend at B=4, H=16,
T=1024, D=64.
"""
import contextlib
import math

import torch
import torch.nn.functional as F

from common import f32, i32, launch

MODULE = "attention_mma"
THREADS = 128
BLOCK = 64  # query rows per forward / dQ block, keys per dK/dV block


# Dynamic shared memory per kernel, as documented at the top of attention_mma.cu.
def _inner(d):
    return 32 if d == 128 else 64


def _pitch(d):
    return (d + 8) * 2


def smem_fwd(d):
    return 3 * BLOCK * _pitch(d)


def smem_dq(d):
    return (2 * BLOCK + 4 * _inner(d)) * _pitch(d)


def smem_dkdv(d):
    bm = _inner(d)
    return (2 * BLOCK + 4 * bm) * _pitch(d) + 4 * bm * 4


def cdiv(a, b):
    return (a + b - 1) // b


def nan(*shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device="cuda")


def mma_forward(q, k, v, scale):
    """o (B, T, H, D) bf16, lse (B, H, T) f32."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    o = nan(B, T, H, D, dtype=torch.bfloat16)
    lse = nan(B, H, T, dtype=torch.float32)
    launch(MODULE, f"keel_attention_mma_fwd_d{D}_bf16", (cdiv(T, BLOCK), H, B), THREADS,
           [q, k, v, o, lse, i32(T), i32(H), i32(Hkv), f32(scale)], shared=smem_fwd(D))
    return o, lse


def mma_backward(q, k, v, dout, lse, delta, scale):
    """dq (B, H, T, D), dk, dv (B, Hkv, T, D), all f32."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    dq = nan(B, H, T, D, dtype=torch.float32)
    dk = nan(B, Hkv, T, D, dtype=torch.float32)
    dv = nan(B, Hkv, T, D, dtype=torch.float32)
    common = [i32(T), i32(H), i32(Hkv), f32(scale)]
    launch(MODULE, f"keel_attention_mma_bwd_dq_d{D}_bf16", (cdiv(T, BLOCK), H, B), THREADS,
           [q, k, v, dout, lse, delta, dq] + common, shared=smem_dq(D))
    launch(MODULE, f"keel_attention_mma_bwd_dkdv_d{D}_bf16", (cdiv(T, BLOCK), Hkv, B), THREADS,
           [q, k, v, dout, lse, delta, dk, dv] + common, shared=smem_dkdv(D))
    return dq, dk, dv


def delta_of(dout, o):
    """rowsum(dO * O) (B, H, T) f32 from (B, T, H, D) tensors, as keel's caller computes it."""
    return (dout.float() * o.float()).sum(-1).transpose(1, 2).contiguous()


def expand(x, rep):
    return x.repeat_interleave(rep, dim=1) if rep > 1 else x


def reference(q, k, v, dout, scale):
    """float64 o (B, H, T, D), lse (B, H, T), dq, dk, dv on the bf16 inputs' values."""
    H, Hkv, T = q.shape[1], k.shape[1], q.shape[2]
    q, k, v = (x.detach().double().requires_grad_() for x in (q, k, v))
    s = (q @ expand(k, H // Hkv).transpose(-1, -2)) * scale
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device="cuda").triu(1), float("-inf"))
    lse = torch.logsumexp(s, -1)
    o = torch.softmax(s, -1) @ expand(v, H // Hkv)
    o.backward(dout.double().transpose(1, 2))
    return o.detach(), lse.detach(), q.grad, k.grad, v.grad


def torch_bf16(q, k, v, dout, scale):
    """PyTorch's own bf16 attention (whatever SDPA backend it picks): o and gradients."""
    H, Hkv = q.shape[1], k.shape[1]
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    o = F.scaled_dot_product_attention(q, expand(k, H // Hkv), expand(v, H // Hkv), is_causal=True, scale=scale)
    o.backward(dout.transpose(1, 2))
    return o.detach(), q.grad, k.grad, v.grad


def tol(torch_err, want, frac):
    # The 1e-4 floor covers references that are exactly zero (T = 1: dS = P (dP - delta) = 0 up to
    # the f32 rounding of delta), where a real bug errs by the size of the values (about 1).
    return max(2.0 * torch_err, frac * want.abs().max().item(), 1e-4)


def check_case(report, B, H, Hkv, T, D, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, H, T, D, device="cuda", generator=g).bfloat16()
    k = torch.randn(B, Hkv, T, D, device="cuda", generator=g).bfloat16()
    v = torch.randn(B, Hkv, T, D, device="cuda", generator=g).bfloat16()
    dout = torch.randn(B, T, H, D, device="cuda", generator=g).bfloat16()
    scale = 1.0 / math.sqrt(D)
    name = f"attention_mma B{B} H{H}/{Hkv} T{T} D{D}"

    o, lse = mma_forward(q, k, v, scale)
    o_ref, lse_ref, dq_ref, dk_ref, dv_ref = reference(q, k, v, dout, scale)
    o_t, dq_t, dk_t, dv_t = torch_bf16(q, k, v, dout, scale)

    def err(a, b):
        return (a.double() - b).abs().max().item()

    o_bhtd = o.transpose(1, 2)
    report.close(f"{name} fwd o", o_bhtd, o_ref, tol(err(o_t, o_ref), o_ref, 1e-2), 1e-2)
    report.close(f"{name} fwd lse", lse, lse_ref, 2e-4, 2e-4)

    delta = delta_of(dout, o)
    dq, dk, dv = mma_backward(q, k, v, dout, lse, delta, scale)
    report.close(f"{name} bwd dq", dq, dq_ref, tol(err(dq_t, dq_ref), dq_ref, 2e-2), 2e-2)
    report.close(f"{name} bwd dk", dk, dk_ref, tol(err(dk_t, dk_ref), dk_ref, 2e-2), 2e-2)
    report.close(f"{name} bwd dv", dv, dv_ref, tol(err(dv_t, dv_ref), dv_ref, 2e-2), 2e-2)
    return q, k, v, dout, lse, delta, scale, (dq, dk, dv)


@contextlib.contextmanager
def flash_backend():
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            yield
    except ImportError:
        with torch.backends.cuda.sdp_kernel(enable_flash=True, enable_math=False, enable_mem_efficient=False):
            yield


def timing(report):
    B, H, T, D = 4, 16, 1024, 64
    scale = 1.0 / math.sqrt(D)
    q = torch.randn(B, H, T, D, device="cuda").bfloat16()
    k = torch.randn(B, H, T, D, device="cuda").bfloat16()
    v = torch.randn(B, H, T, D, device="cuda").bfloat16()
    dout = torch.randn(B, T, H, D, device="cuda").bfloat16()
    tag = f"B{B} H{H} T{T} D{D}"

    def ours_fwd():
        return mma_forward(q, k, v, scale)

    def ours_fwd_bwd():
        o, lse = mma_forward(q, k, v, scale)
        mma_backward(q, k, v, dout, lse, delta_of(dout, o), scale)

    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    dout_bhtd = dout.transpose(1, 2).contiguous()

    def torch_fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

    def torch_fwd_bwd():
        o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=True, scale=scale)
        o.backward(dout_bhtd)

    report.time(f"attention_mma fwd {tag}", ours_fwd)
    report.time(f"attention_mma fwd+bwd {tag}", ours_fwd_bwd)
    try:
        with flash_backend():
            report.time(f"torch sdpa flash fwd {tag}", torch_fwd)
            report.time(f"torch sdpa flash fwd+bwd {tag}", torch_fwd_bwd)
    except RuntimeError as e:  # no flash backend on this build: time whatever SDPA picks
        print(f"flash backend unavailable ({e}); timing SDPA's default backend")
        report.time(f"torch sdpa fwd {tag}", torch_fwd)
        report.time(f"torch sdpa fwd+bwd {tag}", torch_fwd_bwd)


def run(report):
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        print("attention_mma: needs sm_80 or newer (the kernels are empty below); skipped")
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    seed = 0
    last = None
    for D in (32, 64, 128):
        for ti, T in enumerate((1, 17, 64, 200, 1024)):
            for hi, (H, Hkv) in enumerate(((4, 4), (8, 2))):
                B = 1 + (ti + hi) % 2
                seed += 1
                last = check_case(report, B, H, Hkv, T, D, seed)
    # Determinism: the same backward twice gives the same bits.
    q, k, v, dout, lse, delta, scale, first = last
    again = mma_backward(q, k, v, dout, lse, delta, scale)
    for n, a, b in zip(("dq", "dk", "dv"), again, first):
        report.close(f"attention_mma bwd {n} deterministic", a, b, 0.0, 0.0)
    timing(report)
