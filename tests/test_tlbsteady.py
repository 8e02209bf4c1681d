"""Steady TLB replays (sim/tlbsteady.py): m shifted periods at once = one at a time."""

import random

import pytest
from test_fastpath import _kw, _same

from s2sim.arch.tlb import TLB

SHIFTS = (39, 30, 21, 12)
PAGE = 1 << 12
VMID = 1


def _tlb(cap, wcap=8, policy="lru"):
    return TLB(SHIFTS, (1, 2, 3), (0, 1, 2), cap, wcap, policy)


def _state(t):
    return (list(t._order), {lv: dict(d) for lv, d in t.leaf.items()},
            list(t._worder), {lv: dict(d) for lv, d in t.walkc.items()})


def _period_fn(t, ops, dp):
    """Period i: each op at its page + i*dp (ops name pages relative to the period)."""
    def period(i):
        s = i * dp
        for kind, off, arg in ops:
            ipa = off * PAGE + s
            if kind == "f":
                t.fill(VMID, ipa, 3, (0x8000_0000 + ipa) | 0x7C3 | arg)
            elif kind == "fb":  # a block entry: shared by the periods
                t.fill(VMID, ipa, 2, (0x8000_0000 + (ipa >> 21 << 21)) | 0x7C1)
            elif kind == "i":
                t.invalidate("IPAS2E1IS", VMID, ipa)
            elif kind == "ir":
                t.invalidate("RIPAS2E1IS", VMID, ipa, 4 * PAGE)
            elif kind == "h":
                t.lookup(VMID, ipa)
            elif kind == "fw":
                t.fill_walk(VMID, ipa, 2, 0x1000 * (arg + 1), 0)
    return period


def _keys(t, ops):
    out, walks = [], []
    for kind, off, _ in ops:
        if kind in ("f", "h"):
            out.append((3, ((off * PAGE) >> 12 << 16) | VMID))
        elif kind == "fb":
            out.append((2, ((off * PAGE) >> 21 << 16) | VMID))
        elif kind == "ir":
            return None
        elif kind == "fw":
            walks.append((2, off * PAGE))
        elif kind == "i":
            for lvl, dct in t.leaf.items():
                if dct:
                    out.append((lvl, ((off * PAGE) >> SHIFTS[lvl] << 16) | VMID))
            walks.extend((lvl, off * PAGE) for lvl in (0, 1, 2))
    return out, walks


def _random_case(rng):
    r = rng.choice((1, 1, 2, 3))               # pages per period
    ops = []
    for _ in range(rng.randint(1, 6)):
        kind = rng.choice(("f", "f", "i", "h", "fw", "f", "i", "fb", "ir", "back"))
        off = rng.randrange(r)
        if kind == "back":                     # a period touching the previous one's page
            kind, off = rng.choice(("f", "i", "h")), off - r
        ops.append((kind, off, rng.randrange(2)))
    return r, ops


@pytest.mark.parametrize("policy", ["lru", "fifo"])
def test_steady_replay_equals_one_period_at_a_time(policy, monkeypatch):
    from s2sim.sim import tlbsteady
    regimes = set()
    bulk = tlbsteady._bulk

    def counted(order, leaf, keys, descs, e, n, *rest):
        regimes.add(("full" if e else "filling") if keys else "nothing kept")
        return bulk(order, leaf, keys, descs, e, n, *rest)

    monkeypatch.setattr(tlbsteady, "_bulk", counted)
    replay_periods = tlbsteady.replay_periods
    rng = random.Random(7)
    steady_cases = 0
    for case in range(400):
        r, ops = _random_case(rng)
        cap = rng.choice((6, 12, 40, 300))
        m = rng.choice((3, 10, 60, 250))
        a, b = _tlb(cap, policy=policy), _tlb(cap, policy=policy)
        # what the TLB holds before: old pages behind, maybe some ahead of the periods
        pre = [rng.randrange(-50, 0) for _ in range(rng.randrange(cap))]
        if rng.random() < 0.3:
            pre.append(rng.randrange(1, m * r))
        for t in (a, b):
            for p in pre:
                t.fill(VMID, (1 << 30) + p * PAGE, 3, (0x8000_0000 + p * PAGE) | 0x7C3)
            t.fill_walk(VMID, 1 << 30, 2, 0x1000, 0)
        dp = r * PAGE
        ops = [(k, o + ((1 << 30) >> 12), x) for k, o, x in ops]
        pa, pb = _period_fn(a, ops, dp), _period_fn(b, ops, dp)
        n = replay_periods(a, pa, m, dp, _keys(a, ops), {})
        for i in range(1, m + 1):
            pb(i)
        assert _state(a) == _state(b), (case, r, ops, cap, m)
        steady_cases += n > 0
    assert steady_cases > 60  # the steady path is taken, not only the fallback
    assert regimes == {"full", "filling", "nothing kept"}


@pytest.mark.parametrize("cap", [0, 96])
def test_relax_convoy_tlbs_replayed_at_once(cap):
    # anonymous 4K UPDATE, 20 vCPUs: every fault relaxes one page and TLBIs it on every CPU;
    # the jumps' TLB replays go steady (filling the platform's 1152 entries; full at 96)
    # and the TLBs after every engine run are the exact path's, in replacement order
    stats = _same(_kw("2M", 20, "anonymous", "v5.11"), tlb_capacity=cap)
    assert stats.get("tlb_steady_periods", 0) > 1000, stats
