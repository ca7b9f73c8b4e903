//! `--device cpu|cuda[:N]|metal|auto` to a Candle device, with a clear error when the backend
//! was not compiled in. Without an ordinal, the ranks of a data-parallel job on one node take one
//! device each (their local rank).

use crate::InputError;
use candle_core::Device;

pub fn parse(spec: &str) -> Result<Device, InputError> {
    let spec = spec.trim().to_ascii_lowercase();
    let (kind, ordinal) = match spec.split_once(':') {
        Some((k, n)) => {
            let n = n
                .parse::<usize>()
                .map_err(|_| InputError(format!("device `{spec}`: `{n}` is not a device number; write e.g. cuda:0")))?;
            (k.to_string(), n)
        }
        // A data-parallel job's ranks on one node take one GPU each: `cuda` is cuda:LOCAL_RANK.
        None => (spec.clone(), crate::dist::local_rank()),
    };
    match kind.as_str() {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(ordinal),
        "metal" => metal(ordinal),
        "auto" => Ok(if cfg!(feature = "cuda") {
            cuda(0).unwrap_or(Device::Cpu)
        } else if cfg!(feature = "metal") {
            metal(0).unwrap_or(Device::Cpu)
        } else {
            Device::Cpu
        }),
        _ => Err(InputError(format!("unknown device `{spec}`: use cpu, cuda, cuda:N, metal or auto"))),
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device, InputError> {
    Device::new_cuda(ordinal).map_err(|e| {
        InputError(format!("cannot open CUDA device {ordinal}: {e}\n  check `nvidia-smi`, or use --device cpu"))
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize) -> Result<Device, InputError> {
    Err(InputError("this keel was built without CUDA support\n  rebuild with `cargo build --release --features cuda`, or use --device cpu".into()))
}

#[cfg(feature = "metal")]
fn metal(ordinal: usize) -> Result<Device, InputError> {
    Device::new_metal(ordinal)
        .map_err(|e| InputError(format!("cannot open Metal device {ordinal}: {e}\n  use --device cpu")))
}

#[cfg(not(feature = "metal"))]
fn metal(_ordinal: usize) -> Result<Device, InputError> {
    Err(InputError("this keel was built without Metal support\n  rebuild with `cargo build --release --features metal`, or use --device cpu".into()))
}

/// A short name for provenance and summaries.
pub fn name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert!(parse("cpu").unwrap().is_cpu());
        assert!(parse("auto").is_ok());
        assert!(parse("gpu").unwrap_err().0.contains("unknown device"));
        assert!(parse("cuda:x").unwrap_err().0.contains("device number"));
        #[cfg(not(feature = "cuda"))]
        assert!(parse("cuda").unwrap_err().0.contains("--features cuda"));
    }
}
