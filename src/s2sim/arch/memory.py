"""Physical memory: a frame allocator, table pages, reference counts, generations.

A table page is an `array('Q')` of granule/8 entries: scalar reads are plain
Python ints, and `numpy.frombuffer` gives a zero-copy uint64 view for bulk
work. Each allocation of a frame bumps its generation, so a pointer kept as
(pa, generation) can later be recognised as stale (freed or reused).
Guest memory frames are handed out from a separate bump region so that large
aligned blocks (2 MiB, 1 GiB) are possible; their contents are not modelled,
only their addresses.
"""

from __future__ import annotations

from array import array

import numpy as np

from s2sim.errors import AddressError


class TablePage:
    """One translation-table page: its entries, KVM's refcount, and identity."""

    __slots__ = ("entries", "generation", "level", "pa", "refcount", "watch")

    def __init__(self, pa: int, n: int, generation: int, level: int) -> None:
        self.pa = pa
        self.watch = None  # vCPU read batches reading it (sim/batch.py), or None
        self.entries = array("Q", bytes(8 * n))
        self.refcount = 1
        self.generation = generation
        self.level = level

    def view(self) -> np.ndarray:
        """A zero-copy uint64 view of the entries (for vectorised work)."""
        return np.frombuffer(self.entries, dtype=np.uint64)

    def valid_count(self) -> int:
        return int(np.count_nonzero(self.view() & np.uint64(1)))


class PhysMem:
    """Frame allocator and registry of live table pages, keyed by PA.

    Table pages come from [table_base, ...) with a LIFO free list (as the
    kernel's page allocator tends to give back a just-freed page), which makes
    reuse, and hence use-after-free, observable.
    """

    def __init__(self, granule_size: int, pa_bits: int = 48,
                 table_base: int = 1 << 40, data_base: int = 1 << 32) -> None:
        self.granule = granule_size
        self.pa_bits = pa_bits
        self.entries_per_page = granule_size // 8
        self.tables: dict[int, TablePage] = {}
        self.generation: dict[int, int] = {}
        self._free: list[int] = []
        self._next_table = min(table_base, (1 << pa_bits) // 2)
        self._next_data = data_base
        self._data_limit = self._next_table
        self._freed_pages: dict[int, TablePage] = {}
        self.allocated = 0
        self.freed = 0

    # --- table pages ---------------------------------------------------------
    def alloc_table(self, level: int) -> TablePage:
        if self._free:
            pa = self._free.pop()
            del self._freed_pages[pa]
        else:
            pa = self._next_table
            self._next_table += self.granule
        gen = self.generation.get(pa, 0) + 1
        self.generation[pa] = gen
        page = TablePage(pa, self.entries_per_page, gen, level)
        self.tables[pa] = page
        self.allocated += 1
        return page

    def free_table(self, pa: int) -> TablePage:
        """Return a page to the allocator. Its contents stay readable until reuse."""
        page = self.tables.pop(pa, None)
        if page is None:
            raise AddressError(f"free of {pa:#x}, which is not a live table page")
        self._free.append(pa)
        self.freed += 1
        self._freed_pages[pa] = page
        return page

    def page(self, pa: int) -> TablePage | None:
        """The live table page at `pa`, or a freed one whose memory was not reused.

        A hardware walker that follows a stale pointer reads whatever the frame
        holds: the old contents until the frame is reused.
        """
        p = self.tables.get(pa)
        if p is None:
            p = self._freed_pages.get(pa)
        return p

    def is_live(self, pa: int, generation: int) -> bool:
        p = self.tables.get(pa)
        return p is not None and p.generation == generation

    # --- guest memory frames -------------------------------------------------
    def alloc_data(self, size: int, align: int) -> int:
        """A physically contiguous, `align`-aligned range for guest memory."""
        if align & (align - 1) or size <= 0:
            raise AddressError(f"bad guest frame request size={size:#x} align={align:#x}")
        base = (self._next_data + align - 1) & ~(align - 1)
        if base + size > self._data_limit:
            raise AddressError(f"out of guest physical memory allocating {size:#x} bytes")
        self._next_data = base + size
        return base
