"""KVM's stage-2 page-table operations (arch/arm64/kvm/hyp/pgtable.c, v5.11 behaviour).

Each public operation validates its arguments, builds a context, and returns
a generator of `Step`s (the walk, its effects, then the TLBI / barrier);
the generator's return value is an `OpResult`. Effects go through the
Machine, so the event stream sees every one.

Reference counts are KVM's: a table page counts 1 + its valid entries;
unmap frees a table whose count falls back to 1 and clears its parent entry.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from s2sim.arch import descriptors as d
from s2sim.arch.machine import Machine, Vttbr
from s2sim.arch.memory import TablePage
from s2sim.arch.tlb import IPAS2E1IS, RIPAS2LE1IS, VMALLE1IS, VMALLS12E1IS
from s2sim.errors import AddressError
from s2sim.kvm import walker as w
from s2sim.kvm.coalesce import CMO_MAP, STRATEGIES, VARIANTS, Strategy, Variant
from s2sim.kvm.events import OpDone, StageConfig
from s2sim.kvm.memcache import Memcache
from s2sim.kvm.steps import CMO, DSB, FREE, TEARDOWN, TLBI, WRITE, Step, Teardown

PERMS_MASK = d.S2AP_R | d.S2AP_W | d.XN | d.XN1


@dataclass
class OpResult:
    """What an operation did: status (0 or a named errno) and counts."""

    rc: int = 0
    leaves: int = 0          # new leaf entries installed
    tables: int = 0          # new tables installed (from the memcache)
    splits: int = 0          # blocks replaced by a table
    coalesced: int = 0       # tables replaced by a block
    unchanged: bool = False  # the mapping already existed exactly
    perm_only: bool = False  # it existed with other permissions: relax instead
    level: int = -1          # level of the leaf touched (relax, mkyoung)
    young: bool = False      # mkold: whether any entry was young
    old: int = 0             # mkyoung: the previous descriptor
    extra: dict = field(default_factory=dict)

    @property
    def errno(self) -> str:
        return w.ERRNO_NAMES.get(self.rc, "0")


def block_mapping_supported(geo, addr: int, end: int, phys: int, level: int) -> bool:
    """KVM's kvm_block_mapping_supported: a leaf of this level fits here."""
    if level < 3 and not geo.block_ok[level]:
        return False
    size = 1 << geo.shifts[level]
    if end - addr < size:
        return False
    return not (addr & (size - 1)) and not (phys & (size - 1))


_ATTRS: dict[tuple[int, bool, bool], int] = {}


def _attrs(prot: int, fwb: bool, device: bool) -> int:
    """d.leaf_attrs, memoised (it is on every fault)."""
    key = (prot, fwb, device)
    a = _ATTRS.get(key)
    if a is None:
        a = _ATTRS[key] = d.leaf_attrs(prot, fwb, device)
    return a


