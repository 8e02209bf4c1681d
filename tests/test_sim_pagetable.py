"""kvm_page_table_test in simulated time (sim/run.py): exact stage counts, the seed's
effect in miniature, determinism and run-ahead equivalence.

Expected counts are derived by hand from DOMAIN.md sections 4-6 (the derivation
is in each test's comments), never copied from a run. Configurations are kept
small: 4 KiB granule with 2 MiB hugetlb blocks and a few MiB, or one 64 KiB
granule run with 512 MiB blocks.

Notation: N = number of large pages (blocks), B = block size, P = granule
(host page) size, H = B/2/P = pages in the second half of a block.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache

import pytest

from s2sim.errors import ConfigError
from s2sim.sim.profile import load_profile
from s2sim.sim.run import run_pagetable_test
from s2sim.workloads.pagetable_test import ADJUST, CREATE, UPDATE
from s2sim.workloads.pagetable_test import TestConfig as Cfg  # (not a pytest class)

K, M, G = 1 << 10, 1 << 20, 1 << 30
VARIANTS = ("v5.11", "patch1", "rfc", "block-first", "cmo-first", "bbml2")


@cache
def _run(cfg: Cfg) -> dict:
    """Results are cached per config (tests only read them)."""
    return run_pagetable_test(cfg)


def run(**kw) -> dict:
    return _run(Cfg.make(**kw))


def stages(r: dict) -> dict[str, dict]:
    return {s["name"]: s for s in r["stages"]}


# --- 1. stage semantics, exact counts, one vCPU -------------------------------------------

HUGE_4K = {"mode": "4", "size": "8M", "vcpus": 1, "backing": "anonymous_hugetlb_2mb"}  # N=4, B=2M
N4, B4, P4 = 4, 2 * M, 4 * K
H4 = B4 // 2 // P4  # 256


def _check_block_stages(st: dict, n: int, block: int, page: int) -> None:
    """The selftest's three stages over n hugetlb blocks with one (even, writing) vCPU."""
    h = block // 2 // page
    c, u, a = st[CREATE], st[UPDATE], st[ADJUST]
    # CREATE: vCPU 0 writes the first 8 bytes of each block: one translation
    # fault per block, each installing the block (user_mem_abort maps the
    # hugetlb page size); nothing else faults.
    assert c["faults"] == n and c["faults_by_kind"] == {"translation": n}
    assert c["outcomes"] == {"mapped": n} and c["spurious_faults"] == 0
    assert c["guest_accesses"] == n
    assert c["invalid_windows"] == 0 and c["tlbi_total"] == 0  # nothing was valid before
    # UPDATE (logging on, blocks write-protected): the write to each block's
    # first page takes a permission fault at block level; logging forces page
    # size != fault granule, so map() splits the block: break, TLBI by IPA,
    # table, and only the faulting page mapped. The reads of the H pages of
    # the second half each take a translation fault mapping one page
    # (read-only: logging maps reads without W).
    assert u["faults"] == n + n * h
    assert u["faults_by_kind"] == {"permission": n, "translation": n * h}
    assert u["outcomes"] == {"split": n, "mapped": n * h}
    assert u["guest_accesses"] == n * (1 + h)
    # dirty pages: only write faults mark dirty (v5.11 marks a page dirty only
    # when it maps it writable, and read faults in a logging slot map read-only),
    # so one page per block.
    assert u["dirty_pages"] == n
    # each split: 1 break + 1 table install + 1 page = 3 writes; each read: 1 page
    assert u["descriptor_writes"] == 3 * n + n * h
    # __kvm_tlb_flush_vmid_ipa per split: TLBI IPAS2E1IS; DSB; TLBI VMALLE1IS; DSB
    assert u["tlbi"] == {"IPAS2E1IS": n, "VMALLE1IS": n} and u["dsb"] == 2 * n
    assert u["invalid_windows"] == n
    # ADJUST (logging off): vCPU 0 reads every page. The first read of each
    # block faults (its first-half pages other than page 0 are unmapped);
    # mapping_size is the block again, the table is coalesced; every other
    # read hits the new block.
    assert a["faults"] == n and a["faults_by_kind"] == {"translation": n}
    assert a["outcomes"] == {"coalesced": n}
    assert a["guest_accesses"] == n * block // page
    assert a["dirty_pages"] == 0
    assert a["table_pages_freed"] == n and a["table_pages_allocated"] == 0
    # the freed subtree of each block held 1 + h valid page entries
    assert a["teardown_entries"] == n * (1 + h)
    assert a["tlbi"] == {"VMALLS12E1IS": n}


