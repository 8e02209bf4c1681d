"""`--check` on `pagetable-test`, `compare` and `ops`, and the `explore` command.

Correct variants on scaled-down calibration workloads report no violation and
exit 0 (and the runs do go through the coalescing path the seed changes); a
mutant exits 1 and names its property. Every run is in-process (s2sim.cli.main).
"""

from __future__ import annotations

import json

import pytest

from s2sim.check.checker import BBM, COHERENCY, CONFLICT, DIRTY, PROPERTIES, REFCOUNT, UAF
from s2sim.cli import main
from s2sim.kvm.coalesce import MUTANTS

# calibration-like workloads, scaled down (a run is 0.2-1 s)
WORKLOADS = {
    "hugetlb-2M": ["-m", "4", "-b", "16M", "-v", "2", "-s", "anonymous_hugetlb_2mb"],
    "hugetlb-64K-granule": ["-m", "5", "-b", "1G", "-v", "2", "-s", "anonymous_hugetlb"],
    "thp": ["-m", "4", "-b", "16M", "-v", "2", "-s", "anonymous_thp"],
    # one writer: every region a real THP (no huge zero page), 2M blocks split and
    # coalesced again as with hugetlb
    "thp-writer": ["-m", "4", "-b", "16M", "-v", "1", "-s", "anonymous_thp"],
    "anonymous-4K": ["-m", "4", "-b", "4M", "-v", "2", "-s", "anonymous"],
}
CORRECT = ("v5.11", "patch1", "rfc", "block-first")
FILL_2M = "map 0x40000000 2M 0x80000000 rw as 4K"
BLOCK_2M = "map 0x40000000 2M 0x80000000 rw"


