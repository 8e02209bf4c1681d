"""The event loop: integer-nanosecond time, a heap of agents, pluggable tie-breaks.

Agents are generators. What an agent yields tells the engine what it waits for:

    int n          sleep n ns (n >= 0)
    Acquire(lock)  resume when the lock is granted (FIFO hand-off)
    Release(lock)  release it and continue at once

The heap is ordered by (time, tie, sequence): `tie` comes from the tie-break
policy (FIFO: 0, so insertion order decides; "random": a seeded draw), so no
result depends on luck or on hash order.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass

from s2sim.arch.machine import Machine


class SimError(RuntimeError):
    """An agent misused the engine (e.g. released a lock it does not hold)."""


class Lock:
    """A spinlock with FIFO hand-off (KVM v5.11's mmu_lock; a queued spinlock).

    A hand-off costs `handoff_ns` plus `per_waiter_ns` for every CPU still
    spinning after the new owner is chosen: each release invalidates the
    lock's (and the protected data's) cache lines in every spinner, whose
    re-reads queue in the interconnect ahead of the next owner's. Simplified:
    linear in the number of spinners, no topology (sockets, dies).

    Statistics: acquisitions, contended acquisitions, total wait and hold ns.
    A reader-writer mode (6.2's rwlock) would add a shared holder count here.
    """

    def __init__(self, name: str, acquire_ns: int, handoff_ns: int,
                 per_waiter_ns: float = 0) -> None:
        self.name, self.acquire_ns, self.handoff_ns = name, acquire_ns, handoff_ns
        self.per_waiter_ns = per_waiter_ns
        self.owner: object | None = None
        self.waiters: list[tuple[object, int]] = []
        self.since = 0
        self.acquisitions = self.contended = 0
        self.wait_ns = self.hold_ns = self.max_wait_ns = 0


@dataclass(slots=True, frozen=True)
class Acquire:
    lock: Lock


@dataclass(slots=True, frozen=True)
class Release:
    lock: Lock


class Agent:
    """A named generator with its CPU number (or -1 for host actors)."""

    __slots__ = ("cpu", "done_at", "gen", "lock_waited", "name", "sched_at", "sched_by")

    def __init__(self, name: str, cpu: int, gen: Generator) -> None:
        self.name, self.cpu, self.gen = name, cpu, gen
        self.done_at = -1
        self.lock_waited = 0
        # when, and by whose resumption, its pending resumption was scheduled (the
        # FIFO order at equal times, which read batches reconstruct: sim/batch.py)
        self.sched_at = 0
        self.sched_by: object = None  # an Agent, or a read batch (its virtual access)


@dataclass(slots=True, frozen=True)
class Resched:
    """Resume at `t` with heap sequence `seq` (a vCPU read batch placing itself in the
    FIFO order the one-access-per-step path would have given it; see sim/batch.py)."""
    t: int
    seq: float
    sched_at: int
    by: object  # what scheduled it (a read batch's access)


class Engine:
    """Runs agents in simulated time on one Machine (stamps `machine.now`)."""

    def __init__(self, machine: Machine, tie: str = "fifo", seed: int = 0) -> None:
        if tie not in ("fifo", "random"):
            raise SimError(f"tie-break policy {tie!r}: use fifo or random")
        self.machine = machine
        self.now = 0
        self._heap: list[tuple[int, float, int, Agent, object]] = []
        self._seq = 0
        self._rng = random.Random(seed)
        self._tie: Callable[[], float] = (lambda: 0) if tie == "fifo" else self._rng.random
        self.agents: list[Agent] = []
        self.resumptions = 0
        self._until = 1 << 62
        self.cur: Agent | None = None  # the agent being resumed
        self.batches = 0               # vCPU read batches in flight (sim/batch.py)
        self.active: list = []         # ... and the batches themselves
        self.batch_stats = {"batches": 0, "batched_accesses": 0, "batch_cuts": 0}

    def spawn(self, agent: Agent, at: int | None = None) -> Agent:
        self.agents.append(agent)
        self._push(self.now if at is None else at, agent, None)
        return agent

    def _push(self, t: int, agent: Agent, value: object) -> None:
        self._seq += 1
        agent.sched_at = self.now
        agent.sched_by = self.cur
        heapq.heappush(self._heap, (t, self._tie(), self._seq, agent, value))

    def move(self, agent: Agent, t: int, seq: float, sched_at: int, by: object) -> None:
        """Replace `agent`'s pending resumption by one at `t` with sequence `seq`, as if
        scheduled at `sched_at`."""
        heap = self._heap
        for i, e in enumerate(heap):
            if e[3] is agent:
                heap[i] = (t, 0, seq, agent, None)
                heapq.heapify(heap)
                agent.sched_at = sched_at
                agent.sched_by = by
                return
        raise SimError(f"agent {agent.name} has no pending resumption to move")

    def horizon(self) -> int:
        """Time of the next pending resumption of any agent (a bound for running ahead)."""
        return self._heap[0][0] if self._heap else 1 << 62

    def run(self, until: int | None = None) -> int:
        """Run until no agent is left (or `until`); returns the time reached."""
        heap = self._heap
        machine = self.machine
        self._until = (1 << 62) if until is None else until
        while heap:
            t, _, _, agent, value = heapq.heappop(heap)
            if until is not None and t > until:
                heapq.heappush(heap, (t, 0, 0, agent, value))
                break
            self.now = machine.now = t
            self.cur = agent
            if self.batches:
                for b in self.active:
                    b.note(agent, t)
            self._step(agent, value)
        for tlb in machine.tlbs:
            tlb.settle()  # (read batches' fill runs: what is left is seen as it is)
        return self.now

    def _step(self, agent: Agent, value: object) -> None:
        gen = agent.gen
        send = gen.send
        while True:
            self.resumptions += 1
            try:
                req = send(value)
            except StopIteration:
                agent.done_at = self.now
                return
            if type(req) is int:
                if req < 0:
                    raise SimError(f"agent {agent.name} asked to sleep {req} ns")
                t = self.now + req
                heap = self._heap
                if (not heap or t < heap[0][0]) and t <= self._until:
                    # it would be popped next anyway: resume without the heap
                    agent.sched_at = self.now
                    agent.sched_by = agent
                    self.now = self.machine.now = t
                    if self.batches:
                        for b in self.active:
                            b.note(agent, t)
                    value = None
                    continue
                self._push(t, agent, None)
                return
            if type(req) is Acquire:
                lock = req.lock
                lock.acquisitions += 1
                if lock.owner is None:
                    lock.owner = agent
                    lock.since = self.now + lock.acquire_ns
                    self._push(self.now + lock.acquire_ns, agent, 0)
                    return
                lock.contended += 1
                lock.waiters.append((agent, self.now))
                return
            if type(req) is Release:
                lock = req.lock
                if lock.owner is not agent:
                    raise SimError(f"agent {agent.name} released {lock.name} it does not hold")
                lock.hold_ns += self.now - lock.since
                if lock.waiters:
                    nxt, since = lock.waiters.pop(0)
                    grant = self.now + lock.handoff_ns + int(
                        lock.per_waiter_ns * len(lock.waiters))
                    waited = grant - since
                    lock.wait_ns += waited
                    lock.max_wait_ns = max(lock.max_wait_ns, waited)
                    nxt.lock_waited += waited
                    lock.owner = nxt
                    lock.since = grant
                    self._push(grant, nxt, waited)
                else:
                    lock.owner = None
                value = None
                continue
            if type(req) is Resched:
                if req.t < self.now:
                    raise SimError(f"agent {agent.name} rescheduled into the past")
                agent.sched_at = req.sched_at
                agent.sched_by = req.by
                heapq.heappush(self._heap, (req.t, 0, req.seq, agent, None))
                return
            raise SimError(f"agent {agent.name} yielded {req!r}; expected ns, Acquire or Release")