@pytest.mark.parametrize("variant", VARIANTS)
def test_hugetlb_2m_stages_exact(variant):
    st = stages(run(variant=variant, **HUGE_4K))
    _check_block_stages(st, N4, B4, P4)
    a = st[ADJUST]
    if variant == "bbml2":
        # FEAT_BBM level 2: table -> block in one write, no invalid window
        assert a["descriptor_writes"] == N4 and a["invalid_windows"] == 0
    else:
        # break (table entry invalid) + install block = 2 writes, one window each
        assert a["descriptor_writes"] == 2 * N4 and a["invalid_windows"] == N4


def test_thp_stages_exact():
    # anonymous_thp: the large page is the 2M THP; transparent_hugepage_adjust
    # maps PMD blocks, so the stages behave as with 2M hugetlb. 4M: N = 2.
    st = stages(run(mode="4", size="4M", vcpus=1, backing="anonymous_thp", variant="patch1"))
    _check_block_stages(st, 2, B4, P4)


def test_64k_granule_512m_blocks_exact():
    # -m 5 (P40V48_64K), 1G hugetlb: N = 2 blocks of 512M, pages of 64K,
    # H = 512M/2/64K = 4096 reads per block in UPDATE.
    st = stages(run(mode="5", size="1G", vcpus=1, backing="anonymous_hugetlb", variant="rfc"))
    _check_block_stages(st, 2, 512 * M, 64 * K)
    assert st[UPDATE]["outcomes"]["mapped"] == 2 * 4096


def test_anonymous_4k_stages_exact():
    # anonymous 4K backing, 1M: 256 pages; the large page is the page.
    # CREATE: vCPU 0 writes every (large =) page: 256 translation faults, each
    #   mapping one writable page.
    # enable logging: every page write-protected.
    # UPDATE: every page written: a permission fault at page level, where the
    #   mapping size (page, forced by logging) equals the fault granule, so KVM
    #   relaxes permissions: 256 relaxed, 256 dirty; TLBI by IPA for each.
    # ADJUST: reads of pages still mapped (read allowed): no fault at all.
    st = stages(run(mode="4", size="1M", vcpus=1, backing="anonymous", variant="v5.11"))
    c, u, a = st[CREATE], st[UPDATE], st[ADJUST]
    assert c["faults"] == 256 and c["outcomes"] == {"mapped": 256}
    assert c["faults_by_kind"] == {"translation": 256} and c["guest_accesses"] == 256
    # v5.11 cleans the mapping size (one page) on every translation fault
    assert c["cmo_bytes"] == 256 * 4 * K
    assert u["faults"] == 256 and u["faults_by_kind"] == {"permission": 256}
    assert u["outcomes"] == {"relaxed": 256} and u["dirty_pages"] == 256
    assert u["cmo_bytes"] == 0  # no CMO for permission faults
    assert u["tlbi"] == {"IPAS2E1IS": 256, "VMALLE1IS": 256}
    assert u["invalid_windows"] == 0  # relaxing is a valid -> valid attribute change
    assert a["faults"] == 0 and a["outcomes"] == {} and a["guest_accesses"] == 256
    assert a["tlbi_total"] == 0 and a["descriptor_writes"] == 0


# --- CMO placement and invalid windows, one vCPU ------------------------------------------

