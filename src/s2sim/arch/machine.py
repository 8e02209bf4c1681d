"""The machine: one object through which every architecturally visible effect goes.

KVM code (kvm/) writes descriptors, issues TLBIs and DSBs, cleans caches and
allocates table pages only through here; vCPUs translate through here. Each
effect is published on `bus` stamped with `now` (simulated ns, owned by sim/).
Nothing here refuses an unsafe sequence: the checker judges, the model obeys.
"""

from __future__ import annotations

from dataclasses import dataclass

from s2sim.arch import events as ev
from s2sim.arch.geometry import Geometry
from s2sim.arch.memory import PhysMem, TablePage
from s2sim.arch.tlb import IPAS2LE1IS, RIPAS2LE1IS, TLB, TLBI_OPS, VMALLE1IS, Conflict
from s2sim.arch.walk import ACCESS_NAMES, Fault, Translation, permits, walk_path
from s2sim.errors import ConfigError

LEAF_ONLY = (VMALLE1IS, IPAS2LE1IS, RIPAS2LE1IS)  # TLBIs that keep walk caches


@dataclass(frozen=True, slots=True)
class Vttbr:
    """VTTBR_EL2: the VMID and the base address of the stage-2 start-level table(s)."""

    vmid: int
    baddr: int


class Machine:
    """CPUs (their TLBs), physical memory and the event bus for one geometry."""

    def __init__(self, geo: Geometry, ncpus: int = 1, fwb: bool = False, ha: bool = False,
                 tlb_capacity: int | None = 2048, walk_capacity: int | None = 64,
                 tlb_policy: str = "lru") -> None:
        if ncpus < 1:
            raise ConfigError(f"CPU count {ncpus} must be at least 1")
        self.geo, self.fwb, self.ha = geo, fwb, ha
        self.mem = PhysMem(geo.granule_size, geo.pa_bits)
        self.bus = ev.EventBus()
        self.now = 0
        table_levels = tuple(range(geo.start_level, 3))
        self.tlbs = [TLB(geo.shifts, geo.leaf_levels(), table_levels, tlb_capacity,
                         walk_capacity, tlb_policy) for _ in range(ncpus)]
        self._pending: dict[int, list[tuple]] = {}
        self.last_walk_levels = 0
        self.counts = {"writes": 0, "tlbi": 0, "dsb": 0, "cmo_bytes": 0, "walks": 0}

    @property
    def ncpus(self) -> int:
        return len(self.tlbs)

    # --- descriptors -----------------------------------------------------------
    def write(self, page: TablePage, index: int, new: int, ipa: int = -1, cpu: int = 0,
              hw: bool = False) -> int:
        """Store `new` at `page[index]`; returns the old value."""
        if page.watch is not None:  # a vCPU read batch reads it: settle it first
            for b in tuple(page.watch):
                b.on_write(index)
        old = page.entries[index]
        page.entries[index] = new
        self.counts["writes"] += 1
        if self.bus.on:
            self.bus.emit(ev.DescWrite(self.now, cpu, page.pa, index, page.level, ipa, old, new,
                                       hw))
        return old

    # --- TLB maintenance -----------------------------------------------------------
    def tlbi(self, op: str, vmid: int, ipa: int = 0, size: int = 0, ttl: int = -1,
             cpu: int = 0) -> None:
        """Issue a broadcast TLBI; it completes at this CPU's next `dsb`."""
        if op not in TLBI_OPS:
            raise ConfigError(f"TLBI {op!r} is not modelled; use one of {', '.join(TLBI_OPS)}")
        self._pending.setdefault(cpu, []).append((op, vmid, ipa, size, ttl))
        self.counts["tlbi"] += 1
        if self.bus.on:
            self.bus.emit(ev.Tlbi(self.now, cpu, op, vmid, ipa, size, ttl))

    def dsb(self, cpu: int = 0) -> None:
        """DSB ISH: complete this CPU's outstanding TLBIs on every CPU."""
        ops = self._pending.pop(cpu, [])
        for op, vmid, ipa, size, ttl in ops:
            walk = op not in LEAF_ONLY
            for tlb in self.tlbs:
                if tlb.batch is not None:  # a vCPU read batch in flight: settle it first
                    tlb.batch.on_tlbi(op, vmid, ipa, size, ttl)
                # a TLB with nothing the operation could drop is left alone (same state)
                if tlb._pend or any(tlb._leafdicts) or (walk and any(tlb._walkdicts)):
                    tlb.invalidate(op, vmid, ipa, size, ttl)
        self.counts["dsb"] += 1
        if self.bus.on:
            self.bus.emit(ev.Dsb(self.now, cpu, len(ops)))

    # --- caches --------------------------------------------------------------------
    def cmo(self, pa: int, size: int, cpu: int = 0) -> None:
        """Clean and invalidate [pa, pa+size) to the point of coherency."""
        self.counts["cmo_bytes"] += size
        if self.bus.on:
            self.bus.emit(ev.Cmo(self.now, cpu, pa, size))

    # --- table pages -------------------------------------------------------------
    def alloc_table(self, level: int, cpu: int = 0) -> TablePage:
        page = self.mem.alloc_table(level)
        if self.bus.on:
            self.bus.emit(ev.PageAlloc(self.now, cpu, page.pa, page.generation))
        return page

    def free_table(self, pa: int, cpu: int = 0) -> None:
        live = self.mem.tables.get(pa)
        if live is not None and live.watch is not None:
            for b in tuple(live.watch):
                b.cut_now()
        page = self.mem.free_table(pa)
        if self.bus.on:
            self.bus.emit(ev.PageFree(self.now, cpu, pa, page.generation))

    def refcount(self, page: TablePage, delta: int, cpu: int = 0) -> int:
        page.refcount += delta
        if self.bus.on and self.bus.want["refcount"]:
            self.bus.emit(ev.RefCount(self.now, cpu, page.pa, page.refcount, delta))
        return page.refcount

    def alloc_root(self, vmid: int = 1, cpu: int = 0) -> Vttbr:
        """Allocate the start-level table(s), physically contiguous and aligned."""
        n = self.geo.concatenated_tables
        g = self.geo.granule_size
        mem = self.mem
        align = n * g
        base = (mem._next_table + align - 1) & ~(align - 1)
        mem._next_table = base
        # Fresh contiguous frames: a freed page on the free list would break contiguity.
        free, mem._free = mem._free, []
        try:
            pages = [self.alloc_table(self.geo.start_level, cpu) for _ in range(n)]
        finally:
            mem._free = free
        assert pages[0].pa == base and pages[-1].pa == base + (n - 1) * g
        return Vttbr(vmid, base)

    # --- the hardware access path ------------------------------------------------
    def translate(self, cpu: int, vttbr: Vttbr, ipa: int, access: int
                  ) -> Translation | Fault | Conflict | tuple[int, int]:
        """What `cpu` gets for an access: a TLB hit as (level, desc), or the walk's result.

        On a miss the walk fills the walk cache with every table entry it
        followed and the TLB with the leaf (unless nT is set). A hit whose
        permissions forbid the access is a permission fault from the TLB.
        """
        r = self.lookup(cpu, vttbr, ipa, access)
        return self.walk(cpu, vttbr, ipa, access) if r is None else r

    def lookup(self, cpu: int, vttbr: Vttbr, ipa: int, access: int
               ) -> Fault | Conflict | tuple[int, int] | None:
        """The TLB half of `translate`: a hit, a Conflict, a permission Fault, or None."""
        hit = self.tlbs[cpu].lookup(vttbr.vmid, ipa)
        if hit is None:
            return None
        if type(hit) is Conflict:
            if self.bus.on:
                self.bus.emit(ev.TlbConflict(self.now, cpu, vttbr.vmid, ipa,
                                             tuple(self.geo.level_size(lvl) for lvl, _ in hit.hits),
                                             tuple(dsc for _, dsc in hit.hits)))
            return hit
        if not permits(hit[1], access, self.geo.xnx):
            return Fault("permission", hit[0], ipa, access)
        return hit

    def walk_start(self, cpu: int, vttbr: Vttbr, ipa: int) -> tuple[int, int] | None:
        """(level, table PA) to start a walk from the deepest walk-cache entry, or None."""
        wc = self.tlbs[cpu].walk_lookup(vttbr.vmid, ipa)
        return None if wc is None else (wc[0] + 1, wc[1])

    def walk(self, cpu: int, vttbr: Vttbr, ipa: int, access: int) -> Translation | Fault:
        """A TLB miss: walk (from the deepest walk-cache entry) and fill."""
        start = self.walk_start(cpu, vttbr, ipa)
        res, path = walk_path(self.mem, self.geo, vttbr.baddr, ipa, access, self.ha, start)
        return self.complete_walk(cpu, vttbr, ipa, access, res, path, start)

    def complete_walk(self, cpu: int, vttbr: Vttbr, ipa: int, access: int,
                      res: Translation | Fault, path: list, start: tuple[int, int] | None
                      ) -> Translation | Fault:
        """After a walk (whole, or stepped with WalkCursor): fill walk cache and TLB,
        apply the hardware AF update, publish. Returns `res`."""
        tlb = self.tlbs[cpu]
        vmid = vttbr.vmid
        geo = self.geo
        self.counts["walks"] += 1
        self.last_walk_levels = res.level - (geo.start_level if start is None else start[0]) + 1
        bus = self.bus
        fill_ev = bus.on and bus.want["tlb_fill"]
        for level, _tpa, _idx, desc in path:
            nxt = desc & geo.table_mask
            page = self.mem.page(nxt)
            gen = page.generation if page is not None else 0
            tlb.fill_walk(vmid, ipa, level, nxt, gen)
            if fill_ev:
                bus.emit(ev.TlbFill(self.now, cpu, vmid, ipa & ~(geo.level_size(level) - 1),
                                    geo.level_size(level), level, desc, False, nxt, gen))
        if type(res) is Translation:
            if res.af_update:
                page = self.mem.page(res.table_pa)
                self.write(page, res.index, res.desc, res.ipa & ~(res.size - 1), cpu, hw=True)
            if not res.desc & (1 << 16) or res.level == 3:  # nT blocks are not cached
                tlb.fill(vmid, ipa, res.level, res.desc)
                if fill_ev:
                    bus.emit(ev.TlbFill(self.now, cpu, vmid, ipa & ~(res.size - 1), res.size,
                                        res.level, res.desc, True))
            if bus.on and bus.want["walk"]:
                bus.emit(ev.Walk(self.now, cpu, vmid, ipa, ACCESS_NAMES[access], res.pa,
                                 res.level, "", -1 if start is None else start[0]))
        elif bus.on and bus.want["walk"]:
            bus.emit(ev.Walk(self.now, cpu, vmid, ipa, ACCESS_NAMES[access], 0, res.level,
                             res.kind, -1 if start is None else start[0]))
        return res
