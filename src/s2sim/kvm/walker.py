"""KVM's generic page-table walker (v5.11 semantics), as a generator.

The walk visits every entry overlapping [addr, end) from the root. For each
entry it reads the descriptor once; a table entry gets TABLE_PRE, then the
walk descends by *that saved value* (a pre visitor may overwrite the entry:
the walk still goes through the old subtree, which the seed relies on), then
TABLE_POST sees the entry as it is by then. A non-table entry gets LEAF, and
the entry is read again afterwards: a leaf visitor that installed a table
makes the walk descend into it. A non-zero return from a visitor stops the
walk and propagates (KVM's negative errno).

Visitors are generator functions `visitor(flag, addr, end, level, page, index)`
that perform effects, yield `Step`s, and return a status.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np

from s2sim.arch.geometry import Geometry
from s2sim.arch.machine import Machine

TABLE_PRE, LEAF, TABLE_POST = 1, 2, 4

# Internal signals, named after the errno KVM uses for them.
OK = 0
E2BIG = -7      # "cannot be a leaf at this level: install a table and go down"
EAGAIN = -11    # "nothing to do here" (someone else mapped it, or permissions only)
ENOMEM = -12    # the memcache ran dry
EINVAL = -22
SKIP = 1        # TABLE_PRE handled the whole subtree (bulk teardown): do not descend
ERRNO_NAMES = {E2BIG: "-E2BIG", EAGAIN: "-EAGAIN", ENOMEM: "-ENOMEM", EINVAL: "-EINVAL"}

Visitor = Callable[..., Generator]


class Walker:
    """One walk over [addr, end) of a stage-2 table with one visitor."""

    __slots__ = ("addr", "end", "flags", "geo", "machine", "skip_invalid", "tables",
                 "visitor", "visits")

    def __init__(self, machine: Machine, visitor: Visitor, flags: int,
                 skip_invalid: bool = False) -> None:
        self.machine = machine
        self.geo: Geometry = machine.geo
        self.tables = machine.mem.tables
        self.visitor, self.flags = visitor, flags
        self.visits = 0
        # the visitor does nothing for an invalid entry: runs of them are stepped over
        # at once (still counted as visits: the time a walk takes)
        self.skip_invalid = skip_invalid

    def walk(self, root_pa: int, addr: int, size: int) -> Generator:
        """Walk the root (all concatenated start-level pages); returns the status."""
        geo = self.geo
        g = geo.granule_size
        self.addr = addr & ~(g - 1)
        self.end = (addr + size + g - 1) & ~(g - 1)
        level = geo.start_level
        epp = geo.entries_per_table
        while self.addr < self.end:
            idx = geo.index(self.addr, level)
            page = self.tables[root_pa + (idx // epp) * g]
            rc = yield from self._table(page, level, idx % epp)
            if rc:
                return rc
        return OK

    def _table(self, page, level: int, idx: int) -> Generator:
        epp = self.geo.entries_per_table
        skip = self.skip_invalid
        entries = page.entries
        while idx < epp and self.addr < self.end:
            if skip and not entries[idx] & 1:
                idx = self._skip(page, level, idx)
                continue
            rc = yield from self._visit(page, level, idx)
            if rc:
                return rc
            idx += 1
        return OK

    def _skip(self, page, level: int, idx: int) -> int:
        """Step over the invalid entries from `idx` (at least that one) that the walk
        would visit, as that many LEAF visits that do nothing; the index after them."""
        size = 1 << self.geo.shifts[level]
        first = _next(self.addr, self.geo.shifts[level])  # where entry idx + 1 starts
        lim = min(self.geo.entries_per_table,
                  idx + 1 + max(0, (self.end - first + size - 1) // size))
        nz = np.flatnonzero(page.view()[idx:lim] & np.uint64(1))
        k = int(nz[0]) if len(nz) else lim - idx
        self.visits += k
        self.addr = first + (k - 1) * size
        return idx + k

    def _visit(self, page, level: int, idx: int) -> Generator:
        self.visits += 1
        entries = page.entries
        pte = entries[idx]
        addr, end, flags, visitor = self.addr, self.end, self.flags, self.visitor
        is_table = level < 3 and (pte & 3) == 3
        rc = OK
        if is_table and flags & TABLE_PRE:
            rc = yield from visitor(TABLE_PRE, addr, end, level, page, idx)
            if rc == SKIP:
                self.addr = _next(addr, self.geo.shifts[level])
                return OK
        if not is_table and flags & LEAF:
            rc = yield from visitor(LEAF, addr, end, level, page, idx)
            pte = entries[idx]
            is_table = level < 3 and (pte & 3) == 3
        if rc:
            return rc
        if not is_table:
            self.addr = _next(addr, self.geo.shifts[level])
            return OK
        child = self.tables.get(pte & self.geo.table_mask)
        if child is None:
            child = self.machine.mem.page(pte & self.geo.table_mask)
        rc = yield from self._table(child, level + 1,
                                    (self.addr >> self.geo.shifts[level + 1])
                                    & (self.geo.entries_per_table - 1))
        if rc:
            return rc
        if flags & TABLE_POST:
            rc = yield from visitor(TABLE_POST, addr, end, level, page, idx)
        return rc


def _next(addr: int, shift: int) -> int:
    """The first address of the next entry at this level."""
    return ((addr >> shift) + 1) << shift
