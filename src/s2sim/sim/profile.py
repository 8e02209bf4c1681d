"""Platform profiles: the cost of every effect, as data (TOML), validated.

A profile names the platform, its features (FWB, hardware AF, TTL), its TLB
shape and a cost per effect class. `load_profile(NAME|PATH)` finds a shipped
profile by name or reads a file; any malformed key is reported with its
name and line.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from s2sim.errors import ConfigError

COST_KEYS = {
    "guest_access_ns": "one guest access that hits the TLB",
    "walk_level_ns": "one descriptor read by the hardware walker",
    "exit_ns": "stage-2 abort: guest to KVM",
    "entry_ns": "KVM back to the guest",
    "fault_base_ns": "fault handling outside mmu_lock",
    "fault_locked_ns": "fixed fault handling under mmu_lock",
    "lock_acquire_ns": "uncontended lock + unlock",
    "lock_handoff_ns": "contended lock hand-off",
    "lock_handoff_per_waiter_ns": "added to a hand-off per CPU still spinning",
    "pte_read_ns": "one entry visited by KVM's walker",
    "pte_write_ns": "one descriptor store",
    "teardown_entry_ns": "one entry of an unlinked subtree",
    "table_alloc_ns": "one page into the memcache",
    "table_free_ns": "one table page freed",
    "host_page_fault_ns": "first touch of a host page, fixed",
    "host_zero_bytes_per_ns": "first touch zeroing bandwidth (GB/s)",
    "cmo_bytes_per_ns": "clean to PoC bandwidth (GB/s)",
    "tlbi_vmalls12e1is_ns": "TLBI VMALLS12E1IS",
    "tlbi_ipas2e1is_ns": "TLBI IPAS2E1IS",
    "tlbi_ipas2le1is_ns": "TLBI IPAS2LE1IS",
    "tlbi_ripas2e1is_ns": "TLBI RIPAS2E1IS",
    "tlbi_ripas2le1is_ns": "TLBI RIPAS2LE1IS",
    "tlbi_vmalle1is_ns": "TLBI VMALLE1IS",
    "dsb_ns": "DSB ISH completing broadcast TLBIs",
    "dirty_log_per_page_ns": "dirty-log enable bookkeeping per page",
}
PLATFORM_KEYS = {"name": str, "description": str, "fwb": bool, "ha": bool, "ttl": bool}
TLB_KEYS = {"capacity": int, "walk_capacity": int, "policy": str}


@dataclass
class Profile:
    name: str
    description: str = ""
    fwb: bool = False
    ha: bool = False
    ttl: bool = False
    tlb_capacity: int | None = 1152
    walk_capacity: int | None = 64
    tlb_policy: str = "lru"
    costs: dict[str, float] = field(default_factory=dict)
    source: str = ""
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "fwb": self.fwb,
                "ha": self.ha, "ttl": self.ttl,
                "tlb": {"capacity": self.tlb_capacity, "walk_capacity": self.walk_capacity,
                        "policy": self.tlb_policy},
                "costs": dict(sorted(self.costs.items())), "source": self.source,
                "meta": self.meta}


def _line_of(text: str, key: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*{re.escape(key)}\s*=", line):
            return i
    return 0


def parse_profile(text: str, source: str) -> Profile:
    """Parse and validate a profile. Raises ConfigError naming the key and line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"profile {source}: not valid TOML: {e}") from None

    def bad(key: str, why: str) -> ConfigError:
        line = _line_of(text, key.split(".")[-1])
        where = f" (line {line})" if line else ""
        return ConfigError(f"profile {source}: key {key}{where} {why}")

    for section in data:
        if section not in ("platform", "tlb", "costs", "meta"):
            raise bad(section, "is not a known section; use platform, tlb, costs, meta")
    plat = data.get("platform", {})
    for k, v in plat.items():
        if k not in PLATFORM_KEYS:
            raise bad(f"platform.{k}", f"is unknown; use {', '.join(PLATFORM_KEYS)}")
        if not isinstance(v, PLATFORM_KEYS[k]):
            raise bad(f"platform.{k}", f"must be a {PLATFORM_KEYS[k].__name__}, got {v!r}")
    if "name" not in plat:
        raise bad("platform.name", "is missing")
    tlb = data.get("tlb", {})
    for k, v in tlb.items():
        if k not in TLB_KEYS:
            raise bad(f"tlb.{k}", f"is unknown; use {', '.join(TLB_KEYS)}")
        if not isinstance(v, TLB_KEYS[k]) or isinstance(v, bool):
            raise bad(f"tlb.{k}", f"must be a {TLB_KEYS[k].__name__}, got {v!r}")
        if k != "policy" and v < 1:
            raise bad(f"tlb.{k}", f"must be at least 1, got {v}")
    if tlb.get("policy", "lru") not in ("lru", "fifo"):
        raise bad("tlb.policy", f"must be lru or fifo, got {tlb['policy']!r}")
    costs = data.get("costs", {})
    for k, v in costs.items():
        if k not in COST_KEYS:
            raise bad(f"costs.{k}", "is not a known cost; known: " + ", ".join(COST_KEYS))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(f"costs.{k}", f"must be a number, got {v!r}")
        if v < 0 or (k.endswith("_bytes_per_ns") and v <= 0):
            raise bad(f"costs.{k}", f"must be positive, got {v}")
        if k == "guest_access_ns" and v < 1:  # integer ns; vCPU run-ahead divides by it
            raise bad(f"costs.{k}", f"must be at least 1 ns, got {v}")
    missing = [k for k in COST_KEYS if k not in costs]
    if missing:
        raise bad(f"costs.{missing[0]}", "is missing (every cost must be given: "
                  + ", ".join(missing) + ")")
    return Profile(plat["name"], plat.get("description", ""), plat.get("fwb", False),
                   plat.get("ha", False), plat.get("ttl", False), tlb.get("capacity", 1152),
                   tlb.get("walk_capacity", 64), tlb.get("policy", "lru"),
                   {k: float(costs[k]) for k in COST_KEYS}, source, data.get("meta", {}))


def shipped_profiles() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("s2sim.profiles").iterdir()
                  if p.name.endswith(".toml"))


def load_profile(name_or_path: str) -> Profile:
    """A shipped profile by name, or a TOML file by path."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or "/" in name_or_path:
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"profile file {name_or_path!r} cannot be read: {e.strerror}"
                              ) from None
        return parse_profile(text, name_or_path)
    if name_or_path not in shipped_profiles():
        raise ConfigError(f"platform {name_or_path!r} is unknown; use one of "
                          f"{', '.join(shipped_profiles())} or a path to a .toml profile")
    text = resources.files("s2sim.profiles").joinpath(name_or_path + ".toml").read_text("utf-8")
    return parse_profile(text, name_or_path)
