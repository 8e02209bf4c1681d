"""Calibration data: published stage times of kvm_page_table_test runs (TOML).

    [platform]  name, fwb, ipa_bits, granule
    [[run]]     id, backing, size, vcpus, variant, seconds = {STAGE = s, ...}

Only the stages a run lists are compared. Malformed files are refused with
the key (and run id) at fault.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from s2sim.errors import ConfigError, parse_size
from s2sim.workloads.pagetable_test import STAGES, TestConfig

MODE_FOR = {("4K", 40): "4", ("64K", 40): "5", ("4K", 48): "2", ("64K", 48): "3",
            ("16K", 40): "6", ("16K", 48): "7"}


@dataclass(frozen=True)
class CalibrationRun:
    id: str
    backing: str
    size: int
    vcpus: int
    variant: str
    seconds: dict[str, float]

    def config(self, mode: str, platform: str = "kunpeng920", size: int | None = None,
               **kw) -> TestConfig:
        return TestConfig.make(mode, size or self.size, self.vcpus, self.backing, variant=self.variant,
                               platform=platform, **kw)


@dataclass
class CalibrationData:
    path: str
    sha256: str
    platform: dict
    mode: str
    runs: list[CalibrationRun] = field(default_factory=list)


def default_data_path() -> str:
    return str(resources.files("s2sim.data").joinpath("seed-calibration.toml"))


def load_calibration(path: str | None = None) -> CalibrationData:
    """Read and validate a calibration file. Raises ConfigError."""
    path = path or default_data_path()
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"calibration data {path!r} cannot be read: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"calibration data {path!r}: not valid TOML: {e}") from None
    plat = data.get("platform")
    if not isinstance(plat, dict):
        raise ConfigError(f"calibration data {path!r}: [platform] is missing")
    gran = str(plat.get("granule", "4K"))
    bits = plat.get("ipa_bits", 40)
    mode = MODE_FOR.get((gran, bits))
    if mode is None:
        raise ConfigError(f"calibration data {path!r}: platform granule {gran!r} with ipa_bits "
                          f"{bits!r} is not a supported guest mode")
    runs = data.get("run")
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"calibration data {path!r}: no [[run]] tables")
    out = CalibrationData(path, hashlib.sha256(raw).hexdigest(), plat, mode)
    seen = set()
    for i, r in enumerate(runs, 1):
        rid = r.get("id", f"#{i}")
        for key in ("id", "backing", "size", "vcpus", "variant", "seconds"):
            if key not in r:
                raise ConfigError(f"calibration data {path!r}: run {rid}: key {key!r} is missing")
        if rid in seen:
            raise ConfigError(f"calibration data {path!r}: run id {rid!r} appears twice")
        seen.add(rid)
        secs = r["seconds"]
        if not isinstance(secs, dict) or not secs:
            raise ConfigError(f"calibration data {path!r}: run {rid}: seconds must be a table "
                              "of stage = seconds")
        for st, v in secs.items():
            if st not in STAGES:
                raise ConfigError(f"calibration data {path!r}: run {rid}: stage {st!r} is "
                                  f"unknown; use {', '.join(STAGES)}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ConfigError(f"calibration data {path!r}: run {rid}: {st} = {v!r} must "
                                  "be a positive number of seconds")
        run = CalibrationRun(rid, str(r["backing"]), parse_size(str(r["size"]), "size"),
                             int(r["vcpus"]), str(r["variant"]),
                             {k: float(v) for k, v in secs.items()})
        run.config(mode)  # validates backing, size, vcpus, variant name
        out.runs.append(run)
    return out
