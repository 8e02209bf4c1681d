"""KVM's stage-2 page-table operations (kvm/pgtable.py) against v5.11 behaviour.

Sources (Linux v5.11, arch/arm64/kvm/hyp/pgtable.c and mmu.c):
- kvm_block_mapping_supported / stage2_map_walker_try_leaf: the leaf goes at
  the highest level whose size fits the remaining range and whose size
  aligns both IPA and PA; an existing valid leaf that differs only in
  S2AP/XN (or not at all) is left alone (-EAGAIN); a different one is
  replaced with break-before-make (kvm_set_invalid_pte clears only bit 0,
  then __kvm_tlb_flush_vmid_ipa = TLBI IPAS2E1IS; DSB; TLBI VMALLE1IS; DSB);
- stage2_map_walk_leaf: a block in the way of a smaller mapping is broken,
  flushed by IPA and replaced by a table from the memcache; the rest of the
  block is mapped lazily; an empty memcache is -ENOMEM;
- stage2_unmap_walker: per valid leaf: invalidate, TLBI by IPA, put_page,
  clean the memory to PoC if it was cacheable (not with FEAT_S2FWB); a table
  whose page count is back to 1 is freed and its parent entry invalidated;
- stage2_attr_walker: wrprotect clears S2AP[1] (W) only, mkold clears AF and
  reports whether it was set, mkyoung sets AF, relax_perms adds S2AP bits,
  clears XN, and flushes the IPA at the leaf's level;
- stage2_flush_walker: clean every valid cacheable leaf; nothing with FWB;
- stage2_free_walker / kvm_pgtable_stage2_destroy: every table page freed.
Table pages count 1 + their valid entries (get_page/put_page on the page
holding the entry).
"""

from __future__ import annotations

import pytest

from s2sim.arch import descriptors as d
from s2sim.arch.geometry import Geometry
from s2sim.arch.machine import Machine
from s2sim.arch.tlb import IPAS2E1IS, VMALLE1IS
from s2sim.arch.walk import (
    ACCESS_FLAG,
    EXEC,
    PERMISSION,
    READ,
    TRANSLATION,
    WRITE,
    Fault,
    Translation,
    walk,
)
from s2sim.errors import AddressError
from s2sim.kvm import walker as w
from s2sim.kvm.memcache import Memcache
from s2sim.kvm.opsrun import dump_table
from s2sim.kvm.pgtable import Stage2PageTable, block_mapping_supported, run

K4, M2, G1 = 1 << 12, 1 << 21, 1 << 30
R, RW, RWX = d.PERM_R, d.PERM_R | d.PERM_W, d.PERM_R | d.PERM_W | d.PERM_X
PA0 = 0x1_0000_0000  # 1G-aligned guest memory


def make(granule="4K", ipa_bits=40, variant="v5.11", fwb=False):
    m = Machine(Geometry.make(granule, ipa_bits), fwb=fwb)
    pt = Stage2PageTable(m, 1, variant)
    return m, pt, Memcache(m)


def do_map(pt, mc, ipa, size, pa, prot=RW, **kw):
    mc.topup(pt.geo.levels - 1)
    return run(pt.map(ipa, size, pa, prot, mc, **kw))


def kinds(steps):
    return [s.kind for s in steps if s.kind != "visit"]


def xlate(m, pt, ipa, access=READ, ha=False):
    return walk(m.mem, m.geo, pt.vttbr.baddr, ipa, access, ha)


def reachable(m, pt):
    """PAs of every table page reachable from the root (root pages included)."""
    geo = m.geo
    out = set()
    todo = [(pt.vttbr.baddr + k * geo.granule_size, geo.start_level)
            for k in range(geo.concatenated_tables)]
    while todo:
        pa, lvl = todo.pop()
        out.add(pa)
        for v in m.mem.tables[pa].entries:
            if d.is_table(v, lvl):
                todo.append((v & geo.table_mask, lvl + 1))
    return out


