"""Invariant observers over the event stream (DOMAIN.md 7), and the Checker that runs them.

Each property is one small observer class with `on_event`; they share one
`Mirror` (the state rebuilt from events). Nothing here is called by model
code: the checker subscribes to a bus, or reads a trace.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from s2sim.arch import descriptors as d
from s2sim.arch import events as ev
from s2sim.check.intervals import IntervalSet
from s2sim.check.mirror import OA, Mirror
from s2sim.kvm.events import DirtyLog, MarkDirty, MemslotAdded, OpDone, StageConfig
from s2sim.kvm.steps import Teardown
from s2sim.sim.events import GuestAccesses, HostTouch, StageMark

BBM, CONFLICT, STALE, UAF, REFCOUNT, PA, DIRTY, COHERENCY = (
    "break_before_make", "tlb_conflict", "stale_translation", "use_after_free",
    "refcount", "translation_pa", "dirty_log", "coherency")
PROPERTIES = (BBM, CONFLICT, STALE, UAF, REFCOUNT, PA, DIRTY, COHERENCY)


@dataclass
class Violation:
    property: str
    time: int
    cpu: int
    ipa: int
    entry: str
    detail: str
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"property": self.property, "time": self.time, "cpu": self.cpu,
                "ipa": self.ipa, "entry": self.entry, "detail": self.detail,
                "history": self.history}


def needs_bbm(old: int, new: int, level: int) -> bool:
    """Would replacing valid `old` by valid `new` at `level` need break-before-make?

    A pure function of the two descriptors: the output address, the entry's
    kind (table / block / page), memory type or contiguous hint changing needs
    BBM; permission and access-flag changes do not.
    """
    if not (old & 1 and new & 1):
        return False
    if (old & 3) != (new & 3):
        return True
    if level < 3 and old & 2:  # both tables
        return (old & OA & ~0xFFF) != (new & OA & ~0xFFF)
    keep = (OA & ~0xFFF) | d.MEMATTR_MASK | d.CONTIG | d.SH_MASK
    return (old & keep) != (new & keep)


def _leaf_pa(desc: int, level: int, ipa: int, geo) -> int:
    shift = geo.level_shift(level)
    return (desc & OA & ~((1 << shift) - 1)) | (ipa & ((1 << shift) - 1))


class Property:
    name = ""

    def __init__(self, checker: Checker) -> None:
        self.c = checker
        self.m = checker.mirror

    def report(self, e: ev.Event, ipa: int, entry: str, detail: str) -> None:
        self.c.add(Violation(self.name, e.time, getattr(e, "cpu", -1), ipa, entry, detail,
                             [h.to_dict() for h in self.m.history]))


class BreakBeforeMake(Property):
    """No valid entry becomes a different valid one without invalid -> TLBI (covering,
    completed) -> new. Under FEAT_BBM level 2, size changes keeping the output
    address are allowed (their TLB conflicts are the conflict property's)."""

    name = BBM

    def check_write(self, e: ev.DescWrite, old: int, base: int, reach: bool) -> None:
        m = self.m
        if not reach or not e.new & 1:
            return
        cfg = m.cfg
        lvl = e.level
        size = m.size(lvl)
        new_is_leaf = not (lvl < 3 and e.new & 2)
        if old & 1 and needs_bbm(old, e.new, lvl):
            if not (cfg.bbm_level >= 2 and self._size_change_only(old, e.new, lvl, base)):
                self.report(e, base, f"0x{old:x} -> 0x{e.new:x}",
                            f"valid entry at level {lvl} replaced by a different valid entry "
                            "without a break")
                return
        for rec in m.stale_overlapping(base, base + size):
            if rec[0] == "leaf":
                _, slvl, sbase, sdesc = rec
                if new_is_leaf and not self._compatible(sdesc, slvl, sbase, e.new, lvl, base):
                    self._stale(e, base, f"leaf 0x{sdesc:x} at level {slvl}", slvl, lvl)
                    return
                if not new_is_leaf and sbase <= base and slvl < lvl + 1:
                    self._stale(e, base, f"leaf 0x{sdesc:x} at level {slvl}", slvl, lvl)
                    return
            else:
                _, slvl, sbase, child, walk, leaves = rec
                if (sbase, slvl) == (base, lvl) and (e.new & m.geo.table_mask) == child \
                        and not new_is_leaf:
                    continue  # the same table re-linked
                if leaves or walk:
                    self._stale(e, base, f"table -> 0x{child:x} at level {slvl} "
                                f"({'walk cache' if walk else ''}{' + ' if walk and leaves else ''}"
                                f"{'leaves' if leaves else ''} not invalidated)", slvl, lvl)
                    return

    def _stale(self, e, base, what, slvl, lvl) -> None:
        if self.m.cfg.bbm_level >= 2:
            return  # BBM level 2: allowed; conflicts judged by TlbConflictCheck
        self.report(e, base, f"new 0x{e.new:x} at level {lvl}",
                    f"made valid while the old {what} may still be cached: no completed "
                    "TLBI covering it since the break")

    def _compatible(self, sdesc, slvl, sbase, new, lvl, base) -> bool:
        geo = self.m.geo
        if slvl != lvl:
            return False
        return not needs_bbm(sdesc, new, lvl) and _leaf_pa(sdesc, slvl, sbase, geo) == \
            _leaf_pa(new, lvl, base, geo)

    def _size_change_only(self, old, new, lvl, base) -> bool:
        """FEAT_BBM level 2 allows a change of block size only: the new entry must
        translate every address the old one did to the same PA, with the same memory
        type (a table's leaves against a new block, or a block against a new table)."""
        m = self.m
        if (old & 3) == (new & 3):
            return False
        geo = m.geo
        keep = d.MEMATTR_MASK | d.SH_MASK
        if lvl < 3 and old & 2:  # table -> block: every leaf below must match the block
            for llvl, lbase, leaf in m.leaves_under(old & geo.table_mask, lvl + 1, base):
                if _leaf_pa(leaf, llvl, lbase, geo) != _leaf_pa(new, lvl, lbase, geo) or \
                        (leaf & keep) != (new & keep):
                    return False
            return True
        return True  # block -> table: the new table starts empty (its leaves checked as made)


class TlbConflictCheck(Property):
    """No CPU holds two entries translating one address (observed, or possible
    under FEAT_BBM level 2 without the no-abort guarantee)."""

    name = CONFLICT

    def on_conflict(self, e: ev.TlbConflict) -> None:
        if self.m.cfg is not None and self.m.cfg.bbm_noabort:
            return
        self.report(e, e.ipa, " + ".join(f"0x{x:x}" for x in e.descs),
                    f"TLB holds entries of sizes {', '.join(hex(s) for s in e.sizes)} for one "
                    "address: TLB conflict abort possible")

    def check_write(self, e: ev.DescWrite, old: int, base: int, reach: bool) -> None:
        m = self.m
        if not reach or not e.new & 1 or m.cfg.bbm_level < 2 or m.cfg.bbm_noabort:
            return
        size = m.size(e.level)
        new_leaf = not (e.level < 3 and e.new & 2)
        for rec in m.stale_overlapping(base, base + size):
            other_size = rec[0] == "table" and (rec[4] or rec[5]) or (
                rec[0] == "leaf" and (rec[1] != e.level or not new_leaf))
            if other_size:
                self.report(e, base, f"0x{old:x} -> 0x{e.new:x}",
                            "size changed without a break (FEAT_BBM level 2): old and new "
                            "translations of different sizes may both be cached, TLB conflict "
                            "abort possible")
                return


class StaleTranslation(Property):
    """After an unmap or permission drop completes, no CPU can use the old entry."""

    name = STALE

    def on_done(self, e: OpDone) -> None:
        if e.op not in ("unmap", "wrprotect"):
            return
        m = self.m
        for rec in m.stale_overlapping(e.ipa, e.ipa + e.size):
            if rec[0] == "leaf":
                _, lvl, base, old = rec
                cur = m.current(base)
                if cur is None or (old & d.S2AP_W and not cur[1] & d.S2AP_W) or (
                        old & d.S2AP_R and not cur[1] & d.S2AP_R):
                    self.report(e, base, f"0x{old:x}", f"{e.op} completed but the old entry "
                                "may still be cached (no completed TLBI covering it)")
                    return
            elif rec[5]:
                self.report(e, rec[2], f"table -> 0x{rec[3]:x}", f"{e.op} completed but "
                            "leaves below the old table may still be cached")
                return


class UseAfterFree(Property):
    """No table page is freed (or reused) while reachable from the root or from a walk cache."""

    name = UAF

    def on_free(self, e: ev.PageFree) -> None:
        m = self.m
        if e.pa in m.reachable:
            par = m.parent.get(e.pa)
            self.report(e, -1, f"page 0x{e.pa:x}",
                        "table page freed while still reachable from the root"
                        + (f" (entry {par[1]} of 0x{par[0]:x})" if par else ""))
            return
        for (lvl, base), recs in m.stale_tables.items():
            r = recs.get(e.pa)
            if r is not None and r[0]:
                self.report(e, base, f"table -> 0x{e.pa:x} at level {lvl}",
                            "table page freed while a walk cache may still point to it "
                            "(no completed TLBI of the table entry)")
                return
            # a walk cache may also hold the unlinked subtree's own table entries
            for child, r in recs.items():
                if r[0] and m.below(child, e.pa):
                    self.report(e, base, f"table -> 0x{child:x} at level {lvl}",
                                f"table page 0x{e.pa:x} freed while a walk cache may still "
                                "reach it through an unlinked table not yet invalidated")
                    return


class RefCounts(Property):
    """A table page's count is 1 + its valid entries whenever no operation is in flight."""

    name = REFCOUNT

    def __init__(self, checker: Checker) -> None:
        super().__init__(checker)
        self.seen = False

    def on_refcount(self, e: ev.RefCount) -> None:
        self.seen = True
        self.m.refcount[e.pa] = e.count

    def on_done(self, e: ev.Event) -> None:
        if not self.seen:
            return
        m = self.m
        for pa, cnt in m.refcount.items():
            if pa in m.pages and m.valid.get(pa, 0) + 1 != cnt:
                self.report(e, -1, f"page 0x{pa:x}", f"refcount {cnt} but {m.valid.get(pa, 0)} "
                            "valid entries (expected 1 + valid)")
                m.refcount[pa] = m.valid.get(pa, 0) + 1  # report once
                return


class TranslationPA(Property):
    """Every access translates to the PA its memslot says."""

    name = PA

    def on_access(self, e: GuestAccesses, slots: list) -> None:
        for s in slots:
            if s.base <= e.ipa < s.base + s.size:
                want = s.pa + (e.ipa - s.base)
                if want != e.pa:
                    self.report(e, e.ipa, f"0x{e.desc:x}", f"access reached PA 0x{e.pa:x}, "
                                f"memslot says 0x{want:x}")
                return
        self.report(e, e.ipa, f"0x{e.desc:x}", "access outside every memslot")


class DirtyLogComplete(Property):
    """Every guest write while logging lands on a page marked dirty.

    Judged when the log could next be read, not at the write: KVM makes a page
    writable and marks it dirty under mmu_lock, and reading the log takes the
    lock, so another vCPU's write between the two is not lost. A write to an
    unmarked page is pending until its page is marked; still pending when
    logging stops, a stage ends or the stream ends, it is a violation.
    """

    name = DIRTY

    def __init__(self, checker: Checker) -> None:
        super().__init__(checker)
        self.pending: dict[int, GuestAccesses] = {}

    def on_access(self, e: GuestAccesses, logging: bool, dirty: set, gran: int) -> None:
        if not logging or e.access != "w":
            return
        for k in range(e.count):
            page = (e.ipa + k * e.stride) & ~(gran - 1)
            if page not in dirty and page not in self.pending:
                self.pending[page] = e

    def on_mark(self, page: int) -> None:
        self.pending.pop(page, None)

    def settle(self) -> None:
        """The log may be read now: every write still unmarked is lost."""
        for page, e in sorted(self.pending.items()):
            self.report(e, page, f"0x{e.desc:x}", "guest write while dirty logging to a "
                        "page never marked dirty: lost in a migration")
        self.pending.clear()


class Coherency(Property):
    """Without FWB, no guest access through a mapping to host-written, uncleaned memory."""

    name = COHERENCY

    def on_access(self, e: GuestAccesses, lines: IntervalSet, gran: int) -> None:
        stride = e.stride or 1
        lo = e.pa & ~(gran - 1)
        hi = e.pa + (e.count - 1) * stride + 1 if e.count > 1 else e.pa + 1
        hit = lines.overlap(lo, max(hi, lo + 1))
        if hit is not None:
            self.report(e, e.ipa, f"0x{e.desc:x}",
                        f"guest access through a mapping to PA 0x{e.pa:x}: host-written lines "
                        f"[0x{hit[0]:x}, 0x{hit[1]:x}) were never cleaned to PoC")
            lines.remove(*hit)  # report each dirty range once


class Checker:
    """All properties over one event stream. `violations` keeps the first `keep` in full."""

    def __init__(self, keep: int = 20) -> None:
        self.mirror = Mirror()
        self.keep = keep
        self.violations: list[Violation] = []
        self.counts: Counter = Counter()
        self.bbm = BreakBeforeMake(self)
        self.conflict = TlbConflictCheck(self)
        self.stale = StaleTranslation(self)
        self.uaf = UseAfterFree(self)
        self.refc = RefCounts(self)
        self.pa = TranslationPA(self)
        self.dirty = DirtyLogComplete(self)
        self.coh = Coherency(self)
        self.slots: list[MemslotAdded] = []
        self.logging = False
        self.dirty_pages: set[int] = set()
        self.lines = IntervalSet()
        self.events = 0

    def add(self, v: Violation) -> None:
        self.counts[v.property] += 1
        if len(self.violations) < self.keep:
            self.violations.append(v)

    def __call__(self, e: ev.Event) -> None:
        self.events += 1
        m = self.mirror
        t = type(e)
        if t is GuestAccesses:
            if m.cfg is None:
                return
            self.pa.on_access(e, self.slots)
            self.dirty.on_access(e, self.logging, self.dirty_pages, m.geo.granule_size)
            if not m.cfg.fwb:
                self.coh.on_access(e, self.lines, m.geo.granule_size)
            return
        m.history.append(e)
        if t is StageConfig:
            m.configure(e)
        elif m.cfg is None:
            return
        elif t is ev.DescWrite:
            if e.hw:
                m.pages.setdefault(e.table_pa, {})[e.index] = e.new
                return
            old, base, reach = m.on_write(e)
            self.bbm.check_write(e, old, base, reach)
            self.conflict.check_write(e, old, base, reach)
        elif t is ev.Tlbi:
            m.on_tlbi(e)
        elif t is ev.Dsb:
            m.on_dsb(e)
        elif t is ev.PageFree:
            self.uaf.on_free(e)
            m.pages.pop(e.pa, None)
            m.valid.pop(e.pa, None)
            m.refcount.pop(e.pa, None)
            m.page_info.pop(e.pa, None)
        elif t is ev.PageAlloc:
            m.pages[e.pa] = {}
            m.refcount[e.pa] = 1
            m.valid[e.pa] = 0
        elif t is ev.RefCount:
            self.refc.on_refcount(e)
        elif t is ev.TlbConflict:
            self.conflict.on_conflict(e)
        elif t is OpDone:
            self.stale.on_done(e)
            self.refc.on_done(e)
        # Not at FaultHandled: it is published after mmu_lock is released, so another
        # vCPU's operation may be half done (a break not yet put): not a quiescent point.
        elif t is HostTouch:
            self.lines.add(e.pa, e.pa + e.size)
        elif t is ev.Cmo:
            self.lines.remove(e.pa, e.pa + e.size)
        elif t is MemslotAdded:
            self.slots.append(e)
        elif t is DirtyLog:
            if not e.on:
                self.dirty.settle()
            self.logging = e.on
            if e.on:
                self.dirty_pages = set()
        elif t is MarkDirty:
            self.dirty_pages.add(e.ipa)
            self.dirty.on_mark(e.ipa)
        elif t is StageMark and not e.begin:
            self.dirty.settle()
        elif t is Teardown:
            pass

    # --- results -------------------------------------------------------------
    def finish(self) -> None:
        """End of the stream: judge what was waiting for a later event."""
        self.dirty.settle()

    def verdicts(self) -> dict:
        return {p: ("violated" if self.counts.get(p) else "held") for p in PROPERTIES}

    def to_dict(self) -> dict:
        self.finish()
        return {"violations": [v.to_dict() for v in self.violations],
                "counts": dict(sorted(self.counts.items())),
                "total": sum(self.counts.values()),
                "properties": self.verdicts(),
                "events_checked": self.events}
