"""A set of disjoint half-open integer intervals (dirty cache lines by PA range)."""

from __future__ import annotations

from bisect import bisect_left, bisect_right


class IntervalSet:
    """Sorted disjoint [start, end) intervals with add, remove and overlap queries."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, lo: int, hi: int) -> None:
        if hi <= lo:
            return
        i = bisect_left(self.ends, lo)      # first interval ending at/after lo
        j = bisect_right(self.starts, hi)   # intervals starting at/before hi
        if i < j:
            lo = min(lo, self.starts[i])
            hi = max(hi, self.ends[j - 1])
        self.starts[i:j] = [lo]
        self.ends[i:j] = [hi]

    def remove(self, lo: int, hi: int) -> None:
        if hi <= lo:
            return
        i = bisect_right(self.ends, lo)
        j = bisect_left(self.starts, hi)
        if i >= j:
            return
        keep_s, keep_e = [], []
        if self.starts[i] < lo:
            keep_s.append(self.starts[i])
            keep_e.append(lo)
        if self.ends[j - 1] > hi:
            keep_s.append(hi)
            keep_e.append(self.ends[j - 1])
        self.starts[i:j] = keep_s
        self.ends[i:j] = keep_e

    def overlap(self, lo: int, hi: int) -> tuple[int, int] | None:
        """The first stored interval overlapping [lo, hi), or None."""
        i = bisect_right(self.ends, lo)
        if i < len(self.starts) and self.starts[i] < hi:
            return self.starts[i], self.ends[i]
        return None

    def __len__(self) -> int:
        return len(self.starts)