def check_tables(m, pt, mc):
    """refcount == 1 + valid entries for every live table; no page leaked."""
    live = set(m.mem.tables)
    cached = {p.pa for p in mc.pages}
    reach = reachable(m, pt)
    assert live == reach | cached, "table pages leaked or freed while reachable"
    for pa in reach:
        page = m.mem.tables[pa]
        assert page.refcount == 1 + page.valid_count(), hex(pa)


def leaves(pt):
    return [(e["level"], e["ipa"], e["output_address"]) for e in dump_table(pt)
            if e["type"] in ("block", "page")]


# --- map: leaf size ---------------------------------------------------------------

@pytest.mark.parametrize("ipa,size,pa,expect", [
    (G1, G1, PA0, [(1, G1, PA0)]),                                   # 1G block at L1
    (M2, M2, PA0, [(2, M2, PA0)]),                                   # 2M block at L2
    (K4, K4, PA0, [(3, K4, PA0)]),                                   # 4K page at L3
    (G1, G1 + M2 + K4, PA0,                                          # largest first
     [(1, G1, PA0), (2, 2 * G1, PA0 + G1), (3, 2 * G1 + M2, PA0 + G1 + M2)]),
    (G1, 2 * M2, PA0 + M2, [(2, G1, PA0 + M2), (2, G1 + M2, PA0 + 2 * M2)]),  # PA not 1G-aligned
    (M2 + K4, 2 * K4, PA0, [(3, M2 + K4, PA0), (3, M2 + 2 * K4, PA0 + K4)]),   # IPA not 2M-aligned
])
def test_map_picks_largest_leaf_4k(ipa, size, pa, expect):
    m, pt, mc = make()
    _steps, res = do_map(pt, mc, ipa, size, pa)
    assert res.rc == 0 and res.leaves == len(expect)
    assert leaves(pt) == expect
    for lvl, a, out in expect:
        t = xlate(m, pt, a + 0x10)
        assert isinstance(t, Translation) and t.level == lvl and t.pa == out + 0x10
    check_tables(m, pt, mc)


def test_map_1g_range_with_2m_aligned_pa_uses_512_blocks():
    m, pt, mc = make()
    _, res = do_map(pt, mc, G1, G1, PA0 + M2)
    assert res.rc == 0 and res.leaves == 512
    lv = leaves(pt)
    assert {lvl for lvl, *_ in lv} == {2} and len(lv) == 512
    check_tables(m, pt, mc)


def test_map_2m_range_at_4k_offset_pa_uses_pages():
    _m, pt, mc = make()
    _, res = do_map(pt, mc, M2, M2, PA0 + K4)
    assert res.rc == 0 and res.leaves == 512
    assert {lvl for lvl, *_ in leaves(pt)} == {3}


@pytest.mark.parametrize("granule,block", [("16K", 32 << 20), ("64K", 512 << 20)])
def test_map_picks_largest_leaf_other_granules(granule, block):
    m, pt, mc = make(granule, 40)
    g = m.geo.granule_size
    _, res = do_map(pt, mc, block, block, PA0)
    assert res.rc == 0 and res.leaves == 1
    assert leaves(pt) == [(2, block, PA0)]
    _, res = do_map(pt, mc, 2 * block + g, g, PA0 + block)
    assert res.rc == 0
    assert leaves(pt)[-1] == (3, 2 * block + g, PA0 + block)
    t = xlate(m, pt, block + block - 8)
    assert isinstance(t, Translation) and t.level == 2 and t.size == block
    check_tables(m, pt, mc)


def test_block_mapping_supported_rules():
    geo = Geometry.make("4K", 40)
    assert block_mapping_supported(geo, 0, G1, 0, 1)
    assert not block_mapping_supported(geo, 0, G1 - K4, 0, 1)   # too small
    assert not block_mapping_supported(geo, M2, M2 + G1, 0, 1)  # IPA not aligned
    assert not block_mapping_supported(geo, 0, G1, M2, 1)       # PA not aligned
    assert block_mapping_supported(geo, 0, M2, 0, 2)
    assert block_mapping_supported(geo, K4, 2 * K4, K4, 3)
    geo48 = Geometry.make("4K", 48)
    assert geo48.start_level == 0
    assert not block_mapping_supported(geo48, 0, 1 << 39, 0, 0)  # no L0 blocks with 4K


