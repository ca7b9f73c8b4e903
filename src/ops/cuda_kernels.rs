//! The CUDA kernel sources and how they become loaded modules: one home for the `.cu` files in
//! `src/ops/cuda/`, the NVRTC options, the `KEEL_CUDA_KERNELS` override and the compile cache.
//!
//! A module is `prelude.cuh` followed by one kernel file (`rms_norm.cu`, ...), compiled at run
//! time by NVRTC for the GPU's own architecture (`-arch=sm_XY`, straight to a cubin: no PTX for
//! the driver to JIT, so no PTX-version mismatch between NVRTC and the driver). Compiled cubins
//! are cached on disk per architecture, keyed by a hash of the source, options and NVRTC version
//! (`KEEL_CUDA_CACHE`, default `$XDG_CACHE_HOME/keel/cuda` or `~/.cache/keel/cuda`).
//!
//! `KEEL_CUDA_KERNELS=DIR` replaces the built-in sources by `DIR/prelude.cuh` and `DIR/<module>.cu`
//! wherever those files exist, so a kernel fixed on a GPU machine runs without a Rust rebuild:
//! `cp -r src/ops/cuda /tmp/k; $EDITOR /tmp/k/attention.cu; KEEL_CUDA_KERNELS=/tmp/k keel bench ...`.
//!
//! The same sources and options are compiled in CI without a GPU (scripts/cuda_kernels_check.py:
//! NVRTC for compute_80 and compute_90, then `ptxas -v` for registers, shared memory and spills),
//! and checked against PyTorch on a GPU machine by CuPy (scripts/cuda_check/).

use std::path::{Path, PathBuf};

/// The environment variable naming a folder of kernel sources that replace the built-in ones.
pub const KERNELS_ENV: &str = "KEEL_CUDA_KERNELS";
/// The environment variable naming the compiled-kernel cache folder (`off` disables it).
pub const CACHE_ENV: &str = "KEEL_CUDA_CACHE";

/// Prepended to every module.
pub const PRELUDE: &str = include_str!("cuda/prelude.cuh");
/// NVRTC options, one per line ('#' comments), shared with the CI and CuPy checks.
pub const NVRTC_OPTIONS: &str = include_str!("cuda/nvrtc-options.txt");

/// One kernel module: a `.cu` file of `src/ops/cuda/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Module {
    RmsNorm,
    LayerNorm,
    SwiGlu,
    Gelu,
    CrossEntropy,
    Attention,
    AttentionMma,
    AdamW,
}

impl Module {
    pub const ALL: [Module; 8] = [
        Module::RmsNorm,
        Module::LayerNorm,
        Module::SwiGlu,
        Module::Gelu,
        Module::CrossEntropy,
        Module::Attention,
        Module::AttentionMma,
        Module::AdamW,
    ];

    /// The file stem: `src/ops/cuda/<name>.cu`.
    pub fn name(self) -> &'static str {
        match self {
            Module::RmsNorm => "rms_norm",
            Module::LayerNorm => "layer_norm",
            Module::SwiGlu => "swiglu",
            Module::Gelu => "gelu",
            Module::CrossEntropy => "cross_entropy",
            Module::Attention => "attention",
            Module::AttentionMma => "attention_mma",
            Module::AdamW => "adamw",
        }
    }

    /// The built-in source (without the prelude).
    pub fn builtin(self) -> &'static str {
        match self {
            Module::RmsNorm => include_str!("cuda/rms_norm.cu"),
            Module::LayerNorm => include_str!("cuda/layer_norm.cu"),
            Module::SwiGlu => include_str!("cuda/swiglu.cu"),
            Module::Gelu => include_str!("cuda/gelu.cu"),
            Module::CrossEntropy => include_str!("cuda/cross_entropy.cu"),
            Module::Attention => include_str!("cuda/attention.cu"),
            Module::AttentionMma => include_str!("cuda/attention_mma.cu"),
            Module::AdamW => include_str!("cuda/adamw.cu"),
        }
    }
}

/// The NVRTC options of [`NVRTC_OPTIONS`], without comments and blank lines.
pub fn nvrtc_options() -> Vec<String> {
    NVRTC_OPTIONS
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Where a module's source came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    BuiltIn,
    /// The files read from the `KEEL_CUDA_KERNELS` folder (prelude and/or kernel file).
    Override(Vec<PathBuf>),
}

