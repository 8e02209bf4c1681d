"""Per-stage metrics, computed from the event stream (never woven into the model).

Invalid windows: a window opens when a valid descriptor is written invalid
(a break) and closes when that same entry is next written valid; an entry
that stays invalid (an unmap) opens no window. Only entries of live,
reachable table pages count.
"""

from __future__ import annotations

from collections import Counter

from s2sim.arch import events as ev
from s2sim.kvm.steps import Teardown
from s2sim.sim.events import (
    FaultHandled,
    FaultTaken,
    GuestAccesses,
    GuestWalks,
    HostMm,
    HostTouch,
)
from s2sim.sim.hostmm import COW_RACE_LOST, HOST_EVENTS, THP_RACE_LOST

KINDS = ("guest_accesses", "desc_write", "fault_taken", "fault_handled", "tlbi", "dsb", "cmo",
         "page_alloc", "page_free", "teardown", "host_touch", "host_mm")


class StageMetrics:
    """Accumulates one stage's figures; `to_dict` is the JSON form."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.faults_by_kind: Counter = Counter()
        self.faults_by_level: Counter = Counter()
        self.outcomes: Counter = Counter()
        self.tlbi: Counter = Counter()
        self.dsb = 0
        self.cmo_bytes = 0
        self.cmo_ops = 0
        self.cmo_sizes: Counter = Counter()  # bytes per CMO -> how many
        self.writes = 0
        self.hw_writes = 0
        self.pages_alloc = 0
        self.pages_freed = 0
        self.teardown_entries = 0
        self.accesses = 0
        self.walks = 0
        self.host_bytes_zeroed = 0
        self.host_mm: Counter = Counter()
        self.windows = 0
        self.window_total = 0
        self.window_max = 0
        self.fault_ns_total = 0
        self.seconds = 0.0
        self.lock = {}

    def to_dict(self) -> dict:
        faults = sum(self.faults_by_kind.values())
        return {
            "name": self.name,
            "seconds": self.seconds,
            "faults": faults,
            "faults_by_kind": dict(sorted(self.faults_by_kind.items())),
            "faults_by_level": {str(k): v for k, v in sorted(self.faults_by_level.items())},
            "outcomes": dict(sorted(self.outcomes.items())),
            "spurious_faults": self.outcomes.get("spurious", 0),
            "tlbi": dict(sorted(self.tlbi.items())),
            "tlbi_total": sum(self.tlbi.values()),
            "dsb": self.dsb,
            "cmo_bytes": self.cmo_bytes,
            "cmo_ops": self.cmo_ops,
            "cmo_by_size": {str(k): v for k, v in sorted(self.cmo_sizes.items(), reverse=True)},
            "descriptor_writes": self.writes,
            "hw_descriptor_writes": self.hw_writes,
            "table_pages_allocated": self.pages_alloc,
            "table_pages_freed": self.pages_freed,
            "teardown_entries": self.teardown_entries,
            "invalid_windows": self.windows,
            "invalid_window_total_ns": self.window_total,
            "invalid_window_max_ns": self.window_max,
            "guest_accesses": self.accesses,
            "walks": self.walks,
            "host_bytes_zeroed": self.host_bytes_zeroed,
            "host_mm": {k: self.host_mm.get(k, 0) for k in HOST_EVENTS},
            "mmu_notifier_retries": self.outcomes.get("retry", 0),
            "fault_ns_mean": (self.fault_ns_total // faults) if faults else 0,
            "lock_acquisitions": self.lock.get("acquisitions", 0),
            "lock_contended": self.lock.get("contended", 0),
            "lock_wait_ns": self.lock.get("wait_ns", 0),
            "lock_wait_max_ns": self.lock.get("max_wait_ns", 0),
            "lock_hold_ns": self.lock.get("hold_ns", 0),
        }


class Metrics:
    """Subscribes to a bus; `begin(name)` starts a new stage's accumulator."""

    def __init__(self, bus: ev.EventBus) -> None:
        self.stages: list[StageMetrics] = []
        self.cur: StageMetrics | None = None
        self._open: dict[tuple[int, int], int] = {}
        bus.subscribe(self.on_event, KINDS)

    def begin(self, name: str) -> StageMetrics:
        self.cur = StageMetrics(name)
        self.stages.append(self.cur)
        return self.cur

    def on_event(self, e: ev.Event) -> None:
        m = self.cur
        if m is None:
            return
        t = type(e)
        if t is GuestAccesses:
            m.accesses += e.count
            if not e.tlb_hit:
                m.walks += 1
        elif t is GuestWalks:
            m.accesses += e.count
            m.walks += e.count
        elif t is ev.DescWrite:
            if e.hw:
                m.hw_writes += 1
                return
            m.writes += 1
            key = (e.table_pa, e.index)
            if e.old & 1 and not e.new & 1:
                self._open[key] = e.time
            elif e.new & 1:
                t0 = self._open.pop(key, None)
                if t0 is not None:
                    w = e.time - t0
                    m.windows += 1
                    m.window_total += w
                    m.window_max = max(m.window_max, w)
        elif t is FaultTaken:
            m.faults_by_kind[e.fault] += 1
            m.faults_by_level[e.level] += 1
        elif t is FaultHandled:
            m.outcomes[e.outcome] += 1
            m.fault_ns_total += e.duration
        elif t is ev.Tlbi:
            m.tlbi[e.op] += 1
        elif t is ev.Dsb:
            m.dsb += 1
        elif t is ev.Cmo:
            m.cmo_bytes += e.size
            m.cmo_ops += 1
            m.cmo_sizes[e.size] += 1
        elif t is ev.PageAlloc:
            m.pages_alloc += 1
        elif t is ev.PageFree:
            m.pages_freed += 1
            # a freed page's entries can no longer close windows
            for k in [k for k in self._open if k[0] == e.pa]:
                del self._open[k]
        elif t is Teardown:
            m.teardown_entries += e.entries
        elif t is HostTouch:
            m.host_bytes_zeroed += e.size
        elif t is HostMm:
            m.host_mm[e.what] += 1
            if e.what in (THP_RACE_LOST, COW_RACE_LOST):
                m.host_bytes_zeroed += e.size  # zeroed in a frame then discarded
