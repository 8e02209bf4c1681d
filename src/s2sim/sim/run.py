"""Run kvm_page_table_test in simulated time: the API behind `pagetable-test`/`compare`."""

from __future__ import annotations

from s2sim import __version__
from s2sim.arch.machine import Machine
from s2sim.kvm.coalesce import variant as get_variant
from s2sim.kvm.vm import Kvm
from s2sim.sim.batch import BatchTie
from s2sim.sim.convoy import Convoy
from s2sim.sim.costs import CostModel
from s2sim.sim.engine import Agent, Engine, Lock
from s2sim.sim.events import StageMark
from s2sim.sim.metrics import Metrics
from s2sim.sim.profile import Profile, load_profile
from s2sim.sim.vcpu import HostMemory, Livelock, Vcpu, drive
from s2sim.workloads.pagetable_test import (
    ADJUST,
    STAGES,
    UPDATE,
    TestConfig,
    stage_segments,
    test_base,
)


def run_pagetable_test(cfg: TestConfig, profile: Profile | None = None,
                       observers: tuple = (), ff_stats: dict | None = None) -> dict:
    """Simulate the selftest; returns the JSON-ready result (schema in docs/results.md).

    `observers` are callables subscribed to the event stream (checker, trace); any
    observer turns the fast paths off (they would skip their events).
    `ff_stats`, if given, receives what the fast paths skipped (not part of the
    result: the result is the exact path's whatever the path taken).
    """
    try:
        return _run(cfg, profile, observers, ff_stats, batch=True)
    except BatchTie:
        # an equal-time order a read batch could not decide: redo without batches
        r = _run(cfg, profile, observers, ff_stats, batch=False)
        if ff_stats is not None:
            ff_stats["batch_redos"] = 1
        return r


def _run(cfg: TestConfig, profile: Profile | None, observers: tuple, ff_stats: dict | None,
         batch: bool) -> dict:
    prof = profile or load_profile(cfg.platform)
    var = get_variant(cfg.variant, cfg.coalesce, cfg.cmo)
    geo = cfg.geometry
    costs = CostModel(prof)
    host_cpu = cfg.vcpus
    machine = Machine(geo, cfg.vcpus + 1, prof.fwb, prof.ha, prof.tlb_capacity,
                      prof.walk_capacity, prof.tlb_policy)
    for obs in observers:
        machine.bus.subscribe(obs)
    kvm = Kvm(machine, var, 1, prof.ttl, host_cpu)
    kvm.pgt.announce(host_cpu)
    from s2sim.kvm.memslot import resolve_backing
    b = resolve_backing(cfg.backing, geo)
    large = b.page_size
    if cfg.size % large:
        from s2sim.errors import ConfigError
        raise ConfigError(f"test memory size {cfg.size:#x} is not a multiple of the "
                          f"{cfg.backing} page size {large:#x}")
    base = test_base(cfg, geo, large)
    slot = kvm.add_memslot(base, cfg.size, cfg.backing, cfg.hva_offset)
    metrics = Metrics(machine.bus)
    engine = Engine(machine, cfg.tie, cfg.seed)
    lock = Lock("mmu_lock", int(prof.costs["lock_acquire_ns"]),
                int(prof.costs["lock_handoff_ns"]), prof.costs["lock_handoff_per_waiter_ns"])
    hostmem = HostMemory(costs, machine, kvm, slot, lock)
    batch = batch and cfg.runahead and Convoy.eligible(cfg, machine)
    vcpus = [Vcpu(i, machine, kvm, engine, lock, costs, hostmem, cfg.runahead, batch,
                  cfg.jitter, cfg.seed) for i in range(cfg.vcpus)]
    convoy = (Convoy(engine, machine, kvm, slot, lock, vcpus, hostmem, metrics)
              if Convoy.eligible(cfg, machine) else None)
    anon4k = large == geo.granule_size and not b.thp
    host_actions = []
    stages = []
    aborted = ""
    for stage in STAGES:
        if stage == UPDATE:
            metrics.begin("host:enable_dirty_log")
            host_actions.append(_run_host(engine, kvm.enable_dirty_log(slot, host_cpu), costs,
                                          lock, "enable_dirty_log", host_cpu, metrics))
        if stage == ADJUST:
            metrics.begin("host:disable_dirty_log")
            host_actions.append(_run_host(engine, kvm.disable_dirty_log(slot, host_cpu), costs,
                                          lock, "disable_dirty_log", host_cpu, metrics))
        m = metrics.begin(stage)
        lock_before = _lock_stats(lock)
        t0 = engine.now
        if machine.bus.on:
            machine.bus.emit(StageMark(t0, -1, stage, True))
        for v in vcpus:
            v.seg = -1  # not started in this stage yet
            segs = stage_segments(stage, v.cpu, base, cfg.size, large, geo.granule_size, anon4k)
            v.agent = engine.spawn(Agent(f"vcpu{v.cpu}", v.cpu, v.run(segs)))
        if convoy is not None:
            convoy.begin()
        try:
            t1 = engine.run()
        except Livelock as e:
            aborted = f"{stage}: {e}"
            t1 = engine.now
        finally:
            if convoy is not None:
                convoy.end()
        if machine.bus.on:
            machine.bus.emit(StageMark(t1, -1, stage, False))
        m.seconds = (t1 - t0) / 1e9
        m.lock = {k: v - lock_before[k] for k, v in _lock_stats(lock).items()}
        m.lock["max_wait_ns"] = lock.max_wait_ns  # of the run so far
        lock.max_wait_ns = 0
        d = m.to_dict()
        d["dirty_pages"] = len(slot.dirty) if stage == UPDATE else 0
        stages.append(d)
        if aborted:
            break
    for v in vcpus:
        v.mc.free_all()
    if ff_stats is not None:
        ff_stats.clear()
        ff_stats["enabled"] = convoy is not None
        if batch:
            ff_stats.update(engine.batch_stats)
        if convoy is not None:
            ff_stats.update(convoy.stats)
            ff_stats["no_jump"] = dict(convoy.why)
    return {
        "version": __version__,
        "config": cfg.to_dict() | {"variant_resolved": {"name": var.name, "coalesce": var.coalesce,
                                                        "cmo": var.cmo},
                                   "base_ipa": base, "large_page": large},
        "profile": prof.to_dict(),
        "stages": stages,
        "host_actions": host_actions,
        "aborted": aborted,
        "simulated_ns": engine.now,
        "engine_resumptions": engine.resumptions,
    }


def _run_host(engine: Engine, gen, costs: CostModel, lock: Lock, name: str, cpu: int,
              metrics: Metrics | None = None) -> dict:
    t0 = engine.now
    engine.spawn(Agent(name, cpu, drive(gen, costs, lock, None, cpu)))
    t1 = engine.run()
    out = {"name": name, "seconds": (t1 - t0) / 1e9}
    m = metrics.cur if metrics is not None else None
    if m is not None and m.name == "host:" + name:  # what the host action did
        d = m.to_dict()
        out.update({k: d[k] for k in ("descriptor_writes", "tlbi", "tlbi_total", "dsb")})
    return out


def _lock_stats(lock: Lock) -> dict:
    return {"acquisitions": lock.acquisitions, "contended": lock.contended,
            "wait_ns": lock.wait_ns, "hold_ns": lock.hold_ns}
