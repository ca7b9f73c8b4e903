"""Causal attention with RoPE and GQA (src/ops/cuda/attention.cu, the SIMT kernels) against a
float64 PyTorch reference with autograd, f32 and bf16 storage, then timings against PyTorch's
scaled_dot_product_attention.

Pipeline as keel runs it (src/ops/attention.rs, mod cuda):
  forward   attn_pack (q, k rotated; heads to (B, heads, T, D)) -> flash_fwd_simt -> out, lse
  backward  attn_pack -> flash_bwd_pre (delta) -> flash_bwd_dkdv, flash_bwd_dq -> attn_unpack
Every output buffer starts as NaN, so an element a kernel forgets to write fails the check.
"""
import math

import torch

from common import f32, i32, launch, suffix

MOD = "attention"
THREADS = 256
BWD_TILE = 32


def fwd_rows(d):
    return 64 if d <= 64 else 32


def rope_tables(t, d, theta=10000.0):
    """keel's Rope: angles in f64, tables rounded to f32, (T, D/2)."""
    half = d // 2
    pos = torch.arange(t, dtype=torch.float64)[:, None]
    freq = theta ** (-(2.0 * torch.arange(half, dtype=torch.float64)) / d)
    ang = pos * freq[None, :]
    return ang.cos().float().cuda().contiguous(), ang.sin().float().cuda().contiguous()


FILL_NAN = True  # off for the timings, which should not count the fills


def nan(shape, dtype):
    if not FILL_NAN:
        return torch.empty(shape, dtype=dtype, device="cuda")
    return torch.full(shape, float("nan"), dtype=dtype, device="cuda")