@pytest.mark.parametrize("variant, create, update, adjust", [
    # v5.11: whole mapping size cleaned on every translation fault (blocks in
    #   CREATE/ADJUST, pages for the H reads in UPDATE; never on permission faults).
    ("v5.11", N4 * B4, N4 * H4 * P4, N4 * B4),
    # patch 1: a CMO for every new leaf in map(): N blocks; N split pages + N*H
    #   pages; the coalesced blocks (unmap-first cleans before the install).
    ("patch1", N4 * B4, (N4 + N4 * H4) * P4, N4 * B4),
    # the RFC as posted skips the CMO on coalescing
    ("rfc", N4 * B4, (N4 + N4 * H4) * P4, 0),
    ("block-first", N4 * B4, (N4 + N4 * H4) * P4, N4 * B4),
    ("cmo-first", N4 * B4, (N4 + N4 * H4) * P4, N4 * B4),
])
def test_cmo_bytes_by_variant(variant, create, update, adjust):
    st = stages(run(variant=variant, **HUGE_4K))
    assert [st[s]["cmo_bytes"] for s in (CREATE, UPDATE, ADJUST)] == [create, update, adjust]


def test_invalid_window_lengths_follow_the_coalescing_order():
    # One vCPU, so nothing interleaves: the window of each coalesced entry is
    # the cost of what each order does between the break and the install
    # (every step's effect lands when its cost is paid):
    #   rfc:         TLBI VMALLS12E1IS + DSB + the install write
    #   v5.11:       rfc + teardown (1 + H entries, 1 table page freed)
    #   patch1:      v5.11 + CMO of the block
    #   block-first: rfc + CMO of the block
    #   cmo-first:   CMO before the break: same as rfc
    c = load_profile("kunpeng920").costs
    base = c["tlbi_vmalls12e1is_ns"] + c["dsb_ns"] + c["pte_write_ns"]
    teardown = -(-((1 + H4) * c["teardown_entry_ns"]) // 1) + c["table_free_ns"]
    cmo = -(-B4 // c["cmo_bytes_per_ns"])
    expect = {"rfc": base, "v5.11": base + teardown, "patch1": base + teardown + cmo,
              "block-first": base + cmo, "cmo-first": base}
    got = {v: stages(run(variant=v, **HUGE_4K))[ADJUST]["invalid_window_max_ns"] for v in expect}
    assert got == {v: int(x) for v, x in expect.items()}
    assert got["rfc"] < got["v5.11"] < got["patch1"]
    # the split in UPDATE: TLBI IPAS2E1IS + DSB + TLBI VMALLE1IS + DSB + table write
    split = (c["tlbi_ipas2e1is_ns"] + c["dsb_ns"] + c["tlbi_vmalle1is_ns"] + c["dsb_ns"]
             + c["pte_write_ns"])
    assert stages(run(variant="rfc", **HUGE_4K))[UPDATE]["invalid_window_max_ns"] == split


# --- 2. the seed's effect in miniature, several vCPUs ------------------------------------

MULTI = {"mode": "4", "size": "8M", "vcpus": 4, "backing": "anonymous_hugetlb_2mb"}  # N=4


@pytest.mark.parametrize("variant", ["v5.11", "patch1", "rfc", "block-first"])
def test_multi_vcpu_outcomes(variant):
    # Whatever the interleaving, each block is mapped once, split once and
    # coalesced once; every other fault on it finds the work done (spurious).
    # Per vCPU: CREATE N accesses, UPDATE N*(1+H), ADJUST N*B/P.
    st = stages(run(variant=variant, **MULTI))
    c, u, a = st[CREATE], st[UPDATE], st[ADJUST]
    assert c["outcomes"]["mapped"] == N4
    assert c["faults"] == N4 + c["spurious_faults"]
    # all 4 vCPUs start together on block 0: one maps it, the other 3 wait for
    # mmu_lock and find it mapped
    assert c["spurious_faults"] >= 3 and c["lock_contended"] >= 3 and c["lock_wait_ns"] > 0
    assert u["outcomes"]["split"] == N4 and u["outcomes"]["mapped"] == N4 * H4
    assert u["dirty_pages"] == N4
    assert a["outcomes"]["coalesced"] == N4
    assert set(a["outcomes"]) <= {"coalesced", "spurious"}
    assert [st[s]["guest_accesses"] for s in (CREATE, UPDATE, ADJUST)] == [
        4 * N4, 4 * N4 * (1 + H4), 4 * N4 * B4 // P4]


def test_seed_effect_in_miniature():
    v511, p1, rfc, bf = (stages(run(variant=v, **MULTI))
                         for v in ("v5.11", "patch1", "rfc", "block-first"))
    # CREATE: v5.11 cleans the whole block on every translation fault, under
    # the lock, spurious or not; patch 1 only when a block is installed.
    assert v511[CREATE]["faults_by_kind"] == {"translation": v511[CREATE]["faults"]}
    assert v511[CREATE]["cmo_bytes"] == v511[CREATE]["faults"] * B4
    assert p1[CREATE]["cmo_bytes"] == N4 * B4
    assert p1[CREATE]["cmo_bytes"] < v511[CREATE]["cmo_bytes"]  # since faults > N
    assert p1[CREATE]["seconds"] < v511[CREATE]["seconds"]
    # UPDATE: v5.11 cleans a page per translation fault, patch 1 per new leaf
    assert v511[UPDATE]["cmo_bytes"] == v511[UPDATE]["faults_by_kind"]["translation"] * P4
    assert p1[UPDATE]["cmo_bytes"] == (N4 + N4 * H4) * P4
    # ADJUST: the RFC installs the block right after the TLBI (no CMO, teardown
    # after): a shorter window, no more spurious faults, a faster stage.
    assert rfc[ADJUST]["invalid_window_max_ns"] < p1[ADJUST]["invalid_window_max_ns"]
    assert rfc[ADJUST]["invalid_window_total_ns"] < p1[ADJUST]["invalid_window_total_ns"]
    assert rfc[ADJUST]["spurious_faults"] <= p1[ADJUST]["spurious_faults"]
    assert rfc[ADJUST]["seconds"] < p1[ADJUST]["seconds"]
    assert rfc[ADJUST]["cmo_bytes"] == 0
    # the price: mainline's order restores the CMO of every coalesced block
    assert bf[ADJUST]["cmo_bytes"] == bf[ADJUST]["outcomes"]["coalesced"] * B4 == N4 * B4
    assert bf[ADJUST]["invalid_window_max_ns"] > rfc[ADJUST]["invalid_window_max_ns"]
    # v5.11 pays its CMO per fault in ADJUST too (outside the window)
    assert v511[ADJUST]["cmo_bytes"] == v511[ADJUST]["faults"] * B4
    # identical earlier stages for variants that differ only in coalescing
    for s in (CREATE, UPDATE):
        assert {k: v for k, v in rfc[s].items()} == {k: v for k, v in p1[s].items()}


def test_explicit_offset_and_its_errors():
    # -p: the test region sits at the given IPA; the results do not depend on it
    r = run(mode="4", size="4M", vcpus=1, backing="anonymous_hugetlb_2mb", offset="1G")
    assert r["config"]["base_ipa"] == G and r["config"]["large_page"] == 2 * M
    top = run(mode="4", size="4M", vcpus=1, backing="anonymous_hugetlb_2mb")
    assert top["config"]["base_ipa"] == (1 << 40) - 4 * M  # top of the 40-bit IPA space
    keys = ("faults", "outcomes", "cmo_bytes", "seconds")
    assert [[s[k] for k in keys] for s in r["stages"]] == [[s[k] for k in keys]
                                                           for s in top["stages"]]
    with pytest.raises(ConfigError, match="not aligned"):
        run(mode="4", size="4M", backing="anonymous_hugetlb_2mb", offset="1M")
    with pytest.raises(ConfigError, match="exceeds"):
        run(mode="4", size="4M", backing="anonymous_hugetlb_2mb", offset=(1 << 40) - 2 * M)
    with pytest.raises(ConfigError, match="not a multiple"):
        run(mode="4", size="3M", backing="anonymous_hugetlb_2mb")


def test_misaligned_hva_falls_back_to_pages():
    # A 2M hugetlb slot whose HVA is 4K off: fault_supports_stage2_huge_mapping
    # fails, so CREATE maps one 4K page per block (N = 2), and v5.11 cleans
    # only that page; UPDATE then finds pages, not blocks: nothing to split.
    st = stages(run(mode="4", size="4M", vcpus=1, backing="anonymous_hugetlb_2mb",
                    hva_offset=4 * K))
    assert st[CREATE]["outcomes"] == {"mapped": 2} and st[CREATE]["cmo_bytes"] == 2 * 4 * K
    assert "split" not in st[UPDATE]["outcomes"]
    assert "coalesced" not in st[ADJUST]["outcomes"]


# --- 3. determinism -------------------------------------------------------------------------

def _canon(r: dict) -> str:
    return json.dumps(r, sort_keys=True)


def _kw(size: str, vcpus: int, backing: str, variant: str, **extra) -> dict:
    return {"mode": "4", "size": size, "vcpus": vcpus, "backing": backing, "variant": variant,
            **extra}


HUGE2M = "anonymous_hugetlb_2mb"


@pytest.mark.parametrize("kw", [
    _kw("8M", 3, HUGE2M, "patch1"),
    _kw("8M", 3, HUGE2M, "rfc", tie="random", seed=7),
    _kw("1M", 2, "anonymous", "v5.11", tie="random", seed=1),
])
def test_same_config_same_json(kw):
    cfg = Cfg.make(**kw)
    a, b = run_pagetable_test(cfg), run_pagetable_test(cfg)
    assert "wall_seconds" not in a  # (host time would make results differ)
    assert _canon(a) == _canon(b)


def test_deterministic_across_processes_and_hash_seeds(tmp_path):
    # No result may depend on hash order: two processes with different
    # PYTHONHASHSEED write the same JSON, byte for byte.
    out = []
    for hs in ("0", "4242"):
        path = tmp_path / f"r{hs}.json"
        env = dict(os.environ, PYTHONHASHSEED=hs)
        p = subprocess.run([sys.executable, "-m", "s2sim.cli", "pagetable-test", "-m", "4",
                            "-b", "4M", "-v", "3", "-s", "anonymous_hugetlb_2mb", "--tie",
                            "random", "--seed", "3", "--json", str(path)],
                           env=env, check=False, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        out.append(path.read_bytes())
    assert out[0] == out[1]


# --- 4. run-ahead equivalence -------------------------------------------------------------

RUNAHEAD_IGNORED = {"engine_resumptions", "config"}


@pytest.mark.parametrize("kw", [
    _kw("8M", 3, HUGE2M, "patch1"),
    _kw("4M", 4, "anonymous_thp", "rfc"),
    _kw("1M", 2, "anonymous", "block-first"),
    _kw("4M", 1, HUGE2M, "v5.11"),
])
def test_runahead_equivalence(kw):
    ahead = run_pagetable_test(Cfg.make(runahead=True, **kw))
    step = run_pagetable_test(Cfg.make(runahead=False, **kw))
    assert ahead["config"]["runahead"] is True and step["config"]["runahead"] is False
    for sa, sb in zip(ahead["stages"], step["stages"], strict=True):
        assert sa == sb
    assert {k: v for k, v in ahead.items() if k not in RUNAHEAD_IGNORED} == \
        {k: v for k, v in step.items() if k not in RUNAHEAD_IGNORED}
    # and run-ahead does batch (fewer engine resumptions), except when it cannot
    assert ahead["engine_resumptions"] <= step["engine_resumptions"]
