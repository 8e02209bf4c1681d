"""KVM's generic page-table walker (kvm/walker.py) with custom visitors.

Behaviour asserted here is KVM v5.11's __kvm_pgtable_visit /
__kvm_pgtable_walk / _kvm_pgtable_walk (arch/arm64/kvm/hyp/pgtable.c):

- the entry is read once (``pte = *ptep``) before TABLE_PRE and the walk
  descends by *that* value, so a TABLE_PRE visitor may overwrite the entry
  and the walk still goes through the old subtree (the seed relies on it);
- TABLE_POST is given ``ptep`` and reads the entry as it is by then;
- after LEAF the entry is re-read: a LEAF visitor that installed a table
  makes the walk descend into it (how map builds missing levels);
- a non-zero return stops the walk and is propagated;
- the walk visits entries in IPA order, across all concatenated start-level
  tables (4K granule / 40-bit IPA: 2 concatenated level-1 tables).
"""

from __future__ import annotations

import pytest

from s2sim.arch import descriptors as d
from s2sim.arch.geometry import Geometry
from s2sim.arch.machine import Machine
from s2sim.kvm import walker as w
from s2sim.kvm.memcache import Memcache
from s2sim.kvm.pgtable import Stage2PageTable, run

K4, M2, G1 = 1 << 12, 1 << 21, 1 << 30
G512 = 512 * G1
RW = d.PERM_R | d.PERM_W


def make(granule: str = "4K", ipa_bits: int = 40):
    m = Machine(Geometry.make(granule, ipa_bits))
    pt = Stage2PageTable(m, 1, "v5.11")
    return m, pt, Memcache(m)


def map_pages(pt, mc, ipas, pa_base=0x8000_0000):
    for i, ipa in enumerate(ipas):
        mc.topup(pt.geo.levels - 1)
        _, res = run(pt.map(ipa, K4, pa_base + i * K4, RW, mc))
        assert res.rc == 0 and res.leaves == 1


def drive(gen):
    """Drain a walk generator; return (steps, rc)."""
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as e:
            return steps, e.value


class Recorder:
    """A visitor recording (flag, addr, level, table pa, index, entry value now)."""

    def __init__(self, hook=None):
        self.log = []
        self.hook = hook

    def __call__(self, flag, addr, end, level, page, idx):
        self.log.append((flag, addr, level, page.pa, idx, page.entries[idx]))
        rc = w.OK
        if self.hook is not None:
            rc = yield from self.hook(flag, addr, end, level, page, idx)
        return rc


def leaf_pages(log):
    """IPAs of the valid level-3 page entries the walk visited as LEAF."""
    return [a for f, a, lvl, _pa, _i, v in log if f == w.LEAF and lvl == 3 and v & 1]


ALL = w.TABLE_PRE | w.LEAF | w.TABLE_POST


def test_geometry_of_the_cases_here():
    m, _pt, _ = make()
    assert m.geo.start_level == 1 and m.geo.concatenated_tables == 2


def test_table_pre_overwrite_still_descends_through_old_subtree():
    m, pt, mc = make()
    ipas = [0x4000_0000 + i * K4 for i in range(4)]
    map_pages(pt, mc, ipas)
    l2 = m.mem.tables[m.mem.tables[pt.vttbr.baddr].entries[1] & m.geo.table_mask]
    old_l2_entry = l2.entries[0]
    assert d.is_table(old_l2_entry, 2)

    def hook(flag, addr, end, level, page, idx):
        if flag == w.TABLE_PRE and level == 2:
            m.write(page, idx, 0, addr)
        return w.OK
        yield  # pragma: no cover - makes this a generator

    rec = Recorder(hook)
    _, rc = drive(w.Walker(m, rec, ALL).walk(pt.vttbr.baddr, 0x4000_0000, 4 * K4))
    assert rc == w.OK
    # The entry is gone from the table ...
    assert l2.entries[0] == 0
    # ... but the walk went through the old level-3 table and saw every page.
    assert leaf_pages(rec.log) == ipas
    old_child = old_l2_entry & m.geo.table_mask
    assert {pa for f, a, lvl, pa, i, v in rec.log if lvl == 3} == {old_child}
    # TABLE_POST of that entry reads its value as it is now: 0, not the saved table.
    posts = [(lvl, v) for f, a, lvl, pa, i, v in rec.log if f == w.TABLE_POST]
    assert (2, 0) in posts
    pres = [(lvl, v) for f, a, lvl, pa, i, v in rec.log if f == w.TABLE_PRE]
    assert (2, old_l2_entry) in pres


def test_table_post_sees_the_current_value_of_the_entry():
    m, pt, mc = make()
    map_pages(pt, mc, [0])
    marker = d.make_table(0x1234_5000)

    def hook(flag, addr, end, level, page, idx):
        # a LEAF visitor at level 3 rewrites the level-2 entry above it
        if flag == w.LEAF and level == 3:
            root = m.mem.tables[pt.vttbr.baddr]
            l2 = m.mem.tables[root.entries[0] & m.geo.table_mask]
            m.write(l2, 0, marker, 0)
        return w.OK
        yield  # pragma: no cover

    rec = Recorder(hook)
    _, rc = drive(w.Walker(m, rec, ALL).walk(pt.vttbr.baddr, 0, K4))
    assert rc == w.OK
    post_l2 = [v for f, a, lvl, pa, i, v in rec.log if f == w.TABLE_POST and lvl == 2]
    assert post_l2 == [marker]


