#!/usr/bin/env python3
"""Per-step GPU profile from two keel_cupti traces of one command run with two step counts.

Everything a run does once (start-up, the matmul peak, warm-up steps, model upload) appears in
both traces; the difference of the two, divided by the difference of their step counts, is what
one training step costs. Prints, per step: GPU kernel time and launches, the kernels by time,
copies and memsets by direction (count, bytes, time), driver API calls by count with their host
time, synchronizing calls, and, given the step's wall time, how much of it the GPU was busy.

    summarize.py SHORT.csv STEPS_SHORT LONG.csv STEPS_LONG [--wall-ms MS] [--top N] [--json OUT]
    summarize.py --self-test [TRACE_FROM_SELFTEST_C]

Standard library only (runs wherever the traced program ran).
"""

import argparse
import collections
import csv
import json
import sys

# Driver calls that block the host until the GPU has caught up (or that copy to the host, which
# does the same on the default stream).
SYNCHRONIZING = ("Synchronize", "cuMemcpyDtoH", "cuMemcpy2D", "cuMemcpy3D", "cuMemcpy_", "cuMemcpyAsync")


def load(path):
    """Totals per (kind, name): count, summed duration (ns), summed bytes."""
    totals = collections.defaultdict(lambda: [0, 0, 0])
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != ["kind", "name", "start_ns", "end_ns", "bytes"]:
            sys.exit(f"{path}: not a keel_cupti trace (header {reader.fieldnames})")
        for r in reader:
            t = totals[(r["kind"], r["name"])]
            t[0] += 1
            t[1] += int(r["end_ns"]) - int(r["start_ns"])
            t[2] += int(r["bytes"])
    return totals


def per_step(short, n_short, long, n_long):
    """(kind, name) -> [count, ns, bytes] per step; negative noise clipped at zero."""
    steps = n_long - n_short
    out = {}
    for key in set(short) | set(long):
        a, b = short.get(key, [0, 0, 0]), long.get(key, [0, 0, 0])
        out[key] = [max(0.0, (y - x) / steps) for x, y in zip(a, b)]
    return out


def summarize(p, wall_ms=None, top=25):
    kernels = {n: v for (k, n), v in p.items() if k == "kernel"}
    copies = {k: v for (k, n), v in p.items() if k.startswith("memcpy") or k == "memset"}
    api = {n: v for (k, n), v in p.items() if k == "api"}
    gpu_ms = sum(v[1] for v in kernels.values()) / 1e6
    copy_ms = sum(v[1] for v in copies.values()) / 1e6
    launches = sum(v[0] for v in kernels.values())
    syncs = sum(v[0] for n, v in api.items() if any(s in n for s in SYNCHRONIZING))
    s = {
        "kernel_ms_per_step": gpu_ms,
        "copy_ms_per_step": copy_ms,
        "kernel_launches_per_step": launches,
        "synchronizing_calls_per_step": syncs,
        "driver_calls_per_step": sum(v[0] for v in api.values()),
        "driver_host_ms_per_step": sum(v[1] for v in api.values()) / 1e6,
        "kernels": sorted(
            ({"name": n, "count": v[0], "ms": v[1] / 1e6, "share": v[1] / 1e6 / gpu_ms if gpu_ms else 0.0}
             for n, v in kernels.items() if v[0] > 0),
            key=lambda k: -k["ms"],
        )[:top],
        "copies": {k: {"count": v[0], "ms": v[1] / 1e6, "bytes": v[2]} for k, v in sorted(copies.items()) if v[0] > 0},
        "driver_calls": sorted(
            ({"name": n, "count": v[0], "host_ms": v[1] / 1e6} for n, v in api.items() if v[0] > 0),
            key=lambda a: -a["count"],
        )[:top],
    }
    if wall_ms:
        s["wall_ms_per_step"] = wall_ms
        s["gpu_busy_fraction"] = (gpu_ms + copy_ms) / wall_ms
    return s