# --- map: existing entries --------------------------------------------------------

def test_identical_map_does_nothing():
    m, pt, mc = make()
    do_map(pt, mc, M2, M2, PA0)
    before = dump_table(pt)
    writes = m.counts["writes"]
    steps, res = do_map(pt, mc, M2, M2, PA0)
    assert res.unchanged and not res.perm_only
    assert res.rc == w.EAGAIN
    assert not [k for k in kinds(steps) if k in ("write", "tlbi", "dsb", "cmo")]
    assert m.counts["writes"] == writes
    assert dump_table(pt) == before


def test_permission_only_change_is_left_to_relax():
    _m, pt, mc = make()
    do_map(pt, mc, K4, K4, PA0, RW)
    before = dump_table(pt)
    steps, res = do_map(pt, mc, K4, K4, PA0, RWX)
    assert res.perm_only and not res.unchanged and res.rc == w.EAGAIN
    assert "write" not in kinds(steps) and "tlbi" not in kinds(steps)
    assert dump_table(pt) == before
    steps, res = do_map(pt, mc, K4, K4, PA0, R)  # dropping W is also perms-only
    assert res.perm_only and "write" not in kinds(steps)


def test_remap_to_other_pa_is_break_before_make():
    m, pt, mc = make()
    do_map(pt, mc, K4, K4, PA0)
    steps, res = do_map(pt, mc, K4, K4, PA0 + K4)
    assert res.rc == 0 and res.leaves == 1
    s = [x for x in steps if x.kind != "visit"]
    assert [x.kind for x in s] == ["write", "tlbi", "dsb", "tlbi", "dsb", "write"]
    assert s[0].note == "break" and s[0].new == s[0].old & ~1 and s[0].old & 1
    assert s[1].tlbi == IPAS2E1IS and s[1].ipa == K4 and s[3].tlbi == VMALLE1IS
    assert s[5].old == s[0].new and s[5].new & d.oa_mask(m.geo, 3) == PA0 + K4
    assert xlate(m, pt, K4).pa == PA0 + K4
    check_tables(m, pt, mc)


@pytest.mark.parametrize("variant,cmo", [("v5.11", False), ("patch1", True), ("rfc", True)])
def test_cmo_in_map_only_with_patch1_placement(variant, cmo):
    _m, pt, mc = make(variant=variant)
    steps, _ = do_map(pt, mc, M2, M2, PA0)
    ks = kinds(steps)
    if cmo:
        i = ks.index("cmo")
        assert ks[i + 1] == "write"  # cleaned just before the leaf is installed
        c = next(s for s in steps if s.kind == "cmo")
        assert (c.pa, c.size) == (PA0, M2)
    else:
        assert "cmo" not in ks
    # never for device memory, never with FWB
    steps, _ = do_map(pt, mc, 4 * M2, K4, PA0 + G1, device=True)
    assert "cmo" not in kinds(steps)
    _m2, pt2, mc2 = make(variant=variant, fwb=True)
    steps, _ = do_map(pt2, mc2, M2, M2, PA0)
    assert "cmo" not in kinds(steps)


# --- map: splitting a block ---------------------------------------------------------

