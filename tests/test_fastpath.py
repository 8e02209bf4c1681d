"""The convoy fast-forward (sim/convoy.py) against the exact path.

Every configuration runs twice, `fastforward=True` and `fastforward=False` (the
reference), and must give the same result: every stage key (counts, times,
windows, lock figures), the simulated time, and the same machine state after
every stage (every TLB's leaf and walk-cache entries in their replacement
order, every live table page's entries and reference count, host pages,
dirty log). The fast path must also have engaged (periods skipped), or the
comparison would prove nothing.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import pytest

from s2sim.sim import engine as eng
from s2sim.sim import hostmm
from s2sim.sim.convoy import Convoy
from s2sim.sim.profile import load_profile
from s2sim.sim.run import run_pagetable_test
from s2sim.workloads.pagetable_test import TestConfig as Cfg  # (not a pytest class)


def _state(machine) -> tuple:
    tlbs = []
    for t in machine.tlbs:
        tlbs.append((tuple(sorted((lvl, tuple(d.items())) for lvl, d in t.leaf.items())),
                     tuple(t._order),
                     tuple(sorted((lvl, tuple(d.items())) for lvl, d in t.walkc.items())),
                     tuple(t._worder)))
    tables = tuple(sorted((pa, p.refcount, p.level, bytes(p.entries))
                          for pa, p in machine.mem.tables.items()))
    mem = (machine.mem.allocated, machine.mem.freed, tuple(machine.mem._free))
    return tuple(tlbs), tables, mem


def _host_state(host) -> tuple:
    """Host pages (first touch and THP regions) and KVM's MMU-notifier counters."""
    return (tuple(sorted(host.ready.items())),
            tuple(sorted((pa, tuple(r)) for pa, r in host.regions.items())),
            host.bytes_zeroed, tuple(sorted(host.counts.items())),
            host.kvm.mmu_notifier_seq, host.kvm.mmu_notifier_count)


@cache
def _run(kw: tuple, ff: bool, tlb_capacity: int | None = 0, walk_capacity: int = 0):
    """(result, ff stats, machine state after each engine run) for one configuration
    (`tlb_capacity`, `walk_capacity`: the platform's unless non-zero)."""
    states = []
    hosts = []
    orig = eng.Engine.run
    orig_init = hostmm.HostMemory.__init__

    def run(self, until=None):
        t = orig(self, until)
        states.append((self.now, _state(self.machine) + (_host_state(hosts[-1]),)))
        return t

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        hosts.append(self)

    eng.Engine.run = run
    hostmm.HostMemory.__init__ = init
    try:
        stats: dict = {}
        cfg = Cfg.make(fastforward=ff, **dict(kw))
        prof = None
        over = {"tlb_capacity": tlb_capacity, "walk_capacity": walk_capacity}
        over = {k: v for k, v in over.items() if v != 0}
        if over:
            prof = replace(load_profile(cfg.platform), **over)
        r = run_pagetable_test(cfg, prof, ff_stats=stats)
    finally:
        eng.Engine.run = orig
        hostmm.HostMemory.__init__ = orig_init
    return r, stats, states


def _same(kw: dict, tlb_capacity: int | None = 0, walk_capacity: int = 0) -> dict:
    key = tuple(sorted(kw.items()))
    fast, stats, s_fast = _run(key, True, tlb_capacity, walk_capacity)
    exact, _, s_exact = _run(key, False, tlb_capacity, walk_capacity)
    assert stats["enabled"]
    for a, b in zip(fast["stages"], exact["stages"], strict=True):
        assert a == b, a["name"]
    for k in ("simulated_ns", "host_actions", "aborted"):
        assert fast[k] == exact[k], k
    assert len(s_fast) == len(s_exact)
    for i, (a, b) in enumerate(zip(s_fast, s_exact)):
        assert a[0] == b[0], f"time after run {i}"
        assert a[1][0] == b[1][0], f"TLBs after run {i}"
        assert a[1][1] == b[1][1], f"tables after run {i}"
        assert a[1][2] == b[1][2], f"allocator after run {i}"
        assert a[1][3] == b[1][3], f"host memory after run {i}"
    return stats


def _kw(size, vcpus, backing, variant, **extra) -> dict:
    return {"mode": "4", "size": size, "vcpus": vcpus, "backing": backing,
            "variant": variant, **extra}