/// A module's full source (prelude + kernel file) and where it came from.
#[derive(Debug, Clone)]
pub struct Source {
    pub module: Module,
    pub text: String,
    pub origin: Origin,
}

/// Errors in finding or compiling kernel sources.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{var}={dir} is not a folder: point it at a copy of src/ops/cuda (cp -r src/ops/cuda DIR), or unset it")]
    NotAFolder { var: &'static str, dir: String },
    #[error("cannot read {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error(
        "NVRTC could not compile the CUDA module {module} ({origin}) for {arch}:\n{log}\n\
         Fix the source (a copy of src/ops/cuda named by {var}=DIR is read without a rebuild), or run with \
         train.kernels=composite"
    )]
    Compile { module: &'static str, origin: String, arch: String, log: String, var: &'static str },
}

impl Source {
    /// The module's source: the built-in one, or the override folder's files where they exist.
    pub fn load(module: Module, override_dir: Option<&Path>) -> Result<Source, KernelError> {
        let Some(dir) = override_dir else {
            return Ok(Source { module, text: join(PRELUDE, module.builtin()), origin: Origin::BuiltIn });
        };
        if !dir.is_dir() {
            return Err(KernelError::NotAFolder { var: KERNELS_ENV, dir: dir.display().to_string() });
        }
        let mut read_from = Vec::new();
        let mut read = |file: String, builtin: &'static str| -> Result<String, KernelError> {
            let path = dir.join(file);
            if !path.exists() {
                return Ok(builtin.to_string());
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|err| KernelError::Read { path: path.display().to_string(), err })?;
            read_from.push(path);
            Ok(text)
        };
        let prelude = read("prelude.cuh".into(), PRELUDE)?;
        let kernel = read(format!("{}.cu", module.name()), module.builtin())?;
        let origin = if read_from.is_empty() { Origin::BuiltIn } else { Origin::Override(read_from) };
        Ok(Source { module, text: join(&prelude, &kernel), origin })
    }

    /// [`Source::load`] with the folder from `KEEL_CUDA_KERNELS`, if set.
    pub fn from_env(module: Module) -> Result<Source, KernelError> {
        let dir = std::env::var_os(KERNELS_ENV).filter(|d| !d.is_empty()).map(PathBuf::from);
        Source::load(module, dir.as_deref())
    }

    pub fn origin_text(&self) -> String {
        match &self.origin {
            Origin::BuiltIn => format!("built-in src/ops/cuda/{}.cu", self.module.name()),
            Origin::Override(paths) => paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" + "),
        }
    }
}

/// A module as NVRTC sees it: the prelude, a newline, the kernel file.
fn join(prelude: &str, kernel: &str) -> String {
    format!("{prelude}\n{kernel}")
}

/// The folder of compiled cubins, or `None` when caching is off or no home is known.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os(CACHE_ENV) {
        Some(v) if v == "off" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("keel").join("cuda")),
    }
}

/// The cache file of a module compiled for `arch` with `options` by NVRTC `nvrtc_version`.
pub fn cache_file(dir: &Path, source: &Source, arch: &str, options: &[String], nvrtc_version: (i32, i32)) -> PathBuf {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(source.text.as_bytes());
    for o in options {
        h.update([0u8]);
        h.update(o.as_bytes());
    }
    h.update(format!("\0{arch}\0{}.{}", nvrtc_version.0, nvrtc_version.1).as_bytes());
    let hex: String = h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{}-{arch}-{hex}.cubin", source.module.name()))
}

