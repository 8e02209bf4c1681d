"""KVM's per-vCPU memory cache of free table pages (kvm_mmu_memory_cache).

The fault handler tops it up before taking mmu_lock, because allocation may
sleep; page-table code under the lock only takes pages from it. Running dry
under the lock is the -ENOMEM case: the operation stops and leaves the table
valid.
"""

from __future__ import annotations

from s2sim.arch.machine import Machine
from s2sim.arch.memory import TablePage


class Memcache:
    """A stack of pre-allocated, zeroed table pages."""

    def __init__(self, machine: Machine, cpu: int = 0) -> None:
        self.machine, self.cpu = machine, cpu
        self.pages: list[TablePage] = []

    def __len__(self) -> int:
        return len(self.pages)

    def topup(self, min_pages: int) -> int:
        """Allocate until at least `min_pages` are cached; returns pages allocated."""
        n = 0
        while len(self.pages) < min_pages:
            self.pages.append(self.machine.alloc_table(-1, self.cpu))
            n += 1
        return n

    def take(self, level: int) -> TablePage | None:
        """A page for a new table at `level`, or None when empty (-ENOMEM)."""
        if not self.pages:
            return None
        page = self.pages.pop()
        page.level = level
        return page

    def free_all(self) -> None:
        """Return every cached page (vCPU teardown)."""
        while self.pages:
            self.machine.free_table(self.pages.pop().pa, self.cpu)
