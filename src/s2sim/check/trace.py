"""Trace record and replay: the event stream as JSON lines.

Line 1 is a header `{"trace": "s2sim", "schema": N, "version": ...}`; each
further line is one event's `to_dict()`. `replay` feeds a trace to any
observer (the Checker gives the same verdicts offline as online).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import fields
from typing import TextIO

from s2sim import __version__
from s2sim.arch import events as ev
from s2sim.errors import ConfigError

# Importing these registers their event kinds for replay.
from s2sim.kvm import events as _kvm_events  # noqa: F401
from s2sim.kvm import steps as _kvm_steps  # noqa: F401
from s2sim.sim import events as _sim_events  # noqa: F401

SCHEMA = 1

_FIELD_TYPES = {"int": int, "str": str, "bool": bool, "tuple": tuple}


def _event(d) -> ev.Event:
    """`event_from_dict`, then each field's JSON type checked against its annotation
    (a string where an int belongs would otherwise crash an observer)."""
    e = ev.event_from_dict(d)
    for f in fields(e):
        want = _FIELD_TYPES.get(f.type)
        v = getattr(e, f.name)
        if want is not None and not isinstance(v, want):
            raise TypeError(f"field {f.name!r} is {type(v).__name__}, not {want.__name__}")
    return e


class TraceWriter:
    """A bus subscriber writing every event as one JSON line."""

    def __init__(self, fh: TextIO) -> None:
        self.fh = fh
        self.count = 0
        fh.write(json.dumps({"trace": "s2sim", "schema": SCHEMA, "version": __version__}) + "\n")

    def __call__(self, e: ev.Event) -> None:
        self.fh.write(json.dumps(e.to_dict(), sort_keys=True, separators=(",", ":")) + "\n")
        self.count += 1


def replay(path: str, observer: Callable[[ev.Event], None]) -> int:
    """Feed every event of the trace at `path` to `observer`; returns the event count.

    Raises ConfigError for an unreadable file, a missing or foreign header,
    another schema version, or a malformed line (naming its number).
    """
    try:
        fh = open(path, encoding="utf-8", errors="replace")  # bad bytes: a malformed line
    except OSError as e:
        raise ConfigError(f"trace {path!r} cannot be read: {e.strerror}") from None
    n = 0
    with fh:
        first = fh.readline()
        try:
            head = json.loads(first)
        except json.JSONDecodeError:
            raise ConfigError(f"trace {path!r} line 1: not an s2sim trace header") from None
        if not isinstance(head, dict) or head.get("trace") != "s2sim":
            raise ConfigError(f"trace {path!r} line 1: not an s2sim trace header")
        if head.get("schema") != SCHEMA:
            raise ConfigError(f"trace {path!r} has schema {head.get('schema')!r}; this s2sim "
                              f"reads schema {SCHEMA}")
        for lineno, line in enumerate(fh, 2):
            if not line.strip():
                continue
            try:
                e = _event(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                raise ConfigError(f"trace {path!r} line {lineno}: malformed event "
                                  f"({type(err).__name__}: {err})") from None
            observer(e)
            n += 1
    return n
