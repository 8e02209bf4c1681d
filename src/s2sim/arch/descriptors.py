"""Stage-2 descriptors (Arm ARM D8.3, "Translation table descriptor formats").

Descriptors are plain 64-bit Python ints on the hot paths; this module holds
the bit layout, constructors, predicates and a decoder for humans. Masks are
Python ints and every result is reduced to 64 bits (numpy 2 would overflow
on `~mask`).
"""

from __future__ import annotations

from dataclasses import dataclass

from s2sim.arch.geometry import Geometry
from s2sim.errors import DescriptorError

U64 = (1 << 64) - 1

VALID = 1 << 0
TYPE = 1 << 1          # levels 0-2: 1 table / 0 block; level 3: 1 page / 0 reserved
MEMATTR_SHIFT = 2
MEMATTR_MASK = 0xF << 2
S2AP_R = 1 << 6
S2AP_W = 1 << 7
S2AP_MASK = S2AP_R | S2AP_W
SH_SHIFT = 8
SH_MASK = 0b11 << 8
AF = 1 << 10
NT = 1 << 16           # FEAT_BBM level 1: block translation "not taken into TLB"
DBM = 1 << 51
CONTIG = 1 << 52
XN = 1 << 54
XN1 = 1 << 53          # with FEAT_XNX, XN is [54:53]
SW_SHIFT = 55
SW_MASK = 0xF << 55

SH_INNER = 0b11
# MemAttr[3:0] without FWB: [3:2] outer, [1:0] inner; 0b11 = write-back.
MEMATTR_NORMAL_WB = 0b1111
MEMATTR_DEVICE_nGnRE = 0b0001
MEMATTR_DEVICE_nGnRnE = 0b0000
# With FEAT_S2FWB, MemAttr[2:0] (bits [4:2]); 0b110 = Normal write-back, forced.
FWB_NORMAL_WB = 0b110
FWB_DEVICE_nGnRE = 0b001

PERM_R, PERM_W, PERM_X = 1, 2, 4


def oa_mask(geo: Geometry, level: int) -> int:
    """Output-address bits [pa_bits-1 : level shift] of a leaf at `level`."""
    return ((1 << 48) - 1) & ~((1 << geo.level_shift(level)) - 1)


def table_addr_mask(geo: Geometry) -> int:
    """Next-level table address bits [47 : granule shift]."""
    return ((1 << 48) - 1) & ~(geo.granule_size - 1)


def is_valid(desc: int) -> bool:
    return bool(desc & VALID)


def is_table(desc: int, level: int) -> bool:
    return level < 3 and (desc & 0b11) == 0b11


def is_leaf(desc: int, level: int) -> bool:
    """A valid block (levels 0-2) or page (level 3) descriptor."""
    if level == 3:
        return (desc & 0b11) == 0b11
    return (desc & 0b11) == 0b01


def make_table(table_pa: int) -> int:
    """A table descriptor; stage-2 table descriptors carry no attributes."""
    return (table_pa & ((1 << 48) - 1)) | 0b11


def leaf_attrs(prot: int, fwb: bool = False, device: bool = False) -> int:
    """KVM's leaf attributes for PERM_* bits: MemAttr, S2AP, SH inner, AF, XN."""
    if fwb:
        mem = (FWB_DEVICE_nGnRE if device else FWB_NORMAL_WB) << MEMATTR_SHIFT
    else:
        mem = (MEMATTR_DEVICE_nGnRE if device else MEMATTR_NORMAL_WB) << MEMATTR_SHIFT
    attrs = mem | (SH_INNER << SH_SHIFT) | AF
    if prot & PERM_R:
        attrs |= S2AP_R
    if prot & PERM_W:
        attrs |= S2AP_W
    if not prot & PERM_X:
        attrs |= XN
    return attrs


def make_leaf(pa: int, level: int, attrs: int) -> int:
    """A block (level < 3) or page (level 3) descriptor."""
    return (pa & ((1 << 48) - 1)) | attrs | (0b11 if level == 3 else 0b01)


def prot_of(desc: int) -> int:
    p = 0
    if desc & S2AP_R:
        p |= PERM_R
    if desc & S2AP_W:
        p |= PERM_W
    if not desc & XN:
        p |= PERM_X
    return p


def prot_str(prot: int) -> str:
    return "".join(c if prot & b else "-" for c, b in (("r", PERM_R), ("w", PERM_W),
                                                        ("x", PERM_X)))


def parse_prot(text: str) -> int:
    """'rw', 'rwx', 'r', 'none' -> PERM_* bits. Raises DescriptorError."""
    s = text.strip().lower()
    if s in ("none", "-", "---"):
        return 0
    p = 0
    for c in s:
        bit = {"r": PERM_R, "w": PERM_W, "x": PERM_X, "-": 0}.get(c)
        if bit is None:
            raise DescriptorError(f"permission {text!r} is not valid; use letters from r, w, x")
        p |= bit
    return p


def is_cacheable(desc: int, fwb: bool) -> bool:
    """Normal cacheable memory (KVM's stage2_pte_cacheable)."""
    mem = (desc & MEMATTR_MASK) >> MEMATTR_SHIFT
    if fwb:
        return (mem & 0b100) != 0 and (mem & 0b111) != 0b100
    return (mem & 0b1100) != 0 and (mem & 0b0011) != 0


