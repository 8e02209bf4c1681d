"""A VM as KVM's MMU code sees it: the stage-2 table, memslots, variant, dirty log.

`user_mem_abort` and the dirty-log switches are generators of Steps like
the page-table operations, plus a few host-side step kinds the simulator
charges (lock, unlock, topup, host_touch, fault_base, fault_locked,
mark_dirty). KVM code never sees time. `host_touch` is the GUP (gfn_to_pfn_prot):
the driver performs it (sim/hostmm.py: first touch, or the THP host with its
huge zero page, splits and COWs, which call back into the MMU notifiers here)
and sends back (writable, PMD-mapped), or None for "writable; PMD-mapped iff
the slot is THP" (first-touch hosts, the explorer).
"""

from __future__ import annotations

from s2sim.arch import descriptors as d
from s2sim.arch.machine import Machine
from s2sim.arch.walk import ACCESS_FLAG, EXEC, PERMISSION, WRITE, Fault
from s2sim.errors import AddressError, ConfigError
from s2sim.kvm import walker as w
from s2sim.kvm.coalesce import CMO_FAULT, Variant
from s2sim.kvm.events import DirtyLog, MarkDirty, MemslotAdded
from s2sim.kvm.memcache import Memcache
from s2sim.kvm.memslot import Memslot, resolve_backing, thp_adjust
from s2sim.kvm.pgtable import Stage2PageTable
from s2sim.kvm.steps import CMO, Step

# Host-side step kinds (charged by sim/, invisible to the architecture).
LOCK, UNLOCK, TOPUP, HOST_TOUCH, FAULT_BASE, FAULT_LOCKED, MARK_DIRTY, DIRTY_LOG_SETUP = (
    "lock", "unlock", "topup", "host_touch", "fault_base", "fault_locked", "mark_dirty",
    "dirty_log_setup")

# Fault outcomes.
# RETRY: mmu_notifier_retry said an invalidation ran (or runs) since the fault read
# mmu_notifier_seq: nothing mapped, the vCPU re-enters the guest and faults again.
MAPPED, SPLIT, COALESCED, RELAXED, SPURIOUS, YOUNG, ENOMEM_RETRY, RETRY = (
    "mapped", "split", "coalesced", "relaxed", "spurious", "young", "enomem", "retry")
OUTCOMES = (MAPPED, SPLIT, COALESCED, RELAXED, SPURIOUS, YOUNG, ENOMEM_RETRY, RETRY)


_LOCK, _UNLOCK, _FAULT_BASE, _FAULT_LOCKED = (Step(LOCK), Step(UNLOCK), Step(FAULT_BASE),
                                               Step(FAULT_LOCKED))


