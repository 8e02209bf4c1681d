"""Memslots and backings (kvm/memslot.py) against v5.11's user_mem_abort rules.

- arm64 hugetlb sizes per granule (arch_hugetlb_valid_size): CONT_PTE, PMD,
  CONT_PMD, and PUD with 4 KiB pages only:
    4K:  64K (CONT_PTE = 16 x 4K), 2M (PMD), 32M (CONT_PMD = 16 x 2M), 1G (PUD)
    16K: 2M (CONT_PTE = 128 x 16K), 32M (PMD), 1G (CONT_PMD = 32 x 32M)
    64K: 2M (CONT_PTE = 32 x 64K), 512M (PMD), 16G (CONT_PMD = 32 x 512M)
  so e.g. 1 GiB hugetlb *is* possible with 16K pages (as CONT_PMD), but not
  with 64K pages; 512 MiB only with 64K pages.
- user_mem_abort's size switch: logging forces pages; PUD falls back to PMD
  and PMD to pages (force_pte) when fault_supports_stage2_huge_mapping fails
  (IPA and HVA offsets differ within the block, or the block leaves the slot);
  CONT_PMD maps as PMD, CONT_PTE as pages.
- transparent_hugepage_adjust: a page-size fault on THP memory maps the PMD
  block unless force_pte or the alignment rule forbids it.
"""

from __future__ import annotations

import pytest

from s2sim.arch.geometry import Geometry
from s2sim.arch.machine import Machine
from s2sim.errors import AddressError, ConfigError
from s2sim.kvm.coalesce import variant
from s2sim.kvm.memslot import (
    Backing,
    Memslot,
    backing_names,
    mapping_size,
    resolve_backing,
    thp_adjust,
)
from s2sim.kvm.vm import Kvm

K, M, G = 1 << 10, 1 << 20, 1 << 30
GEO = {"4K": Geometry.make("4K", 40), "16K": Geometry.make("16K", 40),
       "64K": Geometry.make("64K", 40)}

ALL_HUGETLB = ["16kb", "64kb", "512kb", "1mb", "2mb", "8mb", "16mb", "32mb", "256mb", "512mb",
               "1gb", "2gb", "16gb"]
ALLOWED = {"4K": {"64kb": 64 * K, "2mb": 2 * M, "32mb": 32 * M, "1gb": G},
           "16K": {"2mb": 2 * M, "32mb": 32 * M, "1gb": G},
           "64K": {"2mb": 2 * M, "512mb": 512 * M, "16gb": 16 * G}}
PMD = {"4K": 2 * M, "16K": 32 * M, "64K": 512 * M}


@pytest.mark.parametrize("gran", ["4K", "16K", "64K"])
def test_resolve_backing_generic(gran):
    geo = GEO[gran]
    g = geo.granule_size
    assert resolve_backing("anonymous", geo) == Backing("anonymous", g)
    assert resolve_backing("shmem", geo) == Backing("shmem", g, shared=True)
    assert resolve_backing("anonymous_thp", geo) == Backing("anonymous_thp", PMD[gran], thp=True)
    assert resolve_backing("anonymous_hugetlb", geo) == Backing("anonymous_hugetlb", PMD[gran],
                                                                hugetlb=True)
    assert resolve_backing("shared_hugetlb", geo) == Backing("shared_hugetlb", PMD[gran],
                                                             hugetlb=True, shared=True)
    with pytest.raises(ConfigError, match="'bogus' is unknown"):
        resolve_backing("bogus", geo)
    with pytest.raises(ConfigError, match="unknown"):
        resolve_backing("anonymous_hugetlb_3mb", geo)


@pytest.mark.parametrize("gran", ["4K", "16K", "64K"])
@pytest.mark.parametrize("key", ALL_HUGETLB)
def test_resolve_backing_hugetlb_sizes(gran, key):
    geo = GEO[gran]
    name = f"anonymous_hugetlb_{key}"
    if key in ALLOWED[gran]:
        b = resolve_backing(name, geo)
        assert b.page_size == ALLOWED[gran][key] and b.hugetlb and not b.thp
        assert name in backing_names(geo)
    else:
        with pytest.raises(ConfigError, match=f"not possible with the {gran} granule"):
            resolve_backing(name, geo)
        assert name not in backing_names(geo)