def _memattr_name(mem: int, fwb: bool) -> str:
    if fwb:
        if mem & 0b1000:
            return "reserved"
        m = mem & 0b111
        return {0b000: "Device-nGnRnE", 0b001: "Device-nGnRE", 0b010: "Device-nGRE",
                0b011: "Device-GRE", 0b100: "Normal-NC(forced)", 0b101: "as-stage-1",
                0b110: "Normal-WB(forced)", 0b111: "as-stage-1"}[m]
    if mem & 0b1100 == 0:
        return {0: "Device-nGnRnE", 1: "Device-nGnRE", 2: "Device-nGRE", 3: "Device-GRE"}[mem]
    kinds = {1: "NC", 2: "WT", 3: "WB"}
    outer, inner = mem >> 2, mem & 3
    if inner == 0:
        return "reserved"
    return f"Normal-O{kinds[outer]}-I{kinds[inner]}"


@dataclass(frozen=True)
class Decoded:
    """A descriptor, field by field (what `s2sim decode` prints)."""

    value: int
    level: int
    type: str
    output_address: int
    s2ap: int = 0
    memattr: int = 0
    memattr_name: str = ""
    sh: int = 0
    af: int = 0
    xn: int = 0
    dbm: int = 0
    contiguous: int = 0
    nt: int = 0
    sw: int = 0
    size: int = 0

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["value"] = f"0x{self.value:016x}"
        d["permissions"] = prot_str(prot_of(self.value)) if self.type in ("block", "page") else ""
        return d


def decode(value: int, level: int, geo: Geometry, fwb: bool = False,
           strict: bool = True) -> Decoded:
    """Decode `value` as a stage-2 descriptor at `level`.

    With `strict`, reserved encodings raise DescriptorError: a level-3 entry
    with bits[1:0] = 0b01, a block at a level that cannot hold blocks, a table
    at level 3, non-zero output-address bits below the level's alignment, and
    RES0 bits set. Without it they decode as "invalid" (what the walker sees).
    """
    if not 0 <= value <= U64:
        raise DescriptorError(f"descriptor {value:#x} does not fit in 64 bits")
    if level not in range(geo.start_level, 4):
        raise DescriptorError(f"level {level} does not exist with granule {geo.granule} and "
                              f"IPA size {geo.ipa_bits}; use {geo.start_level}..3")
    if not value & VALID:
        return Decoded(value, level, "invalid", 0)
    if level == 3 and not value & TYPE:
        if strict:
            raise DescriptorError(f"descriptor {value:#x} at level 3 has bits[1:0]=0b01, a "
                                  "reserved encoding; a page descriptor has 0b11")
        return Decoded(value, level, "invalid", 0)
    if level < 3 and value & TYPE:
        ta = value & table_addr_mask(geo)
        low = value & (geo.granule_size - 1) & ~0xFFF
        if strict and low:
            raise DescriptorError(f"table descriptor {value:#x} has bits [{geo.page_shift - 1}:12]"
                                  f" set; a {geo.granule} table address is {geo.granule}-aligned")
        return Decoded(value, level, "table", ta)
    kind = "page" if level == 3 else "block"
    if kind == "block" and not geo.block_allowed(level):
        if strict:
            ok = ", ".join(str(lvl) for lvl in geo.block_levels())
            raise DescriptorError(f"block descriptor {value:#x} at level {level} is not allowed "
                                  f"with granule {geo.granule}; blocks live at level {ok}")
        return Decoded(value, level, "invalid", 0)
    shift = geo.level_shift(level)
    oa = value & oa_mask(geo, level)
    low_res0 = value & ((1 << shift) - 1) & ~((1 << 16) - 1) & ~(NT if kind == "block" else 0)
    if strict and low_res0:
        raise DescriptorError(f"{kind} descriptor {value:#x} at level {level} has bits set "
                              f"below the output address (bits [{shift - 1}:16] are RES0)")
    mem = (value & MEMATTR_MASK) >> MEMATTR_SHIFT
    return Decoded(
        value, level, kind, oa,
        s2ap=(value & S2AP_MASK) >> 6,
        memattr=mem,
        memattr_name=_memattr_name(mem, fwb),
        sh=(value & SH_MASK) >> SH_SHIFT,
        af=int(bool(value & AF)),
        xn=(value >> 53) & 0b11 if geo.xnx else int(bool(value & XN)),
        dbm=int(bool(value & DBM)),
        contiguous=int(bool(value & CONTIG)),
        nt=int(bool(value & NT)) if kind == "block" else 0,
        sw=(value & SW_MASK) >> SW_SHIFT,
        size=geo.level_size(level),
    )


def describe(value: int, level: int, geo: Geometry, fwb: bool = False) -> str:
    """One short human line for a descriptor (used in tables and traces)."""
    d = decode(value, level, geo, fwb, strict=False)
    if d.type == "invalid":
        return "invalid" if value == 0 else f"invalid ({value:#x})"
    if d.type == "table":
        return f"table -> {d.output_address:#x}"
    return (f"{d.type} {d.output_address:#x} {prot_str(prot_of(value))} {d.memattr_name}"
            f"{'' if d.af else ' !AF'}")
