// cross_entropy kernels: see prelude.cuh for the conventions.
