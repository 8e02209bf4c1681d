"""Coalescing strategies (kvm/coalesce.py): same final table, documented step order.

Orders (docs: DOMAIN.md sections 2 and 4):
- unmap-first (v5.11): invalidate the table entry, TLBI VMALLS12E1IS, DSB,
  tear the old subtree down, [CMO of the block with patch 1's placement],
  install the block;
- block-first-nocmo (the RFC as posted): break, TLBI, DSB, block, teardown,
  no CMO at all;
- block-first (mainline 6.2): break, TLBI, DSB, CMO, block, teardown;
- cmo-first: CMO, break, TLBI, DSB, block, teardown;
- bbml2 (FEAT_BBM level 2): CMO, block written over the valid table entry
  (no break), TLBI, DSB, teardown.
The v5.11 preset cleans in the fault handler, so its map path never cleans;
with FEAT_S2FWB no strategy cleans.
"""

from __future__ import annotations

import pytest

from s2sim.arch import descriptors as d
from s2sim.arch.geometry import Geometry
from s2sim.arch.machine import Machine
from s2sim.arch.tlb import VMALLS12E1IS
from s2sim.arch.walk import READ, TRANSLATION, Fault, Translation, walk
from s2sim.errors import ConfigError
from s2sim.kvm.coalesce import CMO_FAULT, CMO_MAP, STRATEGIES, VARIANTS, variant
from s2sim.kvm.memcache import Memcache
from s2sim.kvm.opsrun import dump_table
from s2sim.kvm.pgtable import Stage2PageTable, run
from s2sim.kvm.steps import Teardown

K4, M2, G1 = 1 << 12, 1 << 21, 1 << 30
RW = d.PERM_R | d.PERM_W
IPA, PA = G1 + 4 * M2, 0x2_0000_0000 + 6 * M2

EXPECTED = {
    # strategy -> step order (cmo placement "map", no FWB); "break"/"block" are writes
    "unmap-first": ["break", "tlbi", "dsb", "teardown", "cmo", "block"],
    "block-first-nocmo": ["break", "tlbi", "dsb", "block", "teardown"],
    "block-first": ["break", "tlbi", "dsb", "cmo", "block", "teardown"],
    "cmo-first": ["cmo", "break", "tlbi", "dsb", "block", "teardown"],
    "bbml2": ["cmo", "block", "tlbi", "dsb", "teardown"],
}


def build(strategy, cmo=CMO_MAP, fwb=False):
    m = Machine(Geometry.make("4K", 40), fwb=fwb)
    pt = Stage2PageTable(m, 1, variant("v5.11", coalesce=strategy, cmo=cmo))
    mc = Memcache(m)
    return m, pt, mc


def fill_pages(pt, mc, ipa, size, pa):
    """Map [ipa, ipa+size) one 4K page at a time, as faults under dirty logging do."""
    steps = []
    for off in range(0, size, K4):
        mc.topup(2)
        st, res = run(pt.map(ipa + off, K4, pa + off, RW, mc))
        assert res.rc == 0 and res.leaves == 1
        steps += st
    return steps


def labelled(steps):
    out = []
    for s in steps:
        if s.kind == "visit":
            continue
        if s.kind == "write":
            out.append("break" if s.note == "break" else "block")
        else:
            out.append(s.kind)
    return out


def coalesce_2m(strategy, cmo=CMO_MAP, fwb=False, probe=None):
    m, pt, mc = build(strategy, cmo, fwb)
    fill_steps = fill_pages(pt, mc, IPA, M2, PA)
    mc.topup(2)
    gen = pt.map(IPA, M2, PA, RW, mc)
    steps = []
    while True:
        try:
            s = next(gen)
        except StopIteration as e:
            res = e.value
            break
        steps.append(s)
        if probe is not None:
            probe(m, pt, s)
    return m, pt, mc, fill_steps, steps, res


