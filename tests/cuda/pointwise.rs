//! CUDA kernels of the pointwise family against their CPU twins (see tests/cuda.rs).
