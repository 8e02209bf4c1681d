"""Simulated time against wall time for the seed's calibration runs (issue 7).

Run: python benchmarks/bench_sim.py [--quick] [--runs ID,...] [--vcpus 40,60,100]
                                    [--exact] [--size 1G]

Each run of data/seed-calibration.toml (backing, size, vCPUs, variant; guest
mode 4) goes through `run_pagetable_test` in its own process, and prints:
simulated seconds, wall seconds, their ratio (the goal: >= 1), faults per wall
second, engine resumptions per wall second (the events the exact path
actually executed), the share of faults the convoy fast-forward skipped, the
accesses taken in read batches (sim/batch.py), and the process's peak RSS.
`--vcpus` repeats the selected runs at other vCPU counts; `--exact` turns
the fast paths off (the reference path: slow); `--size` overrides the memory
size (e.g. 1G for a scaled-down check); `--quick` takes the runs that finish
in a couple of minutes.
The machine is shared: repeat a measurement before trusting a difference.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION = ROOT / "data" / "seed-calibration.toml"
QUICK = ("hugetlb1g-20G-1v-patch1", "hugetlb1g-20G-1v-rfc", "hugetlb1g-20G-20v-patch1")


def load_runs() -> list[dict]:
    with open(CALIBRATION, "rb") as f:
        return tomllib.load(f)["run"]


def one(spec: dict) -> dict:
    """Run one configuration in this process; the figures as a dict."""
    from s2sim.sim.run import run_pagetable_test
    from s2sim.workloads.pagetable_test import TestConfig

    cfg = TestConfig.make("4", spec["size"], spec["vcpus"], spec["backing"],
                          variant=spec["variant"], fastforward=not spec["exact"])
    stats: dict = {}
    t0 = time.perf_counter()
    r = run_pagetable_test(cfg, ff_stats=stats)
    wall = time.perf_counter() - t0
    faults = sum(s["faults"] for s in r["stages"])
    sim = r["simulated_ns"] / 1e9
    return {
        "id": spec["id"], "vcpus": spec["vcpus"], "size": spec["size"],
        "sim_s": sim, "wall_s": wall, "ratio": sim / wall if wall else float("inf"),
        "faults": faults, "faults_per_s": faults / wall,
        "resumptions": r["engine_resumptions"],
        "events_per_s": r["engine_resumptions"] / wall,
        "skipped_faults": stats.get("faults", 0),
        "jumps": stats.get("jumps", 0),
        "template_jumps": stats.get("template_jumps", 0),
        "skipped_accesses": stats.get("accesses", 0),
        "batched_accesses": stats.get("batched_accesses", 0),
        "batches": stats.get("batches", 0),
        "batch_cuts": stats.get("batch_cuts", 0),
        "batch_redos": stats.get("batch_redos", 0),
        "stages": {s["name"]: s["seconds"] for s in r["stages"]},
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only " + ", ".join(QUICK))
    ap.add_argument("--runs", default="", help="comma-separated run ids")
    ap.add_argument("--vcpus", default="", help="also at these vCPU counts, e.g. 40,60,100")
    ap.add_argument("--exact", action="store_true", help="fast-forward off (reference path)")
    ap.add_argument("--size", default="", help="override the memory size, e.g. 1G")
    ap.add_argument("--json", default="", help="write the figures to this file")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(json.loads(a.one))))
        return 0
    runs = load_runs()
    if a.runs:
        want = a.runs.split(",")
        unknown = set(want) - {r["id"] for r in runs}
        if unknown:
            print(f"unknown run id(s): {', '.join(sorted(unknown))}; known: "
                  + ", ".join(r["id"] for r in runs), file=sys.stderr)
            return 2
        runs = [r for r in runs if r["id"] in want]
    elif a.quick:
        runs = [r for r in runs if r["id"] in QUICK]
    extra = [int(v) for v in a.vcpus.split(",") if v]
    specs = []
    for r in runs:
        for v in [r["vcpus"]] + [v for v in extra if v != r["vcpus"]]:
            specs.append({"id": r["id"], "backing": r["backing"], "size": a.size or r["size"],
                          "vcpus": v, "variant": r["variant"], "exact": a.exact})
    print(f"{'run':28} {'vcpus':>5} {'sim s':>9} {'wall s':>8} {'ratio':>7} {'faults/s':>10} "
          f"{'events/s':>9} {'skipped':>8} {'batched':>9} {'RSS MiB':>8}", flush=True)
    out = []
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    sys.path.insert(0, str(ROOT / "src"))
    from s2sim.errors import ConfigError
    from s2sim.workloads.pagetable_test import TestConfig
    for spec in specs:
        try:  # (e.g. --size 64M for a 1 GiB hugetlb run: said in one line, not run)
            TestConfig.make("4", spec["size"], spec["vcpus"], spec["backing"],
                            variant=spec["variant"])
        except ConfigError as e:
            print(f"{spec['id']:28} {spec['vcpus']:>5} skipped: {e}", flush=True)
            continue
        p = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)],
                           capture_output=True, text=True, env=env, check=False)
        if p.returncode:
            print(f"{spec['id']:28} {spec['vcpus']:>5} failed: {p.stderr.strip()[-300:]}")
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        out.append(r)
        skipped = r["skipped_faults"] / r["faults"] if r["faults"] else 0.0
        print(f"{r['id']:28} {r['vcpus']:>5} {r['sim_s']:>9.3f} {r['wall_s']:>8.2f} "
              f"{r['ratio']:>7.2f} {r['faults_per_s']:>10.3g} {r['events_per_s']:>9.3g} "
              f"{skipped:>8.1%} {r['batched_accesses']:>9.3g} {r['peak_rss_mib']:>8.0f}"
              + ("  (redone without batches)" if r["batch_redos"] else ""), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
