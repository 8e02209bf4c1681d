"""The command line: parse, call the API, render. No model logic here."""

from __future__ import annotations

import sys

import typer

from s2sim.arch import descriptors as desc
from s2sim.arch.geometry import Geometry, fmt_size
from s2sim.errors import ConfigError, S2SimError, parse_int, parse_size
from s2sim.report.render import console, dumps, kv_table, table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="s2sim: KVM/arm64 stage-2 page tables, executable.")


@app.command()
def geometry(granule: str = typer.Option("4K", help="4K, 16K or 64K"),
             ipa_bits: int = typer.Option(40, "--ipa-bits", help="IPA size in bits, 32..48"),
             json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Levels, start level, concatenated tables, block sizes and VTCR_EL2 for a geometry."""
    g = Geometry.make(granule, ipa_bits)
    info = g.describe()
    if json_out:
        print(dumps(info))
        return
    c = console()
    c.print(kv_table(f"stage-2 geometry: {g.granule} granule, {g.ipa_bits}-bit IPA", [
        ("levels", info["levels"]),
        ("start level", info["start_level"]),
        ("concatenated start-level tables", info["concatenated_tables"]),
        ("entries at start level", info["start_level_entries"]),
        ("entries per table", info["entries_per_table"]),
    ]))
    rows = []
    for lvl in range(g.start_level, 4):
        kind = "page" if lvl == 3 else ("block or table" if g.block_allowed(lvl) else "table")
        rows.append([lvl, fmt_size(g.level_size(lvl)), g.level_shift(lvl), kind])
    c.print(table("levels", ["level", "bytes per entry", "shift", "leaf kinds"], rows))
    v = info["vtcr"]
    c.print(kv_table("VTCR_EL2", [(k.upper(), f"{v[k]} ({v[k]:#b})") for k in v]))


@app.command()
def decode(value: str = typer.Argument(..., help="descriptor value, e.g. 0x400000400007fd"),
           level: int = typer.Option(3, help="level the descriptor sits at"),
           granule: str = typer.Option("4K", help="4K, 16K or 64K"),
           ipa_bits: int = typer.Option(48, "--ipa-bits", help="IPA size (decides valid levels)"),
           fwb: bool = typer.Option(False, "--fwb", help="decode MemAttr with FEAT_S2FWB"),
           json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Decode a stage-2 descriptor field by field."""
    g = Geometry.make(granule, ipa_bits)
    v = parse_int(value, "descriptor")
    d = desc.decode(v, level, g, fwb)
    data = d.to_dict()
    if json_out:
        print(dumps(data))
        return
    rows = [("value", data["value"]), ("level", level), ("type", d.type)]
    if d.type in ("table", "block", "page"):
        rows.append(("output address", f"{d.output_address:#x}"))
    if d.type in ("block", "page"):
        rows += [("maps", fmt_size(d.size)),
                 ("S2AP", f"{d.s2ap:#04b} ({data['permissions']})"),
                 ("MemAttr", f"{d.memattr:#06b} {d.memattr_name}"),
                 ("SH", f"{d.sh:#04b}"), ("AF", d.af), ("XN", d.xn), ("DBM", d.dbm),
                 ("Contiguous", d.contiguous), ("nT", d.nt), ("SW", f"{d.sw:#06b}")]
    console().print(kv_table("stage-2 descriptor", rows))


@app.command()
def ops(script: list[str] = typer.Argument(None, help="operations, one per argument "
                                           "(or use --file)"),
        file: str | None = typer.Option(None, "--file", "-f", help="script file, one op per line"),
        granule: str = typer.Option("4K", help="4K, 16K or 64K"),
        ipa_bits: int = typer.Option(40, "--ipa-bits", help="IPA size in bits, 32..48"),
        variant: str = typer.Option("v5.11", help="preset: v5.11, patch1, rfc, block-first, "
                                    "cmo-first, bbml2"),
        coalesce: str | None = typer.Option(None, help="override the coalescing strategy"),
        cmo: str | None = typer.Option(None, help="override CMO placement: fault or map"),
        fwb: bool = typer.Option(False, "--fwb", help="the CPU has FEAT_S2FWB"),
        limit: int = typer.Option(200, help="print at most this many steps and entries"),
        check: bool = typer.Option(False, "--check", help="run the safety checker; exit 1 on "
                                   "any violation"),
        json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Run page-table operations on a fresh table; print the steps and the final table.

    Script lines: map IPA SIZE PA PROT [as LEAFSIZE] | unmap IPA SIZE |
    wrprotect IPA SIZE | relax IPA PROT | mkold IPA SIZE | mkyoung IPA |
    flush IPA SIZE | destroy
    """
    from s2sim.kvm.coalesce import variant as get_variant
    from s2sim.kvm.opsrun import run_script
    from s2sim.workloads.opscript import parse_script

    g = Geometry.make(granule, ipa_bits)
    v = get_variant(variant, coalesce, cmo)
    if file is not None:
        try:
            with open(file, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except OSError as e:
            raise ConfigError(f"script file {file!r} cannot be read: {e.strerror}") from None
    else:
        lines = list(script or [])
    checker = None
    if check:
        from s2sim.check.checker import Checker
        checker = Checker()
    result = run_script(parse_script(lines), g, v, fwb, (checker,) if checker else ())
    result["config"] = {"granule": g.granule, "ipa_bits": g.ipa_bits, "variant": v.name,
                        "coalesce": v.coalesce, "cmo": v.cmo, "fwb": fwb}
    if checker is not None:
        result["check"] = checker.to_dict()
    if json_out:
        print(dumps(result))
        if checker is not None and result["check"]["total"]:
            raise typer.Exit(1)
        return
    c = console()
    rows = []
    for i, s in enumerate(result["steps"][:limit]):
        what = ""
        if s["kind"] == "write":
            what = (f"L{s['level']} IPA {s['ipa']:#x}: "
                    f"{desc.describe(s['old'], s['level'], g, fwb)} -> "
                    f"{desc.describe(s['new'], s['level'], g, fwb)}"
                    + (" (break)" if s.get("note") == "break" else ""))
        elif s["kind"] == "tlbi":
            what = s["tlbi"] + (f" IPA {s['ipa']:#x}" if s["ipa"] >= 0 else "")
        elif s["kind"] == "cmo":
            what = f"DC CIVAC PA {s['pa']:#x} +{fmt_size(s['size'])}"
        elif s["kind"] == "teardown":
            what = f"free subtree at {s['pa']:#x}: {s['pages']} pages, {s['entries']} entries"
        elif s["kind"] in ("free", "alloc"):
            what = f"page {s['pa']:#x}"
        rows.append([i, s["op"], s["kind"], what])
    c.print(table(f"steps ({len(result['steps'])}, variant {v.name})",
                  ["#", "op", "kind", "effect"], rows))
    if len(result["steps"]) > limit:
        c.print(f"... {len(result['steps']) - limit} more steps (--limit, or --json for all)")
    ent = result["table"]
    c.print(table(f"final table ({len(ent)} valid entries)", ["level", "IPA", "entry"],
                  [[e["level"], f"{e['ipa']:#x}", desc.describe(int(e["desc"], 16), e["level"],
                                                               g, fwb)] for e in ent[:limit]]))
    if len(ent) > limit:
        c.print(f"... {len(ent) - limit} more entries")
    if checker is not None:
        from s2sim.report.checks import print_check
        print_check(result["check"])
        if result["check"]["total"]:
            raise typer.Exit(1)


MODE_HELP = ("guest mode: 2=P48V48_4K, 3=P48V48_64K, 4=P40V48_4K, 5=P40V48_64K, "
             "6=P40V48_16K, 7=P48V48_16K (2021 numbering; 16K modes are s2sim's ids)")
BACKING_HELP = ("anonymous, anonymous_thp, anonymous_hugetlb, anonymous_hugetlb_{64kb,2mb,32mb,"
                "1gb} (4K granule; 16K: 2mb,32mb,1gb; 64K: 2mb,512mb,16gb), shmem, shared_hugetlb")


def _test_config(mode, size, vcpus, backing, offset, variant, coalesce, cmo, platform, seed,
                 tie, hva_offset=0, runahead=True, exact=False, jitter=0):
    from s2sim.kvm.coalesce import variant as get_variant
    from s2sim.workloads.pagetable_test import TestConfig

    get_variant(variant, coalesce, cmo)  # refuse unknown names before any run
    return TestConfig.make(mode, size, vcpus, backing, offset, variant=variant,
                           coalesce=coalesce, cmo=cmo, platform=platform, seed=seed, tie=tie,
                           hva_offset=hva_offset, runahead=runahead, fastforward=not exact,
                           jitter=jitter)


def _check_json_path(path: str | None) -> None:
    import os

    if path is not None:
        d = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(d):
            raise ConfigError(f"--json {path!r}: directory {d!r} does not exist")


@app.command("pagetable-test")
def pagetable_test(
        mode: str = typer.Option("4", "-m", help=MODE_HELP),
        size: str = typer.Option("1G", "-b", help="test memory size, e.g. 1G, 20G"),
        vcpus: int = typer.Option(1, "-v", help="number of vCPUs"),
        backing: str = typer.Option("anonymous", "-s", help="backing: " + BACKING_HELP),
        offset: str | None = typer.Option(None, "-p", help="guest physical test memory "
                                             "offset (default: top of the IPA space)"),
        variant: str = typer.Option("v5.11", help="v5.11, patch1, rfc, block-first, cmo-first, "
                                    "bbml2"),
        coalesce: str | None = typer.Option(None, help="override the coalescing strategy"),
        cmo: str | None = typer.Option(None, help="override CMO placement: fault or map"),
        platform: str = typer.Option("kunpeng920", help="profile name or path to a .toml"),
        seed: int = typer.Option(0, help="seed for the random tie-break and --jitter"),
        tie: str = typer.Option("fifo", help="tie-break policy: fifo or random"),
        json_path: str | None = typer.Option(None, "--json", help="write the result as JSON "
                                                "to this path"),
        check: bool = typer.Option(False, "--check", help="run the safety checker; exit 1 on "
                                   "any violation"),
        trace: str | None = typer.Option(None, "--trace", help="record the event stream as "
                                            "JSON lines to this path"),
        hva_offset: str = typer.Option("0", "--hva-offset", help="misalign the slot's host "
                                       "virtual address by this many bytes"),
        exact: bool = typer.Option(False, "--exact", help="one event at a time: no convoy "
                                   "fast-forward (the reference path; same results, slower)"),
        jitter: int = typer.Option(0, "--jitter", help="timing noise: each fault's exit takes "
                                   "a seeded extra 0..N ns (--seed); turns the fast paths off")
        ) -> None:
    """Simulate kvm_page_table_test: stage times and metrics per stage."""
    from s2sim.report.results import print_pagetable_test, write_json_atomic

    cfg = _test_config(mode, size, vcpus, backing, offset, variant, coalesce, cmo, platform,
                       seed, tie, parse_size(hva_offset, "--hva-offset"), exact=exact,
                       jitter=jitter)
    _check_json_path(json_path)
    _check_json_path(trace)
    result = _run_checked(cfg, check, trace)
    print_pagetable_test(result)
    _finish(result, check, json_path, write_json_atomic)


@app.command()
def compare(
        mode: str = typer.Option("4", "-m", help=MODE_HELP),
        size: str = typer.Option("128M", "-b", help="test memory size"),
        vcpus: int = typer.Option(4, "-v", help="number of vCPUs"),
        backing: str = typer.Option("anonymous_hugetlb_2mb", "-s", help="backing: " + BACKING_HELP),
        offset: str | None = typer.Option(None, "-p", help="guest physical test memory offset"),
        variants: str = typer.Option("v5.11,patch1,rfc,block-first", help="comma-separated "
                                     "variants; the first is the baseline"),
        platform: str = typer.Option("kunpeng920", help="profile name or path to a .toml"),
        seed: int = typer.Option(0, help="seed for the random tie-break"),
        tie: str = typer.Option("fifo", help="tie-break policy: fifo or random"),
        json_path: str | None = typer.Option(None, "--json", help="write all results as JSON "
                                                "to this path"),
        check: bool = typer.Option(False, "--check", help="run the safety checker on every "
                                   "variant; exit 1 on any violation")) -> None:
    """Run several variants on the same workload; stage times and key metrics side by side."""
    from s2sim.report.results import print_compare, write_json_atomic

    names = [v.strip() for v in variants.split(",") if v.strip()]
    if not names:
        raise ConfigError("--variants is empty; give at least one variant")
    cfgs = [_test_config(mode, size, vcpus, backing, offset, v, None, None, platform, seed, tie)
            for v in names]
    _check_json_path(json_path)
    results = []
    progress = sys.stderr.isatty()
    for cfg in cfgs:
        if progress:
            print(f"s2sim: simulating {cfg.variant} ...", file=sys.stderr, flush=True)
        results.append(_run_checked(cfg, check, None))
    print_compare(results)
    bad = False
    if check:
        from s2sim.report.checks import print_check
        for r in results:
            print_check(r["check"], title=f"safety check, {r['config']['variant']}")
            bad = bad or r["check"]["total"] > 0
    if json_path:
        from s2sim import __version__
        write_json_atomic(json_path, {"version": __version__, "runs": results})
    if bad or any(r.get("aborted") for r in results):
        raise typer.Exit(1)


def _run_checked(cfg, check: bool, trace: str | None) -> dict:
    """Run pagetable-test with the checker and/or a trace writer subscribed."""
    from s2sim.sim.run import run_pagetable_test

    observers = []
    checker = None
    fh = None
    if check:
        from s2sim.check.checker import Checker
        checker = Checker()
        observers.append(checker)
    if trace:
        import os
        import tempfile

        from s2sim.check.trace import TraceWriter
        d = os.path.dirname(os.path.abspath(trace))
        fd, tmp = tempfile.mkstemp(prefix=".s2sim-trace-", dir=d)
        fh = os.fdopen(fd, "w", encoding="utf-8")
        observers.append(TraceWriter(fh))
    try:
        result = run_pagetable_test(cfg, observers=tuple(observers))
    except BaseException:
        if fh is not None:
            fh.close()
            os.unlink(tmp)
        raise
    if fh is not None:
        fh.close()
        os.replace(tmp, trace)
    if checker is not None:
        result["check"] = checker.to_dict()
    return result


def _finish(result: dict, check: bool, json_path, write) -> None:
    bad = False
    if result.get("aborted"):
        print(f"s2sim: simulation aborted: {result['aborted']}", file=sys.stderr)
        bad = True
    if check:
        from s2sim.report.checks import print_check
        print_check(result["check"])
        bad = bad or result["check"]["total"] > 0
    if json_path:
        write(json_path, result)
    if bad:
        raise typer.Exit(1)


@app.command("check-trace")
def check_trace(path: str = typer.Argument(..., help="a trace written by --trace"),
                json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Run the safety checker offline on a recorded trace (same verdicts as --check)."""
    from s2sim.check.checker import Checker
    from s2sim.check.trace import replay
    from s2sim.report.checks import print_check

    checker = Checker()
    replay(path, checker)
    d = checker.to_dict()
    if json_out:
        print(dumps(d))
    else:
        print_check(d)
    if d["total"]:
        raise typer.Exit(1)


@app.command()
def explore(scenario: str = typer.Argument("all", help="coalesce, split, unmap, or all"),
            variant: str = typer.Option("rfc", help="variant or mutant to explore"),
            budget: int = typer.Option(35000, help="schedules before falling back from "
                                       "exhaustive to preemption-bounded search"),
            bound: int | None = typer.Option(None, help="preemption bound (skips the "
                                                "exhaustive attempt)"),
            json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Explore every order of the agents' steps in small scenarios; exit 1 on a violation."""
    from s2sim.check.explore import SCENARIOS
    from s2sim.check.explore import explore as run_explore
    from s2sim.kvm.coalesce import variant as get_variant
    from s2sim.report.checks import print_exploration

    v = get_variant(variant)
    names = list(SCENARIOS) if scenario == "all" else [scenario]
    if scenario != "all" and scenario not in SCENARIOS:
        raise ConfigError(f"scenario {scenario!r} is unknown; use one of "
                          f"{', '.join(SCENARIOS)} or all")
    results = [run_explore(n, v, budget, bound).to_dict() for n in names]
    if json_out:
        print(dumps({"variant": v.name, "unsafe": v.unsafe, "results": results}))
    else:
        if v.unsafe:
            console().print(f"variant {v.name} is a deliberately UNSAFE mutant: {v.summary}")
        print_exploration(results)
    if any(r["violations"] for r in results):
        raise typer.Exit(1)


@app.command()
def reproduce(data: str | None = typer.Option(None, "--data", help="calibration TOML "
                                                 "(default: the shipped seed data)"),
              platform: str = typer.Option("kunpeng920", help="profile name or path"),
              json_path: str | None = typer.Option(None, "--json", help="write JSON here"),
              plot_path: str | None = typer.Option(None, "--plot", help="write a PNG bar "
                                                      "chart here"),
              jobs: int = typer.Option(0, help="simulations in parallel (0: one per CPU)"),
              scale: int = typer.Option(1, help="simulate each run at 1/SCALE of its size and "
                                        "scale the stage times up (they are linear in size)")
              ) -> None:
    """Run every calibration configuration with a profile: published vs simulated, and why."""
    import os

    from s2sim.report import reproduce as rp
    from s2sim.report.results import write_json_atomic
    from s2sim.sim.calibrate import simulate_all
    from s2sim.sim.profile import load_profile
    from s2sim.workloads.calibration import load_calibration

    d = load_calibration(data)
    prof = load_profile(platform)
    _check_json_path(json_path)
    _check_json_path(plot_path)
    if jobs < 0 or scale < 1:
        raise ConfigError(f"--jobs {jobs}, --scale {scale}: jobs must be at least 0, scale "
                          "at least 1")
    fits, results = simulate_all(d, prof, scale, jobs or os.cpu_count() or 1)
    rep = rp.build(d, results, fits, scale)
    rep["profile"] = prof.to_dict()
    rp.print_reproduce(rep, prof.name + (f", runs at 1/{scale} size" if scale > 1 else ""))
    if json_path:
        write_json_atomic(json_path, rep)
    if plot_path:
        rp.plot(rep, plot_path)


@app.command()
def calibrate(data: str = typer.Argument(..., help="calibration TOML (published stage times)"),
              platform: str = typer.Option("kunpeng920", help="starting profile"),
              platform_out: str | None = typer.Option(None, "--platform-out",
                                                         help="write the fitted profile here"),
              max_evals: int = typer.Option(40, help="most simulations of the whole data set"),
              scale: int = typer.Option(1, help="fit on runs simulated at 1/SCALE of their "
                                        "size (stage time is linear in size), e.g. 20"),
              jobs: int = typer.Option(0, help="simulations in parallel (0: one per CPU)")
              ) -> None:
    """Fit the profile's free parameters to the data by least squares on relative error."""
    import os

    from s2sim.sim.calibrate import FREE, profile_toml
    from s2sim.sim.calibrate import calibrate as fit
    from s2sim.sim.profile import load_profile
    from s2sim.workloads.calibration import load_calibration

    d = load_calibration(data)
    base = load_profile(platform)
    _check_json_path(platform_out)

    def progress(n, x, fits):
        w = max(fits, key=lambda f: abs(f.relative_error))
        rms = (sum(f.relative_error ** 2 for f in fits) / len(fits)) ** 0.5
        print(f"s2sim: evaluation {n}: rms {rms:.1%}, worst {w.relative_error:+.1%} "
              f"({w.run} {w.stage.removeprefix('KVM_')}) at "
              + " ".join(f"{k}={v:.4g}" for k, v in zip(FREE, x)), file=sys.stderr, flush=True)

    if scale < 1 or max_evals < 1 or jobs < 0:
        raise ConfigError(f"--scale {scale}, --max-evals {max_evals}, --jobs {jobs}: scale and "
                          "max-evals must be at least 1, jobs at least 0")
    res = fit(d, base, FREE, max_evals, progress, scale, jobs or os.cpu_count() or 1)
    c = console()
    c.print(table("fitted parameters", ["parameter", "value", "bounds", "meaning"],
                  [[k, f"{v:g}", f"{FREE[k][0]:g}..{FREE[k][1]:g}", FREE[k][2]]
                   for k, v in res["params"].items()]))
    c.print(table("residuals", ["run", "stage", "published s", "simulated s", "error"],
                  [[f.run, f.stage, f"{f.published:.3f}", f"{f.simulated:.3f}",
                    f"{f.relative_error:+.1%}"] for f in res["fits"]]))
    c.print(f"{res['evaluations']} evaluations of {len(d.runs)} runs"
            + (f" at 1/{scale} size" if scale > 1 else "") + f" in {res['wall_seconds']:.1f} s")
    if platform_out:
        d_ = os.path.dirname(os.path.abspath(platform_out))
        import tempfile
        fd, tmp = tempfile.mkstemp(prefix=".s2sim-", suffix=".toml", dir=d_)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(profile_toml(res["profile"]))
        os.replace(tmp, platform_out)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one clear line and exit 2 for bad input, never a traceback."""
    try:
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except S2SimError as e:
        print(f"s2sim: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code)
    except Exception as e:  # click (vendored by typer) usage errors
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            msg = e.format_message()
            if msg:
                print(f"s2sim: error: {msg}", file=sys.stderr)
            sys.exit(e.exit_code if msg == "" else 2)
        if type(e).__name__ == "Abort":
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
