"""Steps: the visible effects a KVM operation is made of.

An operation is a generator that yields a `Step` describing its next effect
(cost class and size) and performs that effect through the Machine when it
is resumed. The simulator charges the step's time from a profile before
resuming, so the effect becomes visible once its cost has been paid, and
other CPUs run in between; the explorer enumerates the orders. Steps with
no effect another CPU can observe (INVISIBLE) may be batched by a driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from s2sim.arch.events import Event, register

WRITE, TLBI, DSB, CMO, ALLOC, FREE, TEARDOWN = (
    "write", "tlbi", "dsb", "cmo", "alloc", "free", "teardown")
STEP_KINDS = (WRITE, TLBI, DSB, CMO, ALLOC, FREE, TEARDOWN)
VISIT = "visit"
# Work no other agent can observe: software walker visits and the fault
# handler's private bookkeeping (see kvm/vm.py).
INVISIBLE = frozenset({VISIT, "fault_base", "fault_locked", "topup", "mark_dirty"})


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
@dataclass(slots=True)
class Teardown(Event):
    """KVM freed an unlinked subtree in one bulk step (pages, valid entries dropped)."""

    kind: ClassVar[str] = "teardown"
    time: int
    cpu: int
    root_pa: int
    level: int
    pages: int
    entries: int