@pytest.mark.parametrize("strategy", list(EXPECTED))
def test_step_order_2m(strategy):
    m, _pt, _mc, _, steps, res = coalesce_2m(strategy)
    assert res.rc == 0 and res.coalesced == 1 and res.level == 2
    assert labelled(steps) == EXPECTED[strategy]
    s = [x for x in steps if x.kind != "visit"]
    writes = [x for x in s if x.kind == "write"]
    tlbi = [x for x in s if x.kind == "tlbi"]
    assert [x.tlbi for x in tlbi] == [VMALLS12E1IS]
    block = writes[-1]
    assert block.level == 2 and d.is_leaf(block.new, 2)
    assert block.new & d.oa_mask(m.geo, 2) == PA
    if strategy == "bbml2":
        assert len(writes) == 1 and d.is_table(block.old, 2)   # table -> block directly
    else:
        brk = writes[0]
        assert d.is_table(brk.old, 2) and brk.new == brk.old & ~1
        assert block.old == brk.new
    td = next(x for x in s if x.kind == "teardown")
    assert td.pa == writes[0].old & m.geo.table_mask
    assert (td.pages, td.entries) == (1, 512)
    cmo = [(x.pa, x.size) for x in s if x.kind == "cmo"]
    assert cmo == ([] if strategy == "block-first-nocmo" else [(PA, M2)])


@pytest.mark.parametrize("strategy", list(EXPECTED))
def test_what_a_walker_sees_during_the_coalesce(strategy):
    """A step is yielded before its effect: probing at each yield shows what other
    CPUs' walks see while that step is in progress."""
    during = []

    def probe(m, pt, s):
        t = walk(m.mem, m.geo, pt.vttbr.baddr, IPA + 7 * K4, READ)
        during.append((labelled([s])[0] if s.kind != "visit" else "visit", t))

    m, pt, *_ = coalesce_2m(strategy, probe=probe)
    seen = {k: t for k, t in during}
    invalid = [k for k, t in during if isinstance(t, Fault)]
    for k, t in during:
        if isinstance(t, Fault):
            assert t.kind == TRANSLATION and t.level == 2
        else:
            assert t.pa == PA + 7 * K4 and t.level in (2, 3)
    # The old subtree is freed only once nothing reaches it from the root; under
    # unmap-first the entry is invalid for the whole teardown (the seed's point).
    td = seen["teardown"]
    if strategy == "unmap-first":
        assert isinstance(td, Fault)
        assert invalid == ["tlbi", "dsb", "teardown", "cmo", "block"]
    elif strategy == "bbml2":
        assert invalid == []                       # no invalid window at all
        assert isinstance(td, Translation) and td.level == 2
        assert seen["block"].level == 3            # written over the live table
    else:
        assert isinstance(td, Translation) and td.level == 2
        assert invalid == [k for k in EXPECTED[strategy][EXPECTED[strategy].index("break") + 1:
                                                         EXPECTED[strategy].index("block") + 1]]
    if strategy in ("cmo-first", "bbml2"):         # cleaned while the old pages serve
        assert isinstance(seen["cmo"], Translation) and seen["cmo"].level == 3
    elif "cmo" in seen:                            # cleaned while the entry is invalid
        assert isinstance(seen["cmo"], Fault)
    # during the break write itself the old table is still there
    if "break" in seen:
        assert isinstance(seen["break"], Translation) and seen["break"].level == 3
    # after the operation: the block
    t = walk(m.mem, m.geo, pt.vttbr.baddr, IPA + 7 * K4, READ)
    assert isinstance(t, Translation) and t.level == 2


def test_v511_preset_never_cleans_in_map():
    assert VARIANTS["v5.11"].cmo == CMO_FAULT
    m, pt, mc, fill, steps, res = coalesce_2m("unmap-first", cmo=CMO_FAULT)
    assert "cmo" not in labelled(fill) and "cmo" not in labelled(steps)
    assert labelled(steps) == ["break", "tlbi", "dsb", "teardown", "block"]
    # ... and the preset itself
    m = Machine(Geometry.make("4K", 40))
    pt, mc = Stage2PageTable(m, 1, "v5.11"), Memcache(m)
    fill = fill_pages(pt, mc, IPA, 4 * K4, PA)
    mc.topup(2)
    st, res = run(pt.map(G1, G1, 0x4000_0000, RW, mc))   # coalesces the 1G region
    assert "cmo" not in labelled(fill + st) and res.coalesced == 1 and res.level == 1


@pytest.mark.parametrize("strategy", list(EXPECTED))
def test_no_cmo_with_fwb(strategy):
    m, _pt, _mc, fill, steps, res = coalesce_2m(strategy, fwb=True)
    assert res.coalesced == 1
    assert "cmo" not in labelled(fill) and "cmo" not in labelled(steps)
    assert labelled(steps) == [k for k in EXPECTED[strategy] if k != "cmo"]
    assert m.counts["cmo_bytes"] == 0


SAFE_VARIANTS = [n for n, v in VARIANTS.items() if not getattr(v, "unsafe", False)]


