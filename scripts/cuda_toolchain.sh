#!/usr/bin/env bash
# CUDA 13.0 toolchain from PyPI wheels, for compiling `cargo build --release --features cuda` on a
# machine with no GPU and no NVIDIA driver (CI compile-check). The binary then runs on a GPU machine
# with driver >= 580 and the CUDA 13 runtime libraries (e.g. PyTorch's nvidia-* cu13 wheels).
#
# What it does (idempotent; a second run only checks and re-exports):
#   1. pip-installs pinned CUDA 13.0 wheels (no deps) into .cuda/site:
#        nvidia-cuda-nvcc, nvidia-cuda-crt, nvidia-nvvm, nvidia-cuda-cccl   (nvcc, ptxas, cicc, headers)
#        nvidia-cuda-runtime, nvidia-cublas, nvidia-curand, nvidia-cuda-nvrtc (link-time .so files)
#        nvidia-cuda-cupti (CUPTI, for the profiler scripts/cuda_profile/keel_cupti.c)
#      They all unpack into .cuda/site/nvidia/cu13/{bin,include,lib,nvvm}.
#      Versions are CUDA 13.0 on purpose: the PTX that candle-kernels embeds is JIT-compiled by the
#      driver at run time, and driver 580 (CUDA 13.0) rejects PTX from a newer nvcc (ISA > 9.0).
#      The runtime libraries are the oldest 13.0 builds, so no symbol newer than any CUDA 13
#      install's can be linked in; only their sonames (libcudart.so.13, libcublas.so.13,
#      libcublasLt.so.13, libcurand.so.10) end up in the binary.
#   2. lays out a CUDA_ROOT in .cuda/root by symlinks: bin, include, nvvm -> the wheel tree;
#      lib64/ with libX.so.N and unversioned libX.so links (the linker needs `-lcudart` etc.);
#      lib64/stubs/libcuda.so: a generated stub of the driver API (soname libcuda.so.1, every
#      entry point returns CUDA_ERROR_STUB_LIBRARY), since no wheel ships the driver stub.
#      The names come from cuda.h (run through the preprocessor for the _v2/_v3 aliases).
#   3. exports (when sourced) or prints (when executed) the build environment:
#        PATH=.cuda/root/bin:$PATH  CUDA_ROOT=CUDA_PATH=CUDA_HOME=.cuda/root
#        CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} (Hopper: H100/H200; no nvidia-smi needed)
#        LIBRARY_PATH=.cuda/root/lib64:.cuda/root/lib64/stubs:$LIBRARY_PATH
#        KEEL_CUDA_CPU_LD_LIBRARY_PATH=.cuda/root/lib64:.cuda/root/lib64/stubs  (only to start the
#          CUDA binary on a GPU-less machine; never put lib64/stubs on a GPU machine's path)
#
# Needs: python3 with pip (PyPI access), gcc/g++ (nvcc's host compiler; GCC 12 is fine for 13.0).
# Disk: about 1.2 GiB in .cuda/ (libcublasLt alone is 0.5 GiB; pip's cache is not used); the
# install takes about 25 s. A cold `cargo build --release --features cuda` on 2 cores takes about
# 24 min (15 of them in candle-kernels' nvcc: 2 min of PTX, 13 min of the static moe/mmq kernels)
# and 0.95 GiB in its target folder (1.5 GiB after also `--tests`, which adds about 2 min).
#
# Running the binary: it needs libcuda.so.1 (the driver), libcudart.so.13, libcublas.so.13 (with
# libcublasLt.so.13) and libcurand.so.10, found through ldconfig (a CUDA 13 toolkit in
# /usr/local/cuda) or LD_LIBRARY_PATH. On a GPU machine with PyTorch's cu13 wheels:
#   export LD_LIBRARY_PATH=$(python3 -c 'import nvidia,os;print(os.path.join(nvidia.__path__[0],"cu13","lib"))'):$LD_LIBRARY_PATH
# The first CUDA run JIT-compiles the embedded sm_90a PTX (about 20 s; cached in ~/.nv/ComputeCache).
#
# Usage:
#   source scripts/cuda_toolchain.sh            # install if needed, export the variables
#   scripts/cuda_toolchain.sh                   # install if needed, print `export` lines
#   CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda
# Overrides: KEEL_CUDA_DIR (default <repo>/.cuda), CUDA_COMPUTE_CAP.

