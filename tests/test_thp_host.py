"""The host's THP memory (sim/hostmm.py): huge zero page, THP races, PMD split, COW,
MMU notifiers and KVM's mmu_notifier_retry (kvm/vm.py).

Small hand-built runs: a 4 MiB anonymous_thp slot (two 2 MiB regions), vCPU agents
with chosen accesses, every event recorded.
"""

from __future__ import annotations

import pytest

from s2sim.arch import events as ev
from s2sim.arch.geometry import Geometry
from s2sim.arch.machine import Machine
from s2sim.arch.walk import READ, WRITE, Fault
from s2sim.check.checker import Checker
from s2sim.kvm import vm
from s2sim.kvm.coalesce import variant as get_variant
from s2sim.kvm.memcache import Memcache
from s2sim.sim.costs import CostModel
from s2sim.sim.engine import Agent, Engine, Lock
from s2sim.sim.events import FaultHandled, HostMm
from s2sim.sim.hostmm import HZP, SPLIT, THP, HostMemory
from s2sim.sim.profile import load_profile
from s2sim.sim.run import run_pagetable_test
from s2sim.sim.vcpu import Vcpu
from s2sim.workloads.pagetable_test import ADJUST, CREATE, UPDATE
from s2sim.workloads.pagetable_test import TestConfig as Cfg

K, M = 1 << 10, 1 << 20
BASE = 1 << 30


class Rig:
    """A machine with one THP slot, N vCPUs and an event log."""

    def __init__(self, ncpu: int = 2, variant: str = "patch1", size: int = 4 * M) -> None:
        prof = load_profile("kunpeng920")
        self.geo = Geometry.make("4K", 40)
        self.machine = Machine(self.geo, ncpu + 1, prof.fwb, prof.ha, prof.tlb_capacity,
                               prof.walk_capacity, prof.tlb_policy)
        self.events: list = []
        self.checker = Checker()
        self.machine.bus.subscribe(self.events.append)
        self.machine.bus.subscribe(self.checker)
        self.kvm = vm.Kvm(self.machine, get_variant(variant), 1)
        self.kvm.pgt.announce(ncpu)
        self.slot = self.kvm.add_memslot(BASE, size, "anonymous_thp")
        costs = CostModel(prof)
        self.engine = Engine(self.machine)
        self.lock = Lock("mmu_lock", 40, 350)
        self.host = HostMemory(costs, self.machine, self.kvm, self.slot, self.lock)
        self.vcpus = [Vcpu(i, self.machine, self.kvm, self.engine, self.lock, costs, self.host)
                      for i in range(ncpu)]

    def run(self, plan: dict[int, list]) -> None:
        """plan: cpu -> [(ipa, access)], run concurrently from now."""
        self.events.clear()
        for cpu, accs in plan.items():
            v = self.vcpus[cpu]
            v.agent = self.engine.spawn(Agent(f"vcpu{cpu}", cpu,
                                              v.run([(a, 0, 1, acc) for a, acc in accs])))
        self.engine.run()
        assert self.checker.counts == {}, self.checker.to_dict()["violations"][:2]

    def leaf(self, ipa: int, access: int = READ):
        """What translating `ipa` gives now: (level, descriptor), a Translation or a Fault."""
        r = self.machine.translate(len(self.vcpus), self.kvm.pgt.vttbr, ipa, access)
        return r

    def of(self, kind):
        return [e for e in self.events if type(e) is kind]

    def outcomes(self) -> list[str]:
        return [e.outcome for e in self.of(FaultHandled)]

    def host_events(self) -> list[str]:
        return [e.what for e in self.of(HostMm)]


def _level(r) -> int:
    return r[0] if type(r) is tuple else r.level