@pytest.mark.parametrize("name", SAFE_VARIANTS)
def test_no_cmo_with_fwb_presets(name):
    m = Machine(Geometry.make("4K", 40), fwb=True)
    pt, mc = Stage2PageTable(m, 1, name), Memcache(m)
    fill = fill_pages(pt, mc, IPA, 8 * K4, PA)
    mc.topup(2)
    st, _ = run(pt.map(IPA, M2, PA, RW, mc))
    st2, _ = run(pt.unmap(IPA, M2))
    assert "cmo" not in labelled(fill + st + st2)
    assert m.counts["cmo_bytes"] == 0


def test_final_table_identical_across_strategies_2m():
    tables = {}
    for strategy in EXPECTED:
        m, pt, mc, _, _, _ = coalesce_2m(strategy)
        tables[strategy] = dump_table(pt)
        t = tables[strategy]
        assert [(e["level"], e["type"]) for e in t] == [(1, "table"), (2, "block")]
        assert len(m.mem.tables) == 3 + len(mc)   # 2 root pages + the L2 table
        for i in (0, 255, 511):
            x = walk(m.mem, m.geo, pt.vttbr.baddr, IPA + i * K4, READ)
            assert isinstance(x, Translation) and x.level == 2 and x.pa == PA + i * K4
    first = tables["unmap-first"]
    assert all(t == first for t in tables.values())


def _mixed_1g(pt, mc):
    """A 1 GiB region holding 2M blocks and two regions of 4K pages (after dirty logging)."""
    base = G1
    pa = 0x4_0000_0000
    for r in range(512):
        if r in (3, 300):
            fill_pages(pt, mc, base + r * M2, 16 * K4, pa + r * M2)
        elif r % 2 == 0:
            mc.topup(2)
            run(pt.map(base + r * M2, M2, pa + r * M2, RW, mc))
    return base, pa


def test_final_table_identical_across_strategies_1g_multi_level():
    tables = {}
    for strategy in EXPECTED:
        m, pt, mc = build(strategy)
        base, pa = _mixed_1g(pt, mc)
        got: list = []
        m.bus.subscribe(got.append, kinds=[Teardown.kind])
        mc.topup(2)
        steps, res = run(pt.map(base, G1, pa, RW, mc))
        assert res.rc == 0 and res.coalesced == 1 and res.level == 1
        td = [s for s in steps if s.kind == "teardown"]
        assert len(td) == 1
        # the L2 table and the two L3 tables; valid entries: the 2M blocks, the two
        # table entries and 16 pages under each
        assert td[0].pages == 3
        assert td[0].entries == len([r for r in range(512) if r % 2 == 0 and r not in (3, 300)]) \
            + 2 + 2 * 16
        assert len(got) == 1 and isinstance(got[0], Teardown) and got[0].pages == 3
        tables[strategy] = dump_table(pt)
        assert [(e["level"], e["type"]) for e in tables[strategy]] == [(1, "block")]
        x = walk(m.mem, m.geo, pt.vttbr.baddr, base + 300 * M2 + 5 * K4, READ)
        assert isinstance(x, Translation) and x.level == 1 and x.pa == pa + 300 * M2 + 5 * K4
        assert set(m.mem.tables) == {pt.vttbr.baddr, pt.vttbr.baddr + K4} | {
            p.pa for p in mc.pages}
    first = tables["unmap-first"]
    assert all(t == first for t in tables.values())


def test_variant_lookup_and_overrides():
    assert set(EXPECTED) <= set(STRATEGIES)
    assert not any(STRATEGIES[n].unsafe for n in EXPECTED)
    assert {n: VARIANTS[n].coalesce for n in ("v5.11", "patch1", "rfc", "block-first",
                                              "cmo-first", "bbml2")} == {
        "v5.11": "unmap-first", "patch1": "unmap-first", "rfc": "block-first-nocmo",
        "block-first": "block-first", "cmo-first": "cmo-first", "bbml2": "bbml2"}
    assert VARIANTS["rfc"].coalesce == "block-first-nocmo" and VARIANTS["rfc"].cmo == CMO_MAP
    assert VARIANTS["patch1"].coalesce == "unmap-first" and VARIANTS["patch1"].cmo == CMO_MAP
    v = variant("v5.11", coalesce="bbml2")
    assert v.coalesce == "bbml2" and v.cmo == CMO_FAULT
    assert variant("rfc") is VARIANTS["rfc"]
    for bad in (lambda: variant("v9"), lambda: variant("rfc", coalesce="x"),
                lambda: variant("rfc", cmo="never")):
        with pytest.raises(ConfigError):
            bad()
