//! CUDA kernels of the norms family against their CPU twins (see tests/cuda.rs).
