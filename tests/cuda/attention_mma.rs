//! The tensor-core (mma.sync) flash attention kernels against the SIMT ones and the CPU (see tests/cuda.rs).
