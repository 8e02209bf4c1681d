"""Benchmark of the safety checker: explorer schedules per second per scenario, and the
overhead of --check on a pagetable-test run.

    python benchmarks/bench_check.py [--quick]

Targets (issue 5): each built-in scenario's exploration under 60 s; --check overhead < 2x.
"""

from __future__ import annotations

import argparse
import time

from s2sim.check.checker import Checker
from s2sim.check.explore import SCENARIOS, explore
from s2sim.kvm.coalesce import VARIANTS
from s2sim.sim.run import run_pagetable_test
from s2sim.workloads.pagetable_test import TestConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="one variant, smaller run")
    args = ap.parse_args()
    variants = ["rfc"] if args.quick else ["patch1", "rfc", "bbml2"]
    print("explorer (default budget: exhaustive up to 35000 schedules, then bounded)")
    print(f"{'scenario':10} {'variant':10} {'mode':32} {'schedules':>9} {'states':>8} "
          f"{'seconds':>8} {'sched/s':>8} {'<60s':>5}")
    for v in variants:
        for name in SCENARIOS:
            t = time.perf_counter()
            r = explore(name, VARIANTS[v])
            dt = time.perf_counter() - t
            print(f"{name:10} {v:10} {r.mode:32} {r.schedules:9d} {r.states:8d} {dt:8.2f} "
                  f"{r.schedules / dt:8.0f} {'yes' if dt < 60 else 'NO':>5}")
    size = "16M" if args.quick else "64M"
    cfg = TestConfig.make("4", size, 4, "anonymous_hugetlb_2mb", variant="patch1")
    t = time.perf_counter()
    run_pagetable_test(cfg)
    plain = time.perf_counter() - t
    t = time.perf_counter()
    ch = Checker()
    run_pagetable_test(cfg, observers=(ch,))
    checked = time.perf_counter() - t
    print(f"\n--check overhead on pagetable-test -b {size} -v 4 -s anonymous_hugetlb_2mb: "
          f"{plain:.2f} s plain, {checked:.2f} s checked, {checked / plain:.2f}x "
          f"({ch.events} events checked; target < 2x: "
          f"{'met' if checked / plain < 2 else 'NOT met'})")


if __name__ == "__main__":
    main()
