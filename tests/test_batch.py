"""vCPU read batches (sim/batch.py) against the one-access-per-step path.

Each configuration runs with the fast paths (convoy fast-forward and read
batches) and on the reference path (`fastforward=False`: neither), and must
give the same result: every stage key, the simulated time, and every TLB (its
entries in replacement order) after every engine run. A perturbing host agent
(TLBIs by IPA and by range, whole-VMID flushes, descriptor rewrites, at times
that fall on the vCPUs' access times too) makes batches be cut mid-way.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from s2sim.arch.tlb import IPAS2E1IS, IPAS2LE1IS, RIPAS2E1IS, VMALLS12E1IS
from s2sim.sim import batch as batch_mod
from s2sim.sim import engine as eng
from s2sim.sim import run as run_mod
from s2sim.sim.profile import load_profile
from s2sim.workloads.pagetable_test import TestConfig as Cfg  # (not a pytest class)

THP, H2M, ANON = "anonymous_thp", "anonymous_hugetlb_2mb", "anonymous"


def _tlbs(machine) -> tuple:
    return tuple((tuple(sorted((lvl, tuple(d.items())) for lvl, d in t.leaf.items())),
                  tuple(t._order), tuple(t._worder), t.evictions) for t in machine.tlbs)


def _perturber(machine, base: int, size: int, period: int, count: int):
    """A host agent poking at the slot: what a batch must notice (and what it may not)."""
    geo = machine.geo
    vmid = 1
    ops = (IPAS2E1IS, RIPAS2E1IS, IPAS2LE1IS, "rewrite", VMALLS12E1IS)

    def body():
        x = 0x9E3779B1
        for i in range(count):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            ipa = base + (x % (size >> 12)) * 4096
            op = ops[i % len(ops)] if i % 7 else VMALLS12E1IS
            if op == "rewrite":
                # the same descriptor written again: a write the batch reads, no change
                table = machine.mem.tables
                for page in list(table.values()):
                    if page.level == 3 and page.entries[(ipa >> 12) & 511] & 1:
                        idx = (ipa >> 12) & 511
                        machine.write(page, idx, page.entries[idx], ipa, machine.ncpus - 1)
                        break
            else:
                sz = 64 * 4096 if op == RIPAS2E1IS else 0
                machine.tlbi(op, vmid, ipa, sz, -1, machine.ncpus - 1)
                machine.dsb(machine.ncpus - 1)
            yield period + (x % 97)
    del geo
    return body()


def _run(kw: dict, ff: bool, perturb: int = 0, tlb_capacity: int | None = 0,
         batch: bool = True):
    """(result, stats, TLB states after each engine run)."""
    states = []
    calls = [0]
    orig = eng.Engine.run

    def run(self, until=None):
        calls[0] += 1
        if perturb and calls[0] in (3, 5):  # UPDATE and ADJUST
            base = min(s.base for s in kvm_slots)
            self.spawn(eng.Agent("perturb", self.machine.ncpus - 1,
                                 _perturber(self.machine, base, size, perturb, 3000)),
                       self.now + 137)
        t = orig(self, until)
        states.append((self.now, _tlbs(self.machine)))
        return t

    kvm_slots = []
    orig_add = run_mod.Kvm.add_memslot

    def add(self, *a, **k):
        s = orig_add(self, *a, **k)
        kvm_slots.append(s)
        return s

    cfg = Cfg.make(fastforward=ff, **kw)
    size = cfg.size
    prof = None
    if tlb_capacity != 0:
        prof = replace(load_profile(cfg.platform), tlb_capacity=tlb_capacity)
    eng.Engine.run = run
    run_mod.Kvm.add_memslot = add
    try:
        stats: dict = {}
        r = run_mod._run(cfg, prof, (), stats, batch=batch)
    finally:
        eng.Engine.run = orig
        run_mod.Kvm.add_memslot = orig_add
    return r, stats, states


def _same(kw: dict, **opts) -> dict:
    fast, stats, s_fast = _run(kw, True, **opts)
    exact, _, s_exact = _run(kw, False, **opts)
    for a, b in zip(fast["stages"], exact["stages"], strict=True):
        assert a == b, a["name"]
    assert fast["simulated_ns"] == exact["simulated_ns"]
    assert len(s_fast) == len(s_exact)
    for i, (a, b) in enumerate(zip(s_fast, s_exact)):
        assert a == b, f"TLBs after engine run {i}"
    return stats


def _kw(size, vcpus, backing, variant) -> dict:
    return {"mode": "4", "size": size, "vcpus": vcpus, "backing": backing, "variant": variant}


@pytest.mark.parametrize("kw", [
    _kw("16M", 20, THP, "patch1"),   # ADJUST: readers of each region's mapped half
    _kw("16M", 8, THP, "v5.11"),
    _kw("8M", 40, THP, "v5.11"),
    _kw("8M", 20, THP, "rfc"),
    _kw("4M", 8, ANON, "v5.11"),     # lock-step readers: batches in step with each other
    _kw("4M", 3, ANON, "patch1"),
], ids=lambda kw: f"{kw['backing']}-{kw['size']}-{kw['vcpus']}v-{kw['variant']}")
def test_batches_equal_one_access_per_step(kw):
    stats = _same(kw)
    assert stats["batches"] > 0 and stats["batched_accesses"] > stats["batches"]
    assert "batch_redos" not in stats


@pytest.mark.parametrize("kw,period", [
    (_kw("8M", 20, THP, "v5.11"), 9000),
    (_kw("8M", 8, THP, "patch1"), 5000),
    (_kw("4M", 8, ANON, "v5.11"), 700),
    (_kw("4M", 5, ANON, "rfc"), 75),      # the access period: interrupts on access times
], ids=["thp-20v", "thp-8v", "anon-8v", "anon-5v-on-beat"])
def test_cut_batches_equal_one_access_per_step(kw, period):
    stats = _same(kw, perturb=period)
    assert stats["batch_cuts"] > 0


def test_small_tlbs_evict_as_single_fills():
    # a batch longer than the TLB: the bulk fill must evict exactly as n fills would
    stats = _same(_kw("8M", 8, THP, "v5.11"), tlb_capacity=48)
    assert stats["batches"] > 0
    stats = _same(_kw("8M", 8, THP, "v5.11"), tlb_capacity=48, perturb=1300)
    assert stats["batch_cuts"] > 0


def test_undecidable_order_redoes_the_run_without_batches(monkeypatch):
    kw = _kw("8M", 20, THP, "v5.11")
    ref = run_mod.run_pagetable_test(Cfg.make(fastforward=False, **kw))

    def tie(self, agent, j):
        raise batch_mod.BatchTie("forced")

    monkeypatch.setattr(batch_mod.ReadBatch, "first", tie)
    monkeypatch.setattr(batch_mod.ReadBatch, "note", lambda self, agent, t: tie(self, agent, 0)
                        if (t - self.t1) % self.c == 0 and self.t1 <= t <= self.last_time
                        else None)
    stats: dict = {}
    r = run_mod.run_pagetable_test(Cfg.make(**kw), ff_stats=stats)
    assert stats["batch_redos"] == 1 and "batches" not in stats
    assert r["stages"] == ref["stages"] and r["simulated_ns"] == ref["simulated_ns"]


def test_no_batches_with_observers_or_random_ties():
    kw = _kw("8M", 8, THP, "v5.11")
    stats: dict = {}
    run_mod.run_pagetable_test(Cfg.make(**kw), observers=(lambda e: None,), ff_stats=stats)
    assert "batches" not in stats
    run_mod.run_pagetable_test(Cfg.make(tie="random", seed=1, **kw), ff_stats=stats)
    assert "batches" not in stats
    run_mod.run_pagetable_test(Cfg.make(runahead=False, **kw), ff_stats=stats)
    assert "batches" not in stats
