// attention_mma kernels: see prelude.cuh for the conventions.
