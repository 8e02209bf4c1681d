"""Rendering of pagetable-test and compare results (text tables and JSON files)."""

from __future__ import annotations

import os
import tempfile

from s2sim.arch.geometry import fmt_size
from s2sim.report.render import console, dumps, table

STAGE_ROWS = [
    ("faults", "faults"),
    ("spurious_faults", "spurious faults"),
    ("outcomes", "outcomes"),
    ("invalid_windows", "invalid windows"),
    ("invalid_window_max_ns", "longest invalid window"),
    ("invalid_window_total_ns", "total invalid time"),
    ("tlbi_total", "TLBIs"),
    ("cmo_bytes", "CMO bytes"),
    ("descriptor_writes", "descriptor writes"),
    ("table_pages_allocated", "table pages allocated"),
    ("table_pages_freed", "table pages freed"),
    ("lock_wait_ns", "mmu_lock wait"),
    ("lock_hold_ns", "mmu_lock hold"),
    ("guest_accesses", "guest accesses"),
]


def fmt_ns(ns: int) -> str:
    if ns >= 1_000_000_000:
        return f"{ns / 1e9:.3f} s"
    if ns >= 1_000_000:
        return f"{ns / 1e6:.3f} ms"
    if ns >= 1_000:
        return f"{ns / 1e3:.2f} us"
    return f"{ns} ns"


def fmt_value(key: str, v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={n}" for k, n in v.items()) or "-"
    if key.endswith("_ns"):
        return fmt_ns(int(v))
    if key == "cmo_bytes":
        return fmt_size(int(v)) if v else "0"
    return str(v)


def selftest_lines(result: dict) -> list[str]:
    """The selftest's own output lines, with s2sim's simulated times."""
    return [f"{s['name']}: total execution time: {s['seconds']:.9f}s" for s in result["stages"]]


def print_pagetable_test(result: dict) -> None:
    c = console()
    cfg = result["config"]
    c.print(f"Testing guest mode: {cfg['mode_name']}, test memory {fmt_size(cfg['size'])} "
            f"({cfg['backing']}), {cfg['vcpus']} vCPUs, variant {cfg['variant_resolved']['name']}"
            f", platform {result['profile']['name']}")
    for line in selftest_lines(result):
        c.print(line)
    names = [s["name"].removeprefix("KVM_").removesuffix("_MAPPINGS") for s in result["stages"]]
    rows = [[label] + [fmt_value(key, s[key]) for s in result["stages"]]
            for key, label in STAGE_ROWS]
    c.print(table("metrics per stage (simulated)", ["metric"] + names, rows))


def print_compare(results: list[dict]) -> None:
    c = console()
    cfg = results[0]["config"]
    c.print(f"compare: guest mode {cfg['mode_name']}, {fmt_size(cfg['size'])} {cfg['backing']}, "
            f"{cfg['vcpus']} vCPUs, platform {results[0]['profile']['name']}")
    variants = [r["config"]["variant_resolved"]["name"] for r in results]
    rows = []
    for i, st in enumerate(results[0]["stages"]):
        base = st["seconds"]
        row = [st["name"]]
        for r in results:
            s = r["stages"][i]["seconds"]
            ratio = f" ({s / base:.2f}x)" if base > 0 and r is not results[0] else ""
            row.append(f"{s:.6f} s{ratio}")
        rows.append(row)
    c.print(table("stage time (simulated; ratio to the first variant)", ["stage"] + variants,
                  rows))
    keys = [("faults", "faults"), ("spurious_faults", "spurious"),
            ("invalid_window_max_ns", "longest invalid window"),
            ("invalid_window_total_ns", "total invalid time"), ("cmo_bytes", "CMO bytes"),
            ("tlbi_total", "TLBIs"), ("lock_wait_ns", "mmu_lock wait")]
    for i, st in enumerate(results[0]["stages"]):
        rows = [[label] + [fmt_value(k, r["stages"][i][k]) for r in results] for k, label in keys]
        c.print(table(st["name"], ["metric"] + variants, rows))
    cmo_skippers = [r["config"]["variant_resolved"]["name"] for r in results
                    if r["config"]["variant_resolved"]["coalesce"] == "block-first-nocmo"]
    if cmo_skippers:
        c.print(f"note: {', '.join(cmo_skippers)} installs the coalesced block without cleaning "
                "it to PoC. This workload cleaned every page earlier, so nothing shows here; "
                "`s2sim explore coalesce --variant rfc` finds the coherency violation it allows "
                "when the table was only partly populated (the review's scenario).")


def write_json_atomic(path: str, obj) -> None:
    """Write JSON to `path` via a temporary file: never half-written."""
    d = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=".s2sim-", suffix=".json", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(dumps(obj))
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
