"""Differential test: s2sim's stage-2 walk against QEMU's, through unicorn.

QEMU (inside unicorn) is an independent implementation of the Arm ARM's
stage-2 walk. We build random stage-2 tables with s2sim's PhysMem, copy the
table pages into unicorn's guest RAM at the same physical addresses, point
VTTBR_EL2/VTCR_EL2 at them, and run `AT S12E1R` / `AT S12E1W` at EL2 for many
IPAs. PAR_EL1 then holds the PA (F=0), or F=1 with FST (fault type and level)
and S=1 (stage-2 fault). Each result is compared with `s2sim.arch.walk.walk`.

Envelope (what unicorn 2.1's QEMU 5.0 models faithfully, from probing):
- 4K and 64K granules only (the "max" CPU reports no 16K granule), IPA sizes
  below 44 bits (its PARange is 44 bits; larger IPAs are CONSTRAINED
  UNPREDICTABLE and QEMU faults them);
- no Address size faults (QEMU 5.0 does not check output/table addresses
  against PS): all addresses generated here are below 2^40;
- no hardware AF update (VTCR_EL2.HA stays 0; AF=0 gives Access flag faults);
- XN bit 53 is not decoded by QEMU (no FEAT_XNX); irrelevant to R/W checks;
- QEMU accepts level-0 blocks with 4K granule (a QEMU bug): with IPA < 44 bits
  the walk never starts at level 0, so no level-0 entry is ever generated;
- stage-2 faults on stage-1 walks are misreported: stage 1 stays off
  (SCTLR_EL1.M = 0), so the IPA is the VA given to AT.
Out-of-range IPAs are taken from [2^ipa_bits, 2^44): above the PA size a
disabled stage 1 itself faults (Arm ARM), which is not what we compare.
"""

from __future__ import annotations

import os
import random
import time

import pytest

unicorn = pytest.importorskip(
    "unicorn", reason="unicorn (QEMU's CPU emulator) is not installed; it is in the dev extra")

from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, Uc
from unicorn.arm64_const import (
    UC_ARM64_REG_PAR_EL1,
    UC_ARM64_REG_PSTATE,
    UC_ARM64_REG_X0,
    UC_CPU_ARM64_MAX,
)

from s2sim.arch.geometry import Geometry
from s2sim.arch.memory import PhysMem
from s2sim.arch.walk import READ, WRITE, Fault, Translation, walk

# System registers as (op0, op1, CRn, CRm, op2) (Arm ARM, system register encodings).
SCR_EL3 = (3, 6, 1, 1, 0)
HCR_EL2 = (3, 4, 1, 1, 0)
VTCR_EL2 = (3, 4, 2, 1, 2)
VTTBR_EL2 = (3, 4, 2, 1, 0)
SCTLR_EL1 = (3, 0, 1, 0, 0)
ID_AA64MMFR0_EL1 = (3, 0, 0, 7, 0)

# AT S12E1R, X0 = SYS #4, C7, C8, #4, X0; AT S12E1W, X0 = SYS #4, C7, C8, #5, X0.
# SYS encoding: 0xD5080000 | op1 << 16 | CRn << 12 | CRm << 8 | op2 << 5 | Rt.
AT_S12E1R_X0 = 0xD5080000 | 4 << 16 | 7 << 12 | 8 << 8 | 4 << 5 | 0
AT_S12E1W_X0 = 0xD5080000 | 4 << 16 | 7 << 12 | 8 << 8 | 5 << 5 | 0
assert (AT_S12E1R_X0, AT_S12E1W_X0) == (0xD50C7880, 0xD50C78A0)

CODE_R, CODE_W = 0x1000, 0x2000
TABLE_BASE = 0x0100_0000
TABLE_SPAN = 0x0400_0000  # 64 MiB of guest RAM for table pages
PA_BITS = 44  # the CPU's PARange, and VTCR_EL2.PS
OA_LIMIT_BITS = 40  # every output/table address stays far below PS: no Address size faults

FAULT_KINDS = {0b00: "address_size", 0b01: "translation", 0b10: "access_flag",
               0b11: "permission"}


