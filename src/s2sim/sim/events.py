"""Events the simulator publishes beside the architecture's: faults and stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from s2sim.arch.events import Event, register


@register
@dataclass(slots=True)
class FaultTaken(Event):
    """A vCPU exits with a stage-2 abort."""

    kind: ClassVar[str] = "fault_taken"
    time: int
    cpu: int
    ipa: int
    fault: str
    level: int
    access: str


@register
@dataclass(slots=True)
class FaultHandled(Event):
    """KVM finished handling a fault: its outcome and how long it took (exit to entry)."""

    kind: ClassVar[str] = "fault_handled"
    time: int
    cpu: int
    ipa: int
    outcome: str
    duration: int
    lock_wait: int


@register
@dataclass(slots=True)
class GuestAccesses(Event):
    """`count` guest accesses of one vCPU completed from `ipa` on (a run-ahead batch)."""

    kind: ClassVar[str] = "guest_accesses"
    time: int
    cpu: int
    ipa: int
    stride: int
    count: int
    access: str
    pa: int
    tlb_hit: bool
    desc: int = 0
    level: int = -1


@dataclass(slots=True)
class GuestWalks(Event):
    """`count` guest accesses of one vCPU from `ipa` on, each a TLB miss and a walk (a
    read batch, sim/batch.py). Only ever sent to the metrics: with any other subscriber
    batches are off and every access is a GuestAccesses event."""

    kind: ClassVar[str] = "guest_accesses"
    time: int
    cpu: int
    ipa: int
    stride: int
    count: int


@register
@dataclass(slots=True)
class HostTouch(Event):
    """The host allocated and zeroed a page of guest memory on first touch."""

    kind: ClassVar[str] = "host_touch"
    time: int
    cpu: int
    pa: int
    size: int


@register
@dataclass(slots=True)
class StageMark(Event):
    """A stage of the workload begins or ends."""

    kind: ClassVar[str] = "stage"
    time: int
    cpu: int
    name: str
    begin: bool


@register
@dataclass(slots=True)
class HostMm(Event):
    """The host's THP memory changed (sim/hostmm.py): `what` is one of huge_zero_maps,
    thp_allocs, thp_alloc_races_lost, pmd_splits, cows, cow_races_lost,
    notifier_invalidations; [pa, pa+size) the host range concerned."""

    kind: ClassVar[str] = "host_mm"
    time: int
    cpu: int
    what: str
    pa: int
    size: int
