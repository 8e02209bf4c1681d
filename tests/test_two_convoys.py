"""Anonymous 4K CREATE: two convoys at different rates, fast-forwarded exactly.

Odd vCPUs read every page (the host maps the zero page), even ones write (COW under
an MMU-notifier pair, whose unmap and retries also hit the readers): the readers
run ahead, two pages for each page of the writers, phase-locked through mmu_lock,
mmu_notifier_seq and the broadcast TLBIs, the gap between them growing. The
fast-forward fingerprints each convoy relative to its own front page and jumps
periods with a shift per convoy (sim/convoy.py, `_try_groups`). Every configuration
runs with and without fast-forward and must give the same result, stage by stage,
and the same machine and host state after every stage (tests/test_fastpath.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_fastpath import _kw, _run, _same

from s2sim.sim import convoy

ANON = "anonymous"
CREATE = "KVM_CREATE_MAPPINGS"


@pytest.mark.parametrize("kw", [
    _kw("2M", 50, ANON, "v5.11"),
    _kw("4M", 20, ANON, "patch1"),
    _kw("3M", 10, ANON, "v5.11"),
], ids=lambda kw: f"{kw['size']}-{kw['vcpus']}v-{kw['variant']}")
def test_two_convoys_equal_exact(kw):
    stats = _same(kw)
    fast, _, _ = _run(tuple(sorted(kw.items())), True)
    create = next(s for s in fast["stages"] if s["name"] == CREATE)
    # periods of the two convoys were jumped, not only the writers' tail
    assert stats.get("group_jumps", 0) > 0, stats
    later = sum(s["faults"] for s in fast["stages"] if s["name"] != CREATE)
    assert stats["faults"] - later > 0.3 * create["faults"], (stats, later, create["faults"])
    # after a jump, and once the readers are in the next region, the next boundary
    # reuses the verified period at its phase (a template), while the readers and the
    # writers share a region (no period up to names then)
    assert stats.get("group_template_jumps", 0) > 0, stats


@pytest.mark.parametrize("kw", [
    _kw("8M", 20, ANON, "v5.11"),
    _kw("8M", 10, ANON, "patch1"),
], ids=lambda kw: f"{kw['size']}-{kw['vcpus']}v-{kw['variant']}")
def test_two_convoys_up_to_names_equal_exact(kw):
    # once the readers lead by a region, the period up to the vCPUs' names (one writer
    # page, two reader pages: each vCPU passes its place in its convoy to the next) is
    # jumped with the TLBs set and the vCPUs renamed: results, every TLB (entries,
    # orders), table and host page equal the exact path's after every stage
    stats = _same(kw)
    assert stats.get("group_jumps_renamed", 0) > 0, stats
    # and the writers' convoy alone, once the readers are done, up to names too
    assert stats.get("jumps_renamed", 0) > 0, stats


def test_two_convoys_templates_without_names(monkeypatch):
    # with names (GROUP_ROLES off) the period is as many pages as a convoy has vCPUs;
    # the verified periods are reused at their phases in the next regions
    monkeypatch.setattr(convoy, "GROUP_ROLES", False)
    _run.cache_clear()
    stats = _same(_kw("8M", 20, ANON, "v5.11"))
    _run.cache_clear()
    assert not stats.get("group_jumps_renamed"), stats
    assert stats.get("group_template_jumps", 0) >= 3, stats


class _Fake:
    pass


def test_rename_sums_roles_along_cycles():
    # _rename's counters, by cycles of the role permutation, equal the period-by-period
    # sum: vCPU c stands for role^m[c] and holds its counters at b plus the deltas of
    # role^i[c], i < m
    rng = np.random.default_rng(7)
    n = 7
    role = [int(x) for x in rng.permutation(n)]
    keys = ("mapped", "spurious", "retry")

    def counters():
        v = tuple((*map(int, rng.integers(0, 1000, 5)),
                   tuple(sorted((k, int(rng.integers(1, 9))) for k in keys
                                if rng.random() < 0.7))) for _ in range(n))
        t = tuple(tuple(map(int, rng.integers(0, 1000, 4))) for _ in range(n))
        return {"v": v, "tlb": t}

    c0, c1 = counters(), counters()
    conv = convoy.Convoy.__new__(convoy.Convoy)
    conv.vcpus = [_Fake() for _ in range(n)]
    for u in conv.vcpus:
        u.outcomes = {}
    conv.machine = _Fake()
    conv.machine.tlbs = [_Fake() for _ in range(n)]
    conv._names = list(range(n))
    conv._mcs = [f"mc{c}" for c in range(n)]
    for m in (1, 3, n, 2 * n + 5):
        conv._names = list(range(n))
        conv._rename(role, m, c0, c1)
        for c in range(n):
            rm, walk = c, []
            for _ in range(m):
                walk.append(rm)
                rm = role[rm]
            want = [c1["v"][rm][i] + sum(c1["v"][r][i] - c0["v"][r][i] for r in walk)
                    for i in range(4)]
            u, tlb = conv.vcpus[c], conv.machine.tlbs[c]
            assert [u.accesses, u.walks, u.faults, u.conflicts] == want
            assert [tlb.hits, tlb.misses, tlb.conflicts, tlb.evictions] == [
                c1["tlb"][rm][i] + sum(c1["tlb"][r][i] - c0["tlb"][r][i] for r in walk)
                for i in range(4)]
            for k in keys:
                d0 = [dict(c0["v"][r][5]).get(k, 0) for r in walk]
                d1 = [dict(c1["v"][r][5]).get(k, 0) for r in walk]
                got = u.outcomes.get(k, 0)
                assert got == dict(c1["v"][rm][5]).get(k, 0) + sum(d1) - sum(d0)
            assert conv._names[c] == rm and u.mc == f"mc{rm}"


def test_two_convoys_small_tlbs():
    # 96-entry TLBs: the writers' notifier flushes (IPAS2E1IS + VMALLE1IS) keep them
    # from filling up; the jumps refuse any period that evicts
    stats = _same(_kw("2M", 10, ANON, "v5.11"), tlb_capacity=96)
    assert stats.get("group_jumps", 0) > 0, stats


def test_one_convoy_path_unchanged_elsewhere():
    # hugetlb and THP runs never take the several-convoys path (anonymous 4K only)
    for kw in (_kw("16M", 4, "anonymous_hugetlb_2mb", "patch1"),
               _kw("32M", 8, "anonymous_thp", "v5.11")):
        _, stats, _ = _run(tuple(sorted(kw.items())), True)
        assert stats.get("group_jumps", 0) == 0 and stats["jumps"] > 0, kw
