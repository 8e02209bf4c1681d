"""Memslots and their host backing, as KVM's fault handler sees them.

A memslot maps guest IPAs [base, base+size) to host virtual memory at
`hva`; the backing decides the host page size (4 KiB anonymous, THP, hugetlb
2 MiB / 1 GiB and the selftest's other sizes the granule allows). Host
physical memory for the slot is one contiguous, aligned range: contiguity
only matters where KVM could map a block, and there the host gives one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from s2sim.arch.geometry import Geometry, fmt_size
from s2sim.errors import ConfigError

# hugetlb sizes arm64 offers per granule (PTE, CONT_PTE, PMD, CONT_PMD, PUD).
HUGETLB_SIZES = {
    "4K": (64 << 10, 2 << 20, 32 << 20, 1 << 30),
    "16K": (2 << 20, 32 << 20, 1 << 30),
    "64K": (2 << 20, 512 << 20, 16 << 30),
}
_SELFTEST_HUGETLB = {"16kb": 16 << 10, "64kb": 64 << 10, "512kb": 512 << 10, "1mb": 1 << 20,
                     "2mb": 2 << 20, "8mb": 8 << 20, "16mb": 16 << 20, "32mb": 32 << 20,
                     "256mb": 256 << 20, "512mb": 512 << 20, "1gb": 1 << 30, "2gb": 2 << 30,
                     "16gb": 16 << 30}


@dataclass(frozen=True)
class Backing:
    """A selftest backing type resolved for a granule."""

    name: str
    page_size: int        # host page size backing the slot
    thp: bool = False     # transparent huge pages: KVM may map a PMD block
    hugetlb: bool = False
    shared: bool = False


def backing_names(geo: Geometry) -> list[str]:
    names = ["anonymous", "anonymous_thp", "anonymous_hugetlb", "shmem", "shared_hugetlb"]
    names += [f"anonymous_hugetlb_{k}" for k, v in _SELFTEST_HUGETLB.items()
              if v in HUGETLB_SIZES[geo.granule]]
    return names


def resolve_backing(name: str, geo: Geometry) -> Backing:
    """The backing `name` for this granule. Raises ConfigError for unknown or impossible ones."""
    pmd = geo.level_size(2)
    g = geo.granule_size
    if name in ("anonymous", "shmem"):
        return Backing(name, g, shared=name == "shmem")
    if name == "anonymous_thp":
        return Backing(name, pmd, thp=True)  # the host gives a THP: pages of PMD size
    if name in ("anonymous_hugetlb", "shared_hugetlb"):
        return Backing(name, pmd, hugetlb=True, shared=name == "shared_hugetlb")
    if name.startswith("anonymous_hugetlb_"):
        key = name.removeprefix("anonymous_hugetlb_")
        size = _SELFTEST_HUGETLB.get(key)
        if size is not None and size in HUGETLB_SIZES[geo.granule]:
            return Backing(name, size, hugetlb=True)
        if size is not None:
            raise ConfigError(f"backing {name!r} ({fmt_size(size)} pages) is not possible with "
                              f"the {geo.granule} granule; use one of "
                              f"{', '.join(backing_names(geo))}")
    raise ConfigError(f"backing {name!r} is unknown; use one of {', '.join(backing_names(geo))}")


@dataclass
class Memslot:
    """A KVM memslot: guest range, host virtual base, backing, dirty log."""

    slot_id: int
    base: int
    size: int
    hva: int
    pa: int
    backing: Backing
    logging: bool = False
    readonly: bool = False
    dirty: set = field(default_factory=set)
    _sizes: dict = field(default_factory=dict, repr=False, compare=False)

    def mapping_size(self, ipa: int, geo: Geometry) -> tuple[int, bool]:
        """`mapping_size`, cached per largest-block-sized region and logging state."""
        key = (self.logging, ipa >> geo.shifts[geo.block_levels()[-1]])
        r = self._sizes.get(key)
        if r is None:
            r = self._sizes[key] = mapping_size(self, ipa, geo)
        return r

    def contains(self, ipa: int) -> bool:
        return self.base <= ipa < self.base + self.size

    def pa_of(self, ipa: int) -> int:
        """The host physical address backing `ipa` (what the slot says it must translate to)."""
        return self.pa + (ipa - self.base)

    def hva_of(self, ipa: int) -> int:
        return self.hva + (ipa - self.base)

    def supports_huge(self, ipa: int, size: int) -> bool:
        """KVM's fault_supports_stage2_huge_mapping: same offset in IPA and HVA within a
        block of `size`, and the whole block inside the slot."""
        if (self.base & (size - 1)) != (self.hva & (size - 1)):
            return False
        start = (self.hva + size - 1) & ~(size - 1)
        end = (self.hva + self.size) & ~(size - 1)
        hva = self.hva_of(ipa)
        return start <= hva and hva + 1 <= end and (hva & ~(size - 1)) + size <= end

    def host_page(self, ipa: int) -> tuple[int, int]:
        """(PA, size) of the host page holding `ipa` (THP: the 2 MiB page when possible)."""
        size = self.backing.page_size
        off = (ipa - self.base) & ~(size - 1)
        return self.pa + off, size


def mapping_size(slot: Memslot, ipa: int, geo: Geometry) -> tuple[int, bool]:
    """user_mem_abort's choice before the lock: (mapping size, force_pte).

    Logging forces pages; a 1 GiB block falls back to 2 MiB, and 2 MiB to
    pages, when the slot's IPA and HVA alignment forbid it; contiguous
    hugetlb sizes are mapped at the level below them.
    """
    g = geo.granule_size
    if slot.logging and not slot.readonly:
        return g, True
    size = g if slot.backing.thp else slot.backing.page_size
    leaf = sorted(geo.level_size(lvl) for lvl in geo.leaf_levels())
    # contiguous sizes (CONT_PTE / CONT_PMD) are mapped as the largest leaf below them
    size = max(s for s in leaf if s <= size)
    force = False
    for s in sorted((s for s in leaf if s > g), reverse=True):
        if size == s and not slot.supports_huge(ipa, s):
            size = max(x for x in leaf if x < s)
            force = size == g
    return size, force


def thp_adjust(slot: Memslot, ipa: int, geo: Geometry, size: int, force_pte: bool) -> int:
    """transparent_hugepage_adjust: a page-size fault on THP memory may map the PMD block."""
    pmd = geo.level_size(2)
    if size == geo.granule_size and not force_pte and slot.backing.thp \
            and geo.block_allowed(2) and slot.supports_huge(ipa, pmd):
        return pmd
    return size