def test_split_2m_block_by_mapping_a_page():
    m, pt, mc = make()
    do_map(pt, mc, M2, M2, PA0)
    block_desc = next(e for e in dump_table(pt) if e["type"] == "block")
    fault_ipa = M2 + 5 * K4
    mc.topup(2)
    n_cache = len(mc)
    steps, res = run(pt.map(fault_ipa, K4, PA0 + 5 * K4, RW, mc))
    assert res.rc == 0 and res.splits == 1 and res.tables == 1 and res.leaves == 1
    assert len(mc) == n_cache - 1
    s = [x for x in steps if x.kind != "visit"]
    assert [x.kind for x in s] == ["write", "tlbi", "dsb", "tlbi", "dsb", "write", "write"]
    brk = s[0]
    assert brk.level == 2 and brk.note == "break"
    assert brk.old == int(block_desc["desc"], 16) and brk.new == brk.old & ~1
    assert s[1].tlbi == IPAS2E1IS and s[1].level == 2 and s[3].tlbi == VMALLE1IS
    assert s[5].level == 2 and d.is_table(s[5].new, 2) and s[5].old == brk.new
    assert s[6].level == 3 and s[6].ipa == fault_ipa and d.is_leaf(s[6].new, 3)
    # only the faulting page is mapped; the rest of the old block faults at level 3
    for i in range(512):
        t = xlate(m, pt, M2 + i * K4)
        if i == 5:
            assert isinstance(t, Translation) and t.level == 3 and t.pa == PA0 + 5 * K4
        else:
            assert isinstance(t, Fault) and t.kind == TRANSLATION and t.level == 3
    check_tables(m, pt, mc)


def test_split_1g_block_builds_two_levels():
    m, pt, mc = make()
    do_map(pt, mc, G1, G1, PA0)
    steps, res = do_map(pt, mc, G1 + M2 + K4, K4, PA0 + M2 + K4)
    assert res.rc == 0 and res.splits == 1 and res.tables == 2
    writes = [s for s in steps if s.kind == "write"]
    assert [(s.level, s.note) for s in writes] == [(1, "break"), (1, ""), (2, ""), (3, "")]
    assert leaves(pt) == [(3, G1 + M2 + K4, PA0 + M2 + K4)]
    assert isinstance(xlate(m, pt, G1), Fault)
    check_tables(m, pt, mc)


# --- unmap -------------------------------------------------------------------------------

def _populate(pt, mc, **kw):
    do_map(pt, mc, 0, K4, PA0, **kw)
    do_map(pt, mc, 2 * K4, K4, PA0 + K4, **kw)
    do_map(pt, mc, M2, M2, PA0 + M2, **kw)
    do_map(pt, mc, G1, G1, PA0 + G1, **kw)


@pytest.mark.parametrize("fwb", [False, True])
def test_unmap_everything(fwb):
    m, pt, mc = make(fwb=fwb)
    _populate(pt, mc)
    mc.free_all()
    root = {pt.vttbr.baddr, pt.vttbr.baddr + K4}  # the two concatenated level-1 pages
    steps, res = run(pt.unmap(0, 2 * G1))
    assert res.rc == 0 and res.leaves == 4
    s = [x for x in steps if x.kind != "visit"]
    # one break + TLBI by IPA (with VMALLE1IS) per leaf and per freed table
    brk = [x for x in s if x.kind == "write"]
    assert all(x.old & 1 and x.new == x.old & ~1 for x in brk)  # only bit 0 cleared
    assert [(x.level, x.ipa) for x in brk] == [
        (3, 0), (3, 2 * K4), (2, 0), (2, M2), (1, 0), (1, G1)]
    tlbis = [x for x in s if x.kind == "tlbi"]
    assert [x.tlbi for x in tlbis] == [IPAS2E1IS, VMALLE1IS] * 6
    assert [x.ipa for x in tlbis if x.tlbi == IPAS2E1IS] == [x.ipa for x in brk]
    for i, x in enumerate(s):
        if x.kind == "write":
            assert [y.kind for y in s[i + 1:i + 5]] == ["tlbi", "dsb", "tlbi", "dsb"]
    cmos = [(x.pa, x.size) for x in s if x.kind == "cmo"]
    if fwb:
        assert cmos == []
    else:
        assert cmos == [(PA0, K4), (PA0 + K4, K4), (PA0 + M2, M2), (PA0 + G1, G1)]
    frees = [x for x in s if x.kind == "free"]
    assert [x.level for x in frees] == [3, 2]     # the L3 table, then the L2 table
    # every CMO comes after its leaf's TLBI has completed
    for i, x in enumerate(s):
        if x.kind == "cmo":
            assert s[i - 1].kind == "dsb"
    assert set(m.mem.tables) == root
    assert leaves(pt) == []
    for ipa in (0, 2 * K4, M2, G1 + 123 * K4):
        assert isinstance(xlate(m, pt, ipa), Fault)
    check_tables(m, pt, mc)


