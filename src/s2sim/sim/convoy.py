"""Convoy fast-forward: skip many identical periods of the whole system, exactly.

The seed's runs are convoys: N vCPUs fault on page p one after another under
mmu_lock (one maps, the others find it mapped), then on p+1, ... or read a
mapped region in lock step. The simulation is deterministic, so once the whole
state at one boundary is the state at an earlier boundary *shifted* (by r
pages in IPA and PA, by P ns in time), every following period repeats the
recorded one, shifted again, until something it reads differs: the end of a
segment, of a table page or block (the region), a page whose contents differ.

At each boundary the controller takes a fingerprint of the state relative to
the reference page x and the time t (`_fingerprint`): every agent's program
point (the chain of suspended generator frames), its position, its fault in
flight, its heap entry (time and order), the lock (owner, waiters), pending
TLBIs, and the data any of them can read next around x (table entries, TLB
and walk-cache entries, host pages, dirty bits), normalised (addresses minus
x, descriptors minus the PA they map). Between boundaries every state change
is recorded (table writes, reference counts, TLB fills / hits / invalidations,
host first touches, dirty marks). When a fingerprint repeats, the period
between the two boundaries is known to repeat, and m periods are applied at
once:

- every pending time (heap, lock hand-off, fault start) moves by m*P;
- every agent's position moves by m*r pages (`Vcpu.skip`); a fault in flight
  is relabelled: its handler generator is rebuilt for the shifted fault and
  brought to the same suspension point (only points before mmu_lock, where
  the handler has done nothing but pure look-ups, are accepted);
- the recorded effects are replayed m times, shifted (table writes as numpy
  stores into the table page, TLB operations in order, or only the last
  period's where that provably gives the same state);
- every counter (metrics, lock, engine, vCPUs, TLBs, host) grows by m times
  its delta over the period.

Pages that enter the window during the skipped periods must look, normalised,
like the farthest page the fingerprint covered (`_ahead_ok`), and the window
must stay inside one region (one table page or one block) and one segment.
Anything else (another VMID, a table allocation or free, an open invalid
window off the window's table page, THP state changes, a random tie-break, a
subscriber other than the metrics) disables the jump and the exact path runs
on. Anonymous 4K GUPs in flight (zero page, allocation, COW, MMU-notifier
pairs; sim/hostmm.py) are fingerprinted, relabelled and replayed (`_apply`).
Periods of whole regions, which allocate the next region's table, are checked
under a renaming of recently allocated table pages and jumped by setting the
state directly (`_try_region`, `_region_jump`). Anonymous THP runs' periods of L
whole regions over tables that exist (UPDATE, some ADJUSTs: allocating nothing, their
GUPs finding present pages) rename table pages through the parent table and may span
segments (moved by `Vcpu.skip_segs`; `_region_jump_tables`). The result is the exact
path's, number for number; tests/test_fastpath.py and tests/test_region_thp.py check
it on many configurations.

Several convoys at different rates (anonymous 4K CREATE: the readers two pages per
writer page, phase-locked through mmu_lock, mmu_notifier_seq and the broadcast TLBIs,
the gap between them growing): the agents are clustered by position (`_groups`), each
group is fingerprinted relative to its own front page in its own window, the shared
state with addresses relative to the group they belong to (`_gfingerprint`). A period
repeats with each group shifted by its own whole number of pages; every recorded effect
is attributed to the group whose swept range holds its IPA (the ranges apart, each in
one region; whole-VMID TLBIs to none) and replayed shifted by that group's advance
(`_gplan`, `_gapply`). A trailing group may only reach pages the groups ahead left at
the boundary (they only move away), which `_ahead_ok` checks like any pages ahead; TLBs
must neither evict nor fill up. Verified periods are kept for each of their boundaries
(phases), so the boundary after a jump, or after a region change, is jumped from at once
(`_gkeep`, `_gtemplate`). Each convoy's leader rotates, so with names the period is as
many pages as a convoy has vCPUs; up to names (`_gcanon`: TLBs taken whole) it is one
writer page, and such a period is jumped with every TLB set to its own state shifted
and the vCPUs renamed (`_shift_tlbs`, `_rename`), which takes the jump to the page
before the region's end instead of up to a long period before it.
tests/test_two_convoys.py checks it against the exact path.
"""

from __future__ import annotations

from collections import Counter, deque
from itertools import islice, pairwise, repeat
from operator import itemgetter
from types import GeneratorType

import numpy as np

from s2sim.arch import descriptors as d
from s2sim.arch.tlb import VMALLE1IS, VMALLS12E1IS
from s2sim.arch.walk import Fault
from s2sim.kvm import vm
from s2sim.sim.metrics import KINDS
from s2sim.sim.tlbsteady import replay_periods

OA = ((1 << 48) - 1)
OAP = OA & ~0xFFF        # the output-address bits of a page descriptor
MARGIN = 1               # pages of data beyond the agents' positions in a fingerprint
HISTORY = 4096           # boundaries remembered when looking for a period
TEMPLATES = 256          # verified periods kept for reuse in later regions
GTEMPLATES = 4096        # boundaries of verified periods of several convoys kept (_gkeep)
REGION_JUMPS = True      # periods of whole regions (one table page each), see _try_region
REGION_OFFSETS = 8       # boundaries this close to a region's start are region-period candidates
REGION_REACH = 256       # recently allocated table pages a region period may reference
REGION_KMAX = 4          # table pages a region period may allocate
REGION_PERIOD_MAX = 32   # regions a period over existing tables may span (THP)
REGION_RECUR = True      # THP: snapshot at a fingerprint's first sighting once one jumped
ROLES = True             # THP region periods up to the vCPUs' names (_canon, _rename)
GROUP_ROLES = True       # several convoys' periods up to the vCPUs' names (_gcanon)
TLB_SIG_MAX = 64         # TLB entries a renamed convoys' period may hold per TLB
NAMED_WAIT = 8           # boundaries a period up to names is waited for (_named_soon)
GROUPS = True            # convoys at different rates (anonymous 4K CREATE), see _try_groups
GROUP_GAP = 2 * MARGIN + 2  # pages between two agents' positions that make two convoys
IPA_OPS = ("IPAS2E1IS", "IPAS2LE1IS", "RIPAS2E1IS", "RIPAS2LE1IS")


class _NoJump(Exception):
    """This boundary cannot be fast-forwarded (the exact path goes on)."""


class _NoRoom(_NoJump):
    """A convoy's period does not fit before its region's end (`rend`, an IPA)."""

    def __init__(self, gi: int, rend: int) -> None:
        super().__init__("convoys: no room")
        self.gi, self.rend = gi, rend


def _chain(gen) -> tuple:
    """The program point of a suspended generator stack: (code, instruction) per frame."""
    out = []
    g = gen
    while g is not None:
        if type(g) is not GeneratorType:
            out.append(type(g))
            break
        fr = g.gi_frame
        if fr is None:
            out.append(None)
            break
        out.append((g.gi_code, fr.f_lasti))
        g = g.gi_yieldfrom
    return tuple(out)


class _Boundary:
    __slots__ = ("counters", "fp", "k", "log_at", "order", "si", "stride", "t", "x")

    def __init__(self, t, k, si, x, fp, counters, log_at, stride):
        self.t, self.k, self.si, self.x, self.fp = t, k, si, x, fp
        self.counters, self.log_at, self.stride = counters, log_at, stride
        self.order = None  # the vCPUs in rank order, when up to names (_canon_whole)


class _GBoundary(_Boundary):
    """A boundary of several convoys: also each window's (first, last, region base,
    walk path), for templates (`_gkeep`), and the vCPUs in rank order (`_gcanon`)."""

    __slots__ = ("wins",)


class _RecordingSet(set):
    """slot.dirty while recording: logs every add."""

    __slots__ = ("conv",)

    def add(self, item):
        if item not in self:
            self.conv.log.append(("d", item))
        set.add(self, item)


