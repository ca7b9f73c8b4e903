//! CUDA kernels of the pointwise family against their CPU twins (see tests/cuda.rs): SwiGLU and
//! GELU (src/ops/cuda/swiglu.cu, gelu.cu) and the softmax cross-entropy (cross_entropy.cu),
//! forward and backward, f32 and bf16 storage, on odd shapes.
//!
//! bf16 runs the GPU op on bf16 inputs against the CPU f32 op on the same bf16-rounded values;
//! the GPU output is rounded to bf16 once, so the tolerance is a few bf16 ulps (2^-8 relative).

use super::{gpu, max_rel};
use candle_core::{DType, Device, Tensor, Var};
use keel::ops::Kernels;

/// A (rows, cols) tensor of N(0, scale^2) draws on the CPU in f32, deterministic in `seed`.
fn randn(seed: u64, rows: usize, cols: usize, scale: f64) -> Tensor {
    let mut rng = keel::rng::Rng::new(seed);
    let v: Vec<f32> = (0..rows * cols).map(|_| (rng.normal() * scale) as f32).collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

/// `t` rounded to `dtype` and back to f32: the values a GPU run in `dtype` sees.
fn rounded(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap()
}

/// Forward and backward tolerances (max |a - b| / (1 + |b|)) for a storage dtype.
fn tolerances(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (1e-5, 1e-5),
        _ => (1e-2, 1e-2),
    }
}

type Op = fn(&Tensor, Kernels) -> candle_core::Result<Tensor>;

/// y = op(x) and dL/dx for L = sum(y * w), with `x` and `w` as given (on their device, in their dtype).
fn value_and_grad(op: Op, x: &Tensor, w: &Tensor, narrow_rows: bool) -> (Tensor, Tensor) {
    let v = Var::from_tensor(x).unwrap();
    // A view that starts one row in, so the kernels see a pointer that is not at the start of an
    // allocation (for odd widths: not aligned to four elements, the scalar fallback).
    let input = if narrow_rows { v.narrow(0, 1, x.dim(0).unwrap() - 1).unwrap() } else { v.as_tensor().clone() };
    let y = op(&input, Kernels::Fused).unwrap();
    let grads = (&y * w).unwrap().sum_all().unwrap().backward().unwrap();
    let g = grads.get(v.as_tensor()).unwrap().clone();
    (
        y.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap(),
        g.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap(),
    )
}

/// The GPU op in `dtype` against the CPU op in f32 on the same (rounded) values, forward and
/// backward. `x` is (rows, in_cols); y and w are (rows', out_cols).
fn check_against_cpu(name: &str, op: Op, x: &Tensor, out_cols: usize, dtype: DType, narrow_rows: bool) {
    let cuda = gpu();
    let rows_out = if narrow_rows { x.dim(0).unwrap() - 1 } else { x.dim(0).unwrap() };
    let w = rounded(&randn(7 + x.elem_count() as u64, rows_out, out_cols, 1.0), dtype);
    let x = rounded(x, dtype);
    let (y_cpu, g_cpu) = value_and_grad(op, &x, &w, narrow_rows);
    let (y_gpu, g_gpu) = value_and_grad(
        op,
        &x.to_dtype(dtype).unwrap().to_device(&cuda).unwrap(),
        &w.to_dtype(dtype).unwrap().to_device(&cuda).unwrap(),
        narrow_rows,
    );
    let (tol_y, tol_g) = tolerances(dtype);
    let (dy, dg) = (max_rel(&y_gpu, &y_cpu), max_rel(&g_gpu, &g_cpu));
    let shape = x.dims().to_vec();
    assert!(dy < tol_y, "{name} {dtype:?} {shape:?} narrow={narrow_rows}: forward differs by {dy}");
    assert!(dg < tol_g, "{name} {dtype:?} {shape:?} narrow={narrow_rows}: gradient differs by {dg}");
}

const ROWS: [usize; 4] = [1, 7, 333, 4096];
const WIDTHS: [usize; 4] = [33, 344, 1024, 2816];

#[test]
fn swiglu_matches_cpu_forward_and_backward() {
    for dtype in [DType::F32, DType::BF16] {
        for (i, &n) in ROWS.iter().enumerate() {
            for (j, &f) in WIDTHS.iter().enumerate() {
                let h = randn(100 + (4 * i + j) as u64, n, 2 * f, 2.0);
                check_against_cpu("swiglu", keel::ops::swiglu, &h, f, dtype, false);
            }
        }
        check_against_cpu("swiglu", keel::ops::swiglu, &randn(99, 9, 2 * 33, 2.0), 33, dtype, true);
        check_against_cpu("swiglu", keel::ops::swiglu, &randn(98, 9, 2 * 344, 2.0), 344, dtype, true);
    }
}