def test_unmap_device_memory_does_not_clean():
    _m, pt, mc = make()
    do_map(pt, mc, 0, M2, PA0, device=True)
    steps, _ = run(pt.unmap(0, M2))
    assert "cmo" not in kinds(steps) and "write" in kinds(steps)


def test_unmap_part_of_a_table_keeps_it():
    m, pt, mc = make()
    for i in range(3):
        do_map(pt, mc, i * K4, K4, PA0 + i * K4)
    steps, res = run(pt.unmap(K4, K4))
    assert res.leaves == 1 and "free" not in kinds(steps)
    assert [(lvl, ipa) for lvl, ipa, _ in leaves(pt)] == [(3, 0), (3, 2 * K4)]
    check_tables(m, pt, mc)
    steps, _ = run(pt.unmap(0, K4))
    assert "free" not in kinds(steps)
    steps, _ = run(pt.unmap(2 * K4, K4))   # last page: L3 and L2 tables go
    assert kinds(steps).count("free") == 2
    check_tables(m, pt, mc)


def test_unmap_inside_a_block_removes_the_whole_block():
    m, pt, mc = make()
    do_map(pt, mc, M2, M2, PA0)
    _, res = run(pt.unmap(M2 + 7 * K4, K4))
    assert res.leaves == 1
    assert isinstance(xlate(m, pt, M2), Fault)
    assert isinstance(xlate(m, pt, M2 + 511 * K4), Fault)


def test_unmap_of_nothing_is_a_noop():
    _m, pt, _mc = make()
    steps, res = run(pt.unmap(0, G1))
    assert res.rc == 0 and res.leaves == 0
    assert kinds(steps) == []


# --- attributes ----------------------------------------------------------------------------

def test_wrprotect_clears_write_only():
    m, pt, mc = make()
    _populate(pt, mc, prot=RWX)
    before = {(e["level"], e["ipa"]): int(e["desc"], 16) for e in dump_table(pt)}
    steps, res = run(pt.wrprotect(0, 2 * G1))
    assert res.rc == 0 and res.leaves == 4
    assert kinds(steps) == ["write"] * 4  # no TLBI: the caller flushes the VMID
    after = {(e["level"], e["ipa"]): int(e["desc"], 16) for e in dump_table(pt)}
    for k, old in before.items():
        if k[0] == 3 or d.is_leaf(old, k[0]):
            assert after[k] == old & ~d.S2AP_W
        else:
            assert after[k] == old
    t = xlate(m, pt, M2, WRITE)
    assert isinstance(t, Fault) and t.kind == PERMISSION and t.level == 2
    assert isinstance(xlate(m, pt, M2, READ), Translation)
    assert isinstance(xlate(m, pt, M2, EXEC), Translation)
    steps, res = run(pt.wrprotect(0, 2 * G1))   # already read-only: no writes
    assert kinds(steps) == [] and res.leaves == 0
    check_tables(m, pt, mc)


