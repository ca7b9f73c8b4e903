//! CUDA kernels of the attention family against their CPU twins (see tests/cuda.rs).
