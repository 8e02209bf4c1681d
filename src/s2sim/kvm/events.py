"""Events KVM's software publishes beside the architecture's effects.

They give an observer (the checker, offline from a trace too) what the
hardware events cannot: what the memory *should* translate to (memslots),
when dirty logging is on and what was marked, and when an operation that
revokes translations is complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from s2sim.arch.events import Event, register


@register
@dataclass(slots=True)
class StageConfig(Event):
    """Start of a stream: the geometry and what the checker must assume of the CPU."""

    kind: ClassVar[str] = "config"
    time: int
    cpu: int
    granule: str
    ipa_bits: int
    vmid: int
    root_pa: int
    fwb: bool
    bbm_level: int = 0
    bbm_noabort: bool = False
    schema: int = 1


@register
@dataclass(slots=True)
class MemslotAdded(Event):
    kind: ClassVar[str] = "memslot"
    time: int
    cpu: int
    slot: int
    base: int
    size: int
    pa: int


@register
@dataclass(slots=True)
class DirtyLog(Event):
    """Dirty logging of a slot switched on (after the write-protect and flush) or off."""

    kind: ClassVar[str] = "dirty_log"
    time: int
    cpu: int
    slot: int
    on: bool


@register
@dataclass(slots=True)
class MarkDirty(Event):
    kind: ClassVar[str] = "mark_dirty"
    time: int
    cpu: int
    ipa: int


@register
@dataclass(slots=True)
class OpDone(Event):
    """A page-table operation finished (after its TLBIs and DSB)."""

    kind: ClassVar[str] = "op_done"
    time: int
    cpu: int
    op: str
    ipa: int
    size: int
    rc: int