H2M, H1G, THP, ANON = "anonymous_hugetlb_2mb", "anonymous_hugetlb_1gb", "anonymous_thp", \
    "anonymous"


@pytest.mark.parametrize("kw", [
    # hugetlb 2M: UPDATE's read convoys (one maps, the others are spurious), ADJUST's reads
    _kw("16M", 4, H2M, "patch1"),
    _kw("16M", 4, H2M, "v5.11"),
    _kw("8M", 3, H2M, "rfc"),
    _kw("8M", 7, H2M, "block-first"),
    _kw("8M", 1, H2M, "patch1"),
    # THP: CREATE's huge-zero-page / split / COW races (readers win, writers split and
    # retry), UPDATE's split then page convoy, ADJUST's 4K maps of split regions
    _kw("32M", 8, THP, "v5.11"),
    _kw("16M", 20, THP, "patch1"),
    _kw("64M", 4, THP, "v5.11"),
    _kw("64M", 4, THP, "patch1"),
    _kw("8M", 1, THP, "patch1"),     # writer only: THPs, coalesced again in ADJUST
    # anonymous 4K: CREATE's first-touch convoy, UPDATE's relax convoy (TLBI per fault,
    # the leader rotating), ADJUST's lock-step walks
    _kw("4M", 8, ANON, "v5.11"),
    _kw("2M", 5, ANON, "patch1"),
    _kw("2M", 1, ANON, "rfc"),
], ids=lambda kw: f"{kw['backing']}-{kw['size']}-{kw['vcpus']}v-{kw['variant']}")
def test_fastforward_equals_exact(kw):
    stats = _same(kw)
    assert stats["jumps"] > 0 and stats["periods"] > 0
    assert stats["faults"] > 0 or stats["accesses"] > 0


@pytest.mark.parametrize("kw", [
    # anonymous 4K CREATE: odd vCPUs read (zero page), even ones write (allocation races
    # lost, COW under an MMU-notifier pair, retried faults). Boundaries with GUPs and
    # notifier pairs in flight, open invalid windows, finished readers.
    _kw("2M", 50, ANON, "v5.11"),
    _kw("4M", 12, ANON, "patch1"),
    _kw("2M", 4, ANON, "v5.11"),
    _kw("4M", 2, ANON, "patch1"),
], ids=lambda kw: f"{kw['backing']}-{kw['size']}-{kw['vcpus']}v-{kw['variant']}")
def test_fastforward_anon4k_create(kw):
    stats = _same(kw)
    fast, _, _ = _run(tuple(sorted(kw.items())), True)
    later = sum(s["faults"] for s in fast["stages"] if s["name"] != "KVM_CREATE_MAPPINGS")
    # more faults skipped than UPDATE and ADJUST have: CREATE's convoy was jumped too
    assert stats["faults"] > later, (stats, later)


def test_fastforward_1g_hugetlb_one_vcpu():
    # 1 GiB blocks, one vCPU: UPDATE is 131,072 faults in 256 tables of 2 MiB, each
    # jumped over; ADJUST reads the coalesced block
    stats = _same(_kw("1G", 1, H1G, "rfc"))
    assert stats["faults"] > 120_000
    # after the first table, each one's convoy reuses the period verified in an earlier
    # table (a template): the fingerprint repeats across the region boundary; once the
    # walk cache is full, whole regions are skipped at once (region periods)
    assert stats["template_jumps"] + stats.get("regions", 0) > 200


@pytest.mark.parametrize("kw", [
    _kw("1G", 2, H1G, "v5.11"),
    _kw("1G", 3, H1G, "patch1"),
], ids=lambda kw: f"{kw['backing']}-{kw['size']}-{kw['vcpus']}v-{kw['variant']}")
def test_region_periods(kw):
    # hugetlb 1G UPDATE: one segment over 256 tables of 2 MiB; each region's period
    # allocates its table (memcache pop, top-up), writes the parent's entry, fills the
    # walk caches with the new table (the static level-1 entry drifting towards the
    # front of the walk cache's order). Periods of whole regions are jumped, exactly.
    # The first jump comes while the walk caches still fill (one entry per region: they
    # grow, b0's entries kept in place), the later ones with them full (entries evicted).
    stats = _same(kw)
    assert stats.get("region_jumps", 0) > 1 and stats["regions"] > 200, stats
    assert stats.get("region_jumps_growing", 0) > 0, stats


