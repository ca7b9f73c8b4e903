// layer_norm kernels: see prelude.cuh for the conventions.
