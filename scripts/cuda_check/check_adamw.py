"""adamw: the multi-tensor AdamW of src/ops/cuda/adamw.cu (per-chunk sums of squares, the one-block
clip kernel, the update over all tensors) against torch.nn.utils.clip_grad_norm_ followed by
torch.optim.AdamW(fused=False), over several steps; then timed against clip_grad_norm_(foreach) +
torch's fused AdamW on ~100M parameters in ~300 tensors.

Launch configuration as in src/optim.rs (mod cuda): sumsq and update on min(chunks, 65535) blocks of
256 threads, clip on one block of 512; CHUNK = 16384 elements.
"""
import struct

import torch

from common import f32, i32, i64, launch

MOD = "adamw"
THREADS = 256
CLIP_THREADS = 512
CHUNK = 16384
MAX_BLOCKS = 65535

# Odd lengths around the 4-wide loads and the 16384-element chunks; 24 tensors.
LENS = [1, 7, 1000, 65537, 1 << 20, 3, 4, 5, 33, 127, 16383, 16384, 16385, 32771, 3072, 48, 2, 100003, 9,
        256, 4099, 65536, 17, 77777]


def f64_bits(x):
    """The bit pattern of an f64, as the clip kernel takes its threshold."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def keel_coef(max_norm, norm):
    """keel's clip_scale (src/optim.rs): PyTorch's coefficient above the threshold, else 1."""
    return max_norm / (norm + 1e-6) if (max_norm > 0 and norm > max_norm) else 1.0


class Multi:
    """The device table of src/optim.rs for params (f32 or bf16), grads (same dtype) and f32 moments."""

    def __init__(self, params, grads, ms, vs, decays):
        dev = params[0].device
        self.n = len(params)
        self.params, self.grads, self.ms, self.vs = params, grads, ms, vs

        def ptrs(ts):
            return torch.tensor([t.data_ptr() for t in ts], dtype=torch.int64, device=dev)

        lens = [t.numel() for t in params]
        starts = [0]
        for n in lens:
            starts.append(starts[-1] + (n + CHUNK - 1) // CHUNK)
        self.chunks = starts[-1]
        self.p_ptr, self.g_ptr, self.m_ptr, self.v_ptr = ptrs(params), ptrs(grads), ptrs(ms), ptrs(vs)
        self.lens = torch.tensor(lens, dtype=torch.int64, device=dev)
        self.decays = torch.tensor([1 if d else 0 for d in decays], dtype=torch.int64, device=dev)
        self.starts = torch.tensor(starts, dtype=torch.int64, device=dev)
        self.partials = torch.empty(max(self.chunks, 1), dtype=torch.float64, device=dev)
        self.out = torch.empty(self.n + 3, dtype=torch.float64, device=dev)
        self.sfx = {torch.float32: "f32", torch.bfloat16: "bf16"}[params[0].dtype]
        self.blocks = min(max(self.chunks, 1), MAX_BLOCKS)

    def norms(self, max_norm):
        launch(MOD, f"keel_adamw_sumsq_{self.sfx}", self.blocks, THREADS,
               [self.g_ptr, self.lens, self.starts, i32(self.n), i32(CHUNK), self.partials])
        launch(MOD, "keel_adamw_clip_f64", 1, CLIP_THREADS,
               [self.partials, self.starts, i32(self.n), i64(f64_bits(max_norm)), self.out])

    def update(self, step, lr, b1, b2, eps, wd):
        # The scalars as src/optim.rs rounds them (f64 on the host, then f32).
        bc1, bc2 = 1.0 - b1 ** step, 1.0 - b2 ** step
        launch(MOD, f"keel_adamw_update_{self.sfx}", self.blocks, THREADS,
               [self.p_ptr, self.g_ptr, self.m_ptr, self.v_ptr, self.lens, self.decays, self.starts,
                i32(self.n), i32(CHUNK), self.out[self.n:], f32(b1), f32(b2), f32(eps), f32(lr / bc1),
                f32(1.0 / bc2), f32(1.0 - lr * wd)])

    def step(self, step, lr, b1, b2, eps, wd, max_norm):
        self.norms(max_norm)
        self.update(step, lr, b1, b2, eps, wd)


def torch_reference(params, decays, lr, b1, b2, eps, wd):
    ref = [p.detach().float().clone().requires_grad_(True) for p in params]
    groups = [{"params": [r for r, d in zip(ref, decays) if d], "weight_decay": wd},
              {"params": [r for r, d in zip(ref, decays) if not d], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(b1, b2), eps=eps, foreach=False, fused=False)
    return ref, opt


def set_lr(opt, lr):
    for g in opt.param_groups:
        g["lr"] = lr


def moments(opt, r):
    st = opt.state[r]
    return st["exp_avg"], st["exp_avg_sq"]


def check_f32(report):
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(7)
    b1, b2, eps, wd = 0.9, 0.95, 1e-8, 0.1
    params = [torch.randn(n, device=dev, generator=gen) for n in LENS]
    decays = [i % 2 == 0 for i in range(len(LENS))]
    grads = [torch.empty_like(p) for p in params]
    ms = [torch.zeros_like(p) for p in params]
    vs = [torch.zeros_like(p) for p in params]
    k = Multi(params, grads, ms, vs, decays)
    ref, opt = torch_reference(params, decays, 1e-2, b1, b2, eps, wd)
    n = len(LENS)
    # The gradient norm is about 0.03 * sqrt(1.4e6) ~ 36.
    plan = [(1e-2, 0.0, "no clip"), (5e-3, 1e6, "not reached"), (2e-2, 1.0, "clipped"), (1e-2, 5.0, "clipped"),
            (1e-2, 1.0, "non-finite"), (3e-3, 10.0, "after skip")]
    step = 0
    for s, (lr, max_norm, what) in enumerate(plan):
        for g in grads:
            g.copy_(torch.randn(g.shape, device=dev, generator=gen) * 0.03)
        if what == "non-finite":
            grads[3][5] = float("nan")
            grads[10][0] = float("inf")
            before = [t.clone() for t in params + ms + vs]
            k.norms(max_norm)
            k.update(step + 1, lr, b1, b2, eps, wd)
            torch.cuda.synchronize()
            out = k.out.cpu()
            report.close(f"adamw f32 step {s}: skip flag on a NaN/inf gradient", out[n + 2:n + 3],
                         torch.ones(1, dtype=torch.float64), 0, 0)
            report.close(f"adamw f32 step {s}: NaN sum stays NaN", torch.tensor([float(out[3].isnan())]),
                         torch.ones(1), 0, 0)
            after = params + ms + vs
            report.close(f"adamw f32 step {s}: skipped update leaves p, m, v unchanged",
                         torch.cat([a.flatten() for a in after]), torch.cat([b.flatten() for b in before]), 0, 0)
            continue  # neither side counts the step
        step += 1
        want_sq = torch.stack([(g.double() ** 2).sum() for g in grads]).cpu()
        want_norm = want_sq.sum().sqrt().item()
        want_coef = keel_coef(max_norm, want_norm)
        k.step(step, lr, b1, b2, eps, wd, max_norm)
        # Reference: clip_grad_norm_ then AdamW(fused=False).
        for r, g in zip(ref, grads):
            r.grad = g.clone()
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_(ref, max_norm, foreach=False)
        set_lr(opt, lr)
        opt.step()
        torch.cuda.synchronize()
        out = k.out.cpu()
        name = f"adamw f32 step {s} ({what})"
        report.close(f"{name}: per-tensor sums of squares", out[:n], want_sq, 0, 1e-12)
        report.close(f"{name}: norm, coef, skip", out[n:], torch.tensor([want_norm, want_coef, 0.0],
                                                                          dtype=torch.float64), 0, 1e-12)
        report.close(f"{name}: parameters", torch.cat([p.flatten() for p in params]),
                     torch.cat([r.detach().flatten() for r in ref]), 1e-6, 1e-5)
        mv = [moments(opt, r) for r in ref]
        report.close(f"{name}: first moments", torch.cat([m.flatten() for m in ms]),
                     torch.cat([m.flatten() for m, _ in mv]), 1e-8, 1e-5)
        report.close(f"{name}: second moments", torch.cat([v.flatten() for v in vs]),
                     torch.cat([v.flatten() for _, v in mv]), 1e-10, 1e-5)


def check_bf16(report):
    """bf16 parameters and gradients, f32 moments: each step against torch's f32 step from the same
    (bf16-valued) parameters, rounded to bf16; moments do not depend on the parameters."""
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(11)
    b1, b2, eps, wd = 0.9, 0.95, 1e-8, 0.1
    params = [torch.randn(n, device=dev, generator=gen).bfloat16() for n in LENS]
    decays = [i % 3 != 0 for i in range(len(LENS))]
    grads = [torch.empty_like(p) for p in params]
    ms = [torch.zeros(p.shape, device=dev) for p in params]
    vs = [torch.zeros(p.shape, device=dev) for p in params]
    k = Multi(params, grads, ms, vs, decays)
    ref, opt = torch_reference(params, decays, 1e-2, b1, b2, eps, wd)
    n = len(LENS)
    for step, (lr, max_norm) in enumerate([(1e-2, 0.0), (2e-2, 1.0), (5e-3, 1e6)], start=1):
        for g in grads:
            g.copy_((torch.randn(g.shape, device=dev, generator=gen) * 0.03).bfloat16())
        with torch.no_grad():
            for r, p in zip(ref, params):
                r.copy_(p.float())
        want_sq = torch.stack([(g.double() ** 2).sum() for g in grads]).cpu()
        k.step(step, lr, b1, b2, eps, wd, max_norm)
        for r, g in zip(ref, grads):
            r.grad = g.float()
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_(ref, max_norm, foreach=False)
        set_lr(opt, lr)
        opt.step()
        torch.cuda.synchronize()
        name = f"adamw bf16 step {step}"
        report.close(f"{name}: per-tensor sums of squares", k.out[:n].cpu(), want_sq, 0, 1e-12)
        # One bf16 rounding apart at most (2^-8 to 2^-7 relative), plus f32 noise.
        report.close(f"{name}: parameters", torch.cat([p.float().flatten() for p in params]),
                     torch.cat([r.detach().bfloat16().float().flatten() for r in ref]), 1e-6, 2 ** -7)
        mv = [moments(opt, r) for r in ref]
        report.close(f"{name}: first moments", torch.cat([m.flatten() for m in ms]),
                     torch.cat([m.flatten() for m, _ in mv]), 1e-8, 1e-5)
        report.close(f"{name}: second moments", torch.cat([v.flatten() for v in vs]),
                     torch.cat([v.flatten() for _, v in mv]), 1e-10, 1e-5)


def timing(report):
    """~100M f32 parameters in 296 tensors (96 matrices of 1024 x 1024 and 200 vectors of 1000):
    keel's three launches (tables already on the device) against clip_grad_norm_(foreach) +
    torch.optim.AdamW(fused=True)."""
    dev = "cuda"
    torch.manual_seed(0)
    sizes = [1024 * 1024] * 96 + [1000] * 200
    params = [torch.randn(n, device=dev) * 0.02 for n in sizes]
    grads = [torch.randn(n, device=dev) * 1e-3 for n in sizes]
    ms = [torch.zeros(n, device=dev) for n in sizes]
    vs = [torch.zeros(n, device=dev) for n in sizes]
    decays = [n > 1000 for n in sizes]
    k = Multi(params, grads, ms, vs, decays)
    lr, b1, b2, eps, wd = 1e-4, 0.9, 0.95, 1e-8, 0.1
    print(f"adamw timing: {sum(sizes) / 1e6:.1f}M parameters in {len(sizes)} tensors, {k.chunks} chunks")
    report.time("adamw keel sumsq+clip+update 100M f32", lambda: k.step(10, lr, b1, b2, eps, wd, 1.0))
    report.time("adamw keel sumsq+clip 100M f32", lambda: k.norms(1.0))
    report.time("adamw keel update 100M f32", lambda: k.update(10, lr, b1, b2, eps, wd))
    del k, ms, vs
    ref = [p.clone().requires_grad_(True) for p in params]
    del params
    for r, g in zip(ref, grads):
        r.grad = g
    groups = [{"params": [r for r, d in zip(ref, decays) if d], "weight_decay": wd},
              {"params": [r for r, d in zip(ref, decays) if not d], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(b1, b2), eps=eps, fused=True)
    opt.step()  # creates the state

    def torch_step():
        torch.nn.utils.clip_grad_norm_(ref, 1.0, foreach=True)
        opt.step()

    report.time("adamw torch clip_grad_norm_(foreach)+AdamW(fused) 100M f32", torch_step)
    report.time("adamw torch AdamW(fused) 100M f32", opt.step)


def run(report):
    check_f32(report)
    check_bf16(report)
    timing(report)
