//! Data parallelism across processes: which rank this process is in a job started by `mpirun`
//! or `srun`, and the few collective operations training needs. The one home of MPI: nothing
//! else in keel calls it.
//!
//! A job of W ranks trains one experiment. Every rank draws the same global batch of B rows
//! (the batch the one-process run draws) and takes rows [r B/W, (r+1) B/W); gradients are summed
//! across ranks and divided by W before clipping, so every rank holds the same gradient and
//! takes the same optimizer step. Only rank 0 writes the run directory.
//!
//! Without a launcher, or with one process, [`world`] is a single rank and nothing here is
//! called. The MPI engine is the `mpi` cargo feature (it needs a system MPI: Debian's
//! `libopenmpi-dev openmpi-bin libclang-dev`).

use crate::InputError;
use std::sync::OnceLock;

/// This process's place in the job.
pub struct World {
    rank: usize,
    size: usize,
    engine: Engine,
}

enum Engine {
    Single,
    #[cfg(feature = "mpi")]
    Mpi(mpi_engine::Mpi),
}

static WORLD: OnceLock<World> = OnceLock::new();

/// The job this process belongs to: a single rank unless [`init`] found a launcher.
pub fn world() -> &'static World {
    WORLD.get_or_init(World::single)
}

/// Environment variables through which launchers tell a process the job's size, and its rank.
const LAUNCHERS: [(&str, &str); 3] = [
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"), // Open MPI's mpirun
    ("PMI_SIZE", "PMI_RANK"),                         // MPICH's mpiexec (Hydra), Intel MPI
    ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID"),         // srun
];

/// The (size, rank, variable) a launcher set, if any said more than one process.
fn launched() -> Option<(usize, usize, &'static str)> {
    LAUNCHERS.iter().find_map(|&(size, rank)| {
        let n: usize = std::env::var(size).ok()?.trim().parse().ok()?;
        let r: usize = std::env::var(rank).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        (n > 1).then_some((n, r, size))
    })
}

/// This process's rank among the job's ranks on its node (0 outside a job), from the launcher.
pub fn local_rank() -> usize {
    if world().size() == 1 {
        return 0;
    }
    ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
        .unwrap_or(0)
}

/// Joins the job the launcher started this process in (MPI), or stays a single rank. Called once,
/// before any command runs; refuses a multi-process launch of a build without MPI.
pub fn init() -> Result<(), InputError> {
    let Some((size, rank, var)) = launched() else {
        let _ = WORLD.set(World::single());
        return Ok(());
    };
    #[cfg(feature = "mpi")]
    {
        let engine = mpi_engine::Mpi::init()?;
        let (r, n) = (engine.rank(), engine.size());
        if (r, n) != (rank, size) {
            return Err(InputError(format!(
                "MPI says this is rank {r} of {n}, but {var} says {size} processes (rank {rank}): start keel with one launcher"
            )));
        }
        let _ = WORLD.set(World { rank, size, engine: Engine::Mpi(engine) });
        Ok(())
    }
    #[cfg(not(feature = "mpi"))]
    Err(InputError(format!(
        "keel was started as rank {rank} of {size} ({var}={size}), but this build has no MPI\n  build with the MPI engine: cargo build --release --features mpi (Debian: apt-get install libopenmpi-dev openmpi-bin libclang-dev), or start a single process"
    )))
}

/// Ends MPI cleanly (every rank must, or the launcher reports the job as failed). Idempotent.
pub fn finish() {
    #[cfg(feature = "mpi")]
    if let Some(World { engine: Engine::Mpi(m), .. }) = WORLD.get() {
        m.finalize();
    }
}

/// Ends the whole job after an error on this rank (the others would wait forever for it).
pub fn abort(code: i32) {
    #[cfg(feature = "mpi")]
    if let Some(World { engine: Engine::Mpi(m), .. }) = WORLD.get() {
        m.abort(code);
    }
    let _ = code;
}

/// `Err` unless the global batch splits evenly across this job's ranks.
pub fn check_batch(batch_size: usize) -> Result<(), InputError> {
    let n = world().size();
    check_batch_split(batch_size, n, &format!("the job's {n} ranks"))
}

/// `Err` unless a global batch of `batch_size` rows splits evenly across `ranks` processes
/// (`across` names them in the message): each takes batch_size / ranks rows.
pub fn check_batch_split(batch_size: usize, ranks: usize, across: &str) -> Result<(), InputError> {
    if !batch_size.is_multiple_of(ranks) {
        return Err(InputError(format!(
            "train.batch_size = {batch_size} does not split across {across}: each rank takes batch_size / {ranks} rows of the global batch\n  use a batch size divisible by {ranks} (train.grad_accum keeps the tokens per step), or start {} ranks",
            (1..=ranks).rev().find(|&d| batch_size.is_multiple_of(d)).unwrap_or(1)
        )));
    }
    Ok(())
}

