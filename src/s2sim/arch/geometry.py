"""Stage-2 translation geometry: granule, IPA size, levels and VTCR_EL2.

Follows the Armv8-A VMSA (Arm ARM D8, "Translation granule" and "Concatenated
translation tables") and KVM's choice of levels: KVM sizes the walk as if the
IPA were 4 bits smaller (so the start level may hold up to 16 concatenated
tables), never fewer than 2 levels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from s2sim.errors import AddressError, GeometryError

MAX_LEVELS = 4
GRANULES = {"4K": 12, "16K": 14, "64K": 16}
# VTCR_EL2.TG0 encodings (Arm ARM, VTCR_EL2).
TG0 = {"4K": 0b00, "64K": 0b01, "16K": 0b10}
# Levels that may hold block descriptors without FEAT_LPA/LPA2.
BLOCK_LEVELS = {"4K": (1, 2), "16K": (2,), "64K": (2,)}
IPA_MIN, IPA_MAX = 32, 48


def granule_name(value: str | int) -> str:
    """Normalise '4K', '4k', '4KB', 4096 to '4K'. Raises GeometryError."""
    s = str(value).strip().upper().removesuffix("B").removesuffix("I")
    if s.isdigit():
        n = int(s)
        s = {4096: "4K", 16384: "16K", 65536: "64K"}.get(n, s)
    if s not in GRANULES:
        raise GeometryError(f"granule {value!r} is not supported; use one of 4K, 16K, 64K")
    return s


def _hw_pgtable_levels(va_bits: int, page_shift: int) -> int:
    """Levels a walk needs to resolve va_bits with this granule (Linux's formula)."""
    return (va_bits - 4) // (page_shift - 3)


@dataclass(frozen=True)
class Geometry:
    """One stage-2 configuration; build with `Geometry.make(granule, ipa_bits)`."""

    granule: str
    ipa_bits: int
    page_shift: int
    bits_per_level: int
    levels: int
    start_level: int
    concatenated_tables: int
    pa_bits: int = 48
    xnx: bool = False
    # derived, filled in __post_init__
    shifts: tuple = field(default=(), compare=False)
    table_mask: int = field(default=0, compare=False)
    start_mask: int = field(default=0, compare=False)
    block_ok: tuple = field(default=(), compare=False)
    blocks: tuple = field(default=(), compare=False)  # block_levels(), asked on every fault

    @staticmethod
    def make(granule: str | int = "4K", ipa_bits: int = 40, pa_bits: int = 48,
             xnx: bool = False) -> Geometry:
        """KVM's geometry for this granule and IPA size. Raises GeometryError."""
        g = granule_name(granule)
        try:
            ipa_bits = int(ipa_bits)
        except (TypeError, ValueError):
            raise GeometryError(f"IPA size {ipa_bits!r} is not an integer; use 32..48") from None
        if ipa_bits == 52:
            raise GeometryError("IPA size 52 needs FEAT_LPA/LPA2, which s2sim does not model; "
                                "use 32..48")
        if not IPA_MIN <= ipa_bits <= IPA_MAX:
            raise GeometryError(f"IPA size {ipa_bits} is not supported; use {IPA_MIN}..{IPA_MAX}")
        if pa_bits not in (32, 36, 40, 42, 44, 48):
            raise GeometryError(f"PA size {pa_bits} is not an Armv8.0 PARange; "
                                "use 32, 36, 40, 42, 44 or 48")
        shift = GRANULES[g]
        bits = shift - 3
        levels = max(2, _hw_pgtable_levels(ipa_bits - 4, shift))
        start = MAX_LEVELS - levels
        covered = shift + levels * bits  # bits one start-level table resolves
        concat = 1 << max(0, ipa_bits - covered)
        if concat > 16:  # cannot happen with KVM's rule; kept as the architectural limit
            raise GeometryError(f"IPA size {ipa_bits} with granule {g} needs {concat} "
                                "concatenated tables; the architecture allows at most 16")
        return Geometry(g, ipa_bits, shift, bits, levels, start, concat, pa_bits, xnx)

    def __post_init__(self) -> None:
        shifts = tuple(self.page_shift + (3 - lvl) * self.bits_per_level
                       for lvl in range(MAX_LEVELS))
        object.__setattr__(self, "shifts", shifts)
        object.__setattr__(self, "start_mask", self.start_entries() - 1)
        object.__setattr__(self, "block_ok", tuple(self.block_allowed(lvl) for lvl in range(4)))
        object.__setattr__(self, "blocks", tuple(lvl for lvl in BLOCK_LEVELS[self.granule]
                                                 if lvl >= self.start_level))
        object.__setattr__(self, "table_mask", ((1 << 48) - 1) & ~((1 << self.page_shift) - 1))

    # --- sizes -----------------------------------------------------------
    @property
    def granule_size(self) -> int:
        return 1 << self.page_shift

    @property
    def entries_per_table(self) -> int:
        return 1 << self.bits_per_level

    @property
    def ipa_limit(self) -> int:
        return 1 << self.ipa_bits

    def level_shift(self, level: int) -> int:
        """log2 of the bytes one entry at `level` maps."""
        return self.shifts[level]

    def level_size(self, level: int) -> int:
        """Bytes one entry at `level` maps."""
        return 1 << self.shifts[level]

    def start_entries(self) -> int:
        """Entries at the start level across all concatenated tables."""
        return 1 << (self.ipa_bits - self.shifts[self.start_level])

    def entries_at(self, level: int) -> int:
        """Entries in one table at `level` (the start level: per concatenated page)."""
        if level == self.start_level:
            return min(self.entries_per_table, self.start_entries())
        return self.entries_per_table

    def index(self, ipa: int, level: int) -> int:
        """Index of `ipa` in its table at `level` (start level: across the concatenation)."""
        if level == self.start_level:
            return (ipa >> self.shifts[level]) & (self.start_entries() - 1)
        return (ipa >> self.shifts[level]) & (self.entries_per_table - 1)

    def block_levels(self) -> tuple[int, ...]:
        """Levels that may hold a block descriptor in this geometry."""
        return self.blocks

    def leaf_levels(self) -> tuple[int, ...]:
        return self.blocks + (3,)

    def block_allowed(self, level: int) -> bool:
        return level in BLOCK_LEVELS[self.granule] and level >= self.start_level

    def block_sizes(self) -> dict[int, int]:
        return {lvl: self.level_size(lvl) for lvl in self.block_levels()}

    def leaf_level_for(self, size: int) -> int:
        """Level whose leaf maps exactly `size` bytes. Raises AddressError."""
        for lvl in self.leaf_levels():
            if self.level_size(lvl) == size:
                return lvl
        ok = ", ".join(_fmt(self.level_size(lvl)) for lvl in self.leaf_levels())
        raise AddressError(f"leaf size {_fmt(size)} is not possible with the {self.granule} "
                           f"granule at IPA size {self.ipa_bits}; use {ok}")

    def check_ipa(self, ipa: int, size: int = 1) -> None:
        if ipa < 0 or size < 0 or ipa + size > self.ipa_limit:
            raise AddressError(f"IPA range 0x{ipa:x}+0x{size:x} is outside the "
                               f"{self.ipa_bits}-bit IPA space (0..0x{self.ipa_limit - 1:x})")

    # --- VTCR_EL2 --------------------------------------------------------
    def vtcr(self) -> dict[str, int]:
        """The VTCR_EL2 fields describing this geometry (Arm ARM, VTCR_EL2)."""
        base = 2 if self.granule == "4K" else 3  # SL0 = base - start level
        ps = {32: 0, 36: 1, 40: 2, 42: 3, 44: 4, 48: 5}[self.pa_bits]
        return {"t0sz": 64 - self.ipa_bits, "sl0": base - self.start_level,
                "tg0": TG0[self.granule], "ps": ps, "sh0": 0b11, "orgn0": 0b01, "irgn0": 0b01}

    def describe(self) -> dict:
        """Everything `s2sim geometry` prints, JSON-ready."""
        return {
            "granule": self.granule,
            "granule_bytes": self.granule_size,
            "ipa_bits": self.ipa_bits,
            "levels": self.levels,
            "start_level": self.start_level,
            "concatenated_tables": self.concatenated_tables,
            "start_level_entries": self.start_entries(),
            "entries_per_table": self.entries_per_table,
            "bytes_per_entry": {str(lvl): self.level_size(lvl)
                                for lvl in range(self.start_level, MAX_LEVELS)},
            "block_sizes": {str(lvl): s for lvl, s in self.block_sizes().items()},
            "page_size": self.granule_size,
            "vtcr": self.vtcr(),
        }


def _fmt(n: int) -> str:
    for unit, s in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << s and n % (1 << s) == 0:
            return f"{n >> s}{unit}"
    return str(n)


fmt_size = _fmt
