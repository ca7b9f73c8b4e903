//! The switch between the two implementations of every op.

/// Which implementation the model's ops use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    Fused,
    Composite,
}

impl Kernels {
    /// Fused kernels exist for CPU tensors in f32/f64.
    pub fn for_device(device: &candle_core::Device) -> Self {
        if device.is_cpu() {
            Kernels::Fused
        } else {
            Kernels::Composite
        }
    }
}
