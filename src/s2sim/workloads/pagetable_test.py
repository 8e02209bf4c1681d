"""kvm_page_table_test: its guest modes, options and the three stages' accesses.

Stages (DOMAIN.md 5), each timed from "all vCPUs released" to "all done":
  KVM_CREATE_MAPPINGS  every vCPU touches the first 8 bytes of every large
                       page (backing page size); even vCPUs write, odd read;
  (dirty logging on)
  KVM_UPDATE_MAPPINGS  anonymous 4K backing: every vCPU writes every page;
                       otherwise, per large page, write its first host page
                       (splitting the block) and read every host page of the
                       second half;
  (dirty logging off)
  KVM_ADJUST_MAPPINGS  every vCPU reads every host page (coalescing again).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from s2sim.arch.geometry import Geometry
from s2sim.arch.walk import READ, WRITE
from s2sim.errors import ConfigError, parse_size

CREATE, UPDATE, ADJUST = "KVM_CREATE_MAPPINGS", "KVM_UPDATE_MAPPINGS", "KVM_ADJUST_MAPPINGS"
STAGES = (CREATE, UPDATE, ADJUST)

# Guest modes, numbered as in the 2021 selftests (-m 4 = P40V48_4K); 52-bit PA
# modes need LPA and are refused; the 16K modes (added to the selftests in
# 2022, with other numbers) get ids 6 and 7 here.
MODES = {
    2: ("P48V48_4K", 48, "4K"),
    3: ("P48V48_64K", 48, "64K"),
    4: ("P40V48_4K", 40, "4K"),
    5: ("P40V48_64K", 40, "64K"),
    6: ("P40V48_16K", 40, "16K"),
    7: ("P48V48_16K", 48, "16K"),
}
MODES_HELP = "; ".join(f"{k}={v[0]}" for k, v in MODES.items())


def parse_mode(text: str | int) -> int:
    s = str(text).strip()
    for k, v in MODES.items():
        if s == str(k) or s.upper() == v[0]:
            return k
    if s in ("0", "1") or s.upper().startswith("P52"):
        raise ConfigError(f"guest mode {text!r} needs a 52-bit PA (FEAT_LPA), which s2sim does "
                          f"not model; use {MODES_HELP}")
    raise ConfigError(f"guest mode {text!r} is unknown; use {MODES_HELP}")


@dataclass(frozen=True)
class TestConfig:
    """The selftest's options (-m -b -v -s -p) plus s2sim's."""

    mode: int = 4
    size: int = 1 << 30
    vcpus: int = 1
    backing: str = "anonymous"
    offset: int | None = None  # -p: guest physical test memory offset
    variant: str = "v5.11"
    coalesce: str | None = None
    cmo: str | None = None
    platform: str = "kunpeng920"
    seed: int = 0
    tie: str = "fifo"
    runahead: bool = True
    hva_offset: int = 0
    # Convoy fast-forward (sim/convoy.py): exact, on by default; False runs every
    # fault through the exact path (the reference).
    fastforward: bool = True
    # Timing jitter: every fault's exit to the host takes a seeded uniform extra
    # 0..jitter ns (per vCPU stream from `seed`). 0: none, the calibrated model.
    # Real machines have it; the jitter-free model can phase-lock convoys
    # (docs/model.md, known misses). Turns the fast paths off.
    jitter: int = 0

    @staticmethod
    def make(mode="4", size="1G", vcpus=1, backing="anonymous", offset=None, **kw
             ) -> TestConfig:
        m = parse_mode(mode)
        sz = parse_size(size, "test memory size (-b)") if isinstance(size, str) else int(size)
        if sz <= 0:
            raise ConfigError(f"test memory size {size!r} must be positive")
        try:
            v = int(vcpus)
        except (TypeError, ValueError):
            raise ConfigError(f"vCPU count {vcpus!r} is not an integer") from None
        if not 1 <= v <= 512:
            raise ConfigError(f"vCPU count {vcpus} is not supported; use 1..512")
        off = None
        if offset is not None:
            off = parse_size(offset, "guest physical offset (-p)") if isinstance(offset, str) \
                else int(offset)
        j = kw.get("jitter", 0)
        if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j <= 10**9:
            raise ConfigError(f"jitter {j!r} is not a whole number of ns in 0..1000000000")
        if kw.get("tie", "fifo") not in ("fifo", "random"):
            raise ConfigError(f"tie-break policy {kw['tie']!r} is unknown; use fifo or random")
        cfg = TestConfig(m, sz, v, backing, off, **kw)
        from s2sim.kvm.memslot import resolve_backing

        b = resolve_backing(backing, cfg.geometry)  # refuse impossible backings up front
        if sz % b.page_size:
            raise ConfigError(f"test memory size {size!r} is not a multiple of the {backing} "
                              f"page size {b.page_size:#x}")
        return cfg

    @property
    def geometry(self) -> Geometry:
        _, bits, gran = MODES[self.mode]
        return Geometry.make(gran, bits)

    @property
    def mode_name(self) -> str:
        return MODES[self.mode][0]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mode_name"] = self.mode_name
        return d


def test_base(cfg: TestConfig, geo: Geometry, large: int) -> int:
    """The test region's IPA: -p, or the top of the IPA space aligned down (as the selftest)."""
    if cfg.offset is not None:
        if cfg.offset % large:
            raise ConfigError(f"guest physical offset (-p) {cfg.offset:#x} is not aligned to "
                              f"the backing page size {large:#x}")
        if cfg.offset + cfg.size > geo.ipa_limit:
            raise ConfigError(f"test memory {cfg.offset:#x}+{cfg.size:#x} exceeds the "
                              f"{geo.ipa_bits}-bit IPA space")
        return cfg.offset
    if cfg.size > geo.ipa_limit // 2:
        raise ConfigError(f"test memory size {cfg.size:#x} does not fit the {geo.ipa_bits}-bit "
                          "IPA space beside the guest's own memory")
    return (geo.ipa_limit - cfg.size) & ~(large - 1)


def stage_segments(stage: str, vcpu: int, base: int, size: int, large: int, page: int,
                   anonymous_4k: bool) -> list[tuple[int, int, int, int]]:
    """The accesses of one vCPU in one stage, as (start, stride, count, access) segments."""
    if stage == CREATE:
        return [(base, large, size // large, WRITE if vcpu % 2 == 0 else READ)]
    if stage == UPDATE:
        if anonymous_4k:
            return [(base, page, size // page, WRITE)]
        segs = []
        half = large // 2
        for lp in range(base, base + size, large):
            segs.append((lp, 0, 1, WRITE))
            segs.append((lp + half, page, half // page, READ))
        return segs
    if stage == ADJUST:
        return [(base, page, size // page, READ)]
    raise ConfigError(f"stage {stage!r} is unknown")
