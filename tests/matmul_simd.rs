//! `KEEL_SIMD` caps gemm's f32 matrix products as well as the fused kernels. Its own test binary:
//! the cap is process-wide, and the other binaries' bit-for-bit comparisons must not see it move.

mod common;
use candle_core::{DType, Tensor};
use common::*;
use keel::ops::{self, Kernels, SimdLevel};

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// (N, K) x (K, M) summed in order k = 0, 1, ..., with or without fused multiply-adds.
fn in_order(x: &[f32], w: &[f32], (n, k, m): (usize, usize, usize), fma: bool) -> Vec<f32> {
    let mut y = vec![0f32; n * m];
    for i in 0..n {
        for j in 0..m {
            let mut acc = 0f32;
            for p in 0..k {
                let (a, b) = (x[i * k + p], w[p * m + j]);
                acc = if fma { a.mul_add(b, acc) } else { acc + a * b };
            }
            y[i * m + j] = acc;
        }
    }
    y
}

/// Every level the CPU has, capped in turn: the reported level follows the cap, each level is
/// deterministic and within f32 rounding of f64, the scalar level is exactly the in-order sum
/// without FMA and the AVX2+FMA level exactly the in-order sum with it (gemm keeps one accumulator
/// per output across a K that fits one cache block). So the cap really changes the kernels, and
/// the AVX2 results a machine without AVX-512 computes can be reproduced on one that has it.
#[test]
fn the_simd_cap_selects_gemms_kernels() {
    let levels: Vec<SimdLevel> = SimdLevel::ALL.into_iter().filter(|&l| l <= SimdLevel::detected()).collect();
    let widest = ops::matmul_simd();
    let mut seen = Vec::new();
    for shape @ (n, k, m) in [(64, 128, 96), (37, 77, 29), (1024, 128, 384)] {
        let x = randn(31, &[n, k], DType::F32);
        let w = randn(32, &[k, m], DType::F32);
        let (xv, wv) = (to_vec(&x), to_vec(&w));
        let exact = |fma: bool| in_order(&xv, &wv, shape, fma);
        let x64 = x.to_dtype(DType::F64).unwrap();
        let w64 = w.to_dtype(DType::F64).unwrap();
        let y64: Vec<f64> = ops::linear(&x64, &w64, Kernels::Fused).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        for &level in &levels {
            ops::set_matmul_simd_limit(level);
            let name = ops::matmul_simd();
            let expected = match level {
                SimdLevel::Baseline => "baseline",
                SimdLevel::Avx2 => "avx2+fma",
                SimdLevel::Avx512 => widest,
            };
            assert_eq!(name, expected, "cap {level:?}");
            let y = to_vec(&ops::linear(&x, &w, Kernels::Fused).unwrap());
            assert_eq!(y, to_vec(&ops::linear(&x, &w, Kernels::Fused).unwrap()), "{shape:?} at {name} twice");
            let worst = y.iter().zip(&y64).map(|(&a, &b)| (a as f64 - b).abs() / (1.0 + b.abs())).fold(0.0, f64::max);
            assert!(worst < 2e-6 * (k as f64).sqrt(), "{shape:?} at {name}: {worst} from f64");
            match name {
                "baseline" => assert_eq!(y, exact(false), "{shape:?}: the scalar kernel is the in-order sum"),
                "avx2+fma" => assert_eq!(y, exact(true), "{shape:?}: the FMA kernel is the in-order FMA sum"),
                _ => {}
            }
            seen.push(name);
        }
    }
    ops::set_matmul_simd_limit(SimdLevel::Avx512);
    assert_eq!(ops::matmul_simd(), widest, "lifting the cap restores the widest level");
    assert!(seen.contains(&"baseline"), "the baseline level is always reachable");
}
