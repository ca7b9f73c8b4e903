// adamw kernels: see prelude.cuh for the conventions.
