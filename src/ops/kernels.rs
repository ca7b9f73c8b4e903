//! The switch between the two implementations of every op.

use candle_core::{DType, Device};

/// Which implementation the model's ops use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// keel's own kernels: CustomOps with hand-written backward, on the CPU (f32/f64) and on CUDA
    /// (f32/bf16, the sources in `src/ops/cuda/`).
    Fused,
    /// Stock Candle ops, differentiable end to end: the reference, and the path on Metal.
    Composite,
}

/// `train.kernels`: the user's choice, resolved per device by [`Kernels::resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelChoice {
    /// keel's fused kernels where they exist for the device and dtype (CPU f32/f64, CUDA f32 and
    /// bf16), the composite ops elsewhere (Metal, f64 on CUDA).
    #[default]
    Fused,
    /// Candle's composite ops everywhere: to isolate a wrong kernel, or to time both in one sitting.
    Composite,
}

impl KernelChoice {
    /// The config's spelling.
    pub fn name(self) -> &'static str {
        match self {
            KernelChoice::Fused => "fused",
            KernelChoice::Composite => "composite",
        }
    }
}

impl Kernels {
    /// The default choice ([`KernelChoice::Fused`]) on `device` for f32 parameters.
    pub fn for_device(device: &Device) -> Self {
        Kernels::resolve(KernelChoice::Fused, device, DType::F32)
    }

    /// What `choice` means on `device` for parameters of `dtype`.
    pub fn resolve(choice: KernelChoice, device: &Device, dtype: DType) -> Self {
        match choice {
            KernelChoice::Composite => Kernels::Composite,
            KernelChoice::Fused if device.is_cpu() => Kernels::Fused,
            KernelChoice::Fused if device.is_cuda() && cfg!(feature = "cuda") && dtype != DType::F64 => Kernels::Fused,
            KernelChoice::Fused => Kernels::Composite,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_resolves_per_device() {
        let cpu = Device::Cpu;
        assert_eq!(Kernels::resolve(KernelChoice::Fused, &cpu, DType::F64), Kernels::Fused);
        assert_eq!(Kernels::resolve(KernelChoice::Composite, &cpu, DType::F32), Kernels::Composite);
        assert_eq!(Kernels::for_device(&cpu), Kernels::Fused);
    }
}
