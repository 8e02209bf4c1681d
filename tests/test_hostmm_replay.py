"""HostMemory.replay_periods: the bulk replay of a convoy jump's host page changes
equals the one-change-at-a-time replay (sim/hostmm.py)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from s2sim.arch.machine import Machine
from s2sim.kvm.coalesce import variant
from s2sim.kvm.vm import Kvm
from s2sim.sim.costs import CostModel
from s2sim.sim.hostmm import COW, COW_RACE_LOST, NOTIFIER, PAGE_ALLOC, PTE, ZERO_MAP, HostMemory
from s2sim.sim.profile import load_profile
from s2sim.workloads.pagetable_test import TestConfig as Config

G, PMD = 4096, 2 << 20


def _host():
    cfg = Config.make("4", "8M", 1, "anonymous")
    prof = load_profile("kunpeng920")
    machine = Machine(cfg.geometry, 2, prof.fwb, prof.ha, prof.tlb_capacity,
                      prof.walk_capacity, prof.tlb_policy)
    kvm = Kvm(machine, variant("v5.11"), 1, prof.ttl, 1)
    slot = kvm.add_memslot(1 << 30, 8 << 20, "anonymous")
    host = HostMemory(CostModel(prof), machine, kvm, slot)
    for q in range(4):
        host.regions[slot.pa + q * PMD] = [PTE, (q * 0x9E3779B97F4A7C15) % (1 << 512),
                                           (q * 0x7F4A7C159E3779B9) % (1 << 512)]
    return host


hops_st = st.lists(st.tuples(st.sampled_from([ZERO_MAP, PAGE_ALLOC, COW, NOTIFIER, COW_RACE_LOST]),
                             st.integers(0, 4 * 512 - 1), st.sampled_from([0, 1, 2, 3, 7])),
                   min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(hops_st, st.integers(1, 40))
def test_replay_periods_equals_one_by_one(hops, m):
    a, b = _host(), _host()
    hp = [(what, a.slot.pa + page * G, step * G) for what, page, step in hops]
    # only changes whose pages stay in the slot (the convoy checks its regions)
    hp = [(w, pa, s) for w, pa, s in hp if pa + m * s < a.slot.pa + 8 * (1 << 20)]
    a.replay_periods(hp, m)
    for i in range(1, m + 1):
        for what, pa, step in hp:
            b.replay(what, pa + i * step)
    assert a.regions == b.regions


def test_replay_periods_readers_ahead_writers_behind():
    """Disjoint zero-page maps (readers ahead) and COWs (writers behind), one region."""
    a, b = _host(), _host()
    pa0 = a.slot.pa
    hp = [(ZERO_MAP, pa0 + 300 * G, 2 * G), (COW, pa0 + 10 * G, G), (PAGE_ALLOC, pa0, G)]
    a.replay_periods(hp, 50)
    for i in range(1, 51):
        for what, pa, step in hp:
            b.replay(what, pa + i * step)
    assert a.regions == b.regions
    r = a.regions[pa0]
    assert all((r[2] >> (300 + 2 * i)) & 1 for i in range(1, 51))
    assert not any((r[2] >> (10 + i)) & 1 for i in range(1, 51))
