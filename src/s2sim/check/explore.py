"""The interleaving explorer: small scenarios run over every order of the agents' steps.

A scenario builds a fresh world (machine, stage-2 table, memslot, a prepared
state) and a few agents:

  * a KVM agent: a fault handler or host operation; each visible Step
    (descriptor write, TLBI, DSB, CMO, free, teardown) is a scheduling point,
    and it holds mmu_lock from its LOCK step to its UNLOCK step;
  * vCPU agents: guest accesses; the TLB lookup and every descriptor read of a
    walk (one level at a time, from the deepest walk-cache entry) are
    scheduling points. A vCPU that faults waits for mmu_lock, then runs KVM's
    handler for its fault in one step (its effects are not interleaved with
    walkers: the lock orders it after the KVM agent), and retries.

The search is stateless (each schedule replays from the start): exhaustive
when the schedule count stays under a budget, otherwise bounded by
preemptions (CHESS-style), otherwise seeded random schedules; the output says
which. Every schedule runs the Checker; a violation is reported with the
shortest schedule prefix that reproduces it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from s2sim.arch import events as ev
from s2sim.arch.geometry import Geometry
from s2sim.arch.machine import Machine
from s2sim.arch.tlb import Conflict
from s2sim.arch.walk import ACCESS_NAMES, READ, WRITE, Fault, WalkCursor
from s2sim.check.checker import PROPERTIES, Checker
from s2sim.errors import ConfigError
from s2sim.kvm import vm as kvmvm
from s2sim.kvm.coalesce import Variant
from s2sim.kvm.memcache import Memcache
from s2sim.kvm.pgtable import run
from s2sim.kvm.steps import INVISIBLE, Step
from s2sim.sim.events import GuestAccesses, HostTouch

MB2 = 2 << 20
BASE = 0x40000000  # slot IPA
GRAN = 4096


class World:
    """One replayable run: machine, VM, slot, host pages, lock and agents."""

    def __init__(self, variant: Variant, ncpus: int, logging: bool = False) -> None:
        self.geo = Geometry.make("4K", 40)
        self.machine = Machine(self.geo, ncpus, fwb=False, tlb_capacity=None,
                               walk_capacity=None)
        self.checker = Checker(keep=5)
        self.machine.bus.subscribe(self.checker)
        self.kvm = kvmvm.Kvm(self.machine, variant, 1)
        self.kvm.pgt.announce(0)
        self.slot = self.kvm.add_memslot(BASE, MB2, "anonymous_hugetlb_2mb")
        self.slot.logging = logging
        self.touched: set[int] = set()
        self.lock_owner: str | None = None
        self.mcs = [Memcache(self.machine, c) for c in range(ncpus)]

    # --- host side -------------------------------------------------------------
    def host_touch(self, pa: int, size: int, cpu: int) -> None:
        if pa not in self.touched:
            self.touched.add(pa)
            self.machine.bus.emit(HostTouch(self.machine.now, cpu, pa, size))

    def handle_fault_atomic(self, fault: Fault, cpu: int) -> str:
        """Run KVM's handler for `fault` to completion (the lock is free)."""
        gen = self.kvm.handle_fault(fault, self.mcs[cpu], cpu)
        while True:
            try:
                s = next(gen)
            except StopIteration as e:
                return e.value
            if s.kind == kvmvm.HOST_TOUCH:
                self.host_touch(s.pa, s.size, cpu)

    def access_now(self, cpu: int, ipa: int, access: int) -> None:
        """Set-up helper: an access with its faults handled, no interleaving."""
        for _ in range(8):
            r = self.machine.translate(cpu, self.kvm.pgt.vttbr, ipa, access)
            if type(r) is Fault:
                self.handle_fault_atomic(r, cpu)
                continue
            self._emit_access(cpu, ipa, access, r)
            return
        raise RuntimeError(f"set-up access to {ipa:#x} does not complete")

    def _emit_access(self, cpu, ipa, access, r) -> None:
        if type(r) is tuple:
            level, desc = r
        else:
            level, desc = r.level, r.desc
        shift = self.geo.level_shift(level)
        pa = (desc & ((1 << 48) - 1) & ~((1 << shift) - 1)) | (ipa & ((1 << shift) - 1))
        self.machine.bus.emit(GuestAccesses(self.machine.now, cpu, ipa, 0, 1,
                                            ACCESS_NAMES[access], pa, type(r) is tuple, desc,
                                            level))

    # --- agents --------------------------------------------------------------------
    def kvm_agent(self, name: str, gen: Generator, cpu: int) -> Generator:
        """A KVM generator; yields before each visible step (a scheduling point)."""
        value = None
        while True:
            try:
                s = gen.send(value)
            except StopIteration:
                if self.lock_owner == name:
                    self.lock_owner = None
                return
            k = s.kind
            if k == kvmvm.LOCK:
                while self.lock_owner is not None:
                    yield "blocked"
                self.lock_owner = name
            elif k == kvmvm.UNLOCK:
                self.lock_owner = None
            elif k == kvmvm.HOST_TOUCH:
                yield k
                self.host_touch(s.pa, s.size, cpu)
            elif k in INVISIBLE:
                continue
            else:
                yield k

    def vcpu_agent(self, name: str, cpu: int, accesses: list[tuple[int, int]]) -> Generator:
        """Guest accesses, one TLB lookup / descriptor read per scheduling point."""
        m = self.machine
        vttbr = self.kvm.pgt.vttbr
        tlb = m.tlbs[cpu]
        for ipa, access in accesses:
            for _attempt in range(6):
                yield "tlb"
                r = m.lookup(cpu, vttbr, ipa, access)
                if r is None:
                    start = m.walk_start(cpu, vttbr, ipa)
                    cur = WalkCursor(m.mem, self.geo, vttbr.baddr, ipa, access, m.ha, start)
                    while cur.result is None:
                        yield "walk"
                        cur.step()
                    r = m.complete_walk(cpu, vttbr, ipa, access, cur.result, cur.path, start)
                if type(r) is Conflict:
                    tlb.invalidate("IPAS2E1IS", vttbr.vmid, ipa)
                    continue
                if type(r) is Fault:
                    yield "fault"
                    while self.lock_owner is not None:
                        yield "blocked"
                    self.handle_fault_atomic(r, cpu)
                    continue
                self._emit_access(cpu, ipa, access, r)
                break