def cli(capsys, args: list[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def checked_run(capsys, tmp_path, workload: list[str], v: str):
    path = tmp_path / f"{v}.json"
    code, out, err = cli(capsys, ["pagetable-test", *workload, "--variant", v, "--check",
                                  "--json", str(path)])
    return code, out, err, json.loads(path.read_text())


def violated(check: dict) -> set[str]:
    return {p for p, x in check["properties"].items() if x == "violated"}


# --- pagetable-test --check ------------------------------------------------------------

@pytest.mark.parametrize("v", CORRECT)
@pytest.mark.parametrize("wl", list(WORKLOADS))
def test_correct_variants_hold_on_calibration_workloads(capsys, tmp_path, wl, v):
    code, out, err, res = checked_run(capsys, tmp_path, WORKLOADS[wl], v)
    chk = res["check"]
    assert code == 0, (chk["counts"], err)
    assert chk["total"] == 0 and chk["counts"] == {} and violated(chk) == set()
    assert set(chk["properties"]) == set(PROPERTIES)
    assert chk["events_checked"] > 1000
    assert f"safety check: 0 violations over {chk['events_checked']} events" in out
    assert not res["aborted"]
    if wl == "thp":
        # 2 vCPUs arriving together: the reader's huge zero page wins every region, the
        # writer splits it (MMU notifier: stage-2 unmap, TLBI) and COWs; ADJUST then maps
        # 4K pages (sim/hostmm.py): the checker saw the notifier path instead
        create = res["stages"][0]
        assert create["host_mm"]["pmd_splits"] > 0 and create["mmu_notifier_retries"] > 0
    elif wl != "anonymous-4K":  # the checker did see blocks coalesced after dirty logging
        adjust = res["stages"][-1]
        assert adjust["name"] == "KVM_ADJUST_MAPPINGS"
        assert adjust["outcomes"].get("coalesced", 0) > 0


def test_anonymous_4k_with_four_vcpus_holds(capsys, tmp_path):
    _, _, _, res = checked_run(capsys, tmp_path, ["-m", "4", "-b", "8M", "-v", "4", "-s",
                                                  "anonymous"], "patch1")
    assert res["check"]["counts"] == {}


@pytest.mark.parametrize("v,wl,prop", [
    ("mutant-no-cmo", "hugetlb-2M", COHERENCY),
    ("mutant-free-before-tlbi", "hugetlb-2M", UAF),
    ("mutant-no-break", "hugetlb-64K-granule", BBM),
    ("mutant-no-put", "thp-writer", REFCOUNT),
    ("mutant-no-dirty", "anonymous-4K", DIRTY),
])
def test_mutant_fails_the_check_and_names_the_property(capsys, tmp_path, v, wl, prop):
    code, out, _, res = checked_run(capsys, tmp_path, WORKLOADS[wl], v)
    assert code == 1
    assert violated(res["check"]) == {prop}
    assert res["check"]["total"] == res["check"]["counts"][prop] > 0
    assert f"[{prop}]" in out                  # the first violations, in full
    row = next(x for x in out.splitlines() if f" {prop} " in x and "violated" in x)
    assert str(res["check"]["counts"][prop]) in row


def test_without_check_a_mutant_run_exits_0(capsys):
    code, out, _ = cli(capsys, ["pagetable-test", *WORKLOADS["hugetlb-2M"], "--variant",
                                "mutant-no-cmo"])
    assert code == 0 and "safety check" not in out


# --- compare --check ---------------------------------------------------------------------

SMALL = ["-m", "4", "-b", "8M", "-v", "2", "-s", "anonymous_hugetlb_2mb"]


def test_compare_check_fails_when_one_variant_violates(capsys, tmp_path):
    path = tmp_path / "cmp.json"
    code, out, _ = cli(capsys, ["compare", *SMALL, "--variants", "patch1,mutant-no-cmo",
                                "--check", "--json", str(path)])
    assert code == 1
    assert "safety check, patch1: 0 violations" in out
    assert "safety check, mutant-no-cmo:" in out and f"[{COHERENCY}]" in out
    runs = json.loads(path.read_text())["runs"]
    assert [violated(r["check"]) for r in runs] == [set(), {COHERENCY}]


def test_compare_check_passes_on_correct_variants(capsys):
    code, out, _ = cli(capsys, ["compare", *SMALL, "--variants", ",".join(CORRECT), "--check"])
    assert code == 0
    for v in CORRECT:
        assert f"safety check, {v}: 0 violations" in out


# --- ops --check ---------------------------------------------------------------------------

def test_ops_check_mutant_no_break(capsys):
    code, out, _ = cli(capsys, ["ops", "--check", "--variant", "mutant-no-break",
                                FILL_2M, BLOCK_2M])
    assert code == 1
    assert f"[{BBM}]" in out and "without a break" in out
    code, out, _ = cli(capsys, ["ops", "--check", "--json", "--variant", "mutant-no-break",
                                FILL_2M, BLOCK_2M])
    assert code == 1
    chk = json.loads(out)["check"]
    assert chk["counts"] == {BBM: 1} and chk["violations"][0]["property"] == BBM


@pytest.mark.parametrize("v", ["block-first", "v5.11", "patch1", "rfc", "cmo-first",
                               "bbml2-noabort"])
def test_ops_check_correct_coalesce(capsys, v):
    code, out, _ = cli(capsys, ["ops", "--check", "--variant", v, FILL_2M, BLOCK_2M])
    assert code == 0, out[-2000:]
    assert "safety check: 0 violations" in out
    code, out, _ = cli(capsys, ["ops", "--check", "--json", "--variant", v, FILL_2M, BLOCK_2M])
    assert code == 0 and json.loads(out)["check"]["total"] == 0


def test_ops_check_bbml2_possible_conflict(capsys):
    code, out, _ = cli(capsys, ["ops", "--check", "--variant", "bbml2", FILL_2M, BLOCK_2M])
    assert code == 1 and f"[{CONFLICT}]" in out


def test_ops_without_check_has_no_verdict(capsys):
    code, out, _ = cli(capsys, ["ops", "--json", "--variant", "mutant-no-break", FILL_2M,
                                BLOCK_2M])
    assert code == 0 and "check" not in json.loads(out)


# --- explore ---------------------------------------------------------------------------------

EXPECT = {"mutant-no-tlbi": BBM, "mutant-free-before-tlbi": UAF, "mutant-no-break": BBM,
          "mutant-tlbi-last-level": UAF, "mutant-no-cmo": COHERENCY,
          "mutant-no-dirty": DIRTY, "mutant-no-put": REFCOUNT}


@pytest.mark.parametrize("m", list(MUTANTS))
def test_explore_all_exits_1_for_every_mutant(capsys, m):
    code, out, err = cli(capsys, ["explore", "all", "--variant", m, "--bound", "1", "--json"])
    assert code == 1, err
    data = json.loads(out)
    assert data["variant"] == m and data["unsafe"] is True
    assert [r["scenario"] for r in data["results"]] == ["coalesce", "split", "unmap"]
    bad = {v["property"] for r in data["results"] for v in r["violations"]}
    assert EXPECT[m] in bad
    for r in data["results"]:
        assert r["mode"] == "preemption-bounded (k=1)"
        assert {p for p, x in r["properties"].items() if x == "violated"} == {
            v["property"] for v in r["violations"]}


def test_explore_text_output_names_property_and_schedule(capsys):
    code, out, _ = cli(capsys, ["explore", "all", "--variant", "mutant-no-break", "--bound",
                                "1"])
    assert code == 1
    assert "deliberately UNSAFE mutant" in out
    assert f"VIOLATED: {BBM}" in out and f"[{BBM}]" in out
    assert "minimal schedule (" in out and "kvm0" in out


@pytest.mark.parametrize("v,code_", [("patch1", 0), ("block-first", 0), ("bbml2-noabort", 0),
                                     ("rfc", 1), ("bbml2", 1)])
def test_explore_real_variants_exit_code(capsys, v, code_):
    code, out, _ = cli(capsys, ["explore", "all", "--variant", v, "--bound", "1"])
    assert code == code_
    assert out.count("scenario ") == 3
    assert ("VIOLATED" in out) == bool(code_)


@pytest.mark.parametrize("args,needle", [
    (["explore", "nope"], "scenario 'nope' is unknown"),
    (["explore", "coalesce", "--variant", "nope"], "variant 'nope' is unknown"),
])
def test_explore_bad_input(capsys, args, needle):
    code, out, err = cli(capsys, args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and needle in err