def test_region_periods_across_gib():
    # 2 GiB: in the second GiB the walk caches still hold the first GiB's entries (and
    # the split block's): they drift to the front and are evicted, one per region,
    # while the new GiB's entries move (a FIFO); its regions are jumped as well
    stats = _same(_kw("2G", 2, H1G, "patch1"))
    assert stats.get("region_jumps_fifo", 0) > 0 and stats["regions"] > 420, stats


def test_region_periods_small_tlbs():
    # 96-entry TLBs (a region's 512 fills evict the previous region's entries)
    stats = _same(_kw("1G", 2, H1G, "patch1"), tlb_capacity=96)
    assert stats.get("region_jumps", 0) > 0 and stats["regions"] > 200, stats


def test_region_periods_off_by_default_elsewhere():
    # hugetlb 2M UPDATE: one segment per block, its regions' tables allocated by the
    # stage (region periods over existing tables are THP's: tests/test_region_thp.py):
    # no region period, the per-region jumps as before
    stats = _same(_kw("16M", 4, H2M, "patch1"))
    assert stats.get("region_jumps", 0) == 0 and stats["jumps"] > 0


def test_templates_across_segments():
    # hugetlb 2M UPDATE: one segment per block (its second half); THP ADJUST: vCPUs
    # staggered over the read half of each region. Periods verified in one segment or
    # region are reused in the next; the result stays the exact path's.
    for kw in (_kw("16M", 4, H2M, "patch1"), _kw("64M", 4, THP, "v5.11")):
        stats = _same(kw)
        assert stats.get("template_jumps", 0) > 0, kw


@pytest.mark.parametrize("kw", [
    _kw("16M", 4, H2M, "patch1"),   # UPDATE's convoy: one fill per period and TLB
    _kw("4M", 3, ANON, "v5.11"),    # UPDATE's relax convoy (a TLBI per fault)
], ids=lambda kw: f"{kw['backing']}-{kw['size']}-{kw['vcpus']}v-{kw['variant']}")
def test_fastforward_small_tlbs(kw):
    # full TLBs: every jump evicts (the oldest entries, in replacement order); the
    # state must still be the exact path's
    stats = _same(kw, tlb_capacity=96)
    assert stats["jumps"] > 0


def test_fastforward_unbounded_tlbs():
    _same(_kw("8M", 3, H2M, "patch1"), tlb_capacity=None)


def test_fastforward_misaligned_hva():
    # a slot whose host VA is 4K off: pages instead of blocks everywhere
    _same(_kw("4M", 3, H2M, "patch1", hva_offset=4096))


def test_skips_most_of_a_convoy():
    fast, stats, _ = _run(tuple(sorted(_kw("16M", 4, H2M, "patch1").items())), True)
    update = next(s for s in fast["stages"] if s["name"] == "KVM_UPDATE_MAPPINGS")
    assert stats["faults"] > 0.8 * update["faults"]
    assert fast["engine_resumptions"] < 0.3 * _run(
        tuple(sorted(_kw("16M", 4, H2M, "patch1").items())), False)[0]["engine_resumptions"]


def test_exact_flag_and_ineligible_runs_do_not_jump():
    stats: dict = {}
    run_pagetable_test(Cfg.make(fastforward=False, **_kw("4M", 2, H2M, "patch1")),
                       ff_stats=stats)
    assert stats == {"enabled": False}
    # a random tie-break draws per push: skipping pushes would change the draws
    run_pagetable_test(Cfg.make(tie="random", seed=3, **_kw("4M", 2, H2M, "patch1")),
                       ff_stats=stats)
    assert stats == {"enabled": False}
    # any observer (the checker, a trace) needs every event: no fast-forward
    seen = []
    run_pagetable_test(Cfg.make(**_kw("4M", 2, H2M, "patch1")), observers=(seen.append,),
                       ff_stats=stats)
    assert stats == {"enabled": False} and seen


def test_eligibility_follows_the_bus():
    from s2sim.arch.geometry import Geometry
    from s2sim.arch.machine import Machine
    from s2sim.sim.metrics import KINDS, Metrics

    m = Machine(Geometry.make("4K", 40), 2)
    Metrics(m.bus)
    cfg = Cfg.make(**_kw("4M", 2, H2M, "patch1"))
    assert Convoy.eligible(cfg, m)
    m.bus.subscribe(lambda e: None, KINDS)  # a second subscriber, even of the same kinds
    assert not Convoy.eligible(cfg, m)
