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

import random
from collections.abc import Generator

from s2sim.arch.machine import Machine, Vttbr
from s2sim.arch.tlb import Conflict
from s2sim.arch.walk import ACCESS_NAMES, Fault, Translation
from s2sim.kvm import vm
from s2sim.kvm.memcache import Memcache
from s2sim.kvm.steps import INVISIBLE
from s2sim.sim.batch import ReadBatch
from s2sim.sim.costs import CostModel
from s2sim.sim.engine import Acquire, Engine, Lock, Release, Resched, SimError
from s2sim.sim.events import FaultHandled, FaultTaken, GuestAccesses
from s2sim.sim.hostmm import HostMemory

__all__ = ["HostMemory", "Livelock", "Vcpu", "drive"]

# A segment of an access stream: accesses at start + k*stride, k < count.
Segment = tuple[int, int, int, int]  # (start, stride, count, access)


class Livelock(SimError):
    """A vCPU keeps faulting on one address without progress (e.g. a stale walk cache)."""


LIVELOCK_FAULTS = 64


class Vcpu:
    """One vCPU: its memcache, counters and the agent body for a stage."""

    def __init__(self, cpu: int, machine: Machine, kvm: vm.Kvm, engine: Engine,
                 lock: Lock, costs: CostModel, host: HostMemory, runahead: bool = True,
                 batch: bool = False, jitter: int = 0, seed: int = 0) -> None:
        self.cpu, self.machine, self.kvm, self.engine = cpu, machine, kvm, engine
        self.lock, self.costs, self.host, self.runahead = lock, costs, host, runahead
        self.batch = batch           # read batches (sim/batch.py): run-ahead past the horizon
        self.jitter = jitter         # extra 0..jitter ns on each fault's exit (seeded)
        self.rng = random.Random(f"s2sim-jitter/{seed}/{cpu}") if jitter else None
        self.mc = Memcache(machine, cpu)
        self.vttbr: Vttbr = kvm.pgt.vttbr
        self.accesses = self.walks = self.faults = self.conflicts = 0
        self.outcomes: dict[str, int] = {}
        self.agent = None
        # Where the agent is, kept on the object (not only in generator locals) so
        # that the convoy fast-forward (sim/convoy.py) can read and shift it.
        self.segments: list[Segment] = []
        self.seg = 0                 # index of the current segment
        self.k = 0                   # index of the current access in it
        self.skip = 0                # accesses to skip at the next loop top (fast-forward)
        self.skip_segs = 0           # whole segments to skip there, k kept (fast-forward)
        self.last_fault_ipa, self.repeats = -1, 0
        self.cur_fault: Fault | None = None   # the fault being handled, if any
        self.kvm_gen = None                   # KVM's generator for it
        self.step = None                      # the step it yielded last
        self.fault_t0 = self.fault_waited0 = 0
        self.ff = None               # the convoy controller, when fast-forward is on
        self.gup = None              # the last GUP's result sent to KVM ((writable, huge))
        self.in_gup = False          # a THP GUP (sim/hostmm.py) is under way

    def run(self, segments: list[Segment]) -> Generator:
        """The agent body: every segment's accesses, in order."""
        machine, engine, cpu, vttbr = self.machine, self.engine, self.cpu, self.vttbr
        translate = machine.translate
        acc_ns, walk_ns = self.costs.access, self.costs.walk_level
        shifts = machine.geo.shifts
        bus = machine.bus
        acc_ev = bus.on and bus.want.get("guest_accesses", False)
        runahead = self.runahead
        batching = self.batch
        ff = self.ff
        self.segments = segments
        self.last_fault_ipa, self.repeats = -1, 0
        si = -1
        while si + 1 < len(segments):
            si += 1
            start, stride, count, access = segments[si]
            self.seg = si
            wave_base = si << 40
            k = 0
            while k < count:
                if ff is not None:
                    if self.skip:
                        k += self.skip
                        self.skip = 0
                    if self.skip_segs:
                        # a region period across segments (sim/convoy.py): the same
                        # position in a later segment of the same shape, shifted
                        si += self.skip_segs
                        self.skip_segs = 0
                        start, stride, count, access = segments[si]
                        self.seg = si
                        wave_base = si << 40
                    if wave_base | k > ff.wave and not engine.batches:
                        k += ff.reach(self, si, k)
                        if self.skip_segs:
                            continue  # (moved to a later segment: at the loop top)
                self.k = k
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
                    self.k = k
                    yield n * acc_ns
                elif t is Translation:
                    self.walks += 1
                    self.accesses += 1
                    if acc_ev:
                        bus.emit(GuestAccesses(engine.now, cpu, ipa, stride, 1,
                                               ACCESS_NAMES[access], r.pa, False, r.desc,
                                               r.level))
                    k += 1
                    self.k = k
                    cost = machine.last_walk_levels * walk_ns + acc_ns
                    if batching and k < count:
                        b = ReadBatch.plan(self, r, ipa, stride, count - k, access, cost)
                        if b is not None:
                            k += yield from self._batch(b)
                            self.k = k
                            continue
                    yield cost
                elif t is Fault:
                    if ipa == self.last_fault_ipa:
                        self.repeats += 1
                        if self.repeats > LIVELOCK_FAULTS:
                            raise Livelock(f"vCPU {cpu} faulted {self.repeats} times in a row on "
                                           f"IPA {ipa:#x} ({r.kind}, level {r.level}) without "
                                           "progress")
                    else:
                        self.last_fault_ipa, self.repeats = ipa, 1
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
        if ff is not None:
            ff.vcpu_done()

    def _batch(self, b: ReadBatch) -> Generator:
        """Sleep through a read batch; returns how many of its accesses were taken."""
        b.start()
        eng = self.engine
        eng._seq += 1
        yield Resched(b.last_time, eng._seq, b._sched(b.n - 1), b)
        while b.cut is None:
            # woken at the last access: resumptions due now that were scheduled
            # before it go first (FIFO as on the one-access path)
            seq = b.wake_order()
            if seq is None:
                b.materialise(b.n)
                b.stop()
                yield b.c
                return b.n
            yield Resched(self.engine.now, seq, b._sched(b.n - 1), b)
        return b.cut  # cut: resumed at the first access not taken

    def _fault(self, fault: Fault) -> Generator:
        """Exit, run KVM's handler on this vCPU, enter. Invisible steps are batched.

        The fault's start time and the lock wait before it are kept on the object
        (the fast-forward shifts them with the rest of the clock).
        """
        engine, costs, bus = self.engine, self.costs, self.machine.bus
        self.fault_t0 = engine.now
        self.faults += 1
        if bus.on:
            bus.emit(FaultTaken(engine.now, self.cpu, fault.ipa, fault.kind, fault.level,
                                ACCESS_NAMES[fault.access]))
        self.fault_waited0 = self.agent.lock_waited
        self.cur_fault = fault
        self.kvm_gen = self.kvm.handle_fault(fault, self.mc, self.cpu)
        exit_ns = costs.exit + (self.rng.randint(0, self.jitter) if self.jitter else 0)
        outcome = yield from self._drive(exit_ns)
        self.kvm_gen = self.step = None
        yield costs.entry
        fault, self.cur_fault = self.cur_fault, None
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if bus.on:
            bus.emit(FaultHandled(engine.now, self.cpu, fault.ipa, outcome,
                                  engine.now - self.fault_t0,
                                  self.agent.lock_waited - self.fault_waited0))

    def _drive(self, pending: int) -> Generator:
        """`drive` for this vCPU's fault handler, with the handler's generator and its
        current step kept on the object (`kvm_gen`, `step`) and re-read after every
        suspension, so that the fast-forward can relabel a fault in flight. Same
        charging as `drive`."""
        costs, lock, host, cpu = self.costs, self.lock, self.host, self.cpu
        step_ns = costs.step_ns
        val = None
        while True:
            try:
                s = self.kvm_gen.send(val)
            except StopIteration as e:
                if pending:
                    yield pending
                return e.value
            self.step = s
            val = None
            k = s.kind
            if k in INVISIBLE:
                pending += step_ns(s)
                continue
            if k == vm.LOCK:
                if pending:
                    yield pending
                    pending = 0
                yield Acquire(lock)
                if self.ff is not None and not self.engine.batches:
                    self.ff.granted(self)
            elif k == vm.UNLOCK:
                if pending:
                    yield pending
                    pending = 0
                yield Release(lock)
            elif k == vm.HOST_TOUCH:
                if pending:
                    yield pending
                    pending = 0
                s = self.step  # (re-read: the fast-forward may have relabelled the fault)
                if host.mm:
                    self.in_gup = True
                    val = self.gup = yield from host.gup(s.ipa, s.note == "write", cpu)
                    self.in_gup = False
                else:
                    ns = host.touch(s.pa, s.size, host.machine.now, cpu)
                    if ns:
                        yield ns
            else:
                ns = pending + step_ns(s)
                pending = 0
                if ns:
                    yield ns


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
        value = None
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
            if host.mm:
                value = yield from host.gup(s.ipa, s.note == "write", cpu)
                continue
            ns = host.touch(s.pa, s.size, host.machine.now, cpu)
            if ns:
                yield ns
        else:
            ns = pending + step_ns(s)
            pending = 0
            if ns:
                yield ns
