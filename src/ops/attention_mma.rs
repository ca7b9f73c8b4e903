//! FlashAttention-2 forward and backward for bf16 on tensor cores (`mma.sync` through inline PTX,
//! sm_80 and newer): the kernels of `src/ops/cuda/attention_mma.cu` and their launches. The op
//! itself, its CPU twins and the SIMT CUDA kernels live in `attention.rs`, which calls these.
