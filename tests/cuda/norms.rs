//! CUDA kernels of the norms family against their CPU twins (see tests/cuda.rs): RMSNorm,
//! residual RMSNorm, LayerNorm and residual LayerNorm (src/ops/cuda/rms_norm.cu and
//! layer_norm.cu) through keel's public ops with `Kernels::Fused` on the GPU, against the same
//! ops on the CPU in f32: outputs, and the gradients of every input of `(y * w).sum_all()` with a
//! fixed random w (so the upstream gradient is not uniform).

use super::{gpu, max_rel};
use candle_core::{DType, Device, Result, Tensor, Var};
use keel::ops::{self, Kernels};
use keel::rng::Rng;

const EPS: f64 = 1e-5;

/// Rows: one, a few, not a multiple of any block's rows, many. Widths: odd (the 1-wide path),
/// warp mode (C <= 512), block mode with C % 4 == 0 but not a power of two, and a power of two.
const NS: [usize; 4] = [1, 7, 333, 4096];
const CS: [usize; 4] = [33, 128, 1000, 1024];

fn randn(seed: u64, shape: &[usize]) -> Tensor {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// f32 values that bf16 holds exactly (rounded through bf16) when `dtype` is bf16.
fn representable(t: &Tensor, dtype: DType) -> Tensor {
    match dtype {
        DType::BF16 => t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap(),
        _ => t.clone(),
    }
}

/// Output and input gradients of `op` on `inputs` (moved to `dev` in `dtype`) with the loss
/// (y * w).sum_all(); all returned on the CPU in f32.
fn run(
    op: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    w: &Tensor,
    dev: &Device,
    dtype: DType,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> =
        inputs.iter().map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap().to_device(dev).unwrap()).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = op(&ts).unwrap();
    let w = w.to_dtype(dtype).unwrap().to_device(dev).unwrap();
    let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let back = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let gs = vars.iter().map(|v| back(grads.get(v.as_tensor()).expect("every input has a gradient"))).collect();
    (back(&y), gs)
}

/// Checks `op` on the GPU in f32 and bf16 against the CPU in f32 on the same (bf16-representable
/// for bf16) values. `shapes` are the inputs' shapes; `names` name them in messages.
fn check(case: &str, op: &dyn Fn(&[Tensor]) -> Result<Tensor>, shapes: &[Vec<usize>], names: &[&str], seed: u64) {
    let cuda = gpu();
    // bf16 rounds the output and every gradient to 8 bits of mantissa: 2^-9 relative, so 1e-2
    // leaves room for the inputs of the loss (w) and gradients that are sums over rows.
    for (dtype, tol_y, tol_g) in [(DType::F32, 1e-5, 1e-4), (DType::BF16, 1e-2, 2e-2)] {
        let inputs: Vec<Tensor> =
            shapes.iter().enumerate().map(|(i, s)| representable(&randn(seed + i as u64, s), dtype)).collect();
        let w = representable(&randn(seed + 100, &shapes[0]), dtype);
        let (y_cpu, g_cpu) = run(op, &inputs, &w, &Device::Cpu, DType::F32);
        let (y_gpu, g_gpu) = run(op, &inputs, &w, &cuda, dtype);
        let d = max_rel(&y_gpu, &y_cpu);
        assert!(d < tol_y, "{case} {dtype:?}: output differs by {d}");
        for ((name, a), b) in names.iter().zip(&g_gpu).zip(&g_cpu) {
            assert_eq!(a.dims(), b.dims(), "{case} {dtype:?}: d{name} shape");
            let d = max_rel(a, b);
            assert!(d < tol_g, "{case} {dtype:?}: d{name} differs by {d}");
        }
    }
}

#[test]
fn rms_norm_matches_cpu() {
    for n in NS {
        for c in CS {
            let op = |t: &[Tensor]| ops::rms_norm(&t[0], &t[1], EPS, Kernels::Fused);
            check(&format!("rms_norm {n}x{c}"), &op, &[vec![n, c], vec![c]], &["x", "gamma"], 1);
        }
    }
}

#[test]
fn residual_rms_norm_matches_cpu() {
    for n in NS {
        for c in CS {
            for alpha in [1.0, 64.0] {
                let op = |t: &[Tensor]| ops::residual_rms_norm(&t[0], &t[1], &t[2], alpha, EPS, Kernels::Fused);
                let shapes = [vec![n, c], vec![n, c], vec![c]];
                check(&format!("residual_rms_norm {n}x{c} alpha {alpha}"), &op, &shapes, &["x", "f", "gamma"], 2);
            }
        }
    }
}