/// The run-time side: NVRTC, the module cache and launches. Built only with `--features cuda`.
#[cfg(feature = "cuda")]
pub mod runtime {
    use super::{cache_dir, cache_file, nvrtc_options, KernelError, Module, Source, KERNELS_ENV};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaModule, LaunchConfig};
    use candle_core::cuda_backend::cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys, Ptx};
    use candle_core::cuda_backend::{CudaDevice, DeviceId};
    use candle_core::{CudaStorage, DType, Layout, Result};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    type Loaded = HashMap<(DeviceId, Module), Arc<CudaModule>>;

    fn loaded() -> &'static Mutex<Loaded> {
        static LOADED: OnceLock<Mutex<Loaded>> = OnceLock::new();
        LOADED.get_or_init(|| Mutex::new(HashMap::new()))
    }

    fn err(e: impl std::fmt::Display) -> candle_core::Error {
        candle_core::Error::Cuda(e.to_string().into())
    }

    /// The device's compute capability (major, minor): (9, 0) for an H100.
    pub fn compute_capability(dev: &CudaDevice) -> Result<(i32, i32)> {
        dev.cuda_stream().context().compute_capability().map_err(err)
    }

    /// The device's architecture as NVRTC spells a real target: `sm_90` for an H100.
    pub fn arch(dev: &CudaDevice) -> Result<String> {
        let (major, minor) = compute_capability(dev)?;
        Ok(format!("sm_{major}{minor}"))
    }

    /// The NVRTC options of a compile for `arch`: the shared list, then `-arch=`.
    fn options_for(arch: &str) -> Vec<String> {
        let mut options = nvrtc_options();
        options.push(format!("-arch={arch}"));
        options
    }

    fn nvrtc_version() -> (i32, i32) {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: plain out-parameters.
        unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
        (major, minor)
    }

    /// Compiles a module to a cubin for `arch` (`sm_XY`) with NVRTC.
    pub fn compile_cubin(source: &Source, arch: &str) -> std::result::Result<Vec<u8>, KernelError> {
        let options = options_for(arch);
        let fail = |log: String| KernelError::Compile {
            module: source.module.name(),
            origin: source.origin_text(),
            arch: arch.into(),
            log,
            var: KERNELS_ENV,
        };
        let src = std::ffi::CString::new(source.text.as_bytes())
            .map_err(|_| fail("the source contains a NUL byte".into()))?;
        let name = std::ffi::CString::new(format!("{}.cu", source.module.name())).expect("no NUL");
        let prog = nvrtc::create_program(&src, Some(&name)).map_err(|e| fail(format!("{e:?}")))?;
        // SAFETY: `prog` was created above and is destroyed once, at the end.
        let out = unsafe {
            let compiled = nvrtc::compile_program(prog, &options);
            let log = nvrtc::get_program_log(prog)
                .map(|l| std::ffi::CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned())
                .unwrap_or_default();
            match compiled {
                Err(e) => Err(fail(format!("{e:?}\n{log}"))),
                Ok(()) => {
                    let mut size = 0usize;
                    let r = nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size);
                    if r != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
                        Err(fail(format!("no cubin ({r:?}); NVRTC log:\n{log}")))
                    } else {
                        let mut cubin = vec![0u8; size];
                        let r = nvrtc_sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut std::ffi::c_char);
                        if r != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
                            Err(fail(format!("nvrtcGetCUBIN: {r:?}")))
                        } else {
                            Ok(cubin)
                        }
                    }
                }
            }
        };
        // SAFETY: created above, not destroyed before.
        let _ = unsafe { nvrtc::destroy_program(prog) };
        out
    }

    /// The module loaded on `dev`: from this process's table, the disk cache, or NVRTC.
    pub fn module(dev: &CudaDevice, m: Module) -> Result<Arc<CudaModule>> {
        let key = (dev.id(), m);
        if let Some(md) = loaded().lock().expect("kernel table").get(&key) {
            return Ok(md.clone());
        }
        let source = Source::from_env(m).map_err(err)?;
        let arch = arch(dev)?;
        let cached = cache_dir().map(|d| cache_file(&d, &source, &arch, &options_for(&arch), nvrtc_version()));
        let cubin = match cached.as_ref().and_then(|f| std::fs::read(f).ok()) {
            Some(bytes) => bytes,
            None => {
                let bytes = compile_cubin(&source, &arch).map_err(err)?;
                if let Some(file) = &cached {
                    // Best effort: a read-only cache only costs a recompile next time.
                    if let Some(parent) = file.parent() {
                        let _ = std::fs::create_dir_all(parent);
                    }
                    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
                    if std::fs::write(&tmp, &bytes).is_ok() {
                        let _ = std::fs::rename(&tmp, file);
                    }
                }
                bytes
            }
        };
        let md = dev.cuda_stream().context().load_module(Ptx::from_binary(cubin)).map_err(err)?;
        loaded().lock().expect("kernel table").insert(key, md.clone());
        Ok(md)
    }

    /// Kernel `name` of module `m` on `dev`, e.g. `function(dev, Module::RmsNorm, "keel_rms_norm_fwd_f32")`.
    pub fn function(dev: &CudaDevice, m: Module, name: &str) -> Result<CudaFunction> {
        module(dev, m)?.load_function(name).map_err(|e| {
            err(format!("CUDA module {} has no kernel {name} ({e:?}); check its source (or {KERNELS_ENV})", m.name()))
        })
    }

    /// The suffix of the kernels for a storage dtype: `f32` or `bf16`.
    pub fn dtype_suffix(dtype: DType, op: &str) -> Result<&'static str> {
        match dtype {
            DType::F32 => Ok("f32"),
            DType::BF16 => Ok("bf16"),
            dt => candle_core::bail!(
                "{op}: keel's CUDA kernels take f32 or bf16, not {dt:?} (train.kernels=composite runs other dtypes)"
            ),
        }
    }

    /// A launch of `blocks` blocks of `threads` threads with `shared` bytes of dynamic shared memory.
    pub fn grid(blocks: (u32, u32, u32), threads: u32, shared: u32) -> LaunchConfig {
        LaunchConfig { grid_dim: blocks, block_dim: (threads, 1, 1), shared_mem_bytes: shared }
    }

    /// One kernel argument. Tensors travel as device addresses, so one launch call serves every
    /// storage dtype; the kernel's name (`_f32`, `_bf16`) says how it reads them.
    #[derive(Debug, Clone, Copy)]
    pub enum Arg {
        Ptr(u64),
        I32(i32),
        I64(i64),
        F32(f32),
    }

    /// The device address of a CUDA storage's element `offset` (any dtype candle stores).
    pub fn address_at(s: &CudaStorage, offset: usize) -> Result<u64> {
        use candle_core::cuda_backend::cudarc::driver::DevicePtr;
        use candle_core::cuda_backend::CudaStorageSlice as S;
        let stream = s.device.cuda_stream();
        macro_rules! addr {
            ($sl:expr, $t:ty) => {{
                let (p, _sync) = $sl.device_ptr(&stream);
                p + (offset * std::mem::size_of::<$t>()) as u64
            }};
        }
        Ok(match &s.slice {
            S::F32(sl) => addr!(sl, f32),
            S::BF16(sl) => addr!(sl, u16),
            S::F16(sl) => addr!(sl, u16),
            S::F64(sl) => addr!(sl, f64),
            S::U32(sl) => addr!(sl, u32),
            S::I32(sl) => addr!(sl, i32),
            S::I64(sl) => addr!(sl, i64),
            S::U8(sl) => addr!(sl, u8),
            _ => candle_core::bail!("keel CUDA kernels: unsupported storage dtype {:?}", s.dtype()),
        })
    }

    /// The address of a contiguous input's first element.
    pub fn address(s: &CudaStorage, l: &Layout, op: &str) -> Result<u64> {
        match l.contiguous_offsets() {
            Some((a, _)) => address_at(s, a),
            None => candle_core::bail!("{op}: input must be contiguous"),
        }
    }

    /// `n` uninitialized elements of `dtype` on `dev` (the kernel writes all of them) and their address.
    pub fn alloc(dev: &CudaDevice, dtype: DType, n: usize) -> Result<(CudaStorage, u64)> {
        // SAFETY: every caller launches a kernel that writes all n elements before any read.
        let s = unsafe {
            match dtype {
                DType::F32 => CudaStorage::wrap_cuda_slice(dev.alloc::<f32>(n)?, dev.clone()),
                DType::BF16 => CudaStorage::wrap_cuda_slice(dev.alloc::<half::bf16>(n)?, dev.clone()),
                DType::U32 => CudaStorage::wrap_cuda_slice(dev.alloc::<u32>(n)?, dev.clone()),
                dt => candle_core::bail!("keel CUDA kernels: cannot allocate {dt:?}"),
            }
        };
        let a = address_at(&s, 0)?;
        Ok((s, a))
    }

    /// Launches kernel `name` of module `m` on Candle's stream of `dev`.
    pub fn launch(dev: &CudaDevice, m: Module, name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        let f = function(dev, m, name)?;
        if cfg.shared_mem_bytes > 48 * 1024 {
            use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum as A;
            f.set_attribute(A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, cfg.shared_mem_bytes as i32)
                .map_err(err)?;
        }
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        for a in args {
            match a {
                Arg::Ptr(p) => b.arg(p),
                Arg::I32(v) => b.arg(v),
                Arg::I64(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
            };
        }
        // SAFETY: the argument list matches the kernel's signature (each module's Rust caller and
        // its .cu file are written together, and scripts/cuda_check runs the same kernels).
        unsafe { b.launch(cfg) }.map_err(|e| err(format!("launching {name} ({} module): {e:?}", m.name())))?;
        Ok(())
    }

    /// Threads per block of the grid-stride elementwise kernels (GELU_THREADS of gelu.cu,
    /// SWIGLU_THREADS of swiglu.cu).
    const ELEMENTWISE_THREADS: u32 = 256;
    /// Their grid cap: grid-stride kernels cover all elements with any grid.
    const ELEMENTWISE_MAX_BLOCKS: usize = 8192;

    /// Launches a grid-stride elementwise kernel (gelu.cu, swiglu.cu) over `units` elements (or
    /// output columns), four a thread on the vector path: ceil(units / 1024) blocks of 256
    /// threads, at most 8192. Nothing to launch when `units` is 0.
    pub fn launch_elementwise(dev: &CudaDevice, m: Module, name: &str, units: usize, args: &[Arg]) -> Result<()> {
        if units == 0 {
            return Ok(());
        }
        let blocks = units.div_ceil(4 * ELEMENTWISE_THREADS as usize).clamp(1, ELEMENTWISE_MAX_BLOCKS) as u32;
        launch(dev, m, name, grid((blocks, 1, 1), ELEMENTWISE_THREADS, 0), args)
    }

    /// The device's multiprocessor count (132, an H100's, when the driver does not say).
    pub fn multiprocessors(dev: &CudaDevice) -> usize {
        use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute as A;
        let n = dev.cuda_stream().context().attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
        n.ok().filter(|&n| n > 0).map_or(132, |n| n as usize)
    }

    /// The launches of the row-wise norms, rms_norm.cu and layer_norm.cu, which split rows the
    /// same way and share their backward's argument list and its partials reduction: one pass
    /// over an (N, C) input of storage suffix `sfx` in module `module`.
    pub struct RowNorm<'a> {
        pub dev: &'a CudaDevice,
        pub module: Module,
        pub sfx: &'static str,
        pub n: usize,
        pub c: usize,
        pub alpha: f64,
        pub eps: f64,
    }

    /// How rows are spread over a block: `warp` mode gives each of the block's `threads / 32`
    /// warps its own row (C <= 512, where a warp has at most 16 columns per lane); block mode
    /// gives the whole block one row, about 16 columns per thread.
    struct RowPlan {
        warp: bool,
        threads: u32,
        /// Rows a block works on at once: its accumulators of the parameter gradients (C floats
        /// per parameter each) in shared memory.
        groups: usize,
    }

    impl RowNorm<'_> {
        fn plan(&self) -> RowPlan {
            if self.c <= 512 {
                RowPlan { warp: true, threads: 256, groups: 8 }
            } else {
                let threads = (self.c.div_ceil(16).div_ceil(32) * 32).clamp(64, 512) as u32;
                RowPlan { warp: false, threads, groups: 1 }
            }
        }

        /// The arguments after the pointers: n, C, alpha, eps, warp mode.
        fn tail(&self, p: &RowPlan) -> [Arg; 5] {
            [
                Arg::I32(self.n as i32),
                Arg::I32(self.c as i32),
                Arg::F32(self.alpha as f32),
                Arg::F32(self.eps as f32),
                Arg::I32(p.warp as i32),
            ]
        }

        /// `keel_<module>_fwd_<sfx>` with `ptrs` (x, f or 0, the parameters, y) then the tail.
        pub fn fwd(&self, ptrs: &[u64]) -> Result<()> {
            let p = self.plan();
            let blocks = self.n.div_ceil(p.groups).clamp(1, i32::MAX as usize) as u32;
            let mut args: Vec<Arg> = ptrs.iter().map(|&a| Arg::Ptr(a)).collect();
            args.extend(self.tail(&p));
            let name = format!("keel_{}_fwd_{}", self.module.name(), self.sfx);
            launch(self.dev, self.module, &name, grid((blocks, 1, 1), p.threads, 0), &args)
        }

        /// `keel_<module>_bwd_<sfx>` over `ptrs` = [x, f or 0, gamma, dy, dx, df or 0], writing
        /// per-block partials of `params` C-wide gradient rows (1: dgamma, 2: [dgamma ; dbeta]),
        /// then `keel_<module>_<reduce>_<sfx>` summing them into the params * C elements at `out`.
        pub fn bwd(&self, op: &str, ptrs: [u64; 6], params: usize, reduce: &str, out: u64) -> Result<()> {
            let (n, c, w) = (self.n, self.c, params * self.c);
            let p = self.plan();
            // Enough blocks to fill the device, no more: each adds a row of partials to sum.
            let per_sm = (2048 / p.threads as usize).clamp(1, 32);
            let blocks = n.div_ceil(p.groups).min(multiprocessors(self.dev) * per_sm).max(1);
            let shared = p.groups * w * 4;
            if shared > 160 * 1024 {
                candle_core::bail!("{op}: C = {c} is too wide for the CUDA kernel (train.kernels=composite runs it)")
            }
            // Every element is written by the backward kernel (blocks without rows write zeros).
            let (partial, pa) = alloc(self.dev, DType::F32, blocks * w)?;
            let mut args: Vec<Arg> = ptrs.iter().map(|&a| Arg::Ptr(a)).collect();
            args.push(Arg::Ptr(pa));
            args.extend(self.tail(&p));
            let (m, sfx) = (self.module, self.sfx);
            launch(
                self.dev,
                m,
                &format!("keel_{}_bwd_{sfx}", m.name()),
                grid((blocks as u32, 1, 1), p.threads, shared as u32),
                &args,
            )?;
            launch(
                self.dev,
                m,
                &format!("keel_{}_{reduce}_{sfx}", m.name()),
                grid((w.div_ceil(32) as u32, 1, 1), 1024, 0),
                &[Arg::Ptr(pa), Arg::Ptr(out), Arg::I32(blocks as i32), Arg::I32(w as i32)],
            )?;
            // Freed in stream order, after the kernels that use it.
            drop(partial);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cu_file_is_a_module_and_every_module_has_its_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ops/cuda");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".cu").map(String::from)
            })
            .collect();
        files.sort();
        let mut modules: Vec<String> = Module::ALL.iter().map(|m| m.name().to_string()).collect();
        modules.sort();
        assert_eq!(files, modules);
        for m in Module::ALL {
            let on_disk = std::fs::read_to_string(dir.join(format!("{}.cu", m.name()))).unwrap();
            assert_eq!(on_disk, m.builtin(), "{} is not the file it names", m.name());
        }
    }

    #[test]
    fn options_parse_without_comments() {
        let o = nvrtc_options();
        assert!(o.contains(&"--std=c++17".to_string()), "{o:?}");
        assert!(o.iter().all(|l| !l.starts_with('#') && !l.is_empty() && !l.contains("-arch")), "{o:?}");
    }

    #[test]
    fn override_folder_replaces_only_the_files_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let built = Source::load(Module::SwiGlu, None).unwrap();
        assert_eq!(built.origin, Origin::BuiltIn);
        assert!(built.text.starts_with(PRELUDE));
        // An empty folder changes nothing.
        let same = Source::load(Module::SwiGlu, Some(dir.path())).unwrap();
        assert_eq!(same.text, built.text);
        assert_eq!(same.origin, Origin::BuiltIn);
        std::fs::write(dir.path().join("swiglu.cu"), "// edited\n").unwrap();
        let edited = Source::load(Module::SwiGlu, Some(dir.path())).unwrap();
        assert_eq!(edited.text, format!("{PRELUDE}\n// edited\n"));
        assert_eq!(edited.origin, Origin::Override(vec![dir.path().join("swiglu.cu")]));
        // Other modules still read the built-in kernel file.
        assert_eq!(
            Source::load(Module::Gelu, Some(dir.path())).unwrap().text,
            Source::load(Module::Gelu, None).unwrap().text
        );
        let missing = Source::load(Module::Gelu, Some(&dir.path().join("nope"))).unwrap_err();
        assert!(missing.to_string().contains("is not a folder"), "{missing}");
    }

    #[test]
    fn cache_key_follows_source_arch_options_and_nvrtc() {
        let dir = Path::new("/cache");
        let s = Source::load(Module::RmsNorm, None).unwrap();
        let o = nvrtc_options();
        let a = cache_file(dir, &s, "sm_90", &o, (13, 0));
        assert!(a.file_name().unwrap().to_str().unwrap().starts_with("rms_norm-sm_90-"));
        assert_eq!(a, cache_file(dir, &s, "sm_90", &o, (13, 0)));
        assert_ne!(a, cache_file(dir, &s, "sm_80", &o, (13, 0)));
        assert_ne!(a, cache_file(dir, &s, "sm_90", &o, (13, 1)));
        assert_ne!(a, cache_file(dir, &s, "sm_90", &o[1..], (13, 0)));
        let mut edited = s.clone();
        edited.text.push(' ');
        assert_ne!(a, cache_file(dir, &edited, "sm_90", &o, (13, 0)));
    }
}
