"""Replay many shifted periods of TLB operations at once, when their effect is steady.

The convoy fast-forward (sim/convoy.py) replays a recorded period's TLB
operations (fills, walk-cache fills, hits, TLBIs) m times, each shifted by the
period's IPA advance. In a fault convoy where every fault ends in a TLBI (the
relax convoy of a dirty-logging UPDATE, say), every period fills, invalidates
and refills one CPU's entries for the new page, and one operation at a time
costs m x (operations) x (CPUs) method calls.

Here the first periods are applied one at a time, exactly, and their effect on
the TLB is measured: the replacement order after a period must be the order
before it, with its `e` oldest entries evicted and `a` entries that were not
there appended (the period's new pages, their descriptors advancing by the
period's PA shift), and the walk cache unchanged. Once two periods in a row
have the same effect (the same e, the same new entries shifted by one
period), every later period has it too, provided nothing they touch is in the
TLB already: their keys are new (checked) and the evictions come from the
front, which the appended entries only reach after everything older is gone.
Those periods are then applied by building the final entries directly. Two
regimes are steady: filling (no eviction, while the TLB cannot overflow even
within a period) and full (e == a). Anything else is applied one period at a
time, as before: the result is the exact path's in every case.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from itertools import islice


def replay_periods(tlb, period: Callable[[int], None], m: int, dp: int,
                   named: tuple | None, cache: dict) -> int:
    """Apply periods 1..m to `tlb`; `period(i)` applies period i's operations exactly.
    Returns how many periods were applied at once (the rest one at a time).

    `named` is what the recorded period's operations name (shifted by i periods
    in period i): (leaf keys as (level, key), walk-cache entries as (level, IPA)),
    None if one names a range (a range or whole-VMID TLBI): then every period is
    applied one at a time. `cache` memoises the built entries
    across the CPUs of one jump.
    """
    cap = tlb.capacity
    if cap is None or named is None or m < 4:
        for i in range(1, m + 1):
            period(i)
        return 0
    shifts = tlb.shifts
    op_keys, walk_ipas = named
    dkey = {}
    for lvl, _ in op_keys:
        if dp % (1 << shifts[lvl]):
            dkey = None  # a shared (block) entry: never steady by shifting
            break
        dkey[lvl] = (dp >> shifts[lvl]) << 16
    order, leaf = tlb._order, tlb.leaf
    worder, walkc = tlb._worder, tlb.walkc
    prev = None
    i = 1
    steady = 0
    while i <= m:
        o0 = list(order)
        w0 = list(worder)
        wv0 = [dict(d) for d in walkc.values()]
        period(i)
        eff = None if dkey is None else _effect(o0, order, leaf)
        if eff is not None and (list(worder) != w0 or
                                any(d != v for d, v in zip(walkc.values(), wv0))):
            eff = None
        i += 1
        if eff is None or prev is None or not _same(prev, eff, dkey, dp) or i > m:
            prev = eff
            continue
        prev = eff
        e, keys, descs = eff
        a = len(keys)
        n = m - i + 1                       # periods left
        if e == 0:
            # filling: no eviction while even a period's transient cannot overflow
            room = cap - len(order) - len(op_keys)
            n = min(n, room // a) if a else n
        elif e != a:
            continue
        # the walk-cache entries the periods name stay the ones named so far
        for lvl, ipa in walk_ipas:
            sh = shifts[lvl]
            n = min(n, ((((ipa + (i - 1) * dp) >> sh) + 1 << sh) - ipa - 1) // dp - (i - 1))
        if n < 1 or not _new(op_keys, dkey, i - 1, n, leaf):
            continue
        _bulk(order, leaf, keys, descs, e, n, dkey, dp, cache)
        i += n
        steady += n
    return steady


def _effect(o0: list, order: dict, leaf: dict):
    """(e, appended keys, their descs) if `order` is o0 minus its e oldest plus new keys."""
    o1 = list(order)
    s0 = set(o0)
    j = len(o1)
    while j and o1[j - 1] not in s0:
        j -= 1
    e = len(o0) - j
    if e < 0 or o1[:j] != o0[e:]:
        return None
    keys = o1[j:]
    return e, keys, [leaf[lvl][k] for lvl, k in keys]


def _same(p, q, dkey: dict, dp: int) -> bool:
    """Period q's effect is period p's shifted by one period."""
    if p[0] != q[0] or len(p[1]) != len(q[1]):
        return False
    for (lv0, k0), (lv1, k1), d0, d1 in zip(p[1], q[1], p[2], q[2]):
        if lv0 != lv1 or k1 - k0 != dkey.get(lv0) or d1 - d0 != dp:
            return False
    return True


def _new(op_keys: list, dkey: dict, done: int, n: int, leaf: dict) -> bool:
    """No key the periods done+1 .. done+n name is cached now."""
    for lvl, k in op_keys:
        dk, dct = dkey[lvl], leaf[lvl]
        if not dct:
            continue
        base = k + done * dk
        for j in range(1, n + 1):
            if base + j * dk in dct:
                return False
    return True


def _bulk(order: dict, leaf: dict, keys: list, descs: list, e: int, n: int,
          dkey: dict, dp: int, cache: dict) -> None:
    """n more periods: pop n*e oldest entries, append each period's keys, shifted."""
    pop = n * e
    old_n = min(pop, len(order))
    if old_n:
        old = list(islice(order, old_n))
        deque(map(order.__delitem__, old), maxlen=0)
        for lvl, k in old:
            del leaf[lvl][k]
    skip = pop - old_n  # appended entries evicted within the jump: never built
    sig = ("steady", tuple(keys), tuple(descs), n, skip)
    add = cache.get(sig)
    if add is None:
        okeys, per = [], {}
        pos = 0
        for j in range(1, n + 1):
            for (lvl, k), dsc in zip(keys, descs):
                if pos >= skip:
                    key = k + j * dkey[lvl]
                    okeys.append((lvl, key))
                    per.setdefault(lvl, {})[key] = dsc + j * dp
                pos += 1
        add = (dict.fromkeys(okeys), per)
        cache[sig] = add
    order.update(add[0])
    for lvl, dct in add[1].items():
        leaf[lvl].update(dct)
