//! The CustomOp plumbing that every fused op shares, written once.
//!
//! A fused op is a struct implementing [`FusedOp1`], [`FusedOp2`] or [`FusedOp3`] (by how many
//! tensors it takes): its name, its CPU forward written once for every float type `T: Real`, and,
//! when the graph differentiates it, its backward. Wrapped in [`Fused`] it is a Candle CustomOp:
//!
//! ```ignore
//! x.contiguous()?.apply_op2(gamma, Fused(RmsNorm { eps }))
//! ```
//!
//! The wrapper supplies what each op used to spell out itself: `name`, the dtype dispatch (`T` is
//! the first input's dtype, f32 or f64, anything else an error naming the op), contiguous input
//! slices, the output's `CpuStorage`, and a contiguous upstream gradient for the backward.

use super::real::Real;
use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
    WithDType,
};

/// One input of a fused op on the CPU, as Candle hands it over: storage and layout.
#[derive(Clone, Copy)]
pub(super) struct Input<'a> {
    storage: &'a CpuStorage,
    layout: &'a Layout,
}

impl<'a> Input<'a> {
    pub(super) fn new(storage: &'a CpuStorage, layout: &'a Layout) -> Self {
        Input { storage, layout }
    }

    /// The elements as `U` (the op's float type, or u32 for token ids). The kernels index rows
    /// directly, so the input must be contiguous: the entry points call `.contiguous()` first.
    pub(super) fn slice<U: WithDType>(&self) -> Result<&'a [U]> {
        match self.layout.contiguous_offsets() {
            Some((a, b)) => Ok(&self.storage.as_slice::<U>()?[a..b]),
            None => candle_core::bail!("keel fused op: input must be contiguous"),
        }
    }

    pub(super) fn shape(&self) -> &'a Shape {
        self.layout.shape()
    }

    /// Runs `f` on a tensor that an op holds beside its inputs (a CustomOp takes three at most:
    /// the gamma of a residual norm's backward), made contiguous and seen as a CPU input; `what`
    /// names it in the error when it is not on the CPU. [`CudaInput::with_held`] is its CUDA twin.
    pub(super) fn with_held<R>(t: &Tensor, what: &str, op: &str, f: impl FnOnce(Input) -> Result<R>) -> Result<R> {
        let t = t.contiguous()?;
        let (s, l) = t.storage_and_layout();
        let candle_core::Storage::Cpu(s) = &*s else { candle_core::bail!("{op}: {what} is not on the cpu") };
        f(Input::new(s, l))
    }
}

/// One input of a fused op on a CUDA device: storage and layout (`--features cuda` only).
#[cfg(feature = "cuda")]
#[derive(Clone, Copy)]
pub(super) struct CudaInput<'a> {
    pub(super) storage: &'a candle_core::CudaStorage,
    pub(super) layout: &'a Layout,
}

#[cfg(feature = "cuda")]
impl<'a> CudaInput<'a> {
    pub(super) fn shape(&self) -> &'a Shape {
        self.layout.shape()
    }

    pub(super) fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    pub(super) fn device(&self) -> &'a candle_core::cuda_backend::CudaDevice {
        &self.storage.device
    }

    /// Runs `f` on a tensor that an op holds beside its inputs (a CustomOp takes three at most:
    /// the gamma of a residual norm's backward), made contiguous and seen as a CUDA input; `what`
    /// names it in the error when it is not on a CUDA device.
    pub(super) fn with_held<R>(t: &Tensor, what: &str, op: &str, f: impl FnOnce(CudaInput) -> Result<R>) -> Result<R> {
        let t = t.contiguous()?;
        let (s, l) = t.storage_and_layout();
        let candle_core::Storage::Cuda(s) = &*s else {
            candle_core::bail!("{op}: {what} is not on the CUDA device of x")
        };
        f(CudaInput { storage: s, layout: l })
    }

    /// The device address of an optional contiguous input's first element, or 0 (the null the
    /// kernels take for "absent") without one.
    pub(super) fn address_or_null(input: &Option<CudaInput>, op: &str) -> Result<u64> {
        match input {
            Some(t) => super::cuda_kernels::runtime::address(t.storage, t.layout, op),
            None => Ok(0),
        }
    }
}

/// What a CUDA forward returns: the output's storage and shape.
#[cfg(feature = "cuda")]
pub(super) type CudaOutput = (candle_core::CudaStorage, Shape);

/// Output of a fused op's CPU forward: its elements, row-major, and its shape.
pub(super) type Output<T> = (Vec<T>, Shape);

/// A fused op of one tensor.
pub(super) trait FusedOp1 {
    /// Candle's name for the op, also the prefix of its errors.
    const NAME: &'static str;

    /// The forward on the CPU in the float type `T` of the input.
    fn cpu<T: Real>(&self, x: Input) -> Result<Output<T>>;

