"""Charging: the simulated ns of each Step, from a platform profile."""

from __future__ import annotations

import math

from s2sim.kvm import vm
from s2sim.kvm.steps import Step
from s2sim.sim.profile import Profile


class CostModel:
    """Maps a Step to nanoseconds. Every constant comes from the profile."""

    def __init__(self, profile: Profile) -> None:
        c = profile.costs
        self.c = c
        self.access = int(c["guest_access_ns"])
        self.walk_level = int(c["walk_level_ns"])
        self.exit = int(c["exit_ns"])
        self.entry = int(c["entry_ns"])
        self.fixed = {
            "write": int(c["pte_write_ns"]),
            "dsb": int(c["dsb_ns"]),
            "free": int(c["table_free_ns"]),
            "alloc": int(c["table_alloc_ns"]),
            vm.FAULT_BASE: int(c["fault_base_ns"]),
            vm.FAULT_LOCKED: int(c["fault_locked_ns"]),
            vm.MARK_DIRTY: 0,
        }
        self.tlbi = {op: int(c[f"tlbi_{op.lower()}_ns"]) for op in (
            "VMALLS12E1IS", "IPAS2E1IS", "IPAS2LE1IS", "RIPAS2E1IS", "RIPAS2LE1IS",
            "VMALLE1IS")}
        self.cmo_bpns = c["cmo_bytes_per_ns"]
        self.zero_bpns = c["host_zero_bytes_per_ns"]
        self.host_fault = int(c["host_page_fault_ns"])
        self.pte_read = c["pte_read_ns"]
        self.teardown_entry = c["teardown_entry_ns"]
        self.free = int(c["table_free_ns"])
        self.alloc = int(c["table_alloc_ns"])

    def cmo_ns(self, size: int) -> int:
        return math.ceil(size / self.cmo_bpns)

    def zero_ns(self, size: int) -> int:
        return self.host_fault + math.ceil(size / self.zero_bpns)

    def step_ns(self, s: Step) -> int:
        """Cost of a page-table or fault-handler step (lock and host touch are the engine's)."""
        k = s.kind
        ns = self.fixed.get(k)
        if ns is None:
            if k == "tlbi":
                ns = self.tlbi[s.tlbi]
            elif k == "cmo":
                ns = self.cmo_ns(s.size)
            elif k == "teardown":
                ns = math.ceil(s.entries * self.teardown_entry + 0) + s.pages * self.free
            elif k == "visit":
                ns = 0
            elif k == vm.TOPUP:
                ns = s.pages * self.alloc
            elif k == vm.DIRTY_LOG_SETUP:
                ns = math.ceil(s.pages * self.c["dirty_log_per_page_ns"])
            else:
                raise ValueError(f"no cost for step kind {k!r}")
        if s.visits:
            ns += math.ceil(s.visits * self.pte_read)
        return ns
