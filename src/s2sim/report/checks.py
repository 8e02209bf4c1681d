"""Rendering of checker verdicts and explorer results."""

from __future__ import annotations

from s2sim.report.render import console, table


def _hist_line(h: dict) -> str:
    kind = h.get("event", "?")
    t = h.get("time", 0)
    cpu = h.get("cpu", -1)
    if kind == "desc_write":
        return (f"t={t} cpu{cpu} write L{h['level']} IPA {h['ipa']:#x}: {h['old']:#x} -> "
                f"{h['new']:#x}")
    if kind == "tlbi":
        return f"t={t} cpu{cpu} TLBI {h['op']} IPA {h['ipa']:#x}"
    if kind == "dsb":
        return f"t={t} cpu{cpu} DSB"
    if kind in ("page_free", "page_alloc"):
        return f"t={t} cpu{cpu} {kind} {h['pa']:#x}"
    if kind == "cmo":
        return f"t={t} cpu{cpu} CMO PA {h['pa']:#x} +{h['size']:#x}"
    rest = ", ".join(f"{k}={v}" for k, v in h.items() if k not in ("event", "time", "cpu"))
    return f"t={t} cpu{cpu} {kind} {rest}"


def print_check(check: dict, full: int = 3, title: str = "safety check") -> None:
    """Verdict per property, the first `full` violations in full, then counts."""
    c = console()
    rows = [[p, v, check["counts"].get(p, 0)] for p, v in check["properties"].items()]
    c.print(table(f"{title}: {check['total']} violations over {check['events_checked']} events",
                  ["property", "verdict", "violations"], rows))
    for v in check["violations"][:full]:
        c.print(f"[{v['property']}] t={v['time']}ns cpu{v['cpu']} IPA {v['ipa']:#x} "
                f"entry {v['entry']}: {v['detail']}", markup=False)  # "[name]" is no style
        for h in v["history"][-6:]:
            c.print("    " + _hist_line(h), markup=False)
    more = check["total"] - min(full, len(check["violations"]))
    if more > 0:
        c.print(f"... and {more} more (counts above; --json for the first "
                f"{len(check['violations'])} in full)")


def print_exploration(results: list[dict]) -> None:
    c = console()
    for r in results:
        c.print(f"scenario {r['scenario']} / variant {r['variant']}: {r['mode']}, "
                f"{r['schedules']} schedules, {r['states']} states explored"
                + ("" if r["complete"] else " (not exhaustive)"))
        held = [p for p, v in r["properties"].items() if v == "held"]
        bad = [p for p, v in r["properties"].items() if v != "held"]
        scope = "every explored schedule"
        c.print(f"  held on {scope}: {', '.join(held) or '-'}")
        if bad:
            c.print(f"  VIOLATED: {', '.join(bad)}")
        for f in r["violations"]:
            v = f["violation"]
            c.print(f"  [{f['property']}] {v['detail']}", markup=False)
            c.print(f"    entry {v['entry']}, IPA {v['ipa']:#x}, cpu{v['cpu']}")
            if f["schedule"]:
                c.print(f"    minimal schedule ({len(f['schedule'])} steps): "
                        + " ".join(f["schedule"]))
            else:
                c.print("    minimal schedule: none needed, the scenario's set-up alone "
                        "violates it")
