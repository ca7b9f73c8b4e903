//! CUDA kernels of the adamw family against their CPU twins (see tests/cuda.rs).
