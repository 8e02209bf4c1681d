"""The event stream: every architecturally visible effect, as a typed record.

Metrics, the safety checker and the trace recorder subscribe here; none of
them is woven into the model. Producers check `bus.on` before building an
event so that a run with no subscriber pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import ClassVar


@dataclass(slots=True)
class Event:
    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["event"] = self.kind
        return d


@dataclass(slots=True)
class DescWrite(Event):
    """A store to a descriptor: `table_pa` is the table page, `index` the entry.

    `ipa` is the first IPA the entry maps (-1 if the writer does not know it),
    `level` the level of the table. `hw` marks a hardware update (HA sets AF).
    """

    kind: ClassVar[str] = "desc_write"
    time: int
    cpu: int
    table_pa: int
    index: int
    level: int
    ipa: int
    old: int
    new: int
    hw: bool = False


@dataclass(slots=True)
class Tlbi(Event):
    """A TLBI instruction issued (broadcast); takes effect at the next DSB."""

    kind: ClassVar[str] = "tlbi"
    time: int
    cpu: int
    op: str
    vmid: int
    ipa: int = 0
    size: int = 0
    ttl: int = -1


@dataclass(slots=True)
class Dsb(Event):
    """DSB ISH: every TLBI issued before it by this CPU has completed."""

    kind: ClassVar[str] = "dsb"
    time: int
    cpu: int
    completed: int = 0


@dataclass(slots=True)
class Cmo(Event):
    """Data-cache maintenance (DC CIVAC, clean+invalidate to PoC) over [pa, pa+size)."""

    kind: ClassVar[str] = "cmo"
    time: int
    cpu: int
    pa: int
    size: int
    op: str = "civac"


@dataclass(slots=True)
class PageAlloc(Event):
    kind: ClassVar[str] = "page_alloc"
    time: int
    cpu: int
    pa: int
    generation: int
    purpose: str = "table"


@dataclass(slots=True)
class PageFree(Event):
    kind: ClassVar[str] = "page_free"
    time: int
    cpu: int
    pa: int
    generation: int
    purpose: str = "table"


@dataclass(slots=True)
class RefCount(Event):
    """A table page's reference count changed (get_page / put_page)."""

    kind: ClassVar[str] = "refcount"
    time: int
    cpu: int
    pa: int
    count: int
    delta: int


@dataclass(slots=True)
class Walk(Event):
    """A hardware translation-table walk (a TLB miss), its result or fault."""

    kind: ClassVar[str] = "walk"
    time: int
    cpu: int
    vmid: int
    ipa: int
    access: str
    pa: int
    level: int
    fault: str = ""
    start_level: int = -1


@dataclass(slots=True)
class TlbFill(Event):
    """An entry cached: `leaf` True for a translation, False for a walk-cache entry."""

    kind: ClassVar[str] = "tlb_fill"
    time: int
    cpu: int
    vmid: int
    ipa: int
    size: int
    level: int
    desc: int
    leaf: bool
    table_pa: int = 0
    table_gen: int = 0


@dataclass(slots=True)
class TlbConflict(Event):
    """A lookup matched two entries of different sizes or outputs."""

    kind: ClassVar[str] = "tlb_conflict"
    time: int
    cpu: int
    vmid: int
    ipa: int
    sizes: tuple
    descs: tuple


@dataclass(slots=True)
class Access(Event):
    """A guest access that completed, with the PA it reached and how."""

    kind: ClassVar[str] = "access"
    time: int
    cpu: int
    vmid: int
    ipa: int
    access: str
    pa: int
    from_tlb: bool
    desc: int = 0


EVENT_TYPES: dict[str, type[Event]] = {
    c.kind: c
    for c in (DescWrite, Tlbi, Dsb, Cmo, PageAlloc, PageFree, RefCount, Walk, TlbFill,
              TlbConflict, Access)
}


def register(cls: type[Event]) -> type[Event]:
    """Register an event class from a higher layer (kvm/, sim/) for trace replay."""
    EVENT_TYPES[cls.kind] = cls
    return cls


def event_from_dict(d: dict) -> Event:
    """Rebuild an event from its `to_dict` form (trace replay). Raises KeyError/TypeError."""
    cls = EVENT_TYPES[d["event"]]
    names = {f.name for f in fields(cls)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
    return cls(**kw)


class EventBus:
    """Publish/subscribe for events.

    `on` is False while nobody listens; `want[kind]` says whether any
    subscriber takes that kind, so hot producers (walks, TLB fills, guest
    accesses) build an event only when someone will read it.
    """

    __slots__ = ("_subs", "on", "want")

    def __init__(self) -> None:
        self._subs: list[tuple[Callable[[Event], None], frozenset | None]] = []
        self.on = False
        self.want: dict[str, bool] = {}
        self._refresh()

    def _refresh(self) -> None:
        self.on = bool(self._subs)
        kinds = set(EVENT_TYPES)
        self.want = {k: any(ks is None or k in ks for _, ks in self._subs) for k in kinds}

    def subscribe(self, fn: Callable[[Event], None], kinds=None) -> None:
        """Call `fn` for every event, or only for events whose `kind` is in `kinds`."""
        self._subs.append((fn, None if kinds is None else frozenset(kinds)))
        self._refresh()

    def unsubscribe(self, fn: Callable[[Event], None]) -> None:
        self._subs = [(f, k) for f, k in self._subs if f is not fn]
        self._refresh()

    def emit(self, ev: Event) -> None:
        kind = ev.kind
        for fn, kinds in self._subs:
            if kinds is None or kind in kinds:
                fn(ev)