def test_relax_perms_adds_permissions_and_flushes_by_ipa():
    m, pt, mc = make()
    do_map(pt, mc, M2, M2, PA0, R)
    assert isinstance(xlate(m, pt, M2 + K4, WRITE), Fault)
    assert isinstance(xlate(m, pt, M2 + K4, EXEC), Fault)
    steps, res = run(pt.relax_perms(M2 + K4, RW))
    s = [x for x in steps if x.kind != "visit"]
    assert [x.kind for x in s] == ["write", "tlbi", "dsb", "tlbi", "dsb"]
    assert s[0].new == s[0].old | d.S2AP_W
    assert s[1].tlbi == IPAS2E1IS and s[1].level == 2 and res.level == 2
    assert isinstance(xlate(m, pt, M2 + 3 * K4, WRITE), Translation)
    steps, _ = run(pt.relax_perms(M2, d.PERM_X))
    wr = next(x for x in steps if x.kind == "write")
    assert wr.new == wr.old & ~d.XN
    assert isinstance(xlate(m, pt, M2, EXEC), Translation)
    # relax never removes permissions
    run(pt.relax_perms(M2, R))
    assert isinstance(xlate(m, pt, M2, WRITE), Translation)
    check_tables(m, pt, mc)


def test_relax_on_unmapped_address_does_nothing():
    _m, pt, _mc = make()
    steps, res = run(pt.relax_perms(5 * K4, RW))
    assert kinds(steps) == [] and res.level == -1


def test_mkold_and_mkyoung():
    m, pt, mc = make()
    do_map(pt, mc, K4, K4, PA0)
    steps, res = run(pt.mkold(K4, K4))
    assert res.young is True
    s = [x for x in steps if x.kind != "visit"]
    assert [x.kind for x in s] == ["write"]          # no TLBI for aging
    assert s[0].new == s[0].old & ~d.AF
    t = xlate(m, pt, K4, READ)
    assert isinstance(t, Fault) and t.kind == ACCESS_FLAG and t.level == 3
    assert isinstance(xlate(m, pt, K4, READ, ha=True), Translation)   # HA sets it
    steps, res = run(pt.mkold(K4, K4))
    assert res.young is False and kinds(steps) == []
    steps, res = run(pt.mkyoung(K4 + 0x123))
    assert not res.old & d.AF and d.is_leaf(res.old, 3)
    assert [x.kind for x in steps if x.kind != "visit"] == ["write"]
    assert isinstance(xlate(m, pt, K4, READ), Translation)
    steps, res = run(pt.mkyoung(K4))
    assert res.old & d.AF and kinds(steps) == []


def test_flush_cleans_every_cacheable_leaf():
    _m, pt, mc = make()
    _populate(pt, mc)
    do_map(pt, mc, 4 * M2, K4, PA0 + 3 * G1, device=True)
    steps, res = run(pt.flush(0, 2 * G1))
    assert res.rc == 0
    assert [(s.pa, s.size) for s in steps if s.kind == "cmo"] == [
        (PA0, K4), (PA0 + K4, K4), (PA0 + M2, M2), (PA0 + G1, G1)]
    assert kinds(steps) == ["cmo"] * 4
    _m2, pt2, mc2 = make(fwb=True)
    _populate(pt2, mc2)
    steps, _ = run(pt2.flush(0, 2 * G1))
    assert kinds(steps) == []


# --- destroy, memcache --------------------------------------------------------------------

@pytest.mark.parametrize("granule", ["4K", "16K", "64K"])
def test_destroy_frees_every_table_page(granule):
    m, pt, mc = make(granule, 40)
    g = m.geo.granule_size
    for i in range(4):
        do_map(pt, mc, i * 37 * g + (1 << 39) * (i % 2), g, PA0 + i * g)
    do_map(pt, mc, m.geo.level_size(2) * 3, m.geo.level_size(2), PA0 + G1)
    assert len(m.mem.tables) > m.geo.concatenated_tables
    steps, _res = run(pt.destroy())
    assert "free" in kinds(steps)
    mc.free_all()
    assert m.mem.tables == {}
    assert m.mem.allocated == m.mem.freed


