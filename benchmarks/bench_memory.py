"""Peak memory of the simulator's state for a 20 GiB guest at 4 KiB granule (issue:
"Peak memory under 4 GiB for a 20 GiB guest at 4K granule").

Run: .venv/bin/python benchmarks/bench_memory.py [--quick] [--size 20G]
                                                 [--cases pages4k,split2m,...]
                                                 [--trace] [--json FILE]

Each case runs in its own process (guest mode 4, P40V48_4K, one memslot at the
top of the IPA space as kvm_page_table_test places it) and reports the peak
RSS of that process (resource.getrusage(RUSAGE_SELF).ru_maxrss, which includes
the interpreter and its imports: see "base"), against a 4096 MiB limit:

  pages4k   the worst static state, built through the KVM page-table API
            without simulated faults: every 4 KiB page of the slot mapped at
            level 3 (Stage2PageTable.map: per 2 MiB, one 4 KiB map that creates
            the tables, then one map of the other 511 pages, which the walker
            installs as 511 level-3 leaves), dirty logging enabled
            (Kvm.enable_dirty_log: write-protects every leaf), every page in
            the slot's dirty log (Memslot.dirty.add, as user_mem_abort marks a
            written page), and the anonymous-4K host model with every page the
            task's own (HostMemory regions, `replay` of a page allocation per
            page);
  split2m   a hugetlb 2 MiB slot mapped by 2 MiB blocks (one map per block),
            dirty logging enabled, then every block split to pages (a 4 KiB map
            over the block: break, TLBI, new level-3 table; then the other 511
            pages), every page dirty, every 2 MiB host page touched;
  run-*     real simulated runs (run_pagetable_test, default fast path, 1 vCPU,
            patch1): anonymous_hugetlb_1gb, anonymous_thp and anonymous (4 KiB:
            every page faulted at 4 KiB, written under dirty logging; the
            simulated worst case).

Per case: what was built (valid level-3 entries, level-3 / all table pages,
dirty pages, host pages), wall seconds per phase, RSS after each phase (so the
growth per structure is visible), a sys.getsizeof estimate per structure, the
peak RSS and PASS/FAIL. `--quick` uses 2 GiB (under a minute); `--trace` also
runs tracemalloc in the built cases and prints the top allocation sites (slow).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT_MIB = 4096
CASES = ("pages4k", "split2m", "run-hugetlb1g", "run-thp", "run-anon4k")
RUNS = {"run-hugetlb1g": "anonymous_hugetlb_1gb", "run-thp": "anonymous_thp",
        "run-anon4k": "anonymous"}
K4, M2 = 4 << 10, 2 << 20


def rss_mib() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def drain(gen):
    """Run an operation's generator to its end, dropping its steps; its return value."""
    try:
        while True:
            next(gen)
    except StopIteration as e:
        return e.value


class Phases:
    """Wall seconds and RSS after each build phase."""

    def __init__(self) -> None:
        self.rows: list[dict] = [{"phase": "base", "s": 0.0, "rss": rss_mib()}]
        self.t = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.rows.append({"phase": name, "s": now - self.t, "rss": rss_mib()})
        self.t = now


