//! FlashAttention-2 forward and backward for bf16 on tensor cores (`mma.sync` through inline PTX,
//! sm_80 and newer): the kernels of `src/ops/cuda/attention_mma.cu` and their launches. The op
//! itself, its CPU twins and the SIMT CUDA kernels live in `attention.rs`, which calls these.
//!
//! Causal attention with grouped KV heads over RoPE'd q and k (the pack kernel applies RoPE):
//! with S = scale q k^T over the keys j <= i,
//!   forward:  lse_i = log sum_j exp(S_ij), O = softmax(S) V;
//!   backward: P = exp(S - lse), dP = dO V^T, dS = P (dP - delta) with delta_i = sum_d dO_id O_id,
//!             dQ = scale dS K, dK = scale dS^T Q (over every query head of the group), dV = P^T dO.
//! The backward is two kernels (FA2 / Triton tutorial 06): one per key tile accumulating dK, dV,
//! one per query tile accumulating dQ; no atomics, so results are deterministic.

#[cfg(feature = "cuda")]
use super::cuda_kernels::runtime::{self, Arg};
#[cfg(feature = "cuda")]
use super::cuda_kernels::Module;
#[cfg(feature = "cuda")]
use candle_core::cuda_backend::CudaDevice;
#[cfg(feature = "cuda")]
use candle_core::{DType, Result};

/// The environment variable that turns the tensor-core kernels off (`0`): the SIMT kernels of
/// `attention.cu` run instead.
#[cfg(feature = "cuda")]
pub(super) const ENV: &str = "KEEL_ATTENTION_MMA";

/// Threads per block of every kernel: 4 warps.
#[cfg(feature = "cuda")]
const THREADS: u32 = 128;
/// Query rows per block of the forward and dQ kernels, keys per block of the dK/dV kernel.
#[cfg(feature = "cuda")]
const BLOCK: usize = 64;

/// Shapes of one attention call: batch, query heads, kv heads, sequence, head dim, score scale.
#[cfg(feature = "cuda")]
#[derive(Debug, Clone, Copy)]
pub(super) struct FlashShape {
    pub b: usize,
    pub h: usize,
    pub hkv: usize,
    pub t: usize,
    pub d: usize,
    pub scale: f32,
}

/// Whether the tensor-core kernels take this call: bf16, compute capability 8.0 or newer, a head
/// dimension they are built for (32, 64, 128), and `KEEL_ATTENTION_MMA` not `0`.
#[cfg(feature = "cuda")]
pub(super) fn supports(dev: &CudaDevice, dtype: DType, d: usize) -> Result<bool> {
    if dtype != DType::BF16 || !matches!(d, 32 | 64 | 128) || std::env::var(ENV).is_ok_and(|v| v.trim() == "0") {
        return Ok(false);
    }
    Ok(runtime::compute_capability(dev)?.0 >= 8)
}

/// Dynamic shared memory of each kernel in bytes, as documented at the top of the .cu file.
/// `LD = D + 8` is the padded row pitch in bf16 elements.
#[cfg(feature = "cuda")]
mod smem {
    /// Keys per tile of the dQ kernel (`AttnMmaCfg::BN_DQ`) and queries per tile of the dK/dV
    /// kernel (`AttnMmaCfg::BM_KV`): 32 at D = 128, where 64 would not fit the registers.
    pub(super) fn inner_tile(d: usize) -> usize {
        if d == 128 {
            32
        } else {
            64
        }
    }

    fn pitch_bytes(d: usize) -> usize {
        (d + 8) * 2
    }

    /// sQ | sK | sV: 64 rows each.
    pub(super) fn fwd(d: usize) -> u32 {
        (3 * super::BLOCK * pitch_bytes(d)) as u32
    }

    /// sQ | sdO (64 rows each) | 2 x (sK | sV) (BN rows each).
    pub(super) fn dq(d: usize) -> u32 {
        ((2 * super::BLOCK + 4 * inner_tile(d)) * pitch_bytes(d)) as u32
    }

    /// sK | sV (64 rows each) | 2 x (sQ | sdO) (BM rows each) | 2 x (lse | delta) (BM floats each).
    pub(super) fn dkdv(d: usize) -> u32 {
        let bm = inner_tile(d);
        ((2 * super::BLOCK + 4 * bm) * pitch_bytes(d) + 4 * bm * 4) as u32
    }
}

/// Checks the shape against what the kernels handle; the i32 kernel arguments (T, H, Hkv).
#[cfg(feature = "cuda")]
fn check(s: &FlashShape, op: &str) -> Result<[i32; 3]> {
    let FlashShape { b, h, hkv, t, d, .. } = *s;
    if !matches!(d, 32 | 64 | 128) {
        candle_core::bail!("attention_mma {op}: head dim {d} has no tensor-core kernel (32, 64, 128)")
    }
    if hkv == 0 || h % hkv != 0 {
        candle_core::bail!("attention_mma {op}: {h} query heads do not split into groups of {hkv} kv heads")
    }
    if b > 65535 || h > 65535 || t > i32::MAX as usize || b * h * t * d > i64::MAX as usize / 4 {
        candle_core::bail!("attention_mma {op}: shape (B {b}, H {h}, T {t}, D {d}) out of the kernels' range")
    }
    Ok([t as i32, h as i32, hkv as i32])
}