def test_map_with_empty_memcache_is_enomem_and_leaves_table_valid():
    m, pt, mc = make()
    do_map(pt, mc, K4, K4, PA0)
    mc.free_all()
    before = dump_table(pt)
    steps, res = run(pt.map(G1, K4, PA0 + K4, RW, mc))
    assert res.rc == w.ENOMEM and res.errno == "-ENOMEM"
    assert kinds(steps) == [] and dump_table(pt) == before
    steps, res = run(pt.map(G1, K4, PA0 + K4, RW, None))
    assert res.rc == w.ENOMEM
    # a page next to an existing one needs no table: works with no memcache
    _, res = run(pt.map(2 * K4, K4, PA0 + 2 * K4, RW, None))
    assert res.rc == 0
    t = xlate(m, pt, K4)
    assert isinstance(t, Translation) and t.pa == PA0
    check_tables(m, pt, mc)


def test_map_with_short_memcache_stops_half_way_consistently():
    m, pt, mc = make()
    mc.topup(1)                        # 4K at a fresh 1G region needs 2 tables
    _steps, res = run(pt.map(G1, K4, PA0, RW, mc))
    assert res.rc == w.ENOMEM and res.tables == 1
    assert isinstance(xlate(m, pt, G1), Fault)
    check_tables(m, pt, mc)
    _, res = do_map(pt, mc, G1, K4, PA0)
    assert res.rc == 0 and xlate(m, pt, G1).pa == PA0
    check_tables(m, pt, mc)


def test_split_with_empty_memcache_keeps_the_block():
    m, pt, mc = make()
    do_map(pt, mc, M2, M2, PA0)
    mc.free_all()
    steps, res = run(pt.map(M2, K4, PA0, RW, mc))
    assert res.rc == w.ENOMEM and kinds(steps) == []
    t = xlate(m, pt, M2 + 100 * K4)
    assert isinstance(t, Translation) and t.level == 2


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("ipa,size,pa", [
    (0x800, K4, PA0),            # unaligned IPA
    (0, K4 + 0x800, PA0),        # unaligned size
    (0, 0, PA0),                 # size 0
    (0, -K4, PA0),               # negative size
    (1 << 40, K4, PA0),          # IPA beyond the 40-bit space
    ((1 << 40) - K4, 2 * K4, PA0),  # range runs past the end
    (-K4, K4, PA0),              # negative IPA
    (0, K4, PA0 + 0x10),         # unaligned PA
    (0, K4, 1 << 48),            # PA beyond 48 bits
    (0, 2 * K4, (1 << 48) - K4),  # PA range runs past 48 bits (would wrap to PA 0)
    (0, K4, -K4),                # negative PA
])
def test_bad_map_input_raises_address_error(ipa, size, pa):
    m, pt, mc = make()
    mc.topup(2)
    with pytest.raises(AddressError):
        run(pt.map(ipa, size, pa, RW, mc))
    assert len(m.mem.tables) == 2 + 2  # nothing installed


@pytest.mark.parametrize("op", ["unmap", "wrprotect", "mkold", "flush"])
@pytest.mark.parametrize("ipa,size", [(0x800, K4), (0, 0), (0, 0x1800), (1 << 40, K4)])
def test_bad_range_input_raises_address_error(op, ipa, size):
    _m, pt, _mc = make()
    with pytest.raises(AddressError):
        run(getattr(pt, op)(ipa, size))


@pytest.mark.parametrize("op", ["relax", "mkyoung"])
def test_bad_single_address_raises(op):
    _m, pt, _mc = make()
    with pytest.raises(AddressError):
        if op == "relax":
            run(pt.relax_perms(1 << 40, RW))
        else:
            run(pt.mkyoung(1 << 40))


# --- refcounts through a sequence of operations ----------------------------------------------

