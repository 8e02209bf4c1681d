"""The stage-2 translation walk (after the Arm ARM's AArch64.S2Walk).

`walk()` resolves an IPA in one call (the simulator's hot path);
`WalkCursor` does the same one descriptor read at a time so that the
explorer can interleave other agents between the levels. Both share the
per-descriptor decision in `_step`, so they cannot disagree.

Simplifications (docs/model.md): stage 1 is off (accesses are IPAs);
contiguous hints are decoded but not used to widen TLB entries; the
hardware dirty state (DBM/HD) is not modelled; XN follows FEAT_XNX only
when the geometry says so, for EL1 accesses.
"""

from __future__ import annotations

from dataclasses import dataclass

from s2sim.arch import descriptors as d
from s2sim.arch.geometry import Geometry
from s2sim.arch.memory import PhysMem

READ, WRITE, EXEC = d.PERM_R, d.PERM_W, d.PERM_X
ACCESS_NAMES = {READ: "r", WRITE: "w", EXEC: "x"}

TRANSLATION = "translation"
PERMISSION = "permission"
ACCESS_FLAG = "access_flag"
ADDRESS_SIZE = "address_size"


@dataclass(frozen=True, slots=True)
class Fault:
    """A stage-2 fault as the ESR_EL2 reports it: kind and level (a value, never a string)."""

    kind: str
    level: int
    ipa: int
    access: int
    stage: int = 2

    def __str__(self) -> str:
        return f"{self.kind} fault, level {self.level}, IPA {self.ipa:#x} ({ACCESS_NAMES[self.access]})"


@dataclass(slots=True)
class Translation:
    """A successful walk: the leaf descriptor and where it lives."""

    ipa: int
    pa: int
    level: int
    desc: int
    table_pa: int
    index: int
    size: int
    af_update: bool = False  # HA set the access flag: the walker wrote the descriptor

    @property
    def block_base_ipa(self) -> int:
        return self.ipa & ~(self.size - 1)


def permits(desc: int, access: int, xnx: bool = False) -> bool:
    """AArch64.CheckS2Permission for an EL1 access: S2AP for data, XN for fetches."""
    if access == EXEC:
        if xnx:
            return ((desc >> 53) & 0b11) in (0b00, 0b11)
        return not desc & d.XN
    if access == WRITE:
        return bool(desc & d.S2AP_W)
    return bool(desc & d.S2AP_R)