def test_named_refusals():
    with pytest.raises(ConfigError, match="512M pages"):
        resolve_backing("anonymous_hugetlb_512mb", GEO["16K"])
    with pytest.raises(ConfigError, match="not possible with the 64K granule"):
        resolve_backing("anonymous_hugetlb_1gb", GEO["64K"])
    with pytest.raises(ConfigError, match="not possible with the 4K granule"):
        resolve_backing("anonymous_hugetlb_16gb", GEO["4K"])


def _slot(backing: str, gran: str = "4K", base: int = 4 * G, size: int = 2 * G,
          hva_offset: int = 0, logging: bool = False, readonly: bool = False) -> Memslot:
    b = resolve_backing(backing, GEO[gran])
    return Memslot(0, base, size, (1 << 40) + base + hva_offset, 1 << 36, b, logging=logging,
                   readonly=readonly)


@pytest.mark.parametrize("backing, hva_offset, expect", [
    ("anonymous_hugetlb_1gb", 0, (G, False)),          # aligned: PUD block
    ("anonymous_hugetlb_1gb", 2 * M, (2 * M, False)),  # PUD offsets differ -> PMD
    ("anonymous_hugetlb_1gb", 64 * K, (4 * K, True)),  # PMD offsets differ too -> pages
    ("anonymous_hugetlb_1gb", 4 * K, (4 * K, True)),
    ("anonymous_hugetlb_2mb", 0, (2 * M, False)),
    ("anonymous_hugetlb_2mb", 1 * G, (2 * M, False)),  # offset a multiple of 2M: fine
    ("anonymous_hugetlb_2mb", 4 * K, (4 * K, True)),
    ("anonymous_hugetlb", 8 * K, (4 * K, True)),
    ("anonymous", 0, (4 * K, False)),
    ("anonymous_thp", 0, (4 * K, False)),              # THP: pages until thp_adjust
])
def test_mapping_size_alignment_fallback_4k(backing, hva_offset, expect):
    s = _slot(backing, hva_offset=hva_offset)
    for ipa in (s.base, s.base + 3 * M + 5 * K, s.base + s.size - 1):
        assert mapping_size(s, ipa, GEO["4K"]) == expect
        assert s.mapping_size(ipa, GEO["4K"]) == expect  # the cached form agrees


def test_mapping_size_contiguous_sizes_map_at_the_level_below():
    geo = GEO["4K"]
    assert mapping_size(_slot("anonymous_hugetlb_32mb"), 4 * G, geo)[0] == 2 * M  # CONT_PMD
    assert mapping_size(_slot("anonymous_hugetlb_64kb"), 4 * G, geo)[0] == 4 * K  # CONT_PTE
    assert mapping_size(_slot("anonymous_hugetlb_1gb", "16K"), 4 * G, GEO["16K"]) == (32 * M,
                                                                                      False)
    assert mapping_size(_slot("anonymous_hugetlb_2mb", "16K"), 4 * G, GEO["16K"])[0] == 16 * K
    assert mapping_size(_slot("anonymous_hugetlb_16gb", "64K", size=16 * G, base=16 * G),
                        16 * G, GEO["64K"]) == (512 * M, False)
    assert mapping_size(_slot("anonymous_hugetlb_2mb", "64K"), 4 * G, GEO["64K"])[0] == 64 * K


def test_mapping_size_64k_granule_fallback():
    geo = GEO["64K"]
    assert mapping_size(_slot("anonymous_hugetlb", "64K"), 4 * G, geo) == (512 * M, False)
    assert mapping_size(_slot("anonymous_hugetlb", "64K", hva_offset=64 * K), 4 * G, geo) == (
        64 * K, True)


def test_block_must_lie_inside_the_slot():
    # Same offsets in IPA and HVA, but the slot starts 2M below a 1G boundary:
    # the 1G block around the first 2M is not inside the slot (PMD instead),
    # the next 1G block is (PUD).
    b = Backing("anonymous_hugetlb_1gb", G, hugetlb=True)
    base = 5 * G - 2 * M
    s = Memslot(0, base, G + 2 * M, (1 << 40) + base, 1 << 36, b)
    geo = GEO["4K"]
    assert not s.supports_huge(base, G) and s.supports_huge(base, 2 * M)
    assert s.supports_huge(5 * G + 4 * K, G)
    assert mapping_size(s, base + 4 * K, geo) == (2 * M, False)
    assert mapping_size(s, 5 * G + 4 * K, geo) == (G, False)


