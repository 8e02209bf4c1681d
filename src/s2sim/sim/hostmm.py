"""The host's memory behind guest memory, as KVM's GUP (hva_to_pfn) meets it.

Two behaviours:

* hugetlb and shmem backings (`touch`): a host page is allocated and
  zeroed on first touch, once; a second toucher while the first is still
  zeroing waits for it (the page lock / hugetlb fault mutex). Read and write
  GUPs alike get a writable page.

* anonymous 4 KiB (`gup`, per 4 KiB page, as a split THP region's pages):
  none -> a *read* GUP maps the kernel's **4 KiB zero page** (read-only, no
  zeroing: a host fault's fixed cost), a *write* GUP allocates and zeroes a
  page and installs it if the PTE is still empty (else "race lost": freed,
  and the fault goes on as below); zero page -> a write **COWs** it (alloc +
  zero 4 KiB, MMU-notifier pair over the 4 KiB, whose unmap and
  mmu_notifier_retry make the faulting vCPUs fault again); own page ->
  writable. This is why kvm_page_table_test's CREATE (odd vCPUs read, even
  ones write) costs more than its UPDATE at 50 vCPUs.

* anonymous THP (`gup`), after Linux 5.11's mm, per 2 MiB (PMD) region:

  - none: a *read* GUP maps the **huge zero page** (PMD, read-only, no
    zeroing: a host fault's fixed cost). A *write* GUP allocates a THP and
    zeroes 2 MiB first, outside the PMD lock; it installs the THP only if the
    PMD is still empty. If a reader installed the huge zero page meanwhile,
    the writer's THP is discarded ("race lost") and it goes on as below.
  - huge zero page: reads get it (read-only, PMD-mapped, so KVM's
    transparent_hugepage_adjust maps a 2 MiB block). A write does not
    allocate a THP (do_huge_pmd_wp_page's fallback): the PMD is **split**
    into 512 PTEs of the 4 KiB zero page, between MMU-notifier
    invalidate_range_start / _end over the 2 MiB range; then the written
    4 KiB page is **COW'd** (alloc + zero 4 KiB, notifier over that 4 KiB).
  - split: per 4 KiB page, the zero page (read-only) or the task's own page
    (writable, after COW). KVM maps 4 KiB: not a THP any more.
  - THP: writable, PMD-mapped.

  Every state change happens atomically at its install point (the host's
  PMD / PTE lock), after the time its work costs. The MMU notifier is KVM's
  (kvm/vm.py): it takes mmu_lock, unmaps the stage-2 range through the
  page-table code (every write and TLBI published), and moves
  mmu_notifier_count / mmu_notifier_seq, which user_mem_abort checks.

*Simplified:* the huge zero page and the 4 KiB zero page are mapped at the
region's own PA (the memslot's linear PA), not at a shared zero frame, so
that "the slot's PA" stays the translation every access must reach (the
checker's translation_pa); the COW'd page lands at that same PA. A
discarded THP (race lost) is zeroed in another frame: it costs time and
counts as zeroed bytes but writes nothing the guest can see. The split's
work (the wp fault and 512 PTE writes) costs one `host_page_fault_ns`.
Regions are IPA-aligned (as the slot's HVA unless `hva_offset`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator

from s2sim.arch.machine import Machine
from s2sim.sim.costs import CostModel
from s2sim.sim.events import HostMm, HostTouch

# THP region states
HZP, THP, SPLIT = "hzp", "thp", "split"
PTE = "pte"  # anonymous 4K: per page none / zero page / own page (two bitmasks)
# HostMm event / counter names
HUGE_ZERO, THP_ALLOC, THP_RACE_LOST, PMD_SPLIT, COW, COW_RACE_LOST, NOTIFIER = (
    "huge_zero_maps", "thp_allocs", "thp_alloc_races_lost", "pmd_splits", "cows",
    "cow_races_lost", "notifier_invalidations")
ZERO_MAP, PAGE_ALLOC, PAGE_RACE_LOST = "zero_page_maps", "page_allocs", "page_alloc_races_lost"
HOST_EVENTS = (HUGE_ZERO, THP_ALLOC, THP_RACE_LOST, PMD_SPLIT, ZERO_MAP, PAGE_ALLOC,
               PAGE_RACE_LOST, COW, COW_RACE_LOST, NOTIFIER)


class HostMemory:
    """Host pages of one pagetable-test run (see the module docstring)."""

    on_change = None  # a callable the convoy fast-forward sets to see THP state changes

    def __init__(self, costs: CostModel, machine: Machine, kvm=None, slot=None,
                 lock=None) -> None:
        self.costs, self.machine = costs, machine
        self.kvm, self.slot, self.lock = kvm, slot, lock
        self.ready: dict[int, int] = {}
        self.bytes_zeroed = 0
        self.thp = slot is not None and slot.backing.thp
        # the GUP model (`gup`): THP, and private anonymous 4K memory (zero page, COW)
        self.mm = self.thp or (slot is not None and slot.backing.name == "anonymous"
                               and slot.backing.page_size == machine.geo.granule_size)
        # region PA -> [state, bitmask of own 4 KiB pages (split / PTE regions),
        #               bitmask of zero-page 4 KiB pages (PTE regions)]
        self.regions: dict[int, list] = {}
        self.counts: Counter = Counter()
        if self.mm:
            self.pmd = machine.geo.level_size(2)
            self.granule = machine.geo.granule_size

    # --- hugetlb, anonymous 4K: first touch ------------------------------------------
    def touch(self, pa: int, size: int, now: int, cpu: int) -> int:
        t = self.ready.get(pa)
        if t is None:
            ns = self.costs.zero_ns(size)
            self.ready[pa] = now + ns
            self.bytes_zeroed += size
            if self.machine.bus.on:
                self.machine.bus.emit(HostTouch(now, cpu, pa, size))
            return ns
        return max(0, t - now)

    # --- anonymous THP ---------------------------------------------------------------
    def token(self, ipa: int):
        """What a GUP of `ipa` would find now (no time in it: installs are atomic)."""
        slot = self.slot
        off = ipa - slot.base
        r = self.regions.get(slot.pa + (off & ~(self.pmd - 1)))
        if r is None:
            return None
        if r[0] is SPLIT:
            return (SPLIT, (r[1] >> ((off & (self.pmd - 1)) // self.granule)) & 1)
        if r[0] is PTE:
            i = (off & (self.pmd - 1)) // self.granule
            return (PTE, (r[1] >> i) & 1, (r[2] >> i) & 1)
        return r[0]

    def _note(self, what: str, pa: int, size: int, cpu: int) -> None:
        self.counts[what] += 1
        if self.on_change is not None:
            self.on_change(what)
        if self.machine.bus.on:
            self.machine.bus.emit(HostMm(self.machine.now, cpu, what, pa, size))

    def gup(self, ipa: int, write: bool, cpu: int) -> Generator:
        """hva_to_pfn for a THP or anonymous 4K slot, as an agent body fragment (yields ns, Acquire,
        Release through `drive`). Returns (writable, huge): huge = PMD-mapped (a THP or
        the huge zero page), which transparent_hugepage_adjust may map as a block."""
        from s2sim.sim.vcpu import drive  # (vcpu imports this module)

        slot, kvm, costs, machine = self.slot, self.kvm, self.costs, self.machine
        pmd, g = self.pmd, self.granule
        off = ipa - slot.base
        rpa = slot.pa + (off & ~(pmd - 1))
        bit = 1 << ((off & (pmd - 1)) // g)
        page_pa = slot.pa + (off & ~(g - 1))
        regions = self.regions
        thp = self.thp
        while True:
            r = regions.get(rpa)
            if not thp:
                if r is None:
                    r = regions[rpa] = [PTE, 0, 0]
                if not (r[1] | r[2]) & bit:
                    if not write:
                        # do_anonymous_page, read: the PTE gets the 4 KiB zero page
                        if costs.host_fault:
                            yield costs.host_fault
                        if not (r[1] | r[2]) & bit:
                            r[2] |= bit
                            self._note(ZERO_MAP, page_pa, g, cpu)
                        continue
                    # write: allocate and clear a page, install it if the PTE is still empty
                    yield costs.zero_ns(g)
                    self.bytes_zeroed += g
                    if not (r[1] | r[2]) & bit:
                        r[1] |= bit
                        if machine.bus.on:
                            machine.bus.emit(HostTouch(machine.now, cpu, page_pa, g))
                        self._note(PAGE_ALLOC, page_pa, g, cpu)
                        return True, False
                    self._note(PAGE_RACE_LOST, page_pa, g, cpu)  # freed; the zero page won
                    continue
            elif r is None:
                if not write:
                    # do_huge_pmd_anonymous_page, read: the huge zero page
                    if costs.host_fault:
                        yield costs.host_fault
                    if rpa not in regions:
                        regions[rpa] = [HZP, 0]
                        self._note(HUGE_ZERO, rpa, pmd, cpu)
                    continue
                # write: allocate a THP and clear it, then install under the PMD lock
                yield costs.zero_ns(pmd)
                self.bytes_zeroed += pmd
                if rpa not in regions:
                    regions[rpa] = [THP, 0]
                    if machine.bus.on:
                        machine.bus.emit(HostTouch(machine.now, cpu, rpa, pmd))
                    self._note(THP_ALLOC, rpa, pmd, cpu)
                    return True, True
                self._note(THP_RACE_LOST, rpa, pmd, cpu)  # freed; retry on what is there
                continue
            st = r[0]
            if st is THP:
                return True, True
            if st is HZP:
                if not write:
                    return False, True
                # do_huge_pmd_wp_page on the huge zero page: split the PMD, fall back.
                # __split_huge_pmd opens the notifier range first, then does the
                # split's work (512 PTEs) under the PMD lock, then closes the range.
                hva = slot.hva_of(rpa - slot.pa + slot.base)
                self._note(NOTIFIER, rpa, pmd, cpu)
                yield from drive(kvm.mmu_notifier_invalidate_range_start(hva, pmd, cpu),
                                 costs, self.lock, None, cpu)
                if costs.host_fault:
                    yield costs.host_fault
                if r[0] is HZP:
                    r[0] = SPLIT
                    self._note(PMD_SPLIT, rpa, pmd, cpu)
                yield from drive(kvm.mmu_notifier_invalidate_range_end(hva, pmd, cpu),
                                 costs, self.lock, None, cpu)
                continue
            # split (or PTE region): the zero page or our own page
            if r[1] & bit:
                return True, False
            if not write:
                return False, False
            # do_wp_page on the zero page: copy (alloc + zero 4 KiB), then install
            yield costs.zero_ns(g)
            self.bytes_zeroed += g
            hva = slot.hva_of(page_pa - slot.pa + slot.base)
            self._note(NOTIFIER, page_pa, g, cpu)
            yield from drive(kvm.mmu_notifier_invalidate_range_start(hva, g, cpu),
                             costs, self.lock, None, cpu)
            if r[1] & bit:
                self._note(COW_RACE_LOST, page_pa, g, cpu)
            else:
                r[1] |= bit
                if len(r) > 2:
                    r[2] &= ~bit  # (PTE region: no longer the zero page)
                if machine.bus.on:
                    machine.bus.emit(HostTouch(machine.now, cpu, page_pa, g))
                self._note(COW, page_pa, g, cpu)
            yield from drive(kvm.mmu_notifier_invalidate_range_end(hva, g, cpu),
                             costs, self.lock, None, cpu)
            return True, False