def root_page(geo: Geometry, root_pa: int, ipa: int) -> tuple[int, int]:
    """(table page PA, index) of `ipa` in the (possibly concatenated) start level."""
    idx = geo.index(ipa, geo.start_level)
    epp = geo.entries_per_table
    return root_pa + (idx // epp) * geo.granule_size, idx % epp


class WalkCursor:
    """A walk in progress, one descriptor read per `step()`.

    `step()` returns None while the walk continues, then a Translation or a
    Fault. `path` records (level, table_pa, index, desc) of every table
    descriptor followed, for walk-cache fills.
    """

    __slots__ = (
        "access",
        "geo",
        "ha",
        "index",
        "ipa",
        "level",
        "mem",
        "path",
        "result",
        "table_pa",
    )

    def __init__(self, mem: PhysMem, geo: Geometry, root_pa: int, ipa: int, access: int,
                 ha: bool = False, start: tuple[int, int] | None = None) -> None:
        self.mem, self.geo, self.ipa, self.access, self.ha = mem, geo, ipa, access, ha
        self.path: list[tuple[int, int, int, int]] = []
        self.result: Translation | Fault | None = None
        if ipa >> geo.ipa_bits or ipa < 0:
            # AArch64.S2Walk: an IPA above the configured size is a level-0 translation fault.
            self.result = Fault(TRANSLATION, 0, ipa, access)
            return
        if start is None:
            self.level = geo.start_level
            self.table_pa, self.index = root_page(geo, root_pa, ipa)
        else:
            self.level, self.table_pa = start
            self.index = geo.index(ipa, self.level)

    def step(self) -> Translation | Fault | None:
        if self.result is None:
            self.result = _step(self)
        return self.result

    def run(self) -> Translation | Fault:
        while self.result is None:
            self.result = _step(self)
        return self.result


def _step(c: WalkCursor) -> Translation | Fault | None:
    geo, level = c.geo, c.level
    page = c.mem.page(c.table_pa)
    desc = page.entries[c.index] if page is not None else 0
    if not desc & 1:
        return Fault(TRANSLATION, level, c.ipa, c.access)
    if level < 3 and desc & 2:
        nxt = desc & geo.table_mask
        if nxt >> geo.pa_bits:
            return Fault(ADDRESS_SIZE, level, c.ipa, c.access)
        if c.path is not None:
            c.path.append((level, c.table_pa, c.index, desc))
        c.level = level + 1
        c.table_pa = nxt
        c.index = (c.ipa >> geo.shifts[level + 1]) & (geo.entries_per_table - 1)
        return None
    if level == 3 and not desc & 2:
        return Fault(TRANSLATION, 3, c.ipa, c.access)  # reserved encoding: invalid
    if level < 3 and not geo.block_ok[level]:
        return Fault(TRANSLATION, level, c.ipa, c.access)
    shift = geo.shifts[level]
    oa = desc & ((1 << 48) - 1) & ~((1 << shift) - 1)
    if oa >> geo.pa_bits:
        return Fault(ADDRESS_SIZE, level, c.ipa, c.access)
    af_update = False
    if not desc & d.AF:
        if not c.ha:
            return Fault(ACCESS_FLAG, level, c.ipa, c.access)
        af_update = True
        desc |= d.AF
    access = c.access
    if access == READ:
        ok = desc & d.S2AP_R
    elif access == WRITE:
        ok = desc & d.S2AP_W
    else:
        ok = permits(desc, access, geo.xnx)
    if not ok:
        return Fault(PERMISSION, level, c.ipa, c.access)
    return Translation(c.ipa, oa | (c.ipa & ((1 << shift) - 1)), level, desc, c.table_pa,
                       c.index, 1 << shift, af_update)


def walk(mem: PhysMem, geo: Geometry, root_pa: int, ipa: int, access: int, ha: bool = False,
         start: tuple[int, int] | None = None) -> Translation | Fault:
    """Resolve `ipa` for `access` from the root (or from a walk-cache `start`).

    The hot path: table levels are followed inline; the leaf (or fault)
    decision is `_step`'s, so this and `WalkCursor` cannot disagree (tested).
    """
    if start is not None or ipa >> geo.ipa_bits or ipa < 0:
        return WalkCursor(mem, geo, root_pa, ipa, access, ha, start).run()
    tables, freed = mem.tables, mem._freed_pages
    shifts, tmask, pa_bits = geo.shifts, geo.table_mask, geo.pa_bits
    emask = geo.entries_per_table - 1
    level = geo.start_level
    index = (ipa >> shifts[level]) & geo.start_mask
    table_pa = root_pa + ((index >> geo.bits_per_level) << geo.page_shift)
    index &= emask
    while level < 3:
        page = tables.get(table_pa) or freed.get(table_pa)
        desc = page.entries[index] if page is not None else 0
        if desc & 3 != 3:
            break
        nxt = desc & tmask
        if nxt >> pa_bits:
            break
        level += 1
        table_pa = nxt
        index = (ipa >> shifts[level]) & emask
    else:
        # the common outcome, decided inline: a valid, accessed page whose
        # permissions allow a read or write (exactly _step's success case)
        page = tables.get(table_pa)
        if page is not None and access != EXEC:
            desc = page.entries[index]
            if desc & 3 == 3 and desc & d.AF and desc & (d.S2AP_R if access == READ
                                                          else d.S2AP_W):
                low = (1 << shifts[3]) - 1
                oa = desc & 0xFFFFFFFFFFFF & ~low
                if not oa >> pa_bits:
                    return Translation(ipa, oa | (ipa & low), 3, desc, table_pa, index, low + 1)
    c = WalkCursor.__new__(WalkCursor)
    c.mem, c.geo, c.ipa, c.access, c.ha, c.path, c.result = mem, geo, ipa, access, ha, None, None
    c.level, c.table_pa, c.index = level, table_pa, index
    return _step(c)


def walk_path(mem: PhysMem, geo: Geometry, root_pa: int, ipa: int, access: int,
              ha: bool = False, start: tuple[int, int] | None = None
              ) -> tuple[Translation | Fault, list]:
    """As `walk`, also returning the table descriptors followed (for walk caches)."""
    c = WalkCursor(mem, geo, root_pa, ipa, access, ha, start)
    return c.run(), c.path
