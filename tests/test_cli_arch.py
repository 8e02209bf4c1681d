"""`s2sim geometry` and `s2sim decode`: JSON output and bad input.

Expected values are architectural facts (see test_geometry.py and
test_descriptors.py for the sources); bad input must give exit code 2, one
line on stderr and no traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from s2sim.cli import main


def run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def run_proc(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s2sim.cli", *argv], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.parametrize("granule,ipa,levels,start,concat,blocks,sl0,tg0", [
    ("4K", 40, 3, 1, 2, {"1": 1 << 30, "2": 2 << 20}, 0b01, 0b00),
    ("4K", 48, 4, 0, 1, {"1": 1 << 30, "2": 2 << 20}, 0b10, 0b00),
    ("16K", 40, 2, 2, 16, {"2": 32 << 20}, 0b01, 0b10),
    ("64K", 40, 2, 2, 1, {"2": 512 << 20}, 0b01, 0b01),
])
def test_geometry_json(capsys, granule, ipa, levels, start, concat, blocks, sl0, tg0) -> None:
    code, out, err = run_main(capsys, ["geometry", "--granule", granule, "--ipa-bits", str(ipa),
                                       "--json"])
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["levels"] == levels
    assert data["start_level"] == start
    assert data["concatenated_tables"] == concat
    assert data["block_sizes"] == blocks  # bytes, keyed by level
    assert all(isinstance(v, int) for v in data["block_sizes"].values())
    assert data["vtcr"]["t0sz"] == 64 - ipa
    assert data["vtcr"]["sl0"] == sl0
    assert data["vtcr"]["tg0"] == tg0


def test_geometry_json_subprocess() -> None:
    p = run_proc(["geometry", "--granule", "4K", "--ipa-bits", "40", "--json"])
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert (data["levels"], data["start_level"], data["concatenated_tables"]) == (3, 1, 2)
    assert data["vtcr"] == {**data["vtcr"], "t0sz": 24, "sl0": 1, "tg0": 0}


def test_geometry_human_output(capsys) -> None:
    code, out, err = run_main(capsys, ["geometry", "--granule", "64K", "--ipa-bits", "42"])
    assert code == 0 and err == ""
    assert "VTCR_EL2" in out and "512M" in out and "T0SZ" in out


def test_decode_json_page(capsys) -> None:
    # Page at level 3: OA 0x12345000, S2AP 0b11, MemAttr 0b1111, SH 0b11, AF 1, XN 1.
    code, out, err = run_main(capsys, ["decode", "0x00400000123457FF", "--json"])
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["type"] == "page"
    assert data["output_address"] == 0x12345000 and isinstance(data["output_address"], int)
    assert (data["s2ap"], data["memattr"], data["af"], data["sh"], data["xn"]) == (
        0b11, 0b1111, 1, 0b11, 1)


def test_decode_json_block_subprocess() -> None:
    # README example: a 2 MiB block at level 2, OA 0x40000000.
    p = run_proc(["decode", "0x400000400007fd", "--level", "2", "--json"])
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["type"] == "block" and data["output_address"] == 0x40000000
    assert (data["s2ap"], data["memattr"], data["af"], data["sh"], data["xn"]) == (
        0b11, 0b1111, 1, 0b11, 1)


def test_decode_json_table_and_invalid(capsys) -> None:
    code, out, _ = run_main(capsys, ["decode", "0x12345003", "--level", "1", "--ipa-bits", "40",
                                     "--json"])
    assert code == 0 and json.loads(out)["type"] == "table"
    assert json.loads(out)["output_address"] == 0x12345000
    code, out, _ = run_main(capsys, ["decode", "0x744", "--json"])
    assert code == 0 and json.loads(out)["type"] == "invalid"


def test_decode_human_output(capsys) -> None:
    code, out, err = run_main(capsys, ["decode", "0x00400000123457FF"])
    assert code == 0 and err == ""
    assert "0x12345000" in out and "page" in out


BAD = [
    ["geometry", "--granule", "8K"],
    ["geometry", "--ipa-bits", "52"],
    ["geometry", "--ipa-bits", "31"],
    ["geometry", "--ipa-bits", "49"],
    ["geometry", "--ipa-bits", "abc"],
    ["geometry", "--bogus"],
    ["decode", "zz"],
    ["decode", "0x1", "--level", "3"],  # reserved level-3 encoding
    ["decode", "0x1", "--level", "0", "--ipa-bits", "40"],  # no level 0 in that geometry
    ["decode", "0x1", "--level", "1", "--granule", "64K"],  # no level-1 blocks with 64K
    ["decode", hex(1 << 64)],
    ["decode", "0x3", "--granule", "2K"],
]


@pytest.mark.parametrize("argv", BAD)
def test_bad_input_in_process(capsys, argv) -> None:
    code, _out, err = run_main(capsys, argv)
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("s2sim: error:"), err


@pytest.mark.parametrize("argv", [BAD[1], BAD[6], BAD[7]])
def test_bad_input_subprocess(argv) -> None:
    p = run_proc(argv)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stdout == ""