_keel_cuda_setup() (
  set -euo pipefail
  local dir=$1
  local site=$dir/site root=$dir/root
  local specs="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.48 nvidia-cublas==13.0.0.19 \
nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.48 nvidia-cuda-cupti==13.0.85"
  local stamp="layout-v1 $specs"
  local cu=$site/nvidia/cu13

  mkdir -p "$dir"
  # 1. wheels
  if [ "$(cat "$site/.keel-stamp" 2>/dev/null)" != "$specs" ] || [ ! -x "$cu/bin/nvcc" ]; then
    python3 -m pip --version >/dev/null 2>&1 || {
      echo "cuda_toolchain: python3 -m pip is missing (apt-get install python3-pip)" >&2; exit 1; }
    echo "cuda_toolchain: installing CUDA 13.0 wheels into $site (about 1.2 GiB)" >&2
    rm -rf "$site.tmp"
    # shellcheck disable=SC2086
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check \
      --no-cache-dir --no-deps --target "$site.tmp" $specs >&2
    rm -rf "$site"
    mv "$site.tmp" "$site"
    echo "$specs" > "$site/.keel-stamp"
    rm -f "$root/.keel-stamp"
  fi

  # 2. CUDA_ROOT layout
  if [ "$(cat "$root/.keel-stamp" 2>/dev/null)" != "$stamp" ] || [ ! -e "$root/lib64/stubs/libcuda.so" ]; then
    command -v gcc >/dev/null || { echo "cuda_toolchain: gcc is missing (apt-get install g++)" >&2; exit 1; }
    rm -rf "$root"
    mkdir -p "$root/lib64/stubs"
    local d f so base
    for d in bin include nvvm; do ln -s "../site/nvidia/cu13/$d" "$root/$d"; done
    for f in "$cu"/lib/lib*.so.*; do
      so=$(basename "$f")
      ln -s "../../site/nvidia/cu13/lib/$so" "$root/lib64/$so"
      base=${so%%.so.*}.so
      [ -e "$root/lib64/$base" ] || ln -s "$so" "$root/lib64/$base"
    done
    # Driver API stub: every cu* name that cuda.h or the cuda*Typedefs.h headers mention, plus the
    # versioned symbol names the cuda.h macros map them to (with and without per-thread streams).
    local tmp
    tmp=$(mktemp -d)
    {
      grep -ohE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' "$cu/include/cuda.h" | sed -E 's/[[:space:]]*\($//'
      grep -ohE '\bPFN_cu[A-Za-z0-9_]+_v[0-9]+\b' "$cu"/include/cuda*Typedefs.h | sed -E 's/^PFN_//; s/_v[0-9]+$//'
    } | sort -u > "$tmp/raw"
    { echo '#include <cuda.h>'; sed 's/^/@@ /' "$tmp/raw"; } > "$tmp/names.c"
    {
      cat "$tmp/raw"
      gcc -E -P -I"$cu/include" "$tmp/names.c" | awk '$1 == "@@" { print $2 }'
      gcc -E -P -DCUDA_API_PER_THREAD_DEFAULT_STREAM -I"$cu/include" "$tmp/names.c" | awk '$1 == "@@" { print $2 }'
    } | grep -E '^cu[A-Za-z0-9_]+$' | sort -u > "$tmp/all"
    { echo '/* generated by scripts/cuda_toolchain.sh: link-time stub of libcuda.so.1 */'
      awk '{ printf "int %s(void) { return 34; /* CUDA_ERROR_STUB_LIBRARY */ }\n", $1 }' "$tmp/all"; } > "$tmp/stub.c"
    gcc -shared -fPIC -O0 -w -Wl,-soname,libcuda.so.1 -o "$root/lib64/stubs/libcuda.so" "$tmp/stub.c"
    ln -s libcuda.so "$root/lib64/stubs/libcuda.so.1"
    echo "cuda_toolchain: stub libcuda.so with $(wc -l < "$tmp/all") entry points" >&2
    rm -rf "$tmp"
    echo "$stamp" > "$root/.keel-stamp"
  fi
  command -v g++ >/dev/null || echo "cuda_toolchain: warning: g++ not found; nvcc needs a host C++ compiler" >&2
  "$root/bin/nvcc" --version | grep -q 'release 13\.0' || { echo "cuda_toolchain: nvcc in $root/bin is broken" >&2; exit 1; }
)

_keel_cuda_main() {
  local repo dir
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  dir=${KEEL_CUDA_DIR:-$repo/.cuda}
  _keel_cuda_setup "$dir" || return 1
  dir=$(cd "$dir" && pwd)
  local root=$dir/root
  case ":${PATH}:" in *":$root/bin:"*) ;; *) PATH="$root/bin:$PATH" ;; esac
  case ":${LIBRARY_PATH:-}:" in
    *":$root/lib64:"*) ;;
    *) LIBRARY_PATH="$root/lib64:$root/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}" ;;
  esac
  export PATH LIBRARY_PATH
  export CUDA_ROOT=$root CUDA_PATH=$root CUDA_HOME=$root
  export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
  export KEEL_CUDA_CPU_LD_LIBRARY_PATH=$root/lib64:$root/lib64/stubs
}

if (return 0 2>/dev/null); then
  _keel_cuda_main
  _keel_cuda_rc=$?
  unset -f _keel_cuda_main _keel_cuda_setup
  return $_keel_cuda_rc
else
  set -euo pipefail
  _keel_cuda_main
  for _v in PATH LIBRARY_PATH CUDA_ROOT CUDA_PATH CUDA_HOME CUDA_COMPUTE_CAP KEEL_CUDA_CPU_LD_LIBRARY_PATH; do
    printf 'export %s=%q\n' "$_v" "${!_v}"
  done
fi
