"""Calibration data loading, the least-squares fit and `s2sim reproduce` (issue 6).

Uses tests/data/mini-calibration.toml: small synthetic runs, so the whole
pipeline runs in seconds. The shipped seed data is only loaded and validated.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from s2sim.arch.geometry import fmt_size
from s2sim.cli import main
from s2sim.errors import ConfigError
from s2sim.report.reproduce import HOST_WORDS
from s2sim.sim.calibrate import FREE, calibrate, profile_toml, robust_cost
from s2sim.sim.profile import load_profile, parse_profile
from s2sim.workloads.calibration import load_calibration

MINI = str(Path(__file__).parent / "data" / "mini-calibration.toml")


def run_cli(capsys, args):
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_shipped_seed_data_loads():
    d = load_calibration()
    assert d.mode == "4"  # 40-bit IPA, 4K granule: P40V48_4K
    assert len(d.runs) == 8
    assert {r.backing for r in d.runs} == {"anonymous_hugetlb_1gb", "anonymous_thp", "anonymous"}
    r = next(r for r in d.runs if r.id == "hugetlb1g-20G-20v-v5.11")
    assert r.size == 20 << 30 and r.vcpus == 20 and r.seconds["KVM_CREATE_MAPPINGS"] == 52.814


@pytest.mark.parametrize("text,msg", [
    ("[platform]\nname='x'\n", "no \\[\\[run\\]\\]"),
    ("[[run]]\nid='a'\n", "\\[platform\\] is missing"),
    ("[platform]\ngranule='8K'\nipa_bits=40\n[[run]]\nid='a'\n", "not a supported guest mode"),
    ("[platform]\n[[run]]\nid='a'\nbacking='anonymous'\nsize='1G'\nvcpus=1\nvariant='v5.11'\n",
     "key 'seconds' is missing"),
    ("[platform]\n[[run]]\nid='a'\nbacking='anonymous'\nsize='1G'\nvcpus=1\nvariant='v5.11'\n"
     "seconds={KVM_FOO=1.0}\n", "stage 'KVM_FOO' is unknown"),
    ("[platform]\n[[run]]\nid='a'\nbacking='anonymous'\nsize='1G'\nvcpus=1\nvariant='v5.11'\n"
     "seconds={KVM_CREATE_MAPPINGS=-1}\n", "must be a positive number"),
    ("[platform]\n[[run]]\nid='a'\nbacking='nope'\nsize='1G'\nvcpus=1\nvariant='v5.11'\n"
     "seconds={KVM_CREATE_MAPPINGS=1}\n", "backing 'nope' is unknown"),
    ("not toml [", "not valid TOML"),
])
def test_malformed_calibration_data(tmp_path, text, msg):
    p = tmp_path / "d.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=msg):
        load_calibration(str(p))


def test_reproduce_json_and_mechanism_lines_agree_with_counts(capsys, tmp_path):
    out_json = tmp_path / "rep.json"
    plot = tmp_path / "rep.png"
    code, out, _ = run_cli(capsys, ["reproduce", "--data", MINI, "--json", str(out_json),
                                    "--plot", str(plot)])
    assert code == 0
    rep = json.loads(out_json.read_text())
    assert [r["id"] for r in rep["runs"]] == [r.id for r in load_calibration(MINI).runs]
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for r in rep["runs"]:
        for s in r["stages"]:
            assert set(s) >= {"name", "published_seconds", "simulated_seconds",
                              "relative_error", "mechanism"}
            assert s["relative_error"] == pytest.approx(
                (s["simulated_seconds"] - s["published_seconds"]) / s["published_seconds"])
            m = s["mechanism"]
            c = s["counts"]
            # the numbers the line states are the JSON's counts
            assert m.startswith(f"{c['faults']} faults (")
            for k, v in s["outcomes"].items():
                assert f"{k} {v}" in m
            if c["cmo_ops"]:
                sizes = {int(k): v for k, v in c["cmo_by_size"].items()}
                assert sum(sizes.values()) == c["cmo_ops"]
                assert sum(k * v for k, v in sizes.items()) == c["cmo_bytes"]
                if len(sizes) == 1:
                    assert re.search(rf"\b{c['cmo_ops']} CMOs of {fmt_size(*sizes)} = ", m)
                else:
                    assert re.search(rf"\b{c['cmo_ops']} CMOs \(", m)
                    for k, v in sizes.items():
                        assert f"{v} of {fmt_size(k)}" in m
            else:
                assert "CMOs" not in m
            if c["lock_contended"]:
                assert f"mmu_lock contended {c['lock_contended']} times" in m
            if c["invalid_windows"]:
                assert f"{c['invalid_windows']} invalid windows" in m
            for k, v in s["host_mm"].items():
                if v and k in HOST_WORDS:
                    assert f"{v} {HOST_WORDS[k]}" in m
            if c["mmu_notifier_retries"]:
                assert f"{c['mmu_notifier_retries']} faults retried" in m
            # each mechanism line is printed too
            assert f"{r['id']} {s['name']}: {m}" in out


def test_mechanism_line_splits_cmos_by_size():
    # THP v5.11 CREATE cleans 2 MiB blocks (huge zero page, every reader) and 4 KiB
    # pages (COW'd): the line gives each size's count and the 2 MiB CMOs per region.
    from s2sim.report.reproduce import mechanism
    from s2sim.sim.run import run_pagetable_test
    from s2sim.workloads.pagetable_test import TestConfig
    res = run_pagetable_test(TestConfig.make("4", "8M", 4, "anonymous_thp", variant="v5.11"))
    st = res["stages"][0]
    sizes = {int(k): v for k, v in st["cmo_by_size"].items()}
    assert set(sizes) == {2 << 20, 4 << 10}
    assert sum(sizes.values()) == st["cmo_ops"]
    m = mechanism(st, res["config"])
    assert f"{st['cmo_ops']} CMOs ({sizes[2 << 20]} of 2M, {sizes[4 << 10]} of 4K) = " in m
    assert f"{sizes[2 << 20] / 4:.2f} CMOs of 2M per 2M page" in m


def test_reproduce_rfc_line_counts_spurious_faults_avoided(capsys, tmp_path):
    out_json = tmp_path / "rep.json"
    run_cli(capsys, ["reproduce", "--data", MINI, "--json", str(out_json)])
    rep = json.loads(out_json.read_text())
    rfc = next(r for r in rep["runs"] if r["variant"] == "rfc")
    adj = rfc["stages"][0]
    assert adj["name"] == "KVM_ADJUST_MAPPINGS"
    # rfc (1 vCPU) has no peer with the same configuration in MINI: no comparison claimed
    assert "avoided" not in adj["mechanism"]


def test_calibrate_is_reproducible_and_within_bounds(tmp_path):
    d = load_calibration(MINI)
    base = load_profile("kunpeng920")
    a = calibrate(d, base, max_evals=4)
    b = calibrate(d, base, max_evals=4)
    assert profile_toml(a["profile"]) == profile_toml(b["profile"])
    for k, v in a["params"].items():
        lo, hi, _ = FREE[k]
        assert lo <= v <= hi
    # the written profile is a valid profile and records what fitted it
    text = profile_toml(a["profile"])
    p = parse_profile(text, "fitted")
    assert p.meta["data_sha256"] == d.sha256
    assert p.meta["fitted_by"].startswith("s2sim ")
    assert set(p.meta["free_parameters"]) == set(FREE)
    # the fit does not make things worse than the starting profile
    from s2sim.sim.calibrate import simulate_all
    before, _ = simulate_all(d, base)
    cost = lambda fits: sum(f.relative_error ** 2 for f in fits)
    assert cost(a["fits"]) <= cost(before) + 1e-12


def test_robust_loss_lets_no_single_miss_drag_the_fit():
    # The pull of a residual falls once it is well past f_scale (10%) ...
    pull = lambda r: (robust_cost([r + 1e-6]) - robust_cost([r])) / 1e-6
    assert pull(0.9) < pull(0.1) / 3
    assert pull(0.05) > pull(0.01) > 0
    # ... so the seed data's one miss (THP v5.11 CREATE) cannot move the CMO
    # bandwidth the other 17 stages agree on. Residuals measured at 1/160 with the
    # shipped profile (cmo 8.45 GB/s) and with its +3% probe (8.707 GB/s): the
    # probe only helps the miss; soft-L1 preferred it (0.0897 > 0.0886).
    shipped = [-1.6, -1.5, -1.8, -0.8, -4.3, -3.3, -1.3, 0.2, 88.6, -0.9, -6.4, 3.4,
               -3.6, -8.9, 5.6, -0.4, 3.7, 0.3]
    cmo_up = [-4.5, -2.4, -4.7, -2.8, -4.4, -5.9, -4.0, 0.2, 83.2, -1.8, -7.3, 0.8,
              -3.7, -8.9, 5.5, -0.4, 3.6, 0.3]
    assert robust_cost([r / 100 for r in shipped]) < robust_cost([r / 100 for r in cmo_up])


def test_calibrate_cli_writes_profile(capsys, tmp_path):
    out = tmp_path / "fit.toml"
    code, text, _ = run_cli(capsys, ["calibrate", MINI, "--platform-out", str(out),
                                     "--max-evals", "2"])
    assert code == 0
    assert "fitted parameters" in text and "residuals" in text
    prof = load_profile(str(out))
    assert prof.name == "kunpeng920"


def test_calibrate_bad_input(capsys, tmp_path):
    code, _, err = run_cli(capsys, ["calibrate", str(tmp_path / "missing.toml")])
    assert code == 2 and "cannot be read" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, ["reproduce", "--data", MINI, "--platform", "nope"])
    assert code == 2 and "platform 'nope' is unknown" in err


def test_scaled_and_parallel_simulation():
    from s2sim.sim.calibrate import simulate_all, sim_size
    d = load_calibration(MINI)
    prof = load_profile("kunpeng920")
    fits1, res1 = simulate_all(d, prof)
    fits2, res2 = simulate_all(d, prof, jobs=2)
    assert [(f.run, f.stage, f.simulated) for f in fits1] == \
        [(f.run, f.stage, f.simulated) for f in fits2]  # processes change nothing
    assert [r["stages"] for r in res1] == [r["stages"] for r in res2]
    # at 1/2 size: half the 2M pages, and stage times scaled back up by exactly 2
    assert [sim_size(r, d.mode, 2) for r in d.runs] == [8 << 20] * 3 + [512 << 10]
    assert sim_size(d.runs[0], d.mode, 1000) == 2 << 20  # never below one large page
    fits_h, res_h = simulate_all(d, prof, scale=2)
    by_run = {run.id: res for run, res in zip(d.runs, res_h)}
    for f in fits_h:
        st = {s["name"]: s["seconds"] for s in by_run[f.run]["stages"]}
        assert f.simulated == pytest.approx(2 * st[f.stage])
        assert by_run[f.run]["config"]["size"] * 2 == next(r.size for r in d.runs
                                                               if r.id == f.run)
    # linear in size: the half-size estimate is the full-size figure within 10%
    for a, b in zip(fits1, fits_h):
        assert b.simulated == pytest.approx(a.simulated, rel=0.10)


def test_reproduce_scale_in_json(capsys, tmp_path):
    out_json = tmp_path / "rep.json"
    code, out, _ = run_cli(capsys, ["reproduce", "--data", MINI, "--scale", "2", "--jobs", "1",
                                    "--json", str(out_json)])
    assert code == 0 and "1/2 size" in out
    rep = json.loads(out_json.read_text())
    assert rep["scale"] == 2
    assert all(r["simulated_size"] * 2 == r["size"] for r in rep["runs"])
    code, _, err = run_cli(capsys, ["reproduce", "--data", MINI, "--scale", "0"])
    assert code == 2 and "--scale 0" in err
