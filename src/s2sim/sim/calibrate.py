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
from s2sim.kvm.memslot import resolve_backing
from s2sim.workloads.calibration import CalibrationData, CalibrationRun

# name -> (lower, upper, why these bounds)
FREE = {
    "cmo_bytes_per_ns": (1.0, 50.0, "DC CIVAC by VA over DRAM-backed lines: 1-50 GB/s"),
    "host_zero_bytes_per_ns": (2.0, 100.0, "clear_page / DC ZVA of a new host page: 2-100 GB/s"),
    "guest_access_ns": (5.0, 500.0, "one guest load/store with its loop, TLB hit: 5-500 ns"),
    "lock_handoff_ns": (50.0, 5000.0, "a contended spinlock's cache line moving between "
                        "cores, plus the waiter's restart: 50 ns - 5 us"),
    "lock_handoff_per_waiter_ns": (1.0, 500.0, "each CPU still spinning adds at most one "
                                   "cache-line transfer to a hand-off: 1-500 ns"),
}


# Robust loss: Cauchy, whose pull on the parameters *falls* once a residual is
# past ~10%, so one stage whose mechanism the model gets wrong cannot drag the
# physical parameters every other stage agrees on (the fit reports it instead).
# soft-L1 did not do this: its pull stays constant, and the THP v5.11 CREATE
# miss (+89%) alone moved the CMO bandwidth 3% off what the 17 other stages
# want (docs/model.md, "How it was fitted").
LOSS, F_SCALE = "cauchy", 0.1


def robust_cost(r) -> float:
    """scipy's cost for LOSS: 0.5 * sum f^2 rho((r/f)^2)."""
    import numpy as np
    z = (np.asarray(r, dtype=float) / F_SCALE) ** 2
    rho = {"cauchy": np.log1p, "soft_l1": lambda z: 2 * (np.sqrt(1 + z) - 1)}[LOSS]
    return float(0.5 * F_SCALE ** 2 * np.sum(rho(z)))


class _Budget(Exception):
    """The evaluation budget is spent: the fit stops at the best point seen."""


@dataclass
class StageFit:
    run: str
    stage: str
    published: float
    simulated: float

    @property
    def relative_error(self) -> float:
        return (self.simulated - self.published) / self.published


def sim_size(run: CalibrationRun, mode: str, scale: int) -> int:
    """The size `run` is simulated at when fitting at 1/`scale`: whole large pages, at
    least one. kvm_page_table_test's stages repeat the same work per large page, so
    stage time is linear in size (measured: 1 GiB hugetlb runs at 1G, 2G and 20G
    agree per GiB to 0.05%; anonymous 4K at 32M and 64M to 0.01%)."""
    large = resolve_backing(run.backing, run.config(mode).geometry).page_size
    return max(large, run.size // scale // large * large)


def _simulate(job: tuple) -> dict:
    cfg, profile = job
    return run_pagetable_test(cfg, profile)


def simulate_all(data: CalibrationData, profile: Profile, scale: int = 1, jobs: int = 1
                 ) -> tuple[list[StageFit], list[dict]]:
    """Every run of `data` under `profile`: per-stage fits and the full results.

    `scale` > 1 simulates each run at 1/scale of its size (`sim_size`) and scales
    the stage times back up (the results keep the simulated size's figures).
    `jobs` > 1 runs the simulations in that many processes; the results do not
    depend on it (each run is deterministic and they are collected in order).
    """
    sizes = [sim_size(r, data.mode, scale) for r in data.runs]
    work = [(r.config(data.mode, profile.name, size=s), profile)
            for r, s in zip(data.runs, sizes)]
    if jobs > 1 and len(work) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        # biggest first (vCPUs x bytes), so the workers finish together
        order = sorted(range(len(work)), key=lambda i: -data.runs[i].vcpus * sizes[i])
        with ProcessPoolExecutor(min(jobs, len(work)), mp.get_context("fork")) as ex:
            done = dict(zip(order, ex.map(_simulate, [work[i] for i in order])))
        results = [done[i] for i in range(len(work))]
    else:
        results = [_simulate(w) for w in work]
    fits = []
    for run, size, res in zip(data.runs, sizes, results):
        secs = {s["name"]: s["seconds"] * run.size / size for s in res["stages"]}
        for stage, pub in run.seconds.items():
            fits.append(StageFit(run.id, stage, pub, secs[stage]))
    return fits, results


def with_params(base: Profile, params: dict[str, float]) -> Profile:
    p = copy.deepcopy(base)
    p.costs.update(params)
    return p


def calibrate(data: CalibrationData, base: Profile, free: dict = FREE, max_evals: int = 40,
              progress=None, scale: int = 1, jobs: int = 1) -> dict:
    """Least-squares fit of `free` parameters on relative stage-time error.

    `max_evals` bounds the simulations of the whole data set, the finite-difference
    Jacobian's included; when it is spent the best point seen is returned. `scale`
    fits on runs simulated at 1/scale of their size (`simulate_all`); the residuals
    returned are those of the fitted point at that scale.
    Returns {"profile": Profile, "fits": [...], "params": {...}, "evaluations": n,
    "wall_seconds": s}. Deterministic: same data, base profile and scale, same result.
    """
    import numpy as np
    from scipy.optimize import least_squares

    names = list(free)
    lo = np.array([free[n][0] for n in names])
    hi = np.array([free[n][1] for n in names])
    x0 = np.clip(np.array([base.costs[n] for n in names]), lo, hi)
    evals = {"n": 0}
    # z = 1 + log(x / x0): the fit starts at z = 1, where scipy's relative
    # finite-difference step is an absolute one: 3% on every parameter
    best = {"cost": float("inf"), "z": np.ones(len(names))}
    t0 = time.perf_counter()

    def residuals(z):
        if evals["n"] >= max_evals:
            raise _Budget
        evals["n"] += 1
        x = x0 * np.exp(z - 1)
        prof = with_params(base, dict(zip(names, (float(v) for v in x))))
        fits, _ = simulate_all(data, prof, scale, jobs)
        if progress:
            progress(evals["n"], x, fits)
        r = np.array([f.relative_error for f in fits])
        cost = robust_cost(r)
        if cost < best["cost"]:
            best["cost"], best["z"] = cost, z.copy()
        return r

    # log-space steps: parameters span orders of magnitude
    try:
        least_squares(residuals, np.ones(len(names)), bounds=(1 + np.log(lo / x0),
                      1 + np.log(hi / x0)), diff_step=0.03, method="trf", x_scale=1.0,
                      loss=LOSS, f_scale=F_SCALE)
    except _Budget:
        pass
    params = {n: float(round(v, 4)) for n, v in zip(names, x0 * np.exp(best["z"] - 1))}
    prof = with_params(base, params)
    fits, _ = simulate_all(data, prof, scale, jobs)
    prof.meta = {"fitted_by": f"s2sim {__version__}", "data": data.path.split("/")[-1],
                 "data_sha256": data.sha256, "free_parameters": names, "fit_scale": scale,
                 "max_relative_error": round(max(abs(f.relative_error) for f in fits), 4)}
    return {"profile": prof, "fits": fits, "params": params, "evaluations": evals["n"] + 1,
            "wall_seconds": time.perf_counter() - t0, "cost": best["cost"]}


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