    /// The forward on a CUDA device (f32 or bf16 storage): keel's kernel of `src/ops/cuda/`.
    #[cfg(feature = "cuda")]
    fn cuda(&self, _x: CudaInput) -> Result<CudaOutput> {
        candle_core::bail!("{}: no CUDA kernel (run with train.kernels=composite)", Self::NAME)
    }

    /// Candle's `CustomOp1::bwd`, with `dy` contiguous. By default the op has no backward (it is
    /// itself a backward, applied with `apply_op*_no_bwd`).
    fn bwd(&self, _x: &Tensor, _y: &Tensor, _dy: &Tensor) -> Result<Option<Tensor>> {
        Err(candle_core::Error::BackwardNotSupported { op: Self::NAME })
    }
}

/// A fused op of two tensors; see [`FusedOp1`].
pub(super) trait FusedOp2 {
    const NAME: &'static str;

    fn cpu<T: Real>(&self, a: Input, b: Input) -> Result<Output<T>>;

    #[cfg(feature = "cuda")]
    fn cuda(&self, _a: CudaInput, _b: CudaInput) -> Result<CudaOutput> {
        candle_core::bail!("{}: no CUDA kernel (run with train.kernels=composite)", Self::NAME)
    }

    fn bwd(&self, _a: &Tensor, _b: &Tensor, _y: &Tensor, _dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Err(candle_core::Error::BackwardNotSupported { op: Self::NAME })
    }
}

/// A fused op of three tensors; see [`FusedOp1`].
pub(super) trait FusedOp3 {
    const NAME: &'static str;

    fn cpu<T: Real>(&self, a: Input, b: Input, c: Input) -> Result<Output<T>>;

    #[cfg(feature = "cuda")]
    fn cuda(&self, _a: CudaInput, _b: CudaInput, _c: CudaInput) -> Result<CudaOutput> {
        candle_core::bail!("{}: no CUDA kernel (run with train.kernels=composite)", Self::NAME)
    }

    #[allow(clippy::type_complexity)] // Candle's signature
    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        _c: &Tensor,
        _y: &Tensor,
        _dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Err(candle_core::Error::BackwardNotSupported { op: Self::NAME })
    }
}

/// A [`FusedOp1`], [`FusedOp2`] or [`FusedOp3`] as the Candle CustomOp of the same arity.
pub(super) struct Fused<O>(pub O);

/// Runs `$body` with the type `$t` bound to the float type of `$dtype` (f32 or f64); any other
/// dtype is an error naming the op.
macro_rules! with_float {
    ($dtype:expr, $op:expr, $t:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::F64 => {
                type $t = f64;
                $body
            }
            dt => candle_core::bail!("{}: unsupported dtype {dt:?} (keel's fused ops take f32 or f64)", $op),
        }
    };
}

fn into_storage<T: Real>((data, shape): Output<T>) -> Result<(CpuStorage, Shape)> {
    debug_assert_eq!(data.len(), shape.elem_count(), "fused op output does not fill its shape");
    Ok((T::to_cpu_storage_owned(data), shape))
}

impl<O: FusedOp1> CustomOp1 for Fused<O> {
    fn name(&self) -> &'static str {
        O::NAME
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        with_float!(s.dtype(), O::NAME, T => into_storage(self.0.cpu::<T>(Input::new(s, l))?))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<CudaOutput> {
        self.0.cuda(CudaInput { storage: s, layout: l })
    }
    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        self.0.bwd(x, y, &dy.contiguous()?)
    }
}

impl<O: FusedOp2> CustomOp2 for Fused<O> {
    fn name(&self) -> &'static str {
        O::NAME
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (Input::new(s1, l1), Input::new(s2, l2));
        with_float!(s1.dtype(), O::NAME, T => into_storage(self.0.cpu::<T>(a, b)?))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<CudaOutput> {
        self.0.cuda(CudaInput { storage: s1, layout: l1 }, CudaInput { storage: s2, layout: l2 })
    }
    fn bwd(&self, a: &Tensor, b: &Tensor, y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.0.bwd(a, b, y, &dy.contiguous()?)
    }
}

impl<O: FusedOp3> CustomOp3 for Fused<O> {
    fn name(&self) -> &'static str {
        O::NAME
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b, c) = (Input::new(s1, l1), Input::new(s2, l2), Input::new(s3, l3));
        with_float!(s1.dtype(), O::NAME, T => into_storage(self.0.cpu::<T>(a, b, c)?))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<CudaOutput> {
        self.0.cuda(
            CudaInput { storage: s1, layout: l1 },
            CudaInput { storage: s2, layout: l2 },
            CudaInput { storage: s3, layout: l3 },
        )
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.0.bwd(a, b, c, y, &dy.contiguous()?)
    }
}