class QemuStage2:
    """One unicorn ARM64 'max' CPU at EL2 with stage 2 on and stage 1 off."""

    def __init__(self) -> None:
        uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        uc.ctl_set_cpu_model(UC_CPU_ARM64_MAX)  # before anything else touches the CPU
        self.uc = uc
        uc.mem_map(0, TABLE_BASE + TABLE_SPAN)
        uc.mem_write(CODE_R, AT_S12E1R_X0.to_bytes(4, "little"))
        uc.mem_write(CODE_W, AT_S12E1W_X0.to_bytes(4, "little"))
        self.pamax_field = uc.cpr_read(*ID_AA64MMFR0_EL1) & 0xF
        uc.cpr_write(*SCR_EL3, 0x431)  # NS=1, RES1 bits [5:4], RW=1 (EL2 is AArch64)
        self.hcr = (1 << 0) | (1 << 31)  # VM=1 (stage 2 on), RW=1 (EL1 is AArch64)
        uc.cpr_write(*HCR_EL2, self.hcr)
        uc.cpr_write(*SCTLR_EL1, uc.cpr_read(*SCTLR_EL1) & ~1)  # stage 1 off
        uc.reg_write(UC_ARM64_REG_PSTATE, 0x3C9)  # EL2h, DAIF masked
        uc.cpr_write(*HCR_EL2, self.hcr)  # refresh QEMU's cached EL state
        self._dirty_end = TABLE_BASE

    def load(self, geo: Geometry, mem: PhysMem, root: int, vmid: int = 1) -> None:
        """Program VTCR_EL2/VTTBR_EL2 from `geo` and copy the table pages in."""
        uc = self.uc
        if self._dirty_end > TABLE_BASE:  # clear the previous case's tables
            uc.mem_write(TABLE_BASE, bytes(self._dirty_end - TABLE_BASE))
        end = TABLE_BASE
        for pa, page in mem.tables.items():
            assert TABLE_BASE <= pa and pa + geo.granule_size <= TABLE_BASE + TABLE_SPAN
            uc.mem_write(pa, page.entries.tobytes())
            end = max(end, pa + geo.granule_size)
        self._dirty_end = end
        v = geo.vtcr()
        vtcr = (v["t0sz"] | v["sl0"] << 6 | v["irgn0"] << 8 | v["orgn0"] << 10 | v["sh0"] << 12
                | v["tg0"] << 14 | v["ps"] << 16 | 1 << 31)
        uc.cpr_write(*VTCR_EL2, vtcr)
        uc.cpr_write(*VTTBR_EL2, vmid << 48 | root)

    def at(self, ipa: int, write: bool) -> int:
        """Run AT S12E1R/W on `ipa`; return PAR_EL1."""
        uc = self.uc
        uc.reg_write(UC_ARM64_REG_X0, ipa)
        start = CODE_W if write else CODE_R
        uc.emu_start(start, start + 4)
        return uc.reg_read(UC_ARM64_REG_PAR_EL1)


def par_outcome(par: int) -> tuple:
    """PAR_EL1 -> ("ok", PA[47:12]) or (fault kind, level) for a stage-2 fault."""
    if not par & 1:
        return ("ok", par & 0x0000_FFFF_FFFF_F000)
    fst, s = (par >> 1) & 0x3F, (par >> 9) & 1
    if not s:
        return ("stage1", fst)
    return (FAULT_KINDS.get(fst >> 2, f"fst{fst:#x}"), fst & 3)


def model_outcome(res) -> tuple:
    if isinstance(res, Translation):
        return ("ok", res.pa & ~0xFFF)
    assert isinstance(res, Fault)
    return (res.kind, res.level)


@pytest.fixture(scope="module")
def qemu() -> QemuStage2:
    try:
        return QemuStage2()
    except Exception as e:  # noqa: BLE001  # pragma: no cover - depends on the installed unicorn
        pytest.skip(f"unicorn could not be set up as an ARM64 EL2 CPU: {e!r}")


# --- random stage-2 tables ---------------------------------------------------------------------
def lshift(geo: Geometry, level: int) -> int:
    return geo.page_shift + (3 - level) * (geo.page_shift - 3)


