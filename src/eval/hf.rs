//! Llama-family models loaded with candle-transformers (`keel eval --hf-model`). STUB: being written.

use super::LanguageModel;
use anyhow::Result;
use candle_core::Device;

/// Loads `spec` (a local folder, or ORG/NAME from the hub cache) as a scorer.
pub fn load(spec: &str, device: &Device) -> Result<Box<dyn LanguageModel>> {
    let _ = device;
    anyhow::bail!("--hf-model {spec}: not implemented yet")
}
