"""`s2sim reproduce`: published vs simulated stage times, with the mechanism behind each."""

from __future__ import annotations

from s2sim.arch.geometry import fmt_size
from s2sim.report.render import console, table
from s2sim.report.results import fmt_ns


HOST_WORDS = {"huge_zero_maps": "huge-zero-page maps", "zero_page_maps": "zero-page maps",
              "thp_allocs": "THPs allocated", "pmd_splits": "PMD splits",
              "page_allocs": "pages allocated", "cows": "COWs",
              "notifier_invalidations": "notifier invalidations (stage-2 unmap under mmu_lock)"}


def mechanism(stage: dict, cfg: dict, other: dict | None = None) -> str:
    """One line saying what the stage's time is made of, from its counts only."""
    parts = []
    outs = stage["outcomes"]
    parts.append(f"{stage['faults']} faults (" + ", ".join(f"{k} {v}" for k, v in outs.items())
                 + ")")
    if stage["cmo_ops"]:
        sizes = {int(k): v for k, v in stage["cmo_by_size"].items()}
        if len(sizes) == 1:
            what = f"{stage['cmo_ops']} CMOs of {fmt_size(next(iter(sizes)))}"
        else:  # (THP CREATE cleans 2 MiB blocks and 4 KiB pages: say how many of each)
            what = (f"{stage['cmo_ops']} CMOs ("
                    + ", ".join(f"{v} of {fmt_size(k)}" for k, v in sizes.items()) + ")")
        parts.append(f"{what} = {fmt_size(stage['cmo_bytes'])}"
                     + (" cleaned in the fault handler under mmu_lock"
                        if cfg["variant_resolved"]["cmo"] == "fault" else " cleaned in map"))
        large = cfg["large_page"]
        if sizes.get(large) and cfg["size"] > large:
            # per large page: what the stage repeats, comparable across sizes
            parts.append(f"{sizes[large] * large / cfg['size']:.2f} CMOs of {fmt_size(large)} "
                         f"per {fmt_size(large)} page")
    if stage["lock_contended"]:
        parts.append(f"mmu_lock contended {stage['lock_contended']} times, waited "
                     f"{fmt_ns(stage['lock_wait_ns'])} in all")
    if stage["invalid_windows"]:
        parts.append(f"{stage['invalid_windows']} invalid windows, longest "
                     f"{fmt_ns(stage['invalid_window_max_ns'])}")
    if stage["host_bytes_zeroed"]:
        parts.append(f"host zeroed {fmt_size(stage['host_bytes_zeroed'])} on first touch")
    mm = stage.get("host_mm", {})
    host = [f"{v} {HOST_WORDS[k]}" for k, v in mm.items() if v and k in HOST_WORDS]
    if host:
        parts.append("host: " + ", ".join(host))
    if stage.get("mmu_notifier_retries"):
        parts.append(f"{stage['mmu_notifier_retries']} faults retried after an MMU-notifier "
                     "invalidation")
    if other is not None:
        d = other["spurious_faults"] - stage["spurious_faults"]
        w = other["invalid_window_max_ns"] - stage["invalid_window_max_ns"]
        parts.append(f"vs {other['_variant']}: {d} spurious faults avoided, longest invalid "
                     f"window {fmt_ns(max(w, 0))} shorter")
    return "; ".join(parts)


def build(data, results: list[dict], fits: list | None = None, scale: int = 1) -> dict:
    """The reproduce JSON: runs, each with id and stages (published, simulated, error).

    With `scale` > 1 the results are of runs at 1/scale size: `simulated_seconds`
    is the scaled-up figure (`fits`), the mechanism and counts are the simulated run's.
    """
    scaled = {(f.run, f.stage): f.simulated for f in fits or ()}
    by_key = {}
    for run, res in zip(data.runs, results):
        by_key.setdefault((run.backing, run.size, run.vcpus), []).append((run, res))
    out = []
    for run, res in zip(data.runs, results):
        stages = {s["name"]: s for s in res["stages"]}
        peers = [r for r in by_key[(run.backing, run.size, run.vcpus)] if r[0] is not run]
        rows = []
        for name, pub in run.seconds.items():
            st = stages[name]
            other = None
            if peers and run.variant == "rfc":
                o = dict({s["name"]: s for s in peers[0][1]["stages"]}[name])
                o["_variant"] = peers[0][0].variant
                other = o
            sim = scaled.get((run.id, name), st["seconds"])
            rows.append({"name": name, "published_seconds": pub, "simulated_seconds": sim,
                         "relative_error": (sim - pub) / pub,
                         "mechanism": mechanism(st, res["config"], other),
                         "counts": {k: st[k] for k in ("faults", "spurious_faults", "cmo_bytes",
                                                       "cmo_ops", "cmo_by_size", "lock_contended",
                                                       "lock_wait_ns", "invalid_windows",
                                                       "invalid_window_max_ns",
                                                       "host_bytes_zeroed",
                                                       "mmu_notifier_retries")},
                         "host_mm": st["host_mm"],
                         "outcomes": st["outcomes"]})
        out.append({"id": run.id, "variant": run.variant, "backing": run.backing,
                    "size": run.size, "simulated_size": res["config"]["size"],
                    "vcpus": run.vcpus, "stages": rows})
    return {"data": data.path, "data_sha256": data.sha256, "scale": scale, "runs": out}


def print_reproduce(rep: dict, profile_name: str) -> None:
    c = console()
    rows = []
    for r in rep["runs"]:
        for s in r["stages"]:
            err = s["relative_error"]
            rows.append([r["id"], s["name"].removeprefix("KVM_").removesuffix("_MAPPINGS"),
                         f"{s['published_seconds']:.3f}", f"{s['simulated_seconds']:.3f}",
                         f"{err:+.1%}" + ("" if abs(err) <= 0.10 else " !")])
    c.print(table(f"published vs simulated (profile {profile_name}; '!' = beyond 10%)",
                  ["run", "stage", "published s", "simulated s", "error"], rows))
    for r in rep["runs"]:
        for s in r["stages"]:
            c.print(f"{r['id']} {s['name']}: {s['mechanism']}")


def plot(rep: dict, path: str) -> None:
    """Grouped bars, published vs simulated per stage, log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, pub, sim = [], [], []
    for r in rep["runs"]:
        for s in r["stages"]:
            labels.append(f"{r['id']}\n{s['name'].removeprefix('KVM_').removesuffix('_MAPPINGS')}")
            pub.append(s["published_seconds"])
            sim.append(s["simulated_seconds"])
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(labels)), 5))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], pub, 0.4, label="published (Kunpeng 920)")
    ax.bar([x + 0.2 for x in xs], sim, 0.4, label="simulated (s2sim)")
    ax.set_yscale("log")
    ax.set_ylabel("stage time (s, log scale)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    for x, p_, s_ in zip(xs, pub, sim):  # the error above each pair, red past 10%
        err = (s_ - p_) / p_
        ax.annotate(f"{err:+.1%}", (x, max(p_, s_)), textcoords="offset points",
                    xytext=(0, 3), ha="center", fontsize=7,
                    color="tab:red" if abs(err) > 0.10 else "black")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    ax.set_title("kvm_page_table_test: published vs simulated", pad=24)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