def rand_leaf_attrs(rng: random.Random) -> int:
    mem = rng.randrange(16)
    if mem >> 2 and not mem & 3:  # Normal with inner 0b00 is reserved: avoid it
        mem |= 0b11
    s2ap = rng.choice((0b00, 0b01, 0b10, 0b11, 0b11, 0b11))
    sh = rng.choice((0b00, 0b10, 0b11))
    af = 1 if rng.random() < 0.85 else 0
    a = mem << 2 | s2ap << 6 | sh << 8 | af << 10
    a |= rng.getrandbits(1) << 51  # DBM (ignored: VTCR_EL2.HD = 0)
    a |= rng.getrandbits(2) << 53  # XN (R/W accesses ignore it)
    a |= rng.getrandbits(4) << 55  # software bits
    return a


def table_noise(rng: random.Random) -> int:
    """IGNORED bits of a table descriptor: [11:2] and [58:52]."""
    if rng.random() < 0.3:
        return rng.getrandbits(10) << 2 | rng.getrandbits(7) << 52
    return 0


def build_case(rng: random.Random, granule: str, ipa_bits: int):
    geo = Geometry.make(granule, ipa_bits, pa_bits=PA_BITS)
    mem = PhysMem(geo.granule_size, PA_BITS, table_base=TABLE_BASE, data_base=0x10_0000)
    roots = [mem.alloc_table(geo.start_level) for _ in range(geo.concatenated_tables)]
    root = roots[0].pa
    assert root % (geo.concatenated_tables * geo.granule_size) == 0
    per = geo.entries_per_table
    limit = 1 << ipa_bits
    targets = []
    for _ in range(rng.randint(1, 4)):  # clusters of IPAs that share tables
        base = rng.randrange(limit)
        spread = rng.choice((16, 21, 25, 30, ipa_bits))
        for _ in range(rng.randint(2, 10)):
            targets.append((base + rng.randrange(1 << spread)) % limit)
    for ipa in targets:
        level = geo.start_level
        idx = (ipa >> lshift(geo, level)) & ((1 << (ipa_bits - lshift(geo, level))) - 1)
        page = mem.page(root + (idx // per) * geo.granule_size)
        idx %= per
        while True:
            e = page.entries[idx]
            if e & 3 == 3 and level < 3:
                page = mem.page(e & geo.table_mask)
                level += 1
                idx = (ipa >> lshift(geo, level)) & (per - 1)
                continue
            if e:
                break  # already decided for an earlier target
            sh = lshift(geo, level)
            oa = rng.randrange(1 << (OA_LIMIT_BITS - sh)) << sh
            r = rng.random()
            if level < 3:
                if r < 0.6 or (r < 0.8 and not geo.block_allowed(level)):
                    nxt = mem.alloc_table(level + 1)
                    page.entries[idx] = nxt.pa | table_noise(rng) | 0b11
                    continue
                if r < 0.8:
                    page.entries[idx] = oa | rand_leaf_attrs(rng) | 0b01  # block
                elif r < 0.9:
                    page.entries[idx] = rng.getrandbits(64) & ~1  # invalid with junk
                break  # else: leave it 0
            if r < 0.75:
                page.entries[idx] = oa | rand_leaf_attrs(rng) | 0b11  # page
            elif r < 0.85:
                page.entries[idx] = oa | rand_leaf_attrs(rng) | 0b01  # reserved at level 3
            elif r < 0.95:
                page.entries[idx] = rng.getrandbits(64) & ~1
            break
    queries = []
    for ipa in targets:
        queries.append(ipa)
        queries.append((ipa ^ rng.getrandbits(rng.choice((12, 16, 21, 29)))) % limit)
    queries += [rng.randrange(limit) for _ in range(4)]
    queries += [rng.randrange(limit, 1 << PA_BITS) for _ in range(2)]  # out of range
    return geo, mem, root, queries


def run_cases(qemu: QemuStage2, granule: str, seeds: range) -> tuple[int, list, dict]:
    compared = 0
    mismatches = []
    outcomes: dict = {}
    for seed in seeds:
        rng = random.Random(f"{granule}-{seed}")
        ipa_bits = rng.randint(32, 43)
        geo, mem, root, queries = build_case(rng, granule, ipa_bits)
        qemu.load(geo, mem, root)
        for ipa in queries:
            for write in (False, True):
                got = par_outcome(qemu.at(ipa, write))
                res = walk(mem, geo, root, ipa, WRITE if write else READ, ha=False)
                want = model_outcome(res)
                compared += 1
                key = want[0] if want[0] == "ok" else f"{want[0]}@{want[1]}"
                outcomes[key] = outcomes.get(key, 0) + 1
                if got != want:
                    mismatches.append((granule, seed, ipa_bits, hex(ipa),
                                       "W" if write else "R", want, got))
    return compared, mismatches, outcomes


# --- tests ---------------------------------------------------------------------------------------
def test_harness_hand_built(qemu) -> None:
    """A 40-bit/4K table by hand: known PAR results (translation, AF, permission, PA)."""
    geo = Geometry.make("4K", 40, pa_bits=PA_BITS)
    mem = PhysMem(4096, PA_BITS, table_base=TABLE_BASE)
    r0, r1 = mem.alloc_table(1), mem.alloc_table(1)
    l2, l3 = mem.alloc_table(2), mem.alloc_table(3)
    r0.entries[0] = l2.pa | 3
    l2.entries[0] = l3.pa | 3
    rw_af = (0b1111 << 2) | (0b11 << 6) | (0b11 << 8) | (1 << 10)
    l3.entries[5] = 0x1234_5000 | rw_af | 3
    l3.entries[6] = 0x1234_6000 | (rw_af & ~(1 << 10)) | 3  # AF = 0
    l2.entries[1] = 0x4000_0000 | (0b1111 << 2) | (0b01 << 6) | (1 << 10) | 1  # 2M, read-only
    r1.entries[1] = 0x8000_0000 | rw_af | 1  # 1G block at IPA 513 GiB
    qemu.load(geo, mem, r0.pa)
    cases = [(0x5123, False, ("ok", 0x1234_5000)), (0x5123, True, ("ok", 0x1234_5000)),
             (0x6000, False, ("access_flag", 3)), (0x7000, True, ("translation", 3)),
             (0x20_0123, False, ("ok", 0x4000_0000)), (0x20_0123, True, ("permission", 2)),
             (0x80_4000_1234, True, ("ok", 0x8000_1000)), (0x40_0000, False, ("translation", 2)),
             (1 << 40, False, ("translation", 0)), (0x1_0000_0000, True, ("translation", 1))]
    for ipa, write, expect in cases:
        assert par_outcome(qemu.at(ipa, write)) == expect, hex(ipa)
        res = walk(mem, geo, r0.pa, ipa, WRITE if write else READ)
        assert model_outcome(res) == expect, hex(ipa)


def test_cpu_envelope(qemu) -> None:
    # ID_AA64MMFR0_EL1.PARange 0b0100 = 44 bits: the envelope above depends on it.
    assert qemu.pamax_field == 0b0100


N_SEEDS = int(os.environ.get("S2SIM_UNICORN_SEEDS", "1200"))


@pytest.mark.parametrize("granule", ["4K", "64K"])
def test_random_tables_match_qemu(qemu, granule) -> None:
    t0 = time.perf_counter()
    compared, mismatches, outcomes = run_cases(qemu, granule, range(N_SEEDS))
    elapsed = time.perf_counter() - t0
    assert not mismatches, (f"{len(mismatches)} of {compared} walks differ from QEMU, "
                            f"first: {mismatches[:5]}")
    # The random tables must exercise every outcome we compare.
    assert compared >= 2000, compared
    for key in ("ok", "translation@3", "permission@3", "access_flag@3", "translation@2",
                "permission@2", "access_flag@2"):
        assert outcomes.get(key, 0) > 0, (key, outcomes)
    assert any(k.startswith("translation@0") for k in outcomes)
    print(f"{granule}: {compared} AT walks compared with QEMU in {elapsed:.1f}s: {outcomes}")
