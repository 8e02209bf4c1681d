"""Run an `ops` script against a fresh stage-2 table, recording every step.

The host side of KVM without any vCPU: useful to see exactly which
descriptor writes, TLBIs, CMOs and frees an operation performs, and in which
order, under each coalescing strategy.
"""

from __future__ import annotations

from s2sim.arch import descriptors as d
from s2sim.arch.geometry import Geometry
from s2sim.arch.machine import Machine
from s2sim.errors import AddressError
from s2sim.kvm.coalesce import Variant
from s2sim.kvm.memcache import Memcache
from s2sim.kvm.pgtable import Stage2PageTable, run
from s2sim.workloads.opscript import Op


def dump_table(pt: Stage2PageTable) -> list[dict]:
    """Every valid entry reachable from the root, in IPA order, decoded."""
    geo, mem = pt.geo, pt.machine.mem
    out: list[dict] = []

    def visit(pa: int, level: int, base: int, n: int) -> None:
        page = mem.tables[pa]
        ent = page.entries
        for i in range(n):
            v = ent[i]
            if not v & 1:
                continue
            ipa = base + (i << geo.level_shift(level))
            dec = d.decode(v, level, geo, pt.fwb, strict=False)
            row = {"level": level, "ipa": ipa, "table_pa": pa, "index": i,
                   "desc": f"0x{v:016x}", "type": dec.type, "output_address": dec.output_address}
            if dec.type in ("block", "page"):
                row["prot"] = d.prot_str(d.prot_of(v))
                row["memattr"] = dec.memattr_name
                row["af"] = dec.af
            out.append(row)
            if dec.type == "table":
                visit(dec.output_address, level + 1, ipa, geo.entries_per_table)

    epp = geo.entries_per_table
    for k in range(geo.concatenated_tables):
        visit(pt.vttbr.baddr + k * geo.granule_size, geo.start_level,
              k * epp << geo.level_shift(geo.start_level), min(epp, geo.start_entries()))
    return out


def _checked_leaf(pt: Stage2PageTable, op: Op) -> int:
    leaf = op.leaf
    lvl = pt.geo.leaf_level_for(leaf)  # raises for impossible sizes
    del lvl
    if op.size <= 0:  # else the per-leaf loop below runs zero times and nothing is checked
        raise AddressError(f"line {op.line}: size {op.size:#x} must be positive")
    if op.ipa % leaf or op.size % leaf or op.pa % leaf:
        raise AddressError(f"line {op.line}: 'as {leaf:#x}' needs IPA, SIZE and PA aligned to "
                           f"the leaf size (IPA {op.ipa:#x}, SIZE {op.size:#x}, PA {op.pa:#x})")
    return leaf


def run_script(ops: list[Op], geo: Geometry, variant: Variant, fwb: bool = False,
               observers: tuple = ()) -> dict:
    """Execute `ops` in order; returns {"steps", "table", "results"}.

    `observers` subscribe to the event stream before anything happens.
    """
    machine = Machine(geo, 1, fwb)
    for obs in observers:
        machine.bus.subscribe(obs)
    pt = Stage2PageTable(machine, 1, variant)
    pt.announce()
    mc = Memcache(machine)
    steps: list[dict] = []
    results: list[dict] = []
    destroyed = False
    for op in ops:
        if destroyed:
            raise AddressError(f"line {op.line}: the table was destroyed by an earlier line")
        gens = []
        if op.name == "map":
            if op.leaf:
                leaf = _checked_leaf(pt, op)
                for off in range(0, op.size, leaf):
                    gens.append(("map", op.ipa + off, leaf, op.pa + off))
            else:
                gens.append(("map", op.ipa, op.size, op.pa))
        else:
            gens.append((op.name, op.ipa, op.size, op.pa))
        total = {"op": op.text, "line": op.line, "rc": 0, "leaves": 0, "tables": 0,
                 "splits": 0, "coalesced": 0, "unchanged": 0, "perm_only": 0}
        for name, ipa, size, pa in gens:
            if name == "map":
                mc.topup(geo.levels - 1)
                gen = pt.map(ipa, size, pa, op.prot, mc)
            elif name == "unmap":
                gen = pt.unmap(ipa, size)
            elif name == "wrprotect":
                gen = _then_flush(pt, pt.wrprotect(ipa, size), ipa, size)
            elif name == "relax":
                gen = pt.relax_perms(ipa, op.prot)
            elif name == "mkold":
                gen = pt.mkold(ipa, size)
            elif name == "mkyoung":
                gen = pt.mkyoung(ipa)
            elif name == "flush":
                gen = pt.flush(ipa, size)
            else:
                gen = pt.destroy()
                destroyed = True
            st, res = run(gen)
            for s in st:
                if s.kind == "visit":
                    continue
                row = s.to_dict()
                row["op"] = op.text
                steps.append(row)
            total["rc"] = total["rc"] or res.rc
            for k in ("leaves", "tables", "splits", "coalesced"):
                total[k] += getattr(res, k)
            total["unchanged"] += int(res.unchanged)
            total["perm_only"] += int(res.perm_only)
            if name == "mkold":
                total["young"] = res.young
        results.append(total)
    mc.free_all()
    table = [] if destroyed else dump_table(pt)
    return {"steps": steps, "table": table, "results": results,
            "counts": dict(machine.counts), "pages_live": len(machine.mem.tables)}


def _then_flush(pt: Stage2PageTable, gen, ipa: int, size: int):
    """wrprotect as KVM's callers use it: then flush the VMID."""
    res = yield from gen
    yield from pt.tlbi_vmid(0)
    pt.done("wrprotect", ipa, size, res.rc, 0)
    return res
