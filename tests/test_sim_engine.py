"""The event loop (sim/engine.py): tie-breaks, the FIFO mmu_lock, misuse errors.

The engine only stamps `machine.now`, so a bare namespace stands in for the
Machine here; agents are plain generators.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from s2sim.sim.engine import Acquire, Agent, Engine, Lock, Release, SimError


def _engine(tie: str = "fifo", seed: int = 0) -> Engine:
    return Engine(SimpleNamespace(now=0, tlbs=()), tie, seed)


def test_fifo_tie_break_is_insertion_order():
    # Three agents spawned at t=0 each sleep 10 ns three times. With FIFO
    # ties the heap order at equal times is the push order, so every round
    # runs a, b, c in the order they were spawned (and re-pushed).
    eng = _engine()
    log = []

    def body(name):
        for _ in range(3):
            log.append((eng.now, name))
            yield 10

    for n in "abc":
        eng.spawn(Agent(n, 0, body(n)))
    end = eng.run()
    assert end == 30
    assert log == [(t, n) for t in (0, 10, 20) for n in "abc"]
    assert eng.machine.now == 30  # the engine stamps the machine's clock
    assert all(a.done_at == 30 for a in eng.agents)


def test_earlier_time_beats_spawn_order():
    eng = _engine()
    log = []

    def body(name, sleep):
        yield sleep
        log.append((eng.now, name))

    eng.spawn(Agent("late", 0, body("late", 7)))
    eng.spawn(Agent("early", 1, body("early", 3)))
    eng.spawn(Agent("delayed", 2, body("delayed", 0)), at=5)
    eng.run()
    assert log == [(3, "early"), (5, "delayed"), (7, "late")]


def _random_order(seed: int) -> list[str]:
    eng = _engine("random", seed)
    log = []

    def body(name):
        log.append(name)
        yield 0

    for i in range(8):
        eng.spawn(Agent(f"a{i}", i, body(f"a{i}")))
    eng.run()
    return log


def test_random_tie_break_is_seeded():
    # The same seed gives the same order; 8 agents tie at t=0, so two seeds
    # giving the same permutation of 8 would be a 1/40320 coincidence (and
    # deterministic: these seeds are known to differ).
    assert _random_order(1) == _random_order(1)
    assert sorted(_random_order(1)) == [f"a{i}" for i in range(8)]
    assert _random_order(1) != _random_order(2)


def test_lock_fifo_handoff_and_wait_accounting():
    # acquire_ns = 5, handoff_ns = 20, each holder holds 100 ns.
    #   A asks at t=0: uncontended, granted at 0+5 = 5, releases at 105.
    #   B asks at t=1, C at t=2: both queue (in that order).
    #   B is granted at 105 + 20 = 125 (waited 125-1 = 124), releases at 225.
    #   C is granted at 225 + 20 = 245 (waited 245-2 = 243), releases at 345.
    # wait_ns = 124 + 243 = 367 = 2 hand-offs (40) + queueing (104 + 223).
    # hold_ns = 3 * 100; the engine sends the waited ns back to each waiter.
    eng = _engine()
    lock = Lock("mmu_lock", acquire_ns=5, handoff_ns=20)
    grants = []

    def body(name, delay):
        if delay:
            yield delay
        waited = yield Acquire(lock)
        grants.append((name, eng.now, waited))
        yield 100
        yield Release(lock)

    agents = {n: eng.spawn(Agent(n, i, body(n, i))) for i, n in enumerate("ABC")}
    assert eng.run() == 345
    assert grants == [("A", 5, 0), ("B", 125, 124), ("C", 245, 243)]
    assert lock.acquisitions == 3 and lock.contended == 2
    assert lock.wait_ns == 367 == 2 * 20 + (105 - 1) + (225 - 2)
    assert lock.max_wait_ns == 243
    assert lock.hold_ns == 300
    assert [agents[n].lock_waited for n in "ABC"] == [0, 124, 243]
    assert lock.owner is None and lock.waiters == []


def test_handoff_grows_with_the_cpus_still_spinning():
    # handoff 20 + 7 per CPU still waiting after the new owner is chosen.
    #   A holds 5..105; B, C, D queue. B: 105 + 20 + 7*2 = 139 (C, D spin on),
    #   C: 239 + 20 + 7*1 = 266, D: 366 + 20 + 0 = 386, D releases at 486.
    eng = _engine()
    lock = Lock("mmu_lock", acquire_ns=5, handoff_ns=20, per_waiter_ns=7)
    grants = []

    def body(name, delay):
        if delay:
            yield delay
        yield Acquire(lock)
        grants.append((name, eng.now))
        yield 100
        yield Release(lock)

    for i, n in enumerate("ABCD"):
        eng.spawn(Agent(n, i, body(n, i)))
    assert eng.run() == 486
    assert grants == [("A", 5), ("B", 139), ("C", 266), ("D", 386)]


def test_release_then_continue_without_sleeping():
    # Release does not yield control: the agent continues at the same time.
    eng = _engine()
    lock = Lock("l", 0, 0)
    seen = []

    def body():
        yield Acquire(lock)
        yield Release(lock)
        seen.append(eng.now)
        yield Acquire(lock)
        yield Release(lock)

    eng.spawn(Agent("a", 0, body()))
    eng.run()
    assert seen == [0] and lock.acquisitions == 2 and lock.contended == 0


def test_release_of_lock_not_held_raises():
    eng = _engine()
    lock = Lock("mmu_lock", 1, 1)

    def body():
        yield Release(lock)

    eng.spawn(Agent("rogue", 0, body()))
    with pytest.raises(SimError, match="rogue released mmu_lock"):
        eng.run()


def test_release_of_lock_held_by_another_raises():
    eng = _engine()
    lock = Lock("mmu_lock", 1, 1)

    def holder():
        yield Acquire(lock)
        yield 100
        yield Release(lock)

    def thief():
        yield 10
        yield Release(lock)

    eng.spawn(Agent("holder", 0, holder()))
    eng.spawn(Agent("thief", 1, thief()))
    with pytest.raises(SimError, match="thief"):
        eng.run()


def test_negative_sleep_raises():
    eng = _engine()

    def body():
        yield -1

    eng.spawn(Agent("neg", 0, body()))
    with pytest.raises(SimError, match="sleep -1"):
        eng.run()


def test_unknown_request_and_tie_policy_raise():
    eng = _engine()

    def body():
        yield "soon"

    eng.spawn(Agent("odd", 0, body()))
    with pytest.raises(SimError, match="odd"):
        eng.run()
    with pytest.raises(SimError, match="tie-break"):
        _engine("lifo")


def test_horizon_and_run_until():
    # One agent ticking every 10 ns, 5 times: run(until=25) stops at the last
    # event <= 25 (t=20) and the horizon is the pending resumption at 30.
    eng = _engine()
    ticks = []

    def body():
        for _ in range(5):
            ticks.append(eng.now)
            yield 10

    assert eng.horizon() == 1 << 62  # nothing pending
    eng.spawn(Agent("t", 0, body()))
    assert eng.run(until=25) == 20
    assert ticks == [0, 10, 20] and eng.horizon() == 30
    assert eng.run() == 50
    assert ticks == [0, 10, 20, 30, 40]