@dataclass
class Scenario:
    name: str
    summary: str
    build: Callable[[Variant], tuple[World, list[tuple[str, Generator]]]]


def _coalesce(variant: Variant):
    """A 2 MiB region mapped page by page while dirty logging (only pages 0 and 1),
    logging stopped; vCPU 0's read of page 2 coalesces the table into a block while
    vCPUs 1 and 2 read pages 0, 1 and 3 (DOMAIN.md 2: the review's scenario)."""
    w = World(variant, 3, logging=True)
    w.access_now(1, BASE, READ)
    w.access_now(2, BASE + GRAN, READ)
    w.slot.logging = False
    f = w.machine.translate(0, w.kvm.pgt.vttbr, BASE + 2 * GRAN, READ)
    assert type(f) is Fault, f
    w.mcs[0].topup(2)
    agents = [
        ("kvm0", w.kvm_agent("kvm0", w.kvm.handle_fault(f, w.mcs[0], 0), 0)),
        ("vcpu1", w.vcpu_agent("vcpu1", 1, [(BASE, READ), (BASE + 3 * GRAN, READ)])),
        ("vcpu2", w.vcpu_agent("vcpu2", 2, [(BASE + GRAN, READ)])),
    ]
    return w, agents


def _split(variant: Variant):
    """A 2 MiB block mapped writable, then dirty logging on (write-protect + flush).
    vCPU 0's write to page 0 splits the block while vCPU 1 writes page 5 and vCPU 2
    reads then writes page 7 (a read-only page made writable by relaxing)."""
    w = World(variant, 3)
    w.access_now(1, BASE + 5 * GRAN, WRITE)
    run(w.kvm.enable_dirty_log(w.slot, 0))
    f = w.machine.translate(0, w.kvm.pgt.vttbr, BASE, WRITE)
    assert type(f) is Fault, f
    w.mcs[0].topup(2)
    agents = [
        ("kvm0", w.kvm_agent("kvm0", w.kvm.handle_fault(f, w.mcs[0], 0), 0)),
        ("vcpu1", w.vcpu_agent("vcpu1", 1, [(BASE + 5 * GRAN, WRITE)])),
        ("vcpu2", w.vcpu_agent("vcpu2", 2, [(BASE + 7 * GRAN, READ),
                                            (BASE + 7 * GRAN, WRITE)])),
    ]
    return w, agents


