"""Stage-2 descriptor encode/decode.

Bit positions are written out here from the Arm ARM (DDI 0487), "VMSAv8-64
translation table format descriptors" and "Stage 2 memory region attributes"
(not from s2sim's constants):
  bit 0 valid; bit 1 type (levels 0-2: 1 table / 0 block; level 3: 1 page,
  0 reserved); MemAttr[3:0] = bits [5:2]; S2AP[1:0] = bits [7:6] (bit 6 read,
  bit 7 write); SH[1:0] = bits [9:8]; AF = bit 10; nT = bit 16 (FEAT_BBM,
  blocks); output address [47:n]; DBM = bit 51; Contiguous = bit 52;
  XN = bit 54 (XN[1:0] = [54:53] with FEAT_XNX); software use [58:55].
KVM's attributes (arch/arm64/kvm/hyp/pgtable.c, stage2_set_prot_attr and
KVM_S2_MEMATTR): Normal WB MemAttr 0b1111, Device nGnRE 0b0001, with FWB
Normal 0b0110; SH inner shareable 0b11; AF set.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2sim.arch import descriptors as d
from s2sim.arch.geometry import Geometry
from s2sim.errors import DescriptorError

GEOS = {g: Geometry.make(g, 48) for g in ("4K", "16K", "64K")}
SHIFT = {"4K": 12, "16K": 14, "64K": 16}
# Leaf levels per granule in a 48-bit geometry (Arm ARM "Block descriptor").
LEAF_LEVELS = {"4K": (1, 2, 3), "16K": (2, 3), "64K": (2, 3)}


def lvl_shift(granule: str, level: int) -> int:
    s = SHIFT[granule]
    return s + (3 - level) * (s - 3)


@st.composite
def leaf_case(draw):
    granule = draw(st.sampled_from(sorted(GEOS)))
    level = draw(st.sampled_from(LEAF_LEVELS[granule]))
    shift = lvl_shift(granule, level)
    pa = draw(st.integers(0, (1 << (48 - shift)) - 1)) << shift
    f = {
        "memattr": draw(st.integers(0, 15)),
        "s2ap": draw(st.integers(0, 3)),
        "sh": draw(st.sampled_from([0b00, 0b10, 0b11])),
        "af": draw(st.integers(0, 1)),
        "xn": draw(st.integers(0, 1)),
        "dbm": draw(st.integers(0, 1)),
        "contiguous": draw(st.integers(0, 1)),
        "sw": draw(st.integers(0, 15)),
        "nt": draw(st.integers(0, 1)) if level < 3 else 0,
    }
    return granule, level, pa, f


def attrs_from_fields(f: dict) -> int:
    return ((f["memattr"] << 2) | (f["s2ap"] << 6) | (f["sh"] << 8) | (f["af"] << 10)
            | (f["nt"] << 16) | (f["dbm"] << 51) | (f["contiguous"] << 52) | (f["xn"] << 54)
            | (f["sw"] << 55))


@settings(max_examples=400, deadline=None)
@given(leaf_case())
def test_leaf_round_trip(case) -> None:
    granule, level, pa, f = case
    geo = GEOS[granule]
    attrs = attrs_from_fields(f)
    value = d.make_leaf(pa, level, attrs)
    type_bits = 0b11 if level == 3 else 0b01
    assert value == pa | attrs | type_bits
    assert d.is_valid(value) and d.is_leaf(value, level) and not d.is_table(value, level)
    dec = d.decode(value, level, geo)
    assert dec.type == ("page" if level == 3 else "block")
    assert dec.output_address == pa
    assert dec.size == 1 << lvl_shift(granule, level)
    for name in ("memattr", "s2ap", "sh", "af", "xn", "dbm", "contiguous", "sw", "nt"):
        assert getattr(dec, name) == f[name], name
    # Permissions: S2AP bit 0 read, bit 1 write; executable unless XN.
    prot = d.prot_of(value)
    assert bool(prot & d.PERM_R) == bool(f["s2ap"] & 1)
    assert bool(prot & d.PERM_W) == bool(f["s2ap"] & 2)
    assert bool(prot & d.PERM_X) == (not f["xn"])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(GEOS)), st.integers(0, 2), st.data())
def test_table_round_trip(granule, level, data) -> None:
    geo = GEOS[granule]
    level = max(level, geo.start_level)
    shift = SHIFT[granule]
    pa = data.draw(st.integers(0, (1 << (48 - shift)) - 1)) << shift
    value = d.make_table(pa)
    assert value == pa | 0b11  # stage-2 table descriptors carry no attributes
    assert d.is_table(value, level) and not d.is_leaf(value, level)
    dec = d.decode(value, level, geo)
    assert dec.type == "table" and dec.output_address == pa


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(GEOS)), st.data(), st.integers(0, 7), st.booleans(),
       st.booleans())
def test_kvm_leaf_attrs(granule, data, prot, fwb, device) -> None:
    geo = GEOS[granule]
    level = data.draw(st.sampled_from(LEAF_LEVELS[granule]))
    shift = lvl_shift(granule, level)
    pa = data.draw(st.integers(0, (1 << (48 - shift)) - 1)) << shift
    value = d.make_leaf(pa, level, d.leaf_attrs(prot, fwb=fwb, device=device))
    dec = d.decode(value, level, geo, fwb=fwb)
    assert dec.output_address == pa
    assert dec.af == 1 and dec.sh == 0b11
    if fwb:
        assert dec.memattr == (0b0001 if device else 0b0110)
    else:
        assert dec.memattr == (0b0001 if device else 0b1111)
    assert dec.s2ap == (1 if prot & 1 else 0) | (2 if prot & 2 else 0)
    assert dec.xn == (0 if prot & 4 else 1)
    assert d.prot_of(value) == prot
    assert d.is_cacheable(value, fwb) == (not device)


def test_decode_known_values() -> None:
    geo = GEOS["4K"]
    # A 4K page, RW, Normal WB, inner shareable, AF, XN at PA 0x12345000.
    dec = d.decode(0x00400000123457FF, 3, geo)
    assert (dec.type, dec.output_address, dec.s2ap, dec.memattr, dec.sh, dec.af, dec.xn) == (
        "page", 0x12345000, 0b11, 0b1111, 0b11, 1, 1)
    assert dec.memattr_name == "Normal-OWB-IWB"
    # The README's example: a level-2 block (bits[1:0]=01) at 0x40000000, read-only-ish.
    dec = d.decode(0x400000400007FD, 2, geo)
    assert dec.type == "block" and dec.output_address == 0x40000000 and dec.size == 2 << 20
    assert dec.xn == 1 and dec.s2ap == 0b11
    # Device nGnRE page, read-only, no AF.
    dec = d.decode(0x0000000080000000 | (0b0001 << 2) | (0b01 << 6) | 0b11, 3, geo)
    assert dec.memattr_name == "Device-nGnRE" and dec.s2ap == 1 and dec.af == 0
    # With FWB, MemAttr[2:0]=0b110 is Normal WB (forced).
    dec = d.decode(0x80000000 | (0b0110 << 2) | (1 << 10) | 0b11, 3, geo, fwb=True)
    assert dec.memattr_name == "Normal-WB(forced)"


@pytest.mark.parametrize("granule,level", [(g, lvl) for g in sorted(GEOS)
                                           for lvl in range(GEOS[g].start_level, 4)])
def test_invalid_descriptor_decodes_invalid(granule, level) -> None:
    geo = GEOS[granule]
    for value in (0, 0xFFFF_FFFF_FFFF_FFFE, 0x40000000 | 0x7FC):  # bit 0 clear
        assert d.decode(value, level, geo).type == "invalid"
        assert not d.is_valid(value) and not d.is_leaf(value, level)


@pytest.mark.parametrize("granule", sorted(GEOS))
def test_level3_reserved_encoding(granule) -> None:
    # Arm ARM: at level 3, bits[1:0] = 0b01 is reserved (treated as invalid by walks).
    geo = GEOS[granule]
    value = (0x40000 << SHIFT[granule]) | (1 << 10) | (0b11 << 6) | 0b01
    with pytest.raises(DescriptorError):
        d.decode(value, 3, geo)
    assert d.decode(value, 3, geo, strict=False).type == "invalid"
    assert not d.is_leaf(value, 3) and not d.is_table(value, 3)


@pytest.mark.parametrize("granule,level", [("4K", 0), ("16K", 1), ("64K", 1)])
def test_block_at_level_without_blocks(granule, level) -> None:
    # Arm ARM: no level-0 blocks with 4KB; no level-1 blocks with 16KB/64KB (without LPA).
    geo = GEOS[granule]
    assert geo.start_level <= level
    value = (1 << 10) | (0b11 << 6) | 0b01  # OA 0, a block encoding
    with pytest.raises(DescriptorError):
        d.decode(value, level, geo)
    assert d.decode(value, level, geo, strict=False).type == "invalid"


def test_value_out_of_range() -> None:
    geo = GEOS["4K"]
    for value in (1 << 64, (1 << 64) + 3, -1):
        with pytest.raises(DescriptorError):
            d.decode(value, 3, geo)
    assert d.decode((1 << 64) - 1, 3, geo, strict=False).type == "page"


def test_level_outside_geometry() -> None:
    geo = Geometry.make("4K", 40)  # levels 1..3
    with pytest.raises(DescriptorError):
        d.decode(0x3, 0, geo)
    with pytest.raises(DescriptorError):
        d.decode(0x3, 4, geo)


def test_res0_bits_rejected_when_strict() -> None:
    g4, g16, g64 = GEOS["4K"], GEOS["16K"], GEOS["64K"]
    # A 2 MiB block has bits [20:17] RES0 (bit 16 is nT).
    blk = 0x40000000 | (1 << 10) | 0b01
    assert d.decode(blk | (1 << 16), 2, g4).nt == 1
    with pytest.raises(DescriptorError):
        d.decode(blk | (1 << 17), 2, g4)
    # A 16K table address is 16K aligned: bits [13:12] must be zero.
    with pytest.raises(DescriptorError):
        d.decode(0x40000000 | (1 << 12) | 0b11, 2, g16)
    # A 64K table address is 64K aligned: bits [15:12] must be zero.
    with pytest.raises(DescriptorError):
        d.decode(0x40000000 | (1 << 13) | 0b11, 2, g64)
    # Non-strict decode still masks the address to the granule.
    assert d.decode(0x40000000 | (1 << 13) | 0b11, 2, g64, strict=False).output_address == (
        0x40000000)


def test_xnx_two_bit_field() -> None:
    geo = Geometry.make("4K", 40, xnx=True)
    value = d.make_leaf(0x1000, 3, (1 << 10) | (0b10 << 53))
    assert d.decode(value, 3, geo).xn == 0b10


@pytest.mark.parametrize("text,prot", [("rwx", 7), ("rw", 3), ("r", 1), ("x", 4), ("none", 0),
                                       ("r-x", 5), ("---", 0)])
def test_parse_prot(text, prot) -> None:
    assert d.parse_prot(text) == prot
    assert d.prot_str(prot).replace("-", "") == text.replace("-", "").replace("none", "")


def test_parse_prot_rejects() -> None:
    with pytest.raises(DescriptorError):
        d.parse_prot("rwz")


def test_describe_is_human_readable() -> None:
    geo = GEOS["4K"]
    assert d.describe(0, 3, geo) == "invalid"
    assert d.describe(d.make_table(0x5000), 2, geo) == "table -> 0x5000"
    s = d.describe(d.make_leaf(0x200000, 2, d.leaf_attrs(d.PERM_R)), 2, geo)
    assert s.startswith("block 0x200000 r--")