def show(s):
    print(f"per training step: {s['kernel_ms_per_step']:.2f} ms in {s['kernel_launches_per_step']:.0f} kernels, "
          f"{s['copy_ms_per_step']:.2f} ms in copies/memsets, {s['driver_calls_per_step']:.0f} driver calls "
          f"({s['driver_host_ms_per_step']:.2f} ms of host time), {s['synchronizing_calls_per_step']:.0f} synchronizing")
    if "wall_ms_per_step" in s:
        print(f"wall time {s['wall_ms_per_step']:.2f} ms per step: GPU busy {100 * s['gpu_busy_fraction']:.0f}% "
              f"(the rest is the host issuing work or waiting)")
    print(f"\n{'kernel':<70} {'count':>8} {'ms':>9} {'share':>6}")
    for k in s["kernels"]:
        name = k["name"] if len(k["name"]) <= 70 else k["name"][:67] + "..."
        print(f"{name:<70} {k['count']:>8.1f} {k['ms']:>9.3f} {100 * k['share']:>5.1f}%")
    print(f"\n{'copies':<20} {'count':>8} {'ms':>9} {'MB':>10}")
    for kind, c in s["copies"].items():
        print(f"{kind:<20} {c['count']:>8.1f} {c['ms']:>9.3f} {c['bytes'] / 1e6:>10.3f}")
    print(f"\n{'driver call':<40} {'count':>8} {'host ms':>9}")
    for a in s["driver_calls"]:
        print(f"{a['name']:<40} {a['count']:>8.1f} {a['host_ms']:>9.3f}")


def self_test():
    """Synthetic traces with known per-step costs (CI runs this; no GPU needed)."""
    import os
    import tempfile

    def trace(path, steps):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["kind", "name", "start_ns", "end_ns", "bytes"])
            w.writerow(["kernel", "startup", 0, 5_000_000, 0])  # once per run
            w.writerow(["memcpy_htod", "", 0, 1_000_000, 1 << 20])
            for step in range(steps):
                t = 10_000_000 * (step + 1)
                for i in range(3):
                    w.writerow(["kernel", "matmul_f32", t + i, t + i + 10_000, 0])
                w.writerow(["kernel", 'void k<float, "q">(int, int)', t, t + 2_000, 0])
                w.writerow(["memcpy_dtoh", "", t, t + 1_000, 4])
                w.writerow(["api", "cuLaunchKernel", t, t + 3_000, 0])
                w.writerow(["api", "cuStreamSynchronize", t, t + 50_000, 0])

    with tempfile.TemporaryDirectory() as d:
        a, b = os.path.join(d, "a.csv"), os.path.join(d, "b.csv")
        trace(a, 2)
        trace(b, 5)
        s = summarize(per_step(load(a), 2, load(b), 5), wall_ms=0.1)
    assert abs(s["kernel_ms_per_step"] - 0.032) < 1e-9, s
    assert s["kernel_launches_per_step"] == 4, s
    assert [k["name"] for k in s["kernels"]] == ["matmul_f32", 'void k<float, "q">(int, int)'], s["kernels"]
    assert s["kernels"][0]["count"] == 3 and abs(s["kernels"][0]["share"] - 0.03 / 0.032) < 1e-9, s
    assert s["copies"] == {"memcpy_dtoh": {"count": 1.0, "ms": 0.001, "bytes": 4.0}}, s["copies"]
    assert s["synchronizing_calls_per_step"] == 1 and s["driver_calls_per_step"] == 2, s
    assert abs(s["gpu_busy_fraction"] - 0.033 / 0.1) < 1e-9, s
    print("summarize.py self-test: ok")


def check_c_trace(path):
    """The trace selftest.c writes through keel_cupti.c's own row writer reads back exactly."""
    t = load(path)
    assert t[("kernel", 'void gemm<float, "tn">(Params, int)')] == [2, 2000, 0], dict(t)
    assert t[("memcpy_dtoh", "")] == [2, 1000, 8], dict(t)
    assert t[("api", "cuLaunchKernel")] == [2, 60, 0], dict(t)
    assert len(t) == 3, dict(t)
    print(f"{path}: keel_cupti.c's rows read back: ok")


def main():
    if sys.argv[1:2] == ["--self-test"]:
        self_test()
        for path in sys.argv[2:]:
            check_c_trace(path)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("short")
    ap.add_argument("steps_short", type=int)
    ap.add_argument("long")
    ap.add_argument("steps_long", type=int)
    ap.add_argument("--wall-ms", type=float, help="measured wall time of one step (keel bench's ms/step)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--json", help="also write the summary here")
    a = ap.parse_args()
    if a.steps_long <= a.steps_short:
        sys.exit("the second trace must have more steps than the first")
    s = summarize(per_step(load(a.short), a.steps_short, load(a.long), a.steps_long), a.wall_ms, a.top)
    show(s)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(s, f, indent=1)


if __name__ == "__main__":
    main()