def test_read_first_maps_huge_zero_block_then_writer_splits_and_retries():
    rig = Rig(2)
    rig.run({1: [(BASE, READ)]})
    assert rig.host.token(BASE) == HZP and rig.host.regions[rig.slot.pa][0] == HZP
    assert rig.host_events() == ["huge_zero_maps"]
    assert rig.outcomes() == [vm.MAPPED]
    # a 2 MiB block, read-only: reads go through, a write takes a permission fault
    assert _level(rig.leaf(BASE + 5 * 4 * K)) == 2
    w = rig.leaf(BASE, WRITE)
    assert type(w) is Fault and w.kind == "permission" and w.level == 2
    # the writer: permission fault -> write GUP on the huge zero page -> split (notifier
    # over 2M: the block is unmapped, TLBI by IPA) -> COW of page 0 (notifier over 4K)
    # -> mmu_notifier_retry -> the vCPU faults again (translation) -> 4K page mapped
    rig.run({0: [(BASE, WRITE)]})
    assert rig.host_events() == ["notifier_invalidations", "pmd_splits",
                                 "notifier_invalidations", "cows"]
    assert rig.outcomes() == [vm.RETRY, vm.MAPPED]
    clears = [e for e in rig.of(ev.DescWrite) if e.old & 1 and not e.new & 1]
    # the 2M block, once (then its table page, left empty, is unlinked and freed)
    assert clears[0].level == 2 and [c.level for c in clears[1:]] == [1]
    assert len(rig.of(ev.PageFree)) == 1
    tlbis = [e.op for e in rig.of(ev.Tlbi)]
    assert "IPAS2E1IS" in tlbis and "VMALLS12E1IS" not in tlbis
    assert rig.kvm.mmu_notifier_seq == 2 and rig.kvm.mmu_notifier_count == 0
    assert rig.host.token(BASE) == (SPLIT, 1) and rig.host.token(BASE + 4 * K) == (SPLIT, 0)
    r = rig.leaf(BASE, WRITE)
    assert type(r) is not Fault and _level(r) == 3           # 4K, writable
    # page 1 (zero page): a read maps 4K read-only; no more THP
    rig.run({1: [(BASE + 4 * K, READ)]})
    assert rig.outcomes() == [vm.MAPPED] and rig.host_events() == []
    assert _level(rig.leaf(BASE + 4 * K)) == 3
    w = rig.leaf(BASE + 4 * K, WRITE)
    assert type(w) is Fault and w.kind == "permission" and w.level == 3
    # a write there: COW of that page (notifier unmaps the read-only 4K entry), retry, map
    rig.run({0: [(BASE + 4 * K, WRITE)]})
    assert rig.host_events() == ["notifier_invalidations", "cows"]
    assert rig.outcomes() == [vm.RETRY, vm.MAPPED]
    assert type(rig.leaf(BASE + 4 * K, WRITE)) is not Fault


def test_writer_first_gets_a_thp_and_a_writable_block():
    rig = Rig(2)
    rig.run({0: [(BASE + 2 * M, WRITE)]})
    assert rig.host_events() == ["thp_allocs"]
    assert rig.host.token(BASE + 2 * M) == THP
    r = rig.leaf(BASE + 2 * M + 12 * K, WRITE)
    assert type(r) is not Fault and _level(r) == 2
    # a reader later: the THP is writable, already mapped: no fault at all
    rig.run({1: [(BASE + 2 * M + 64 * K, READ)]})
    assert rig.outcomes() == [] and rig.host_events() == []


def test_concurrent_reader_beats_the_zeroing_writer():
    # both arrive at once: the reader's huge zero page is installed long before the
    # writer's 2 MiB are clear; the writer's install fails and it splits instead
    rig = Rig(2)
    rig.run({0: [(BASE, WRITE)], 1: [(BASE, READ)]})
    hev = rig.host_events()
    assert hev[0] == "huge_zero_maps" and "thp_alloc_races_lost" in hev
    assert "thp_allocs" not in hev and "pmd_splits" in hev and "cows" in hev
    assert rig.host.token(BASE) == (SPLIT, 1)
    assert vm.RETRY in rig.outcomes()


def _handler_until(kvm, fault, mc, kind, gup=None):
    """Run KVM's fault handler to the first step of `kind`, sending `gup` after the GUP."""
    gen = kvm.handle_fault(fault, mc, 0)
    val = None
    while True:
        s = gen.send(val)
        val = gup if s.kind == vm.HOST_TOUCH else None
        if s.kind == kind:
            return gen


def _finish(gen):
    try:
        while True:
            gen.send(None)
    except StopIteration as e:
        return e.value


@pytest.mark.parametrize("how", ["seq", "count"])
def test_mmu_notifier_retry(how):
    rig = Rig(1)
    kvm, mc = rig.kvm, Memcache(rig.machine, 0)
    f = rig.leaf(BASE)
    assert type(f) is Fault
    gen = _handler_until(kvm, f, mc, vm.LOCK, gup=(False, True))
    # an invalidation ran (seq moved) or is running (count) between GUP and the lock
    if how == "seq":
        kvm.mmu_notifier_seq += 1
    else:
        kvm.mmu_notifier_count += 1
    writes = len(rig.of(ev.DescWrite))
    assert _finish(gen) == vm.RETRY
    assert len(rig.of(ev.DescWrite)) == writes              # nothing mapped
    assert type(rig.leaf(BASE)) is Fault
    if how == "count":
        kvm.mmu_notifier_count -= 1
    # unchanged: the huge zero page's GUP result maps a read-only 2M block
    gen = _handler_until(kvm, f, mc, vm.LOCK, gup=(False, True))
    assert _finish(gen) == vm.MAPPED
    assert _level(rig.leaf(BASE)) == 2 and type(rig.leaf(BASE, WRITE)) is Fault
    # a first-touch host (driver sends None) keeps today's behaviour: writable THP block
    rig2 = Rig(1)
    gen = _handler_until(rig2.kvm, rig2.leaf(BASE, WRITE), Memcache(rig2.machine, 0), vm.LOCK)
    assert _finish(gen) == vm.MAPPED and _level(rig2.leaf(BASE, WRITE)) == 2


