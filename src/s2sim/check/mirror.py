"""What an observer can know of the machine from the event stream alone.

The mirror rebuilds, from events only (so it works offline on a trace):
the table entries and which pages are reachable from the root; for every
translation the hardware may still hold although the table no longer says
so ("stale" records), until a completed TLBI covering it removes it. The
architecture lets a CPU cache any valid, reachable entry at any time
(speculative walks), so the stale records are what *may* be cached, not
what the model's TLBs happened to fill: the check is architectural.

Stale records:
  leaves[(level, base)] -> set of old leaf descriptors
  tables[(level, base)] -> {child_pa: [walk, leaves]}: an old table entry
     that a walk cache may still follow (`walk`), and whose subtree's leaves
     a TLB may still hold (`leaves`).
"""

from __future__ import annotations

from collections import deque

from s2sim.arch import events as ev
from s2sim.arch.geometry import Geometry
from s2sim.arch.tlb import IPAS2E1IS, RIPAS2E1IS, RIPAS2LE1IS, VMALLE1IS, VMALLS12E1IS
from s2sim.kvm.events import StageConfig

OA = ((1 << 48) - 1)


class Mirror:
    def __init__(self) -> None:
        self.geo: Geometry | None = None
        self.cfg: StageConfig | None = None
        self.pages: dict[int, dict[int, int]] = {}     # table pa -> {index: desc}
        self.page_info: dict[int, tuple[int, int]] = {}  # pa -> (level, base ipa)
        self.reachable: set[int] = set()
        self.parent: dict[int, tuple[int, int]] = {}    # child pa -> (table pa, index)
        self.refcount: dict[int, int] = {}
        self.valid: dict[int, int] = {}
        self.stale_leaves: dict[tuple[int, int], set[int]] = {}
        self.stale_tables: dict[tuple[int, int], dict[int, list[bool]]] = {}
        self.pending: dict[int, list[ev.Tlbi]] = {}
        self.history: deque = deque(maxlen=12)

    # --- configuration -------------------------------------------------------
    def configure(self, e: StageConfig) -> None:
        self.cfg = e
        self.geo = Geometry.make(e.granule, e.ipa_bits)
        g = self.geo
        for k in range(g.concatenated_tables):
            pa = e.root_pa + k * g.granule_size
            base = k * g.entries_per_table << g.level_shift(g.start_level)
            self.page_info[pa] = (g.start_level, base)
            self.pages.setdefault(pa, {})
            self.reachable.add(pa)

    def size(self, level: int) -> int:
        return self.geo.level_size(level)

    def entry_base(self, level: int, ipa: int) -> int:
        return ipa & ~(self.size(level) - 1)

    # --- descriptor writes -------------------------------------------------------
    def on_write(self, e: ev.DescWrite) -> tuple[int, int, bool]:
        """Apply a write; returns (old, base, reachable) for the property checks."""
        geo = self.geo
        level = e.level
        ent = self.pages.setdefault(e.table_pa, {})
        old = ent.get(e.index, 0)
        if e.ipa >= 0 and e.table_pa not in self.page_info:
            epp_span = self.size(level) * (geo.entries_per_table if level != geo.start_level
                                           else geo.start_entries())
            self.page_info[e.table_pa] = (level, e.ipa & ~(epp_span - 1)
                                          if level != geo.start_level else 0)
        base = self.base_of(e.table_pa, e.index, level, e.ipa)
        reach = e.table_pa in self.reachable
        ent[e.index] = e.new
        self.valid[e.table_pa] = self.valid.get(e.table_pa, 0) + (e.new & 1) - (old & 1)
        was_table = level < 3 and old & 3 == 3
        is_table = level < 3 and e.new & 3 == 3
        if was_table and (not is_table or (old & geo.table_mask) != (e.new & geo.table_mask)):
            child = old & geo.table_mask
            self.parent.pop(child, None)
            if reach:
                self._unreach(child)
                self.stale_tables.setdefault((level, base), {})[child] = [
                    True, self._has_valid_leaves(child)]
        elif reach and old & 1 and not was_table and old != e.new:
            self.stale_leaves.setdefault((level, base), set()).add(old)
        if is_table:
            child = e.new & geo.table_mask
            self.parent[child] = (e.table_pa, e.index)
            if child not in self.page_info:
                self.page_info[child] = (level + 1, base)
            if reach:
                self._reach(child)
        return old, base, reach

    def base_of(self, table_pa: int, index: int, level: int, ipa: int) -> int:
        info = self.page_info.get(table_pa)
        if info is not None:
            return info[1] + index * self.size(level)
        return self.entry_base(level, ipa) if ipa >= 0 else 0

    def _reach(self, pa: int) -> None:
        todo = [pa]
        while todo:
            p = todo.pop()
            if p in self.reachable:
                continue
            self.reachable.add(p)
            lvl = self.page_info.get(p, (3, 0))[0]
            if lvl < 3:
                for d in self.pages.get(p, {}).values():
                    if d & 3 == 3:
                        todo.append(d & self.geo.table_mask)

    def _unreach(self, pa: int) -> None:
        todo = [pa]
        while todo:
            p = todo.pop()
            if p not in self.reachable:
                continue
            self.reachable.discard(p)
            lvl = self.page_info.get(p, (3, 0))[0]
            if lvl < 3:
                for d in self.pages.get(p, {}).values():
                    if d & 3 == 3:
                        todo.append(d & self.geo.table_mask)

    def _has_valid_leaves(self, pa: int) -> bool:
        todo = [pa]
        seen = set()
        while todo:
            p = todo.pop()
            if p in seen:
                continue
            seen.add(p)
            lvl = self.page_info.get(p, (3, 0))[0]
            for d in self.pages.get(p, {}).values():
                if d & 1:
                    if lvl < 3 and d & 2:
                        todo.append(d & self.geo.table_mask)
                    else:
                        return True
        return False

    def leaves_under(self, top: int, level: int, base: int):
        """Yield (level, base ipa, desc) of every valid leaf in the subtree of page `top`."""
        todo = [(top, level, base)]
        while todo:
            p, lvl, b = todo.pop()
            size = self.size(lvl)
            for idx, d in self.pages.get(p, {}).items():
                if not d & 1:
                    continue
                if lvl < 3 and d & 2:
                    todo.append((d & self.geo.table_mask, lvl + 1, b + idx * size))
                else:
                    yield lvl, b + idx * size, d

    def below(self, top: int, pa: int) -> bool:
        """Is table page `pa` in the subtree under table page `top` (not `top` itself)?"""
        todo, seen = [top], set()
        while todo:
            p = todo.pop()
            if p in seen or self.page_info.get(p, (3, 0))[0] >= 3:
                continue
            seen.add(p)
            for d in self.pages.get(p, {}).values():
                if d & 3 == 3:
                    c = d & self.geo.table_mask
                    if c == pa:
                        return True
                    todo.append(c)
        return False

    # --- TLB maintenance ---------------------------------------------------------
    def on_tlbi(self, e: ev.Tlbi) -> None:
        self.pending.setdefault(e.cpu, []).append(e)

    def on_dsb(self, e: ev.Dsb) -> None:
        for t in self.pending.pop(e.cpu, []):
            self._invalidate(t)

    def _invalidate(self, t: ev.Tlbi) -> None:
        if self.cfg is not None and t.vmid != self.cfg.vmid:
            return  # another VM's translations: nothing of this stage-2 table's
        op = t.op
        if op == VMALLS12E1IS:
            self.stale_leaves.clear()
            self.stale_tables.clear()
            return
        if op == VMALLE1IS:
            self.stale_leaves.clear()
            for recs in self.stale_tables.values():
                for r in recs.values():
                    r[1] = False
            self._prune()
            return
        lo = t.ipa
        hi = t.ipa + (t.size if op in (RIPAS2E1IS, RIPAS2LE1IS) else 1)
        walk_too = op in (IPAS2E1IS, RIPAS2E1IS)
        for (level, base) in list(self.stale_leaves):
            if base < hi and lo < base + self.size(level) and (t.ttl < 0 or t.ttl == level):
                del self.stale_leaves[(level, base)]
        for (level, base), recs in self.stale_tables.items():
            end = base + self.size(level)
            if base < hi and lo < end:
                for r in recs.values():
                    if walk_too:
                        r[0] = False
                    if lo <= base and end <= hi:
                        r[1] = False  # the range covers every leaf below
        self._prune()  # last-level forms (IPAS2LE1IS, RIPAS2LE1IS) never clear walk caches

    def _prune(self) -> None:
        for k in [k for k, recs in self.stale_tables.items()
                  if not any(r[0] or r[1] for r in recs.values())]:
            del self.stale_tables[k]

    # --- queries -----------------------------------------------------------------
    def stale_overlapping(self, lo: int, hi: int):
        """Yield ('leaf', level, base, desc) and ('table', level, base, child, walk, leaves)."""
        for (level, base), descs in self.stale_leaves.items():
            if base < hi and lo < base + self.size(level):
                for dsc in descs:
                    yield ("leaf", level, base, dsc)
        for (level, base), recs in self.stale_tables.items():
            if base < hi and lo < base + self.size(level):
                for child, (walk, leaves) in recs.items():
                    yield ("table", level, base, child, walk, leaves)

    def current(self, ipa: int) -> tuple[int, int] | None:
        """(level, desc) of the valid leaf translating `ipa` now, per the mirror, or None."""
        geo = self.geo
        level = geo.start_level
        idx = geo.index(ipa, level)
        epp = geo.entries_per_table
        pa = self.cfg.root_pa + (idx // epp) * geo.granule_size
        idx %= epp
        while True:
            d = self.pages.get(pa, {}).get(idx, 0)
            if not d & 1:
                return None
            if level < 3 and d & 2:
                pa = d & geo.table_mask
                level += 1
                idx = (ipa >> geo.shifts[level]) & (epp - 1)
                continue
            return level, d