def ew_blocks(n):
    return max(1, min((n + THREADS - 1) // THREADS, 1 << 20))


def pack(qkv, cos, sin, b, t, h, hkv, d):
    dt = qkv.dtype
    q, k, v = nan((b, h, t, d), dt), nan((b, hkv, t, d), dt), nan((b, hkv, t, d), dt)
    pairs = b * t * (h + 2 * hkv) * d // 2
    launch(MOD, f"keel_attn_pack_{suffix(dt)}", ew_blocks(pairs), THREADS,
           [qkv, cos, sin, q, k, v, i32(b), i32(h), i32(hkv), i32(t), i32(d)])
    return q, k, v


def keel_forward(qkv, cos, sin, b, t, h, hkv, d):
    dt = qkv.dtype
    q, k, v = pack(qkv, cos, sin, b, t, h, hkv, d)
    o, lse = nan((b * t, h * d), dt), nan((b, h, t), torch.float32)
    rows = fwd_rows(d)
    launch(MOD, f"keel_flash_fwd_simt_{suffix(dt)}", ((t + rows - 1) // rows, h, b), THREADS,
           [q, k, v, o, lse, i32(b), i32(h), i32(hkv), i32(t), i32(d), f32(1.0 / math.sqrt(d))])
    return o, lse


def keel_backward(qkv, o, dout, lse, cos, sin, b, t, h, hkv, d):
    dt = qkv.dtype
    sfx = suffix(dt)
    scale = f32(1.0 / math.sqrt(d))
    q, k, v = pack(qkv, cos, sin, b, t, h, hkv, d)
    delta = nan((b, h, t), torch.float32)
    launch(MOD, f"keel_flash_bwd_pre_{sfx}", (b * t * h + THREADS // 32 - 1) // (THREADS // 32), THREADS,
           [o, dout, delta, i32(b), i32(h), i32(t), i32(d)])
    dq = nan((b, h, t, d), torch.float32)
    dk, dv = nan((b, hkv, t, d), torch.float32), nan((b, hkv, t, d), torch.float32)
    tiles = (t + BWD_TILE - 1) // BWD_TILE
    shape = [i32(b), i32(h), i32(hkv), i32(t), i32(d), scale]
    launch(MOD, f"keel_flash_bwd_dkdv_{sfx}", (tiles, hkv, b), THREADS, [q, k, v, dout, lse, delta, dk, dv] + shape)
    launch(MOD, f"keel_flash_bwd_dq_{sfx}", (tiles, h, b), THREADS, [q, k, v, dout, lse, delta, dq] + shape)
    dqkv = nan((b * t, (h + 2 * hkv) * d), dt)
    launch(MOD, f"keel_attn_unpack_{sfx}", ew_blocks(b * t * (h + 2 * hkv) * d // 2), THREADS,
           [dq, dk, dv, cos, sin, dqkv, i32(b), i32(h), i32(hkv), i32(t), i32(d)])
    return dqkv, delta


def reference(qkv, cos, sin, b, t, h, hkv, d, storage):
    """float64: out (B*T, H D) and lse (B, H, T), differentiable in qkv. The rotated q and k are
    rounded to the `storage` dtype as the pack kernel stores them (straight through for the
    gradient), so the bf16 comparison measures the kernels, not that rounding."""
    x = qkv.view(b, t, h + 2 * hkv, d)
    q = x[:, :, :h].transpose(1, 2)
    k = x[:, :, h:h + hkv].transpose(1, 2)
    v = x[:, :, h + hkv:].transpose(1, 2)
    c, s = cos[:t].double(), sin[:t].double()
    half = d // 2

    def rope(z):
        z1, z2 = z[..., :half], z[..., half:]
        return torch.cat([z1 * c - z2 * s, z2 * c + z1 * s], dim=-1)

    def stored(z):
        return z + (z.to(storage).double() - z).detach()

    q, k = stored(rope(q)), stored(rope(k))
    rep = h // hkv
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    mask = torch.ones(t, t, dtype=torch.bool, device=qkv.device).triu(1)
    scores = scores.masked_fill(mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.softmax(scores, dim=-1) @ v
    return out.transpose(1, 2).reshape(b * t, h * d), lse


TOL = {
    # (out, lse, dqkv) as (atol, rtol)
    torch.float32: ((2e-5, 1e-4), (1e-5, 1e-5), (1e-4, 1e-3)),
    torch.bfloat16: ((2e-2, 2e-2), (2e-2, 1e-2), (5e-2, 5e-2)),
}


def check_case(report, dt, b, t, h, hkv, d, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = (h + 2 * hkv) * d
    qkv = torch.randn(b * t, w, device="cuda", generator=g).to(dt).contiguous()
    dout = torch.randn(b * t, h * d, device="cuda", generator=g).to(dt).contiguous()
    cos, sin = rope_tables(t + 3, d)  # a longer table than T, as in training
    name = f"attention {suffix(dt)} B={b} T={t} H={h}/{hkv} D={d}"

    o, lse = keel_forward(qkv, cos, sin, b, t, h, hkv, d)
    ref_in = qkv.double().requires_grad_(True)
    ref_out, ref_lse = reference(ref_in, cos, sin, b, t, h, hkv, d, dt)
    (ref_out * dout.double()).sum().backward()
    (ao, ro), (al, rl), (ag, rg) = TOL[dt]
    report.close(name + " out", o, ref_out, ao, ro)
    report.close(name + " lse", lse, ref_lse, al, rl)
    dqkv, delta = keel_backward(qkv, o, dout, lse, cos, sin, b, t, h, hkv, d)
    ref_delta = (o.double() * dout.double()).view(b, t, h, d).sum(-1).transpose(1, 2)
    report.close(name + " delta", delta, ref_delta, 1e-4 if dt == torch.float32 else 1e-2, 1e-4)
    report.close(name + " dqkv", dqkv, ref_in.grad, ag, rg)


def timings(report):
    import torch.nn.functional as F

    global FILL_NAN
    FILL_NAN = False
    b, t, h, d = 4, 1024, 16, 64
    for dt in (torch.float32, torch.bfloat16):
        qkv = torch.randn(b * t, 3 * h * d, device="cuda").to(dt)
        dout = torch.randn(b * t, h * d, device="cuda").to(dt)
        cos, sin = rope_tables(t, d)
        o, lse = keel_forward(qkv, cos, sin, b, t, h, h, d)
        tag = f"{suffix(dt)} B={b} T={t} H={h} D={d}"
        report.time(f"attention keel fwd (pack + flash_fwd_simt) {tag}", lambda: keel_forward(qkv, cos, sin, b, t, h, h, d))
        report.time(f"attention keel bwd (pack + pre + dkdv + dq + unpack) {tag}",
                    lambda: keel_backward(qkv, o, dout, lse, cos, sin, b, t, h, h, d))
        x = qkv.view(b, t, 3, h, d)
        q, k, v = (x[:, :, i].transpose(1, 2).contiguous().requires_grad_(True) for i in range(3))

        def sdpa_fwd():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v, is_causal=True)

        report.time(f"attention torch sdpa fwd {tag}", sdpa_fwd)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        g = dout.view(b, t, h, d).transpose(1, 2).contiguous()
        report.time(f"attention torch sdpa bwd {tag}",
                    lambda: torch.autograd.grad(out, (q, k, v), g, retain_graph=True))
    FILL_NAN = True


def run(report):
    seed = 0
    for dt in (torch.float32, torch.bfloat16):
        for b in (1, 2):
            for t in (1, 17, 128, 200, 1024):
                for d in (32, 64, 128):
                    for h, hkv in ((4, 4), (8, 2)):
                        seed += 1
                        check_case(report, dt, b, t, h, hkv, d, seed)
        # Odd head dims (not a multiple of 4 lanes' chunks) and a tiny one.
        for b, t, h, hkv, d in ((2, 33, 8, 2, 16), (1, 65, 4, 4, 48), (2, 70, 6, 3, 18), (1, 9, 2, 1, 2)):
            seed += 1
            check_case(report, dt, b, t, h, hkv, d, seed)
    timings(report)