#[test]
fn layer_norm_matches_cpu() {
    for n in NS {
        for c in CS {
            let op = |t: &[Tensor]| ops::layer_norm(&t[0], &t[1], &t[2], EPS, Kernels::Fused);
            let shapes = [vec![n, c], vec![c], vec![c]];
            check(&format!("layer_norm {n}x{c}"), &op, &shapes, &["x", "gamma", "beta"], 3);
        }
    }
}

#[test]
fn residual_layer_norm_matches_cpu() {
    for n in NS {
        for c in CS {
            for alpha in [1.0, 64.0] {
                let op =
                    |t: &[Tensor]| ops::residual_layer_norm(&t[0], &t[1], &t[2], &t[3], alpha, EPS, Kernels::Fused);
                let shapes = [vec![n, c], vec![n, c], vec![c], vec![c]];
                let names = ["x", "f", "gamma", "beta"];
                check(&format!("residual_layer_norm {n}x{c} alpha {alpha}"), &op, &shapes, &names, 4);
            }
        }
    }
}

/// Inputs that start one element into their buffer are contiguous but not 16-byte aligned: the
/// kernels must see it and take the 1-wide path (C = 128 would otherwise read 4 at a time).
#[test]
fn misaligned_inputs_take_the_scalar_path() {
    let cuda = gpu();
    let (n, c) = (9, 128);
    // A buffer of n c + 1 values viewed from its second element: contiguous, offset by 4 bytes.
    let shifted = |seed: u64, dev: &Device| {
        let buf = randn(seed, &[n * c + 1]).to_device(dev).unwrap();
        buf.narrow(0, 1, n * c).unwrap().reshape((n, c)).unwrap()
    };
    let (x, f, gamma, beta) = (shifted(5, &Device::Cpu), shifted(6, &Device::Cpu), randn(7, &[c]), randn(8, &[c]));
    let (xg, fg) = (shifted(5, &cuda), shifted(6, &cuda));
    assert_eq!(xg.layout().start_offset(), 1);
    let (gg, bg) = (gamma.to_device(&cuda).unwrap(), beta.to_device(&cuda).unwrap());
    let pairs = [
        (
            ops::residual_rms_norm(&x, &f, &gamma, 3.0, EPS, Kernels::Fused).unwrap(),
            ops::residual_rms_norm(&xg, &fg, &gg, 3.0, EPS, Kernels::Fused).unwrap(),
        ),
        (
            ops::residual_layer_norm(&x, &f, &gamma, &beta, 3.0, EPS, Kernels::Fused).unwrap(),
            ops::residual_layer_norm(&xg, &fg, &gg, &bg, 3.0, EPS, Kernels::Fused).unwrap(),
        ),
    ];
    for (i, (cpu, gpu)) in pairs.iter().enumerate() {
        let d = max_rel(&gpu.to_device(&Device::Cpu).unwrap(), cpu);
        assert!(d < 1e-5, "case {i}: misaligned inputs differ by {d}");
    }
}

/// The parameter gradients are reduced in a fixed order: two runs give the same bits.
#[test]
fn backward_is_deterministic() {
    let cuda = gpu();
    let (n, c) = (4096, 1000);
    let inputs = [randn(11, &[n, c]), randn(12, &[n, c]), randn(13, &[c]), randn(14, &[c])];
    let w = randn(15, &[n, c]);
    let rms = |t: &[Tensor]| ops::residual_rms_norm(&t[0], &t[1], &t[2], 64.0, EPS, Kernels::Fused);
    let ln = |t: &[Tensor]| ops::residual_layer_norm(&t[0], &t[1], &t[2], &t[3], 64.0, EPS, Kernels::Fused);
    for (name, op, k) in [("rms", &rms as &dyn Fn(&[Tensor]) -> Result<Tensor>, 3), ("ln", &ln, 4)] {
        let (_, a) = run(op, &inputs[..k], &w, &cuda, DType::F32);
        let (_, b) = run(op, &inputs[..k], &w, &cuda, DType::F32);
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "{name}: gradient {i} differs between two runs");
        }
    }
}