def census(machine, slots=(), hostmem=None) -> dict:
    """What the state holds: table pages per level, valid level-3 entries, dirty and host pages."""
    import numpy as np

    tables = machine.mem.tables
    l3 = [p for p in tables.values() if p.level == 3]
    entries = sum(int(np.count_nonzero(p.view() & np.uint64(1))) for p in l3)
    out = {"l3_entries": entries, "l3_tables": len(l3), "table_pages": len(tables),
           "freed_pages_kept": len(machine.mem._freed_pages),
           "dirty_pages": sum(len(s.dirty) for s in slots)}
    if hostmem is not None:
        from s2sim.sim.hostmm import HZP, SPLIT, THP

        g = machine.geo.granule_size
        per = machine.geo.level_size(2) // g
        own = zero = 0  # 4 KiB pages: the task's own / mapping the (huge) zero page
        for r in hostmem.regions.values():
            if r[0] is THP:
                own += per
            elif r[0] is HZP:
                zero += per
            elif r[0] is SPLIT:
                own += r[1].bit_count()
                zero += per - r[1].bit_count()
            else:
                own += r[1].bit_count()
                zero += r[2].bit_count()
        out["host_regions"] = len(hostmem.regions)
        out["host_pages_4k"] = own + zero + (hostmem.bytes_zeroed // g if hostmem.ready else 0)
        out["host_touch_entries"] = len(hostmem.ready)
    return out


def estimate(machine, slots=(), hostmem=None) -> dict:
    """sys.getsizeof per structure (MiB): containers and what only they hold."""
    g = sys.getsizeof
    mem = machine.mem
    mib = 1 << 20
    pages = list(mem.tables.values()) + list(mem._freed_pages.values())
    est = {
        "table pages (TablePage + array('Q'))":
            sum(g(p) + g(p.entries) for p in pages) / mib,
        "PhysMem dicts (tables, generation, freed)":
            (g(mem.tables) + g(mem.generation) + g(mem._freed_pages) + g(mem._free)
             + 32 * (len(mem.tables) + len(mem.generation))) / mib,
    }
    dirty = [s.dirty for s in slots]
    est["dirty log (set of int IPAs)"] = sum(g(d) + sum(map(g, d)) for d in dirty) / mib
    if hostmem is not None:
        regions = hostmem.regions
        est["host regions (dict of [state, own, zero])"] = (
            g(regions) + sum(32 + g(r) + sum(map(g, r[1:])) for r in regions.values())) / mib
        est["host touch (dict pa -> ready ns)"] = (g(hostmem.ready)
                                                   + 64 * len(hostmem.ready)) / mib
    tlb = 0
    for t in machine.tlbs:
        tlb += sum(g(d) + 64 * len(d) for d in t._leafdicts + t._walkdicts) + g(t._order)
    est["TLBs"] = tlb / mib
    return est


def top_allocs(n: int = 8) -> list[str]:
    import tracemalloc

    snap = tracemalloc.take_snapshot()
    cur, peak = tracemalloc.get_traced_memory()
    out = [f"traced now {cur / (1 << 20):.1f} MiB, peak {peak / (1 << 20):.1f} MiB; top sites now:"]
    for st in snap.statistics("lineno")[:n]:
        fr = st.traceback[0]
        out.append(f"{st.size / (1 << 20):9.1f} MiB {st.count:>9} blocks  "
                   f"{os.path.relpath(fr.filename, ROOT)}:{fr.lineno}")
    return out


def build_static(case: str, size: int, trace: bool) -> dict:
    """pages4k / split2m: build the state through the KVM API, no simulated faults."""
    if trace:
        import tracemalloc
        tracemalloc.start()
    from s2sim.arch import descriptors as d
    from s2sim.arch.machine import Machine
    from s2sim.kvm.coalesce import variant
    from s2sim.kvm.memcache import Memcache
    from s2sim.kvm.vm import Kvm
    from s2sim.sim.costs import CostModel
    from s2sim.sim.engine import Lock
    from s2sim.sim.hostmm import PAGE_ALLOC, PTE, HostMemory
    from s2sim.sim.profile import load_profile
    from s2sim.workloads.pagetable_test import TestConfig, test_base

    backing = "anonymous" if case == "pages4k" else "anonymous_hugetlb"
    ph = Phases()
    cfg = TestConfig.make("4", size, 1, backing, variant="patch1")
    prof = load_profile(cfg.platform)
    geo = cfg.geometry
    host_cpu = 1
    machine = Machine(geo, 2, prof.fwb, prof.ha, prof.tlb_capacity, prof.walk_capacity,
                      prof.tlb_policy)
    kvm = Kvm(machine, variant(cfg.variant), 1, prof.ttl, host_cpu)
    large = K4 if case == "pages4k" else M2
    slot = kvm.add_memslot(test_base(cfg, geo, large), size, backing)
    hostmem = HostMemory(CostModel(prof), machine, kvm, slot, Lock("mmu_lock", 0, 0, 0))
    pgt, mc = kvm.pgt, Memcache(machine, 0)
    rw = d.PERM_R | d.PERM_W
    ph.mark("setup")

    def map_pages(ipa: int, pa: int, expect_split: bool) -> None:
        """Every 4 KiB page of the 2 MiB at `ipa` at level 3: two map calls."""
        mc.topup(kvm.min_pages)
        r = drain(pgt.map(ipa, K4, pa, rw, mc))
        assert r.rc == 0 and r.leaves == 1 and bool(r.splits) == expect_split, r
        r = drain(pgt.map(ipa + K4, M2 - K4, pa + K4, rw, mc))
        assert r.rc == 0 and r.leaves == 511 and not r.tables, r

    if case == "pages4k":
        for off in range(0, size, M2):
            map_pages(slot.base + off, slot.pa + off, False)
        ph.mark("map 4K pages")
        drain(kvm.enable_dirty_log(slot, host_cpu))
        ph.mark("enable dirty log")
    else:
        for off in range(0, size, M2):
            mc.topup(kvm.min_pages)
            r = drain(pgt.map(slot.base + off, M2, slot.pa + off, rw, mc))
            assert r.rc == 0 and r.leaves == 1 and r.level == 2, r
        ph.mark("map 2M blocks")
        drain(kvm.enable_dirty_log(slot, host_cpu))
        ph.mark("enable dirty log")
        for off in range(0, size, M2):
            map_pages(slot.base + off, slot.pa + off, True)
        ph.mark("split to 4K pages")
    for ipa in range(slot.base, slot.base + size, K4):
        slot.dirty.add(ipa)  # what user_mem_abort does for a write under logging
    ph.mark("dirty log: every page")
    if hostmem.mm:  # anonymous 4K: every page the task's own (as after its write GUP)
        for rpa in range(slot.pa, slot.pa + size, M2):
            hostmem.regions.setdefault(rpa, [PTE, 0, 0])
        for pa in range(slot.pa, slot.pa + size, K4):
            hostmem.replay(PAGE_ALLOC, pa)
    else:  # hugetlb: every host page touched (zeroed) once
        for pa in range(slot.pa, slot.pa + size, slot.backing.page_size):
            hostmem.touch(pa, slot.backing.page_size, 0, 0)
    ph.mark("host: every page touched")
    out = {"built": census(machine, [slot], hostmem),
           "estimate_mib": estimate(machine, [slot], hostmem), "phases": ph.rows}
    if trace:
        out["top_allocs"] = top_allocs()
    return out


def build_run(case: str, size: int, trace: bool) -> dict:
    """A real simulated run; the machine, slot and host model are caught for the census."""
    if trace:
        import tracemalloc
        tracemalloc.start()
    import s2sim.sim.run as simrun
    from s2sim.workloads.pagetable_test import TestConfig

    seen: dict = {}

    class Machine(simrun.Machine):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            seen["machine"] = self

    class HostMemory(simrun.HostMemory):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            seen["hostmem"] = self

    simrun.Machine, simrun.HostMemory = Machine, HostMemory
    ph = Phases()
    cfg = TestConfig.make("4", size, 1, RUNS[case], variant="patch1")
    stats: dict = {}
    r = simrun.run_pagetable_test(cfg, ff_stats=stats)
    ph.mark("run_pagetable_test")
    hm = seen["hostmem"]
    built = census(seen["machine"], [hm.slot], hm)
    built["dirty_pages"] = max(s["dirty_pages"] for s in r["stages"])  # at the end of UPDATE
    built["faults"] = sum(s["faults"] for s in r["stages"])
    built["skipped_faults"] = stats.get("faults", 0)
    out = {"built": built, "estimate_mib": estimate(seen["machine"], [hm.slot], hm),
           "phases": ph.rows, "aborted": r["aborted"],
           "stages_sim_s": {s["name"]: s["seconds"] for s in r["stages"]}}
    if trace:
        out["top_allocs"] = top_allocs()
    return out


def one(spec: dict) -> dict:
    fn = build_run if spec["case"].startswith("run-") else build_static
    t0 = time.perf_counter()
    out = fn(spec["case"], spec["size"], spec["trace"])
    out.update(case=spec["case"], size=spec["size"], wall_s=time.perf_counter() - t0,
               peak_rss_mib=peak_mib())
    return out


def fmt_size(n: int) -> str:
    return f"{n >> 30}G" if n >= 1 << 30 and not n % (1 << 30) else f"{n >> 20}M"


def report(r: dict) -> None:
    b = r["built"]
    ok = "PASS" if r["peak_rss_mib"] < LIMIT_MIB else "FAIL"
    print(f"\n== {r['case']} ({fmt_size(r['size'])}): peak RSS {r['peak_rss_mib']:.0f} MiB "
          f"-> {ok} (limit {LIMIT_MIB} MiB), wall {r['wall_s']:.1f} s")
    host = (f"host regions {b.get('host_regions', 0)}, 4K host pages "
            f"{b.get('host_pages_4k', 0):,}, host touch entries {b.get('host_touch_entries', 0):,}")
    print(f"   built: L3 entries {b['l3_entries']:,}, L3 tables {b['l3_tables']:,}, "
          f"table pages {b['table_pages']:,} (+{b['freed_pages_kept']:,} freed, kept), "
          f"dirty pages {b['dirty_pages']:,}, {host}")
    if "faults" in b:
        print(f"   run: faults {b['faults']:,} (fast path skipped {b['skipped_faults']:,}), "
              f"simulated s {r['stages_sim_s']}" + (f", ABORTED {r['aborted']}"
                                                     if r["aborted"] else ""))
    prev = None
    for p in r["phases"]:
        grow = "" if prev is None else f" (+{p['rss'] - prev:.0f})"
        print(f"   {p['phase']:28} {p['s']:7.1f} s   RSS {p['rss']:7.0f} MiB{grow}")
        prev = p["rss"]
    print("   estimate (sys.getsizeof): " + ", ".join(
        f"{k} {v:.1f}" for k, v in sorted(r["estimate_mib"].items(), key=lambda kv: -kv[1])))
    for line in r.get("top_allocs", []):
        print("   tracemalloc " + line)


def main() -> int:
    from s2sim.errors import parse_size

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 GiB instead of 20 GiB")
    ap.add_argument("--size", default="", help="guest memory size, e.g. 20G (default 20G)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--trace", action="store_true", help="tracemalloc top sites (slow)")
    ap.add_argument("--json", default="", help="write the figures to this file")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(json.loads(a.one))))
        return 0
    size = parse_size(a.size or ("2G" if a.quick else "20G"), "--size")
    cases = [c for c in a.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        print(f"unknown case(s): {', '.join(sorted(unknown))}; known: {', '.join(CASES)}",
              file=sys.stderr)
        return 2
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    out, failed = [], 0
    print(f"{'case':14} {'size':>5} {'L3 entries':>11} {'L3 tables':>9} {'dirty':>10} "
          f"{'host pages':>10} {'wall s':>7} {'peak MiB':>9}  result", flush=True)
    for case in cases:
        spec = {"case": case, "size": size, "trace": a.trace}
        p = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)],
                           capture_output=True, text=True, env=env, check=False)
        if p.returncode:
            print(f"{case:14} failed: {p.stderr.strip()[-500:]}", flush=True)
            failed += 1
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        out.append(r)
        b = r["built"]
        hp = b.get("host_pages_4k", 0)
        ok = "PASS" if r["peak_rss_mib"] < LIMIT_MIB else "FAIL"
        failed += ok == "FAIL"
        print(f"{case:14} {fmt_size(size):>5} {b['l3_entries']:>11,} {b['l3_tables']:>9,} "
              f"{b['dirty_pages']:>10,} {hp:>10,} {r['wall_s']:>7.1f} "
              f"{r['peak_rss_mib']:>9.0f}  {ok}", flush=True)
    for r in out:
        report(r)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