impl World {
    fn single() -> World {
        World { rank: 0, size: 1, engine: Engine::Single }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Rank 0: the one that writes the run directory and speaks to the user.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// The rows [start, start + len) of a global batch of `batch` rows that this rank trains on.
    pub fn rows(&self, batch: usize) -> (usize, usize) {
        let len = batch / self.size;
        (self.rank * len, len)
    }

    /// Element-wise sum over ranks, in place (same result on every rank).
    pub fn sum_f32(&self, buf: &mut [f32]) {
        match &self.engine {
            Engine::Single => {
                let _ = buf;
            }
            #[cfg(feature = "mpi")]
            Engine::Mpi(m) => m.sum_f32(buf),
        }
    }

    /// Element-wise sum over ranks, in place (same result on every rank).
    pub fn sum_f64(&self, buf: &mut [f64]) {
        match &self.engine {
            Engine::Single => {
                let _ = buf;
            }
            #[cfg(feature = "mpi")]
            Engine::Mpi(m) => m.sum_f64(buf),
        }
    }

    /// True on every rank when `flag` is true on any (a stop request, an error).
    pub fn any(&self, flag: bool) -> bool {
        let mut v = [if flag { 1.0 } else { 0.0 }];
        self.sum_f64(&mut v);
        v[0] > 0.0
    }

    /// The element-wise mean over ranks of `t` (a flat gradient buffer), in `t`'s dtype and on its
    /// device: NCCL between GPUs with the `nccl` feature, else through the host and MPI.
    pub fn mean(&self, t: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        use candle_core::{DType, Tensor};
        if self.size == 1 {
            return Ok(t.clone());
        }
        let n = self.size as f64;
        #[cfg(feature = "nccl")]
        if let (candle_core::Device::Cuda(_), Engine::Mpi(m)) = (t.device(), &self.engine) {
            if matches!(t.dtype(), DType::F32 | DType::F64) {
                return nccl_engine::sum(m, self.rank, self.size, t)? / n;
            }
        }
        let device = t.device().clone();
        match t.dtype() {
            DType::F64 => {
                let mut v = t.to_vec1::<f64>()?;
                self.sum_f64(&mut v);
                v.iter_mut().for_each(|x| *x /= n);
                Tensor::from_vec(v, t.dims(), &device)
            }
            dt => {
                let mut v = t.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                self.sum_f32(&mut v);
                v.iter_mut().for_each(|x| *x /= n as f32);
                Tensor::from_vec(v, t.dims(), &device)?.to_dtype(dt)
            }
        }
    }

    /// Rank 0's bytes on every rank.
    pub fn broadcast(&self, bytes: Vec<u8>) -> Vec<u8> {
        match &self.engine {
            Engine::Single => bytes,
            #[cfg(feature = "mpi")]
            Engine::Mpi(m) => m.broadcast(bytes),
        }
    }

    /// `Err` on every rank, naming the first rank that differs, unless `what` is the same text on
    /// all of them (the binary, the data, the device: anything that must not differ).
    pub fn agree(&self, name: &str, what: &str) -> Result<(), InputError> {
        if self.size == 1 {
            return Ok(());
        }
        let root = String::from_utf8_lossy(&self.broadcast(what.as_bytes().to_vec())).into_owned();
        let differs = root != what;
        // Which ranks differ: one slot per rank, summed (job sizes are small).
        let mut slots = vec![0.0; self.size];
        if differs {
            slots[self.rank] = 1.0;
        }
        self.sum_f64(&mut slots);
        if let Some(first) = slots.iter().position(|&s| s > 0.0) {
            let mine = if differs { format!("\n  this rank ({}): {what}", self.rank) } else { String::new() };
            return Err(InputError(format!(
                "the ranks of this job differ in {name}: rank {first} has another than rank 0\n  rank 0: {root}{mine}\n  start every rank with the same keel binary, config and data"
            )));
        }
        Ok(())
    }
}

#[cfg(feature = "mpi")]
pub(crate) mod mpi_engine {
    use crate::InputError;
    use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
    use mpi::topology::{Communicator, SimpleCommunicator};
    use std::sync::Mutex;

    /// MPI, initialized with `Threading::Serialized`: keel calls it from whichever thread runs the
    /// command, one call at a time (the mutex).
    pub struct Mpi {
        state: Mutex<Option<(mpi::environment::Universe, SimpleCommunicator)>>,
        rank: usize,
        size: usize,
    }

    // The communicator is a handle into the MPI library, used under the mutex only.
    unsafe impl Send for Mpi {}
    unsafe impl Sync for Mpi {}

    impl Mpi {
        pub fn init() -> Result<Mpi, InputError> {
            let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Serialized)
                .ok_or_else(|| InputError("MPI could not be initialized (was it already?)".into()))?;
            let world = universe.world();
            let (rank, size) = (world.rank() as usize, world.size() as usize);
            Ok(Mpi { state: Mutex::new(Some((universe, world))), rank, size })
        }

        pub fn rank(&self) -> usize {
            self.rank
        }

        pub fn size(&self) -> usize {
            self.size
        }

        fn with<R>(&self, f: impl FnOnce(&SimpleCommunicator) -> R) -> R {
            let guard = self.state.lock().expect("MPI state");
            let (_, world) = guard.as_ref().expect("MPI used after finalize");
            f(world)
        }

