//! RoPE's (cos, sin) tables, computed once per model in f64 and rounded to f32 for the f32 kernels
//! (and, with `--features cuda`, copied once to each CUDA device that asks for them).

use candle_core::{DType, Result, Tensor};

/// Rotary position embedding, non-interleaved ("rotate half", as Llama): for a head vector x of
/// size D, with x1 = x[..D/2], x2 = x[D/2..] and angle t * theta^(-2i/D),
/// rope(x) = [x1 cos - x2 sin, x2 cos + x1 sin].
#[derive(Debug, Clone)]
pub struct Rope {
    pub seq_len: usize,
    pub head_dim: usize,
    /// (T, D/2) row-major.
    pub cos: Vec<f64>,
    pub sin: Vec<f64>,
    /// The same tables rounded to f32, for the f32 kernels.
    pub(super) cos_f32: Vec<f32>,
    pub(super) sin_f32: Vec<f32>,
    /// Device copies of the f32 tables, one per CUDA device, uploaded on first use and shared by
    /// every clone (one Rope serves all layers: no host-to-device copy per attention call).
    #[cfg(feature = "cuda")]
    device_tables: std::sync::Arc<std::sync::Mutex<Vec<(candle_core::cuda_backend::DeviceId, DeviceTables)>>>,
    /// The whole tables as (seq_len, D/2) tensors, one pair per dtype and device asked for, made on
    /// first use: incremental decoding asks for one row per layer and step.
    tensor_tables: std::sync::Arc<std::sync::Mutex<Vec<TensorTables>>>,
}

/// The (cos, sin) tables as tensors of one dtype on one device.
type TensorTables = (DType, candle_core::Device, Tensor, Tensor);

/// The f32 (cos, sin) tables on one CUDA device, each (seq_len, D/2) row-major.
#[cfg(feature = "cuda")]
pub(super) type DeviceTables = std::sync::Arc<(candle_core::CudaStorage, candle_core::CudaStorage)>;

impl Rope {
    pub fn new(seq_len: usize, head_dim: usize, theta: f64) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(seq_len * half);
        let mut sin = Vec::with_capacity(seq_len * half);
        for t in 0..seq_len {
            for i in 0..half {
                let freq = theta.powf(-(2.0 * i as f64) / head_dim as f64);
                let a = t as f64 * freq;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos_f32 = cos.iter().map(|&v| v as f32).collect();
        let sin_f32 = sin.iter().map(|&v| v as f32).collect();
        Rope {
            seq_len,
            head_dim,
            cos,
            sin,
            cos_f32,
            sin_f32,
            #[cfg(feature = "cuda")]
            device_tables: Default::default(),
            tensor_tables: Default::default(),
        }
    }

    /// The f32 tables on `dev`, copied there by the first call for that device.
    #[cfg(feature = "cuda")]
    pub(super) fn cuda_tables(&self, dev: &candle_core::cuda_backend::CudaDevice) -> Result<DeviceTables> {
        use candle_core::CudaStorage;
        let mut cache = self.device_tables.lock().expect("rope's device tables");
        if let Some((_, tables)) = cache.iter().find(|(id, _)| *id == dev.id()) {
            return Ok(tables.clone());
        }
        if self.cos_f32.is_empty() {
            candle_core::bail!("keel rope: empty tables (seq_len {}, head_dim {})", self.seq_len, self.head_dim);
        }
        let upload =
            |v: &[f32]| -> Result<CudaStorage> { Ok(CudaStorage::wrap_cuda_slice(dev.clone_htod(v)?, dev.clone())) };
        let tables = std::sync::Arc::new((upload(&self.cos_f32)?, upload(&self.sin_f32)?));
        cache.push((dev.id(), tables.clone()));
        Ok(tables)
    }

    /// The tables as (T, D/2) tensors, for the composite path.
    pub fn tensors(&self, t: usize, dtype: DType, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        self.tensors_at(0, t, dtype, device)
    }

    /// The rows of positions `start..start + t` as (t, D/2) tensors (incremental decoding).
    pub fn tensors_at(
        &self,
        start: usize,
        t: usize,
        dtype: DType,
        device: &candle_core::Device,
    ) -> Result<(Tensor, Tensor)> {
        if start + t > self.seq_len {
            candle_core::bail!(
                "RoPE has angles for {} positions; positions {start}..{} asked for",
                self.seq_len,
                start + t
            );
        }
        let mut tables = self.tensor_tables.lock().expect("rope's tensor tables");
        let found = tables.iter().find(|(dt, dev, _, _)| *dt == dtype && dev.same_device(device));
        let (cos, sin) = match found {
            Some((_, _, cos, sin)) => (cos.clone(), sin.clone()),
            None => {
                let shape = (self.seq_len, self.head_dim / 2);
                let cpu = &candle_core::Device::Cpu;
                let cos = Tensor::from_slice(&self.cos, shape, cpu)?.to_dtype(dtype)?.to_device(device)?;
                let sin = Tensor::from_slice(&self.sin, shape, cpu)?.to_dtype(dtype)?.to_device(device)?;
                tables.push((dtype, device.clone(), cos.clone(), sin.clone()));
                (cos, sin)
            }
        };
        Ok((cos.narrow(0, start, t)?, sin.narrow(0, start, t)?))
    }
}
