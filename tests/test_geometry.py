"""Stage-2 geometry: levels, start level, concatenation, block sizes, VTCR_EL2.

Sources:
- Arm ARM (DDI 0487), "Translation granule size", "Translation table walks /
  Resolving the IPA", "Concatenated translation tables" (stage 2 may start one
  level lower by concatenating up to 16 tables), "Block descriptor" (which
  levels may hold blocks), and the VTCR_EL2 register description (T0SZ, SL0,
  TG0 encodings).
- Linux: arch/arm64/include/asm/pgtable-hwdef.h ARM64_HW_PGTABLE_LEVELS(va_bits)
  = ((va_bits) - 4) / (PAGE_SHIFT - 3); arch/arm64/include/asm/stage2_pgtable.h
  / kvm_pgtable.c: stage2_pgtable_levels(ipa) = ARM64_HW_PGTABLE_LEVELS(ipa - 4),
  raised to at least 2 (kvm_get_vtcr / kvm_pgtable_stage2_init).

The expectations below are computed in this file from those rules (not from
s2sim's code), and a table of hand-checked facts pins concrete values.
"""

from __future__ import annotations

import pytest

from s2sim.arch.geometry import Geometry, granule_name
from s2sim.errors import AddressError, GeometryError

PAGE_SHIFT = {"4K": 12, "16K": 14, "64K": 16}
IPA_SIZES = range(32, 49)

# VTCR_EL2.TG0 (Arm ARM, VTCR_EL2): 0b00 4KB, 0b01 64KB, 0b10 16KB.
TG0 = {"4K": 0b00, "64K": 0b01, "16K": 0b10}
# VTCR_EL2.SL0 meaning (Arm ARM, VTCR_EL2, without FEAT_TTST/LPA2):
#   4KB granule:        0b00 -> level 2, 0b01 -> level 1, 0b10 -> level 0
#   16KB/64KB granules: 0b00 -> level 3, 0b01 -> level 2, 0b10 -> level 1
SL0_TO_START_LEVEL = {
    "4K": {0b00: 2, 0b01: 1, 0b10: 0},
    "16K": {0b00: 3, 0b01: 2, 0b10: 1},
    "64K": {0b00: 3, 0b01: 2, 0b10: 1},
}
# Arm ARM, "Block descriptor": with 4KB granule blocks at level 1 (1GB) and
# level 2 (2MB); with 16KB and 64KB granules only at level 2 (32MB, 512MB)
# without FEAT_LPA/LPA2.
BLOCK_LEVELS = {"4K": (1, 2), "16K": (2,), "64K": (2,)}

K, M, G, T = 1 << 10, 1 << 20, 1 << 30, 1 << 40


def arm64_hw_pgtable_levels(va_bits: int, page_shift: int) -> int:
    """Linux ARM64_HW_PGTABLE_LEVELS(va_bits)."""
    return (va_bits - 4) // (page_shift - 3)


def kvm_expected(granule: str, ipa_bits: int) -> dict:
    """KVM's stage-2 geometry derived from the rules in the module docstring."""
    shift = PAGE_SHIFT[granule]
    stride = shift - 3  # index bits resolved per level: a table holds 2^stride 8-byte entries
    levels = max(2, arm64_hw_pgtable_levels(ipa_bits - 4, shift))
    start = 4 - levels
    # One start-level table resolves its own `stride` bits plus everything below it.
    resolved_by_one_table = shift + levels * stride
    concat = 2 ** max(0, ipa_bits - resolved_by_one_table)
    level_shift = {lvl: shift + (3 - lvl) * stride for lvl in range(4)}
    return {"levels": levels, "start": start, "concat": concat, "stride": stride,
            "level_shift": level_shift}


ALL = [(g, ipa) for g in ("4K", "16K", "64K") for ipa in IPA_SIZES]


