"""Steps: the visible effects a KVM operation is made of.

An operation is a generator that performs one effect through the Machine and
then yields a `Step` describing it (its cost class and size), so that the
simulator can charge time from a profile and let other CPUs run in between,
and the explorer can enumerate orders. The effect is visible from the moment
the step is yielded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from s2sim.arch.events import Event, register

WRITE, TLBI, DSB, CMO, ALLOC, FREE, TEARDOWN = (
    "write", "tlbi", "dsb", "cmo", "alloc", "free", "teardown")
STEP_KINDS = (WRITE, TLBI, DSB, CMO, ALLOC, FREE, TEARDOWN)


@dataclass(slots=True)
class Step:
    """One effect of an operation.

    kind: write | tlbi | dsb | cmo | alloc | free | teardown
    level, ipa, old, new: for writes (and the level/IPA a TLBI names)
    pa, size: CMO range, freed / allocated page
    tlbi: the TLBI operation; entries/pages: the bulk teardown's work
    visits: software walker entry visits since the previous step (charged with it)
    """

    kind: str
    level: int = -1
    ipa: int = -1
    old: int = 0
    new: int = 0
    pa: int = 0
    size: int = 0
    tlbi: str = ""
    entries: int = 0
    pages: int = 0
    visits: int = 0
    note: str = ""

    def to_dict(self) -> dict:
        d = {"kind": self.kind}
        if self.kind == WRITE:
            d.update(level=self.level, ipa=self.ipa, old=self.old, new=self.new)
        elif self.kind == TLBI:
            d.update(tlbi=self.tlbi, ipa=self.ipa, level=self.level, size=self.size)
        elif self.kind == CMO:
            d.update(pa=self.pa, size=self.size)
        elif self.kind in (ALLOC, FREE):
            d.update(pa=self.pa, level=self.level)
        elif self.kind == TEARDOWN:
            d.update(pa=self.pa, level=self.level, entries=self.entries, pages=self.pages)
        d["visits"] = self.visits
        if self.note:
            d["note"] = self.note
        return d


@register
@dataclass(slots=True, frozen=True)
class Teardown(Event):
    """KVM freed an unlinked subtree in one bulk step (pages, valid entries dropped)."""

    kind: ClassVar[str] = "teardown"
    time: int
    cpu: int
    root_pa: int
    level: int
    pages: int
    entries: int
