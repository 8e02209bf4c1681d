"""The command line: parse, call the API, render. No model logic here."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from s2sim.arch import descriptors as desc
from s2sim.arch.geometry import Geometry, fmt_size
from s2sim.errors import S2SimError, parse_int
from s2sim.report.render import console, dumps, kv_table, table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="s2sim: KVM/arm64 stage-2 page tables, executable.")


@app.command()
def geometry(granule: str = typer.Option("4K", help="4K, 16K or 64K"),
             ipa_bits: int = typer.Option(40, "--ipa-bits", help="IPA size in bits, 32..48"),
             json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Levels, start level, concatenated tables, block sizes and VTCR_EL2 for a geometry."""
    g = Geometry.make(granule, ipa_bits)
    info = g.describe()
    if json_out:
        print(dumps(info))
        return
    c = console()
    c.print(kv_table(f"stage-2 geometry: {g.granule} granule, {g.ipa_bits}-bit IPA", [
        ("levels", info["levels"]),
        ("start level", info["start_level"]),
        ("concatenated start-level tables", info["concatenated_tables"]),
        ("entries at start level", info["start_level_entries"]),
        ("entries per table", info["entries_per_table"]),
    ]))
    rows = []
    for lvl in range(g.start_level, 4):
        kind = "page" if lvl == 3 else ("block or table" if g.block_allowed(lvl) else "table")
        rows.append([lvl, fmt_size(g.level_size(lvl)), g.level_shift(lvl), kind])
    c.print(table("levels", ["level", "bytes per entry", "shift", "leaf kinds"], rows))
    v = info["vtcr"]
    c.print(kv_table("VTCR_EL2", [(k.upper(), f"{v[k]} ({v[k]:#b})") for k in v]))


@app.command()
def decode(value: str = typer.Argument(..., help="descriptor value, e.g. 0x40000000000744"),
           level: int = typer.Option(3, help="level the descriptor sits at"),
           granule: str = typer.Option("4K", help="4K, 16K or 64K"),
           ipa_bits: int = typer.Option(48, "--ipa-bits", help="IPA size (decides valid levels)"),
           fwb: bool = typer.Option(False, "--fwb", help="decode MemAttr with FEAT_S2FWB"),
           json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Decode a stage-2 descriptor field by field."""
    g = Geometry.make(granule, ipa_bits)
    v = parse_int(value, "descriptor")
    d = desc.decode(v, level, g, fwb)
    data = d.to_dict()
    if json_out:
        print(dumps(data))
        return
    rows = [("value", data["value"]), ("level", level), ("type", d.type)]
    if d.type in ("table", "block", "page"):
        rows.append(("output address", f"{d.output_address:#x}"))
    if d.type in ("block", "page"):
        rows += [("maps", fmt_size(d.size)),
                 ("S2AP", f"{d.s2ap:#04b} ({data['permissions']})"),
                 ("MemAttr", f"{d.memattr:#06b} {d.memattr_name}"),
                 ("SH", f"{d.sh:#04b}"), ("AF", d.af), ("XN", d.xn), ("DBM", d.dbm),
                 ("Contiguous", d.contiguous), ("nT", d.nt), ("SW", f"{d.sw:#06b}")]
    console().print(kv_table("stage-2 descriptor", rows))


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: one clear line and exit 2 for bad input, never a traceback."""
    try:
        app(args=argv, standalone_mode=False)
    except S2SimError as e:
        print(f"s2sim: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code)
    except Exception as e:  # click (vendored by typer) usage errors
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            print(f"s2sim: error: {e.format_message()}", file=sys.stderr)
            sys.exit(2)
        if type(e).__name__ == "Abort":
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
