"""vCPU agents: run an access stream against the machine, taking faults into KVM.

Per access: TLB lookup; on a miss the hardware walk (filling TLB and walk
cache); on a fault, exit to the host, run KVM's fault handler on this vCPU
(as KVM does), return to the guest and retry the access.

Run-ahead: after a TLB hit, the following accesses of the same segment that
fall in the same cached leaf are taken in one step, but never past the next
moment another agent is scheduled to act (the engine's horizon), so nothing
they could observe can change meanwhile. `runahead=False` takes them one at
a time; results are identical (tested).
"""

from __future__ import annotations

from typing import Generator

from s2sim.arch.machine import Machine, Vttbr
from s2sim.arch.tlb import Conflict
from s2sim.arch.walk import ACCESS_NAMES, Fault, Translation
from s2sim.kvm import vm
from s2sim.kvm.memcache import Memcache
from s2sim.sim.costs import CostModel
from s2sim.sim.engine import Acquire, Engine, Lock, Release, SimError
from s2sim.kvm.steps import INVISIBLE
from s2sim.sim.events import FaultHandled, FaultTaken, GuestAccesses, HostTouch

# A segment of an access stream: accesses at start + k*stride, k < count.
Segment = tuple[int, int, int, int]  # (start, stride, count, access)


class Livelock(SimError):
    """A vCPU keeps faulting on one address without progress (e.g. a stale walk cache)."""


LIVELOCK_FAULTS = 64


class HostMemory:
    """Host pages of guest memory: allocated and zeroed on first touch, once.

    A second toucher while the first is still zeroing waits for it (the
    host's page lock / hugetlb fault mutex).
    """

    def __init__(self, costs: CostModel, machine: Machine) -> None:
        self.costs, self.machine = costs, machine
        self.ready: dict[int, int] = {}
        self.bytes_zeroed = 0

    def touch(self, pa: int, size: int, now: int, cpu: int) -> int:
        t = self.ready.get(pa)
        if t is None:
            ns = self.costs.zero_ns(size)
            self.ready[pa] = now + ns
            self.bytes_zeroed += size
            if self.machine.bus.on:
                self.machine.bus.emit(HostTouch(now, cpu, pa, size))
            return ns
        return max(0, t - now)