def _stages(r):
    return {s["name"]: s for s in r["stages"]}


@pytest.mark.parametrize("variant", ["v5.11", "patch1"])
def test_pagetable_test_split_regions_adjust_maps_4k_without_coalescing(variant):
    # 2 vCPUs: vCPU 0 writes, vCPU 1 reads each region at the same time: the reader's
    # huge zero page wins, the writer splits. 4 regions.
    r = run_pagetable_test(Cfg.make(size="8M", vcpus=2, backing="anonymous_thp",
                                    variant=variant))
    st = _stages(r)
    c = st[CREATE]["host_mm"]
    assert c["huge_zero_maps"] == 4 and c["pmd_splits"] == 4 and c["cows"] == 4
    assert c["thp_allocs"] == 0 and c["thp_alloc_races_lost"] >= 1
    assert c["notifier_invalidations"] == 8
    assert st[CREATE]["mmu_notifier_retries"] == st[CREATE]["outcomes"]["retry"] > 0
    for s in (UPDATE, ADJUST):
        assert st[s]["host_mm"] == dict.fromkeys(c, 0)
    a = st[ADJUST]["outcomes"]
    # split regions: pages 1..255 of each region mapped one by one (page 0 and the
    # second half were mapped in UPDATE), never a block
    assert "coalesced" not in a and a["mapped"] == 4 * 255
    assert st[ADJUST]["table_pages_freed"] == 0


def test_one_vcpu_writer_only_keeps_thp_blocks():
    r = run_pagetable_test(Cfg.make(size="8M", vcpus=1, backing="anonymous_thp",
                                    variant="patch1"))
    st = _stages(r)
    assert st[CREATE]["host_mm"]["thp_allocs"] == 4
    assert st[CREATE]["host_mm"]["huge_zero_maps"] == 0
    assert st[ADJUST]["outcomes"].get("coalesced") == 4


@pytest.mark.parametrize("variant", ["v5.11", "patch1"])
def test_check_holds_on_a_small_thp_run(variant):
    chk = Checker()
    r = run_pagetable_test(Cfg.make(size="8M", vcpus=4, backing="anonymous_thp",
                                    variant=variant), observers=(chk,))
    assert not r["aborted"]
    d = chk.to_dict()
    assert d["total"] == 0, d["violations"][:2]
    assert _stages(r)[CREATE]["host_mm"]["pmd_splits"] > 0


def test_hugetlb_has_no_host_mm_events():
    r = run_pagetable_test(Cfg.make(size="4M", vcpus=2, backing="anonymous_hugetlb_2mb",
                                    variant="patch1"))
    for s in r["stages"]:
        assert set(s["host_mm"].values()) == {0} and s["mmu_notifier_retries"] == 0


def test_anonymous_4k_zero_page_then_cow():
    # 1 vCPU (a writer): every page allocated and zeroed by its write GUP, no zero page.
    r = run_pagetable_test(Cfg.make(size="2M", vcpus=1, backing="anonymous", variant="patch1"))
    c = _stages(r)[CREATE]["host_mm"]
    assert c["page_allocs"] == 512 and c["zero_page_maps"] == 0 and c["cows"] == 0
    assert c["notifier_invalidations"] == 0
    # 2 vCPUs, vCPU 1 reads: a page it reaches first gets the zero page, mapped
    # read-only; vCPU 0's write then COWs it, with an MMU-notifier unmap.
    r = run_pagetable_test(Cfg.make(size="2M", vcpus=2, backing="anonymous", variant="patch1"))
    st = _stages(r)
    c = st[CREATE]["host_mm"]
    assert c["zero_page_maps"] > 0
    assert c["page_allocs"] + c["cows"] == 512          # every page ends up the task's own
    assert c["cows"] == c["zero_page_maps"]             # each zero page was written later
    assert c["notifier_invalidations"] >= c["cows"]
    # pages the guest can see: the installed ones (discarded copies are not counted)
    assert st[CREATE]["host_bytes_zeroed"] == 4096 * (c["page_allocs"] + c["cows"])
    # UPDATE writes every (own) page: no host events, no retries
    assert set(st[UPDATE]["host_mm"].values()) == {0}
    assert st[UPDATE]["mmu_notifier_retries"] == 0
