"""Read batches: a vCPU's run of TLB-missing reads of valid pages, taken in one step.

Why: in a reading convoy (THP ADJUST: every vCPU reads the mapped half of
each 2 MiB region, one 4 KiB page after another, while the convoy's leader
already faults in the next region), each access is a TLB miss, a one-level
walk from the walk cache and a fill: one engine event per access, and
nothing another CPU can see. Run-ahead (vcpu.py) cannot help: with N vCPUs
the engine's horizon is a few tens of ns away.

A batch is planned right after a walk that starts from the walk cache at a
level-3 table: the following pages of the segment in that same table page,
as long as each is a valid, accessed page the access may use (the walker's
inline success case, `arch/walk.walk`) and this CPU's TLB holds no entry for
it. Their outcomes and times are then known: access j happens at
A_j = A_0 + j*c (c = one walk level + the access) and fills the TLB with the
entry the table holds. The vCPU sleeps to the last one, and the accesses are
*materialised* (TLB misses and fills in order, counters, one GuestWalks
event for the metrics) lazily: when it wakes, or when something could change
what they read or what they leave behind. That something is, exactly:

* a descriptor write to one of the batch's entries, or the table page freed
  (`Machine.write`, `Machine.free_table`); writes elsewhere cannot matter,
  the walks start from the cached pointer;
* a TLBI reaching this CPU's TLB (`Machine.dsb`) that covers the batch's
  pages or the walk-cache entry of their table, or (with a bounded TLB, where
  fills evict) that would drop any leaf entry of this TLB.

Then the batch is *cut*: the accesses before that moment are materialised,
the vCPU is moved to its next access's time and goes on one access at a
time. Everything else the batch does is private to this CPU.

Equal times. The engine orders resumptions at equal times FIFO by when they
were scheduled; access j was scheduled at A_{j-1} (the first at the
planning step). A cut at time t = A_j counts access j as done iff the
interrupting agent was scheduled after A_{j-1}; a moved or waking vCPU takes
a heap sequence between the entries scheduled before and after its own
would-be scheduling time (`Resched`, `Engine.move`). When the two times are
equal the order is a matter of execution order the batch did not record:
`BatchTie` is raised, and the run is redone without batches (counted as
`batch_redos`), so results never depend on the batch.

Batches are on with run-ahead, FIFO ties and no event subscriber but the
metrics (checker and trace writers see every event on the one-access path);
the convoy fast-forward takes no boundary while a batch is in flight.
"""

from __future__ import annotations

import numpy as np

from s2sim.arch import descriptors as d
from s2sim.arch.tlb import IPAS2E1IS, IPAS2LE1IS, RIPAS2LE1IS
from s2sim.arch.walk import READ, WRITE
from s2sim.sim.engine import SimError
from s2sim.sim.events import GuestWalks

MIN_BATCH = 2
_OA = 0xFFFFFFFFF000  # output address bits of a 4 KiB page descriptor
_CHECKS: dict = {}


def _entry_check(perm: int, pa_bits: int) -> tuple:
    """(mask, value) as numpy scalars: `e & mask == value` iff the page descriptor e
    is valid, accessed, grants `perm` and has no output address bit at or above
    `pa_bits` (the walker's inline success case). One masked compare instead of
    two; cached, numpy scalars cost a few us to make."""
    chk = _CHECKS.get((perm, pa_bits))
    if chk is None:
        need = 3 | d.AF | perm   # (all below bit 12: disjoint from the address bits)
        high = _OA & ~((1 << pa_bits) - 1)
        chk = _CHECKS[(perm, pa_bits)] = (np.uint64(need | high), np.uint64(need))
    return chk


class BatchTie(SimError):
    """An equal-time order a batch cannot decide; the run is redone without batches."""


