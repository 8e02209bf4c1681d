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

import pytest
from test_fastpath import _kw, _run, _same

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
    # reuses the verified period at its phase (a template)
    assert stats.get("group_template_jumps", 0) > 0, stats


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
