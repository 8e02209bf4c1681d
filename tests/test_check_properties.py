"""Every safety property of the checker on hand-made event streams (DOMAIN.md 7).

Each test builds a small stream the way the model would publish it (a
StageConfig first, then descriptor writes, TLBIs, DSBs, frees, accesses...),
feeds it to a fresh Checker and asserts exactly which properties it reports.
Each violation has its twin that differs by the one step that makes it safe,
so the tests pin the rule, not just "something is reported".

The table used throughout (4K granule, 40-bit IPA: start level 1, two
concatenated root pages): root[1] -> L2 table T2 -> L2[0] -> L3 table T3,
so T3 maps IPA A = 1 GiB.. A + 2 MiB, page k at PA P + k * 4K.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s2sim.arch import descriptors as d
from s2sim.arch import events as ev
from s2sim.arch.tlb import IPAS2E1IS, IPAS2LE1IS, RIPAS2E1IS, RIPAS2LE1IS, VMALLE1IS, VMALLS12E1IS
from s2sim.check.checker import (
    BBM,
    COHERENCY,
    CONFLICT,
    DIRTY,
    PA,
    PROPERTIES,
    REFCOUNT,
    STALE,
    UAF,
    Checker,
    needs_bbm,
)
from s2sim.kvm.events import DirtyLog, MarkDirty, MemslotAdded, OpDone, StageConfig
from s2sim.sim.events import FaultHandled, GuestAccesses, HostTouch

VMID = 1
ROOT = 0x1000_0000          # two concatenated level-1 pages: ROOT, ROOT + 4K
T2 = 0x1001_0000            # level-2 table, linked at root[1]
T3 = 0x1002_0000            # level-3 table, linked at T2[0]
A = 0x4000_0000             # IPA of T2[0] / T3[0]
P = 0x8000_0000             # PA of the memslot (and of page 0)
Q = 0x9000_0000             # another PA
K4, M2 = 0x1000, 0x20_0000
RW = d.leaf_attrs(d.PERM_R | d.PERM_W)
RO = d.leaf_attrs(d.PERM_R)


def page(pa: int, attrs: int = RW) -> int:
    return d.make_leaf(pa, 3, attrs)


def block(pa: int, attrs: int = RW) -> int:
    return d.make_leaf(pa, 2, attrs)


TABLE_T2, TABLE_T3 = d.make_table(T2), d.make_table(T3)


class Stream:
    """A Checker and a clock; one method per event kind."""

    def __init__(self, fwb: bool = False, bbm_level: int = 0, noabort: bool = False,
                 slot: bool = True) -> None:
        self.c = Checker(keep=100)
        self.t = 0
        self.entries: dict[tuple[int, int], int] = {}
        self.emit(StageConfig(0, 0, "4K", 40, VMID, ROOT, fwb, bbm_level, noabort))
        if slot:
            self.emit(MemslotAdded(0, -1, 0, A, M2, P))

    def emit(self, e: ev.Event) -> None:
        self.c(e)
        self.t += 1

    # --- architecture ----------------------------------------------------------------
    def write(self, table: int, index: int, level: int, ipa: int, new: int, cpu: int = 0):
        old = self.entries.get((table, index), 0)
        self.entries[(table, index)] = new
        self.emit(ev.DescWrite(self.t, cpu, table, index, level, ipa, old, new))

    def tlbi(self, op: str, ipa: int = 0, size: int = 0, cpu: int = 0, ttl: int = -1,
             vmid: int = VMID):
        self.emit(ev.Tlbi(self.t, cpu, op, vmid, ipa, size, ttl))

    def dsb(self, cpu: int = 0):
        self.emit(ev.Dsb(self.t, cpu))

    def alloc(self, pa: int):
        self.emit(ev.PageAlloc(self.t, 0, pa, 1))

    def free(self, pa: int):
        self.emit(ev.PageFree(self.t, 0, pa, 1))

    def refcount(self, pa: int, count: int, delta: int = 1):
        self.emit(ev.RefCount(self.t, 0, pa, count, delta))

    def cmo(self, pa: int, size: int):
        self.emit(ev.Cmo(self.t, 0, pa, size))

    # --- KVM and the simulator ---------------------------------------------------------
    def done(self, op: str, ipa: int, size: int):
        self.emit(OpDone(self.t, 0, op, ipa, size, 0))

    def access(self, ipa: int, pa: int | None = None, kind: str = "r", count: int = 1,
               stride: int = 0, desc: int = 0, cpu: int = 1):
        pa = P + (ipa - A) if pa is None else pa
        self.emit(GuestAccesses(self.t, cpu, ipa, stride, count, kind, pa, False, desc, 3))

    # --- the standard table -------------------------------------------------------------
    def build(self, pages: int = 2) -> Stream:
        """root[1] -> T2, T2[0] -> T3, T3[k] -> page P + k*4K for k < pages."""
        for pa in (T2, T3):
            self.alloc(pa)
        self.write(T3, 0, 3, A, page(P))  # filled before it is linked, like KVM
        for k in range(1, pages):
            self.write(T3, k, 3, A + k * K4, page(P + k * K4))
        self.write(T2, 0, 2, A, TABLE_T3)
        self.write(ROOT, 1, 1, A, TABLE_T2)
        return self

    def violated(self) -> set[str]:
        self.c.finish()  # end of stream: deferred judgements (dirty log) settle
        return set(self.c.counts)


def std(**kw) -> Stream:
    return Stream(**kw).build()


def test_building_a_table_violates_nothing():
    s = std()
    assert s.violated() == set()
    assert s.c.mirror.reachable >= {ROOT, T2, T3}
    assert s.c.mirror.current(A + K4) == (3, page(P + K4))
    assert s.c.verdicts() == {p: "held" for p in PROPERTIES}


def test_events_before_the_config_are_ignored():
    c = Checker()
    c(ev.PageFree(0, 0, T3, 1))
    c(ev.TlbConflict(0, 0, VMID, A, (K4, M2), (1, 2)))
    c(GuestAccesses(0, 0, A, 0, 1, "w", Q, False, 0, 3))
    assert c.to_dict()["total"] == 0 and c.events == 3


# --- break-before-make --------------------------------------------------------------------

def test_bbm_direct_replacement_of_a_valid_leaf():
    s = std()
    s.write(T3, 0, 3, A, page(Q))
    assert s.violated() == {BBM}
    v = s.c.violations[0]
    assert v.property == BBM and v.ipa == A and "without a break" in v.detail
    assert v.history and v.history[-1]["event"] == "desc_write"


def test_bbm_break_then_make_without_any_tlbi():
    s = std()
    s.write(T3, 0, 3, A, 0)
    s.write(T3, 0, 3, A, page(Q))
    assert s.violated() == {BBM}


def test_bbm_tlbi_issued_but_not_completed_does_not_count():
    s = std()
    s.write(T3, 0, 3, A, 0)
    s.tlbi(IPAS2E1IS, A)
    s.write(T3, 0, 3, A, page(Q))  # no DSB yet
    assert s.violated() == {BBM}


def test_bbm_break_tlbi_dsb_make_is_safe():
    s = std()
    s.write(T3, 0, 3, A, 0)
    s.tlbi(IPAS2E1IS, A)
    s.dsb()
    s.write(T3, 0, 3, A, page(Q))
    assert s.violated() == set()


@pytest.mark.parametrize("op,ipa,size,ttl,ok", [
    (IPAS2E1IS, A, 0, -1, True),
    (IPAS2E1IS, A + 0x800, 0, -1, True),          # any address inside the page
    (IPAS2E1IS, A + K4, 0, -1, False),            # the neighbouring page
    (IPAS2LE1IS, A, 0, -1, True),                 # last level is enough for a leaf
    (RIPAS2LE1IS, A, M2, -1, True),
    (RIPAS2E1IS, A + K4, M2, -1, False),          # range starts after the page
    (VMALLS12E1IS, 0, 0, -1, True),
    (IPAS2E1IS, A, 0, 3, True),                   # right TTL hint
    (IPAS2E1IS, A, 0, 2, False),                  # wrong TTL hint: may miss the entry
])
def test_bbm_which_tlbi_covers_a_broken_page(op, ipa, size, ttl, ok):
    s = std()
    s.write(T3, 0, 3, A, 0)
    s.tlbi(op, ipa, size, ttl=ttl)
    s.dsb()
    s.write(T3, 0, 3, A, page(Q))
    assert s.violated() == (set() if ok else {BBM})


def test_bbm_dsb_completes_only_the_issuing_cpus_tlbis():
    s = std()
    s.write(T3, 0, 3, A, 0, cpu=0)
    s.tlbi(IPAS2E1IS, A, cpu=0)
    s.dsb(cpu=1)
    s.write(T3, 0, 3, A, page(Q), cpu=0)
    assert s.violated() == {BBM}


def test_bbm_tlbi_of_another_vmid_does_not_cover():
    """Invalidating another VM's translations does not cover this VM's break."""
    s = std()
    s.write(T3, 0, 3, A, 0)
    s.tlbi(VMALLS12E1IS, vmid=VMID + 1)
    s.dsb()
    s.write(T3, 0, 3, A, page(Q))
    assert s.violated() == {BBM}


def test_bbm_remaking_the_same_leaf_needs_no_tlbi():
    s = std()
    s.write(T3, 0, 3, A, 0)
    s.write(T3, 0, 3, A, page(P))
    assert s.violated() == set()


@pytest.mark.parametrize("new_attrs", [RO, d.leaf_attrs(d.PERM_R | d.PERM_W | d.PERM_X),
                                       RW & ~d.AF, RW | d.DBM])
def test_bbm_permission_only_changes_need_no_break(new_attrs):
    s = std()
    s.write(T3, 0, 3, A, page(P, new_attrs))
    s.write(T3, 0, 3, A, page(P, RW))
    assert s.violated() == set()


def test_bbm_memory_type_change_needs_a_break():
    s = std()
    s.write(T3, 0, 3, A, page(P, d.leaf_attrs(d.PERM_R | d.PERM_W, device=True)))
    assert s.violated() == {BBM}


def test_bbm_block_split_into_a_table():
    """A block replaced by a table: directly is a violation; break + TLBI + DSB is not."""
    for safe in (False, True):
        s = Stream()
        s.alloc(T2)
        s.write(T2, 0, 2, A, block(P))
        s.write(ROOT, 1, 1, A, TABLE_T2)
        s.alloc(T3)
        for k in range(3):
            s.write(T3, k, 3, A + k * K4, page(P + k * K4))
        if safe:
            s.write(T2, 0, 2, A, 0)
            s.tlbi(IPAS2E1IS, A, ttl=2)
            s.dsb()
        s.write(T2, 0, 2, A, TABLE_T3)
        assert s.violated() == (set() if safe else {BBM}), safe


@pytest.mark.parametrize("tlbi,ok", [
    ((VMALLS12E1IS, 0, 0), True),
    ((IPAS2E1IS, A, 0), False),                   # covers the walk cache, not 511 leaves
    ((RIPAS2E1IS, A, M2), True),
    ((RIPAS2LE1IS, A, M2), False),                # leaves gone, the walk cache entry not
    (None, False),
])
def test_bbm_table_to_block_coalesce(tlbi, ok):
    s = std()
    s.write(T2, 0, 2, A, 0)
    if tlbi is not None:
        s.tlbi(*tlbi)
        s.dsb()
    s.write(T2, 0, 2, A, block(P))
    assert s.violated() == (set() if ok else {BBM})


def test_table_to_block_without_break():
    """Without FEAT_BBM level 2: BBM. Level 2: allowed, but the possible TLB conflict
    is reported unless the CPU guarantees no conflict abort."""
    s = std()
    s.write(T2, 0, 2, A, block(P))
    assert s.violated() == {BBM}
    s = std(bbm_level=2)
    s.write(T2, 0, 2, A, block(P))
    assert s.violated() == {CONFLICT}
    s = std(bbm_level=2, noabort=True)
    s.write(T2, 0, 2, A, block(P))
    assert s.violated() == set()


def test_bbm_level2_still_forbids_an_output_address_change():
    s = std(bbm_level=2, noabort=True)
    s.write(T2, 0, 2, A, block(Q))  # the pages mapped P..., the block maps Q
    assert BBM in s.violated()


def test_writes_to_an_unlinked_table_are_not_judged():
    s = Stream()
    s.alloc(T3)
    s.write(T3, 0, 3, A, page(P))
    s.write(T3, 0, 3, A, page(Q))  # nobody can walk T3 yet
    assert s.violated() == set()


# --- needs_bbm, the pure rule -----------------------------------------------------------

PERM_BITS = (d.S2AP_R, d.S2AP_W, d.AF, d.XN, d.XN1, d.DBM) + tuple(
    1 << b for b in range(55, 59))  # S2AP, AF, XN[54:53], DBM, software bits
MEM_BITS = tuple(1 << b for b in range(2, 6)) + (1 << 8, 1 << 9, d.CONTIG)  # MemAttr, SH, Contig


@st.composite
def leaves(draw):
    level = draw(st.sampled_from((1, 2, 3)))
    shift = {1: 30, 2: 21, 3: 12}[level]
    pa = draw(st.integers(0, (1 << (48 - shift)) - 1)) << shift
    attrs = 0
    for b in PERM_BITS + MEM_BITS:
        if draw(st.booleans()):
            attrs |= b
    return level, d.make_leaf(pa, level, attrs), shift


@given(leaves(), st.lists(st.sampled_from(PERM_BITS), min_size=1, max_size=6))
def test_needs_bbm_false_for_permission_and_flag_changes(leaf, flips):
    level, old, _ = leaf
    new = old
    for b in flips:
        new ^= b
    assert not needs_bbm(old, new, level)
    assert not needs_bbm(new, old, level)


@given(leaves(), st.sampled_from(MEM_BITS))
def test_needs_bbm_true_for_memory_type_shareability_contiguous(leaf, bit):
    level, old, _ = leaf
    assert needs_bbm(old, old ^ bit, level)


@given(leaves(), st.integers(0, 47), st.lists(st.sampled_from(PERM_BITS), max_size=4))
def test_needs_bbm_true_for_output_address_changes(leaf, bit, flips):
    level, old, shift = leaf
    bit = max(bit, shift)  # an OA bit of this level
    new = old ^ (1 << bit)
    for b in flips:
        new ^= b
    assert needs_bbm(old, new, level)


@given(leaves(), st.integers(0, (1 << 36) - 1))
def test_needs_bbm_kind_change_and_invalid_entries(leaf, table_page):
    level, old, _ = leaf
    invalid = old & ~d.VALID
    assert not needs_bbm(old, invalid, level) and not needs_bbm(invalid, old, level)
    assert not needs_bbm(invalid, invalid, level)
    if level < 3:
        tbl = d.make_table(table_page << 12)
        assert needs_bbm(old, tbl, level) and needs_bbm(tbl, old, level)
        assert not needs_bbm(tbl, tbl, level)
        assert needs_bbm(tbl, tbl ^ (1 << 12), level)  # another table


# --- use after free -------------------------------------------------------------------------

def test_uaf_freeing_a_linked_table():
    s = std()
    s.free(T3)
    assert s.violated() == {UAF}
    assert "still reachable" in s.c.violations[0].detail


@pytest.mark.parametrize("tlbi,dsb,ok", [
    (None, False, False),
    ((IPAS2LE1IS, A, 0), True, False),            # last level: walk caches untouched
    ((RIPAS2LE1IS, A, M2), True, False),
    ((VMALLE1IS, 0, 0), True, False),             # stage 1 only: walk caches untouched
    ((IPAS2E1IS, A, 0), False, False),            # issued, not completed
    ((IPAS2E1IS, A, 0), True, True),
    ((IPAS2E1IS, A + 5 * K4, 0), True, True),     # any IPA the table entry translates
    ((RIPAS2E1IS, A, M2), True, True),
    ((VMALLS12E1IS, 0, 0), True, True),
])
def test_uaf_free_after_unlinking(tlbi, dsb, ok):
    s = std()
    s.write(T2, 0, 2, A, 0)
    if tlbi is not None:
        s.tlbi(*tlbi)
    if dsb:
        s.dsb()
    s.free(T3)
    assert s.violated() == (set() if ok else {UAF})
    if not ok:
        assert "walk cache" in s.c.violations[0].detail


def test_uaf_unlinking_a_subtree_then_freeing_its_root():
    s = std()
    s.write(ROOT, 1, 1, A, 0)  # T2 (and T3 below it) unreachable, T2 walk-cached
    s.free(T2)
    assert s.violated() == {UAF}


def test_uaf_unlinking_a_subtree_then_freeing_a_grandchild():
    """A walk cache may hold T2's entry -> T3 as well as root[1] -> T2: freeing T3
    before a TLBI is a use after free even though T3 was never linked at root level."""
    s = std()
    s.write(ROOT, 1, 1, A, 0)
    s.free(T3)
    assert s.violated() == {UAF}
    assert f"0x{T3:x}" in s.c.violations[0].detail
    s = std()
    s.write(ROOT, 1, 1, A, 0)
    s.tlbi(IPAS2E1IS, A)
    s.dsb()
    s.free(T3)
    s.free(T2)
    assert s.violated() == set()


def test_uaf_free_of_an_unlinked_page_never_linked():
    s = Stream()
    s.alloc(T3)
    s.free(T3)
    assert s.violated() == set()


# --- coherency ------------------------------------------------------------------------------

def test_coherency_host_write_then_guest_access():
    s = Stream()
    s.emit(HostTouch(s.t, 0, P, K4))
    s.access(A)
    assert s.violated() == {COHERENCY}
    assert s.c.violations[0].ipa == A


@pytest.mark.parametrize("cmo,off,ok", [
    ((P, K4), 0, True), ((P, M2), 0x800, True), ((P - K4, 2 * K4), 0, True),
    ((P + K4, K4), 0, False),                    # cleaned the wrong page
    ((P, 64), 0, True), ((P, 64), 0x100, False),  # one line cleaned, the access is beyond it
])
def test_coherency_cmo_in_between(cmo, off, ok):
    s = Stream()
    s.emit(HostTouch(s.t, 0, P, K4))
    s.cmo(*cmo)
    s.access(A + off)
    assert s.violated() == (set() if ok else {COHERENCY})


def test_coherency_not_required_with_fwb():
    s = Stream(fwb=True)
    s.emit(HostTouch(s.t, 0, P, K4))
    s.access(A)
    assert s.violated() == set()


def test_coherency_other_page_is_fine():
    s = Stream()
    s.emit(HostTouch(s.t, 0, P + K4, K4))
    s.access(A)
    assert s.violated() == set()
    s.access(A + K4 + 8)
    assert s.violated() == {COHERENCY}


# --- dirty log ------------------------------------------------------------------------------

def test_dirty_log_write_to_an_unmarked_page():
    s = Stream()
    s.emit(DirtyLog(s.t, 0, 0, True))
    s.access(A + 2 * K4, kind="w")
    assert s.violated() == {DIRTY}
    assert s.c.violations[0].ipa == A + 2 * K4


def test_dirty_log_marked_page_read_or_not_logging():
    s = Stream()
    s.access(A + 3 * K4, kind="w")            # logging off: nothing to mark
    s.emit(DirtyLog(s.t, 0, 0, True))
    s.access(A + 3 * K4, kind="r")            # a read needs no mark
    s.emit(MarkDirty(s.t, 0, A + 2 * K4))
    s.access(A + 2 * K4 + 0x10, kind="w")     # anywhere in the marked page
    s.emit(DirtyLog(s.t, 0, 0, False))
    s.access(A + 3 * K4, kind="w")
    assert s.violated() == set()


def test_dirty_log_batch_checks_every_page_and_restarts_per_session():
    s = Stream()
    s.emit(DirtyLog(s.t, 0, 0, True))
    s.emit(MarkDirty(s.t, 0, A))
    s.access(A, kind="w", count=2, stride=K4)  # page 1 unmarked
    assert s.violated() == {DIRTY}
    s = Stream()
    s.emit(DirtyLog(s.t, 0, 0, True))
    s.emit(MarkDirty(s.t, 0, A))
    s.emit(DirtyLog(s.t, 0, 0, False))
    s.emit(DirtyLog(s.t, 0, 0, True))         # a new logging session: nothing marked yet
    s.access(A, kind="w")
    assert s.violated() == {DIRTY}


def test_dirty_log_write_inside_the_granting_fault_is_not_lost():
    s = Stream().build()
    s.emit(DirtyLog(s.t, 0, 0, True))
    s.write(T3, 1, 3, A + K4, page(P + K4, RO), cpu=0)   # write-protected for logging
    s.tlbi(VMALLS12E1IS)
    s.dsb()
    s.write(T3, 1, 3, A + K4, page(P + K4, RW), cpu=0)   # vCPU 0's fault relaxes it
    s.access(A + K4, kind="w", cpu=1)                    # vCPU 1 writes through it
    s.tlbi(IPAS2E1IS, A + K4)
    s.dsb()
    s.done("relax", A + K4, K4)
    s.emit(MarkDirty(s.t, 0, A + K4))                    # still under mmu_lock
    assert s.violated() == set()


# --- translation PA -------------------------------------------------------------------------

def test_translation_pa():
    s = Stream()
    s.access(A + 5 * K4)                     # P + 5 pages: right
    assert s.violated() == set()
    s.access(A + 5 * K4, pa=P + 6 * K4)
    assert s.violated() == {PA}
    assert "memslot says" in s.c.violations[0].detail
    s = Stream()
    s.access(A + M2, pa=P + M2)              # outside the slot
    assert s.violated() == {PA}


# --- reference counts -----------------------------------------------------------------------

def _refcount_stream(count: int, via_done: bool = True) -> Stream:
    s = std()
    s.refcount(T2, 2)      # 1 + one valid entry (-> T3)
    s.refcount(T3, count)  # T3 has 2 valid entries: the right count is 3
    if via_done:
        s.done("map", A + K4, K4)
    return s


def test_refcount_consistent():
    assert _refcount_stream(3).violated() == set()


@pytest.mark.parametrize("count", [2, 4, 1])
def test_refcount_inconsistent_at_op_done(count):
    s = _refcount_stream(count)
    assert s.violated() == {REFCOUNT}
    assert f"refcount {count} but 2 valid" in s.c.violations[0].detail


def test_refcount_judged_only_at_op_done():
    """Mid-operation (between a write and its get/put) counts may disagree; a
    FaultHandled is published after mmu_lock is released, while another vCPU's
    operation may be half done, so it is not a quiescent point either."""
    s = _refcount_stream(2, via_done=False)
    s.emit(FaultHandled(s.t, 1, A, "spurious", 10, 0))
    assert s.violated() == set()
    s.done("map", A, K4)
    assert s.violated() == {REFCOUNT}


def test_refcount_not_judged_without_refcount_events():
    s = std()
    s.done("map", A, K4)
    assert s.violated() == set()


# --- TLB conflict -------------------------------------------------------------------------

@pytest.mark.parametrize("noabort", [False, True])
def test_tlb_conflict_event(noabort):
    s = std(bbm_level=2, noabort=noabort)
    s.emit(ev.TlbConflict(s.t, 1, VMID, A, (K4, M2), (page(P), block(P))))
    assert s.violated() == (set() if noabort else {CONFLICT})
    if not noabort:
        assert "0x1000, 0x200000" in s.c.violations[0].detail


def test_tlb_conflict_event_without_bbm_level2():
    s = std()
    s.emit(ev.TlbConflict(s.t, 1, VMID, A, (K4, M2), (page(P), block(P))))
    assert s.violated() == {CONFLICT}


# --- stale translation --------------------------------------------------------------------

@pytest.mark.parametrize("op,new", [("unmap", 0), ("wrprotect", page(P, RO))])
def test_stale_translation_after_unmap_or_wrprotect(op, new):
    for flush in (False, True):
        s = std()
        s.write(T3, 0, 3, A, new)
        if flush:
            s.tlbi(IPAS2E1IS, A)
            s.dsb()
        s.done(op, A, K4)
        assert s.violated() == (set() if flush else {STALE}), (op, flush)


def test_stale_translation_only_for_revoking_operations():
    s = std()
    s.write(T3, 0, 3, A, page(P, RO))
    s.write(T3, 0, 3, A, page(P, RW))          # relax: the old entry was a subset
    s.done("relax", A, K4)
    s.done("map", A, K4)
    assert s.violated() == set()


def test_stale_translation_leaves_below_an_unlinked_table():
    s = std()
    s.write(T2, 0, 2, A, 0)
    s.tlbi(IPAS2E1IS, A)      # walk cache entry gone, 511 other leaves may remain
    s.dsb()
    s.done("unmap", A, M2)
    assert s.violated() == {STALE}


# --- bookkeeping ----------------------------------------------------------------------------

def test_checker_keeps_the_first_violations_and_counts_all():
    c = Checker(keep=2)
    c(StageConfig(0, 0, "4K", 40, VMID, ROOT, False))
    for i in range(5):
        c(ev.TlbConflict(i, 0, VMID, A + i * K4, (K4, M2), (1, 2)))
    out = c.to_dict()
    assert out["total"] == 5 and out["counts"] == {CONFLICT: 5}
    assert len(out["violations"]) == 2 and out["properties"][CONFLICT] == "violated"
    assert out["events_checked"] == 6
    assert {p for p, v in out["properties"].items() if v == "held"} == set(PROPERTIES) - {
        CONFLICT}
