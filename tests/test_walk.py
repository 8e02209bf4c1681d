"""Stage-2 translation walks on hand-built tables.

Expected results follow the Arm ARM (DDI 0487) pseudocode for the stage-2
walk (AArch64.S2Walk / AArch64.TranslationTableWalk and
AArch64.CheckS2Permission) and "Prioritization of synchronous aborts":
- an IPA above the configured size (64 - T0SZ) is a level-0 Translation fault;
- an invalid entry (bit 0 = 0), or bits[1:0] = 0b01 at level 3, is a
  Translation fault at the level of that entry;
- a block at a level below the first block level (4K: level 0; 16K/64K:
  level 1) is a Translation fault at that level;
- a table or output address above the PA size (VTCR_EL2.PS) is an Address
  size fault at the level of the descriptor holding it;
- AF = 0 with VTCR_EL2.HA = 0 is an Access flag fault (before permissions);
  with HA = 1 the walker sets AF in the descriptor instead;
- S2AP[0] (bit 6) grants reads, S2AP[1] (bit 7) writes, XN (bit 54) forbids
  instruction fetches: otherwise a Permission fault at the leaf's level.
Tables are built here with index arithmetic written in this file.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2sim.arch import events as ev
from s2sim.arch.geometry import Geometry
from s2sim.arch.machine import Machine
from s2sim.arch.walk import (
    ACCESS_FLAG,
    ADDRESS_SIZE,
    EXEC,
    PERMISSION,
    READ,
    TRANSLATION,
    WRITE,
    Fault,
    Translation,
    WalkCursor,
    root_page,
    walk,
    walk_path,
)

PAGE_SHIFT = {"4K": 12, "16K": 14, "64K": 16}
AF = 1 << 10
S2AP_R, S2AP_W = 1 << 6, 1 << 7
XN = 1 << 54
NORMAL_WB_ISH = (0b1111 << 2) | (0b11 << 8)
RWX_AF = NORMAL_WB_ISH | S2AP_R | S2AP_W | AF
FIRST_BLOCK_LEVEL = {"4K": 1, "16K": 2, "64K": 2}


class Tables:
    """A stage-2 table tree built by hand inside a Machine's PhysMem."""

    def __init__(self, granule: str, ipa_bits: int, pa_bits: int = 48, ha: bool = False,
                 vmid: int = 1, xnx: bool = False, **kw) -> None:
        self.geo = Geometry.make(granule, ipa_bits, pa_bits, xnx=xnx)
        self.m = Machine(self.geo, ha=ha, **kw)
        self.mem = self.m.mem
        self.vttbr = self.m.alloc_root(vmid)
        self.root = self.vttbr.baddr
        self.gshift = PAGE_SHIFT[granule]
        self.stride = self.gshift - 3
        self.start = self.geo.start_level

    def lshift(self, level: int) -> int:
        return self.gshift + (3 - level) * self.stride

    def slot(self, ipa: int, level: int):
        """(page, index) of the entry at `level` for `ipa`, creating tables above it."""
        ipa_bits = self.geo.ipa_bits
        sh = self.lshift(self.start)
        idx = (ipa >> sh) & ((1 << (ipa_bits - sh)) - 1)
        per = 1 << self.stride
        page = self.mem.page(self.root + (idx // per) * (1 << self.gshift))
        idx %= per
        for lvl in range(self.start, level):
            desc = page.entries[idx]
            nxt = None
            if desc & 3 == 3:
                nxt = self.mem.page(desc & ((1 << 48) - (1 << self.gshift)))
            if nxt is None:  # not a table, or a table pointer to no table page: replace it
                nxt = self.mem.alloc_table(lvl + 1)
                page.entries[idx] = nxt.pa | 0b11
            page = nxt
            idx = (ipa >> self.lshift(lvl + 1)) & (per - 1)
        return page, idx

    def set(self, ipa: int, level: int, value: int):
        page, idx = self.slot(ipa, level)
        page.entries[idx] = value
        return page, idx

    def leaf(self, ipa: int, level: int, pa: int, attrs: int = RWX_AF):
        return self.set(ipa, level, pa | attrs | (0b11 if level == 3 else 0b01))

    def walk(self, ipa: int, access: int = READ, **kw):
        return walk(self.mem, self.geo, self.root, ipa, access, **kw)


def leaf_levels(granule: str, ipa_bits: int) -> list[int]:
    start = Geometry.make(granule, ipa_bits).start_level
    return [lvl for lvl in range(max(start, FIRST_BLOCK_LEVEL[granule]), 4)]


GEOMS = [("4K", 40), ("4K", 48), ("4K", 32), ("16K", 40), ("16K", 48), ("64K", 40),
         ("64K", 48)]
LEAF_CASES = [(g, i, lvl) for g, i in GEOMS for lvl in leaf_levels(g, i)]
ALL_LEVEL_CASES = [(g, i, lvl) for g, i in GEOMS
                   for lvl in range(Geometry.make(g, i).start_level, 4)]


def some_ipa(t: Tables, rng: random.Random) -> int:
    return rng.randrange(0, 1 << t.geo.ipa_bits)


# --- successful walks ---------------------------------------------------------------------------
@pytest.mark.parametrize("granule,ipa_bits,level", LEAF_CASES)
def test_leaf_translation_at_every_level(granule, ipa_bits, level) -> None:
    rng = random.Random(f"{granule}{ipa_bits}{level}")
    t = Tables(granule, ipa_bits)
    size = 1 << t.lshift(level)
    for _ in range(20):
        ipa = some_ipa(t, rng)
        oa = rng.randrange(0, 1 << (40 - t.lshift(level))) << t.lshift(level)
        page, idx = t.leaf(ipa, level, oa)
        for access in (READ, WRITE, EXEC):
            res = t.walk(ipa, access)
            assert isinstance(res, Translation), res
            assert res.pa == oa | (ipa & (size - 1))
            assert res.level == level and res.size == size
            assert res.table_pa == page.pa and res.index == idx
            assert res.desc == page.entries[idx] and not res.af_update
            assert res.block_base_ipa == ipa & ~(size - 1)


def test_concatenated_root_page() -> None:
    # 40-bit/4K: two level-1 tables; IPA 513 GiB uses entry 1 of the second table.
    t = Tables("4K", 40)
    ipa = 513 << 30
    assert root_page(t.geo, t.root, ipa) == (t.root + 4096, 1)
    t.leaf(ipa, 1, 0x80000000)
    assert t.mem.page(t.root + 4096).entries[1] & 1
    assert t.walk(ipa + 0x1234).pa == 0x80001234
    assert isinstance(t.walk(1 << 30), Fault)  # entry 1 of the *first* table is still empty


def test_table_descriptor_ignored_bits() -> None:
    # Arm ARM: table descriptor bits [11:2] and [58:52] are IGNORED.
    t = Tables("4K", 40)
    ipa = 0x1234_5000
    t.leaf(ipa, 3, 0x9000)
    root_entry_page, ridx = t.slot(ipa, 1)
    root_entry_page.entries[ridx] |= (0x3FF << 2) | (0x7F << 52)
    l2, i2 = t.slot(ipa, 2)
    l2.entries[i2] |= (0x155 << 2) | (0x55 << 52)
    assert t.walk(ipa).pa == 0x9000


# --- translation faults -------------------------------------------------------------------------
@pytest.mark.parametrize("granule,ipa_bits,level", ALL_LEVEL_CASES)
def test_translation_fault_at_every_level(granule, ipa_bits, level) -> None:
    rng = random.Random(f"tf{granule}{ipa_bits}{level}")
    t = Tables(granule, ipa_bits)
    for _ in range(10):
        ipa = some_ipa(t, rng)
        # Bit 0 clear: invalid whatever else the entry holds.
        t.set(ipa, level, rng.getrandbits(64) & ~1)
        for access in (READ, WRITE, EXEC):
            res = t.walk(ipa, access)
            assert res == Fault(TRANSLATION, level, ipa, access)


@pytest.mark.parametrize("granule,ipa_bits", GEOMS)
def test_ipa_out_of_range_is_level0_translation_fault(granule, ipa_bits) -> None:
    t = Tables(granule, ipa_bits)
    t.leaf(0, 3, 0x5000)  # something mapped at IPA 0 to alias onto if bits were dropped
    for ipa in (1 << ipa_bits, (1 << ipa_bits) | 0x5000, (1 << 48) - 1):
        if ipa >> ipa_bits:
            res = t.walk(ipa)
            assert isinstance(res, Fault) and (res.kind, res.level) == (TRANSLATION, 0)
            c = WalkCursor(t.mem, t.geo, t.root, ipa, WRITE)
            assert c.step() == Fault(TRANSLATION, 0, ipa, WRITE)
    assert t.walk((1 << ipa_bits) - 1).kind == TRANSLATION  # in range but unmapped: a real walk


@pytest.mark.parametrize("granule", ["4K", "16K", "64K"])
def test_reserved_level3_encoding_is_translation_fault(granule) -> None:
    t = Tables(granule, 40)
    ipa = 0x4000_0000
    t.set(ipa, 3, 0x8000_0000 | RWX_AF | 0b01)  # bits[1:0] = 0b01 at level 3
    assert t.walk(ipa) == Fault(TRANSLATION, 3, ipa, READ)


@pytest.mark.parametrize("granule,level", [("4K", 0), ("16K", 1), ("64K", 1)])
def test_block_at_non_block_level_is_translation_fault(granule, level) -> None:
    t = Tables(granule, 48)
    assert t.start <= level
    ipa = 0x7000_0000_0000 & ((1 << 48) - 1)
    t.set(ipa, level, RWX_AF | 0b01)
    assert t.walk(ipa, WRITE) == Fault(TRANSLATION, level, ipa, WRITE)


# --- permission faults --------------------------------------------------------------------------
@pytest.mark.parametrize("granule,ipa_bits,level", LEAF_CASES)
def test_permission_faults(granule, ipa_bits, level) -> None:
    t = Tables(granule, ipa_bits)
    ipa = (0x1357 << t.lshift(level)) & ((1 << ipa_bits) - 1) | 0x10
    for s2ap in range(4):
        for xn in (0, 1):
            attrs = NORMAL_WB_ISH | AF | (s2ap << 6) | (xn << 54)
            t.leaf(ipa, level, 0x4000_0000_0000 & ~((1 << t.lshift(level)) - 1), attrs)
            for access, allowed in ((READ, s2ap & 1), (WRITE, s2ap & 2), (EXEC, not xn)):
                res = t.walk(ipa, access)
                if allowed:
                    assert isinstance(res, Translation) and res.level == level
                else:
                    assert res == Fault(PERMISSION, level, ipa, access)


def test_xnx_exec_permission() -> None:
    # FEAT_XNX, XN[1:0] for EL1: 0b00 and 0b11 executable; 0b01 and 0b10 not.
    t = Tables("4K", 40, xnx=True)
    for xnx, ok in ((0b00, True), (0b01, False), (0b10, False), (0b11, True)):
        t.leaf(0x5000, 3, 0x9000, RWX_AF | (xnx << 53))
        res = t.walk(0x5000, EXEC)
        assert isinstance(res, Translation) == ok
        if not ok:
            assert res == Fault(PERMISSION, 3, 0x5000, EXEC)
        assert isinstance(t.walk(0x5000, READ), Translation)


# --- access flag ----------------------------------------------------------------------------------
@pytest.mark.parametrize("granule,ipa_bits,level", LEAF_CASES)
def test_access_flag_fault_without_ha(granule, ipa_bits, level) -> None:
    t = Tables(granule, ipa_bits)
    ipa = (0x2468 << t.lshift(level)) & ((1 << ipa_bits) - 1)
    page, idx = t.leaf(ipa, level, 0, NORMAL_WB_ISH | S2AP_R | S2AP_W)  # AF = 0
    for access in (READ, WRITE, EXEC):
        assert t.walk(ipa, access) == Fault(ACCESS_FLAG, level, ipa, access)
    # Access flag has priority over permission (Arm ARM, prioritization of aborts).
    page.entries[idx] &= ~(S2AP_R | S2AP_W)
    assert t.walk(ipa, WRITE) == Fault(ACCESS_FLAG, level, ipa, WRITE)


@pytest.mark.parametrize("granule,ipa_bits,level", LEAF_CASES)
def test_hardware_af_update_with_ha(granule, ipa_bits, level) -> None:
    t = Tables(granule, ipa_bits, ha=True)
    ipa = (0x1111 << t.lshift(level)) & ((1 << ipa_bits) - 1) | 0x8
    page, idx = t.leaf(ipa, level, 0, NORMAL_WB_ISH | S2AP_R)  # AF = 0, read-only
    old = page.entries[idx]
    # walk() itself is pure: it reports the update the hardware would make.
    res = t.walk(ipa, READ, ha=True)
    assert isinstance(res, Translation) and res.af_update and res.desc == old | AF
    assert page.entries[idx] == old
    # A permission fault does not update AF (the update happens only for a completed walk).
    assert t.walk(ipa, WRITE, ha=True) == Fault(PERMISSION, level, ipa, WRITE)
    # Through the Machine: the AF store is a hardware DescWrite event.
    seen = []
    t.m.bus.subscribe(seen.append)
    assert isinstance(t.m.translate(0, t.vttbr, ipa, WRITE), Fault)
    assert page.entries[idx] == old and not [e for e in seen if isinstance(e, ev.DescWrite)]
    res = t.m.translate(0, t.vttbr, ipa, READ)
    assert isinstance(res, Translation) and res.af_update
    assert page.entries[idx] == old | AF
    writes = [e for e in seen if isinstance(e, ev.DescWrite)]
    assert len(writes) == 1
    w = writes[0]
    assert w.hw and (w.table_pa, w.index, w.old, w.new) == (page.pa, idx, old, old | AF)
    assert w.ipa == ipa & ~((1 << t.lshift(level)) - 1)
    # Now AF is set: a later walk needs no update.
    res = t.walk(ipa, READ, ha=True)
    assert isinstance(res, Translation) and not res.af_update


# --- address size faults -----------------------------------------------------------------------
@pytest.mark.parametrize("granule", ["4K", "16K", "64K"])
def test_address_size_fault_leaf(granule) -> None:
    t = Tables(granule, 40, pa_bits=40)
    for level in leaf_levels(granule, 40):
        ipa = (0x3 << t.lshift(level)) | 0x10
        t.leaf(ipa, level, 1 << 40)
        for access in (READ, WRITE, EXEC):
            assert t.walk(ipa, access) == Fault(ADDRESS_SIZE, level, ipa, access)
        top = ((1 << 40) - 1) & ~((1 << t.lshift(level)) - 1)
        t.leaf(ipa, level, top)
        res = t.walk(ipa)
        assert isinstance(res, Translation) and res.pa == top | (ipa & ((1 << t.lshift(level)) - 1))
        # Address size is checked before the access flag (Arm ARM walk order).
        t.leaf(ipa, level, 1 << 44, NORMAL_WB_ISH | S2AP_R)
        assert t.walk(ipa) == Fault(ADDRESS_SIZE, level, ipa, READ)


@pytest.mark.parametrize("granule", ["4K", "16K", "64K"])
def test_address_size_fault_table(granule) -> None:
    t = Tables(granule, 40, pa_bits=40)
    for level in range(t.start, 3):
        ipa = (0x5 << t.lshift(level)) & ((1 << 40) - 1)
        t.set(ipa, level, (1 << 41) | 0b11)  # table address above the 40-bit PA size
        assert t.walk(ipa, WRITE) == Fault(ADDRESS_SIZE, level, ipa, WRITE)


# --- WalkCursor and walk-cache starts ---------------------------------------------------------
GEO_CHOICES = [("4K", 40, 48), ("4K", 48, 48), ("4K", 33, 40), ("16K", 40, 40), ("16K", 48, 48),
               ("64K", 40, 48), ("64K", 46, 44)]
KINDS = ["leaf", "leaf", "leaf", "noaf", "invalid", "reserved", "empty_table", "bad_oa",
         "bad_table"]


@st.composite
def random_tables(draw):
    granule, ipa_bits, pa_bits = draw(st.sampled_from(GEO_CHOICES))
    ops = draw(st.lists(st.tuples(st.integers(0, (1 << ipa_bits) - 1), st.integers(0, 3),
                                  st.sampled_from(KINDS), st.integers(0, 3), st.booleans()),
                        min_size=1, max_size=25))
    extra = draw(st.lists(st.integers(0, (1 << 48) - 1), max_size=5))
    return granule, ipa_bits, pa_bits, ops, extra


def build_random(granule, ipa_bits, pa_bits, ops):
    t = Tables(granule, ipa_bits, pa_bits=pa_bits)
    ipas = []
    for ipa, lvl, kind, s2ap, xn in ops:
        level = max(t.start, lvl)
        sh = t.lshift(level)
        oa = (ipa * 2654435761 % (1 << pa_bits)) & ~((1 << sh) - 1)
        attrs = NORMAL_WB_ISH | AF | (s2ap << 6) | (xn << 54)
        if kind == "leaf":
            value = oa | attrs | (0b11 if level == 3 else 0b01)
        elif kind == "noaf":
            value = oa | (attrs & ~AF) | (0b11 if level == 3 else 0b01)
        elif kind == "invalid":
            value = (ipa << 1) & ((1 << 64) - 2)
        elif kind == "reserved":
            value = oa | attrs | 0b01  # a reserved L3 encoding, or a block where none may be
            if level < 3 and level >= FIRST_BLOCK_LEVEL[granule]:
                level = 3
        elif kind == "empty_table" and level < 3:
            value = t.mem.alloc_table(level + 1).pa | 0b11
        elif kind == "bad_oa":
            value = (1 << pa_bits) | attrs | (0b11 if level == 3 else 0b01)
        elif kind == "bad_table" and level < 3:
            value = (1 << pa_bits) | 0b11
        else:
            value = oa | attrs | 0b11
            level = 3
        t.set(ipa, level, value)
        ipas.append(ipa)
    return t, ipas


@settings(max_examples=300, deadline=None)
@given(random_tables())
def test_cursor_matches_walk(case) -> None:
    granule, ipa_bits, pa_bits, ops, extra = case
    t, ipas = build_random(granule, ipa_bits, pa_bits, ops)
    queries = ipas + [i ^ 0x10 for i in ipas] + extra
    for ipa in queries:
        for access in (READ, WRITE, EXEC):
            for ha in (False, True):
                expect = walk(t.mem, t.geo, t.root, ipa, access, ha)
                c = WalkCursor(t.mem, t.geo, t.root, ipa, access, ha)
                steps = 0
                res = None
                while res is None:
                    res = c.step()
                    steps += 1
                    assert steps <= 4
                assert res == expect
                assert c.step() is res  # finished cursors keep their result
                res2, path = walk_path(t.mem, t.geo, t.root, ipa, access, ha)
                assert res2 == expect
                if ipa >> ipa_bits:
                    assert steps == 1 and path == []
                    continue
                # One descriptor read per level visited; the path lists the tables followed.
                assert steps == expect.level - t.start + 1
                assert [p[0] for p in path] == list(range(t.start, expect.level))
                for level, table_pa, index, desc in path:
                    assert t.mem.page(table_pa).entries[index] == desc and desc & 3 == 3
                # Starting from any walk-cache point gives the same answer.
                for level, _tpa, _idx, desc in path:
                    nxt = desc & ((1 << 48) - (1 << t.gshift))
                    assert walk(t.mem, t.geo, t.root, ipa, access, ha,
                                start=(level + 1, nxt)) == expect


def test_walk_cache_start_uses_given_table() -> None:
    t = Tables("4K", 40)
    ipa = 0x4020_3000
    t.leaf(ipa, 3, 0xA000)
    res, path = walk_path(t.mem, t.geo, t.root, ipa, READ)
    assert res.pa == 0xA000 and [p[0] for p in path] == [1, 2]
    l3 = path[-1][3] & ~0xFFF & ((1 << 48) - 1)
    assert walk(t.mem, t.geo, t.root, ipa, READ, start=(3, l3)).pa == 0xA000
    # A different (e.g. stale) level-3 table: the walk reads that table, not the live one.
    other = t.mem.alloc_table(3)
    other.entries[(ipa >> 12) & 511] = 0xB000 | RWX_AF | 0b11
    res = walk(t.mem, t.geo, t.root, ipa, READ, start=(3, other.pa))
    assert isinstance(res, Translation) and res.pa == 0xB000 and res.table_pa == other.pa
    res, spath = walk_path(t.mem, t.geo, t.root, ipa, READ, start=(3, other.pa))
    assert res.pa == 0xB000 and spath == []
    # Starting at level 2 from the level-1 entry's table: one table followed, same leaf.
    l2 = path[0][3] & ~0xFFF & ((1 << 48) - 1)
    res, spath = walk_path(t.mem, t.geo, t.root, ipa, WRITE, start=(2, l2))
    assert res.pa == 0xA000 and [p[0] for p in spath] == [2]


def test_stale_pointer_reads_freed_page_until_reuse() -> None:
    # The walker reads memory: a freed table still holds its old entries until reused.
    t = Tables("4K", 40)
    ipa = 0x20_0000
    page, _ = t.leaf(ipa, 3, 0xC000)
    t.mem.free_table(page.pa)
    assert t.walk(ipa).pa == 0xC000
    again = t.mem.alloc_table(3)  # LIFO reuse of the same frame, zeroed
    assert again.pa == page.pa and again.generation == page.generation + 1
    assert t.walk(ipa) == Fault(TRANSLATION, 3, ipa, READ)


def test_missing_table_page_reads_as_zero() -> None:
    t = Tables("64K", 40)
    ipa = 0x1_0000_0000
    t.set(ipa, 2, 0x7FFF_0000_0000 & ~0xFFFF | 0b11)  # points at memory that is not a table
    assert t.walk(ipa) == Fault(TRANSLATION, 3, ipa, READ)


@pytest.mark.parametrize("granule,ipa_bits", [("4K", 40), ("4K", 48), ("16K", 40)])
def test_alloc_root_after_free_is_contiguous_and_aligned(granule, ipa_bits) -> None:
    # VTTBR_EL2.BADDR must be aligned to the size of the concatenated start-level tables
    # (Arm ARM, VTTBR_EL2), and the tables are contiguous, even when freed pages exist.
    geo = Geometry.make(granule, ipa_bits)
    m = Machine(geo)
    v1 = m.alloc_root(1)
    freed = [m.alloc_table(3).pa for _ in range(3)]
    for pa in freed:
        m.free_table(pa)
    v2 = m.alloc_root(2)
    size = geo.concatenated_tables * geo.granule_size
    assert v2.baddr % size == 0 and v2.baddr != v1.baddr
    for i in range(geo.concatenated_tables):
        assert m.mem.page(v2.baddr + i * geo.granule_size).level == geo.start_level
    assert m.alloc_table(3).pa == freed[-1]  # the free list is still used afterwards