class Stage2PageTable:
    """A stage-2 page table (KVM's struct kvm_pgtable) on a Machine."""

    def __init__(self, machine: Machine, vmid: int = 1, variant: Variant | str = "v5.11",
                 ttl: bool = False, cpu: int = 0) -> None:
        self.machine = machine
        self.geo = machine.geo
        self.fwb = machine.fwb
        self.variant = VARIANTS[variant] if isinstance(variant, str) else variant
        self.strategy: Strategy = STRATEGIES[self.variant.coalesce]
        self.ttl = ttl  # FEAT_TTL: TLBI by IPA carries the level hint
        self.vttbr: Vttbr = machine.alloc_root(vmid, cpu)
        self.vmid = vmid
        self.fast = True  # map's one-leaf fast path (tested equal to the walker)

    # --- helpers: one effect each, as a generator: the Step first, then the effect ----
    # A Step is yielded *before* its effect: the driver charges its cost, and the
    # effect becomes visible when the cost has been paid (a write once stored, a
    # CMO once complete). Invisible work can then be batched without reordering.
    def set_pte(self, page: TablePage, idx: int, new: int, addr: int, cpu: int) -> Generator:
        yield Step(WRITE, page.level, addr, page.entries[idx], new)
        self.machine.write(page, idx, new, addr, cpu)

    def set_invalid(self, page: TablePage, idx: int, addr: int, cpu: int,
                    note: str = "break") -> Generator:
        """Clear only the valid bit (v5.11's kvm_set_invalid_pte)."""
        old = page.entries[idx]
        yield Step(WRITE, page.level, addr, old, old & ~1 & d.U64, note=note)
        self.machine.write(page, idx, old & ~1 & d.U64, addr, cpu)

    def tlbi_vmid(self, cpu: int) -> Generator:
        """__kvm_tlb_flush_vmid: TLBI VMALLS12E1IS; DSB ISH."""
        yield Step(TLBI, tlbi=VMALLS12E1IS)
        self.machine.tlbi(VMALLS12E1IS, self.vmid, cpu=cpu)
        yield Step(DSB)
        self.machine.dsb(cpu)

    def tlbi_ipa(self, addr: int, level: int, cpu: int) -> Generator:
        """__kvm_tlb_flush_vmid_ipa: IPAS2E1IS; DSB; VMALLE1IS; DSB."""
        ttl = level if self.ttl else -1
        yield Step(TLBI, level, addr, tlbi=IPAS2E1IS)
        self.machine.tlbi(IPAS2E1IS, self.vmid, addr, ttl=ttl, cpu=cpu)
        yield Step(DSB)
        self.machine.dsb(cpu)
        yield Step(TLBI, tlbi=VMALLE1IS)
        self.machine.tlbi(VMALLE1IS, self.vmid, cpu=cpu)
        yield Step(DSB)
        self.machine.dsb(cpu)

    def tlbi_range_last_level(self, addr: int, size: int, cpu: int) -> Generator:
        """TLBI RIPAS2LE1IS over [addr, addr+size); DSB. Leaves only: walk caches stay."""
        yield Step(TLBI, -1, addr, size=size, tlbi=RIPAS2LE1IS)
        self.machine.tlbi(RIPAS2LE1IS, self.vmid, addr, size, cpu=cpu)
        yield Step(DSB)
        self.machine.dsb(cpu)

    def done(self, op: str, addr: int, size: int, rc: int, cpu: int) -> None:
        """Publish that an operation completed (after its TLBIs): observers check here."""
        if self.machine.bus.on:
            self.machine.bus.emit(OpDone(self.machine.now, cpu, op, addr, size, rc))

    def announce(self, cpu: int = 0) -> None:
        """Publish the configuration observers need (geometry, root, CPU features)."""
        if self.machine.bus.on:
            g = self.geo
            self.machine.bus.emit(StageConfig(self.machine.now, cpu, g.granule, g.ipa_bits,
                                              self.vmid, self.vttbr.baddr, self.fwb,
                                              self.variant.bbm_level, self.variant.bbm_noabort))

    def cmo(self, leaf: int, level: int, cpu: int) -> Generator:
        """Clean the memory a leaf maps to PoC (DC CIVAC over the range)."""
        pa = leaf & d.oa_mask(self.geo, level)
        size = self.geo.level_size(level)
        yield Step(CMO, level, pa=pa, size=size)
        self.machine.cmo(pa, size, cpu)

    def get(self, page: TablePage, cpu: int) -> None:
        self.machine.refcount(page, +1, cpu)

    def put(self, page: TablePage, cpu: int) -> None:
        self.machine.refcount(page, -1, cpu)

    def free(self, page: TablePage, cpu: int) -> Generator:
        yield Step(FREE, page.level, pa=page.pa)
        self.machine.free_table(page.pa, cpu)

    def teardown(self, table_desc: int, level: int, cpu: int) -> Generator:
        """Free an unlinked subtree in one bulk step: every page, counting its valid entries.

        KVM walks the old subtree dropping a reference per valid entry and
        freeing each table page; the entries are left as they were (a stale
        walker reads them until the page is reused). Vectorised: one numpy
        pass per page instead of an iteration per entry.
        """
        mem = self.machine.mem
        geo = self.geo
        tmask = np.uint64(geo.table_mask)
        root = table_desc & geo.table_mask
        todo = [(root, level)]
        found: list[int] = []
        entries = 0
        while todo:
            pa, lvl = todo.pop()
            v = mem.tables[pa].view()
            entries += int(np.count_nonzero(v & np.uint64(1)))
            if lvl < 3:
                tbl = (v & np.uint64(3)) == np.uint64(3)
                todo.extend((int(c), lvl + 1) for c in (v[tbl] & tmask).tolist())
            found.append(pa)
        yield Step(TEARDOWN, level, pa=root, entries=entries, pages=len(found))
        for pa in found:
            self.machine.free_table(pa, cpu)
        if self.machine.bus.on:
            self.machine.bus.emit(Teardown(self.machine.now, cpu, root, level, len(found),
                                           entries))

    def _check_range(self, addr: int, size: int) -> None:
        g = self.geo.granule_size
        if size <= 0:
            raise AddressError(f"size {size:#x} must be positive")
        if addr & (g - 1) or size & (g - 1):
            raise AddressError(f"IPA {addr:#x} size {size:#x} is not aligned to the "
                               f"{self.geo.granule} granule")
        self.geo.check_ipa(addr, size)

    def _walk(self, visitor, flags: int, addr: int, size: int,
              skip_invalid: bool = False) -> Generator:
        wk = w.Walker(self.machine, visitor, flags, skip_invalid)
        rc = yield from wk.walk(self.vttbr.baddr, addr, size)
        if wk.visits:
            yield Step("visit", visits=wk.visits)
        return rc

    # --- map -----------------------------------------------------------------
    def map(self, addr: int, size: int, phys: int, prot: int, mc: Memcache | None,
            cpu: int = 0, device: bool = False) -> Generator:
        """kvm_pgtable_stage2_map: install leaves, creating tables, splitting blocks,
        coalescing tables into blocks by the variant's strategy."""
        self._check_range(addr, size)
        if (phys & (self.geo.granule_size - 1) or phys >> self.geo.pa_bits
                or phys + size > 1 << self.geo.pa_bits):  # else the PA wraps to 0
            raise AddressError(f"PA range {phys:#x}+{size:#x} is not {self.geo.granule}-aligned "
                               f"or exceeds the {self.geo.pa_bits}-bit PA space")
        attrs = _attrs(prot, self.fwb, device)
        cmo_in_map = (self.variant.cmo == CMO_MAP and not self.fwb and not device
                      and self.variant.mutation != "no-cmo")
        if self.fast:
            probe = self._map_probe(addr, addr + size, phys, attrs)
            if probe is not None:
                return (yield from self._map_one(probe, addr, cmo_in_map, cpu))
        ctx = MapContext(self, cpu, phys, attrs, mc, cmo_in_map)
        rc = yield from self._walk(ctx.visit, w.TABLE_PRE | w.LEAF, addr, size)
        ctx.res.rc = rc
        self.done("map", addr, size, rc, cpu)
        return ctx.res

    def _map_probe(self, addr: int, end: int, phys: int, attrs: int):
        """Read-only look ahead: is this map one leaf into existing tables (or a no-op)?

        The common fault case, decided without the generic walker. Returns
        (page, index, level, visits, old, new) when the walker would visit only
        the path to one non-table entry where the leaf fits and then install it
        or find it already there (same or permissions only); None for anything
        else (tables to create, a block to split or a table to coalesce, a
        different leaf to break), which takes the walker. Equality with the
        walker's steps and results is tested.
        """
        geo = self.geo
        tables = self.machine.mem.tables
        level = geo.start_level
        idx = geo.index(addr, level)
        epp = geo.entries_per_table
        page = tables[self.vttbr.baddr + (idx // epp) * geo.granule_size]
        idx %= epp
        visits = 0
        while True:
            pte = page.entries[idx]
            visits += 1
            fits = block_mapping_supported(geo, addr, end, phys, level)
            if level < 3 and pte & 3 == 3:
                if fits:
                    return None
                page = tables[pte & geo.table_mask]
                level += 1
                idx = (addr >> geo.shifts[level]) & (epp - 1)
                continue
            if not fits or end - addr != geo.level_size(level):
                return None
            new = d.make_leaf(phys, level, attrs)
            if pte & 1 and pte != new and (pte ^ new) & ~PERMS_MASK:
                return None
            return page, idx, level, visits, pte, new

    def _map_one(self, probe, addr: int, cmo_in_map: bool, cpu: int) -> Generator:
        page, idx, level, visits, old, new = probe
        res = OpResult()
        if old & 1:
            res.rc = w.EAGAIN
            if old == new:
                res.unchanged = True
            else:
                res.perm_only = True
        else:  # cmo() and set_pte() inlined: this is the fault path's hot spot
            m = self.machine
            if cmo_in_map and d.is_cacheable(new, self.fwb):
                pa = new & d.oa_mask(self.geo, level)
                size = 1 << self.geo.shifts[level]
                yield Step(CMO, level, pa=pa, size=size)
                m.cmo(pa, size, cpu)
            yield Step(WRITE, level, addr, page.entries[idx], new)
            m.write(page, idx, new, addr, cpu)
            m.refcount(page, +1, cpu)
            res.leaves = 1
            res.level = level
        yield Step("visit", visits=visits)
        self.done("map", addr, self.geo.level_size(level), res.rc, cpu)
        return res

    # --- unmap ---------------------------------------------------------------
    def unmap(self, addr: int, size: int, cpu: int = 0) -> Generator:
        """kvm_pgtable_stage2_unmap: clear leaves (TLBI each), CMO cacheable ones
        without FWB, free tables left empty."""
        self._check_range(addr, size)
        res = OpResult()
        tables, tmask, fwb = self.machine.mem.tables, self.geo.table_mask, self.fwb

        def visit(flag, a, end, level, page, idx):
            pte = page.entries[idx]
            if not pte & 1:
                return w.OK
            child = None
            need_cmo = False
            if level < 3 and pte & 2:
                child = tables[pte & tmask]
                if child.refcount != 1:
                    return w.OK
            elif d.is_cacheable(pte, fwb):
                need_cmo = not fwb
            yield from self.set_invalid(page, idx, a, cpu, note="clear")
            yield from self.tlbi_ipa(a, level, cpu)
            self.put(page, cpu)
            if need_cmo:
                yield from self.cmo(pte, level, cpu)
            if child is not None:
                yield from self.free(child, cpu)
            else:
                res.leaves += 1
            return w.OK

        res.rc = yield from self._walk(visit, w.LEAF | w.TABLE_POST, addr, size)
        self.done("unmap", addr, size, res.rc, cpu)
        return res

    # --- attribute updates -----------------------------------------------------
    def _update_leaves(self, addr: int, size: int, set_bits: int, clr_bits: int, cpu: int,
                       res: OpResult) -> Generator:
        """stage2_update_leaf_attrs: rewrite every valid leaf in range (no TLBI)."""

        def visit(flag, a, end, level, page, idx):
            pte = page.entries[idx]
            if not pte & 1:
                return w.OK
            res.level = level
            res.old = pte
            res.young = res.young or bool(pte & d.AF)
            new = ((pte & ~clr_bits) | set_bits) & d.U64
            if new != pte:
                yield from self.set_pte(page, idx, new, a, cpu)
                res.leaves += 1
            return w.OK

        rc = yield from self._walk(visit, w.LEAF, addr, size, skip_invalid=True)
        return rc

    def wrprotect(self, addr: int, size: int, cpu: int = 0) -> Generator:
        """Clear S2AP write on every leaf; the caller flushes the VMID after."""
        self._check_range(addr, size)
        res = OpResult()
        res.rc = yield from self._update_leaves(addr, size, 0, d.S2AP_W, cpu, res)
        return res

    def relax_perms(self, addr: int, prot: int, cpu: int = 0) -> Generator:
        """Add permissions to the leaf mapping `addr`, then TLBI it by IPA at its level."""
        g = self.geo.granule_size
        addr &= ~(g - 1)
        self._check_range(addr, g)
        set_bits = (d.S2AP_R if prot & d.PERM_R else 0) | (d.S2AP_W if prot & d.PERM_W else 0)
        clr_bits = d.XN if prot & d.PERM_X else 0
        res = OpResult()
        res.rc = yield from self._update_leaves(addr, g, set_bits, clr_bits, cpu, res)
        if res.level >= 0:
            yield from self.tlbi_ipa(addr, res.level, cpu)
        self.done("relax", addr, g, res.rc, cpu)
        return res

    def mkyoung(self, addr: int, cpu: int = 0) -> Generator:
        """Set AF on the leaf mapping `addr` (no TLBI); result.old is the previous entry."""
        g = self.geo.granule_size
        addr &= ~(g - 1)
        self._check_range(addr, g)
        res = OpResult()
        res.rc = yield from self._update_leaves(addr, g, d.AF, 0, cpu, res)
        return res

    def mkold(self, addr: int, size: int, cpu: int = 0) -> Generator:
        """Clear AF over the range; result.young says whether any entry was young.

        No TLBI, as in KVM: a stale young entry only delays the next aging.
        """
        self._check_range(addr, size)
        res = OpResult()
        res.rc = yield from self._update_leaves(addr, size, 0, d.AF, cpu, res)
        return res

    def flush(self, addr: int, size: int, cpu: int = 0) -> Generator:
        """kvm_pgtable_stage2_flush: clean every mapped cacheable leaf to PoC (no FWB)."""
        self._check_range(addr, size)
        res = OpResult()
        fwb = self.fwb

        def visit(flag, a, end, level, page, idx):
            pte = page.entries[idx]
            if pte & 1 and d.is_cacheable(pte, fwb) and not fwb:
                yield from self.cmo(pte, level, cpu)
                res.leaves += 1
            return w.OK

        res.rc = yield from self._walk(visit, w.LEAF, addr, size)
        return res

    def destroy(self, cpu: int = 0) -> Generator:
        """Free every table page, the root last. The VM is gone: no TLBI needed here."""
        geo = self.geo
        res = OpResult()
        n = geo.start_entries()
        epp = geo.entries_per_table
        root_pages = [self.machine.mem.tables[self.vttbr.baddr + i * geo.granule_size]
                      for i in range(geo.concatenated_tables)]
        for i in range(n):
            page = root_pages[i // epp]
            pte = page.entries[i % epp]
            if geo.start_level < 3 and pte & 3 == 3:
                yield from self.teardown(pte, geo.start_level + 1, cpu)
                res.tables += 1
        for page in root_pages:
            yield from self.free(page, cpu)
        return res


class MapContext:
    """State of one map walk (KVM's stage2_map_data)."""

    __slots__ = ("attrs", "cmo_in_map", "cpu", "geo", "mc", "phys", "pt", "res")

    def __init__(self, pt: Stage2PageTable, cpu: int, phys: int, attrs: int,
                 mc: Memcache | None, cmo_in_map: bool) -> None:
        self.pt, self.cpu, self.phys, self.attrs, self.mc = pt, cpu, phys, attrs, mc
        self.cmo_in_map = cmo_in_map
        self.res = OpResult()
        self.geo = pt.geo

    def visit(self, flag: int, addr: int, end: int, level: int, page: TablePage, idx: int
              ) -> Generator:
        if flag == w.TABLE_PRE:
            return self.table_pre(addr, end, level, page, idx)
        return self.leaf(addr, end, level, page, idx)

    def table_pre(self, addr, end, level, page, idx):
        """A table where a block now fits: coalesce it by the variant's strategy."""
        if not block_mapping_supported(self.geo, addr, end, self.phys, level):
            return w.OK
        old = page.entries[idx]
        block = d.make_leaf(self.phys, level, self.attrs)
        yield from self.pt.strategy.run(self, addr, level, page, idx, old, block)
        self.phys += self.geo.level_size(level)
        self.res.coalesced += 1
        self.res.level = level
        return w.SKIP

    def try_leaf(self, addr, end, level, page, idx):
        """Install a leaf here if one fits (else -E2BIG); BBM over a different leaf."""
        geo, pt, cpu = self.geo, self.pt, self.cpu
        if not block_mapping_supported(geo, addr, end, self.phys, level):
            return w.E2BIG
        old = page.entries[idx]
        new = d.make_leaf(self.phys, level, self.attrs)
        if old & 1:
            if old == new:
                self.res.unchanged = True
                return w.EAGAIN
            if not (old ^ new) & ~PERMS_MASK:
                self.res.perm_only = True
                return w.EAGAIN
            yield from pt.set_invalid(page, idx, addr, cpu)
            yield from pt.tlbi_ipa(addr, level, cpu)
            if pt.variant.mutation != "no-put":
                pt.put(page, cpu)
        if self.cmo_in_map and d.is_cacheable(new, pt.fwb):
            yield from pt.cmo(new, level, cpu)
        yield from pt.set_pte(page, idx, new, addr, cpu)
        pt.get(page, cpu)
        self.phys += geo.level_size(level)
        self.res.leaves += 1
        self.res.level = level
        return w.OK

    def leaf(self, addr, end, level, page, idx):
        """stage2_map_walk_leaf: a leaf, or a new table (splitting a block in the way)."""
        rc = yield from self.try_leaf(addr, end, level, page, idx)
        if rc != w.E2BIG:
            return rc
        if level == 3:
            return w.EINVAL
        if self.mc is None:
            return w.ENOMEM
        child = self.mc.take(level + 1)
        if child is None:
            return w.ENOMEM
        pt, cpu = self.pt, self.cpu
        old = page.entries[idx]
        if old & 1:  # a block in the way: break it, the rest is mapped lazily
            yield from pt.set_invalid(page, idx, addr, cpu)
            yield from pt.tlbi_ipa(addr, level, cpu)
            if pt.variant.mutation != "no-put":
                pt.put(page, cpu)
            self.res.splits += 1
        yield from pt.set_pte(page, idx, d.make_table(child.pa), addr, cpu)
        pt.get(page, cpu)
        self.res.tables += 1
        return w.OK


def run(gen: Generator) -> tuple[list[Step], OpResult]:
    """Drain an operation: all its steps and its result (for tests and `ops`)."""
    steps: list[Step] = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as e:
            return steps, e.value


__all__ = ["OpResult", "Stage2PageTable", "block_mapping_supported", "run"]