#[test]
fn gelu_matches_cpu_forward_and_backward() {
    for dtype in [DType::F32, DType::BF16] {
        for (i, &n) in ROWS.iter().enumerate() {
            for (j, &f) in WIDTHS.iter().enumerate() {
                // Scale 3: both tails of Phi, including x Phi(x) at x near -10.
                let x = randn(200 + (4 * i + j) as u64, n, f, 3.0);
                check_against_cpu("gelu", keel::ops::gelu, &x, f, dtype, false);
            }
        }
        check_against_cpu("gelu", keel::ops::gelu, &randn(199, 9, 33, 3.0), 33, dtype, true);
        check_against_cpu("gelu", keel::ops::gelu, &randn(198, 9, 1027, 3.0), 1027, dtype, true);
    }
}

/// Targets below `v`, with 0 in the first row and v - 1 in the last (v - 1 when there is one row).
fn targets(seed: u64, n: usize, v: usize) -> Vec<u32> {
    let mut rng = keel::rng::Rng::new(seed);
    let mut t: Vec<u32> = (0..n).map(|_| rng.below(v as u64) as u32).collect();
    t[0] = 0;
    t[n - 1] = (v - 1) as u32;
    t
}

/// The loss (f32, on the CPU) and N dz / dloss for loss * `dloss`; `z` is consumed on CUDA.
fn ce_value_and_grad(z: &Tensor, t: &Tensor, dloss: f64) -> (Tensor, Tensor) {
    let n = z.dim(0).unwrap() as f64;
    let v = Var::from_tensor(z).unwrap();
    let loss = keel::ops::cross_entropy(v.as_tensor(), t, Kernels::Fused).unwrap();
    let loss_cpu = loss.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
    let grads = (&loss * dloss).unwrap().backward().unwrap();
    let g = grads.get(v.as_tensor()).unwrap().to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
    // dz is (p - onehot) dloss / N: rescaled to (p - onehot), O(1), so max_rel is relative.
    (loss_cpu, (g * (n / dloss)).unwrap())
}

#[test]
fn cross_entropy_matches_cpu_forward_and_backward() {
    let cuda = gpu();
    // A non-unit upstream gradient, read by the CUDA backward from device memory.
    let dloss = 2.5;
    for dtype in [DType::F32, DType::BF16] {
        for (i, &n) in [1usize, 5, 1000].iter().enumerate() {
            for (j, &v) in [256usize, 257, 8000, 50257].iter().enumerate() {
                let seed = 300 + (4 * i + j) as u64;
                let z = rounded(&randn(seed, n, v, 3.0), dtype);
                let t = Tensor::from_vec(targets(seed, n, v), n, &Device::Cpu).unwrap();
                let (l_cpu, g_cpu) = ce_value_and_grad(&z, &t, dloss);
                let z_gpu = z.to_dtype(dtype).unwrap().to_device(&cuda).unwrap();
                let (l_gpu, g_gpu) = ce_value_and_grad(&z_gpu, &t.to_device(&cuda).unwrap(), dloss);
                let (tol_l, tol_g) = tolerances(dtype);
                let (dl, dg) = (max_rel(&l_gpu, &l_cpu), max_rel(&g_gpu, &g_cpu));
                assert!(dl < tol_l, "cross_entropy {dtype:?} ({n}, {v}): loss differs by {dl}");
                assert!(dg < tol_g, "cross_entropy {dtype:?} ({n}, {v}): gradient differs by {dg}");
            }
        }
    }
}

#[test]
fn cross_entropy_on_cuda_is_nan_for_a_target_outside_the_vocabulary() {
    let cuda = gpu();
    let (n, v) = (4, 257);
    let z = randn(400, n, v, 1.0).to_device(&cuda).unwrap();
    // Row 2's target is v: the CPU op bails; the CUDA op cannot without a host sync.
    let t = Tensor::from_vec(vec![0u32, 5, v as u32, 256], n, &cuda).unwrap();
    let loss = keel::ops::cross_entropy(&z, &t, Kernels::Fused).unwrap();
    assert!(loss.to_scalar::<f32>().unwrap().is_nan());
    let cpu = keel::ops::cross_entropy(
        &z.to_device(&Device::Cpu).unwrap(),
        &t.to_device(&Device::Cpu).unwrap(),
        Kernels::Fused,
    );
    assert!(cpu.is_err());
}

#[test]
fn cross_entropy_on_cuda_backward_writes_over_the_logits_once() {
    let cuda = gpu();
    let (n, v) = (3, 300);
    let z = Var::from_tensor(&randn(500, n, v, 1.0).to_device(&cuda).unwrap()).unwrap();
    let t = Tensor::from_vec(vec![1u32, 0, 299], n, &cuda).unwrap();
    let loss = keel::ops::cross_entropy(z.as_tensor(), &t, Kernels::Fused).unwrap();
    let g = loss.backward().unwrap().get(z.as_tensor()).unwrap().to_device(&Device::Cpu).unwrap();
    // The logits' storage now holds dz (the documented in-place backward).
    assert!(max_rel(&z.as_tensor().to_device(&Device::Cpu).unwrap(), &g) < 1e-7);
    // Each row of dz sums to zero: softmax sums to one, minus the one-hot.
    let sums: Vec<f32> = g.sum(1).unwrap().to_vec1().unwrap();
    assert!(sums.iter().all(|s| s.abs() < 1e-5), "{sums:?}");
    // A second backward through the same forward would read dz as logits: it is an error.
    assert!(loss.backward().is_err());
}