@pytest.mark.parametrize("granule,ipa_bits", ALL)
def test_geometry_follows_kvm_rule_and_arm_arm(granule: str, ipa_bits: int) -> None:
    exp = kvm_expected(granule, ipa_bits)
    geo = Geometry.make(granule, ipa_bits)
    assert geo.granule == granule
    assert geo.ipa_bits == ipa_bits
    assert geo.levels == exp["levels"]
    assert geo.start_level == exp["start"]
    assert geo.concatenated_tables == exp["concat"]
    # Arm ARM "Concatenated translation tables": at most 16 tables.
    assert 1 <= geo.concatenated_tables <= 16
    # Walks end at level 3 (pages) and need at least 2 levels for KVM.
    assert geo.start_level + geo.levels == 4 and geo.levels >= 2
    # Table geometry: granule bytes / 8-byte descriptors.
    assert geo.granule_size == 1 << PAGE_SHIFT[granule]
    assert geo.entries_per_table == geo.granule_size // 8
    for lvl in range(geo.start_level, 4):
        assert geo.level_shift(lvl) == exp["level_shift"][lvl]
        assert geo.level_size(lvl) == 1 << exp["level_shift"][lvl]
    # The start level (all concatenated tables together) covers exactly the IPA space.
    start_entries = geo.start_entries()
    assert start_entries * geo.level_size(geo.start_level) == 1 << ipa_bits
    if geo.concatenated_tables > 1:
        assert start_entries == geo.concatenated_tables * geo.entries_per_table
    else:
        assert start_entries <= geo.entries_per_table
    # Arm ARM stage-2 start-level consistency (AArch64.S2InconsistentSL / QEMU's
    # check_s2_mmu_setup): the start level must resolve between 1 and stride+4 bits.
    bits_at_start = ipa_bits - geo.level_shift(geo.start_level)
    assert 1 <= bits_at_start <= exp["stride"] + 4
    # Block levels: the architectural ones that the walk actually reaches.
    expect_blocks = tuple(lvl for lvl in BLOCK_LEVELS[granule] if lvl >= geo.start_level)
    assert geo.block_levels() == expect_blocks
    assert geo.leaf_levels() == expect_blocks + (3,)
    for lvl in range(4):
        assert geo.block_allowed(lvl) == (lvl in expect_blocks)
    assert geo.block_sizes() == {lvl: 1 << exp["level_shift"][lvl] for lvl in expect_blocks}


@pytest.mark.parametrize("granule,ipa_bits", ALL)
def test_vtcr_fields(granule: str, ipa_bits: int) -> None:
    geo = Geometry.make(granule, ipa_bits)
    v = geo.vtcr()
    assert v["t0sz"] == 64 - ipa_bits  # IPA size = 64 - T0SZ
    assert v["tg0"] == TG0[granule]
    base = 2 if granule == "4K" else 3
    assert v["sl0"] == base - geo.start_level
    # Decode SL0 back with the Arm ARM table: it must name our start level.
    assert SL0_TO_START_LEVEL[granule][v["sl0"]] == geo.start_level
    # PS for the default 48-bit PA: 0b101 (Arm ARM, VTCR_EL2.PS / ID_AA64MMFR0_EL1.PARange).
    assert v["ps"] == 0b101


