"""Timing jitter (TestConfig.jitter / --jitter): seeded noise on each fault's exit."""

from __future__ import annotations

import pytest

from s2sim.errors import ConfigError
from s2sim.sim.run import run_pagetable_test
from s2sim.workloads.pagetable_test import TestConfig as Cfg  # (not a pytest class)


def _run(**kw):
    stats: dict = {}
    r = run_pagetable_test(Cfg.make("4", "8M", 6, "anonymous_thp", variant="v5.11", **kw),
                           ff_stats=stats)
    return r, stats


def test_same_seed_same_result_other_seed_other_result():
    a, sa = _run(jitter=2000, seed=1)
    b, _ = _run(jitter=2000, seed=1)
    c, _ = _run(jitter=2000, seed=2)
    assert a["stages"] == b["stages"] and a["simulated_ns"] == b["simulated_ns"]
    assert a["simulated_ns"] != c["simulated_ns"]
    assert not sa["enabled"] and "batches" not in sa  # no fast path: it cannot see the noise


def test_one_vcpu_is_delayed_by_at_most_its_bound_per_fault():
    # one vCPU, nothing to phase-lock with: each fault's exit is 0..J ns later
    kw = {"variant": "patch1"}
    base = run_pagetable_test(Cfg.make("4", "8M", 1, "anonymous", **kw))
    noisy = run_pagetable_test(Cfg.make("4", "8M", 1, "anonymous", jitter=500, seed=5, **kw))
    for s0, s1 in zip(base["stages"], noisy["stages"], strict=True):
        assert s1["faults"] == s0["faults"]
        extra = round((s1["seconds"] - s0["seconds"]) * 1e9)
        assert 0 <= extra <= 500 * s1["faults"]
        if s1["faults"] > 100:
            # uniform 0..500: the mean is 250 ns, the sum within a few percent of it
            assert abs(extra / s1["faults"] - 250) < 25
    assert noisy["config"]["jitter"] == 500 and base["config"]["jitter"] == 0


@pytest.mark.parametrize("bad", [-1, 10**9 + 1, 1.5, True])
def test_bad_jitter_refused(bad):
    with pytest.raises(ConfigError, match="jitter"):
        Cfg.make("4", "8M", 2, "anonymous_thp", jitter=bad)
