"""`s2sim ops`: JSON schema, the rfc vs v5.11 coalescing order, and bad input.

The orders asserted are the documented ones (DOMAIN.md section 2): v5.11
tears the old subtree down while the entry is invalid and installs the block
last; the RFC installs the block right after the TLBI and tears down after.
Bad input must give exit code 2, one line on stderr, no traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from s2sim.arch import descriptors as d
from s2sim.cli import main

KINDS = {"write", "tlbi", "dsb", "cmo", "alloc", "free", "teardown"}
FILL_2M = "map 0x40000000 2M 0x80000000 rw as 4K"
BLOCK_2M = "map 0x40000000 2M 0x80000000 rw"
FILL_1G = "map 0x40000000 1G 0x80000000 rw as 4K"
BLOCK_1G = "map 0x40000000 1G 0x80000000 rw"


def run_main(capsys, argv):
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def ops_json(capsys, *args):
    code, out, err = run_main(capsys, ["ops", "--json", *args])
    assert code == 0, err
    return json.loads(out)


def coalesce_order(data, line_text):
    """Kinds of the steps of one script line, with the block write labelled."""
    out = []
    for s in data["steps"]:
        if s["op"] != line_text:
            continue
        if s["kind"] == "write":
            if s.get("note") == "break" or not s["new"] & 1:
                out.append("break")
            elif d.is_leaf(s["new"], s["level"]):
                out.append("block")
            else:
                out.append("write")
        else:
            out.append(s["kind"])
    return out


def test_json_schema(capsys):
    data = ops_json(capsys, "--variant", "patch1", FILL_2M, BLOCK_2M, "unmap 0x40000000 4K",
                    "map 0x40200000 4K 0x90000000 r", "wrprotect 0x40200000 4K",
                    "relax 0x40200000 rw", "mkold 0x40200000 4K", "mkyoung 0x40200000",
                    "flush 0x40000000 4M")
    assert {"steps", "table"} <= set(data)
    assert data["config"]["variant"] == "patch1"
    assert data["steps"]
    for s in data["steps"]:
        assert isinstance(s["op"], str) and s["kind"] in KINDS
        if s["kind"] == "write":
            for k in ("level", "ipa", "old", "new"):
                assert isinstance(s[k], int)
            assert 1 <= s["level"] <= 3 and s["ipa"] >= 0x40000000
        if s["kind"] == "tlbi":
            assert s["tlbi"] in ("VMALLS12E1IS", "IPAS2E1IS", "VMALLE1IS")
    seen = {s["kind"] for s in data["steps"]}
    assert {"write", "tlbi", "dsb", "cmo", "teardown", "free"} <= seen
    # the unmap removed the 2M block; the final table holds the 4K page at 0x40200000
    leaves = [(e["level"], e["ipa"], e["output_address"], e["prot"])
              for e in data["table"] if e["type"] in ("block", "page")]
    assert leaves == [(3, 0x40200000, 0x90000000, "rw-")]
    for e in data["table"]:
        assert int(e["desc"], 16) & 1 and e["level"] in (1, 2, 3)
    assert [r["op"] for r in data["results"]][:2] == [FILL_2M, BLOCK_2M]
    assert data["results"][0]["leaves"] == 512 and data["results"][1]["coalesced"] == 1


def test_steps_of_one_page_map(capsys):
    data = ops_json(capsys, "map 0x1000 4K 0x80001000 rw")
    writes = [(s["level"], s["ipa"]) for s in data["steps"] if s["kind"] == "write"]
    assert writes == [(1, 0x1000), (2, 0x1000), (3, 0x1000)]   # two tables, then the page
    assert [s["kind"] for s in data["steps"]] == ["write"] * 3     # v5.11: no CMO in map
    page = data["table"][-1]
    assert (page["level"], page["ipa"], page["output_address"]) == (3, 0x1000, 0x80001000)


@pytest.mark.parametrize("variant,expect", [
    ("v5.11", ["break", "tlbi", "dsb", "teardown", "block"]),
    ("patch1", ["break", "tlbi", "dsb", "teardown", "cmo", "block"]),
    ("rfc", ["break", "tlbi", "dsb", "block", "teardown"]),
    ("block-first", ["break", "tlbi", "dsb", "cmo", "block", "teardown"]),
    ("cmo-first", ["cmo", "break", "tlbi", "dsb", "block", "teardown"]),
    ("bbml2", ["cmo", "block", "tlbi", "dsb", "teardown"]),
])
def test_coalesce_order_2m(capsys, variant, expect):
    data = ops_json(capsys, "--variant", variant, FILL_2M, BLOCK_2M)
    assert coalesce_order(data, BLOCK_2M) == expect
    assert [(e["level"], e["type"]) for e in data["table"]] == [(1, "table"), (2, "block")]


def test_rfc_vs_v511_1g_example(capsys):
    """The documented example: block write before the teardown (rfc), after it (v5.11)."""
    tables = {}
    for variant in ("rfc", "v5.11"):
        data = ops_json(capsys, "--variant", variant, FILL_1G, BLOCK_1G)
        order = coalesce_order(data, BLOCK_1G)
        td = [s for s in data["steps"] if s["kind"] == "teardown"]
        assert len(td) == 1 and td[0]["pages"] == 513 and td[0]["entries"] == 512 + 512 * 512
        if variant == "rfc":
            assert order == ["break", "tlbi", "dsb", "block", "teardown"]
        else:
            assert order == ["break", "tlbi", "dsb", "teardown", "block"]
        assert order.index("block") < order.index("teardown") if variant == "rfc" else \
            order.index("block") > order.index("teardown")
        tables[variant] = data["table"]
        assert [(e["level"], e["type"], e["output_address"]) for e in data["table"]] == [
            (1, "block", 0x80000000)]
    assert tables["rfc"] == tables["v5.11"]


def test_fwb_never_cleans(capsys):
    data = ops_json(capsys, "--variant", "block-first", "--fwb", FILL_2M, BLOCK_2M,
                    "flush 0x40000000 2M", "unmap 0x40000000 2M")
    assert data["steps"] and not [s for s in data["steps"] if s["kind"] == "cmo"]
    assert data["config"]["fwb"] is True


def test_overrides(capsys):
    data = ops_json(capsys, "--variant", "v5.11", "--coalesce", "bbml2", "--cmo", "map",
                    FILL_2M, BLOCK_2M)
    assert data["config"]["coalesce"] == "bbml2" and data["config"]["cmo"] == "map"
    assert coalesce_order(data, BLOCK_2M) == ["cmo", "block", "tlbi", "dsb", "teardown"]


def test_file_input_equals_arguments(capsys, tmp_path):
    f = tmp_path / "script.ops"
    f.write_text(f"# fill, then coalesce\n{FILL_2M}\n\n{BLOCK_2M}   # the block\n")
    a = ops_json(capsys, "--variant", "rfc", "--file", str(f))
    b = ops_json(capsys, "--variant", "rfc", FILL_2M, BLOCK_2M)
    assert a["steps"] == b["steps"] and a["table"] == b["table"]


def test_destroy_leaves_nothing(capsys):
    data = ops_json(capsys, FILL_2M, "map 0x80000000 1G 0x100000000 rw", "destroy")
    assert data["table"] == [] and data["pages_live"] == 0
    assert any(s["kind"] == "teardown" for s in data["steps"])


def test_human_output(capsys):
    code, out, err = run_main(capsys, ["ops", "--variant", "rfc", "--limit", "5",
                                       "map 0x40000000 16K 0x80000000 rw as 4K",
                                       "map 0x40000000 2M 0x80000000 rw"])
    assert code == 0 and err == ""
    assert "final table" in out and "steps" in out and "more steps" in out
    code, out, _ = run_main(capsys, ["ops", "map 0x40000000 16K 0x80000000 rw as 4K",
                                     "map 0x40000000 2M 0x80000000 rw"])
    assert code == 0
    assert "VMALLS12E1IS" in out and "free subtree" in out and "(break)" in out


BAD = [
    (["map 0x1001 4K 0x80000000 rw"], "align"),                 # unaligned IPA
    (["map 0x1000 4K 0x80000800 rw"], "PA"),                    # unaligned PA
    (["map 0x0 0 0x80000000 rw"], "size"),                      # size zero
    (["map 0x0 0 0x80000000 rw as 4K"], "size"),                # size zero, page by page
    (["unmap 0x0 0"], "size"),
    (["map 0x0 -4K 0x80000000 rw"], "size"),
    (["map 0x10000000000 4K 0x80000000 rw"], "IPA"),            # beyond 40 bits
    (["map 0x0 4K 0x80000000 rw as 3K"], "leaf size"),
    (["map 0x1000 2M 0x80000000 rw as 2M"], "aligned"),
    (["frob 0x0 4K"], "unknown"),                               # unknown op
    (["map 0x0 4K 0x80000000 rwz"], "permission"),              # bad prot
    (["relax 0x0 q"], "permission"),
    (["map 0x0 4K"], "arguments"),
    (["map zz 4K 0 rw"], "IPA"),
    (["map 0 4Q 0 rw"], "size"),
    (["map 0 4K 0 rw", "destroy", "map 0 4K 0 rw"], "destroyed"),
    (["--variant", "v9", "map 0 4K 0 rw"], "variant"),            # unknown variant
    (["--coalesce", "sideways", "map 0 4K 0 rw"], "strategy"),
    (["--cmo", "never", "map 0 4K 0 rw"], "CMO"),
    (["--granule", "8K", "map 0 4K 0 rw"], "granule"),
    (["--ipa-bits", "52", "map 0 4K 0 rw"], "IPA"),
    (["--file", "/nonexistent/script.ops"], "cannot be read"),   # unreadable file
    (["--file", "/"], "cannot be read"),                         # a directory
    ([], "no operations"),
    (["# only a comment"], "no operations"),
    (["--bogus-option", "map 0 4K 0 rw"], ""),
    (["--ipa-bits", "forty", "map 0 4K 0 rw"], ""),
]


@pytest.mark.parametrize("args,word", BAD)
def test_bad_input_exit_2_one_line(capsys, args, word):
    code, out, err = run_main(capsys, ["ops", *args])
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "Traceback" not in out
    assert lines[0].startswith("s2sim: error:")
    assert word.lower() in lines[0].lower()


def test_bad_input_subprocess():
    for args in (["ops", "map 0x1001 4K 0 rw"], ["ops", "--variant", "nope", "destroy"],
                 ["ops", "--file", "/nonexistent"]):
        p = subprocess.run([sys.executable, "-m", "s2sim.cli", *args], capture_output=True,
                           text=True, timeout=60, check=False)
        assert p.returncode == 2
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
        assert p.stdout == ""
    p = subprocess.run([sys.executable, "-m", "s2sim.cli", "ops", "--json",
                        "map 0x40000000 2M 0x80000000 rw"], capture_output=True, text=True,
                       timeout=60, check=False)
    assert p.returncode == 0 and json.loads(p.stdout)["table"][-1]["type"] == "block"
