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

    __slots__ = ("cpu", "done_at", "gen", "lock_waited", "name")

    def __init__(self, name: str, cpu: int, gen: Generator) -> None:
        self.name, self.cpu, self.gen = name, cpu, gen
        self.done_at = -1
        self.lock_waited = 0


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

    def spawn(self, agent: Agent, at: int | None = None) -> Agent:
        self.agents.append(agent)
        self._push(self.now if at is None else at, agent, None)
        return agent

    def _push(self, t: int, agent: Agent, value: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._tie(), self._seq, agent, value))

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
            self._step(agent, value)
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
                    self.now = self.machine.now = t
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
            raise SimError(f"agent {agent.name} yielded {req!r}; expected ns, Acquire or Release")