class Vcpu:
    """One vCPU: its memcache, counters and the agent body for a stage."""

    def __init__(self, cpu: int, machine: Machine, kvm: vm.Kvm, engine: Engine,
                 lock: Lock, costs: CostModel, host: HostMemory, runahead: bool = True) -> None:
        self.cpu, self.machine, self.kvm, self.engine = cpu, machine, kvm, engine
        self.lock, self.costs, self.host, self.runahead = lock, costs, host, runahead
        self.mc = Memcache(machine, cpu)
        self.vttbr: Vttbr = kvm.pgt.vttbr
        self.accesses = self.walks = self.faults = self.conflicts = 0
        self.outcomes: dict[str, int] = {}
        self.agent = None

    def run(self, segments: list[Segment]) -> Generator:
        """The agent body: every segment's accesses, in order."""
        machine, engine, cpu, vttbr = self.machine, self.engine, self.cpu, self.vttbr
        translate = machine.translate
        acc_ns, walk_ns = self.costs.access, self.costs.walk_level
        shifts = machine.geo.shifts
        bus = machine.bus
        acc_ev = bus.on and bus.want.get("guest_accesses", False)
        runahead = self.runahead
        last_fault_ipa, repeats = -1, 0
        for start, stride, count, access in segments:
            k = 0
            while k < count:
                ipa = start + k * stride
                r = translate(cpu, vttbr, ipa, access)
                t = type(r)
                if t is tuple:
                    n = 1
                    if runahead and k + 1 < count:
                        shift = shifts[r[0]]
                        if stride:
                            last_in_leaf = (((ipa >> shift) + 1) << shift) - 1
                            n = min(count - k, (last_in_leaf - ipa) // stride + 1)
                        else:
                            n = count - k
                        if n > 1:
                            room = engine.horizon() - engine.now
                            n = max(1, min(n, -(-room // acc_ns)))
                    if acc_ev:
                        pa = (r[1] & ((1 << 48) - 1) & ~((1 << shifts[r[0]]) - 1)) | (
                            ipa & ((1 << shifts[r[0]]) - 1))
                        bus.emit(GuestAccesses(engine.now, cpu, ipa, stride, n,
                                               ACCESS_NAMES[access], pa, True, r[1], r[0]))
                    self.accesses += n
                    k += n
                    yield n * acc_ns
                elif t is Translation:
                    self.walks += 1
                    self.accesses += 1
                    if acc_ev:
                        bus.emit(GuestAccesses(engine.now, cpu, ipa, stride, 1,
                                               ACCESS_NAMES[access], r.pa, False, r.desc,
                                               r.level))
                    k += 1
                    yield machine.last_walk_levels * walk_ns + acc_ns
                elif t is Fault:
                    if ipa == last_fault_ipa:
                        repeats += 1
                        if repeats > LIVELOCK_FAULTS:
                            raise Livelock(f"vCPU {cpu} faulted {repeats} times in a row on IPA "
                                           f"{ipa:#x} ({r.kind}, level {r.level}) without "
                                           "progress")
                    else:
                        last_fault_ipa, repeats = ipa, 1
                    yield from self._fault(r)
                elif t is Conflict:
                    # The architecture allows an abort or either entry. s2sim takes the
                    # TLB conflict abort path: count it, drop this CPU's entries for
                    # the address (what KVM's handler would do by TLBI) and retry.
                    self.conflicts += 1
                    tlb = machine.tlbs[cpu]
                    tlb.invalidate("IPAS2E1IS", vttbr.vmid, ipa)
                    yield self.costs.exit + self.costs.entry
                else:
                    raise TypeError(f"translate returned {r!r}")

    def _fault(self, fault: Fault) -> Generator:
        """Exit, run KVM's handler on this vCPU, enter. Invisible steps are batched."""
        engine, costs, bus = self.engine, self.costs, self.machine.bus
        t0 = engine.now
        self.faults += 1
        if bus.on:
            bus.emit(FaultTaken(t0, self.cpu, fault.ipa, fault.kind, fault.level,
                                ACCESS_NAMES[fault.access]))
        waited0 = self.agent.lock_waited
        outcome = yield from drive(self.kvm.handle_fault(fault, self.mc, self.cpu), costs,
                                   self.lock, self.host, self.cpu, costs.exit)
        yield costs.entry
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if bus.on:
            bus.emit(FaultHandled(engine.now, self.cpu, fault.ipa, outcome, engine.now - t0,
                                  self.agent.lock_waited - waited0))


def drive(gen: Generator, costs: CostModel, lock: Lock, host: HostMemory | None, cpu: int,
          pending: int = 0) -> Generator:
    """Run a KVM generator as part of an agent: charge each step, then let it act.

    A visible step's cost (with any batched invisible work before it) is slept
    before the generator is resumed to perform it, so its effect lands when
    paid for. Returns the generator's return value.
    """
    step_ns = costs.step_ns
    value = None
    while True:
        try:
            s = gen.send(value)
        except StopIteration as e:
            if pending:
                yield pending
            return e.value
        k = s.kind
        if k in INVISIBLE:
            pending += step_ns(s)
            continue
        if k == vm.LOCK:
            if pending:
                yield pending
                pending = 0
            yield Acquire(lock)
        elif k == vm.UNLOCK:
            if pending:
                yield pending
                pending = 0
            yield Release(lock)
        elif k == vm.HOST_TOUCH:
            if pending:
                yield pending
                pending = 0
            ns = host.touch(s.pa, s.size, host.machine.now, cpu)
            if ns:
                yield ns
        else:
            ns = pending + step_ns(s)
            pending = 0
            if ns:
                yield ns