def _unmap(variant: Variant):
    """Two pages of a table mapped and cached by vCPU 1; the host unmaps the whole
    2 MiB (both leaves, then the emptied table) while vCPU 1 walks them again."""
    w = World(variant, 2)
    w.access_now(1, BASE, READ)
    w.access_now(1, BASE + GRAN, READ)
    w.machine.tlbs[1].invalidate("VMALLE1IS", 1)  # leaf entries gone, walk cache kept

    def host():
        yield Step(kvmvm.LOCK)
        yield from w.kvm.pgt.unmap(BASE, MB2, 0)
        yield Step(kvmvm.UNLOCK)

    agents = [
        ("kvm0", w.kvm_agent("kvm0", host(), 0)),
        ("vcpu1", w.vcpu_agent("vcpu1", 1, [(BASE, READ), (BASE + GRAN, READ)])),
    ]
    return w, agents


SCENARIOS = {
    "coalesce": Scenario("coalesce", "coalesce a 2 MiB table (2 of 512 pages mapped after "
                         "dirty logging) while 2 vCPUs read", _coalesce),
    "split": Scenario("split", "split a write-protected 2 MiB block while vCPUs write",
                      _split),
    "unmap": Scenario("unmap", "unmap a 2 MiB table while a vCPU walks it", _unmap),
}


@dataclass
class Found:
    property: str
    schedule: list[str]
    violation: dict


@dataclass
class Exploration:
    scenario: str
    variant: str
    mode: str
    schedules: int = 0
    states: int = 0
    complete: bool = True
    found: dict[str, Found] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "scenario": self.scenario, "variant": self.variant, "mode": self.mode,
            "schedules": self.schedules, "states": self.states, "complete": self.complete,
            "properties": {p: ("violated" if p in self.found else "held") for p in PROPERTIES},
            "violations": [{"property": f.property, "schedule": f.schedule,
                            "violation": f.violation} for f in self.found.values()],
        }


def _replay(scn: Scenario, variant: Variant, prefix: list[int], pick=None):
    """Run one schedule: follow `prefix` (agent indices), then `pick(runnable)` (default:
    the lowest index). Returns (choices, runnable sets, world, first violation index)."""
    world, agents = scn.build(variant)
    in_setup = len(world.checker.violations)  # the set-up alone violates: empty schedule
    gens = [g for _, g in agents]
    names = [n for n, _ in agents]
    alive = [True] * len(gens)
    pending: list[str | None] = [None] * len(gens)
    choices: list[int] = []
    options: list[list[int]] = []
    labels: list[dict[int, str]] = []
    first_bad: dict[str, int] = {}
    # prime: advance every agent to its first scheduling point
    for i, g in enumerate(gens):
        try:
            pending[i] = next(g)
        except StopIteration:
            alive[i] = False
    step = 0
    while any(alive):
        runnable = [i for i in range(len(gens)) if alive[i] and not (
            pending[i] == "blocked" and world.lock_owner is not None)]
        if not runnable:
            raise RuntimeError(f"deadlock in scenario {scn.name}")
        if step < len(prefix):
            i = prefix[step]
            if i not in runnable:
                raise RuntimeError("schedule prefix not replayable")
        elif pick is not None:
            i = pick(runnable)
        else:
            # default continuation: keep running the same agent (no preemption), so a
            # bounded search can branch from every prefix within its bound
            i = choices[-1] if choices and choices[-1] in runnable else runnable[0]
        choices.append(i)
        options.append(runnable)
        labels.append({j: pending[j] for j in runnable})
        world.machine.now = step
        before = len(world.checker.violations)
        try:
            pending[i] = next(gens[i])
        except StopIteration:
            alive[i] = False
        step += 1
        if len(world.checker.violations) > before:
            for v in world.checker.violations[before:]:
                first_bad.setdefault(v.property, step)
    # the end state: destroy checks nothing more here; run the quiescent checks
    world.checker.refc.on_done(ev.Dsb(step, -1, 0))
    world.checker.finish()
    for k, v in enumerate(world.checker.violations):
        # set-up violations need no schedule; end-judged ones (dirty log) need the
        # schedule up to the offending access
        first_bad.setdefault(v.property, 0 if k < in_setup else min(step, v.time + 1))
    return choices, options, world, first_bad, names, labels


