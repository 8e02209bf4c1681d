"""Trace record and replay: `--trace FILE` then `s2sim check-trace FILE` gives the
verdicts and counts `--check` gives on the same run; bad traces are exit 2 with
one line naming the problem (no traceback)."""

from __future__ import annotations

import json

import pytest

from s2sim import __version__
from s2sim.check.checker import COHERENCY, PROPERTIES, UAF, Checker
from s2sim.check.trace import SCHEMA, TraceWriter, replay
from s2sim.cli import main
from s2sim.errors import ConfigError

SMALL = ["-m", "4", "-b", "8M", "-v", "2", "-s", "anonymous_hugetlb_2mb"]


def cli(capsys, args: list[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def normal(x):
    """JSON-normalise (tuples -> lists) for comparing online and offline results."""
    return json.loads(json.dumps(x))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One `pagetable-test --check --trace --json` run per variant, recorded once."""
    out = {}
    d = tmp_path_factory.mktemp("trace")
    for v in ("mutant-no-cmo", "mutant-free-before-tlbi", "patch1"):
        trace, res = d / f"{v}.jsonl", d / f"{v}.json"
        try:
            main(["pagetable-test", *SMALL, "--variant", v, "--check", "--trace", str(trace),
                  "--json", str(res)])
            code = 0
        except SystemExit as e:
            code = e.code
        out[v] = (code, trace, json.loads(res.read_text()))
    return out


EXPECT = {"mutant-no-cmo": {COHERENCY}, "mutant-free-before-tlbi": {UAF}, "patch1": set()}


@pytest.mark.parametrize("v", list(EXPECT))
def test_check_trace_equals_online_check(runs, capsys, v):
    code, trace, result = runs[v]
    online = result["check"]
    assert code == (1 if EXPECT[v] else 0)
    assert {p for p, x in online["properties"].items() if x == "violated"} == EXPECT[v]
    c2, out, err = cli(capsys, ["check-trace", str(trace), "--json"])
    assert err == ""
    assert c2 == code
    offline = json.loads(out)
    for k in ("counts", "total", "properties", "events_checked"):
        assert offline[k] == online[k], k
    assert normal(offline["violations"]) == normal(online["violations"])
    assert online["events_checked"] > 1000


@pytest.mark.parametrize("v", ["mutant-no-cmo", "patch1"])
def test_check_trace_text_output(runs, capsys, v):
    code, trace, result = runs[v]
    c2, out, _ = cli(capsys, ["check-trace", str(trace)])
    assert c2 == code
    n = result["check"]["total"]
    assert f"safety check: {n} violations over {result['check']['events_checked']} events" in out
    for p in PROPERTIES:
        assert p in out
    if n:
        assert f"[{COHERENCY}]" in out


def test_trace_file_layout(runs):
    _, trace, result = runs["patch1"]
    lines = trace.read_text().splitlines()
    head = json.loads(lines[0])
    assert head == {"trace": "s2sim", "schema": SCHEMA, "version": __version__}
    # every event the online checker saw is one line, in order, config among the first
    assert len(lines) - 1 == result["check"]["events_checked"]
    kinds = [json.loads(x)["event"] for x in lines[1:50]]
    assert "config" in kinds and "memslot" in kinds
    assert kinds.index("config") < kinds.index("memslot")


def test_trace_only_run_then_check_trace_matches_a_check_run(runs, tmp_path, capsys):
    """Recording without --check, on a separate run: the same verdicts (runs are
    deterministic), and the run itself exits 0 (nothing was checked)."""
    trace = tmp_path / "t.jsonl"
    code, _, _ = cli(capsys, ["pagetable-test", *SMALL, "--variant", "mutant-no-cmo",
                              "--trace", str(trace)])
    assert code == 0
    c2, out, _ = cli(capsys, ["check-trace", str(trace), "--json"])
    assert c2 == 1
    assert json.loads(out)["counts"] == runs["mutant-no-cmo"][2]["check"]["counts"]


def test_replay_api_round_trip(runs, tmp_path):
    """TraceWriter + replay outside the CLI: same events, same verdicts."""
    _, trace, result = runs["mutant-free-before-tlbi"]
    c = Checker()
    n = replay(str(trace), c)
    assert n == c.events == result["check"]["events_checked"]
    assert dict(c.counts) == result["check"]["counts"]
    copy = tmp_path / "copy.jsonl"
    with open(copy, "w", encoding="utf-8") as fh:
        w = TraceWriter(fh)
        assert replay(str(trace), w) == n == w.count
    assert copy.read_text().splitlines()[1:] == trace.read_text().splitlines()[1:]


# --- bad input ----------------------------------------------------------------------------

ROOT = 0x10000000
HEAD = json.dumps({"trace": "s2sim", "schema": SCHEMA, "version": __version__})
CONFIG = json.dumps({"event": "config", "time": 0, "cpu": 0, "granule": "4K", "ipa_bits": 40,
                     "vmid": 1, "root_pa": ROOT, "fwb": False})
DSB = json.dumps({"event": "dsb", "time": 1, "cpu": 0})


@pytest.mark.parametrize("lines,needles", [
    ([HEAD, CONFIG, "{not json"], ["line 3", "malformed"]),
    ([HEAD, CONFIG, DSB, '{"event": "dsb", "time": 2, "cpu": 0'], ["line 4"]),
    ([HEAD, CONFIG, '{"event": "nosuch", "time": 1, "cpu": 0}'], ["line 3", "nosuch"]),
    ([HEAD, CONFIG, '{"time": 1, "cpu": 0}'], ["line 3", "event"]),
    ([HEAD, CONFIG, '{"event": "dsb"}'], ["line 3", "time"]),
    ([HEAD, CONFIG, '{"event": "page_free", "time": 1, "cpu": 0}'], ["line 3", "pa"]),
    ([HEAD, '[1, 2, 3]'], ["line 2"]),
    ([HEAD, CONFIG, json.dumps({"event": "desc_write", "time": 1, "cpu": 0, "table_pa": ROOT,
                                "index": 1, "level": 1, "ipa": 0, "old": 0, "new": "0x3"})],
     ["line 3", "new"]),  # a field of the wrong type
    ([json.dumps({"trace": "s2sim", "schema": SCHEMA + 1})], ["schema 2", "schema 1"]),
    ([json.dumps({"trace": "s2sim"})], ["schema None"]),
    ([CONFIG, DSB], ["line 1", "header"]),
    ([json.dumps({"trace": "other", "schema": SCHEMA})], ["line 1", "header"]),
    (["not json at all"], ["line 1", "header"]),
    ([], ["line 1", "header"]),                      # an empty file
])
def test_check_trace_bad_input(tmp_path, capsys, lines, needles):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(x + "\n" for x in lines))
    code, out, err = cli(capsys, ["check-trace", str(path)])
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("s2sim: error: trace ")
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)
    with pytest.raises(ConfigError):
        replay(str(path), Checker())


def test_check_trace_binary_garbage(tmp_path, capsys):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(HEAD.encode() + b"\n" + DSB.encode() + b"\n\xff\xfe\x00\x81\n")
    code, _, err = cli(capsys, ["check-trace", str(path)])
    assert code == 2 and err.count("\n") == 1 and "line 3" in err
    path.write_bytes(b"\x1f\x8b\x08\x00 gzip?\n")
    code, _, err = cli(capsys, ["check-trace", str(path)])
    assert code == 2 and err.count("\n") == 1 and "line 1" in err


@pytest.mark.parametrize("which", ["missing", "directory"])
def test_check_trace_unreadable(tmp_path, capsys, which):
    path = tmp_path / "nope.jsonl" if which == "missing" else tmp_path
    code, out, err = cli(capsys, ["check-trace", str(path)])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "cannot be read" in err and str(path) in err


def test_blank_lines_are_skipped(tmp_path, capsys):
    path = tmp_path / "ok.jsonl"
    path.write_text(HEAD + "\n" + CONFIG + "\n\n   \n" + DSB + "\n")
    code, out, _ = cli(capsys, ["check-trace", str(path), "--json"])
    assert code == 0 and json.loads(out)["events_checked"] == 2


def test_trace_into_a_missing_directory(tmp_path, capsys):
    code, _, err = cli(capsys, ["pagetable-test", *SMALL, "--trace",
                                str(tmp_path / "no" / "t.jsonl")])
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