# Hand-checked facts: (granule, ipa, levels, start level, concatenated tables,
# {block level: bytes}).
FACTS = [
    # 40-bit/4K (KVM's default IPA): 3 levels from level 1, 2 level-1 tables (1 TiB = 2 * 512 GiB).
    ("4K", 40, 3, 1, 2, {1: 1 * G, 2: 2 * M}),
    # 48-bit/4K: 4 levels from level 0, 1 table (512 * 512 GiB = 256 TiB).
    ("4K", 48, 4, 0, 1, {1: 1 * G, 2: 2 * M}),
    # 44-bit/4K: levels(40)=(40-4)//9=4, one L0 table (16 of its 512 entries used).
    ("4K", 44, 4, 0, 1, {1: 1 * G, 2: 2 * M}),
    # 43-bit/4K: 3 levels from level 1; one L1 table covers 2^39 so 16 are concatenated.
    ("4K", 43, 3, 1, 16, {1: 1 * G, 2: 2 * M}),
    # 32-bit/4K: 2 levels (minimum) from level 2; one L2 table covers 1 GiB: 4 tables.
    ("4K", 32, 2, 2, 4, {2: 2 * M}),
    # 34-bit/4K: 2 levels from level 2, 16 tables of 1 GiB.
    ("4K", 34, 2, 2, 16, {2: 2 * M}),
    # 35-bit/4K: (31-4)//9 = 3 levels from level 1; one L1 table (32 of 512 entries used).
    ("4K", 35, 3, 1, 1, {1: 1 * G, 2: 2 * M}),
    # 40-bit/16K: 2 levels from level 2; an L2 table covers 2^36 so 16 tables.
    ("16K", 40, 2, 2, 16, {2: 32 * M}),
    # 36-bit/16K: 2 levels from level 2, exactly one table.
    ("16K", 36, 2, 2, 1, {2: 32 * M}),
    # 48-bit/16K: 3 levels from level 1; an L1 table covers 2^47 so 2 tables.
    ("16K", 48, 3, 1, 2, {2: 32 * M}),
    # 40-bit/64K: 2 levels from level 2; an L2 table covers 2^42 so 1 table.
    ("64K", 40, 2, 2, 1, {2: 512 * M}),
    # 46-bit/64K: still 2 levels; 2^46 / 2^42 = 16 tables.
    ("64K", 46, 2, 2, 16, {2: 512 * M}),
    # 47-bit/64K: ((47-4)-4)//13 = 3 levels from level 1 (no level-1 blocks at 64K).
    ("64K", 47, 3, 1, 1, {2: 512 * M}),
    ("64K", 48, 3, 1, 1, {2: 512 * M}),
]


@pytest.mark.parametrize("granule,ipa,levels,start,concat,blocks", FACTS)
def test_hand_checked_facts(granule, ipa, levels, start, concat, blocks) -> None:
    geo = Geometry.make(granule, ipa)
    assert (geo.levels, geo.start_level, geo.concatenated_tables) == (levels, start, concat)
    assert geo.block_sizes() == blocks
    assert geo.level_size(3) == {"4K": 4 * K, "16K": 16 * K, "64K": 64 * K}[granule]


def test_hand_checked_vtcr() -> None:
    # 40-bit/4K: T0SZ 24, SL0 0b01 (start level 1), TG0 0b00.
    v = Geometry.make("4K", 40).vtcr()
    assert (v["t0sz"], v["sl0"], v["tg0"]) == (24, 0b01, 0b00)
    # 48-bit/4K: T0SZ 16, SL0 0b10 (start level 0).
    v = Geometry.make("4K", 48).vtcr()
    assert (v["t0sz"], v["sl0"], v["tg0"]) == (16, 0b10, 0b00)
    # 40-bit/16K: SL0 0b01 (start level 2), TG0 0b10.
    v = Geometry.make("16K", 40).vtcr()
    assert (v["t0sz"], v["sl0"], v["tg0"]) == (24, 0b01, 0b10)
    # 40-bit/64K: SL0 0b01 (start level 2), TG0 0b01.
    v = Geometry.make("64K", 40).vtcr()
    assert (v["t0sz"], v["sl0"], v["tg0"]) == (24, 0b01, 0b01)
    # 48-bit/64K: start level 1 -> SL0 0b10.
    assert Geometry.make("64K", 48).vtcr()["sl0"] == 0b10