class ReadBatch:
    """Accesses j = 0..n-1 at ipa0 + j*stride (entries idx0 + j of `page`), at t1 + j*c."""

    __slots__ = (
        "access",
        "before",
        "c",
        "cut",
        "done",
        "idx0",
        "ipa0",
        "n",
        "page",
        "pairs",
        "pre",
        "rbase",
        "rend",
        "stride",
        "t0",
        "t1",
        "tlb",
        "vcpu",
    )

    def __init__(self, vcpu, tlb, page, idx0, ipa0, stride, n, t0, t1, c, access, rbase, rend):
        self.vcpu, self.tlb, self.page = vcpu, tlb, page
        self.idx0, self.ipa0, self.stride, self.n = idx0, ipa0, stride, n
        self.t0, self.t1, self.c, self.access = t0, t1, c, access
        self.rbase, self.rend = rbase, rend
        self.done = 0
        self.cut: int | None = None
        # agent -> (time, ran before this batch's access at that time): every real
        # resumption at one of the batch's access times, in order
        self.before: dict = {}
        # batch -> its accesses come before this one's (batches in step)
        self.pairs: dict = {}

    # --- planning --------------------------------------------------------------------
    @staticmethod
    def plan(vcpu, r, ipa: int, stride: int, left: int, access: int, cost: int):
        """A batch for the `left` accesses after the walk `r` of `ipa`, or None."""
        machine = vcpu.machine
        geo = machine.geo
        if r.level != 3 or stride != r.size or access not in (READ, WRITE):
            return None
        page = machine.mem.tables.get(r.table_pa)
        if page is None:
            return None
        epp = geo.entries_per_table
        n = min(left, epp - 1 - r.index)
        if n < MIN_BATCH:
            return None
        perm = d.S2AP_R if access == READ else d.S2AP_W
        e = page.entries[r.index + 1]
        if e & (3 | d.AF | perm) != 3 | d.AF | perm:
            return None  # (the common refusal, in a fault convoy: the next page is not mapped)
        tlb = machine.tlbs[vcpu.cpu]
        vmid = vcpu.vttbr.vmid
        nxt = ipa + stride
        wc = tlb.walk_lookup(vmid, nxt)
        if wc is None or wc[0] != 2 or wc[1] != page.pa or wc[2] != page.generation:
            return None  # the next walks would not start from this table
        eng = vcpu.engine
        now = eng.now
        c = vcpu.costs.walk_level + vcpu.costs.access
        t1 = now + cost
        last = t1 + (n - 1) * c
        # Another batch in step with this one: their accesses meet at every step, in
        # the order of their first meeting (`pairs`); a batch starting ahead of this
        # one is not ordered against it: stop before they meet. (`last_time` inlined:
        # with tens of vCPUs, nearly every TLB has a batch in flight.)
        pairs = []
        for tl in machine.tlbs:
            b = tl.batch
            if b is not None and (b.t1 - t1) % c == 0 and b.t1 <= last and \
                    t1 <= b.t1 + (b.n - 1) * b.c:
                if b.t1 > t1:
                    n = min(n, (b.t1 - t1) // c)
                    continue
                if b.t1 == t1:
                    pairs.append((b, False))   # its access 0 was scheduled first
                elif now < t1 - c:
                    pairs.append((b, True))    # this one's was
                elif now == t1 - c:
                    pairs.append((b, b.before[vcpu.agent][1]))  # as this step and its access
                else:
                    return None
        # the entries ahead: valid, accessed pages the access may use (vectorised)
        mask, need = _entry_check(perm, geo.pa_bits)
        i0 = r.index + 1
        ok = (page.view()[i0:i0 + n] & mask) == need
        m = n if ok.all() else int(ok.argmin())
        if m >= MIN_BATCH:
            # and nothing cached for them (keys not in this TLB): `isdisjoint` probes
            # the dict key by key in C, without building a set; the first hit, rare,
            # is then looked for
            dct = tlb.leaf[3]
            k0 = ((nxt >> geo.shifts[3]) << 16) | vmid
            keys = range(k0, k0 + (m << 16), 1 << 16)
            hit = bool(dct) and not dct.keys().isdisjoint(keys)
            if tlb._pend and (hit or any(k.start < keys.stop and keys.start < k.stop
                                         for k, _ in tlb._pend)):
                # pending fills of these keys, or a cached one they may evict: rare
                tlb.settle()
                hit = bool(dct) and not dct.keys().isdisjoint(keys)
            if hit:
                m = next(j for j, k in enumerate(keys) if k in dct)
        if m < MIN_BATCH:
            return None
        rsize = 1 << geo.shifts[2]
        rbase = nxt & ~(rsize - 1)
        b = ReadBatch(vcpu, tlb, page, i0, nxt, stride, m, now, t1, c, access,
                      rbase, rbase + rsize)
        # resumptions already scheduled now, at a later time: they were scheduled
        # before this planning step (`first`, access 0)
        b.pre = {e[3] for e in eng._heap if e[3].sched_at == now and e[0] > now}
        for other, mine_first in pairs:
            other.pairs[b] = mine_first
            b.pairs[other] = not mine_first
        return b

    def start(self) -> None:
        ff = self.vcpu.ff
        if ff is not None:
            ff._reset()  # no recorded period spans a batch (its fills are not logged)
        self.tlb.batch = self
        eng = self.vcpu.engine
        eng.active.append(self)
        eng.batch_stats["batches"] += 1
        w = self.page.watch
        if w is None:
            self.page.watch = [self]
        else:
            w.append(self)
        self.vcpu.engine.batches += 1

    def stop(self) -> None:
        self.tlb.batch = None
        self.vcpu.engine.active.remove(self)
        w = self.page.watch
        w.remove(self)
        if not w:
            self.page.watch = None
        self.vcpu.engine.batches -= 1

    @property
    def last_time(self) -> int:
        return self.t1 + (self.n - 1) * self.c

    # --- materialising ------------------------------------------------------------------
    def materialise(self, upto: int) -> None:
        """Perform accesses done..upto-1 as the one-access path would have: per access a
        TLB miss, a one-level walk and a fill (`TLB.fill`, inlined: same evictions)."""
        j0 = self.done
        if upto <= j0:
            return
        v = self.vcpu
        machine = v.machine
        tlb = self.tlb
        n = upto - j0
        vmid = v.vttbr.vmid
        base = self.ipa0 >> machine.geo.shifts[3]  # stride is the page size
        # n fills of keys not in the TLB (checked when planned; only this CPU fills it),
        # in order: one fill run, applied when the TLB is next looked at (`TLB.settle`)
        tlb.fill_run(range(((base + j0) << 16) | vmid, ((base + upto) << 16) | vmid, 1 << 16),
                     self.page.entries[self.idx0 + j0:self.idx0 + upto])
        tlb.misses += n
        machine.counts["walks"] += n
        machine.last_walk_levels = 1
        v.walks += n
        v.accesses += n
        bus = machine.bus
        if bus.on:
            bus.emit(GuestWalks(self.t1 + j0 * self.c, v.cpu, self.ipa0 + j0 * self.stride,
                                self.stride, n))
        self.done = upto
        v.engine.batch_stats["batched_accesses"] += n

    # --- equal-time order -------------------------------------------------------------
    def _sched(self, j: int) -> int:
        """When access j was scheduled on the one-access path."""
        return self.t0 if j == 0 else self.t1 + (j - 1) * self.c

    def first(self, agent, j: int) -> bool:
        """Does `agent`'s pending or current resumption at A_j come before access j?

        FIFO at equal times: the one scheduled first goes first; scheduled at the same
        time, the one whose scheduler ran first (recorded by `note`)."""
        s, sj = agent.sched_at, self._sched(j)
        if s != sj:
            return s < sj
        if j == 0:
            return agent in self.pre  # scheduled at the planning step's time: before it?
        by = agent.sched_by
        rec = self.before.get(by)
        if rec is not None and rec[0] == sj:
            return rec[1]
        if by in self.pairs:
            return self.pairs[by]  # scheduled by a batch in step with this one
        raise BatchTie(f"vCPU {self.vcpu.cpu}: order at {sj} unknown")

    def note(self, agent, t: int) -> None:
        """The engine resumes `agent` at `t`: if one of the accesses is at `t`, record
        which came first.

        Called for every batch in flight at every resumption (with tens of vCPUs in
        step, nearly always at an access time): `first`'s common case, resumptions
        scheduled at different times, is inlined."""
        c = self.c
        dt = t - self.t1
        if dt < 0 or dt % c or dt >= self.n * c or agent is self.vcpu.agent:
            return
        s = agent.sched_at
        sj = t - c if dt else self.t0   # when access j = dt // c was scheduled
        self.before[agent] = (t, s < sj if s != sj else self.first(agent, dt // c))

    def done_before_now(self) -> int:
        """How many accesses precede the agent now running (engine.cur)."""
        eng = self.vcpu.engine
        now = eng.now
        if now < self.t1:
            return 0
        j = (now - self.t1) // self.c
        if j >= self.n:
            return self.n
        if self.t1 + j * self.c < now:
            return j + 1
        return j if self.before[eng.cur][1] else j + 1   # access j is at exactly `now`

    def seq_at(self, j: int) -> float:
        """A heap sequence placing the vCPU's resumption for access j (at A_j) after the
        pending ones that come first and before the others."""
        eng = self.vcpu.engine
        agent = self.vcpu.agent
        t = self.t1 + j * self.c
        same = [(e[2], self.first(e[3], j)) for e in eng._heap
                if e[0] == t and e[3] is not agent]
        after = [q for q, fst in same if not fst]
        if any(fst and q > min(after) for q, fst in same) if after else False:
            raise BatchTie(f"vCPU {self.vcpu.cpu}: heap order at {t} is not FIFO-consistent")
        if not after:
            eng._seq += 1
            return eng._seq
        hi = min(after)
        below = [q for q, _ in same if q < hi]
        lo = max(below) if below else hi - 1
        return (lo + hi) / 2

    # --- interrupts -------------------------------------------------------------------
    def cut_now(self) -> None:
        """Something is about to change what the rest would read: stop here."""
        m = self.done_before_now()
        if m >= self.n:
            raise BatchTie(f"vCPU {self.vcpu.cpu}: batch interrupted at its last access")
        self.materialise(m)
        self.stop()
        self.cut = m
        self.vcpu.engine.batch_stats["batch_cuts"] += 1
        self.vcpu.engine.move(self.vcpu.agent, self.t1 + m * self.c, self.seq_at(m),
                              self._sched(m), self)

    def wake_order(self):
        """At the last access's time: None if no pending resumption at this time should
        come first (scheduled before the access), else the heap sequence to requeue at."""
        eng = self.vcpu.engine
        now = eng.now
        j = self.n - 1
        sj = self._sched(j)
        for e in eng._heap:
            # `first(e[3], j)` in heap order, its different-time case inlined
            if e[0] == now:
                s = e[3].sched_at
                if s < sj or s == sj and self.first(e[3], j):
                    return self.seq_at(j)
        return None

    def on_write(self, index: int) -> None:
        if self.idx0 <= index < self.idx0 + self.n:
            self.cut_now()

    def on_tlbi(self, op: str, vmid: int, ipa: int, size: int, ttl: int) -> None:
        if op in (IPAS2E1IS, IPAS2LE1IS):
            lo, hi = ipa, ipa + 1
        elif op in (RIPAS2LE1IS, "RIPAS2E1IS"):
            lo, hi = ipa, ipa + size
        else:
            self.cut_now()  # a whole-VMID drop
            return
        if op in (IPAS2LE1IS, RIPAS2LE1IS):
            blo, bhi = self.ipa0, self.ipa0 + self.n * self.stride
        else:
            blo, bhi = self.rbase, self.rend   # drops the walk-cache entry too
        if lo < bhi and blo < hi:
            self.cut_now()
            return
        tlb = self.tlb
        tlb.settle()
        if tlb.capacity is None or not any(tlb._leafdicts):
            return  # nothing evicts: dropping other entries changes nothing here
        if hi - lo == 1:
            for lvl, shift, dct in tlb._probe:
                if (ttl < 0 or lvl == ttl) and ((lo >> shift) << 16) | vmid in dct:
                    self.cut_now()
                    return
            return
        self.cut_now()