# vCPU steps that only read shared state (TLB lookup, one descriptor read): two such
# steps of different agents commute, so only one order of an adjacent pair is explored.
READS = frozenset({"tlb", "walk"})


def _canonical(choices: list[int], labels: list[dict[int, str]], k: int, alt: int) -> bool:
    """False if taking `alt` at step k puts two commuting reads out of index order
    (the swapped schedule is equivalent and explored instead: sound pruning, since
    the lexicographically least schedule of each equivalence class never has an
    adjacent commuting pair in decreasing order)."""
    if k == 0:
        return True
    prev = choices[k - 1]
    return not (alt < prev and labels[k - 1].get(prev) in READS
                and labels[k].get(alt) in READS)


def _preemptions(choices: list[int], options: list[list[int]]) -> int:
    n = 0
    for k in range(1, len(choices)):
        prev = choices[k - 1]
        if choices[k] != prev and prev in options[k]:
            n += 1
    return n


def explore(name: str, variant: Variant, budget: int = 35000, bound: int | None = None,
            samples: int = 2000, seed: int = 0) -> Exploration:
    """Explore one scenario under one variant. Raises ConfigError for unknown scenarios."""
    scn = SCENARIOS.get(name)
    if scn is None:
        raise ConfigError(f"scenario {name!r} is unknown; use one of {', '.join(SCENARIOS)} "
                          "or all")
    modes = [("exhaustive", None)] if bound is None else []
    modes += [(f"preemption-bounded (k={k})", k) for k in ((bound,) if bound is not None
                                                          else (3, 2, 1))]
    tried = []
    for mode, k in modes:
        res = _dfs(scn, variant, budget, k)
        if res is not None:
            res.mode = mode + "".join(f"; {t} abandoned after {budget} schedules"
                                      for t in tried)
            return res
        tried.append(mode.split(" (")[0] if k is None else mode)
    # fall back: seeded random schedules
    out = Exploration(name, variant.name, f"random ({samples} schedules, seed {seed})",
                      complete=False)
    rng = random.Random(seed)
    for _ in range(samples):
        choices, options, world, bad, names, _ = _replay(scn, variant, [],
                                                         pick=lambda r: rng.choice(r))
        _record(out, choices, world, bad, names, options)
    return out


def _dfs(scn: Scenario, variant: Variant, budget: int, bound: int | None):
    out = Exploration(scn.name, variant.name, "")
    stack: list[list[int]] = [[]]
    while stack:
        prefix = stack.pop()
        choices, options, world, bad, names, labels = _replay(scn, variant, prefix)
        _record(out, choices, world, bad, names, options)
        if out.schedules > budget:
            return None
        # every sibling not taken (the default continuation need not be the lowest
        # agent): each tree node is pushed once, by the run that first reached it
        for k in range(len(choices) - 1, len(prefix) - 1, -1):
            for alt in reversed(options[k]):
                if alt != choices[k] and _canonical(choices, labels, k, alt):
                    nxt = choices[:k] + [alt]
                    if bound is None or _preemptions(nxt, options[:k] + [options[k]]) <= bound:
                        stack.append(nxt)
    return out


def _record(out: Exploration, choices, world, bad, names, options) -> None:
    out.schedules += 1
    out.states += len(choices)
    for prop, at in bad.items():
        sched = [names[i] for i in choices[:at]]
        cur = out.found.get(prop)
        if cur is None or len(sched) < len(cur.schedule):
            viol = next(v for v in world.checker.violations if v.property == prop)
            out.found[prop] = Found(prop, sched, viol.to_dict())