def test_logging_forces_pages_unless_readonly():
    geo = GEO["4K"]
    s = _slot("anonymous_hugetlb_1gb", logging=True)
    assert mapping_size(s, s.base, geo) == (4 * K, True)
    s.logging = False  # the cache is keyed by the logging state
    assert s.mapping_size(s.base, geo) == (G, False)
    s.logging = True
    assert s.mapping_size(s.base, geo) == (4 * K, True)
    # memslot_is_logging() is false for a read-only slot
    ro = _slot("anonymous_hugetlb_1gb", logging=True, readonly=True)
    assert mapping_size(ro, ro.base, geo) == (G, False)


def test_thp_adjust():
    geo = GEO["4K"]
    s = _slot("anonymous_thp")
    size, force = mapping_size(s, s.base + 5 * K, geo)
    assert thp_adjust(s, s.base + 5 * K, geo, size, force) == 2 * M
    # misaligned HVA: fault_supports_stage2_huge_mapping(PMD) fails -> stays a page
    mis = _slot("anonymous_thp", hva_offset=4 * K)
    size, force = mapping_size(mis, mis.base, geo)
    assert thp_adjust(mis, mis.base, geo, size, force) == 4 * K
    # logging: force_pte -> no THP block
    log = _slot("anonymous_thp", logging=True)
    size, force = mapping_size(log, log.base, geo)
    assert (size, force) == (4 * K, True) and thp_adjust(log, log.base, geo, size, force) == 4 * K
    # hugetlb memory is never THP-adjusted; a block size passes through unchanged
    h = _slot("anonymous_hugetlb_2mb", hva_offset=4 * K)
    assert thp_adjust(h, h.base, geo, 4 * K, True) == 4 * K
    assert thp_adjust(s, s.base, geo, 2 * M, False) == 2 * M
    # 64K granule: the THP block is the 512M PMD
    t64 = _slot("anonymous_thp", "64K")
    assert thp_adjust(t64, t64.base, GEO["64K"], 64 * K, False) == 512 * M


def test_host_page_and_pa():
    s = _slot("anonymous_hugetlb_2mb", base=4 * G, size=8 * M)
    assert s.host_page(4 * G + 3 * M + 17) == ((1 << 36) + 2 * M, 2 * M)
    assert s.pa_of(4 * G + 5 * K) == (1 << 36) + 5 * K
    assert s.contains(4 * G) and s.contains(4 * G + 8 * M - 1) and not s.contains(4 * G + 8 * M)


def test_add_memslot_validation():
    geo = GEO["4K"]
    kvm = Kvm(Machine(geo, 2), variant("v5.11"))
    slot = kvm.add_memslot(2 * G, 4 * M, "anonymous_hugetlb_2mb")
    assert slot.backing.page_size == 2 * M and slot.pa % (2 * M) == 0
    assert kvm.find_memslot(2 * G + M) is slot and kvm.find_memslot(G) is None
    with pytest.raises(ConfigError, match="not a multiple"):
        kvm.add_memslot(3 * G, 3 * M, "anonymous_hugetlb_2mb")
    with pytest.raises(AddressError, match="not aligned"):
        kvm.add_memslot(3 * G + 1 * M, 2 * M, "anonymous_hugetlb_2mb")
    with pytest.raises(AddressError, match="overlaps"):
        kvm.add_memslot(2 * G + 2 * M, 4 * M, "anonymous_hugetlb_2mb")
    with pytest.raises(ConfigError):
        kvm.add_memslot(3 * G, G, "anonymous_hugetlb_512mb")
    s2 = kvm.add_memslot(3 * G, 2 * M, "anonymous_hugetlb_2mb", hva_offset=4 * K)
    assert s2.slot_id == 1 and s2.mapping_size(3 * G, geo) == (4 * K, True)
