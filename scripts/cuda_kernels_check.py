#!/usr/bin/env python3
"""Compile every keel CUDA kernel module without a GPU, as CI does.

Each module (src/ops/cuda/prelude.cuh + src/ops/cuda/<module>.cu, exactly as keel builds it at run
time) is compiled by NVRTC to PTX for compute_80 and compute_90 with the options of
src/ops/cuda/nvrtc-options.txt, then assembled by `ptxas -v` for sm_80 and sm_90. One line per
kernel and architecture reports registers, shared memory, stack and spills. Exit status 1 when a
module fails to compile or assemble, or any kernel spills registers (spill stores or loads > 0).

NVRTC and ptxas come from NVIDIA's PyPI wheels pinned by scripts/cuda_toolchain.sh (CUDA 13.0):
neither needs a GPU or a driver.

    source scripts/cuda_toolchain.sh && python3 scripts/cuda_kernels_check.py [--csv FILE]
        [--modules rms_norm,attention] [--dir DIR] [--arch 80,90] [--keep DIR]

--dir reads kernel files from DIR first (like KEEL_CUDA_KERNELS); standard library only.
"""
import argparse
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KDIR = os.path.join(REPO, "src", "ops", "cuda")


def modules():
    return sorted(f[:-3] for f in os.listdir(KDIR) if f.endswith(".cu"))


def read(name, override):
    if override and os.path.exists(os.path.join(override, name)):
        return open(os.path.join(override, name)).read()
    return open(os.path.join(KDIR, name)).read()


def module_source(module, override=None):
    """What NVRTC compiles for a module, as keel builds it: prelude.cuh, a newline, <module>.cu."""
    return read("prelude.cuh", override) + "\n" + read(module + ".cu", override)


def options():
    out = []
    for line in open(os.path.join(KDIR, "nvrtc-options.txt")):
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def find_lib(name):
    roots = [os.environ.get("CUDA_ROOT", ""), os.path.join(REPO, ".cuda", "root")]
    for root in roots:
        for sub in ("lib64", "lib"):
            d = os.path.join(root, sub)
            if os.path.isdir(d):
                for f in sorted(os.listdir(d)):
                    if f.startswith(name + ".so"):
                        return os.path.join(d, f)
    return name + ".so"


class Nvrtc:
    def __init__(self):
        # NVRTC dlopens its builtins by soname; loading them first by path satisfies that lookup
        # without LD_LIBRARY_PATH.
        builtins = find_lib("libnvrtc-builtins")
        if os.path.exists(builtins):
            ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
        self.lib = ctypes.CDLL(find_lib("libnvrtc"))
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
        self.version = (major.value, minor.value)

    def compile(self, src, name, opts):
        prog = ctypes.c_void_p()
        rc = self.lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None)
        if rc != 0:
            return None, f"nvrtcCreateProgram failed ({rc})"
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        rc = self.lib.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        self.lib.nvrtcGetProgramLog(prog, log)
        log = log.value.decode(errors="replace")
        ptx = None
        if rc == 0:
            self.lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            self.lib.nvrtcGetPTX(prog, buf)
            ptx = buf.value.decode()
        self.lib.nvrtcDestroyProgram(ctypes.byref(prog))
        return ptx, log


ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\w+)'")
STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers(.*)")
SMEM = re.compile(r"(\d+) bytes smem")


def ptxas_report(text):
    """Rows (kernel, arch, registers, smem, stack, spill_stores, spill_loads) from `ptxas -v`."""
    rows, cur = [], None
    for line in text.splitlines():
        m = ENTRY.search(line)
        if m:
            cur = {"kernel": m.group(1), "arch": m.group(2), "registers": 0, "smem": 0, "stack": 0,
                   "spill_stores": 0, "spill_loads": 0}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = STACK.search(line)
        if m:
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = map(int, m.groups())
        m = USED.search(line)
        if m:
            cur["registers"] = int(m.group(1))
            s = SMEM.search(m.group(2))
            cur["smem"] = int(s.group(1)) if s else 0
    return rows


SELF_TEST_SRC = r"""
extern "C" __global__ void keel_selftest_pressure(float* out, const float* in, int n) {
    float acc[48];
#pragma unroll
    for (int j = 0; j < 48; j++) acc[j] = in[(threadIdx.x * 48 + j) % n];
    for (int it = 0; it < n; it++) {
#pragma unroll
        for (int j = 0; j < 48; j++) acc[j] = acc[j] * acc[(j + 7) % 48] + in[(it + j) % n];
    }
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < 48; j++) s += acc[j];
    out[threadIdx.x] = s;
}
"""


