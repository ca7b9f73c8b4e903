#!/usr/bin/env python3
"""Runs every scripts/cuda_check/check_*.py against PyTorch on this machine's GPU; writes
OUT/kernel_checks.csv. Exit 1 if any check fails or raises.

    python3 scripts/cuda_check/run_all.py [OUT_DIR] [--only norms,attention]
"""
import importlib
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Report  # noqa: E402


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--only")]
    only = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--only=")]
    only = only[0].split(",") if only else None
    out = args[0] if args else "runs/gpu_first_contact"
    os.makedirs(out, exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))
    names = sorted(f[len("check_"):-3] for f in os.listdir(here) if f.startswith("check_") and f.endswith(".py"))
    report = Report()
    for n in names:
        if only and n not in only:
            continue
        print(f"== {n}", flush=True)
        try:
            importlib.import_module("check_" + n).run(report)
        except Exception:  # a kernel that does not compile or crashes is a failed check, not the end
            traceback.print_exc()
            report.fail(n, "raised (see the traceback above)")
    report.write(os.path.join(out, "kernel_checks.csv"))
    bad = sum(1 for r in report.rows if r[1] == "FAIL")
    print(f"kernel checks: {sum(1 for r in report.rows if r[1] == 'ok')} passed, {bad} failed")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
