"""Fit a platform profile's free cost parameters to published stage times.

Every run of the calibration data is simulated with candidate parameters;
scipy's least_squares minimises the relative error of every listed stage,
within bounds of physical plausibility. Few parameters, each with a meaning:
the fit must not be a lookup table.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from s2sim import __version__
from s2sim.sim.profile import Profile
from s2sim.sim.run import run_pagetable_test
from s2sim.workloads.calibration import CalibrationData

# name -> (lower, upper, why these bounds)
FREE = {
    "cmo_bytes_per_ns": (1.0, 50.0, "DC CIVAC by VA over DRAM-backed lines: 1-50 GB/s"),
    "host_zero_bytes_per_ns": (2.0, 100.0, "clear_page / DC ZVA of a new host page: 2-100 GB/s"),
    "guest_access_ns": (5.0, 500.0, "one guest load/store with its loop, TLB hit: 5-500 ns"),
    "lock_handoff_ns": (50.0, 5000.0, "a contended spinlock's cache line moving between "
                        "cores, plus the waiter's restart: 50 ns - 5 us"),
}


@dataclass
class StageFit:
    run: str
    stage: str
    published: float
    simulated: float

    @property
    def relative_error(self) -> float:
        return (self.simulated - self.published) / self.published


def simulate_all(data: CalibrationData, profile: Profile) -> tuple[list[StageFit], list[dict]]:
    """Every run of `data` under `profile`: per-stage fits and the full results."""
    fits, results = [], []
    for run in data.runs:
        res = run_pagetable_test(run.config(data.mode, profile.name), profile)
        results.append(res)
        secs = {s["name"]: s["seconds"] for s in res["stages"]}
        for stage, pub in run.seconds.items():
            fits.append(StageFit(run.id, stage, pub, secs[stage]))
    return fits, results


def with_params(base: Profile, params: dict[str, float]) -> Profile:
    p = copy.deepcopy(base)
    p.costs.update(params)
    return p


def calibrate(data: CalibrationData, base: Profile, free: dict = FREE, max_evals: int = 40,
              progress=None) -> dict:
    """Least-squares fit of `free` parameters on relative stage-time error.

    Returns {"profile": Profile, "fits": [...], "params": {...}, "evaluations": n,
    "wall_seconds": s}. Deterministic: same data and base profile, same result.
    """
    import numpy as np
    from scipy.optimize import least_squares

    names = list(free)
    lo = np.array([free[n][0] for n in names])
    hi = np.array([free[n][1] for n in names])
    x0 = np.clip(np.array([base.costs[n] for n in names]), lo, hi)
    evals = {"n": 0}
    t0 = time.perf_counter()

    def residuals(x):
        evals["n"] += 1
        prof = with_params(base, dict(zip(names, (float(v) for v in x))))
        fits, _ = simulate_all(data, prof)
        if progress:
            progress(evals["n"], x, fits)
        return np.array([f.relative_error for f in fits])

    # log-space steps: parameters span orders of magnitude
    sol = least_squares(lambda z: residuals(np.exp(z)), np.log(x0), bounds=(np.log(lo),
                        np.log(hi)), diff_step=0.05, max_nfev=max_evals, method="trf",
                        x_scale=1.0)
    params = {n: float(round(v, 4)) for n, v in zip(names, np.exp(sol.x))}
    prof = with_params(base, params)
    fits, _ = simulate_all(data, prof)
    prof.meta = {"fitted_by": f"s2sim {__version__}", "data": data.path.split("/")[-1],
                 "data_sha256": data.sha256, "free_parameters": names,
                 "max_relative_error": max(abs(f.relative_error) for f in fits)}
    return {"profile": prof, "fits": fits, "params": params, "evaluations": evals["n"] + 1,
            "wall_seconds": time.perf_counter() - t0, "cost": float(sol.cost)}


def profile_toml(p: Profile) -> str:
    """A profile as TOML text (what `--platform-out` writes)."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, float):
            return repr(round(v, 6))
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return str(v)

    lines = ["# s2sim platform profile (written by s2sim calibrate)", "", "[platform]",
             f"name = {val(p.name)}", f"description = {val(p.description)}",
             f"fwb = {val(p.fwb)}", f"ha = {val(p.ha)}", f"ttl = {val(p.ttl)}", "", "[tlb]",
             f"capacity = {p.tlb_capacity}", f"walk_capacity = {p.walk_capacity}",
             f"policy = {val(p.tlb_policy)}", "", "[costs]"]
    lines += [f"{k} = {val(float(v))}" for k, v in p.costs.items()]
    if p.meta:
        lines += ["", "[meta]"] + [f"{k} = {val(v)}" for k, v in p.meta.items()]
    return "\n".join(lines) + "\n"