def test_refcounts_hold_after_every_operation():
    m, pt, mc = make(variant="patch1")
    ops = [
        lambda: do_map(pt, mc, 0, K4, PA0),
        lambda: do_map(pt, mc, M2, M2, PA0 + M2),
        lambda: do_map(pt, mc, M2 + K4, K4, PA0 + M2 + K4),       # split
        lambda: run(pt.wrprotect(0, 4 * M2)),
        lambda: run(pt.relax_perms(M2 + K4, RW)),
        lambda: do_map(pt, mc, M2, M2, PA0 + 4 * M2),            # coalesce
        lambda: do_map(pt, mc, G1, G1, PA0 + G1),
        lambda: do_map(pt, mc, G1 + 3 * K4, K4, PA0 + 8 * K4),   # split 1G
        lambda: run(pt.mkold(0, 2 * G1)),
        lambda: run(pt.mkyoung(G1 + 3 * K4)),
        lambda: run(pt.flush(0, 2 * G1)),
        lambda: run(pt.unmap(M2, M2)),
        lambda: do_map(pt, mc, 0, G1, PA0),                      # coalesce 1G over tables
        lambda: run(pt.unmap(0, 2 * G1)),
    ]
    for op in ops:
        _, res = op()
        assert res.rc in (0, w.EAGAIN)
        check_tables(m, pt, mc)
    assert leaves(pt) == []
    run(pt.destroy())
    mc.free_all()
    assert m.mem.tables == {}


# --- map's one-leaf fast path equals the generic walker ---------------------------------------

def _scenario_ops():
    """(setup maps, the map under test) pairs covering the fast path's cases."""
    return [
        ([(0, K4, PA0, RW)], (K4, K4, PA0 + K4, RW)),              # new page, tables exist
        ([(0, K4, PA0, RW)], (0, K4, PA0, RW)),                    # identical
        ([(0, K4, PA0, RW)], (0, K4, PA0, RWX)),                   # permissions only
        ([(0, K4, PA0, RW)], (0, K4, PA0 + K4, RW)),               # other PA: BBM (walker)
        ([(0, K4, PA0, RW)], (M2, M2, PA0 + M2, RW)),              # block in existing L2
        ([(M2, M2, PA0, RW)], (M2, M2, PA0, R)),                   # block, permissions only
        ([(M2, M2, PA0, RW)], (M2 + K4, K4, PA0 + K4, RW)),        # split (walker)
        ([(0, K4, PA0, RW)], (0, M2, PA0, RW)),                    # coalesce (walker)
        ([], (G1, K4, PA0, RW)),                                   # tables needed (walker)
        ([], (G1, G1, PA0, RW)),                                   # 1G block at the root
        ([(0, K4, PA0, RW)], (2 * K4, 2 * K4, PA0, RW)),           # two leaves (walker)
        ([(G1, G1, PA0, RW)], (G1, G1, PA0, RW)),                  # identical 1G block
    ]


@pytest.mark.parametrize("variant", ["v5.11", "patch1"])
@pytest.mark.parametrize("case", range(len(_scenario_ops())))
def test_map_fast_path_equals_walker(variant, case):
    setup, (ipa, size, pa, prot) = _scenario_ops()[case]
    out = []
    for fast in (True, False):
        m, pt, mc = make(variant=variant)
        pt.fast = fast
        for s in setup:
            do_map(pt, mc, *s)
        mkold_first = case == 1
        if mkold_first:
            run(pt.mkold(0, K4))
            run(pt.mkyoung(0))
        steps, res = do_map(pt, mc, ipa, size, pa, prot)
        out.append(([s.to_dict() for s in steps], res, dump_table(pt), dict(m.counts)))
        check_tables(m, pt, mc)
    assert out[0] == out[1]


def test_map_fast_path_after_mkold_is_break_before_make():
    # AF cleared by aging differs outside S2AP/XN: KVM 5.11 replaces the leaf with BBM.
    for fast in (True, False):
        m, pt, mc = make()
        pt.fast = fast
        do_map(pt, mc, 0, K4, PA0)
        run(pt.mkold(0, K4))
        steps, res = do_map(pt, mc, 0, K4, PA0)
        assert res.rc == 0 and not res.unchanged and not res.perm_only
        assert kinds(steps) == ["write", "tlbi", "dsb", "tlbi", "dsb", "write"]
        assert xlate(m, pt, 0).pa == PA0