/// cp.async reads 16 bytes at a time and the stores are 4- or 8-byte vectors: every tensor must
/// start on such a boundary (fresh allocations always do).
#[cfg(feature = "cuda")]
fn aligned(op: &str, addrs: &[(&str, u64, u64)]) -> Result<()> {
    for &(name, addr, align) in addrs {
        if addr % align != 0 {
            candle_core::bail!(
                "attention_mma {op}: {name} at {addr:#x} is not {align}-byte aligned (KEEL_ATTENTION_MMA=0 runs the \
                 SIMT kernels)"
            )
        }
    }
    Ok(())
}

/// o (B, T, H, D) bf16 and lse (B, H, T) f32 from q (B, H, T, D), k, v (B, Hkv, T, D) bf16.
#[cfg(feature = "cuda")]
pub(super) fn forward(dev: &CudaDevice, q: u64, k: u64, v: u64, o: u64, lse: u64, s: &FlashShape) -> Result<()> {
    let [t, h, hkv] = check(s, "forward")?;
    if s.b == 0 || s.h == 0 || s.t == 0 {
        return Ok(());
    }
    aligned("forward", &[("q", q, 16), ("k", k, 16), ("v", v, 16), ("o", o, 4), ("lse", lse, 4)])?;
    let d = s.d;
    runtime::launch(
        dev,
        Module::AttentionMma,
        &format!("keel_attention_mma_fwd_d{d}_bf16"),
        runtime::grid((s.t.div_ceil(BLOCK) as u32, s.h as u32, s.b as u32), THREADS, smem::fwd(d)),
        &[
            Arg::Ptr(q),
            Arg::Ptr(k),
            Arg::Ptr(v),
            Arg::Ptr(o),
            Arg::Ptr(lse),
            Arg::I32(t),
            Arg::I32(h),
            Arg::I32(hkv),
            Arg::F32(s.scale),
        ],
    )
}

/// dq (B, H, T, D) and dk, dv (B, Hkv, T, D), all f32 and fully written, from q, k, v (as in
/// [`forward`]), dout (B, T, H, D) bf16, the forward's lse and delta = rowsum(dO O) (B, H, T) f32.
#[cfg(feature = "cuda")]
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    dev: &CudaDevice,
    q: u64,
    k: u64,
    v: u64,
    dout: u64,
    lse: u64,
    delta: u64,
    dq: u64,
    dk: u64,
    dv: u64,
    s: &FlashShape,
) -> Result<()> {
    let [t, h, hkv] = check(s, "backward")?;
    if s.b == 0 || s.h == 0 || s.t == 0 {
        return Ok(());
    }
    aligned(
        "backward",
        &[
            ("q", q, 16),
            ("k", k, 16),
            ("v", v, 16),
            ("dout", dout, 16),
            ("lse", lse, 4),
            ("delta", delta, 4),
            ("dq", dq, 8),
            ("dk", dk, 8),
            ("dv", dv, 8),
        ],
    )?;
    let d = s.d;
    let tiles = s.t.div_ceil(BLOCK) as u32;
    // Both kernels take q, k, v, dout, lse, delta, their outputs, then T, H, Hkv and the scale.
    let launch = |stage: &str, heads: usize, smem: u32, outs: &[u64]| {
        let mut args: Vec<Arg> = [q, k, v, dout, lse, delta].iter().chain(outs).map(|&p| Arg::Ptr(p)).collect();
        args.extend([Arg::I32(t), Arg::I32(h), Arg::I32(hkv), Arg::F32(s.scale)]);
        runtime::launch(
            dev,
            Module::AttentionMma,
            &format!("keel_attention_mma_bwd_{stage}_d{d}_bf16"),
            runtime::grid((tiles, heads as u32, s.b as u32), THREADS, smem),
            &args,
        )
    };
    launch("dq", s.h, smem::dq(d), &[dq])?;
    launch("dkdv", s.hkv, smem::dkdv(d), &[dk, dv])
}

#[cfg(all(test, feature = "cuda"))]
mod tests {
    use super::smem;

    /// The sizes the header of attention_mma.cu documents (and the CuPy check passes).
    #[test]
    fn shared_memory_sizes_match_the_kernel_file() {
        let got: Vec<(u32, u32, u32)> =
            [32, 64, 128].iter().map(|&d| (smem::fwd(d), smem::dq(d), smem::dkdv(d))).collect();
        assert_eq!(got, vec![(15360, 30720, 31744), (27648, 55296, 56320), (52224, 69632, 70144)]);
        let src = super::super::cuda_kernels::Module::AttentionMma.builtin();
        for n in ["52224", "69632", "70144"] {
            assert!(src.contains(n), "attention_mma.cu no longer documents {n} bytes");
        }
    }
}