        pub fn sum_f32(&self, buf: &mut [f32]) {
            let send = buf.to_vec();
            self.with(|w| w.all_reduce_into(&send[..], buf, SystemOperation::sum()));
        }

        pub fn sum_f64(&self, buf: &mut [f64]) {
            let send = buf.to_vec();
            self.with(|w| w.all_reduce_into(&send[..], buf, SystemOperation::sum()));
        }

        pub fn broadcast(&self, mut bytes: Vec<u8>) -> Vec<u8> {
            self.with(|w| {
                let root = w.process_at_rank(0);
                let mut len = [bytes.len() as u64];
                root.broadcast_into(&mut len[..]);
                bytes.resize(len[0] as usize, 0);
                root.broadcast_into(&mut bytes[..]);
            });
            bytes
        }

        pub fn abort(&self, code: i32) {
            if let Ok(guard) = self.state.lock() {
                if let Some((_, w)) = guard.as_ref() {
                    w.abort(code);
                }
            }
        }

        /// Drops the universe, which calls MPI_Finalize.
        pub fn finalize(&self) {
            if let Ok(mut guard) = self.state.lock() {
                guard.take();
            }
        }
    }
}

/// NCCL all-reduce between the GPUs of a job, bootstrapped through MPI as llm.c does: rank 0
/// makes the NCCL id, MPI broadcasts it, every rank joins the communicator on its own GPU.
#[cfg(feature = "nccl")]
mod nccl_engine {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
    use candle_core::cuda_backend::{CudaStorage, CudaStorageSlice};
    use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
    use std::sync::{Mutex, OnceLock};

    /// The communicator, made on the first GPU all-reduce (the GPU is chosen by then).
    struct Shared(Comm);
    // NCCL communicators are used from one thread at a time (the mutex).
    unsafe impl Send for Shared {}
    unsafe impl Sync for Shared {}
    static COMM: OnceLock<Mutex<Shared>> = OnceLock::new();

    fn comm(mpi: &super::mpi_engine::Mpi, rank: usize, size: usize, s: &CudaStorage) -> Result<&'static Mutex<Shared>> {
        if let Some(c) = COMM.get() {
            return Ok(c);
        }
        let id = if rank == 0 {
            Some(Id::new().map_err(|e| candle_core::Error::Msg(format!("NCCL id: {e:?}")))?)
        } else {
            None
        };
        let bytes: Vec<u8> = id.map(|id| id.internal().iter().map(|&c| c as u8).collect()).unwrap_or_default();
        let bytes = mpi.broadcast(bytes);
        let mut internal = [0 as std::ffi::c_char; 128];
        for (d, &b) in internal.iter_mut().zip(&bytes) {
            *d = b as std::ffi::c_char;
        }
        let c = Comm::from_rank(s.device.cuda_stream(), rank, size, Id::uninit(internal))
            .map_err(|e| candle_core::Error::Msg(format!("NCCL communicator: {e:?}")))?;
        Ok(COMM.get_or_init(|| Mutex::new(Shared(c))))
    }

    struct AllReduceSum<'a> {
        mpi: &'a super::mpi_engine::Mpi,
        rank: usize,
        size: usize,
    }

    impl CustomOp1 for AllReduceSum<'_> {
        fn name(&self) -> &'static str {
            "keel-nccl-all-reduce"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            candle_core::bail!("keel-nccl-all-reduce runs on CUDA tensors only")
        }
        fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
            let Some((start, end)) = l.contiguous_offsets() else {
                candle_core::bail!("keel-nccl-all-reduce: the buffer must be contiguous")
            };
            let guard = comm(self.mpi, self.rank, self.size, s)?.lock().expect("NCCL communicator");
            let c = &guard.0;
            let err = |e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}"));
            let out = match &s.slice {
                CudaStorageSlice::F32(x) => {
                    let src = x.slice(start..end);
                    let mut dst = s.device.alloc_zeros::<f32>(end - start)?;
                    c.all_reduce(&src, &mut dst, &ReduceOp::Sum).map_err(err)?;
                    CudaStorage::wrap_cuda_slice(dst, s.device.clone())
                }
                CudaStorageSlice::F64(x) => {
                    let src = x.slice(start..end);
                    let mut dst = s.device.alloc_zeros::<f64>(end - start)?;
                    c.all_reduce(&src, &mut dst, &ReduceOp::Sum).map_err(err)?;
                    CudaStorage::wrap_cuda_slice(dst, s.device.clone())
                }
                _ => candle_core::bail!("keel-nccl-all-reduce: f32 or f64 only, not {:?}", s.dtype()),
            };
            Ok((out, l.shape().clone()))
        }
    }

    /// The element-wise sum over ranks of a CUDA tensor.
    pub fn sum(mpi: &super::mpi_engine::Mpi, rank: usize, size: usize, t: &Tensor) -> Result<Tensor> {
        t.contiguous()?.apply_op1_no_bwd(&AllReduceSum { mpi, rank, size })
    }
}
