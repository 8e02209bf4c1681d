"""The `pagetable-test` and `compare` commands: selftest-style output, the JSON
result, and bad input (exit 2, one line on stderr, no traceback, no file)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from s2sim.cli import main

STAGE_NAMES = ("KVM_CREATE_MAPPINGS", "KVM_UPDATE_MAPPINGS", "KVM_ADJUST_MAPPINGS")
STAGE_KEYS = ("name", "seconds", "faults", "spurious_faults", "cmo_bytes", "tlbi",
              "descriptor_writes", "invalid_window_max_ns", "lock_wait_ns")
# the selftest's own output line, with s2sim's simulated time
LINE = re.compile(r"^(KVM_[A-Z]+_MAPPINGS): total execution time: (\d+\.\d+)s$", re.MULTILINE)


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def m5_run(tmp_path_factory):
    """`s2sim pagetable-test -m 5 -b 1G -v 2 -s anonymous_hugetlb --json out.json`, once."""
    path = tmp_path_factory.mktemp("cli") / "out.json"
    p = subprocess.run([sys.executable, "-m", "s2sim.cli", "pagetable-test", "-m", "5", "-b",
                        "1G", "-v", "2", "-s", "anonymous_hugetlb", "--json", str(path)],
                       check=False, capture_output=True, text=True, timeout=300)
    return p, path


def test_pagetable_test_output_lines(m5_run):
    p, _ = m5_run
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    lines = LINE.findall(p.stdout)
    assert [name for name, _ in lines] == list(STAGE_NAMES)
    assert all(float(t) > 0 for _, t in lines)
    assert "P40V48_64K" in p.stdout and "anonymous_hugetlb" in p.stdout


def test_pagetable_test_json(m5_run):
    p, path = m5_run
    data = json.loads(path.read_text())
    for k in ("version", "config", "profile", "stages", "simulated_ns"):
        assert k in data
    assert "wall_seconds" not in data  # results are byte-identical run to run
    assert [s["name"] for s in data["stages"]] == list(STAGE_NAMES)
    for s in data["stages"]:
        assert set(STAGE_KEYS) <= set(s)
        assert isinstance(s["tlbi"], dict)
    cfg = data["config"]
    assert (cfg["mode"], cfg["size"], cfg["vcpus"], cfg["backing"]) == (5, 1 << 30, 2,
                                                                       "anonymous_hugetlb")
    assert cfg["mode_name"] == "P40V48_64K" and cfg["large_page"] == 512 << 20
    assert data["profile"]["name"] == "kunpeng920"
    # the printed times are the JSON's seconds (9 decimals)
    printed = {n: float(t) for n, t in LINE.findall(p.stdout)}
    for s in data["stages"]:
        assert printed[s["name"]] == pytest.approx(s["seconds"], abs=1e-9)
    # 2 blocks of 512M: each mapped once in CREATE, split once in UPDATE,
    # coalesced once in ADJUST, whatever the two vCPUs' interleaving
    st = {s["name"]: s for s in data["stages"]}
    assert st["KVM_CREATE_MAPPINGS"]["outcomes"]["mapped"] == 2
    assert st["KVM_UPDATE_MAPPINGS"]["outcomes"]["split"] == 2
    assert st["KVM_ADJUST_MAPPINGS"]["outcomes"]["coalesced"] == 2


def test_pagetable_test_in_process(tmp_path, capsys):
    path = tmp_path / "r.json"
    code, out, err = cli(["pagetable-test", "-m", "4", "-b", "4M", "-v", "2", "-s",
                          "anonymous_hugetlb_2mb", "--variant", "rfc", "--json", str(path)],
                         capsys)
    assert code == 0 and err == ""
    assert [n for n, _ in LINE.findall(out)] == list(STAGE_NAMES)
    data = json.loads(path.read_text())
    assert data["config"]["variant_resolved"]["name"] == "rfc"
    assert data["stages"][2]["cmo_bytes"] == 0  # the RFC's coalescing has no CMO


BAD = [
    (["-m", "4", "-b", "3M", "-s", "anonymous_hugetlb_2mb"], "not a multiple"),
    (["-m", "5", "-b", "1G", "-s", "anonymous_hugetlb_1gb"], "not possible with the 64K"),
    (["-m", "4", "-b", "4M", "-s", "anonymous_hugetlb_512mb"], "not possible with the 4K"),
    (["-m", "4", "-b", "4M", "-s", "hugepages"], "unknown"),
    (["-m", "4", "-b", "4M", "-v", "0"], "vCPU count 0"),
    (["-m", "9", "-b", "4M"], "guest mode '9' is unknown"),
    (["-m", "0", "-b", "4M"], "52-bit"),
    (["-m", "4", "-b", "4M", "--variant", "v9"], "variant 'v9' is unknown"),
    (["-m", "4", "-b", "4M", "--tie", "lifo"], "tie-break"),
    (["-m", "4", "-b", "lots"], "not a size"),
    (["-m", "4", "-b", "4M", "-v", "two"], "'-v'"),
    (["-m", "4", "-b", "4M", "--platform", "nosuch"], "platform 'nosuch' is unknown"),
]


@pytest.mark.parametrize("args, msg", BAD)
def test_bad_input_exit_2(args, msg, tmp_path, capsys):
    path = tmp_path / "out.json"
    code, out, err = cli(["pagetable-test", *args, "--json", str(path)], capsys)
    assert code == 2
    assert err.startswith("s2sim: error: ") and err.count("\n") == 1, err
    assert msg in err and "Traceback" not in err + out
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left either


def test_malformed_profile_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[platform]\nname = \"x\"\n[costs\nexit_ns = 1\n", encoding="utf-8")
    path = tmp_path / "out.json"
    code, _out, err = cli(["pagetable-test", "-m", "4", "-b", "2M", "--platform", str(bad),
                           "--json", str(path)], capsys)
    assert code == 2 and err.count("\n") == 1 and "bad.toml" in err and "line 3" in err
    assert not path.exists()


def test_profile_with_a_bad_key_exit_2_via_subprocess(tmp_path):
    from importlib import resources
    text = resources.files("s2sim.profiles").joinpath("kunpeng920.toml").read_text("utf-8")
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("dsb_ns = 400", "dsb_ns = -400"), encoding="utf-8")
    path = tmp_path / "out.json"
    p = subprocess.run([sys.executable, "-m", "s2sim.cli", "pagetable-test", "-m", "4", "-b",
                        "2M", "--platform", str(bad), "--json", str(path)],
                       check=False, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "costs.dsb_ns" in p.stderr and "line" in p.stderr
    assert "Traceback" not in p.stderr and not path.exists()


def test_json_directory_must_exist(tmp_path, capsys):
    code, _, err = cli(["pagetable-test", "-m", "4", "-b", "2M", "--json",
                        str(tmp_path / "no" / "out.json")], capsys)
    assert code == 2 and "does not exist" in err and err.count("\n") == 1


def test_compare_prints_both_variants(tmp_path, capsys):
    path = tmp_path / "cmp.json"
    code, out, err = cli(["compare", "-m", "5", "-b", "1G", "-v", "2", "-s",
                          "anonymous_hugetlb", "--variants", "v5.11,rfc", "--json", str(path)],
                         capsys)
    assert code == 0, err
    assert "v5.11" in out and "rfc" in out and "P40V48_64K" in out
    for name in STAGE_NAMES:
        assert name in out
    data = json.loads(path.read_text())
    runs = data["runs"]
    assert [r["config"]["variant_resolved"]["name"] for r in runs] == ["v5.11", "rfc"]
    # the RFC's ADJUST is faster than v5.11's (no CMO, install before teardown)
    assert runs[1]["stages"][2]["seconds"] < runs[0]["stages"][2]["seconds"]


@pytest.mark.parametrize("variants, msg", [("", "empty"), (" , ", "empty"),
                                           ("v5.11,nope", "variant 'nope' is unknown")])
def test_compare_bad_variants(variants, msg, tmp_path, capsys):
    path = tmp_path / "cmp.json"
    code, _, err = cli(["compare", "-m", "4", "-b", "2M", "-v", "1", "-s",
                        "anonymous_hugetlb_2mb", "--variants", variants, "--json", str(path)],
                       capsys)
    assert code == 2 and msg in err and err.count("\n") == 1
    assert not path.exists()


def test_jitter_option(capsys):
    code, _, err = cli(["pagetable-test", "-b", "4M", "-v", "2", "-s", "anonymous_thp",
                        "--jitter", "-3"], capsys)
    assert code == 2 and "jitter -3" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    code, out, _ = cli(["pagetable-test", "-b", "4M", "-v", "2", "-s", "anonymous_thp",
                        "--jitter", "300", "--seed", "4"], capsys)
    assert code == 0 and "KVM_CREATE_MAPPINGS: total execution time" in out
