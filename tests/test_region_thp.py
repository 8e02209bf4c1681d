"""Region periods of anonymous THP runs (sim/convoy.py `_region_jump_tables`) against
the exact path.

UPDATE of a THP run maps 4 KiB pages into level-3 tables that CREATE allocated
(the huge zero page split, page 0 COW'd): a period of whole regions allocates
nothing, changes no host state (its GUPs find the zero page or the task's own
page) and spans two segments per region (the write of the block's first page,
the reads of its second half). With 4-12 vCPUs the convoy's leader rotates and
the period is as many regions as vCPUs. Each configuration runs with the fast
paths on and off and must give the same results and machine state after every
stage (tests/test_fastpath.py's comparison), with region periods jumped. ADJUST's
periods (one segment) come back only with a few vCPUs.
"""

from __future__ import annotations

import pytest
from test_fastpath import _kw, _run, _same

from s2sim.sim import convoy

THP = "anonymous_thp"


@pytest.mark.parametrize("kw", [
    _kw("16M", 20, THP, "v5.11"),
    _kw("16M", 20, THP, "patch1"),
    _kw("32M", 3, THP, "v5.11"),
    _kw("8M", 5, THP, "rfc"),
    _kw("16M", 4, THP, "block-first"),
], ids=lambda kw: f"{kw['size']}-{kw['vcpus']}v-{kw['variant']}")
def test_thp_region_periods(kw):
    stats = _same(kw)
    assert stats.get("region_jumps_tables", 0) > 0, stats
    assert stats.get("region_jumps_segments", 0) > 0, stats  # UPDATE: across segments


def test_thp_region_periods_of_several_regions(monkeypatch):
    # 4 vCPUs: the leader of UPDATE's convoy rotates. Up to the vCPUs' names the
    # period is one region (each passes its role to the next); with names, 4 regions
    monkeypatch.setattr(convoy, "ROLES", False)
    _run.cache_clear()
    stats = _same(_kw("32M", 4, THP, "v5.11"))
    _run.cache_clear()
    assert stats.get("region_jumps_multi", 0) > 0 and stats["regions"] >= 4, stats
    assert not stats.get("region_jumps_renamed"), stats


def test_thp_region_periods_up_to_names():
    # the same runs with vCPUs renamed over each jump: results, every TLB (entries and
    # counters), table, memcache and host page the exact path's after every stage
    stats = _same(_kw("32M", 4, THP, "v5.11"))
    assert stats.get("region_jumps_renamed", 0) > 0 and stats["regions"] >= 4, stats
    # v5.11 ADJUST at 20 vCPUs: the order of the convoy changes from region to region
    stats = _same(_kw("64M", 20, THP, "v5.11"), walk_capacity=8)
    assert stats.get("region_jumps_renamed", 0) > 0, stats


def test_thp_adjust_region_periods():
    # 4 vCPUs, 16 regions: ADJUST's period (in one segment) reads tables whose walk-cache
    # entries UPDATE left, all of them: the walk caches stay as they are over the jump
    stats = _same(_kw("32M", 4, THP, "patch1"))
    assert stats["region_jumps_tables"] > stats["region_jumps_segments"] > 0, stats


def test_thp_update_skips_whole_regions():
    # 20 vCPUs, 8 regions: from the third on, UPDATE's regions are jumped at once
    key = tuple(sorted(_kw("16M", 20, THP, "v5.11").items()))
    fast, stats, _ = _run(key, True)
    assert stats["regions"] >= 5, stats
    exact, _, _ = _run(key, False)
    upd = [r["engine_resumptions"] for r in (fast, exact)]
    assert upd[0] < upd[1], upd


@pytest.mark.parametrize("variant", ["v5.11", "patch1"])
def test_thp_region_periods_across_parent_tables(variant):
    # the slot straddles a GiB (two level-2 tables); 8-entry walk caches are full, and
    # after the crossing they hold the last regions walked in both: those entries are
    # renamed through the previous level-2 table
    kw = _kw("64M", 4, THP, variant, offset=(1 << 30) - (32 << 20))
    stats = _same(kw, walk_capacity=8)
    assert stats.get("region_jumps_two_parents", 0) > 0, stats


def test_thp_region_snapshot_at_first_sighting(monkeypatch):
    # once a region period was jumped in a stage, the next candidate is snapshotted at
    # its first sighting: one period fewer runs exactly before each later jump
    kw = _kw("64M", 6, THP, "patch1")
    key = tuple(sorted(kw.items()))
    monkeypatch.setattr(convoy, "REGION_RECUR", False)
    _run.cache_clear()
    _, late, _ = _run(key, True, 0, 8)
    _run.cache_clear()
    monkeypatch.setattr(convoy, "REGION_RECUR", True)
    stats = _same(kw, walk_capacity=8)
    _run.cache_clear()
    assert stats["regions"] > late["regions"], (stats, late)