def self_test(nv, ptxas):
    """The report parser against real ptxas output: a kernel capped at 16 registers (ptxas keeps a few more) must be
    reported with its registers and spills (so a spilling keel kernel cannot pass unseen)."""
    ptx, log = nv.compile(SELF_TEST_SRC, "selftest.cu", options() + ["-arch=compute_80"])
    assert ptx is not None, log
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.ptx")
        open(path, "w").write(ptx)
        runs = {}
        for regs in (16, 255):
            r = subprocess.run([ptxas, "-arch=sm_80", "-v", f"-maxrregcount={regs}", path, "-o", os.devnull],
                               capture_output=True, text=True)
            rows = ptxas_report(r.stderr + r.stdout)
            assert len(rows) == 1 and rows[0]["kernel"] == "keel_selftest_pressure", (r.stderr, rows)
            runs[regs] = rows[0]
    squeezed, free = runs[16], runs[255]
    assert 0 < squeezed["registers"] < free["registers"] and squeezed["spill_stores"] > 0 and squeezed["spill_loads"] > 0, squeezed
    assert free["spill_stores"] == 0 and free["spill_loads"] == 0, free
    print(f"self-test: ptxas report parsed (16-register cap: {squeezed['spill_stores']} B spill stores; "
          f"uncapped: {free['registers']} registers, no spills)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", default="")
    ap.add_argument("--dir", default=None, help="read kernel files from DIR first (like KEEL_CUDA_KERNELS)")
    ap.add_argument("--arch", default="80,90")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--keep", default=None, help="keep the PTX files in this folder")
    a = ap.parse_args()
    ptxas = shutil.which("ptxas") or os.path.join(REPO, ".cuda", "root", "bin", "ptxas")
    if not os.path.exists(ptxas):
        sys.exit("ptxas not found: run `source scripts/cuda_toolchain.sh` first")
    nv = Nvrtc()
    ver = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    print(f"NVRTC {nv.version[0]}.{nv.version[1]}, ptxas: {ver}")
    self_test(nv, ptxas)
    mods = [m for m in a.modules.split(",") if m] or modules()
    archs = [x.strip() for x in a.arch.split(",") if x.strip()]
    work = a.keep or tempfile.mkdtemp(prefix="keel-ptx-")
    os.makedirs(work, exist_ok=True)
    failed, all_rows = [], []
    print(f"{'module':<14} {'kernel':<40} {'arch':<6} {'regs':>5} {'smem B':>7} {'stack B':>7} {'spill st':>8} {'spill ld':>8}")
    for m in mods:
        src = module_source(m, a.dir)
        for arch in archs:
            ptx, log = nv.compile(src, m + ".cu", options() + [f"-arch=compute_{arch}"])
            if ptx is None:
                print(f"FAIL {m}: NVRTC compute_{arch}:\n{log}")
                failed.append(f"{m} (NVRTC, compute_{arch})")
                continue
            if log.strip():
                print(f"note {m} compute_{arch}: NVRTC says:\n{log.strip()}")
            path = os.path.join(work, f"{m}.compute_{arch}.ptx")
            open(path, "w").write(ptx)
            r = subprocess.run([ptxas, f"-arch=sm_{arch}", "-v", "--warn-on-spills", path, "-o", os.devnull],
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(f"FAIL {m}: ptxas sm_{arch}:\n{r.stderr}")
                failed.append(f"{m} (ptxas, sm_{arch})")
                continue
            rows = ptxas_report(r.stderr + r.stdout)
            if ".entry" not in ptx:
                failed.append(f"{m} defines no kernel")
            elif not rows:
                failed.append(f"{m} (ptxas printed no kernel, sm_{arch})")
            for row in rows:
                row["module"] = m
                all_rows.append(row)
                spill = row["spill_stores"] or row["spill_loads"]
                print(f"{m:<14} {row['kernel']:<40} {row['arch']:<6} {row['registers']:>5} {row['smem']:>7} "
                      f"{row['stack']:>7} {row['spill_stores']:>8} {row['spill_loads']:>8}{'  SPILLS' if spill else ''}")
                if spill:
                    failed.append(f"{row['kernel']} spills on {row['arch']}")
    if a.csv:
        with open(a.csv, "w") as f:
            f.write("module,kernel,arch,registers,smem_bytes,stack_bytes,spill_stores,spill_loads\n")
            for r in all_rows:
                f.write(f"{r['module']},{r['kernel']},{r['arch']},{r['registers']},{r['smem']},{r['stack']},"
                        f"{r['spill_stores']},{r['spill_loads']}\n")
    kernels = len({(r["module"], r["kernel"]) for r in all_rows})
    if failed:
        print(f"CUDA kernel check: FAILED ({len(failed)}): " + "; ".join(failed))
        return 1
    print(f"CUDA kernel check: ok ({len(mods)} modules, {kernels} kernels, archs {','.join('sm_' + x for x in archs)}, no spills)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
