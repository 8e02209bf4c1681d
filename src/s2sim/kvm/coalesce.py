"""Coalescing strategies: how a table entry that must become a block is replaced.

Each strategy is one generator over the Steps that replace the table entry at
`page[index]` (level `level`, mapping `addr`) with the block `block`, given
the old table descriptor `old`. They differ only in the order of the same
effects; the final table is identical (tested).

The teardown of the old subtree is one bulk step (`PageTable.teardown`): by
then no CPU can reach it (except in the mutants), so its 512 (or 262,656)
entry visits are charged in bulk rather than interleaved.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from s2sim.kvm.pgtable import MapContext

CMO_FAULT, CMO_MAP = "fault", "map"


@dataclass(frozen=True)
class Strategy:
    """A named coalescing order. `run(ctx, ...)` yields its steps."""

    name: str
    summary: str
    unsafe: bool = False

    def run(self, ctx: MapContext, addr: int, level: int, page, index: int, old: int,
            block: int) -> Generator:
        return _ORDERS[self.name](ctx, addr, level, page, index, old, block)


def _unmap_first(ctx, addr, level, page, index, old, block):
    """v5.11: break, TLBI VMID, tear down the old subtree, then install the block.

    The entry is invalid through the whole teardown (and the CMO with patch 1).
    """
    yield from ctx.pt.set_invalid(page, index, addr, ctx.cpu)
    yield from ctx.pt.tlbi_vmid(ctx.cpu)
    yield from ctx.pt.teardown(old, level + 1, ctx.cpu)
    if ctx.cmo_in_map:
        yield from ctx.pt.cmo(block, level, ctx.cpu)
    yield from ctx.pt.set_pte(page, index, block, addr, ctx.cpu)


def _block_first_nocmo(ctx, addr, level, page, index, old, block):
    """The seed as posted (RFC 3/4): break, TLBI VMID, install (no CMO), tear down."""
    yield from ctx.pt.set_invalid(page, index, addr, ctx.cpu)
    yield from ctx.pt.tlbi_vmid(ctx.cpu)
    yield from ctx.pt.set_pte(page, index, block, addr, ctx.cpu)
    yield from ctx.pt.teardown(old, level + 1, ctx.cpu)


def _block_first(ctx, addr, level, page, index, old, block):
    """Mainline 6.2: break, TLBI, clean the block to PoC, install, tear down."""
    yield from ctx.pt.set_invalid(page, index, addr, ctx.cpu)
    yield from ctx.pt.tlbi_vmid(ctx.cpu)
    if ctx.cmo_in_map:
        yield from ctx.pt.cmo(block, level, ctx.cpu)
    yield from ctx.pt.set_pte(page, index, block, addr, ctx.cpu)
    yield from ctx.pt.teardown(old, level + 1, ctx.cpu)


def _cmo_first(ctx, addr, level, page, index, old, block):
    """Clean the block while the old table still serves, then break, TLBI, install."""
    if ctx.cmo_in_map:
        yield from ctx.pt.cmo(block, level, ctx.cpu)
    yield from ctx.pt.set_invalid(page, index, addr, ctx.cpu)
    yield from ctx.pt.tlbi_vmid(ctx.cpu)
    yield from ctx.pt.set_pte(page, index, block, addr, ctx.cpu)
    yield from ctx.pt.teardown(old, level + 1, ctx.cpu)


def _mutant_free_before_tlbi(ctx, addr, level, page, index, old, block):
    """UNSAFE: frees the old subtree before the TLBI has completed."""
    yield from ctx.pt.set_invalid(page, index, addr, ctx.cpu)
    yield from ctx.pt.teardown(old, level + 1, ctx.cpu)
    yield from ctx.pt.tlbi_vmid(ctx.cpu)
    if ctx.cmo_in_map:
        yield from ctx.pt.cmo(block, level, ctx.cpu)
    yield from ctx.pt.set_pte(page, index, block, addr, ctx.cpu)


def _mutant_no_tlbi(ctx, addr, level, page, index, old, block):
    """UNSAFE: breaks, but never invalidates the TLBs before the make."""
    yield from ctx.pt.set_invalid(page, index, addr, ctx.cpu)
    if ctx.cmo_in_map:
        yield from ctx.pt.cmo(block, level, ctx.cpu)
    yield from ctx.pt.set_pte(page, index, block, addr, ctx.cpu)
    yield from ctx.pt.teardown(old, level + 1, ctx.cpu)


def _mutant_tlbi_last_level(ctx, addr, level, page, index, old, block):
    """UNSAFE: invalidates only last-level entries (RIPAS2LE1IS) before freeing the table:
    walk caches may still point at the freed table."""
    yield from ctx.pt.set_invalid(page, index, addr, ctx.cpu)
    yield from ctx.pt.tlbi_range_last_level(addr, ctx.geo.level_size(level), ctx.cpu)
    if ctx.cmo_in_map:
        yield from ctx.pt.cmo(block, level, ctx.cpu)
    yield from ctx.pt.set_pte(page, index, block, addr, ctx.cpu)
    yield from ctx.pt.teardown(old, level + 1, ctx.cpu)


def _bbml2(ctx, addr, level, page, index, old, block):
    """FEAT_BBM level 2: table -> block in one write, TLBI after, teardown after the DSB."""
    if ctx.cmo_in_map:
        yield from ctx.pt.cmo(block, level, ctx.cpu)
    yield from ctx.pt.set_pte(page, index, block, addr, ctx.cpu)
    yield from ctx.pt.tlbi_vmid(ctx.cpu)
    yield from ctx.pt.teardown(old, level + 1, ctx.cpu)


_ORDERS = {
    "unmap-first": _unmap_first,
    "block-first-nocmo": _block_first_nocmo,
    "block-first": _block_first,
    "cmo-first": _cmo_first,
    "bbml2": _bbml2,
    "mutant-free-before-tlbi": _mutant_free_before_tlbi,
    "mutant-no-tlbi": _mutant_no_tlbi,
    "mutant-tlbi-last-level": _mutant_tlbi_last_level,
}

STRATEGIES = {
    "unmap-first": Strategy("unmap-first", "v5.11: invalid -> TLBI VMID -> free subtree -> block"),
    "block-first-nocmo": Strategy("block-first-nocmo",
                                  "seed as posted: invalid -> TLBI -> block (no CMO) -> free"),
    "block-first": Strategy("block-first", "6.2: invalid -> TLBI -> CMO -> block -> free"),
    "cmo-first": Strategy("cmo-first", "CMO -> invalid -> TLBI -> block -> free"),
    "bbml2": Strategy("bbml2", "FEAT_BBM L2: CMO -> block over table -> TLBI -> free"),
    "mutant-free-before-tlbi": Strategy("mutant-free-before-tlbi",
                                        "UNSAFE: invalid -> free -> TLBI -> CMO -> block", True),
    "mutant-no-tlbi": Strategy("mutant-no-tlbi", "UNSAFE: invalid -> CMO -> block -> free", True),
    "mutant-tlbi-last-level": Strategy("mutant-tlbi-last-level", "UNSAFE: invalid -> "
                                       "RIPAS2LE1IS -> CMO -> block -> free", True),
}


@dataclass(frozen=True)
class Variant:
    """A preset: a coalescing strategy, where the fault path's CMO happens, what the
    CPU is assumed to support (FEAT_BBM level, no-abort), and for mutants the
    deliberate defect (`mutation`)."""

    name: str
    coalesce: str
    cmo: str
    summary: str
    bbm_level: int = 0
    bbm_noabort: bool = False
    mutation: str = ""

    @property
    def unsafe(self) -> bool:
        return bool(self.mutation) or STRATEGIES[self.coalesce].unsafe


VARIANTS = {
    "v5.11": Variant("v5.11", "unmap-first", CMO_FAULT,
                     "CMO of the whole mapping in the fault handler; coalesce unmap-first"),
    "patch1": Variant("patch1", "unmap-first", CMO_MAP,
                      "CMO only when a new leaf is installed; coalesce unmap-first"),
    "rfc": Variant("rfc", "block-first-nocmo", CMO_MAP, "patch1 + the seed as posted"),
    "block-first": Variant("block-first", "block-first", CMO_MAP, "patch1 + mainline 6.2 order"),
    "cmo-first": Variant("cmo-first", "cmo-first", CMO_MAP, "patch1 + clean before the break"),
    "bbml2": Variant("bbml2", "bbml2", CMO_MAP, "patch1 + FEAT_BBM level 2 replacement", 2),
    "bbml2-noabort": Variant("bbml2-noabort", "bbml2", CMO_MAP,
                             "bbml2 on a CPU that guarantees no TLB conflict aborts", 2, True),
    # Deliberately broken variants (mutants), to demonstrate and test the checker.
    "mutant-no-tlbi": Variant("mutant-no-tlbi", "mutant-no-tlbi", CMO_MAP,
                              "UNSAFE: skips the TLBI after the break", mutation="no-tlbi"),
    "mutant-free-before-tlbi": Variant("mutant-free-before-tlbi", "mutant-free-before-tlbi",
                                       CMO_MAP, "UNSAFE: frees the old table before the TLBI "
                                       "completes", mutation="free-before-tlbi"),
    "mutant-no-break": Variant("mutant-no-break", "bbml2", CMO_MAP, "UNSAFE: installs the "
                               "block over the table without breaking, on a CPU without "
                               "FEAT_BBM level 2", mutation="no-break"),
    "mutant-tlbi-last-level": Variant("mutant-tlbi-last-level", "mutant-tlbi-last-level",
                                      CMO_MAP, "UNSAFE: TLBI only the last level when freeing "
                                      "a table", mutation="tlbi-last-level"),
    "mutant-no-cmo": Variant("mutant-no-cmo", "unmap-first", CMO_MAP, "UNSAFE: no CMO on a "
                             "new mapping", mutation="no-cmo"),
    "mutant-no-dirty": Variant("mutant-no-dirty", "unmap-first", CMO_MAP, "UNSAFE: relaxes "
                               "write permission while logging without marking dirty",
                               mutation="no-dirty"),
    "mutant-no-put": Variant("mutant-no-put", "unmap-first", CMO_MAP, "UNSAFE: forgets a "
                             "reference drop when breaking a leaf", mutation="no-put"),
}
MUTANTS = tuple(k for k in VARIANTS if k.startswith("mutant-"))


def variant(name: str, coalesce: str | None = None, cmo: str | None = None) -> Variant:
    """Look up a preset, optionally overriding its strategy or CMO placement."""
    from s2sim.errors import ConfigError

    v = VARIANTS.get(name)
    if v is None:
        raise ConfigError(f"variant {name!r} is unknown; use one of {', '.join(VARIANTS)}")
    if coalesce is not None and coalesce not in STRATEGIES:
        raise ConfigError(f"coalescing strategy {coalesce!r} is unknown; use one of "
                          f"{', '.join(STRATEGIES)}")
    if cmo is not None and cmo not in (CMO_FAULT, CMO_MAP):
        raise ConfigError(f"CMO placement {cmo!r} is unknown; use fault or map")
    if coalesce is None and cmo is None:
        return v
    c, m = coalesce or v.coalesce, cmo or v.cmo
    return Variant(f"{v.name}[{c},{m}]", c, m, f"{v.summary} (overridden: {c}, cmo {m})",
                   v.bbm_level if c == "bbml2" else 0, v.bbm_noabort and c == "bbml2",
                   v.mutation)