def test_level_sizes_by_granule() -> None:
    g4 = Geometry.make("4K", 48)
    assert [g4.level_size(lvl) for lvl in range(4)] == [512 * G, 1 * G, 2 * M, 4 * K]
    g16 = Geometry.make("16K", 48)
    assert [g16.level_size(lvl) for lvl in range(1, 4)] == [64 * G, 32 * M, 16 * K]
    g64 = Geometry.make("64K", 48)
    assert [g64.level_size(lvl) for lvl in range(1, 4)] == [4 * T, 512 * M, 64 * K]
    assert (g4.entries_per_table, g16.entries_per_table, g64.entries_per_table) == (
        512, 2048, 8192)


def test_index_spans_concatenated_tables() -> None:
    geo = Geometry.make("4K", 40)  # 2 level-1 tables: 1024 entries of 1 GiB
    assert geo.start_entries() == 1024
    assert geo.index(0, 1) == 0
    assert geo.index(513 * G + 5, 1) == 513  # second concatenated table, entry 1
    assert geo.index((1 << 40) - 1, 1) == 1023
    assert geo.index(0x12345678, 2) == (0x12345678 >> 21) & 511
    assert geo.index(0x12345678, 3) == (0x12345678 >> 12) & 511
    assert geo.entries_at(1) == 512 and geo.entries_at(2) == 512
    small = Geometry.make("4K", 35)  # one level-1 table, 32 entries used
    assert small.start_entries() == 32 and small.entries_at(1) == 32


def test_leaf_level_for_sizes() -> None:
    geo = Geometry.make("4K", 40)
    assert geo.leaf_level_for(4 * K) == 3
    assert geo.leaf_level_for(2 * M) == 2
    assert geo.leaf_level_for(1 * G) == 1
    with pytest.raises(AddressError):
        geo.leaf_level_for(64 * K)
    with pytest.raises(AddressError):  # 32-bit/4K starts at level 2: no 1 GiB blocks
        Geometry.make("4K", 32).leaf_level_for(1 * G)
    assert Geometry.make("64K", 40).leaf_level_for(512 * M) == 2


def test_check_ipa() -> None:
    geo = Geometry.make("4K", 40)
    geo.check_ipa(0, 1 << 40)
    geo.check_ipa((1 << 40) - 4096, 4096)
    for ipa, size in (((1 << 40) - 4096, 8192), (1 << 40, 1), (-1, 1)):
        with pytest.raises(AddressError):
            geo.check_ipa(ipa, size)


@pytest.mark.parametrize("spelling,name", [("4K", "4K"), ("4k", "4K"), ("4KB", "4K"),
                                           (4096, "4K"), ("16K", "16K"), ("16KiB", "16K"),
                                           (16384, "16K"), ("64k", "64K"), (65536, "64K")])
def test_granule_spellings(spelling, name) -> None:
    assert granule_name(spelling) == name
    assert Geometry.make(spelling, 40).granule == name


@pytest.mark.parametrize("granule", ["8K", "2M", 8192, "foo", "", 0])
def test_unknown_granule_raises(granule) -> None:
    with pytest.raises(GeometryError):
        Geometry.make(granule, 40)


@pytest.mark.parametrize("ipa_bits", [52, 31, 49, 0, 64, -40, "forty"])
def test_bad_ipa_size_raises(ipa_bits) -> None:
    with pytest.raises(GeometryError):
        Geometry.make("4K", ipa_bits)


@pytest.mark.parametrize("pa_bits", [31, 47, 52, 64])
def test_bad_pa_size_raises(pa_bits) -> None:
    # PARange encodings of Armv8.0 (ID_AA64MMFR0_EL1.PARange): 32, 36, 40, 42, 44, 48 bits.
    with pytest.raises(GeometryError):
        Geometry.make("4K", 40, pa_bits=pa_bits)


@pytest.mark.parametrize("pa_bits,ps", [(32, 0), (36, 1), (40, 2), (42, 3), (44, 4), (48, 5)])
def test_vtcr_ps(pa_bits, ps) -> None:
    assert Geometry.make("4K", 40, pa_bits=pa_bits).vtcr()["ps"] == ps