def test_leaf_visitor_installing_a_table_makes_the_walk_descend():
    m, pt, mc = make()
    mc.topup(2)
    assert m.mem.tables[pt.vttbr.baddr].entries[0] == 0

    def hook(flag, addr, end, level, page, idx):
        if flag == w.LEAF and level < 3 and not page.entries[idx] & 1:
            child = mc.take(level + 1)
            m.write(page, idx, d.make_table(child.pa), addr)
        return w.OK
        yield  # pragma: no cover

    rec = Recorder(hook)
    _, rc = drive(w.Walker(m, rec, w.LEAF | w.TABLE_POST).walk(pt.vttbr.baddr, 0, K4))
    assert rc == w.OK
    # LEAF at 1 installs a level-2 table, the walk goes into it, LEAF at 2 installs
    # a level-3 table, the walk goes into it: one LEAF per level, then the posts.
    assert [(f, lvl) for f, a, lvl, pa, i, v in rec.log] == [
        (w.LEAF, 1), (w.LEAF, 2), (w.LEAF, 3), (w.TABLE_POST, 2), (w.TABLE_POST, 1)]
    assert len(mc) == 0


def test_negative_errno_from_a_leaf_stops_the_walk_and_propagates():
    m, pt, mc = make()
    ipas = [i * K4 for i in range(6)]
    map_pages(pt, mc, ipas)

    def hook(flag, addr, end, level, page, idx):
        if flag == w.LEAF and level == 3 and addr == 2 * K4:
            return w.EINVAL
        return w.OK
        yield  # pragma: no cover

    rec = Recorder(hook)
    _, rc = drive(w.Walker(m, rec, ALL).walk(pt.vttbr.baddr, 0, 6 * K4))
    assert rc == w.EINVAL
    assert leaf_pages(rec.log) == [0, K4, 2 * K4]   # nothing after the failing entry
    assert not [1 for f, *_ in rec.log if f == w.TABLE_POST]  # no post-visits either


def test_negative_errno_from_table_pre_prevents_descent():
    m, pt, mc = make()
    map_pages(pt, mc, [0, K4])

    def hook(flag, addr, end, level, page, idx):
        if flag == w.TABLE_PRE and level == 2:
            return w.ENOMEM
        return w.OK
        yield  # pragma: no cover

    rec = Recorder(hook)
    _, rc = drive(w.Walker(m, rec, ALL).walk(pt.vttbr.baddr, 0, 2 * K4))
    assert rc == w.ENOMEM
    assert [(f, lvl) for f, a, lvl, *_ in rec.log] == [(w.TABLE_PRE, 1), (w.TABLE_PRE, 2)]


def test_errno_from_table_post_propagates_through_the_parents():
    m, pt, mc = make()
    map_pages(pt, mc, [0, M2])  # two level-3 tables under one level-2 table

    def hook(flag, addr, end, level, page, idx):
        if flag == w.TABLE_POST and level == 2:
            return w.EAGAIN
        return w.OK
        yield  # pragma: no cover

    rec = Recorder(hook)
    _, rc = drive(w.Walker(m, rec, ALL).walk(pt.vttbr.baddr, 0, 4 * M2))
    assert rc == w.EAGAIN
    # the second level-3 table (at 2M) is never visited; level 1 gets no post
    assert leaf_pages(rec.log) == [0]
    assert [(f, lvl) for f, a, lvl, *_ in rec.log if f == w.TABLE_POST] == [(w.TABLE_POST, 2)]


def test_visit_order_across_two_tables():
    m, pt, mc = make()
    ipas = [M2 - 2 * K4, M2 - K4, M2, M2 + K4]
    map_pages(pt, mc, ipas)
    rec = Recorder()
    _, rc = drive(w.Walker(m, rec, ALL).walk(pt.vttbr.baddr, M2 - 2 * K4, 4 * K4))
    assert rc == w.OK
    seq = [(f, lvl, i) for f, a, lvl, pa, i, v in rec.log]
    assert seq == [
        (w.TABLE_PRE, 1, 0),
        (w.TABLE_PRE, 2, 0), (w.LEAF, 3, 510), (w.LEAF, 3, 511), (w.TABLE_POST, 2, 0),
        (w.TABLE_PRE, 2, 1), (w.LEAF, 3, 0), (w.LEAF, 3, 1), (w.TABLE_POST, 2, 1),
        (w.TABLE_POST, 1, 0),
    ]
    assert leaf_pages(rec.log) == ipas
    # the two level-3 leaves groups live in two different table pages
    l3_pages = [pa for f, a, lvl, pa, i, v in rec.log if lvl == 3]
    assert l3_pages[0] == l3_pages[1] != l3_pages[2] == l3_pages[3]
    # every visitor call got the address of its entry (IPA order)
    addrs = [a for f, a, lvl, *_ in rec.log if f != w.TABLE_POST]
    assert addrs == sorted(addrs)


