// attention kernels: see prelude.cuh for the conventions.
