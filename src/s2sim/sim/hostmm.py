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

For the convoy fast-forward (sim/convoy.py), the anonymous 4K GUP keeps its
page on a `GupState` (`active[cpu]`), re-reads it after every suspension and
drives KVM's notifier generator itself (`_notify`), so that a GUP in flight can
be moved to another page (`relabel`); `on_change(what, pa)` reports every
page-state change, which `replay` applies again at a shifted page.
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


class GupState:
    """A GUP under way: its page, and the MMU-notifier generator it drives (start or
    end, `n` steps taken). Kept on an object, and re-read after every suspension
    by the anonymous 4K GUP, so that the convoy fast-forward can relabel a GUP in
    flight to another page (`HostMemory.relabel`)."""

    __slots__ = ("cpu", "end", "ipa", "n", "sub", "write")

    def __init__(self, ipa: int, write: bool, cpu: int) -> None:
        self.ipa, self.write, self.cpu = ipa, write, cpu
        self.sub = None
        self.end = False
        self.n = 0


class HostMemory:
    """Host pages of one pagetable-test run (see the module docstring)."""

    on_change = None  # a callable (what, pa) the convoy fast-forward sets to see changes

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
        self.active: dict[int, GupState] = {}  # cpu -> its GUP under way
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
            self.on_change(what, pa)
        if self.machine.bus.on:
            self.machine.bus.emit(HostMm(self.machine.now, cpu, what, pa, size))

    def gup(self, ipa: int, write: bool, cpu: int) -> Generator:
        """hva_to_pfn for a THP or anonymous 4K slot, as an agent body fragment (yields ns, Acquire,
        Release). Returns (writable, huge): huge = PMD-mapped (a THP or the huge zero
        page), which transparent_hugepage_adjust may map as a block."""
        st = self.active[cpu] = GupState(ipa, write, cpu)
        res = yield from (self._gup_thp(ipa, write, cpu) if self.thp else self._gup_4k(st))
        del self.active[cpu]
        return res

    def _at(self, ipa: int):
        """(region, bit, page PA) of an anonymous 4K page."""
        slot = self.slot
        off = ipa - slot.base
        return (self.regions[slot.pa + (off & ~(self.pmd - 1))],
                1 << ((off & (self.pmd - 1)) // self.granule),
                slot.pa + (off & ~(self.granule - 1)))

    def _gup_4k(self, st: GupState) -> Generator:
        """Anonymous 4K: zero page, allocation, COW (module docstring). Everything that
        depends on the page is re-derived from `st` after every suspension."""
        costs, machine, g = self.costs, self.machine, self.granule
        slot = self.slot
        rpa = slot.pa + ((st.ipa - slot.base) & ~(self.pmd - 1))
        if rpa not in self.regions:
            self.regions[rpa] = [PTE, 0, 0]
        while True:
            r, bit, page_pa = self._at(st.ipa)
            if not (r[1] | r[2]) & bit:
                if not st.write:
                    # do_anonymous_page, read: the PTE gets the 4 KiB zero page
                    if costs.host_fault:
                        yield costs.host_fault
                        r, bit, page_pa = self._at(st.ipa)
                    if not (r[1] | r[2]) & bit:
                        r[2] |= bit
                        self._note(ZERO_MAP, page_pa, g, st.cpu)
                    continue
                # write: allocate and clear a page, install it if the PTE is still empty
                yield costs.zero_ns(g)
                r, bit, page_pa = self._at(st.ipa)
                self.bytes_zeroed += g
                if not (r[1] | r[2]) & bit:
                    r[1] |= bit
                    if machine.bus.on:
                        machine.bus.emit(HostTouch(machine.now, st.cpu, page_pa, g))
                    self._note(PAGE_ALLOC, page_pa, g, st.cpu)
                    return True, False
                self._note(PAGE_RACE_LOST, page_pa, g, st.cpu)  # freed; the zero page won
                continue
            if r[1] & bit:
                return True, False
            if not st.write:
                return False, False
            # do_wp_page on the zero page: copy (alloc + zero 4 KiB), then install
            yield costs.zero_ns(g)
            r, bit, page_pa = self._at(st.ipa)
            self.bytes_zeroed += g
            self._note(NOTIFIER, page_pa, g, st.cpu)
            yield from self._notify(st, False)
            r, bit, page_pa = self._at(st.ipa)
            if r[1] & bit:
                self._note(COW_RACE_LOST, page_pa, g, st.cpu)
            else:
                r[1] |= bit
                r[2] &= ~bit  # no longer the zero page
                if machine.bus.on:
                    machine.bus.emit(HostTouch(machine.now, st.cpu, page_pa, g))
                self._note(COW, page_pa, g, st.cpu)
            yield from self._notify(st, True)
            return True, False

    def _notifier(self, ipa: int, end: bool, cpu: int):
        """KVM's invalidate_range_start (or _end) over the 4 KiB page of `ipa`."""
        slot, g = self.slot, self.granule
        hva = slot.hva_of(slot.base + ((ipa - slot.base) & ~(g - 1)))
        if end:
            return self.kvm.mmu_notifier_invalidate_range_end(hva, g, cpu)
        return self.kvm.mmu_notifier_invalidate_range_start(hva, g, cpu)

    def _notify(self, st: GupState, end: bool) -> Generator:
        """`drive` (sim/vcpu.py) of a notifier generator, kept on `st` and re-read after
        every suspension (a relabel replaces it). Same charging as `drive`."""
        from s2sim.kvm.steps import INVISIBLE
        from s2sim.kvm.vm import HOST_TOUCH, LOCK, UNLOCK
        from s2sim.sim.engine import Acquire, Release

        step_ns, lock = self.costs.step_ns, self.lock
        st.end, st.n = end, 0
        st.sub = self._notifier(st.ipa, end, st.cpu)
        pending = 0
        val = None
        while True:
            try:
                s = st.sub.send(val)
            except StopIteration as e:
                st.sub = None
                if pending:
                    yield pending
                return e.value
            st.n += 1
            val = None
            k = s.kind
            if k in INVISIBLE:
                pending += step_ns(s)
                continue
            if k == LOCK:
                if pending:
                    yield pending
                    pending = 0
                yield Acquire(lock)
            elif k == UNLOCK:
                if pending:
                    yield pending
                    pending = 0
                yield Release(lock)
            elif k == HOST_TOUCH:
                raise RuntimeError("a GUP inside an MMU notifier")
            else:
                ns = pending + step_ns(s)
                pending = 0
                if ns:
                    yield ns

    def relabel(self, cpu: int, ipa: int) -> None:
        """Move `cpu`'s GUP under way to the page of `ipa` (convoy fast-forward). Only
        where it has done nothing page-specific the new page would not have: the
        caller checks that the notifier it drives, if any, has taken no step past
        its first (the lock request: nothing done yet) and that the page is in the
        same host region."""
        st = self.active[cpu]
        st.ipa = ipa
        if st.sub is not None:
            sub = self._notifier(ipa, st.end, cpu)
            sub.send(None)
            st.sub = sub

    def region_of(self, pa: int) -> int:
        """The host region (PMD) of a slot PA."""
        return self.slot.pa + ((pa - self.slot.pa) & ~(self.pmd - 1))

    def replay_periods(self, hops: list, m: int) -> None:
        """`replay` of periods i = 1..m of `hops` ((what, pa, step) in the period's order;
        change j of period i at pa + i*step), as m * len(hops) calls would apply them.

        Why in bulk: a convoy jump replays every skipped period's zero-page maps,
        allocations and COWs (anonymous 4K CREATE: millions of calls). Each change only
        sets or clears one page's bit, so per region the result is the OR of the pages
        each kind touched, in any order, as long as no page is both zero-mapped and
        COW'd in the jump (set then cleared: the order would matter); then, and for a
        step that is not whole pages, the changes are applied one by one."""
        if m <= 0 or not hops:
            return
        slot, pmd, g = self.slot, self.pmd, self.granule
        own: dict = {}
        zero: dict = {}
        cow: dict = {}
        for what, pa, step in hops:
            if what not in (ZERO_MAP, PAGE_ALLOC, COW):
                continue  # (counted, not a page state: `replay` changes nothing)
            first, last = pa + step - slot.pa, pa + m * step - slot.pa
            if step < 0 or step % g or first & ~(pmd - 1) != last & ~(pmd - 1):
                break
            s = step // g
            # bits 0, s, 2s, ... (m of them; one bit if the page does not move)
            rep = 1 if s == 0 else ((1 << (s * m)) - 1) // ((1 << s) - 1)
            mask = rep << ((first & (pmd - 1)) // g)
            rpa = slot.pa + (first & ~(pmd - 1))
            if what is ZERO_MAP:
                zero[rpa] = zero.get(rpa, 0) | mask
            else:
                own[rpa] = own.get(rpa, 0) | mask
                if what is COW:
                    cow[rpa] = cow.get(rpa, 0) | mask
        else:
            if not any(zero.get(rpa, 0) & c for rpa, c in cow.items()):
                regions = self.regions
                for rpa in own.keys() | zero.keys():
                    r = regions[rpa]
                    r[1] |= own.get(rpa, 0)
                    r[2] = (r[2] | zero.get(rpa, 0)) & ~cow.get(rpa, 0)
                return
        replay = self.replay
        for i in range(1, m + 1):
            for what, pa, step in hops:
                replay(what, pa + i * step)

    def replay(self, what: str, pa: int) -> None:
        """Apply an anonymous 4K page's state change (as recorded by `_note`) at `pa`."""
        slot = self.slot
        off = pa - slot.pa
        r = self.regions[slot.pa + (off & ~(self.pmd - 1))]
        bit = 1 << ((off & (self.pmd - 1)) // self.granule)
        if what is ZERO_MAP:
            r[2] |= bit
        elif what is PAGE_ALLOC:
            r[1] |= bit
        elif what is COW:
            r[1] |= bit
            r[2] &= ~bit

    def _gup_thp(self, ipa: int, write: bool, cpu: int) -> Generator:
        """Anonymous THP (module docstring)."""
        from s2sim.sim.vcpu import drive  # (vcpu imports this module)

        slot, kvm, costs, machine = self.slot, self.kvm, self.costs, self.machine
        pmd, g = self.pmd, self.granule
        off = ipa - slot.base
        rpa = slot.pa + (off & ~(pmd - 1))
        bit = 1 << ((off & (pmd - 1)) // g)
        page_pa = slot.pa + (off & ~(g - 1))
        regions = self.regions
        while True:
            r = regions.get(rpa)
            if r is None:
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