def test_visit_order_across_concatenated_root_tables():
    m, pt, mc = make()
    root = pt.vttbr.baddr
    ipas = [G512 - K4, G512, G512 + K4]  # last page of root page 0, first of page 1
    map_pages(pt, mc, ipas)
    # both root pages now point to a level-2 table
    assert d.is_table(m.mem.tables[root].entries[511], 1)
    assert d.is_table(m.mem.tables[root + K4].entries[0], 1)
    rec = Recorder()
    _, rc = drive(w.Walker(m, rec, ALL).walk(root, G512 - K4, 3 * K4))
    assert rc == w.OK
    assert leaf_pages(rec.log) == ipas
    l1 = [(f, pa, i) for f, a, lvl, pa, i, v in rec.log if lvl == 1]
    assert l1 == [(w.TABLE_PRE, root, 511), (w.TABLE_POST, root, 511),
                  (w.TABLE_PRE, root + K4, 0), (w.TABLE_POST, root + K4, 0)]


def test_full_walk_visits_every_level1_entry_of_both_root_pages():
    m, pt, mc = make()
    map_pages(pt, mc, [0, G512 + 3 * G1 + 5 * K4])
    rec = Recorder()
    _, rc = drive(w.Walker(m, rec, w.LEAF).walk(pt.vttbr.baddr, 0, 1 << 40))
    assert rc == w.OK
    l1 = [(pa, i) for f, a, lvl, pa, i, v in rec.log if lvl == 1]
    # 1024 level-1 entries minus the two that are tables (LEAF is not called on those)
    assert len(l1) == 1024 - 2
    assert leaf_pages(rec.log) == [0, G512 + 3 * G1 + 5 * K4]
    addrs = [a for f, a, *_ in rec.log]
    assert addrs == sorted(addrs) and len(set(addrs)) == len(addrs)


def test_walker_counts_visits_and_rounds_the_range_to_pages():
    m, pt, mc = make()
    map_pages(pt, mc, [0, K4])
    rec = Recorder()
    wk = w.Walker(m, rec, w.LEAF)
    _, rc = drive(wk.walk(pt.vttbr.baddr, 0x10, K4))  # [0x10, 0x1010) touches 2 pages
    assert rc == w.OK
    assert leaf_pages(rec.log) == [0, K4]
    assert wk.visits == 2 + 2  # L1 table, L2 table, two L3 entries


@pytest.mark.parametrize("granule,ipa_bits", [("16K", 40), ("64K", 44)])
def test_concatenated_root_walk_other_granules(granule, ipa_bits):
    m, pt, mc = make(granule, ipa_bits)
    geo = m.geo
    g = geo.granule_size
    top = geo.ipa_limit - g
    for i, ipa in enumerate([0, top]):
        mc.topup(geo.levels - 1)
        _, res = run(pt.map(ipa, g, 0x8000_0000 + i * g, RW, mc))
        assert res.rc == 0
    rec = Recorder()
    _, rc = drive(w.Walker(m, rec, w.LEAF).walk(pt.vttbr.baddr, 0, geo.ipa_limit))
    assert rc == w.OK
    pages = [a for f, a, lvl, pa, i, v in rec.log if lvl == 3 and v & 1]
    assert pages == [0, top]
    start_pages = {pa for f, a, lvl, pa, i, v in rec.log if lvl == geo.start_level}
    assert len(start_pages) == geo.concatenated_tables


@pytest.mark.parametrize("start, size", [(0, 4 * M2), (5 * K4 + 0x10, 3 * M2 - 9 * K4),
                                         (M2 + 510 * K4, 2 * K4), (G1 - M2, 2 * M2)])
def test_skip_invalid_visits_and_effects(start, size):
    # a visitor that ignores invalid entries (stage2_update_leaf_attrs): stepping over
    # runs of them at once counts the same visits and leaves the same entries as
    # visiting each one
    out = []
    for skip in (False, True):
        m, pt, mc = make()
        map_pages(pt, mc, [0, 7 * K4, M2 + 300 * K4, M2 + 511 * K4, 3 * M2, G1 - K4, G1])
        seen = []

        def visit(flag, a, end, level, page, idx):
            pte = page.entries[idx]
            if not pte & 1:
                return w.OK
            seen.append((a, level))
            page.entries[idx] = pte & ~d.S2AP_W
            return w.OK
            yield  # (a generator, as visitors are)

        wk = w.Walker(m, visit, w.LEAF, skip_invalid=skip)
        _, rc = drive(wk.walk(pt.vttbr.baddr, start, size))
        tables = sorted((pa, bytes(p.entries)) for pa, p in m.mem.tables.items())
        out.append((rc, wk.visits, wk.addr, seen, tables))
    assert out[0] == out[1]
    assert out[1][3], "the range holds valid leaves"