class Convoy:
    """The fast-forward controller of one pagetable-test run."""

    def __init__(self, engine, machine, kvm, slot, lock, vcpus, host, metrics) -> None:
        self.engine, self.machine, self.kvm, self.slot = engine, machine, kvm, slot
        self.lock, self.vcpus, self.host, self.metrics = lock, vcpus, host, metrics
        self.geo = machine.geo
        # anonymous 4K GUPs (zero page, allocation, COW, notifier pairs) are captured
        # and replayed; THP state changes are not
        self._anon4k = bool(host.mm and not host.thp)
        self.vmid = kvm.pgt.vttbr.vmid
        self.root = kvm.pgt.vttbr.baddr
        self.wave = 1 << 62          # vCPUs call `reach` when they pass it
        self.on = False
        self.stats = Counter()
        self.why = Counter()      # why boundaries were not jumped from (diagnostics)
        self._saved: list = []
        self._reset()
        for v in vcpus:
            v.ff = self

    @staticmethod
    def eligible(cfg, machine) -> bool:
        """Fast-forward only with FIFO ties and no subscriber but the metrics."""
        if not cfg.fastforward or cfg.tie != "fifo" or cfg.jitter:
            return False
        bus = machine.bus
        if len(bus._subs) != 1:
            return False
        return not any(on for kind, on in bus.want.items() if kind not in KINDS)

    # --- stage control -------------------------------------------------------------
    def begin(self) -> None:
        self.templates: dict = {}  # fingerprint -> a verified period (see _try_template)
        self.gtemplates: dict = {}  # the same for several convoys (_gtemplate)
        self.wave = -1
        self.on = True
        self._max_grant = (-1, -1)
        self._front = None
        self.macro: dict = {}      # (fingerprint, offset in region) -> a snapshot (_snapshot)
        self._tlog: list = []      # table pages written (or refcounted), in order
        self._tregion = -1         # the region of the last THP region-period candidate
        self._noroom = None        # a convoy a template had no room for (_try_groups)
        self._noroom1 = None       # the same for one convoy: (segment, stride, region end)
        self._named_last = False   # the last jump was up to the vCPUs' names
        self._trecur = False       # a THP region period was jumped in this stage
        self._names = list(range(len(self.vcpus)))  # vCPU c stands for _names[c] (_rename)
        self._done = 0
        self._mcs = [u.mc for u in self.vcpus]
        self._reset()
        self._install()

    def end(self) -> None:
        self._settle()
        self._uninstall()
        self.on = False
        self.wave = 1 << 62
        self._reset()

    def vcpu_done(self) -> None:
        """A vCPU finished the stage; when the last one has, names go back (`_settle`)."""
        self._done += 1
        if self._done == len(self.vcpus):
            self._settle()

    def _settle(self) -> None:
        """The stage's vCPUs are done: what vCPU c holds (its TLB) is `_names[c]`'s on the
        exact path, so each TLB goes to that vCPU; memcaches go back to their own."""
        names = self._names
        if names == list(range(len(names))):
            return
        tlbs, vcpus = self.machine.tlbs, self.vcpus
        old = list(tlbs[:len(names)])
        cnt = [(u.accesses, u.walks, u.faults, u.conflicts, dict(u.outcomes)) for u in vcpus]
        for c, nm in enumerate(names):
            tlbs[nm] = old[c]
            u = vcpus[nm]
            u.accesses, u.walks, u.faults, u.conflicts, out = cnt[c]
            u.outcomes.clear()
            u.outcomes.update(out)
        for u, mc in zip(vcpus, self._mcs):
            u.mc = mc
        self._names = list(range(len(names)))

    def _reset(self) -> None:
        self.bounds: list[_Boundary] = []
        self.index: dict = {}
        self.cindex: dict = {}  # fingerprints up to the vCPUs' names (_gcanon)
        self.log: list = []

    # --- recording: wrap the state-changing methods while a stage runs ----------------
    def _install(self) -> None:
        m = self.machine
        saved = self._saved
        conv = self

        tlog = self._tlog

        def write(page, index, new, ipa=-1, cpu=0, hw=False, _w=m.write):
            conv.log.append(("w", page.pa, index, page.entries[index], new, ipa))
            tlog.append(page.pa)
            return _w(page, index, new, ipa, cpu, hw)

        def refcount(page, delta, cpu=0, _r=m.refcount):
            conv.log.append(("r", page.pa, delta))
            tlog.append(page.pa)
            return _r(page, delta, cpu)

        saved.append((m, "write", m.__dict__.get("write")))
        saved.append((m, "refcount", m.__dict__.get("refcount")))
        m.write, m.refcount = write, refcount
        for cpu, tlb in enumerate(m.tlbs):
            self._wrap_tlb(cpu, tlb)
        h = self.host

        def touch(pa, size, now, cpu, _t=h.touch):
            first = pa not in h.ready
            ns = _t(pa, size, now, cpu)
            if first:
                conv.log.append(("t", pa, size, h.ready[pa]))
            return ns

        saved.append((h, "touch", h.__dict__.get("touch")))
        h.touch = touch

        def host_change(what, pa):
            conv.log.append(("hm", what, pa))

        saved.append((h, "on_change", h.__dict__.get("on_change")))
        h.on_change = host_change
        rs = _RecordingSet(self.slot.dirty)
        rs.conv = self
        saved.append((self.slot, "dirty", self.slot.dirty))
        self.slot.dirty = rs

    def _wrap_tlb(self, cpu: int, tlb) -> None:
        conv = self
        saved = self._saved

        shifts = tlb.shifts

        def fill(vmid, ipa, level, desc, _f=tlb.fill):
            ev = tlb.evictions
            new = (((ipa >> shifts[level]) << 16) | vmid) not in tlb.leaf[level]
            _f(vmid, ipa, level, desc)
            conv.log.append(("f", cpu, vmid, ipa, level, desc, tlb.evictions - ev, new))

        def fill_walk(vmid, ipa, level, table_pa, gen, _f=tlb.fill_walk):
            key = ((ipa >> shifts[level]) << 16) | vmid
            full = (tlb.walk_capacity is not None and key not in tlb.walkc[level]
                    and len(tlb._worder) >= tlb.walk_capacity)
            _f(vmid, ipa, level, table_pa, gen)
            conv.log.append(("fw", cpu, vmid, ipa, level, table_pa, gen, full))

        def invalidate(op, vmid, ipa=0, size=0, ttl=-1, _i=tlb.invalidate):
            conv.log.append(("i", cpu, op, vmid, ipa, size, ttl))
            return _i(op, vmid, ipa, size, ttl)

        def lookup(vmid, ipa, _l=tlb.lookup):
            r = _l(vmid, ipa)
            if r is not None:
                if type(r) is tuple:
                    if tlb._lru:
                        conv.log.append(("h", cpu, vmid, ipa, r[0]))
                else:
                    conv.log.append(("x",))  # a conflict: not replayable
            return r

        for name, fn in (("fill", fill), ("fill_walk", fill_walk), ("invalidate", invalidate),
                         ("lookup", lookup)):
            saved.append((tlb, name, tlb.__dict__.get(name)))
            setattr(tlb, name, fn)

    def _uninstall(self) -> None:
        for obj, name, old in reversed(self._saved):
            if name == "dirty":
                obj.dirty = set(obj.dirty)
            elif old is None:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, old)
        self._saved = []

    def _tlb_raw(self, tlb) -> tuple:
        """A TLB's unwrapped fill, fill_walk, invalidate, its order and whether it is LRU."""
        return (self._raw(tlb, "fill"), self._raw(tlb, "fill_walk"),
                self._raw(tlb, "invalidate"), tlb._order, tlb._lru)

    def _raw(self, obj, name):
        """The unwrapped method (for replays, which must not be recorded)."""
        return getattr(type(obj), name).__get__(obj)

    # --- boundaries ------------------------------------------------------------------
    def reach(self, v, si: int, k: int) -> int:
        """A vCPU passed the wave front (a new access position of the stage)."""
        self.wave = (si << 40) | k
        if not self.on:
            return 0
        if self.lock.owner is not None or self.lock.waiters:
            return 0  # a fault convoy: its boundaries are the lock grants
        for u in self.vcpus:
            if u.cur_fault is not None:
                return 0
        seg = v.segments[si]
        self._boundary(v, si, k, seg[0] + k * seg[1])
        skip, v.skip = v.skip, 0  # the caller moves on at once
        return skip

    def granted(self, v) -> None:
        """`v` just got mmu_lock for its fault: a boundary when the fault's page is new."""
        if not self.on:
            return
        f = v.cur_fault
        key = (v.seg, f.ipa)
        if key <= self._max_grant:
            fr = self._front
            if fr is None or fr.agent.gen.gi_frame is not None:
                return
            # the vCPU that set the front has finished (anonymous 4K CREATE's readers
            # run ahead of the writers and finish first): the convoy behind sets it now
        self._max_grant = key
        self._front = v
        seg = v.segments[v.seg]
        stride = seg[1]
        if stride <= 0 or (f.ipa - seg[0]) % stride:
            return
        self._boundary(v, v.seg, (f.ipa - seg[0]) // stride, f.ipa)

    def _boundary(self, v, si: int, k: int, x: int) -> int:
        try:
            return self._try(v, si, k, x)
        except _NoJump as e:
            self.why[str(e)] += 1
            self._reset()
            return 0

    def _settle_tlbs(self) -> None:
        """Apply the read batches' pending fill runs (`TLB.settle`): fingerprints and
        jumps read the TLBs as they are. Not before the cheap refusals: in a reading
        stage a boundary at every region would undo their laziness."""
        for tlb in self.machine.tlbs:
            if tlb._pend:
                tlb.settle()

    def _try(self, v, si: int, k: int, x: int) -> int:
        stride = v.segments[si][1]
        if stride <= 0:
            raise _NoJump("line 273")
        if len(self._tlog) > 1 << 20:  # (bounded: region snapshots index into it)
            self.macro.clear()
            del self._tlog[:]
        t = self.engine.now
        if GROUPS and self._anon4k:
            groups = self._groups(si, stride)
            if groups is not None:
                return self._try_groups(v, si, stride, groups, t)
        self._settle_tlbs()
        nr = self._noroom1
        if nr is not None:
            if nr[0] == si and nr[1] == stride and k < nr[2]:
                self.stats["noroom_skips"] += 1
                return 0  # (a renamed jump used the room up to the region's end)
            self._noroom1 = None
        fp, win = self._fingerprint(si, k, x, t, stride)
        counters = self._counters()
        b = _Boundary(t, k, si, x, fp, counters, len(self.log), stride)
        prev = self.index.get(fp)
        self.bounds.append(b)
        self.index[fp] = len(self.bounds) - 1
        if prev is None:
            if REGION_JUMPS and win["level"] == 3:
                r = self._try_region(v, b, win)
                if r is not None:
                    return r
            cf = None
            if GROUP_ROLES and self._anon4k:
                # the period up to names (the leader rotates: one page, not one per vCPU)
                n = len(self.vcpus)
                regs = [(win["rbase"], win["rbase"] + win["rsize"],
                         x >> self.geo.shifts[3])]
                cf, order = self._canon_whole(
                    fp[:7] + ((win["fp"],),) + fp[8:],
                    [c for c in range(n) if fp[2][c][0] != "done"], regs)
                if cf is not None:
                    cprev = self.cindex.get(cf)
                    self.cindex[cf] = len(self.bounds) - 1
                    b.order = order
                    b0 = self.bounds[cprev] if cprev is not None else None
                    if b0 is not None and b0.si == si and b0.stride == stride:
                        try:
                            return self._jump(v, b0, b, win, role=_role(n, b0.order, order))
                        except _NoJump as e:  # (refused before anything moved)
                            self.why["renamed: " + str(e)] += 1
            # (any segment: positions are relative)
            tpl = None if cf is not None and self._named_soon() else \
                self.templates.get(fp[1:])
            if tpl is not None:
                try:
                    return self._try_template(v, tpl, b, win)
                except _NoJump as e:  # nothing moved: the history stays valid
                    self.why["template: " + str(e)] += 1
            self._trim()
            return 0
        b0 = self.bounds[prev]
        if b0.si != si or b0.stride != stride:
            return 0
        log = self.log[b0.log_at:b.log_at]
        r = self._jump(v, b0, b, win)
        if len(self.templates) >= TEMPLATES:
            self.templates.clear()
        self.templates[fp[1:]] = (b0, b, log, win)
        return r

    def _try_template(self, v, tpl: tuple, b: _Boundary, win: dict) -> int:
        """Reuse a period verified earlier in the stage (another region, say).

        `b`'s fingerprint equals the one of the template's boundary b1, which equalled
        its predecessor's b0: so the future from `b` is the one from b1 shifted by
        D = b.x - b1.x pages and T = b.t - b1.t ns, and it repeats b0 -> b1's period.
        The recorded effects are shifted by D (the table page the window reads is
        `b`'s instead of b1's: every effect must land in `b`'s region) and replayed as
        for a period recorded here.
        """
        b0, b1, log, win1 = tpl
        if b1.stride != b.stride:
            raise _NoJump("another stride")
        D, T = b.x - b1.x, b.t - b1.t
        if D <= 0 or D % self.geo.granule_size:
            raise _NoJump("not a whole number of pages ahead")
        # table pages: b1's window path -> b's (the same page for upper levels)
        cur = {lvl: pg for lvl, pg in win["path"]}
        pmap = {}
        for lvl, pg in win1["path"]:
            c = cur.get(lvl)
            if c is None:
                raise _NoJump("another walk path")
            pmap[pg.pa] = c
        lo, hi = win["rbase"], win["rbase"] + win["rsize"]
        shifts = self.geo.shifts
        out = []
        for e in log:
            kind = e[0]
            if kind == "w":
                _, pa, _i, old, new, ipa = e
                pg = pmap.get(pa)
                if pg is None or ipa < 0 or not lo <= ipa + D < hi:
                    raise _NoJump("a write outside the window's table page")
                idx = ((ipa + D) >> shifts[pg.level]) & (self.geo.entries_per_table - 1)
                out.append(("w", pg.pa, idx, old, new + D if new else 0, ipa + D))
            elif kind == "r":
                pg = pmap.get(e[1])
                if pg is None:
                    raise _NoJump("a refcount outside the window's path")
                out.append(("r", pg.pa, e[2]))
            elif kind == "f":
                _, cpu, vmid, ipa, lvl, desc, ev, new = e
                if D % (1 << shifts[lvl]):
                    raise _NoJump("a fill of a shared entry")
                out.append(("f", cpu, vmid, ipa + D, lvl, desc + D, ev, new))
            elif kind == "fw":
                _, cpu, vmid, ipa, lvl, tpa, gen, full = e
                pg = pmap.get(tpa)
                if pg is None:
                    raise _NoJump("a walk-cache fill off the window's path")
                if (ipa + D) >> shifts[lvl] != b.x >> shifts[lvl]:
                    raise _NoJump("a walk-cache fill of another entry than the window's")
                out.append(("fw", cpu, vmid, ipa + D, lvl, pg.pa,
                            gen if pg.pa == tpa else pg.generation, full))
            elif kind == "h":
                _, cpu, vmid, ipa, lvl = e
                out.append(("h", cpu, vmid, ipa + D, lvl))
            elif kind == "i":
                _, cpu, op, vmid, ipa, size, ttl = e
                out.append(("i", cpu, op, vmid, ipa + D if op in IPA_OPS else ipa, size, ttl))
            elif kind == "t":
                _, pa, size, r = e
                if D % self.slot.backing.page_size:
                    raise _NoJump("a host page touched, not a whole number of them ahead")
                out.append(("t", pa + D, size, r + T))
            elif kind == "d":
                out.append(("d", e[1] + D))
            elif kind == "hm" and self._anon4k:
                out.append(("hm", e[1], e[2] + D))
            else:
                raise _NoJump("host THP state changed, or a TLB conflict")
        # boundaries as if the period had been recorded just now; TLB sizes are now's
        c0, c1 = dict(b0.counters), dict(b1.counters)
        now = tuple((len(t._order), len(t._worder)) for t in self.machine.tlbs)
        c0["tsz"] = tuple((s - (s1 - s0), w - (w1 - w0)) for (s, w), (s0, w0), (s1, w1)
                          in zip(now, b0.counters["tsz"], b1.counters["tsz"]))
        c1["tsz"] = now
        bv0 = _Boundary(b.t - (b1.t - b0.t), b.k - (b1.k - b0.k), b.si,
                        b.x - (b1.x - b0.x), b.fp, c0, 0, b.stride)
        bv1 = _Boundary(b.t, b.k, b.si, b.x, b.fp, c1, len(out), b.stride)
        saved = self.log
        self.log = out
        try:
            r = self._jump(v, bv0, bv1, win)
        finally:
            if self.log is out:
                self.log = saved
        self.stats["template_jumps"] += 1
        return r

    # --- region periods -------------------------------------------------------------------
    def _try_region(self, v, b: _Boundary, win: dict):
        """A period of one whole region (a level-3 table page): boundary `b` at the offset
        of its region where an earlier boundary stood in the previous region.

        Such a period allocates table pages (the next region's table comes from a
        memcache, the memcache is topped up from the allocator), so the fingerprint is
        extended symbolically (`_region_jump`). Returns None when nothing was jumped.
        """
        if self.host.thp:
            return self._try_region_tables(v, b, win)
        if self.host.mm or self.metrics._open or len(win["path"]) < 2:
            return None
        off = b.x - win["rbase"]
        if off >= REGION_OFFSETS * b.stride:
            return None
        for t in self.machine.tlbs:
            if t.capacity is None or t.walk_capacity is None:
                return None
        key = (b.fp[1:], off, win["rsize"])
        s0 = self.macro.get(key)
        if s0 is not None and s0["b"].si == b.si and b.x - s0["b"].x == win["rsize"]:
            try:
                return self._region_jump(v, s0, b, win)
            except _NoJump as e:
                self.why["region: " + str(e)] += 1
        if len(self.macro) >= TEMPLATES:
            self.macro.clear()
        self.macro[key] = self._snapshot(b, win)
        return None

    def _tlb_state(self, tlb) -> tuple:
        """A TLB's entries: replacement orders and every dict's items, in their orders."""
        return (list(tlb._order), [(lvl, list(d.items())) for lvl, d in tlb.leaf.items()],
                list(tlb._worder), [(lvl, list(d.items())) for lvl, d in tlb.walkc.items()])

    def _snapshot(self, b: _Boundary, win: dict) -> dict:
        """What a region period is checked against: the TLBs, memcaches, the parent table
        page, and copies of the recently allocated table pages."""
        mem = self.machine.mem
        g = self.geo.granule_size
        nxt = mem._next_table
        tl = [self._tlb_state(t) for t in self.machine.tlbs]
        refs = [p.pa for u in self.vcpus for p in u.mc.pages]
        for st in tl:
            for _, items in st[3]:
                refs.extend(pa for _, (pa, _) in items)
        refs.append(win["page"].pa)
        lo = min((pa for pa in refs if nxt - REGION_REACH * g <= pa < nxt), default=nxt)
        lo = max(lo - REGION_KMAX * g, nxt - (REGION_REACH + REGION_KMAX) * g)
        pages = {}
        for pa in range(lo, nxt, g):
            p = mem.tables.get(pa)
            pages[pa] = None if p is None else (p.level, p.refcount, p.generation,
                                                p.view().copy())
        parent = win["path"][-2][1]
        return {"b": b, "next": nxt, "lo": lo, "alloc": mem.allocated, "freed": mem.freed,
                "free": len(mem._free), "tlbs": tl, "pages": pages,
                "mc": [[p.pa for p in u.mc.pages] for u in self.vcpus],
                "parent": (parent.pa, parent.view().copy(), parent.refcount),
                "cur": win["page"].pa, "tpos": len(self._tlog), "first": win["first"],
                "ready": len(self.host.ready), "dirty": len(self.slot.dirty)}

    def _region_jump(self, v, s0: dict, b: _Boundary, win: dict) -> int:
        """Skip m regions at once, exactly.

        `b` and the snapshot's boundary b0 (the same offset of the previous region) have
        equal fingerprints (agents, heap, lock, the window's data, relative to their x
        and t). The period b0 -> b allocated k table pages from the allocator's bump
        pointer (no frees, no free list). Table pages are named relative to the bump
        pointer: a page referenced at b is either *static* (the same page at b0: an old
        memcache page, an upper-level table) or *moving* (k pages further than at b0:
        the region's table, the page topped up into a memcache, the tables the walk
        caches point to). The state at b must be b0's under that renaming phi (IPA and
        PA shifted by one region, moving pages by k): every TLB entry in replacement
        and dict order, every memcache, the parent table page (only the new region's
        entry written, pointing to the new table), and every recently allocated page
        (level, refcount, generation, entries shifted). The period must write no table
        page but the parent and those. Then the future is phi's image period after
        period, and the state after m periods is phi^m of b's: it is set directly.
        """
        b0 = s0["b"]
        geo = self.geo
        mem = self.machine.mem
        host, slot = self.host, self.slot
        g = geo.granule_size
        dx, period, dk = b.x - b0.x, b.t - b0.t, b.k - b0.k
        if dk <= 0 or period <= 0 or b.stride != b0.stride or dk * b.stride != dx:
            raise _NoJump("positions out of step with the region")
        c0, c1 = b0.counters, b.counters
        if c0["hostc"] != c1["hostc"] or c0["seq"] != c1["seq"] or c0["host"] != c1["host"] \
                or len(host.ready) != s0["ready"] or len(slot.dirty) != s0["dirty"]:
            raise _NoJump("host state changed")
        if mem._free or s0["free"] or mem.freed != s0["freed"]:
            raise _NoJump("table pages freed")
        k = mem.allocated - s0["alloc"]
        nxt, nxt0 = mem._next_table, s0["next"]
        if not 1 <= k <= REGION_KMAX or nxt - nxt0 != k * g:
            raise _NoJump("table allocation out of step")
        kg = k * g
        static, moving = set(), set()

        def pair(p0, p1):
            if p1 == p0:
                static.add(p1)
            elif p1 == p0 + kg:
                moving.add(p1)
            else:
                raise _NoJump("a table page out of step")

        mcs = [[p.pa for p in u.mc.pages] for u in self.vcpus]
        for l0, l1 in zip(s0["mc"], mcs):
            if len(l0) != len(l1):
                raise _NoJump("memcaches differ")
            for p0, p1 in zip(l0, l1):
                pair(p0, p1)
        cur = win["page"]
        if cur.pa != s0["cur"] + kg:
            raise _NoJump("the region's table out of step")
        moving.add(cur.pa)
        # TLBs: every entry in order; keys of levels the region shift divides move
        shifts = geo.shifts
        vmid = self.vmid
        dkey = {lvl: ((dx >> shifts[lvl]) << 16 if dx % (1 << shifts[lvl]) == 0 else None)
                for lvl in range(geo.start_level, 4)}
        tlbs = self.machine.tlbs
        now = []
        plans = []      # per TLB: (order plan, walk-order plan, leaf plans, walk plans)
        frozen = set()  # pages old walk-cache entries of a growing walk cache point to
        f0, f1 = s0["first"], win["first"]

        def reach(e, f):
            lvl, kk = e
            return (kk & 0xFFFF) == vmid and ((kk >> 16) + 1) << shifts[lvl] > f

        def order_plan(o0, o1, cap):
            n0, n1 = len(o0), len(o1)
            if n0 == n1:
                return ("shift", _order_drift(o0, o1, dkey, vmid))
            # not full yet: b0's entries kept in place, the period's new ones appended
            a = n1 - n0
            if a < 0 or a > n0 or o1[:n0] != o0:
                raise _NoJump("TLB sizes differ")
            for (l0, k0), (l1, k1) in zip(o0[n0 - a:], o1[n0:]):
                dd = dkey[l0]
                if dd is None or l1 != l0 or k1 != k0 + dd or (k0 & 0xFFFF) != vmid:
                    raise _NoJump("a TLB grows out of step")
            # what the convoy can reach (this VMID, from the window on) is b0's, moved
            r0 = {(lv, kk + dkey[lv]) for lv, kk in o0 if dkey[lv] is not None
                  and reach((lv, kk), f0)}
            r1 = {(lv, kk) for lv, kk in o1 if dkey[lv] is not None and reach((lv, kk), f1)}
            if r0 != r1:
                raise _NoJump("a TLB grows out of step")
            return ("grow", o1[n0:], (cap - n1) // a)

        def leaf_val(d0, d1):
            if d1 != d0 + dx:
                raise _NoJump("TLB entries out of step")

        def walk_val(v0, v1):
            (p0, g0), (p1, g1) = v0, v1
            if g0 != g1:
                raise _NoJump("walk caches out of step")
            pair(p0, p1)
            if p1 != p0:
                pg = mem.tables.get(p1)
                if pg is None or pg.generation != g1:
                    raise _NoJump("stale walk-cache pointer")

        for tlb, st0 in zip(tlbs, s0["tlbs"]):
            st1 = self._tlb_state(tlb)
            now.append(st1)
            (o0, lv0, w0, wv0), (o1, lv1, w1, wv1) = st0, st1
            if sum(len(it) for _, it in lv1) != len(o1) or \
                    sum(len(it) for _, it in wv1) != len(w1):
                raise _NoJump("TLB sizes differ")
            po = order_plan(o0, o1, tlb.capacity)
            pl = [_items_plan(it0, it1, dkey[lvl], leaf_val)
                  for (lvl, it0), (_, it1) in zip(lv0, lv1)]
            if len(w0) == len(w1) == tlb.walk_capacity and _dicts_follow(wv0, w0) \
                    and _dicts_follow(wv1, w1):
                fifo = _walk_fifo(w0, w1, wv0, wv1, tlb.walk_capacity, dkey, vmid, shifts,
                                  f0, f1, walk_val)
                if fifo is not None:
                    pw, vals, dead = fifo
                    for e, (p, _) in dead:
                        (static if dkey[e[0]] is None else frozen).add(p)
                    plans.append((po, pw, pl, vals))
                    continue
            pw = order_plan(w0, w1, tlb.walk_capacity)
            pwi = []
            for (lvl, it0), (_, it1) in zip(wv0, wv1):
                tail0 = _items_plan(it0, it1, dkey[lvl], walk_val)
                if dkey[lvl] is None:
                    for _, (p, _) in it1:
                        static.add(p)
                elif tail0 is not None:
                    frozen.update(p for _, (p, _) in it1[:len(it0)])
                pwi.append(tail0)
            plans.append((po, pw, pl, pwi))
        # the parent table page: only the new region's entry written, to its table
        ppa, pv0, pref0 = s0["parent"]
        parent = win["path"][-2][1]
        if parent.pa != ppa:
            raise _NoJump("another parent table")
        epp = geo.entries_per_table
        psh = shifts[parent.level]
        i1 = (b.x >> psh) & (epp - 1)
        i0 = (b0.x >> psh) & (epp - 1)
        pv = parent.view()
        diff = np.flatnonzero(pv != pv0)
        if i1 != i0 + 1 or len(diff) != 1 or int(diff[0]) != i1 or int(pv0[i1]) != 0 \
                or int(pv[i1]) != int(pv0[i0]) + kg or (int(pv[i1]) & geo.table_mask) != cur.pa:
            raise _NoJump("the parent table changed otherwise")
        # the window of moving pages: every moving reference and written page in it
        touched = set(self._tlog[s0["tpos"]:])
        touched.discard(ppa)
        for pa in touched:
            if not nxt - REGION_REACH * g <= pa < nxt:
                raise _NoJump("a table page written outside the region period's pages")
        W = max((nxt - pa) // g for pa in moving | touched)
        lo = nxt - (W + k) * g
        if W > REGION_REACH or nxt0 - (W + k) * g < s0["lo"]:
            raise _NoJump("moving table pages out of reach")
        static.add(ppa)
        for pa in static:
            if pa >= nxt0 - (W + k) * g:
                raise _NoJump("a static table page among the moving ones")
        pages0 = s0["pages"]
        dxu = np.uint64(dx)
        for i in range(1, W + k + 1):
            st0 = pages0.get(nxt0 - i * g)
            p1 = mem.tables.get(nxt - i * g)
            if st0 is None or p1 is None:
                raise _NoJump("a recent table page not live")
            lvl0, ref0, gen0, e0 = st0
            if (lvl0, ref0, gen0) != (p1.level, p1.refcount, p1.generation) or gen0 != 1 \
                    or lvl0 not in (3, -1):
                raise _NoJump("recent table pages differ")
            if not np.array_equal(p1.view(), np.where(e0 != 0, e0 + dxu, e0)):
                raise _NoJump("recent table pages out of step")
        # how many regions: the window stays in the segment, the parent page; regions
        # ahead have no table, host pages ahead look like the window's last
        m = (win["seg_end"] - 1 - win["last"]) // dx
        m = min(m, epp - 1 - i1)
        if m >= 1:
            ahead = np.flatnonzero(pv[i1 + 1:i1 + m + 1])
            if len(ahead):
                m = int(ahead[0])
        if m >= 1:
            m = self._region_host_ok(win, dx, m, b.t, b0)
        # static entries drifting towards the front of a replacement order must not be
        # evicted (nor meet another one)
        for pl in plans:
            for kind, x, *rest in pl[:2]:
                if kind in ("grow", "fifo"):
                    m = min(m, rest[0])
                    continue
                for p1, dl in x:
                    if dl:
                        m = min(m, p1 // dl)
        if m < 1:
            raise _NoJump("no room for a region")
        for pa in range(nxt, nxt + m * kg, g):
            if pa in mem.generation or pa in mem.tables:
                raise _NoJump("table frames ahead were used before")
        for pl in plans:
            for kind, dr, *_ in pl[:2]:
                if kind == "shift" and dr and len({p1 - m * dl for p1, dl in dr}) != len(dr):
                    raise _NoJump("static TLB entries would meet")
        # (old entries of a growing walk cache are behind the convoy, never read again:
        # they keep their pointers, whatever the pages become)
        for pa in frozen:
            if pa not in mem.tables:
                raise _NoJump("an old walk-cache entry points to a freed table page")
        for pl, st1 in zip(plans, now):
            kind, add = pl[1][:2]
            if kind == "fifo":
                new = [(lvl, kk + i * dkey[lvl]) for i in range(1, m + 1) for lvl, kk in add]
                if len(set(new)) != len(new) or not set(new).isdisjoint(st1[2]):
                    raise _NoJump("a walk cache would refill an entry")
        # --- apply (nothing has moved yet; _apply may still refuse) ---
        src = {}
        for pa in range(lo, nxt, g):
            p = mem.tables[pa]
            src[pa] = (p.level, p.refcount, p.view().copy())
        pe = int(pv[i1])
        pref = parent.refcount - pref0
        self._apply(b0, b, win, None, m, dx, period)
        for _ in range(m * k):
            mem.alloc_table(-1)
        for pa in range(nxt - W * g, nxt + m * kg, g):
            rho = (pa - nxt) // g
            j = min(m, -(-(rho + W + 1) // k))
            if j <= 0:
                continue
            lvl, ref, e = src[pa - j * kg]
            p = mem.tables[pa]
            p.level, p.refcount = lvl, ref
            p.view()[:] = np.where(e != 0, e + np.uint64(j * dx), e)
        for jj in range(1, m + 1):
            pv[i1 + jj] = pe + jj * kg
        parent.refcount += m * pref
        self._tlog.append(ppa)
        AK, A = m * kg, m * dx
        tables = mem.tables
        for u, l0, l1 in zip(self.vcpus, s0["mc"], mcs):
            u.mc.pages[:] = [tables[p1 + AK] if p1 != p0 else tables[p1]
                             for p0, p1 in zip(l0, l1)]
        for tlb, st0, (o1, lv1, w1, wv1), (po, pw, pl, pwi) in zip(tlbs, s0["tlbs"], now,
                                                                   plans):
            for od, o, (kind, x, *_) in ((tlb._order, o1, po), (tlb._worder, w1, pw)):
                od.clear()
                if kind == "shift":
                    od.update(dict.fromkeys(_order_moved(o, x, dkey, m)))
                elif kind == "fifo":
                    fin = o + [(lvl, kk + i * dkey[lvl]) for i in range(1, m + 1)
                               for lvl, kk in x]
                    od.update(dict.fromkeys(fin[len(fin) - len(o):]))
                else:
                    od.update(dict.fromkeys(o))
                    od.update(dict.fromkeys([(lvl, kk + i * dkey[lvl]) for i in range(1, m + 1)
                                             for lvl, kk in x]))
            for (lvl, it), tail0 in zip(lv1, pl):
                dct = tlb.leaf[lvl]
                dct.clear()
                dd = dkey[lvl]
                if dd is None:
                    dct.update(it)
                elif tail0 is None:
                    md = m * dd
                    dct.update([(kk + md, dsc + A) for kk, dsc in it])
                else:
                    dct.update(it)
                    add = it[len(it) - len(tail0):]
                    dct.update([(kk + i * dd, dsc + i * dx) for i in range(1, m + 1)
                                for kk, dsc in add])
            if pw[0] == "fifo":  # the dicts follow the replacement order
                for dct in tlb.walkc.values():
                    dct.clear()
                old_v, add_v = pwi
                for e in tlb._worder:
                    v = old_v.get(e)
                    if v is None:
                        lvl, kk = e
                        i = next(i for i in range(1, m + 1)
                                 if (lvl, kk - i * dkey[lvl]) in add_v)
                        p0, p1, gen = add_v[(lvl, kk - i * dkey[lvl])]
                        if p1 != p0:
                            p1 += i * kg
                            gen = tables[p1].generation
                        v = (p1, gen)
                    tlb.walkc[e[0]][e[1]] = v
                continue
            for (lvl, it0), (_, it), tail0 in zip(st0[3], wv1, pwi):
                dct = tlb.walkc[lvl]
                dct.clear()
                dd = dkey[lvl]
                if dd is None:
                    dct.update(it)
                elif tail0 is None:
                    md = m * dd
                    for (_, (p0, _)), (kk, (p1, gen)) in zip(it0, it):
                        if p1 != p0:
                            p1 += AK
                            gen = tables[p1].generation
                        dct[kk + md] = (p1, gen)
                else:
                    dct.update(it)
                    add = it[len(it) - len(tail0):]
                    for i in range(1, m + 1):
                        for (_, (p0, _)), (kk, (p1, gen)) in zip(tail0, add):
                            if p1 != p0:
                                p1 += i * kg
                                gen = tables[p1].generation
                            dct[kk + i * dd] = (p1, gen)
        c0 = b0.counters
        self.stats["region_jumps"] += 1
        if any(kind == "grow" for pl in plans for kind, *_ in pl[:2]):
            self.stats["region_jumps_growing"] += 1  # (a TLB or walk cache not yet full)
        if any(pl[1][0] == "fifo" for pl in plans):
            self.stats["region_jumps_fifo"] += 1  # (walk caches carrying older entries)
        self.stats["regions"] += m
        self.stats["ns"] += m * period
        self.stats["faults"] += m * (sum(n for _, n in c1["mc2"][0])
                                     - sum(n for _, n in c0["mc2"][0]))
        self.stats["accesses"] += m * (c1["m"][8] - c0["m"][8])
        self.macro.clear()
        del self._tlog[:]
        self._reset()
        return 0

    def _region_host_ok(self, win: dict, dx: int, m: int, t: int, b0: _Boundary) -> int:
        """Limit m so that the host pages and dirty bits ahead look like the window's last."""
        slot, host = self.slot, self.host
        far = win["last"]
        a1 = far + m * dx
        bad = a1 + 1
        fpa = slot.host_page(far)[0]
        fr = host.ready.get(fpa)
        if fr is None or fr > t:
            raise _NoJump("host page not ready at the window's edge")
        top = a1
        if slot.host_page(top)[0] != fpa:
            step = max(slot.backing.page_size, self.geo.granule_size)
            for y in range(((far // step) + 1) * step, top + 1, step):
                r = host.ready.get(slot.host_page(y)[0])
                if r is None or r > t:
                    bad = y
                    break
        dirty = slot.dirty
        if dirty:
            lo = b0.x - win["rsize"]
            hits = [y for y in dirty if lo <= y <= a1]
            if hits:
                if min(hits) <= far:
                    raise _NoJump("dirty pages in the region period")
                bad = min(bad, min(hits))
        return min(m, (bad - 1 - far) // dx)

    # --- region periods over existing tables (THP UPDATE and ADJUST) --------------------
    def _try_region_tables(self, v, b: _Boundary, win: dict):
        """A THP region period: the first boundary of a region against the first one of
        an earlier region with the same fingerprint and offset (`_region_jump_tables`).
        Returns None when nothing was jumped."""
        if self.metrics._open or len(win["path"]) < 2 or self.slot.base % win["rsize"]:
            return None
        for t in self.machine.tlbs:
            if t.capacity is None or t.walk_capacity is None:
                return None
        rb = win["rbase"]
        if rb == self._tregion:
            return None  # one candidate per region: its first boundary
        self._tregion = rb
        fp, order = self._canon(b.fp) if ROLES else (b.fp, None)
        if fp is None:
            return None  # (two vCPUs in the same state: which is which is undefined)
        key = ("tables", fp[1:], b.x - rb, win["rsize"])
        s0 = self.macro.get(key)
        if s0 is not None and b.x > s0["b"].x and "tlbs" in s0:
            try:
                return self._region_jump_tables(v, s0, b, win, order)
            except _NoJump as e:
                self.why["region: " + str(e)] += 1
        if len(self.macro) >= TEMPLATES:
            self.macro.clear()
        # a full snapshot (the TLBs: costly) only once the fingerprint has come back, or
        # at once where a region period was jumped in this stage (they come back: one
        # period less run exactly after each jump)
        self.macro[key] = {"b": b} if s0 is None and not (self._trecur and REGION_RECUR) else \
            self._snapshot_tables(b, win)
        self.macro[key]["order"] = order
        return None

    def _rename(self, role: list, m: int, c0: dict, c1: dict) -> None:
        """After a jump of m periods in which vCPU c's role passes to role[c] each period:
        here every vCPU kept its own state (moved), so vCPU c now stands for the one
        that holds its role on the exact path, role^m[c] (composed with the names
        of earlier jumps: `_names`). Its memcache is that vCPU's from now on (an
        allocation takes that vCPU's pages), and its counters and its TLB's are
        that vCPU's: the ones at b plus, period after period, the deltas of the
        roles it held (role^i[c]'s over the recorded period, i < m), summed along
        role's cycles. `_settle` gives every TLB, memcache and counter back to its
        vCPU."""
        n = len(role)
        v0, v1, t0, t1 = c0["v"], c1["v"], c0["tlb"], c1["tlb"]
        keys = sorted({k for a in v0[:n] + v1[:n] for k, _ in a[5]})

        def rows(vs, ts):
            out = []
            for a, t in zip(vs[:n], ts[:n]):
                o = dict(a[5])
                out.append(list(a[:4]) + list(t) + [o.get(k, 0) for k in keys])
            return np.array(out, dtype=np.int64)

        r1 = rows(v1, t1)
        delta = r1 - rows(v0, t0)
        rm = [0] * n
        total = np.zeros_like(r1)
        seen = [False] * n
        for c in range(n):
            if seen[c]:
                continue
            cyc = [c]
            seen[c] = True
            while not seen[role[cyc[-1]]]:
                cyc.append(role[cyc[-1]])
                seen[cyc[-1]] = True
            L = len(cyc)
            q, r = divmod(m, L)
            pre = np.zeros((2 * L + 1, r1.shape[1]), dtype=np.int64)
            np.cumsum(delta[cyc + cyc], axis=0, out=pre[1:])
            for s_, u in enumerate(cyc):
                rm[u] = cyc[(s_ + m) % L]
                total[u] = q * pre[L] + pre[s_ + r] - pre[s_]
        names = self._names
        self._names = [names[rm[c]] for c in range(n)]
        for c, (u, tlb) in enumerate(zip(self.vcpus, self.machine.tlbs)):
            u.mc = self._mcs[self._names[c]]
            cnt = [int(x) for x in r1[rm[c]] + total[c]]
            u.accesses, u.walks, u.faults, u.conflicts = cnt[:4]
            tlb.hits, tlb.misses, tlb.conflicts, tlb.evictions = cnt[4:8]
            base = dict(v1[rm[c]][5])
            u.outcomes.clear()
            u.outcomes.update((k, x) for k, x in zip(keys, cnt[8:]) if x or k in base)

    def _canon(self, fp: tuple):
        """A fingerprint up to the vCPUs' names, and their order in it (or None, None
        when two vCPUs are in the same state).

        The vCPUs run the same code over the same segments, the lock is FIFO and the
        engine breaks ties by push order: the simulation is the same with the vCPUs
        renamed. Each vCPU's part (program point, position, fault, last fault, the
        TLB entries in its reach) decides its rank; the heap, the lock and pending
        TLBIs name vCPUs by rank. THP ADJUST at v5.11 needs it: the order in which the
        vCPUs leave a region's read half and queue in the next region's convoy
        changes from region to region, so no region's state is an earlier one's
        shifted, but nearly every one is up to names (`_region_jump_tables`).
        """
        si, stride, agents, last, heap, lk, pend, wfp, nc, opened = fp
        level, rsize, tab, tl, hs = wfp
        n = len(agents)
        sig = [repr((agents[i], last[i], tl[i])) for i in range(n)]
        if len(set(sig)) != n:
            return None, None
        order = sorted(range(n), key=sig.__getitem__)
        rank = {c: k for k, c in enumerate(order)}

        def rk(c):
            return rank[c] if c in rank else ("host", c)

        owner, waiters = lk
        canon = (si, stride, tuple(agents[c] for c in order), tuple(last[c] for c in order),
                 tuple((t, rk(c), val) for t, c, val in heap),
                 (None if owner is None else (rk(owner[0]), owner[1]),
                  tuple((rk(c), t) for c, t in waiters)),
                 tuple((rk(e[0]),) + e[1:] for e in pend),
                 (level, rsize, tab, tuple(tl[c] for c in order) + tl[n:], hs), nc, opened)
        return canon, order

    def _region_tables(self, parent, psh: int, lo: int):
        """(index, table_at): the level-3 table page of a region and back, regions counted
        from the parent's entry 0. Past the parent (negative, or from entries_per_table
        on) they are its neighbours', read when first asked for: a walk cache holds the
        last regions walked, which span two parents for a while after the convoy
        crosses into a new one, and its entries are renamed through both."""
        geo, slot = self.geo, self.slot
        epp, tm = geo.entries_per_table, geo.table_mask
        span = epp << psh
        views = {0: parent.view()}
        rev: dict = {}
        grown = []

        def add(k, pv):
            for i in np.flatnonzero((pv & np.uint64(3)) == 3):
                rev[int(pv[i]) & tm] = k * epp + int(i)

        def view(k):
            if k not in views:
                base, pv = lo + k * span, None
                if base >= 0 and slot.base < base + span and base < slot.base + slot.size:
                    for lvl, page in self._path(max(base, slot.base))[0]:
                        if lvl == parent.level:
                            pv = page.view()
                views[k] = pv
            return views[k]

        def table_at(i):
            pv = view(i // epp)
            if pv is None:
                return None
            e = int(pv[i % epp])
            return e & tm if e & 3 == 3 else None

        def index(pa):
            i = rev.get(pa)
            if i is None and not grown:
                grown.append(1)
                for k in (-1, 1):
                    pv = view(k)
                    if pv is not None:
                        add(k, pv)
                i = rev.get(pa)
            return i

        add(0, views[0])
        return index, table_at

    def _regions_of(self, win: dict):
        """(parent table page, its shift, IPA of its entry 0, dirty offsets by entry)."""
        geo = self.geo
        parent = win["path"][-2][1]
        psh = geo.shifts[parent.level]
        lo = win["rbase"] & ~((geo.entries_per_table << psh) - 1)
        msk = (1 << psh) - 1
        dby: dict = {}
        for y in self.slot.dirty:
            dby.setdefault((y - lo) >> psh, []).append(y & msk)
        return parent, psh, lo, {i: tuple(sorted(ys)) for i, ys in dby.items()}

    def _region_state(self, parent, i: int, psh: int, lo: int, dby: dict):
        """What a fault or walk in the region of the parent's entry i can read,
        normalised: its table's refcount and entries (descriptors minus the region's
        PA), the host region's state and the dirty pages. None without a table."""
        if not 0 <= i < self.geo.entries_per_table:
            return None
        e = int(parent.entries[i])
        if e & 3 != 3:
            return None
        p = self.machine.mem.tables.get(e & self.geo.table_mask)
        slot = self.slot
        ipa = lo + (i << psh)
        if p is None or p.level != 3 or ipa < slot.base \
                or ipa + (1 << psh) > slot.base + slot.size:
            return None
        pa = slot.pa_of(ipa)
        ev = p.view()
        h = self.host.regions.get(pa)
        return (p.refcount, np.where(ev != 0, ev - np.uint64(pa), ev).tobytes(),
                None if h is None else tuple(h), dby.get(i, ()))

    def _snapshot_tables(self, b: _Boundary, win: dict) -> dict:
        parent, psh, lo, dby = self._regions_of(win)
        i0 = (b.x >> psh) & (self.geo.entries_per_table - 1)
        fresh = self._region_state(parent, i0 + 1, psh, lo, dby)
        n = 0  # regions ahead that look alike (normalised)
        while fresh is not None and n < REGION_PERIOD_MAX + 2 and \
                self._region_state(parent, i0 + 1 + n, psh, lo, dby) == fresh:
            n += 1
        mem = self.machine.mem
        return {"b": b, "tlbs": [self._tlb_state(t) for t in self.machine.tlbs],
                "mc": [[p.pa for p in u.mc.pages] for u in self.vcpus],
                "parent": (parent.pa, parent.view().copy(), parent.refcount), "i0": i0,
                "cur": self._region_state(parent, i0, psh, lo, dby), "fresh": fresh,
                "ahead": n, "tpos": len(self._tlog), "first": win["first"],
                "free": len(mem._free), "ready": len(self.host.ready)}

    def _region_jump_tables(self, v, s0: dict, b: _Boundary, win: dict,
                            order: list | None = None) -> int:
        """Skip m periods of L whole regions at once, exactly, where the regions' tables
        exist (THP UPDATE and ADJUST: allocated in CREATE, anywhere).

        `b` and the snapshot's boundary b0 (L regions back, same offset) have equal
        fingerprints. The period allocated and freed nothing, changed no host state
        (no THP event, no MMU notifier: its GUPs found present pages), wrote only the
        tables of regions b0's .. b's, and moved the agents by L regions (in one
        segment, or by whole segments of the same shape). Table pages are renamed
        through the parent table: phi maps the table of the parent's entry i to the
        one of entry i + L. The state at b must be b0's under phi: every TLB entry
        (as in `_region_jump`), the memcaches and the parent (unchanged), b's region
        (table entries shifted, refcount, host state, dirty pages) b0's, and the
        regions ahead like the one after b0's. The state after m periods is set
        directly: region q of the m*L gets the contents of the region it repeats
        (q - j*L, j periods on), shifted; TLBs as in `_region_jump`.
        """
        b0 = s0["b"]
        geo, mem, host, slot = self.geo, self.machine.mem, self.host, self.slot
        rsize = win["rsize"]
        dx, period = b.x - b0.x, b.t - b0.t
        # roles: the vCPU order[k] at b is in the state order0[k] was in at b0
        ident = list(range(len(self.vcpus)))
        role = list(ident) if order is None else _role(len(ident), s0["order"], order)
        s0tlbs = list(s0["tlbs"])
        for c in ident:
            s0tlbs[role[c]] = s0["tlbs"][c]
        dsi, dk = b.si - b0.si, b.k - b0.k
        if period <= 0 or dx <= 0 or dx % rsize or b.stride != b0.stride or dsi < 0 or \
                (dk * b.stride != dx if dsi == 0 else dk != 0):
            raise _NoJump("positions out of step with the region")
        L = dx // rsize
        if L > REGION_PERIOD_MAX or s0["ahead"] < L + 1:
            raise _NoJump("regions ahead of b0's differ")
        c0, c1 = b0.counters, b.counters
        if c0["hostc"] != c1["hostc"] or c0["seq"] != c1["seq"] or c0["host"] != c1["host"] \
                or len(host.ready) != s0["ready"] or host.active:
            raise _NoJump("host state changed")
        if c0["mem"] != c1["mem"] or len(mem._free) != s0["free"]:
            raise _NoJump("table pages allocated or freed")
        if [[p.pa for p in u.mc.pages] for u in self.vcpus] != s0["mc"]:
            raise _NoJump("memcaches differ")
        parent, psh, lo, dby = self._regions_of(win)
        ppa, pv0, pref0 = s0["parent"]
        pv = parent.view()
        if parent.pa != ppa or parent.refcount != pref0 or not np.array_equal(pv, pv0):
            raise _NoJump("the parent table changed")
        epp = geo.entries_per_table
        i0, i1 = s0["i0"], (b.x >> psh) & (epp - 1)
        if i1 != i0 + L:
            raise _NoJump("another parent table")
        index, table_at = self._region_tables(parent, psh, lo)
        for pa in set(self._tlog[s0["tpos"]:]):
            i = index(pa)
            if i is None or not i0 <= i <= i1:
                raise _NoJump("a table page written outside the period's regions")
        if self._region_state(parent, i1, psh, lo, dby) != s0["cur"]:
            raise _NoJump("the region out of step")
        # how many periods: the segments, the regions ahead (alike), the parent
        vcpus = [u for u in self.vcpus if u.agent.gen.gi_frame is not None]
        segs = v.segments
        if dsi == 0:
            m = (win["seg_end"] - 1 - win["last"]) // dx
        else:
            m = (len(segs) - 1 - b.si) // dsi
            for u in vcpus:
                if u.segments != segs:
                    raise _NoJump("the vCPUs' segments differ")
            for s in range(b0.si, b.si + m * dsi - dsi + 1):
                st, sd, n, acc = segs[s]
                if segs[s + dsi] != (st + dx, sd, n, acc):
                    m = (s - b0.si) // dsi
                    break
        m = min(m, (epp - 1 - i1) // L)
        fresh = s0["fresh"]
        for q in range(i1 + 1, i1 + m * L + 1):
            if self._region_state(parent, q, psh, lo, dby) != fresh:
                m = min(m, (q - 1 - i1) // L)
                break
        # TLBs: as in _region_jump, table pages renamed by phi
        shifts = geo.shifts
        vmid = self.vmid
        dkey = {lvl: ((dx >> shifts[lvl]) << 16 if dx % (1 << shifts[lvl]) == 0 else None)
                for lvl in range(geo.start_level, 4)}
        tlbs = self.machine.tlbs
        tables = mem.tables
        f0, f1 = s0["first"], win["first"]

        def reach(e, f):
            lvl, kk = e
            return (kk & 0xFFFF) == vmid and ((kk >> 16) + 1) << shifts[lvl] > f

        def order_plan(o0, o1, cap):
            n0, n1 = len(o0), len(o1)
            if n0 == n1:
                return ("shift", _order_drift(o0, o1, dkey, vmid))
            # not full yet: b0's moving entries kept in place, the period's appended;
            # static ones (refreshed every period) at the same place from the end
            a = n1 - n0
            st0 = [(n0 - i, e) for i, e in enumerate(o0) if dkey[e[0]] is None]
            st1 = [(n1 - i, e) for i, e in enumerate(o1) if dkey[e[0]] is None]
            mo0 = [e for e in o0 if dkey[e[0]] is not None]
            mo1 = [e for e in o1 if dkey[e[0]] is not None]
            n0 = len(mo0)
            if st0 != st1 or a <= 0 or a > n0 or mo1[:n0] != mo0:
                raise _NoJump("TLB sizes differ")
            for (l0, k0), (l1, k1) in zip(mo0[n0 - a:], mo1[n0:]):
                dd = dkey[l0]
                if l1 != l0 or k1 != k0 + dd or (k0 & 0xFFFF) != vmid:
                    raise _NoJump("a TLB grows out of step")
            r0 = {(lv, kk + dkey[lv]) for lv, kk in mo0 if reach((lv, kk), f0)}
            r1 = {(lv, kk) for lv, kk in mo1 if reach((lv, kk), f1)}
            if r0 != r1:
                raise _NoJump("a TLB grows out of step")
            return ("grow", mo1[n0:], (cap - n1) // a, mo1, st1)

        def leaf_val(d0, d1):
            if d1 != d0 + dx:
                raise _NoJump("TLB entries out of step")

        behind = [i0]  # the earliest region a walk-cache entry points into

        def walk_val(v0, v1):
            (p0, g0), (p1, g1) = v0, v1
            i = index(p0)
            if i is None or i > i0 or table_at(i + L) != p1:  # (none ahead of the window)
                raise _NoJump("walk caches out of step")
            if tables[p0].generation != g0 or tables[p1].generation != g1:
                raise _NoJump("stale walk-cache pointer")
            behind[0] = min(behind[0], i)

        def ren(p, j):
            return table_at(index(p) + j * L)

        now, plans = [], []
        for tlb, st0 in zip(tlbs, s0tlbs):
            st1 = self._tlb_state(tlb)
            now.append(st1)
            (o0, lv0, w0, wv0), (o1, lv1, w1, wv1) = st0, st1
            if sum(len(it) for _, it in lv1) != len(o1) or \
                    sum(len(it) for _, it in wv1) != len(w1):
                raise _NoJump("TLB sizes differ")
            po = order_plan(o0, o1, tlb.capacity)
            pl = [_items_plan(it0, it1, dkey[lvl], leaf_val)
                  for (lvl, it0), (_, it1) in zip(lv0, lv1)]
            if w0 == w1 and wv0 == wv1:
                # a walk cache nothing was filled into: it holds every region's entry
                # (checked below over the jump's regions) and stays as it is
                plans.append((po, ("same", None), pl, None))
                continue
            if len(w0) == len(w1) == tlb.walk_capacity and _dicts_follow(wv0, w0) \
                    and _dicts_follow(wv1, w1):
                fifo = _walk_fifo(w0, w1, wv0, wv1, tlb.walk_capacity, dkey, vmid, shifts,
                                  f0, f1, walk_val)
                if fifo is not None:
                    plans.append((po, fifo[0], pl, fifo[1]))
                    continue
            pw = order_plan(w0, w1, tlb.walk_capacity)
            pwi = [_items_plan(it0, it1, dkey[lvl], walk_val)
                   for (lvl, it0), (_, it1) in zip(wv0, wv1)]
            plans.append((po, pw, pl, pwi))
        # walk caches left as they are must hold every region's entry, b0's to the end
        wsh = shifts[parent.level]
        for tlb, pl in zip(tlbs, plans):
            if pl[1][0] != "same":
                continue
            dct = tlb.walkc[parent.level]
            if not tlb._worder:
                continue  # (empty, nothing filled: its CPU walks nothing, the host's)
            for q in range(i0, i1 + m * L + 1):
                pa = table_at(q)
                if dct.get((((lo + (q << psh)) >> wsh) << 16) | vmid) != \
                        (pa, tables[pa].generation):
                    if q <= i1:
                        raise _NoJump("a walk cache without the period's regions")
                    m = min(m, (q - 1 - i1) // L)
                    break
        for pl in plans:
            for kind, x, *rest in pl[:2]:
                if kind == "same":
                    continue
                if kind in ("grow", "fifo"):
                    m = min(m, rest[0])
                    continue
                for p1, dl in x:
                    if dl:
                        m = min(m, p1 // dl)
        if m < 1:
            raise _NoJump("no room for a region")
        for pl in plans:
            for kind, dr, *_ in pl[:2]:
                if kind == "shift" and dr and len({p1 - m * dl for p1, dl in dr}) != len(dr):
                    raise _NoJump("static TLB entries would meet")
        for pl, st1 in zip(plans, now):
            kind, add = pl[1][:2]
            if kind == "fifo":
                new = [(lvl, kk + i * dkey[lvl]) for i in range(1, m + 1) for lvl, kk in add]
                if len(set(new)) != len(new) or not set(new).isdisjoint(st1[2]):
                    raise _NoJump("a walk cache would refill an entry")
        for q in range(behind[0], i0):  # (a neighbour parent's regions: renamed through)
            if table_at(q) is None:
                raise _NoJump("a region behind without a table")
        # --- apply (nothing has moved yet; _apply may still refuse) ---
        srcs = {}
        for i in range(i0, i1 + 1):
            p = tables[table_at(i)]
            if p.watch:
                raise _NoJump("a read batch on a region's table")
            srcs[i] = (p.refcount, p.view().copy(), dby.get(i, ()))
        self._apply(b0, b, win, None, m, dx, period)
        for u in vcpus:
            u.skip_segs += m * dsi
            u.seg += m * dsi
        dirty = slot.dirty
        for q in range(i1, i1 + m * L + 1):
            j = min(m, (q - i0) // L)
            ref, e, dl = srcs[q - j * L]
            p = tables[table_at(q)]
            p.refcount = ref
            p.view()[:] = np.where(e != 0, e + np.uint64(j * dx), e)
            qb = lo + (q << psh)
            for y in dby.get(q, ()):
                set.discard(dirty, qb + y)
            for y in dl:
                set.add(dirty, qb + y)
        A = m * dx
        for tlb, st0, (o1, lv1, w1, wv1), (po, pw, pl, pwi) in zip(tlbs, s0tlbs, now,
                                                                   plans):
            for od, o, (kind, x, *_) in ((tlb._order, o1, po), (tlb._worder, w1, pw)):
                if kind == "same":
                    continue
                od.clear()
                if kind == "shift":
                    od.update(dict.fromkeys(_order_moved(o, x, dkey, m)))
                elif kind == "fifo":
                    fin = o + [(lvl, kk + i * dkey[lvl]) for i in range(1, m + 1)
                               for lvl, kk in x]
                    od.update(dict.fromkeys(fin[len(fin) - len(o):]))
                else:
                    mo, st = _[1], _[2]
                    fin = mo + [(lvl, kk + i * dkey[lvl]) for i in range(1, m + 1)
                                for lvl, kk in x]
                    for p, e in reversed(st):  # (from the end: each at its place)
                        fin.insert(len(fin) + 1 - p, e)
                    od.update(dict.fromkeys(fin))
            for (lvl, it), tail0 in zip(lv1, pl):
                dct = tlb.leaf[lvl]
                dct.clear()
                dd = dkey[lvl]
                if dd is None:
                    dct.update(it)
                elif tail0 is None:
                    md = m * dd
                    dct.update([(kk + md, dsc + A) for kk, dsc in it])
                else:
                    dct.update(it)
                    add = it[len(it) - len(tail0):]
                    dct.update([(kk + i * dd, dsc + i * dx) for i in range(1, m + 1)
                                for kk, dsc in add])
            if pw[0] == "same":
                continue
            if pw[0] == "fifo":  # the dicts follow the replacement order
                for dct in tlb.walkc.values():
                    dct.clear()
                old_v, add_v = pwi
                for e in tlb._worder:
                    val = old_v.get(e)
                    if val is None:
                        lvl, kk = e
                        i = next(i for i in range(1, m + 1)
                                 if (lvl, kk - i * dkey[lvl]) in add_v)
                        p1 = ren(add_v[(lvl, kk - i * dkey[lvl])][1], i)
                        val = (p1, tables[p1].generation)
                    tlb.walkc[e[0]][e[1]] = val
                continue
            for (lvl, it), tail0 in zip(wv1, pwi):
                dct = tlb.walkc[lvl]
                dct.clear()
                dd = dkey[lvl]
                if dd is None:
                    dct.update(it)
                elif tail0 is None:
                    md = m * dd
                    for kk, (p1, _) in it:
                        p1 = ren(p1, m)
                        dct[kk + md] = (p1, tables[p1].generation)
                else:
                    dct.update(it)
                    add = it[len(it) - len(tail0):]
                    for i in range(1, m + 1):
                        for kk, (p1, _) in add:
                            p1 = ren(p1, i)
                            dct[kk + i * dd] = (p1, tables[p1].generation)
        self.stats["region_jumps"] += 1
        self.stats["region_jumps_tables"] += 1
        if dsi:
            self.stats["region_jumps_segments"] += 1
        if L > 1:
            self.stats["region_jumps_multi"] += 1  # (periods of several regions)
        if behind[0] < 0:
            self.stats["region_jumps_two_parents"] += 1  # (walk caches renamed across)
        self._trecur = True
        if role != ident:
            self._rename(role, m, b0.counters, b.counters)
            self.stats["region_jumps_renamed"] += 1
        self.stats["regions"] += m * L
        self.stats["ns"] += m * period
        self.stats["faults"] += m * (sum(n for _, n in c1["mc2"][0])
                                     - sum(n for _, n in c0["mc2"][0]))
        self.stats["accesses"] += m * (c1["m"][8] - c0["m"][8])
        self.macro.clear()
        del self._tlog[:]
        self._reset()
        return 0

    def _trim(self) -> None:
        if len(self.bounds) > HISTORY:
            self._reset()

    # --- the fingerprint ---------------------------------------------------------------
    def _fingerprint(self, si: int, k: int, x: int, t: int, stride: int):
        geo = self.geo
        eng, lock = self.engine, self.lock
        agents = []
        lo = hi = 0
        geom = None
        kvm = self.kvm
        anon = self._anon4k
        if kvm.mmu_notifier_count and not anon:
            raise _NoJump("an MMU notifier invalidation in progress")
        active = self.host.active
        for v in self.vcpus:
            gs = None
            if v.in_gup:
                if not anon:
                    raise _NoJump("a THP GUP in progress")
                # anonymous 4K: the GUP's state is its program point (in the agent's
                # chain), its page (the fault's), and the notifier it drives
                st = active.get(v.cpu)
                if st is None or v.cur_fault is None or st.ipa != v.cur_fault.ipa:
                    raise _NoJump("a GUP off its fault")
                gs = (st.write, None if st.sub is None else (st.end, st.n, _chain(st.sub)))
            gen = v.agent.gen
            if gen.gi_frame is None and gs is None and v.cur_fault is None:
                # finished (its TLB still sees broadcast TLBIs: the window has it)
                agents.append(("done", len(v.mc.pages)))
                continue
            if gen.gi_frame is None or v.seg != si:
                raise _NoJump("agent finished, not started or in another segment")
            g = v.segments[si][:3]
            if geom is None:
                geom = g
            elif g != geom:
                raise _NoJump("line 308")
            pos = v.k + v.skip - k
            lo, hi = min(lo, pos), max(hi, pos)
            f = v.cur_fault
            if f is None:
                fr = None
            else:
                rel = f.ipa - x
                if rel % stride:
                    raise _NoJump("line 317")
                lo, hi = min(lo, rel // stride), max(hi, rel // stride)
                seq = _mmu_seq(v.kvm_gen)
                fr = (f.kind, f.level, f.access, rel, v.fault_t0 - t,
                      v.agent.lock_waited - v.fault_waited0,
                      _chain(v.kvm_gen) if v.kvm_gen is not None else None,
                      v.gup, None if seq is None else seq - kvm.mmu_notifier_seq)
            agents.append((_chain(gen), pos, fr, v.segments[si][3], len(v.mc.pages), gs))
        lo -= MARGIN
        hi += MARGIN
        lo_ipa = x + lo * stride
        last = []
        for v in self.vcpus:
            lf = v.last_fault_ipa
            if lf < lo_ipa or v.agent.gen.gi_frame is None:
                last.append(None)  # behind every position: never faulted on again
            else:
                last.append((lf - x, v.repeats))
        heap = tuple((e[0] - t, e[3].cpu, e[4]) for e in sorted(eng._heap, key=_heapkey))
        owner = lock.owner
        lk = (None if owner is None else (owner.cpu, lock.since - t),
              tuple((a.cpu, since - t) for a, since in lock.waiters))
        pend = []
        for cpu, ops in sorted(self.machine._pending.items()):
            for op, vmid, ipa, size, ttl in ops:
                pend.append((cpu, op, vmid, ipa - x if op in IPA_OPS else ipa, size, ttl))
        win = self._window(x, lo, hi, stride, t)
        win["seg_end"] = geom[0] + geom[1] * geom[2]
        opened = self._open_windows(win, x, t)
        fp = (si, stride, tuple(agents), tuple(last), heap, lk, tuple(pend), win["fp"],
              kvm.mmu_notifier_count, opened)
        del geo
        return fp, win

    def _open_windows(self, win: dict, x: int, t: int) -> tuple:
        """The metrics' open invalid windows (an entry made invalid, not yet valid
        again: an MMU notifier's unmap), relative to x's entry and t. Only in the
        window's table page (they move with the convoy: `_apply`)."""
        op = self.metrics._open
        if not op:
            return ()
        page = win["page"]
        ix = (x >> self.geo.shifts[win["level"]]) & (self.geo.entries_per_table - 1)
        out = []
        for (pa, i), t0 in op.items():
            if pa != page.pa:
                raise _NoJump("an open invalid window off the window's table page")
            out.append((i - ix, t0 - t))
        out.sort()
        return tuple(out)

    def _path(self, ipa: int):
        """The table pages on the walk to `ipa`: [(level, page)], and the level where it ends."""
        geo = self.geo
        tables = self.machine.mem.tables
        level = geo.start_level
        idx = geo.index(ipa, level)
        epp = geo.entries_per_table
        page = tables[self.root + (idx // epp) * geo.granule_size]
        path = []
        while True:
            path.append((level, page))
            i = (ipa >> geo.shifts[level]) & (epp - 1)
            pte = page.entries[i]
            if level < 3 and pte & 3 == 3:
                nxt = tables.get(pte & geo.table_mask)
                if nxt is None:
                    raise _NoJump("line 365")  # a pointer to a freed table
                page = nxt
                level += 1
                continue
            return path, level, page, pte

    def _norm(self, desc: int, base: int):
        """A descriptor relative to the IPA it maps (the slot maps linearly)."""
        if not desc:
            return 0
        pa = self.slot.pa_of(base)
        if desc & OA & ~0xFFF == pa & OA:
            return ("l", desc - pa)
        raise _NoJump("line 378")

    def _window_range(self, x: int, lo: int, hi: int, stride: int) -> tuple:
        """Where `_window` looks, or _NoJump if the window leaves the slot or the range
        of the table page (or block) translating x: (first, last, path, level, page,
        rbase, rsize). Cheap: `_try_groups` checks every convoy's window with it before
        fingerprinting (at a region's start the window reaches back into the last)."""
        geo = self.geo
        slot = self.slot
        first, lastp = x + lo * stride, x + hi * stride
        if first < slot.base or lastp >= slot.base + slot.size:
            raise _NoJump("line 386")
        path, level, page, pte = self._path(x)
        shift = geo.shifts[level]
        if level < 3 and pte & 1 and geo.block_ok[level]:
            rsize = 1 << shift                           # a block: its range
        elif level == geo.start_level:
            rsize = geo.entries_per_table << shift
        else:
            rsize = 1 << geo.shifts[level - 1]           # the table page's range
        rbase = x & ~(rsize - 1)
        if first < rbase or lastp >= rbase + rsize:
            raise _NoJump("line 397")
        return first, lastp, path, level, page, rbase, rsize

    def _window(self, x: int, lo: int, hi: int, stride: int, t: int) -> dict:
        """Data the agents can read next, pages x+lo*stride .. x+hi*stride, normalised."""
        geo = self.geo
        slot = self.slot
        first, lastp, path, level, page, rbase, rsize = self._window_range(x, lo, hi, stride)
        shift = geo.shifts[level]
        epp = geo.entries_per_table
        ents = page.entries
        # table entries of the window (shared entries once)
        tab = []
        prev = -1
        for y in range(first, lastp + 1, stride):
            i = (y >> shift) & (epp - 1)
            if i == prev:
                continue
            prev = i
            e = ents[i]
            if level < 3 and e & 3 == 3:
                raise _NoJump("line 410")
            tab.append(((y >> shift) - (x >> shift), self._norm(e, (y >> shift) << shift)))
        # TLBs: leaf entries and walk-cache entries that translate the window
        vmid = self.vmid
        ptrs = {lvl: pg.pa for lvl, pg in path}
        tl = []
        kinfo: dict = {}
        step = 1 << 16
        spa = slot.pa - slot.base

        def keyset(sh):
            # the keys (this VMID) of the window's pages at a level of shift `sh`
            ks = kinfo.get(sh)
            if ks is None:
                if stride <= (1 << sh):  # every index between the ends is reached
                    ks = set(range(((first >> sh) << 16) | vmid,
                                   ((lastp >> sh) << 16) + step, step))
                else:
                    ks = {((y >> sh) << 16) | vmid for y in range(first, lastp + 1, stride)}
                kinfo[sh] = ks
            return ks

        xs = {}
        for tlb in self.machine.tlbs:
            ent = []
            for lvl, sh, dct in tlb._probe:
                if not dct:
                    continue
                hit = dct.keys() & keyset(sh)
                if not hit:
                    continue
                xk = xs.get(sh)
                if xk is None:
                    xk = xs[sh] = x >> sh
                # (relative index, descriptor minus the PA it must map); _norm's check
                # (the OA is the slot's PA) done below for all of them at once
                js = [key >> 16 for key in sorted(hit)]
                rel = [dct[(j << 16) | vmid] - ((j << sh) + spa) for j in js]
                if any((r & OAP) or r < 0 for r in rel):
                    for j in js:
                        self._norm(dct[(j << 16) | vmid], j << sh)  # raises
                ent.extend(zip(repeat(lvl), [j - xk for j in js], zip(repeat("l"), rel)))
            for lvl, sh, dct in tlb._wprobe:
                if not dct:
                    continue
                hit = dct.keys() & keyset(sh)
                if not hit:
                    continue
                for key in sorted(hit):
                    e = dct[key]
                    if lvl >= level or ptrs.get(lvl + 1) != e[0]:
                        raise _NoJump("stale walk-cache pointer")
                    ent.append(("w", lvl))
            # whether a fill evicts: the TLB is full (see _evictions_ok)
            full = (tlb.capacity is not None and len(tlb._order) >= tlb.capacity,
                    tlb.walk_capacity is not None and len(tlb._worder) >= tlb.walk_capacity)
            tl.append((tuple(ent), full))
        # host pages and dirty bits
        host = self.host
        hs = []
        seen_pa = -1
        dirty = self.slot.dirty
        for y in range(first, lastp + 1, stride):
            dy = (y & ~(geo.granule_size - 1)) in dirty
            if host.mm:  # GUP model: what a GUP would find (region state, own 4K page)
                hs.append((host.token(y), dy))
                continue
            hpa = slot.host_page(y)[0]
            if hpa == seen_pa:
                hs.append(dy)
                continue
            seen_pa = hpa
            r = host.ready.get(hpa)
            hs.append((None if r is None else (r - t if r > t else -1), dy))
        fp = (level, rsize, tuple(tab), tuple(tl), tuple(hs))
        return {"fp": fp, "level": level, "page": page, "rbase": rbase, "rsize": rsize,
                "first": first, "last": lastp, "path": path, "stride": stride}

    # --- counters ----------------------------------------------------------------------
    def _counters(self) -> dict:
        m = self.metrics.cur
        lock = self.lock
        c = {
            "lock": (lock.acquisitions, lock.contended, lock.wait_ns, lock.hold_ns),
            "res": self.engine.resumptions,
            "mc": tuple(self.machine.counts.values()),
            "mem": (self.machine.mem.allocated, self.machine.mem.freed),
            "host": self.host.bytes_zeroed,
            "hostc": tuple(sorted(self.host.counts.items())),
            "seq": (self.kvm.mmu_notifier_seq, self.kvm.mmu_notifier_count),
            "tlb": tuple((t.hits, t.misses, t.conflicts, t.evictions) for t in self.machine.tlbs),
            "tsz": tuple((len(t._order), len(t._worder)) for t in self.machine.tlbs),
            "v": tuple((v.accesses, v.walks, v.faults, v.conflicts, v.agent.lock_waited,
                        tuple(sorted(v.outcomes.items()))) for v in self.vcpus),
            "m": tuple(getattr(m, f) for f in _METRIC_INTS),
            "mc2": tuple(tuple(sorted(getattr(m, f).items())) for f in _METRIC_COUNTERS),
        }
        return c

    # --- the jump ------------------------------------------------------------------------
    def _jump(self, leader, b0: _Boundary, b: _Boundary, win: dict,
              role: list | None = None) -> int:
        """Jump m periods b0 -> b (`role`: up to the vCPUs' names, as `_gjump`)."""
        dk = b.k - b0.k
        period = b.t - b0.t
        if dk <= 0 or period <= 0:
            raise _NoJump("line 488")
        stride = b.stride
        dp = dk * stride                         # IPA (and PA) advance per period
        c0, c1 = b0.counters, b.counters
        if c0["mem"] != c1["mem"]:
            raise _NoJump("line 493")                        # table pages allocated or freed
        # (anonymous 4K: page state changes and notifier pairs are replayed)
        if (c0["hostc"] != c1["hostc"] or c0["seq"] != c1["seq"]) and (
                not self._anon4k or c0["seq"][1] != c1["seq"][1]):
            raise _NoJump("host THP state or MMU notifier changed")
        log = self.log[b0.log_at:b.log_at]
        # how many periods fit: the window must stay in the region and the segment
        rend = min(win["rbase"] + win["rsize"], win["seg_end"])
        m = mroom = (rend - 1 - win["last"]) // dp
        if role is None:
            m = self._evictions_ok(c0, c1, win, dp, m)
        elif any(e1[3] != e0[3] for e0, e1 in zip(c0["tlb"], c1["tlb"])):
            raise _NoJump("renamed: TLB evictions")
        if m < 1:
            raise _NoJump("no room in the region or segment")
        m = self._ahead_ok(win, dp, m, b.t)
        if m < 1:
            raise _NoJump("the pages ahead differ")
        if self.metrics._open:
            sh = self.geo.shifts[win["level"]]
            if (m * dp) % (1 << sh) or max(i for _, i in self.metrics._open) + \
                    ((m * dp) >> sh) >= self.geo.entries_per_table:
                raise _NoJump("open invalid windows would leave the table page")
        plan = self._plan(log, win, dp, m, tlbs=role is None)
        if role is not None:
            plan["shift"] = self._shift_plan(
                [(win["rbase"], win["rbase"] + win["rsize"], 0)], [m * dp])
        self._apply(b0, b, win, plan, m, dp, period)
        self._named_last = role is not None
        if role is not None:
            self._rename(role, m, c0, c1)
            self.stats["jumps_renamed"] += 1
            if m == mroom:
                # no room left before the region's end: nothing jumps before the convoy
                # is in the next one
                self._noroom1 = (b.si, stride, b.k + -(-(rend - b.x) // stride))
        self.stats["jumps"] += 1
        self.stats["periods"] += m
        self.stats["ns"] += m * period
        self.stats["faults"] += m * (sum(n for _, n in c1["mc2"][0])
                                     - sum(n for _, n in c0["mc2"][0]))
        self.stats["accesses"] += m * (c1["m"][8] - c0["m"][8])
        self._reset()
        return 0

    def _evictions_ok(self, c0: dict, c1: dict, win: dict, dp: int, m: int) -> int:
        """Limit m so that TLB capacity evictions in the skipped periods are harmless.

        A TLB that is not full must not become full (m is reduced); a full one evicts
        its oldest entries, which must not translate anything the convoy reads.
        """
        self._oldest = {}
        for tlb, (s0, w0), (s1, w1), (e0, e1) in zip(self.machine.tlbs, c0["tsz"], c1["tsz"],
                                                      zip(c0["tlb"], c1["tlb"])):
            if tlb.walk_capacity is not None and w1 > w0 \
                    and w1 + m * (w1 - w0) > tlb.walk_capacity:
                m = min(m, (tlb.walk_capacity - w1) // (w1 - w0))
            if tlb.capacity is None:
                continue
            ev = e1[3] - e0[3]
            if ev == 0:
                if s1 > s0:
                    m = min(m, (tlb.capacity - s1) // (s1 - s0))
                continue
            # full: the m*ev oldest entries go; none may be in the window's reach
            lo = win["first"]
            hi = win["last"] + dp * m
            old = list(islice(tlb._order, m * ev))
            self._oldest[id(tlb)] = old  # what the replay will evict (reused there)
            # the cached entries in the convoy's reach (this VMID; the convoy reads no
            # other) must not be among the evicted ones
            reach = _in_reach(tlb, self.vmid, lo, hi)
            if reach and not reach.isdisjoint(old):
                raise _NoJump("TLB eviction would reach the window")
        return m

    def _plan(self, log: list, win: dict, dp: int, m: int, tlbs: bool = True) -> dict:
        """Check that every recorded effect can be replayed shifted; group them."""
        geo = self.geo
        page = win["page"]
        level = win["level"]
        writes: dict[int, tuple] = {}
        ref = 0
        tlbops: dict[int, list] = {}
        touches, dirty, hops = [], [], []
        for e in log:
            kind = e[0]
            if kind == "w":
                _, pa, index, _old, new, ipa = e
                if pa != page.pa or ipa < 0:
                    raise _NoJump("line 526")
                writes[index] = (ipa, new)
            elif kind == "r":
                if e[1] != page.pa:
                    raise _NoJump("line 530")
                ref += e[2]
            elif kind in ("f", "fw", "i", "h"):
                if tlbs:  # (else a renamed period: the TLBs are set, not replayed)
                    tlbops.setdefault(e[1], []).append(e)
            elif kind == "t":
                touches.append(e)
            elif kind == "d":
                dirty.append(e[1])
            elif kind == "hm":
                if not self._anon4k:
                    raise _NoJump("host THP state changed")
                hops.append((e[1], e[2]))
            else:
                raise _NoJump("line 539")
        shift = geo.shifts[level]
        if dp % (1 << shift) and writes:
            raise _NoJump("line 542")  # the written entries would not move by whole entries
        wr = []
        for index, (ipa, new) in writes.items():
            base = (ipa >> shift) << shift
            wr.append((ipa, self._norm(new, base)))
        # TLB operations: per TLB, replay the last period only when that gives the same
        # state as replaying all of them; else all m periods.
        last_ipa = dp * m
        modes = {}
        for cpu, ops in tlbops.items():
            leaf_wipe = False
            leaf_fixed = walk_fixed = True
            ev = False
            for e in ops:
                kind = e[0]
                if kind == "f":
                    _, _, vmid, ipa, lvl, desc, evicted, _ = e
                    if vmid != self.vmid:
                        raise _NoJump("line 561")
                    ev = ev or bool(evicted)
                    if (ipa >> geo.shifts[lvl]) != ((ipa + last_ipa) >> geo.shifts[lvl]):
                        leaf_fixed = False
                    self._norm(desc, (ipa >> geo.shifts[lvl]) << geo.shifts[lvl])
                elif kind == "fw":
                    _, _, vmid, ipa, lvl, _tpa, _gen, evicted = e
                    if vmid != self.vmid or evicted:
                        raise _NoJump("line 569")
                    if (ipa >> geo.shifts[lvl]) != ((ipa + last_ipa) >> geo.shifts[lvl]):
                        raise _NoJump("line 571")  # it would point at another table
                elif kind == "h":
                    _, _, vmid, ipa, lvl = e
                    if (ipa >> geo.shifts[lvl]) != ((ipa + last_ipa) >> geo.shifts[lvl]):
                        leaf_fixed = False
                else:
                    _, _, op, vmid, ipa, size, _ttl = e
                    if vmid != self.vmid:
                        raise _NoJump("line 579")
                    if op == VMALLS12E1IS:
                        # everything of the VMID goes: the state after it is the last
                        # period's doing, whatever came before
                        leaf_wipe = True
                        walk_fixed = True
                    elif op == VMALLE1IS:
                        leaf_wipe = True
                    else:
                        for lvl in geo.leaf_levels():
                            sh = geo.shifts[lvl]
                            if (ipa >> sh) != ((ipa + size + last_ipa) >> sh):
                                leaf_fixed = False
                        if op in ("IPAS2E1IS", "RIPAS2E1IS"):
                            for lvl in range(geo.start_level, 3):
                                sh = geo.shifts[lvl]
                                if (ipa >> sh) != ((ipa + size + last_ipa) >> sh):
                                    walk_fixed = False
            leaf_ok = leaf_wipe or (leaf_fixed and not ev)
            modes[cpu] = "last" if (leaf_ok and walk_fixed) else "all"
            if not walk_fixed:
                raise _NoJump("line 600")  # walk-cache keys would move between tables
        host_size = self.slot.backing.page_size
        for e in touches:
            if dp % host_size:
                raise _NoJump("line 604")
        # anonymous 4K page state changes: page + i*dp must stay in the page's host region
        host = self.host
        for _, pa in hops:
            if host.region_of(pa) != host.region_of(pa + m * dp) \
                    or host.region_of(pa) not in host.regions:
                raise _NoJump("a host page change would leave its region")
        return {"writes": wr, "ref": ref, "tlb": tlbops, "modes": modes, "touches": touches,
                "dirty": dirty, "hops": hops}

    def _ahead_ok(self, win: dict, dp: int, m: int, t: int) -> int:
        """Pages that enter the window during the jump must look like its farthest page.

        Returns how many periods can be skipped (<= m): the jump stops before the
        first page that differs (a table entry, a TLB entry, a host page, a dirty bit).
        """
        geo = self.geo
        slot = self.slot
        level, page = win["level"], win["page"]
        shift = geo.shifts[level]
        far = win["last"]
        a1 = far + dp * m                       # IPAs far+1 .. a1 enter the window
        bad = a1 + 1                            # first IPA that differs
        epp = geo.entries_per_table
        # table entries
        i_far = (far >> shift) & (epp - 1)
        i1 = (a1 >> shift) & (epp - 1)
        if ((a1 >> shift) - (far >> shift)) != i1 - i_far:
            raise _NoJump("the window would leave the table page")
        if i1 > i_far:
            v = page.view()[i_far + 1:i1 + 1]
            want = self._norm(page.entries[i_far], (far >> shift) << shift)
            if want == 0:
                diff = v != 0
            else:
                bases = np.arange(1, len(v) + 1, dtype=np.uint64) * np.uint64(1 << shift) \
                    + np.uint64(self.slot.pa_of((far >> shift) << shift))
                diff = (v - bases) != np.uint64(want[1] & d.U64)
            nz = np.flatnonzero(diff)
            if len(nz):
                bad = min(bad, (((far >> shift) + 1 + int(nz[0])) << shift))
        # TLB entries: none for the new pages unless shared with the farthest one
        vmid = self.vmid
        for tlb in self.machine.tlbs:
            for lvl, sh, dct in tlb._probe + tlb._wprobe:
                if not dct:
                    continue
                kfar = far >> sh
                lo_k, k1 = kfar + 1, min(a1, bad - 1) >> sh
                if lo_k > k1:
                    continue
                if k1 - lo_k < len(dct):
                    want = range((lo_k << 16) | vmid, (k1 << 16) + (1 << 16), 1 << 16)
                    if not dct.keys().isdisjoint(want):
                        bad = min(bad, (min(dct.keys() & set(want)) >> 16) << sh)
                else:
                    for key in dct:
                        j = key >> 16
                        if (key & 0xFFFF) == vmid and lo_k <= j <= k1:
                            bad = min(bad, j << sh)
        # host pages and dirty bits
        host = self.host
        if host.mm:
            ftok = host.token(far)
            st = win["stride"]
            for y in range(far + st, min(a1, bad - 1) + 1, st):
                if host.token(y) != ftok:
                    bad = min(bad, y & ~(geo.granule_size - 1))
                    break
        fpa = slot.host_page(far)[0]
        fr = host.ready.get(fpa)
        fstate = None if fr is None else (fr > t)
        if fstate:
            raise _NoJump("host page being zeroed at the window's edge")
        top = min(a1, bad - 1)
        if slot.host_page(top)[0] != fpa:
            step = max(slot.backing.page_size, geo.granule_size)
            for y in range(((far // step) + 1) * step, top + 1, step):
                r = host.ready.get(slot.host_page(y)[0])
                st = None if r is None else (r > t)
                if st != fstate:
                    bad = min(bad, y)
                    break
        dirty = slot.dirty
        if dirty:
            g = geo.granule_size
            fd = (far & ~(g - 1)) in dirty
            st = win["stride"]
            for y in range(far + st, min(a1, bad - 1) + 1, st):
                if ((y & ~(g - 1)) in dirty) != fd:
                    bad = min(bad, y & ~(g - 1))
                    break
        return min(m, (bad - 1 - far) // dp)

    def _scale_counters(self, c0: dict, c1: dict, m: int, dseq: int, own: bool = True) -> None:
        """Every counter grows by m times its delta over the period (c0 -> c1); with
        `own` False the vCPUs' and TLBs' own counters are left to `_rename`."""
        machine, lock, host = self.machine, self.lock, self.host
        for i, v in enumerate(self.vcpus):
            a0, a1 = c0["v"][i], c1["v"][i]
            dw = m * (a1[4] - a0[4])
            v.agent.lock_waited += dw
            if v.cur_fault is not None:
                v.fault_waited0 += dw
            if not own:
                continue
            v.accesses += m * (a1[0] - a0[0])
            v.walks += m * (a1[1] - a0[1])
            v.faults += m * (a1[2] - a0[2])
            v.conflicts += m * (a1[3] - a0[3])
            o0 = dict(a0[5])
            for key, n in a1[5]:
                if n != o0.get(key, 0):
                    v.outcomes[key] = v.outcomes.get(key, 0) + m * (n - o0.get(key, 0))
        l0, l1 = c0["lock"], c1["lock"]
        lock.acquisitions += m * (l1[0] - l0[0])
        lock.contended += m * (l1[1] - l0[1])
        lock.wait_ns += m * (l1[2] - l0[2])
        lock.hold_ns += m * (l1[3] - l0[3])
        for key, x0, x1 in zip(list(machine.counts), c0["mc"], c1["mc"]):
            machine.counts[key] += m * (x1 - x0)
        skip = 0 if own else len(self.vcpus)  # (_rename's)
        for tlb, t0, t1 in islice(zip(machine.tlbs, c0["tlb"], c1["tlb"]), skip, None):
            tlb.hits += m * (t1[0] - t0[0])
            tlb.misses += m * (t1[1] - t0[1])
            tlb.conflicts += m * (t1[2] - t0[2])
            tlb.evictions += m * (t1[3] - t0[3])
        host.bytes_zeroed += m * (c1["host"] - c0["host"])
        if c1["hostc"] != c0["hostc"]:
            h0 = dict(c0["hostc"])
            for key, n in c1["hostc"]:
                if n != h0.get(key, 0):
                    host.counts[key] += m * (n - h0.get(key, 0))
        self.kvm.mmu_notifier_seq += dseq
        met = self.metrics.cur
        for f, x0, x1 in zip(_METRIC_INTS, c0["m"], c1["m"]):
            setattr(met, f, getattr(met, f) + m * (x1 - x0))
        for f, x0, x1 in zip(_METRIC_COUNTERS, c0["mc2"], c1["mc2"]):
            cnt = getattr(met, f)
            d0 = dict(x0)
            for key, n in x1:
                if n != d0.get(key, 0):
                    cnt[key] += m * (n - d0.get(key, 0))

    def _apply(self, b0: _Boundary, b: _Boundary, win: dict, plan: dict | None, m: int,
               dp: int, period: int) -> None:
        geo = self.geo
        D = m * period
        A = m * dp
        eng, lock, machine = self.engine, self.lock, self.machine
        # 1. relabel faults in flight (before anything moves: may refuse)
        relabel = []
        host = self.host
        dseq = m * (b.counters["seq"][0] - b0.counters["seq"][0])
        for v in self.vcpus:
            f = v.cur_fault
            if f is None:
                continue
            nf = Fault(f.kind, f.level, f.ipa + A, f.access, f.stage)
            gen = step = None
            if v.kvm_gen is not None:
                gen, step = self._rebuild(v, nf, dseq)
            if v.in_gup:
                st = host.active[v.cpu]
                if st.sub is not None and st.n != 1:
                    raise _NoJump("a GUP inside its notifier's critical section")
                if host.region_of(self.slot.pa_of(f.ipa)) != \
                        host.region_of(self.slot.pa_of(nf.ipa)):
                    raise _NoJump("a GUP would move to another host region")
            relabel.append((v, nf, gen, step))
        # 2. time
        heap = eng._heap
        heap[:] = [(e[0] + D,) + e[1:] for e in heap]
        for e in heap:
            e[3].sched_at += D  # when it was scheduled moves with it (read batches' FIFO)
        eng.now += D
        machine.now = eng.now
        if lock.owner is not None:
            lock.since += D
        lock.waiters[:] = [(a, s + D) for a, s in lock.waiters]
        # 3. agents: positions, faults in flight, counters
        c0, c1 = b0.counters, b.counters
        for v, nf, gen, step in relabel:
            v.cur_fault = nf
            if gen is not None:
                v.kvm_gen = gen
                v.step = step
            if v.in_gup:
                host.relabel(v.cpu, nf.ipa)
            v.fault_t0 += D
        for v in self.vcpus:
            if v.agent.gen.gi_frame is not None:  # (not finished)
                v.skip += m * (b.k - b0.k)
                if v.last_fault_ipa >= win["first"]:
                    v.last_fault_ipa += A
        self._scale_counters(c0, c1, m, dseq, own=plan is None or "shift" not in plan)
        # open invalid windows move with the convoy (`_open_windows`)
        op = self.metrics._open
        if op:
            sh = geo.shifts[win["level"]]
            if A % (1 << sh):
                raise RuntimeError("fast-forward: open windows would not move by entries")
            di = A >> sh
            pa = win["page"].pa
            moved = {(pa, i + di): t0 + D for (_, i), t0 in op.items()}
            op.clear()
            op.update(moved)
        # 4. pending TLBIs move with their faults
        for ops in machine._pending.values():
            ops[:] = [(op, vmid, ipa + A if op in IPA_OPS else ipa, size, ttl)
                      for op, vmid, ipa, size, ttl in ops]
        if plan is None:
            return  # (a region period: _region_apply sets the state)
        # 5. effects of the skipped periods
        self._tlog.append(win["page"].pa)
        self._replay_writes(win, plan, m, dp)
        win["page"].refcount += m * plan["ref"]
        if "shift" in plan:
            self._shift_tlbs(plan["shift"])
        else:
            self._replay_tlbs(plan, m, dp)
        ready = self.host.ready
        for _, pa, size, r in plan["touches"]:
            for i in range(1, m + 1):
                ready[pa + i * dp] = r + i * period
        if plan["hops"]:
            host.replay_periods([(what, pa, dp) for what, pa in plan["hops"]], m)
        dirty = self.slot.dirty
        for ipa in plan["dirty"]:
            for i in range(1, m + 1):
                set.add(dirty, ipa + i * dp)
        del geo

    def _rebuild(self, v, nf: Fault, dseq: int = 0):
        """A fresh handler generator for the shifted fault, at the old one's suspension point.

        Only points before mmu_lock are accepted: up to there the handler has only
        looked things up (memslot, mapping size, host page) and yielded steps the
        driver has already charged; the memcache top-up must be a no-op.
        """
        if len(v.mc.pages) < self.kvm.min_pages:
            raise _NoJump("line 777")
        step = v.step
        if step is None or step.kind not in (vm.LOCK, vm.HOST_TOUCH):
            raise _NoJump("line 780")
        want = _chain(v.kvm_gen)
        seq = _mmu_seq(v.kvm_gen)
        kvm = self.kvm
        if seq is not None and seq != kvm.mmu_notifier_seq and not self._anon4k:
            raise _NoJump("a stale mmu_seq in flight")  # (the rebuilt one reads the new one)
        # the rebuilt handler reads mmu_seq as the old one did, shifted with the
        # counter (`dseq`: its advance over the skipped periods)
        saved = kvm.mmu_notifier_seq
        if seq is not None:
            kvm.mmu_notifier_seq = seq + dseq
        try:
            gen = kvm.handle_fault(nf, v.mc, v.cpu)
            val = None
            for _ in range(8):
                s = gen.send(val)
                if s.kind == step.kind and _chain(gen) == want:
                    if seq is not None and _mmu_seq(gen) != seq + dseq:
                        break
                    return gen, s
                if s.kind == vm.LOCK:
                    break
                # past the GUP: the result the driver sent the old one (the vCPU's last)
                val = v.gup if s.kind == vm.HOST_TOUCH else None
        finally:
            kvm.mmu_notifier_seq = saved
        raise _NoJump("line 789")

    def _replay_writes(self, win: dict, plan: dict, m: int, dp: int) -> None:
        if not plan["writes"]:
            return
        geo = self.geo
        level, page = win["level"], win["page"]
        shift = geo.shifts[level]
        epp = geo.entries_per_table
        view = page.view()
        slot = self.slot
        idx_all, val_all = [], []
        steps = np.arange(1, m + 1, dtype=np.int64) * dp
        for ipa, nv in plan["writes"]:
            ipas = ipa + steps
            idx = (ipas >> shift) & (epp - 1)
            if nv == 0:
                vals = np.zeros(m, dtype=np.uint64)
            else:
                bases = ((ipas >> shift) << shift) - slot.base + slot.pa
                vals = bases.astype(np.uint64) + np.uint64(nv[1] & d.U64)
            idx_all.append(idx)
            val_all.append(vals)
        idx = np.concatenate(idx_all)
        vals = np.concatenate(val_all)
        if len(np.unique(idx)) != len(idx):
            # the same entry written in two periods: apply in period order
            order = np.argsort(np.tile(np.arange(m), len(plan["writes"])), kind="stable")
            for j in order:
                view[idx[j]] = vals[j]
        else:
            view[idx] = vals
        self.stats["writes"] += len(idx)

    def _replay_tlbs(self, plan: dict, m: int, dp: int) -> None:
        geo = self.geo
        self._bulk_cache = {}
        shifts = geo.shifts
        for cpu, ops in plan["tlb"].items():
            tlb = self.machine.tlbs[cpu]
            ev0 = tlb.evictions  # the counters were advanced from the period's deltas
            if plan["modes"][cpu] == "all" and all(e[0] == "f" and e[7] for e in ops):
                self._bulk_fills(tlb, ops, m, dp)
                tlb.evictions = ev0
                continue
            raw = self._tlb_raw(tlb)

            def period(i, ops=ops, raw=raw):
                s = i * dp
                _tlb_ops(raw, shifts, [(s, e) for e in ops])

            if plan["modes"][cpu] == "last":
                period(m)
            else:  # every period: the steady ones at once (sim/tlbsteady.py)
                self.stats["tlb_steady_periods"] += replay_periods(
                    tlb, period, m, dp, self._op_keys(tlb, ops), self._bulk_cache)
            tlb.evictions = ev0

    def _op_keys(self, tlb, ops: list):
        """What a period's TLB operations name: (leaf keys, walk-cache (level, IPA)s);
        None if one names a range."""
        shifts = tlb.shifts
        keys, walks = [], []
        for e in ops:
            kind = e[0]
            if kind == "f" or kind == "h":
                vmid, ipa, lvl = e[2], e[3], e[4]
                keys.append((lvl, ((ipa >> shifts[lvl]) << 16) | vmid))
            elif kind == "fw":
                walks.append((e[4], e[3]))
            else:
                _, _, op, vmid, ipa, _, ttl = e
                if op not in ("IPAS2E1IS", "IPAS2LE1IS"):
                    return None
                for lvl, dct in tlb.leaf.items():
                    # (a level with no entry stays empty unless a period fills it,
                    # and then its fill is named here)
                    if dct and (ttl < 0 or lvl == ttl):
                        keys.append((lvl, ((ipa >> shifts[lvl]) << 16) | vmid))
                if op == "IPAS2E1IS":
                    walks.extend((lvl, ipa) for lvl in tlb.walkc)
        return keys, walks

    def _bulk_fills(self, tlb, ops: list, m: int, dp: int) -> None:
        """m periods of fills of new entries at once: what `TLB.fill` would leave.

        Each fill appends a new key (the recorded fill found it absent, and the
        shifted ones are beyond every cached entry: `_ahead_ok`); with a capacity,
        the oldest entries go first, as one fill at a time would evict them.
        """
        shifts = tlb.shifts
        ncol = len(ops)
        order = tlb._order
        leaf = tlb.leaf
        skip = 0  # new entries that later ones of the jump evict: never built
        if tlb.capacity is not None:
            evict = len(order) + m * ncol - tlb.capacity
            if evict > 0:
                n = min(evict, len(order))
                old = self._oldest.get(id(tlb))
                if old is None or len(old) < n:
                    old = list(islice(order, n))
                elif len(old) > n:
                    old = old[:n]
                deque(map(order.__delitem__, old), maxlen=0)
                lvls = set(map(_first, old))
                if len(lvls) == 1:
                    deque(map(leaf[lvls.pop()].__delitem__, map(_second, old)), maxlen=0)
                else:
                    for lvl in lvls:
                        deque(map(leaf[lvl].__delitem__, [k for lv, k in old if lv == lvl]),
                              maxlen=0)
                skip = evict - n
                self.stats["fills_skipped"] += skip
        # the surviving fills: periods p0+1 .. m (the first `skip - p0 * ncol` of
        # period p0+1 dropped); period i fills key + i*dp, desc + i*dp. The vCPUs of a
        # convoy fill the same entries: what to add is built once per jump.
        p0 = skip // ncol
        sig = (tuple((e[2], e[3], e[4], e[5]) for e in ops), m, dp, skip)
        add = self._bulk_cache.get(sig)
        if add is None:
            cols = []
            for _, _, vmid, ipa, lvl, desc, _, _ in ops:
                sh = shifts[lvl]
                if dp % (1 << sh):
                    raise RuntimeError("fast-forward: bulk fills of shared entries")  # _plan's
                dk = (dp >> sh) << 16
                k1 = ((((ipa >> sh) + (p0 + 1) * (dp >> sh))) << 16) | vmid
                cols.append((lvl, range(k1, k1 + (m - p0) * dk, dk),
                             range(desc + (p0 + 1) * dp, desc + (m + 1) * dp, dp)))
            if ncol == 1:
                lvl, keys, descs = cols[0]
                add = (dict.fromkeys(zip(repeat(lvl), keys)), {lvl: dict(zip(keys, descs))})
            else:  # interleave: period by period, in the recorded order
                okeys = [(c[0], c[1][i]) for i in range(m - p0) for c in cols]
                descs = [c[2][i] for i in range(m - p0) for c in cols]
                cut = skip - p0 * ncol
                if cut:
                    okeys, descs = okeys[cut:], descs[cut:]
                per: dict = {}
                for (lvl, k), dsc in zip(okeys, descs):
                    per.setdefault(lvl, {})[k] = dsc
                add = (dict.fromkeys(okeys), per)
            self._bulk_cache[sig] = add
        if tlb.capacity is not None:
            order.update(add[0])
        for lvl, dct in add[1].items():
            leaf[lvl].update(dct)

    # --- convoys at different rates ------------------------------------------------------
    def _groups(self, si: int, stride: int):
        """The agents (not finished) clustered by position: [[lo, hi, [vCPUs]]] in position
        order (page indices of the segment, faults in flight included), or None when they
        form one convoy (or cannot be placed: the one-convoy path decides)."""
        pts = []
        for v in self.vcpus:
            live = v.agent.gen.gi_frame is not None
            if not live and not v.in_gup and v.cur_fault is None:
                continue  # finished
            if not live or v.seg != si:
                return None
            lo = hi = v.k + v.skip
            f = v.cur_fault
            if f is not None:
                rel = f.ipa - v.segments[si][0]
                if rel % stride:
                    return None
                lo, hi = min(lo, rel // stride), max(hi, rel // stride)
            pts.append((lo, hi, v.cpu, v))
        pts.sort(key=itemgetter(0, 2))
        groups: list = []
        for lo, hi, _, v in pts:
            if groups and lo <= groups[-1][1] + GROUP_GAP:
                g = groups[-1]
                g[1] = max(g[1], hi)
                g[2].append(v)
            else:
                groups.append([lo, hi, [v]])
        return groups if len(groups) > 1 else None

    def _try_groups(self, v, si: int, stride: int, groups: list, t: int) -> int:
        """A boundary while the agents form several convoys (anonymous 4K CREATE: the
        readers run ahead of the writers, 2 pages to 1, phase-locked through mmu_lock,
        the MMU notifier and the broadcast TLBIs).

        Each convoy (group) is fingerprinted relative to its own front page x_g (its
        window: `_window`), the shared state (agents' program points, heap, lock,
        pending TLBIs, notifier count, open invalid windows) with every address relative
        to the x_g of the group it belongs to. When the fingerprint repeats, each group
        has advanced by its own whole number of pages and the period is jumped with a
        shift per group (`_gjump`).
        """
        nr = self._noroom
        if nr is not None and nr[0] == (si, stride, len(groups)):
            lo, hi, _ = groups[nr[1]]
            if nr[2] <= lo and hi < nr[3]:
                # the template, or the jump, that had no more room for this convoy before
                # its region's end has less now: skip the fingerprint (the exact path goes
                # on; this only saves time) until the convoy reaches the next region
                self.stats["noroom_skips"] += 1
                return 0
            self._noroom = None
        seg0 = v.segments[si][0]
        for lo, hi, _ in groups:  # (the windows `_gfingerprint` takes, checked first)
            self._window_range(seg0 + hi * stride, lo - hi - MARGIN, MARGIN, stride)
        self._settle_tlbs()
        fp, wins, gof = self._gfingerprint(si, stride, groups, t)
        b = _GBoundary(t, tuple(w["k"] for w in wins), si, tuple(w["x"] for w in wins), fp,
                       self._counters(), len(self.log), stride)
        b.wins = [(w["first"], w["last"], w["rbase"], w["path"]) for w in wins]
        prev = self.index.get(fp)
        self.bounds.append(b)
        self.index[fp] = len(self.bounds) - 1
        if prev is None and GROUP_ROLES:
            cf, b.order = self._gcanon(fp, wins, gof)
            if cf is not None:
                cprev = self.cindex.get(cf)
                self.cindex[cf] = len(self.bounds) - 1
                b0 = self.bounds[cprev] if cprev is not None else None
                if b0 is not None and b0.si == si and b0.stride == stride:
                    try:
                        return self._gjump(b0, b, wins, gof,
                                           role=_role(len(self.vcpus), b0.order, b.order))
                    except _NoJump as e:  # (refused before anything moved)
                        self.why["convoys renamed: " + str(e)] += 1
        if prev is None:
            tpl = None if b.order is not None and self._named_soon() else \
                self.gtemplates.get(fp[1:])
            if tpl is not None:
                try:
                    return self._gtemplate(tpl, b, wins, gof)
                except _NoRoom as e:
                    self.why["convoys template: " + str(e)] += 1
                    seg0 = v.segments[si][0]
                    self._noroom = ((si, stride, len(groups)), e.gi, groups[e.gi][0],
                                    -(-(e.rend - seg0) // stride))
                except _NoJump as e:  # nothing moved: the history stays valid
                    self.why["convoys template: " + str(e)] += 1
            self._trim()
            return 0
        b0 = self.bounds[prev]
        if b0.si != si or b0.stride != stride:
            return 0
        self._gkeep(prev)
        return self._gjump(b0, b, wins, gof)

    def _gkeep(self, prev: int) -> None:
        """Keep a verified period (bounds[prev] -> the last one) as templates, one per
        boundary in it (its phase j): a later boundary with the fingerprint of the
        period's j-th (after a jump, or in the next region) is jumped from at once."""
        bnds = self.bounds[prev:]
        b0, b = bnds[0], bnds[-1]
        stride = b.stride
        if b0.counters["mem"] != b.counters["mem"]:
            return
        spans = []
        for (first, last, rbase, _), k0, k1 in zip(b.wins, b0.k, b.k):
            lo = first - (k1 - k0) * stride
            if k1 <= k0 or lo < rbase:
                return  # (a group did not advance, or changed region in the period)
            spans.append((lo, last + stride))
        for c, e in pairwise(spans):
            if c[1] > e[0]:
                return
        # every boundary of the period on the same table pages as the last one
        pages = [tuple(pg.pa for _, pg in w[3]) for w in b.wins]
        for bb in bnds:
            if [tuple(pg.pa for _, pg in w[3]) for w in bb.wins] != pages:
                return
        if len(self.gtemplates) + len(bnds) > GTEMPLATES:
            self.gtemplates.clear()
        base = (bnds, self.log[b0.log_at:b.log_at], spans)
        for j, bb in enumerate(bnds[:-1]):
            self.gtemplates[bb.fp[1:]] = (base, j)

    def _gtemplate(self, tpl: tuple, b: _Boundary, wins: list, gof: dict) -> int:
        """`_try_template` for several convoys: boundary `b` has the fingerprint of the
        j-th boundary bj of a verified period b0 -> bn, so the period ending at b is the
        one from bj to its repeat b(n+j) (the period's log from bj on, then its log up to
        bj one period later), each group shifted by its own F_g = x_g(b) - x_g(b(n+j)).
        A group may have changed region: its table page is renamed, bn's to b's. The
        effects are shifted group by group and jumped as if recorded just now."""
        (bnds, log, spans), j = tpl
        b0, bn, bj = bnds[0], bnds[-1], bnds[j]
        if bn.stride != b.stride:
            raise _NoJump("another stride")
        geo = self.geo
        shifts = geo.shifts
        stride = b.stride
        dps = [(k1 - k0) * stride for k0, k1 in zip(b0.k, bn.k)]
        Fs = [x - xj - dp for x, xj, dp in zip(b.x, bj.x, dps)]
        # (_gjump's room for one period at least, checked before the log is built)
        for gi, (w, dp) in enumerate(zip(wins, dps)):
            rend = min(w["rbase"] + w["rsize"], w["seg_end"])
            if rend - 1 - w["last"] < dp:
                raise _NoRoom(gi, rend)
        for w, c, dp in zip(wins, wins[1:], dps):
            if c["first"] - 1 - w["last"] < dp:
                raise _NoJump("convoys: no room")
        if min(F + dp for F, dp in zip(Fs, dps)) <= 0 or \
                any(F % geo.granule_size for F in Fs):
            raise _NoJump("not a whole number of pages ahead")
        # table pages: bn's windows' paths -> b's, per group
        pmaps = []
        for gi, w in enumerate(wins):
            cur = {lvl: pg for lvl, pg in w["path"]}
            pmap = {}
            for lvl, pg in bn.wins[gi][3]:
                c = cur.get(lvl)
                if c is None:
                    raise _NoJump("another walk path")
                pmap[pg.pa] = c
            pmaps.append(pmap)

        def group_of(ipa):
            for gi, (lo, hi) in enumerate(spans):
                if lo <= ipa < hi:
                    return gi
            raise _NoJump("an effect outside every group's range")

        # reference count changes name no IPA: their page must be renamed alike by all
        rmap: dict = {}
        for pmap in pmaps:
            for pa, pg in pmap.items():
                if rmap.setdefault(pa, pg) is not pg:
                    rmap[pa] = None
        cut = bj.log_at - b0.log_at
        out = []
        for n, e in enumerate(log[cut:] + log[:cut]):
            late = n >= len(log) - cut  # (from the period's start: one period later)
            kind = e[0]
            if kind in ("w", "d", "hm"):
                ipa = e[5] if kind == "w" else e[1] if kind == "d" else \
                    e[2] - self.slot.pa + self.slot.base
            elif kind == "i":
                ipa = e[4] if e[2] in IPA_OPS else None
            elif kind == "r":
                ipa = None
            else:
                ipa = e[3]
            if ipa is not None:
                gi = group_of(ipa)
                D = Fs[gi] + (dps[gi] if late else 0)
                pmap = pmaps[gi]
            if kind == "w":
                _, pa, _i, old, new, ipa = e
                pg = pmap.get(pa)
                if pg is None or ipa < 0:
                    raise _NoJump("a write off the windows' pages")
                idx = ((ipa + D) >> shifts[pg.level]) & (geo.entries_per_table - 1)
                out.append(("w", pg.pa, idx, old, new + D if new else 0, ipa + D))
            elif kind == "r":
                pg = rmap.get(e[1])
                if pg is None:
                    raise _NoJump("a refcount off the windows' paths, or of a page split")
                out.append(("r", pg.pa, e[2]))
            elif kind == "f":
                _, cpu, vmid, ipa, lvl, desc, ev, new = e
                if D % (1 << shifts[lvl]):
                    raise _NoJump("a fill of a shared entry")
                out.append(("f", cpu, vmid, ipa + D, lvl, desc + D, ev, new))
            elif kind == "fw":
                _, cpu, vmid, ipa, lvl, tpa, gen, full = e
                pg = pmap.get(tpa)
                if pg is None:
                    raise _NoJump("a walk-cache fill off the windows' paths")
                # (replayed one period on and later: then in b's entry at that level)
                if (ipa + D + dps[gi]) >> shifts[lvl] != b.x[gi] >> shifts[lvl]:
                    raise _NoJump("a walk-cache fill of another entry than the window's")
                out.append(("fw", cpu, vmid, ipa + D, lvl, pg.pa,
                            gen if pg.pa == tpa else pg.generation, full))
            elif kind == "h":
                _, cpu, vmid, ipa, lvl = e
                out.append(("h", cpu, vmid, ipa + D, lvl))
            elif kind == "i":
                _, cpu, op, vmid, ipa, size, ttl = e
                out.append(("i", cpu, op, vmid, ipa + D if op in IPA_OPS else ipa, size, ttl))
            elif kind == "d":
                out.append(("d", e[1] + D))
            elif kind == "hm":
                out.append(("hm", e[1], e[2] + D))
            else:
                raise _NoJump("an effect that cannot be replayed")
        # boundaries as if the period had been recorded just now; TLB sizes are now's
        c0, c1 = dict(b0.counters), dict(bn.counters)
        now = tuple((len(t._order), len(t._worder)) for t in self.machine.tlbs)
        c0["tsz"] = tuple((s - (s1 - s0), w - (w1 - w0)) for (s, w), (s0, w0), (s1, w1)
                          in zip(now, b0.counters["tsz"], bn.counters["tsz"]))
        c1["tsz"] = now
        bv0 = _Boundary(b.t - (bn.t - b0.t), tuple(k - (k1 - k0) for k, k0, k1
                                                    in zip(b.k, b0.k, bn.k)), b.si,
                        tuple(x - dp for x, dp in zip(b.x, dps)), b.fp, c0, 0, b.stride)
        bv1 = _Boundary(b.t, b.k, b.si, b.x, b.fp, c1, len(out), b.stride)
        saved = self.log
        self.log = out
        try:
            r = self._gjump(bv0, bv1, wins, gof, synthetic=True)
        finally:
            if self.log is out:
                self.log = saved
        self.stats["group_template_jumps"] += 1
        return r

    def _gfingerprint(self, si: int, stride: int, groups: list, t: int):
        """`_fingerprint` for several convoys: (fingerprint, windows, {cpu: group})."""
        kvm, eng, lock = self.kvm, self.engine, self.lock
        active = self.host.active
        gof = {}
        for gi, (_, _, vs) in enumerate(groups):
            for u in vs:
                gof[u.cpu] = gi
        geom = None
        agents = []
        xs = [None] * len(groups)
        for v in self.vcpus:
            gi = gof.get(v.cpu)
            if gi is None:
                agents.append(("done", len(v.mc.pages)))
                continue
            g = v.segments[si][:3]
            if geom is None:
                geom = g
            elif g != geom:
                raise _NoJump("convoys: another segment geometry")
            front = groups[gi][1]
            x = g[0] + front * stride
            xs[gi] = x
            gs = None
            if v.in_gup:
                st = active.get(v.cpu)
                if st is None or v.cur_fault is None or st.ipa != v.cur_fault.ipa:
                    raise _NoJump("a GUP off its fault")
                gs = (st.write, None if st.sub is None else (st.end, st.n, _chain(st.sub)))
            f = v.cur_fault
            if f is None:
                fr = None
            else:
                seq = _mmu_seq(v.kvm_gen)
                fr = (f.kind, f.level, f.access, (f.ipa - x) // stride, v.fault_t0 - t,
                      v.agent.lock_waited - v.fault_waited0,
                      _chain(v.kvm_gen) if v.kvm_gen is not None else None,
                      v.gup, None if seq is None else seq - kvm.mmu_notifier_seq)
            agents.append((gi, _chain(v.agent.gen), v.k + v.skip - front, fr,
                           v.segments[si][3], len(v.mc.pages), gs))
        seg_end = geom[0] + geom[1] * geom[2]
        wins = []
        for gi, (lo, hi, _) in enumerate(groups):
            w = self._window(xs[gi], lo - hi - MARGIN, MARGIN, stride, t)
            w["seg_end"], w["x"], w["k"] = seg_end, xs[gi], hi
            wins.append(w)
        for a, c in pairwise(wins):
            if a["last"] + stride >= c["first"]:
                raise _NoJump("convoys: windows touch")
        last = []
        for v in self.vcpus:
            gi = gof.get(v.cpu)
            lf = v.last_fault_ipa
            if gi is None or lf < wins[gi]["first"]:
                last.append(None)
            else:
                last.append((lf - xs[gi], v.repeats))
        heap = tuple((e[0] - t, e[3].cpu, e[4]) for e in sorted(eng._heap, key=_heapkey))
        owner = lock.owner
        lk = (None if owner is None else (owner.cpu, lock.since - t),
              tuple((a.cpu, since - t) for a, since in lock.waiters))
        pend = []
        for cpu, ops in sorted(self.machine._pending.items()):
            for op, vmid, ipa, size, ttl in ops:
                if op in IPA_OPS:
                    gi = _group_of(wins, ipa)
                    pend.append((cpu, op, vmid, gi, ipa - xs[gi], size, ttl))
                else:
                    pend.append((cpu, op, vmid, None, ipa, size, ttl))
        opened = []
        for (pa, i), t0 in self.metrics._open.items():
            gi = self._open_group(wins, pa, i)
            w = wins[gi]
            ix = (w["x"] >> self.geo.shifts[w["level"]]) & (self.geo.entries_per_table - 1)
            opened.append((gi, i - ix, t0 - t))
        opened.sort()
        fp = ("convoys", si, stride, tuple(agents), tuple(last), heap, lk, tuple(pend),
              tuple(w["fp"] for w in wins), kvm.mmu_notifier_count, tuple(opened))
        return fp, wins, gof

    def _gcanon(self, fp: tuple, wins: list, gof: dict):
        """`_canon_whole` of a convoys' fingerprint (the vCPUs in a convoy are live)."""
        regs = self._regions(wins)
        if regs is None:
            return None, None
        return self._canon_whole(fp[1:], [c for c in range(len(self.vcpus)) if c in gof],
                                 regs)

    def _canon_whole(self, parts: tuple, live: list, regs: list):
        """A fingerprint (its parts after the tag) up to the names of the `live` vCPUs, and
        those in rank order (or None, None); `regs`: each convoy's region (`_regions`).

        Each convoy's leader rotates (anonymous 4K CREATE: the writers take turns to
        COW a page, the readers to map the zero page), so the whole system only
        repeats, shifted, after as many pages as a convoy has vCPUs; up to names it
        repeats after one page. A live vCPU's part (program point, position, fault, last
        fault, its TLB whole: `_tlb_sig`) decides its rank; finished vCPUs keep their
        names; the heap, the lock and pending TLBIs name vCPUs by rank. The TLB is taken
        whole, not only the window's entries, because a renamed period sets it directly
        (`_shift_tlbs`) instead of replaying it. (`_canon` is the THP region periods'
        version: they set the TLBs from snapshots.)"""
        si, stride, agents, last, heap, lk, pend, wfps, nc, opened = parts
        n = len(self.vcpus)
        tlbs = self.machine.tlbs
        if len(tlbs) < n or any(len(t._order) > TLB_SIG_MAX for t in tlbs):
            return None, None
        tsig = []
        for tlb in tlbs:
            ts = self._tlb_sig(tlb, regs)
            if ts is None:
                return None, None
            tsig.append(ts)
        # (with its place in the heap and in the lock's queue: vCPUs queued on the same
        # page are in the same state but for those)
        where = {c: ("heap", i) for i, (_, c, _) in enumerate(heap)}
        owner, waiters = lk
        if owner is not None:
            where[owner[0]] = ("owner",)
        where.update((c, ("waits", i)) for i, (c, _) in enumerate(waiters))
        sig = [(agents[c], last[c], tuple(wf[3][c] for wf in wfps), tsig[c], where.get(c))
               for c in range(n)]
        # (any order that is a function of the states: equal fingerprints then pair
        # vCPUs in equal states, whatever the order; hashes are cheap to sort, and
        # distinct hashes prove distinct states without comparing them)
        hs = {c: hash(sig[c]) for c in live}
        if len(set(hs.values())) != len(live) and \
                len({sig[c] for c in live}) != len(live):
            return None, None
        order = sorted(live, key=hs.__getitem__)
        rank = {c: r for r, c in enumerate(order)}

        def rk(c):
            return rank.get(c, ("fixed", c))

        byc: dict = {}
        for e in pend:
            byc.setdefault(e[0], []).append(e[1:])
        canon = (si, stride, tuple(sig[c] for c in order),
                 tuple((c, sig[c]) for c in range(n) if c not in rank),
                 tuple(tsig[n:]), tuple(wf[3][n:] for wf in wfps),  # (other CPUs' TLBs)
                 tuple((t, rk(c), val) for t, c, val in heap),
                 (None if owner is None else (rk(owner[0]), owner[1]),
                  tuple((rk(c), t) for c, t in waiters)),
                 frozenset((rk(c), tuple(ops)) for c, ops in byc.items()),
                 tuple((wf[0], wf[1], wf[2], wf[4]) for wf in wfps), nc, opened)
        return canon, order

    def _named_soon(self) -> bool:
        """Skip the templates, periods of whole rotations of the names, for a period up
        to names, found within one short period? When the last jump was one and it is
        early since (a template's jump would stop up to a long period before the
        region's end, the renamed one a page before it)."""
        return self._named_last and len(self.bounds) <= NAMED_WAIT

    def _regions(self, wins: list):
        """Each convoy's region (base, end, front page number), or None when two share
        one (a TLB entry's convoy would then be ambiguous)."""
        sh = self.geo.shifts[3]
        regs = [(w["rbase"], w["rbase"] + w["rsize"], w["x"] >> sh) for w in wins]
        if len({r[0] for r in regs}) != len(regs):
            return None
        return regs

    def _tlb_sig(self, tlb, regs: list):
        """A TLB whole, normalised: its level-3 entries in a convoy's region relative to
        that convoy's front page (they move with it), descriptors minus the PA they map;
        every other entry (blocks, other regions, the walk cache: nothing a jump inside
        the regions moves) as it is. Orders included. None if not this VMID's alone, or
        too big to be worth it (`TLB_SIG_MAX`)."""
        if tlb.capacity is None or tlb.walk_capacity is None or \
                len(tlb._order) > TLB_SIG_MAX:
            return None
        vmid = self.vmid
        sh = self.geo.shifts[3]
        spa = self.slot.pa - self.slot.base
        norm = {}
        for lvl, dct in tlb.leaf.items():
            for k, desc in dct.items():
                if (k & 0xFFFF) != vmid:
                    return None
                if lvl == 3:
                    j = k >> 16
                    y = j << sh
                    for g, (lo, hi, xj) in enumerate(regs):
                        if lo <= y < hi:
                            rel = desc - (y + spa)
                            if rel < 0 or rel & OAP:
                                return None
                            norm[(lvl, k)] = ("m", g, j - xj, rel)
                            break
                    else:
                        norm[(lvl, k)] = ("s", lvl, k, desc)
                else:
                    norm[(lvl, k)] = ("s", lvl, k, desc)
        if len(norm) != len(tlb._order):
            return None
        for _, k in tlb._worder:
            if (k & 0xFFFF) != vmid:
                return None
        return (tuple(norm[e] for e in tlb._order),
                tuple(tuple(norm[(lvl, k)] for k in dct) for lvl, dct in tlb.leaf.items()),
                tuple(tlb._worder),
                tuple(tuple(dct.items()) for dct in tlb.walkc.values()))

    def _shift_plan(self, regs: list, As: list) -> list:
        """Per TLB, its level-3 entries in the convoys' regions moved by their convoy's
        advance As[g] (`_tlb_sig`'s moving entries), checked to stay in the region."""
        sh = self.geo.shifts[3]
        plans = []
        for tlb in self.machine.tlbs:
            dct = tlb.leaf.get(3)
            mv = {}
            if dct:
                for k in dct:
                    y = (k >> 16) << sh
                    for g, (lo, hi, _) in enumerate(regs):
                        if lo <= y < hi:
                            if y + As[g] >= hi:
                                raise _NoJump("convoys renamed: a TLB entry would leave "
                                              "its region")
                            mv[k] = (k + ((As[g] >> sh) << 16), As[g])
                            break
            plans.append(mv)
        return plans

    def _shift_tlbs(self, plans: list) -> None:
        """Set every TLB to its state m periods on (`_shift_plan`): the same entries in
        the same orders, the moving ones shifted (a renamed period repeats the whole
        state up to names, so each vCPU's TLB is its own shifted)."""
        for tlb, mv in zip(self.machine.tlbs, plans):
            if not mv:
                continue
            dct = tlb.leaf[3]
            items = list(dct.items())
            dct.clear()
            for k, desc in items:
                e = mv.get(k)
                if e is None:
                    dct[k] = desc
                else:
                    dct[e[0]] = desc + e[1]
            o = tlb._order
            keys = list(o)
            o.clear()
            for lvl, k in keys:
                e = mv.get(k) if lvl == 3 else None
                o[(lvl, k if e is None else e[0])] = None

    def _open_group(self, wins: list, pa: int, i: int) -> int:
        """The group whose window's table page and range hold open invalid window (pa, i)."""
        for gi, w in enumerate(wins):
            if w["page"].pa == pa:
                ipa = w["rbase"] + (i << self.geo.shifts[w["level"]])
                if w["first"] <= ipa < w["last"] + w["stride"]:
                    return gi
        raise _NoJump("an open invalid window off the convoys' windows")

    def _gjump(self, b0: _Boundary, b: _Boundary, wins: list, gof: dict,
               synthetic: bool = False, role: list | None = None) -> int:
        """Jump m periods of several convoys, each group shifted by its own advance
        (`synthetic`: the log is a template's, made up to end at b: `_gtemplate`).

        `role`: b repeats b0 up to the vCPUs' names (`_gcanon`), vCPU c's role at b0
        being role[c]'s at b. Then the TLBs are not replayed but set (`_shift_tlbs`:
        the fingerprints hold them whole), and each vCPU stands for another from then
        on (`_rename`, as the THP region periods do)."""
        period = b.t - b0.t
        stride = b.stride
        dks = [k1 - k0 for k0, k1 in zip(b0.k, b.k)]
        if period <= 0 or min(dks) <= 0:
            raise _NoJump("convoys: a group did not advance")
        dps = [dk * stride for dk in dks]
        c0, c1 = b0.counters, b.counters
        if c0["mem"] != c1["mem"]:
            raise _NoJump("convoys: table pages allocated or freed")
        if (c0["hostc"] != c1["hostc"] or c0["seq"] != c1["seq"]) and \
                c0["seq"][1] != c1["seq"][1]:
            raise _NoJump("convoys: MMU notifier count changed")
        log = self.log[b0.log_at:b.log_at]
        rooms = [(min(w["rbase"] + w["rsize"], w["seg_end"]) - 1 - w["last"]) // dp
                 for w, dp in zip(wins, dps)]
        m = min(rooms)
        # a group must not reach the pages the groups ahead of it read or change (their
        # windows only move forward): it then reads only what _ahead_ok checked
        for w, c, dp in zip(wins, wins[1:], dps):
            m = min(m, (c["first"] - 1 - w["last"]) // dp)
        if role is None:
            m = self._gevictions_ok(c0, c1, m)
        elif any(e1[3] != e0[3] for e0, e1 in zip(c0["tlb"], c1["tlb"])):
            raise _NoJump("convoys: TLB evictions")
        for w, dp in zip(wins, dps):
            if m < 1:
                break
            m = self._ahead_ok(w, dp, m, b.t)
        if m < 1:
            raise _NoJump("convoys: no room")
        if self.metrics._open:
            for (pa, i) in self.metrics._open:
                gi = self._open_group(wins, pa, i)
                w = wins[gi]
                sh = self.geo.shifts[w["level"]]
                if (m * dps[gi]) % (1 << sh) or i + ((m * dps[gi]) >> sh) >= \
                        self.geo.entries_per_table:
                    raise _NoJump("open invalid windows would leave the table page")
        plan = self._gplan(log, wins, dps, m, synthetic, tlbs=role is None)
        if role is not None:
            plan["shift"] = self._shift_plan(self._regions(wins), [m * dp for dp in dps])
        self._gapply(b0, b, wins, gof, plan, m, dps, period)
        self._named_last = role is not None
        if role is not None:
            self._rename(role, m, c0, c1)
            self.stats["group_jumps_renamed"] += 1
        self.stats["jumps"] += 1
        self.stats["group_jumps"] += 1
        if role is not None and m == min(rooms):
            # a convoy's room ran out (for a period of one page of it): nothing jumps
            # before it reaches its next region
            gi = rooms.index(m)
            w = wins[gi]
            seg0 = self.vcpus[0].segments[b.si][0]
            self._noroom = ((b.si, stride, len(wins)), gi, -(-(w["rbase"] - seg0) // stride),
                            -(-(min(w["rbase"] + w["rsize"], w["seg_end"]) - seg0) // stride))
        self.stats["periods"] += m
        self.stats["ns"] += m * period
        self.stats["faults"] += m * (sum(n for _, n in c1["mc2"][0])
                                     - sum(n for _, n in c0["mc2"][0]))
        self.stats["accesses"] += m * (c1["m"][8] - c0["m"][8])
        self._reset()
        return 0

    def _gevictions_ok(self, c0: dict, c1: dict, m: int) -> int:
        """Limit m so that no TLB or walk cache fills up during the jump; a TLB that
        evicted during the period refuses it (its oldest entries could be anywhere)."""
        for tlb, (s0, w0), (s1, w1), (e0, e1) in zip(self.machine.tlbs, c0["tsz"], c1["tsz"],
                                                      zip(c0["tlb"], c1["tlb"])):
            if e1[3] != e0[3]:
                raise _NoJump("convoys: TLB evictions")
            if tlb.walk_capacity is not None:
                if len(tlb._worder) >= tlb.walk_capacity:
                    raise _NoJump("convoys: a full walk cache")
                if w1 > w0:
                    m = min(m, (tlb.walk_capacity - w1) // (w1 - w0))
            if tlb.capacity is not None:
                if len(tlb._order) >= tlb.capacity:
                    raise _NoJump("convoys: a full TLB")
                if s1 > s0:
                    m = min(m, (tlb.capacity - s1) // (s1 - s0))
        return m

    def _gplan(self, log: list, wins: list, dps: list, m: int, synthetic: bool,
               tlbs: bool = True) -> dict:
        """`_plan` for several convoys: every effect attributed to the group whose window
        swept during the period holds its IPA (whole-VMID TLBIs to none: they do not
        move). A group's window at b0 is its window at b moved back by its advance (the
        fingerprints are equal); the swept ranges must be apart and each in one region
        (a synthetic log's effects are checked where they are replayed, one period on
        and later, the template having renamed the table pages)."""
        geo = self.geo
        spans = []
        for w, dp in zip(wins, dps):
            lo = w["first"] - dp
            if lo < w["rbase"] and not synthetic:
                raise _NoJump("convoys: a period across a region boundary")
            spans.append((lo, w["last"] + w["stride"]))
        for a, c in pairwise(spans):
            if a[1] > c[0]:
                raise _NoJump("convoys: the groups' periods overlap")

        def group_of(ipa):
            for gi, (lo, hi) in enumerate(spans):
                if lo <= ipa < hi:
                    return gi
            raise _NoJump("convoys: an effect outside every group's range")

        slot = self.slot
        host = self.host
        writes: list = [{} for _ in wins]
        refs: dict = {}
        pages = {w["page"].pa for w in wins}
        tlbops: dict = {}
        dirty, hops = [], []
        for e in log:
            kind = e[0]
            if kind == "w":
                _, pa, index, _old, new, ipa = e
                if ipa < 0:
                    raise _NoJump("convoys: a table write without an IPA")
                gi = group_of(ipa)
                if pa != wins[gi]["page"].pa:
                    raise _NoJump("convoys: a write off the group's table page")
                writes[gi][index] = (ipa, new)
            elif kind == "r":
                if e[1] not in pages:
                    raise _NoJump("convoys: a refcount off the windows' table pages")
                refs[e[1]] = refs.get(e[1], 0) + e[2]
            elif kind in ("f", "fw", "h", "i"):
                if not tlbs:
                    continue  # (a renamed period: the TLBs are set, not replayed)
                if kind == "i":
                    tlbops.setdefault(e[1], []).append(
                        (group_of(e[4]) if e[2] in IPA_OPS else None, e))
                else:
                    tlbops.setdefault(e[1], []).append((group_of(e[3]), e))
            elif kind == "d":
                dirty.append((group_of(e[1]), e[1]))
            elif kind == "hm":
                gi = group_of(e[2] - slot.pa + slot.base)
                pa0 = e[2] + dps[gi] if synthetic else e[2]
                if host.region_of(pa0) != host.region_of(e[2] + m * dps[gi]) \
                        or host.region_of(pa0) not in host.regions:
                    raise _NoJump("a host page change would leave its region")
                hops.append((gi, e[1], e[2]))
            else:
                raise _NoJump("convoys: an effect that cannot be replayed")
        wr = []
        for gi, (w, ws) in enumerate(zip(wins, writes)):
            shift = geo.shifts[w["level"]]
            if dps[gi] % (1 << shift) and ws:
                raise _NoJump("convoys: writes would not move by whole entries")
            wr.append([(ipa, self._norm(new, (ipa >> shift) << shift))
                       for ipa, new in ws.values()])
        modes = {}
        for cpu, ops in tlbops.items():
            leaf_wipe = False
            leaf_fixed = walk_fixed = True
            ev = False
            for gi, e in ops:
                # the first and the last positions replayed (synthetic: the first
                # is one period on; else the recorded one, in the same region)
                d1 = 0 if gi is None or not synthetic else dps[gi]
                last_ipa = 0 if gi is None else m * dps[gi] - d1
                kind = e[0]
                if kind == "f":
                    _, _, vmid, ipa, lvl, desc, evicted, _ = e
                    ipa += d1
                    if vmid != self.vmid:
                        raise _NoJump("convoys: another VMID")
                    ev = ev or bool(evicted)
                    if (ipa >> geo.shifts[lvl]) != ((ipa + last_ipa) >> geo.shifts[lvl]):
                        leaf_fixed = False
                    self._norm(desc, ((ipa - d1) >> geo.shifts[lvl]) << geo.shifts[lvl])
                elif kind == "fw":
                    _, _, vmid, ipa, lvl, _tpa, _gen, evicted = e
                    ipa += d1
                    if vmid != self.vmid or evicted:
                        raise _NoJump("convoys: a walk-cache fill evicts")
                    if (ipa >> geo.shifts[lvl]) != ((ipa + last_ipa) >> geo.shifts[lvl]):
                        raise _NoJump("convoys: a walk-cache fill would move")
                elif kind == "h":
                    _, _, vmid, ipa, lvl = e
                    ipa += d1
                    if (ipa >> geo.shifts[lvl]) != ((ipa + last_ipa) >> geo.shifts[lvl]):
                        leaf_fixed = False
                else:
                    _, _, op, vmid, ipa, size, _ttl = e
                    ipa += d1
                    if vmid != self.vmid:
                        raise _NoJump("convoys: another VMID")
                    if op == VMALLS12E1IS:
                        leaf_wipe = True
                        walk_fixed = True
                    elif op == VMALLE1IS:
                        leaf_wipe = True
                    else:
                        for lvl in geo.leaf_levels():
                            sh = geo.shifts[lvl]
                            if (ipa >> sh) != ((ipa + size + last_ipa) >> sh):
                                leaf_fixed = False
                        if op in ("IPAS2E1IS", "RIPAS2E1IS"):
                            for lvl in range(geo.start_level, 3):
                                sh = geo.shifts[lvl]
                                if (ipa >> sh) != ((ipa + size + last_ipa) >> sh):
                                    walk_fixed = False
            if not walk_fixed:
                raise _NoJump("convoys: walk-cache keys would move")
            modes[cpu] = "last" if (leaf_wipe or (leaf_fixed and not ev)) else "all"
            # the replay must not evict either: an upper bound of the TLB's size through
            # the periods replayed (every fill counted as new; a whole-VMID flush leaves
            # the other VMIDs' entries)
            tlb = self.machine.tlbs[cpu]
            if tlb.capacity is not None:
                other = sum(1 for _, kk in tlb._order if (kk & 0xFFFF) != self.vmid)

                def period_from(occ, ops=ops, other=other):
                    # (peak, end, flushed) of one period's occupancy from `occ`
                    peak, flushed = occ, False
                    for _, e in ops:
                        if e[0] == "f":
                            occ += 1
                            peak = max(peak, occ)
                        elif e[0] == "i" and e[2] in (VMALLE1IS, VMALLS12E1IS):
                            occ, flushed = other, True
                    return peak, occ, flushed

                # the periods in one pass: without a flush the size only grows (the
                # last period's end is the peak); with one, every period after the
                # first starts from the same size, so the second stands for the rest
                n = 1 if modes[cpu] == "last" else m
                peak, end, flushed = period_from(len(tlb._order))
                if n > 1:
                    peak = max(peak, period_from(end)[0] if flushed
                               else len(tlb._order) + n * (end - len(tlb._order)))
                if peak > tlb.capacity:
                    raise _NoJump("convoys: the replay could evict")
        return {"writes": wr, "refs": refs, "tlb": tlbops, "modes": modes, "dirty": dirty,
                "hops": hops}

    def _gapply(self, b0: _Boundary, b: _Boundary, wins: list, gof: dict, plan: dict,
                m: int, dps: list, period: int) -> None:
        """`_apply` for several convoys: each agent and effect moves with its group."""
        geo = self.geo
        D = m * period
        As = [m * dp for dp in dps]
        eng, lock, machine, host = self.engine, self.lock, self.machine, self.host
        dks = [k1 - k0 for k0, k1 in zip(b0.k, b.k)]
        # 1. relabel faults in flight (before anything moves: may refuse)
        relabel = []
        dseq = m * (b.counters["seq"][0] - b0.counters["seq"][0])
        for v in self.vcpus:
            f = v.cur_fault
            if f is None:
                continue
            nf = Fault(f.kind, f.level, f.ipa + As[gof[v.cpu]], f.access, f.stage)
            gen = step = None
            if v.kvm_gen is not None:
                gen, step = self._rebuild(v, nf, dseq)
            if v.in_gup:
                st = host.active[v.cpu]
                if st.sub is not None and st.n != 1:
                    raise _NoJump("a GUP inside its notifier's critical section")
                if host.region_of(self.slot.pa_of(f.ipa)) != \
                        host.region_of(self.slot.pa_of(nf.ipa)):
                    raise _NoJump("a GUP would move to another host region")
            relabel.append((v, nf, gen, step))
        # 2. time
        heap = eng._heap
        heap[:] = [(e[0] + D,) + e[1:] for e in heap]
        for e in heap:
            e[3].sched_at += D
        eng.now += D
        machine.now = eng.now
        if lock.owner is not None:
            lock.since += D
        lock.waiters[:] = [(a, s + D) for a, s in lock.waiters]
        # 3. agents: positions, faults in flight, counters
        c0, c1 = b0.counters, b.counters
        for v, nf, gen, step in relabel:
            v.cur_fault = nf
            if gen is not None:
                v.kvm_gen = gen
                v.step = step
            if v.in_gup:
                host.relabel(v.cpu, nf.ipa)
            v.fault_t0 += D
        for v in self.vcpus:
            gi = gof.get(v.cpu)
            if gi is not None:
                v.skip += m * dks[gi]
                if v.last_fault_ipa >= wins[gi]["first"]:
                    v.last_fault_ipa += As[gi]
        self._scale_counters(c0, c1, m, dseq, own="shift" not in plan)
        # open invalid windows move with their group
        op = self.metrics._open
        if op:
            moved = {}
            for (pa, i), t0 in op.items():
                gi = self._open_group(wins, pa, i)
                di = As[gi] >> geo.shifts[wins[gi]["level"]]
                moved[(pa, i + di)] = t0 + D
            op.clear()
            op.update(moved)
        # 4. pending TLBIs move with their faults
        for ops in machine._pending.values():
            ops[:] = [(op, vmid, ipa + As[_group_of(wins, ipa)] if op in IPA_OPS else ipa,
                       size, ttl) for op, vmid, ipa, size, ttl in ops]
        # 5. effects of the skipped periods
        for gi, w in enumerate(wins):
            self._tlog.append(w["page"].pa)
            self._replay_writes(w, {"writes": plan["writes"][gi]}, m, dps[gi])
        for pa, ref in plan["refs"].items():
            machine.mem.tables[pa].refcount += m * ref
        if "shift" in plan:
            self._shift_tlbs(plan["shift"])
        else:
            self._greplay_tlbs(plan, m, dps)
        if plan["hops"]:
            host.replay_periods([(what, pa, dps[gi]) for gi, what, pa in plan["hops"]], m)
        dirty = self.slot.dirty
        for gi, ipa in plan["dirty"]:
            for i in range(1, m + 1):
                set.add(dirty, ipa + i * dps[gi])

    def _greplay_tlbs(self, plan: dict, m: int, dps: list) -> None:
        """`_replay_tlbs` for several convoys: each operation shifted by its group's
        advance (whole-VMID ones not at all)."""
        shifts = self.geo.shifts
        for cpu, ops in plan["tlb"].items():
            tlb = self.machine.tlbs[cpu]
            ev0 = tlb.evictions
            raw = self._tlb_raw(tlb)
            for i in (m,) if plan["modes"][cpu] == "last" else range(1, m + 1):
                _tlb_ops(raw, shifts, [(0 if gi is None else i * dps[gi], e) for gi, e in ops])
            if tlb.evictions != ev0:
                raise RuntimeError("fast-forward: a convoys' TLB replay evicted")


def _tlb_ops(raw: tuple, shifts: tuple, ops: list) -> None:
    """Apply recorded TLB operations, each (s, op) shifted by s in IPA and PA."""
    fill, fill_walk, inval, order, lru = raw
    for s, e in ops:
        kind = e[0]
        if kind == "f":
            _, _, vmid, ipa, lvl, desc, _, _ = e
            sh = shifts[lvl]
            nb = ((ipa + s) >> sh) << sh
            fill(vmid, ipa + s, lvl, desc + (nb - ((ipa >> sh) << sh)))
        elif kind == "fw":
            _, _, vmid, ipa, lvl, tpa, gen, _ = e
            fill_walk(vmid, ipa + s, lvl, tpa, gen)
        elif kind == "h":
            if lru:
                _, _, vmid, ipa, lvl = e
                key = (lvl, (((ipa + s) >> shifts[lvl]) << 16) | vmid)
                if key in order:
                    del order[key]
                    order[key] = None
        else:
            _, _, op, vmid, ipa, size, ttl = e
            inval(op, vmid, ipa + s if op in IPA_OPS else ipa, size, ttl)


def _items_plan(it0: list, it1: list, dd, val):
    """A TLB dict's items at b (`it1`) against b0's (`it0`) for a region period: the same
    (dd None: entries that do not move), or every key moved by dd (full), or b0's kept
    and as many new ones appended, moved (filling: b0's moving tail returned); `val`
    checks each pair of values."""
    n0, n1 = len(it0), len(it1)
    if dd is None:
        if it0 != it1:
            raise _NoJump("TLB entries differ")
        return None
    if n0 == n1:
        for (k0, v0), (k1, v1) in zip(it0, it1):
            if k1 != k0 + dd:
                raise _NoJump("TLB entries out of step")
            val(v0, v1)
        return None
    a = n1 - n0
    if a < 0 or a > n0 or it1[:n0] != it0:
        raise _NoJump("TLB entries differ")
    for (k0, v0), (k1, v1) in zip(it0[n0 - a:], it1[n0:]):
        if k1 != k0 + dd:
            raise _NoJump("TLB entries out of step")
        val(v0, v1)
    return it0[n0 - a:]


def _order_drift(o0: list, o1: list, dkey: dict, vmid: int) -> list:
    """Check a replacement order at b (`o1`) against b0's (`o0`) for a region period.

    Entries of levels the region shift divides move (their keys by one region); the
    others are static (the same entry). Without the static ones, the orders must be
    equal, moved; each static entry keeps its place (refreshed every period) or moves
    towards the front by the same number of places (untouched, the entries before it
    evicted). Returns [(position at b, drift per period)] of the static entries.
    """
    ms0, ms1, st0, st1 = [], [], [], []
    for o, ms, st in ((o0, ms0, st0), (o1, ms1, st1)):
        for i, e in enumerate(o):
            if dkey[e[0]] is None:
                st.append((i, e))
            else:
                ms.append(e)
    if [e for _, e in st0] != [e for _, e in st1] or len(ms0) != len(ms1):
        raise _NoJump("TLB order out of step")
    for (l0, k0), (l1, k1) in zip(ms0, ms1):
        if l0 != l1 or k1 != k0 + dkey[l0] or (k0 & 0xFFFF) != vmid:
            raise _NoJump("TLB order out of step")
    out = []
    drift = set()
    for (p0, _), (p1, _) in zip(st0, st1):
        dl = p0 - p1
        if dl < 0:
            raise _NoJump("a static TLB entry moved back")
        if dl:
            drift.add(dl)
        out.append((p1, dl))
    if len(drift) > 1:
        raise _NoJump("static TLB entries drift apart")
    return out


def _order_moved(o1: list, drift: list, dkey: dict, m: int) -> list:
    """The order after m region periods: moving entries moved, static ones drifted."""
    if not drift:
        return [(lvl, kk + m * dkey[lvl]) for lvl, kk in o1]
    out = [None] * len(o1)
    for p1, dl in drift:
        out[p1 - m * dl] = o1[p1]
    it = iter([(lvl, kk + m * dkey[lvl]) for lvl, kk in o1 if dkey[lvl] is not None])
    for i, e in enumerate(out):
        if e is None:
            out[i] = next(it)
    return out


def _dicts_follow(items: list, order: list) -> bool:
    """Whether each level's dict lists its entries in the replacement order's order."""
    for lvl, it in items:
        if [kk for kk, _ in it] != [kk for lv, kk in order if lv == lvl]:
            return False
    return True


def _walk_fifo(w0, w1, wv0, wv1, cap, dkey, vmid, shifts, f0, f1, walk_val):
    """A full walk cache used as a FIFO over a region period, or None.

    b's order must be b0's with its first a entries evicted and a entries appended,
    b0's last a moved by one region (the period's fills; nothing refreshed), a >= 1.
    Entries left behind (an earlier GiB's, the split block's) are then passengers
    carried to the front and evicted, as one fill at a time would. What the convoy
    can reach (entries of moving levels from the window on, and the static entries
    covering it) must be b0's moved, and the static ones must outlive the jump
    (the caller bounds m). Returns (("fifo", appended, m bound), (values of b's
    entries, {appended: (b0 pointer, b pointer, gen)}), [(kept entry, value)]).
    """
    n = len(w1)
    d0 = {(lvl, kk): v for lvl, it in wv0 for kk, v in it}
    d1 = {(lvl, kk): v for lvl, it in wv1 for kk, v in it}
    for a in range(1, 9):
        if w1[:n - a] != w0[a:]:
            continue
        tail0, add = w0[n - a:], w1[n - a:]
        ok = True
        for (l0, k0), (l1, k1) in zip(tail0, add):
            dd = dkey[l0]
            if dd is None or l1 != l0 or k1 != k0 + dd or (k0 & 0xFFFF) != vmid:
                ok = False
                break
        if not ok:
            continue
        for e in w1[:n - a]:
            if d0[e] != d1[e]:
                raise _NoJump("a walk-cache entry changed")
        addv = {}
        for e0, e1 in zip(tail0, add):
            walk_val(d0[e0], d1[e1])
            addv[e1] = (d0[e0][0],) + d1[e1]

        def reach(e, f):
            lvl, kk = e
            return (kk & 0xFFFF) == vmid and ((kk >> 16) + 1) << shifts[lvl] > f

        r0 = {(lv, kk + dkey[lv]) for lv, kk in w0 if dkey[lv] is not None and reach((lv, kk), f0)}
        r1 = {(lv, kk) for lv, kk in w1 if dkey[lv] is not None and reach((lv, kk), f1)}
        if r0 != r1:
            raise _NoJump("a walk cache out of step")
        # static entries covering the window: read, kept (m bound: not evicted)
        bound = 1 << 62
        for p, (lv, kk) in enumerate(w1):
            if dkey[lv] is None and (kk & 0xFFFF) == vmid and (kk >> 16) == f1 >> shifts[lv]:
                bound = min(bound, p // a)
        return ("fifo", add, bound), ({e: d1[e] for e in w1}, addv), \
            [(e, d1[e]) for e in w1[:n - a]]
    return None


def _mmu_seq(gen):
    """The mmu_notifier_seq a suspended fault handler read before its GUP, or None."""
    g = gen
    while type(g) is GeneratorType:
        fr = g.gi_frame
        if fr is None:
            return None
        if "mmu_seq" in fr.f_locals:
            return fr.f_locals["mmu_seq"]
        g = g.gi_yieldfrom
    return None


_first, _second = itemgetter(0), itemgetter(1)


def _role(n: int, order0: list, order1: list) -> list:
    """role[c]: the vCPU that holds at the second boundary the rank vCPU c held at the
    first (vCPUs not ranked keep their own)."""
    role = list(range(n))
    for c0, c1 in zip(order0, order1):
        role[c0] = c1
    return role


def _heapkey(e):
    return (e[0], e[1], e[2])


_METRIC_INTS = ("dsb", "cmo_bytes", "cmo_ops", "writes", "hw_writes", "pages_alloc",
                "pages_freed", "teardown_entries", "accesses", "walks", "host_bytes_zeroed",
                "windows", "window_total", "fault_ns_total")
_METRIC_COUNTERS = ("faults_by_kind", "faults_by_level", "outcomes", "tlbi", "host_mm",
                    "cmo_sizes")


def _group_of(wins: list, ipa: int) -> int:
    """The index of the convoy window holding `ipa` (`_try_groups`)."""
    for gi, w in enumerate(wins):
        if w["first"] <= ipa < w["last"] + w["stride"]:
            return gi
    raise _NoJump("convoys: an effect outside every window")


def _in_reach(tlb, vmid: int, lo: int, hi: int) -> set:
    """The (level, key) of `tlb`'s cached leaf entries of `vmid` translating lo..hi."""
    out = set()
    step = 1 << 16
    for lvl, sh, dct in tlb._probe:
        if not dct:
            continue
        k_lo, k_hi = lo >> sh, hi >> sh
        if k_hi - k_lo < len(dct):
            keys = dct.keys() & set(range((k_lo << 16) | vmid, (k_hi << 16) + step, step))
        else:
            keys = [k for k in dct if (k & 0xFFFF) == vmid and k_lo <= k >> 16 <= k_hi]
        if keys:
            out.update(zip(repeat(lvl), keys))
    return out