class Kvm:
    """One VM's stage-2 MMU state on a Machine."""

    def __init__(self, machine: Machine, variant: Variant, vmid: int = 1, ttl: bool = False,
                 host_cpu: int = 0) -> None:
        self.machine, self.geo, self.variant = machine, machine.geo, variant
        self.pgt = Stage2PageTable(machine, vmid, variant, ttl, host_cpu)
        self.memslots: list[Memslot] = []
        self.min_pages = self.geo.levels - 1  # kvm_mmu_cache_min_pages
        # MMU notifier state (kvm->mmu_notifier_seq / _count): bumped by the host's
        # invalidations (sim/hostmm.py), checked by user_mem_abort under mmu_lock
        self.mmu_notifier_seq = 0
        self.mmu_notifier_count = 0

    def add_memslot(self, base: int, size: int, backing: str, hva_offset: int = 0) -> Memslot:
        geo = self.geo
        b = resolve_backing(backing, geo)
        if size <= 0 or size % b.page_size:
            raise ConfigError(f"memslot size {size:#x} is not a multiple of the {backing} page "
                              f"size {b.page_size:#x}")
        if base % b.page_size:
            raise AddressError(f"memslot base {base:#x} is not aligned to the {backing} page "
                               f"size {b.page_size:#x}")
        geo.check_ipa(base, size)
        for s in self.memslots:
            if base < s.base + s.size and s.base < base + size:
                raise AddressError(f"memslot {base:#x}+{size:#x} overlaps slot {s.slot_id}")
        align = max(b.page_size, max(geo.level_size(lv) for lv in geo.leaf_levels()))
        pa = self.machine.mem.alloc_data(size, min(align, 1 << 30))
        hva = (1 << 40) + base + hva_offset  # host VA: aligned like the IPA unless offset
        slot = Memslot(len(self.memslots), base, size, hva, pa, b)
        self.memslots.append(slot)
        if self.machine.bus.on:
            self.machine.bus.emit(MemslotAdded(self.machine.now, -1, slot.slot_id, base, size,
                                               pa))
        return slot

    def find_memslot(self, ipa: int) -> Memslot | None:
        for s in self.memslots:
            if s.contains(ipa):
                return s
        return None

    # --- dirty logging ---------------------------------------------------------
    def enable_dirty_log(self, slot: Memslot, cpu: int):
        """KVM_MEM_LOG_DIRTY_PAGES on: set up the bitmap, write-protect the slot, flush the VMID."""
        yield Step(DIRTY_LOG_SETUP, pages=slot.size // self.geo.granule_size)
        yield _LOCK
        slot.logging = True
        slot.dirty = set()
        res = yield from self.pgt.wrprotect(slot.base, slot.size, cpu)
        yield from self.pgt.tlbi_vmid(cpu)
        self.pgt.done("wrprotect", slot.base, slot.size, res.rc, cpu)
        if self.machine.bus.on:
            self.machine.bus.emit(DirtyLog(self.machine.now, cpu, slot.slot_id, True))
        yield _UNLOCK
        return res

    def disable_dirty_log(self, slot: Memslot, cpu: int):
        """Logging off: nothing changes in the table until the next faults."""
        slot.logging = False
        if self.machine.bus.on:
            self.machine.bus.emit(DirtyLog(self.machine.now, cpu, slot.slot_id, False))
        yield from ()  # a generator like every host action, with no step of its own

    # --- MMU notifiers (kvm_mmu_notifier_invalidate_range_start / _end) ---------------
    def mmu_notifier_invalidate_range_start(self, hva: int, size: int, cpu: int):
        """The host is about to change [hva, hva+size): under mmu_lock, count the
        invalidation in progress and unmap the stage-2 range it backs (per leaf:
        clear, TLBI by IPA, CMO without FWB; emptied tables freed)."""
        yield _LOCK
        self.mmu_notifier_count += 1
        for slot in self.memslots:
            lo, hi = max(hva, slot.hva), min(hva + size, slot.hva + slot.size)
            if lo < hi:
                yield from self.pgt.unmap(slot.base + (lo - slot.hva), hi - lo, cpu)
        yield _UNLOCK

    def mmu_notifier_invalidate_range_end(self, hva: int, size: int, cpu: int):
        """The host's change is done: a new sequence number, one invalidation less
        (v5.11 takes mmu_lock for it)."""
        yield _LOCK
        self.mmu_notifier_seq += 1
        self.mmu_notifier_count -= 1
        yield _UNLOCK

    # --- the fault handler ---------------------------------------------------------
    def handle_fault(self, fault: Fault, mc: Memcache, cpu: int):
        """kvm_handle_guest_abort: an access-flag fault or user_mem_abort. Returns the outcome."""
        slot = self.find_memslot(fault.ipa)
        if slot is None:
            raise AddressError(f"guest access to IPA {fault.ipa:#x} outside every memslot")
        if fault.kind == ACCESS_FLAG:
            yield _FAULT_BASE
            yield _LOCK
            res = yield from self.pgt.mkyoung(fault.ipa, cpu)
            yield _UNLOCK
            return YOUNG if res.leaves else SPURIOUS
        return (yield from self.user_mem_abort(fault, slot, mc, cpu))

    def user_mem_abort(self, fault: Fault, slot: Memslot, mc: Memcache, cpu: int):
        """v5.11's user_mem_abort, in its order (DOMAIN.md 4), with the MMU-notifier
        protocol: mmu_seq read before the GUP, mmu_notifier_retry under the lock."""
        geo, pgt = self.geo, self.pgt
        ipa = fault.ipa
        write = fault.access == WRITE
        exec_fault = fault.access == EXEC
        perm = fault.kind == PERMISSION
        yield _FAULT_BASE
        size, force_pte = slot.mapping_size(ipa, geo)
        if not perm or (slot.logging and write):
            n = mc.topup(self.min_pages)
            if n:
                yield Step(TOPUP, pages=n)
        mmu_seq = self.mmu_notifier_seq  # read before the GUP (the convoy reads it too)
        host_pa, host_size = slot.host_page(ipa)
        # gfn_to_pfn_prot: the driver performs the GUP and sends back (writable, huge),
        # or None (first-touch hosts: a writable page, PMD-mapped iff the slot is THP)
        gup = yield Step(HOST_TOUCH, ipa=ipa, pa=host_pa, size=host_size,
                         note="write" if write else "read")
        host_writable, host_huge = (True, slot.backing.thp) if gup is None else gup
        writable = host_writable and not slot.readonly and (write or not slot.logging)
        yield _LOCK
        yield _FAULT_LOCKED
        if self.mmu_notifier_count or self.mmu_notifier_seq != mmu_seq:
            yield _UNLOCK  # mmu_notifier_retry: the pfn may be stale; fault again
            return RETRY
        if host_huge:
            size = thp_adjust(slot, ipa, geo, size, force_pte)
        base = ipa & ~(size - 1)
        pa = slot.pa_of(base)
        if self.variant.cmo == CMO_FAULT and not perm and not self.machine.fwb:
            yield Step(CMO, pa=pa, size=size)  # v5.11: clean the whole mapping, every time
            self.machine.cmo(pa, size, cpu)
        prot = d.PERM_R | (d.PERM_W if writable else 0) | (d.PERM_X if exec_fault else 0)
        fault_granule = geo.level_size(fault.level)
        if perm and size == fault_granule:
            res = yield from pgt.relax_perms(ipa, prot, cpu)
            outcome = RELAXED if res.leaves else SPURIOUS
        else:
            res = yield from pgt.map(base, size, pa, prot, mc, cpu)
            if res.rc == w.ENOMEM:
                outcome = ENOMEM_RETRY
            elif res.coalesced:
                outcome = COALESCED
            elif res.splits:
                outcome = SPLIT
            elif res.leaves:
                outcome = MAPPED
            else:
                outcome = SPURIOUS
        skip = self.variant.mutation == "no-dirty" and perm and size == fault_granule
        if writable and slot.logging and res.rc == w.OK and not skip:
            first = ipa & ~(geo.granule_size - 1)
            yield Step(MARK_DIRTY, ipa=first)
            slot.dirty.add(first)
            if self.machine.bus.on:
                self.machine.bus.emit(MarkDirty(self.machine.now, cpu, first))
        yield _UNLOCK
        return outcome
