"""The ``mvsim`` command. Thin: it parses arguments and calls the package's functions."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from mvsim.config import (
    Config,
    ConfigError,
    coerce,
    describe_presets,
    load_file,
    make_config,
    parse_set,
)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="demo", help="preset name (see `mvsim presets`)")
    p.add_argument("--config", help="JSON or TOML file of field overrides (flat or by section)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one field, e.g. --set k=20 --set rho=0.01,0.02 (repeatable)",
    )


def _learner_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--learner", metavar="NAME|MODULE:CLASS",
                   help="the model to train: patch_cnn (default), vit, mlp, or a flax.nnx "
                   "module 'my_pkg.models:MyNet' (= --set learner=...; its keyword arguments: "
                   "--set learner_kwargs='{\"width\": 64}' or the config file)")  # fmt: skip


def _executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=("local", "dask"),
                   help="where the points run: local (this process; the default) or dask "
                   "(each point a task of a Dask cluster; docs/sweeps.md); default dask when "
                   "--scheduler or MVSIM_SCHEDULER gives an address")  # fmt: skip
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="the Dask scheduler, e.g. tcp://host:8786 (default: $MVSIM_SCHEDULER; "
                   "without one, --executor dask starts a local cluster)")  # fmt: skip
    p.add_argument("--workers", type=int, metavar="N",
                   help="--executor dask without a scheduler: worker processes of the local "
                   "cluster (default: one per GPU, or one per CPU core)")  # fmt: skip


def _cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not use JAX's persistent compilation cache (default: on, in "
                   "~/.cache/mvsim, or $JAX_COMPILATION_CACHE_DIR)")  # fmt: skip


def _executor_kw(args: argparse.Namespace) -> dict[str, Any]:
    """run_sweep's executor arguments from the flags; under dask the driver keeps JAX on
    the CPU (it trains nothing), leaving the accelerators to the workers."""
    from mvsim import executor

    kind = executor.resolve_executor(args.executor, args.scheduler)
    if kind == "dask":
        import jax

        jax.config.update("jax_platforms", "cpu")  # no effect once a backend started
    return {"executor": kind, "scheduler": args.scheduler, "workers": args.workers,
            "compile_cache": not args.no_compile_cache}  # fmt: skip


def overrides_of(args: argparse.Namespace) -> dict:
    """--config file, then --set items, then --seeds and --learner."""
    overrides = load_file(args.config) if args.config else {}
    overrides.update(parse_set(args.set))
    if getattr(args, "seeds", None) is not None:
        overrides["seeds"] = args.seeds
    if getattr(args, "learner", None) is not None:
        overrides["learner"] = coerce("learner", args.learner)
    return overrides


def resolve(args: argparse.Namespace) -> Config:
    """Preset + --config file + --set items (+ --seeds, --learner), validated before any
    compute, the learner included (its import path and output shape,
    :func:`mvsim.learners.check`)."""
    cfg = make_config(args.preset, overrides_of(args))
    _check_learner(cfg)
    return cfg


def _check_learner(cfg: Config) -> None:
    if cfg.model.learner != "patch_cnn":
        from mvsim import learners

        learners.check(cfg.model, cfg.data.k, cfg.data.d, cfg.data.P)


def cmd_presets(args: argparse.Namespace) -> int:
    """``mvsim presets``: print every preset and its resolved values."""
    print(describe_presets())
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """``mvsim sample``: write a data set and its ground truth to an npz file, atomically."""
    import jax
    import numpy as np

    from mvsim import data

    cfg = resolve(args)
    if args.n < 1:
        raise ConfigError("--n", args.n, "must be ≥ 1")
    key = jax.random.key(args.seed)
    kf, ks = jax.random.split(key)
    V = data.features(kf, cfg.data.d, cfg.data.k)
    batch, truth = data.sample(ks, cfg.data, args.n, V, view=args.view, ground_truth=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez_compressed(
        tmp,
        x=np.asarray(batch.x),
        y=np.asarray(batch.y),
        single_view=np.asarray(batch.single_view),
        strong_view=np.asarray(batch.strong_view),
        coef=np.asarray(truth.coef),
        noise=np.asarray(truth.noise),
        features=np.asarray(V),
        config=np.array(cfg.to_json()),
    )
    tmp.replace(out)
    print(f"wrote {args.n} samples ({args.view}) to {out}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """``mvsim verify``: train, measure, print the verdict table; with --out, write
    report.json, every figure and report.html. Exit status 0 whatever the verdicts, or
    1 with --strict when a claim FAILs."""
    from mvsim import claims, html_report, plots, report, verify

    cfg = resolve(args)
    ids = args.claims.split(",") if args.claims else None
    if ids:
        known = {c.id for c in claims.CLAIMS}
        bad = sorted(set(ids) - known)
        if bad:
            raise ConfigError("--claims", ",".join(bad), f"must be among {sorted(known)}")
    verify.check_claim_seeds(cfg, ids)
    if args.ntk and cfg.model.learner != "patch_cnn":
        raise ConfigError(
            "learner",
            cfg.model.learner,
            "--ntk linearises the patch CNN; leave out --ntk or use learner=patch_cnn",
        )
    if args.ntk and cfg.verify.seeds < 2:
        raise ConfigError(
            "seeds",
            cfg.verify.seeds,
            "--ntk needs seeds ≥ 2 (--seeds): its 'KD from the deep ensemble' students are "
            "taught by the ensemble of the single models",
        )
    t0 = time.perf_counter()
    m = verify.run(cfg, claims=ids, progress=_progress(args))
    results = claims.evaluate_all(m, ids)
    extra = {}
    if args.ntk:
        from mvsim import ntk

        t = time.perf_counter()
        extra["ntk"] = ntk.run_ntk(cfg, m, progress=_progress(args))
        m.timing["ntk"] = time.perf_counter() - t
    m.timing["total"] = time.perf_counter() - t0
    rep = report.build(m, results, extra)
    print(report.table(rep))
    if args.out:
        out = Path(args.out)
        report.write_json(out / "report.json", rep)
        paths = plots.all_figures(rep, out / "figures")
        html = html_report.write_verify(rep, out / "report.html", paths)
        print(
            f"\nwrote {out / 'report.json'}, {len(paths)} figure files under "
            f"{out / 'figures'} and {html}"
        )
    return _strict_status(args.strict, rep["claims"])


def _progress(args: argparse.Namespace) -> bool | str:
    """Bars (lines when stderr is not a terminal) and a line per stage; --no-progress: the
    line per stage only (:mod:`mvsim.progress`)."""
    return "summary" if args.no_progress else True


def _strict_status(strict: bool, claim_rows: list[dict]) -> int:
    """1 under --strict when a claim of the verdict table FAILed (said on stderr), else 0."""
    failed = [c["id"] for c in claim_rows if c["verdict"] == "FAIL"]
    if strict and failed:
        print(f"mvsim: --strict: FAIL for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from mvsim import experiments

    mod = experiments.module(args.name)
    preset = args.preset or experiments.DEFAULT_PRESET[args.name]
    overrides = overrides_of(args)
    only = (("family", ("k-scaling",)), ("claims", ("k-scaling", "race")),
            ("levers", ("race",)), ("report_only", ("race",)), ("executor", ("k-scaling",)),
            ("scheduler", ("k-scaling",)), ("workers", ("k-scaling",)))  # fmt: skip
    for flag, names in only:
        if getattr(args, flag) not in (None, False, []) and args.name not in names:
            where = " and ".join(names)
            raise ConfigError("--" + flag.replace("_", "-"), getattr(args, flag),
                              f"applies to {where} only")  # fmt: skip
    if args.name == "k-scaling":
        rep = _k_scaling(args, mod, overrides)
    elif args.name == "race":
        rep = _race(args, mod, preset, overrides)
    elif args.name == "theory-scaling":
        rep = mod.run(_ks(args, mod), preset, overrides, progress=_progress(args))
    else:
        if args.ks:
            raise ConfigError("--ks", args.ks, "applies to theory-scaling and k-scaling only")
        cfg = make_config(preset, overrides)
        _check_learner(cfg)
        # learners keeps each finished learner under OUT, so a rerun resumes
        done = {"done": Path(args.out) / "finished"} if args.name == "learners" and args.out else {}
        rep = mod.run(cfg, progress=_progress(args), **done)
    print(mod.table(rep))
    if args.out:
        paths = experiments.write(rep, args.out, mod.figure)
        out = Path(args.out)
        print(f"\nwrote {out / 'report.json'}, {len(paths)} figure files and {out / 'report.html'}")
    if args.store:
        from mvsim import store

        n = store.write_experiment(args.store, rep)
        print(f"stored {n} rows of {args.name} in {args.store}")
    return 0


def _ks(args: argparse.Namespace, mod: Any) -> list[int]:
    try:
        return [int(v) for v in args.ks.split(",")] if args.ks else list(mod.DEFAULT_KS)
    except ValueError:
        raise ConfigError("--ks", args.ks, "must be comma-separated integers, e.g. 4,6,8") from None


def _k_scaling(args: argparse.Namespace, mod: Any, overrides: dict[str, Any]) -> dict:
    """The k-scaling run: its points go to the store (``--store``, else OUT/store.sqlite),
    which a rerun of the same command resumes from."""
    if args.preset is not None:
        raise ConfigError("--preset", args.preset, "k-scaling takes --family instead")
    if not args.store and not args.out:
        raise ConfigError("--store", None, "k-scaling keeps its points in a store: give "
                          "--store F.sqlite or --out DIR")  # fmt: skip
    args.store = args.store or str(Path(args.out) / "store.sqlite")
    from mvsim import sweep

    family = args.family or "demo"
    claims = sweep.check_claims(args.claims.split(",")) if args.claims else None
    # run() builds and validates every point before it trains anything.
    return mod.run(_ks(args, mod), family, overrides, store=args.store, claims=claims,
                   progress=not args.no_progress, **_executor_kw(args))  # fmt: skip


def _race(args: argparse.Namespace, mod: Any, preset: str, overrides: dict[str, Any]) -> dict:
    """The race lever map: its points go to the store (``--store``, else OUT/store.sqlite),
    which a rerun of the same command resumes from."""
    if not args.store and not args.out:
        raise ConfigError("--store", None, "the race map keeps its points in a store: give "
                          "--store F.sqlite or --out DIR")  # fmt: skip
    args.store = args.store or str(Path(args.out) / "store.sqlite")
    from mvsim import sweep

    claims = sweep.check_claims(args.claims.split(",")) if args.claims else None
    levers = mod.parse_levers(args.levers)
    # run() builds and validates every point before it trains anything.
    return mod.run(levers, overrides, store=args.store, claims=claims, preset=preset,
                   checks=not args.no_checks, train=not args.report_only)  # fmt: skip


def cmd_race_model(args: argparse.Namespace) -> int:
    """``mvsim race-model``: the reduced race model's prediction for a config, without
    training the network (:mod:`mvsim.race_model`)."""
    from mvsim import race_model

    if args.validate:
        from mvsim import race_validation

        rows = race_validation.run(args.validate, args.out or "race-validation.jsonl")
        print(race_validation.table(rows))
        return 0
    cfg = resolve(args)
    race_model.check(cfg)
    res = race_model.predict(cfg, law=args.law, seed=args.law_seed)
    rep = race_model.report(cfg, res)
    print(json.dumps(rep) if args.json else race_model.text(rep))
    return 0


def cmd_plot_report(args: argparse.Namespace) -> int:
    """``mvsim plot-report``: redraw every figure a saved report.json has the data for,
    and its report.html, from the JSON alone."""
    from mvsim import html_report, plots

    rep = json.loads(Path(args.report).read_text())
    out = Path(args.out) if args.out else Path(args.report).parent / "figures"
    html = Path(args.html) if args.html else Path(args.report).with_name("report.html")
    if "experiment" in rep:  # a supporting experiment's report draws its own figure
        from mvsim import experiments

        paths = experiments.module(rep["experiment"]).figure(rep, out)
        experiments.write_html(rep, html, paths)
    else:
        paths = plots.all_figures(rep, out)
        html_report.write_verify(rep, html, paths)
    for p in [*paths, html]:
        print(p)
    return 0


def cmd_bench(argv: list[str]) -> int:
    """``mvsim bench ...`` = ``python -m benchmarks.run ...`` (a source checkout's folder)."""
    if (Path.cwd() / "benchmarks" / "run.py").is_file() and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # the console script's path lacks the checkout
    try:
        from benchmarks.run import main as bench_main
    except ImportError as e:
        print(
            "mvsim: error: `mvsim bench` runs benchmarks/ of a source checkout, which is not "
            f"part of the installed package; run it from the repository root ({e})",
            file=sys.stderr,
        )
        return 2
    return bench_main(argv)


def cmd_sweep(args: argparse.Namespace) -> int:
    from mvsim import devices, sweep

    kw = _executor_kw(args)
    if kw["executor"] == "local":
        devices.initialize_distributed()
    overrides = overrides_of(args)
    grid = sweep.merge_grids(
        sweep.load_grid(args.grid_file) if args.grid_file else {}, sweep.parse_grid(args.grid)
    )
    ids = sweep.check_claims(args.claims.split(",") if args.claims else None)
    if args.batch_points is not None and args.batch_points < 1:
        raise ConfigError("--batch-points", args.batch_points, "must be ≥ 1")
    points = sweep.build_points(args.preset, overrides, grid, ids)  # validates every point
    print(f"sweep: {len(points)} points over {', '.join(grid)} -> {args.store}")
    s = sweep.run_sweep(points, args.store, ids, batch_points=args.batch_points,
                        progress=not args.no_progress, **kw)  # fmt: skip
    print(
        f"sweep: computed {s.computed} points, skipped {s.skipped} already stored, "
        f"wrote {s.rows} rows to {args.store} in {s.seconds:.1f} s "
        f"({s.compile_seconds:.1f} s of the points' time compiling)"
    )
    if s.failed:
        print(f"sweep: {s.failed} points FAILED (their errors: mvsim results {args.store}); "
              "rerun the same command to retry them", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from mvsim import store

    try:
        if not (args.csv or args.parquet):
            df = store.read_results(args.db)
            cols = ["claim", *(f"point_{a}" for a in df.attrs["axes"])]
            cols += ["error_over_mu", "ci_lo", "ci_hi", "verdict", "frac_one_view"]
            print(df[cols].to_string(index=False) if len(df) else "no stored points")
            _print_failures(store.read_failures(args.db))
            return 0
        paths = store.export(args.db, csv=args.csv, parquet=args.parquet)
    except (ImportError, FileNotFoundError) as e:
        print(f"mvsim: error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


def _print_failures(failed: Any) -> None:
    """The failed points of a store, each with the last line of its error."""
    if failed.empty:
        return
    print(f"\nfailed points ({len(failed)}; a rerun of the sweep retries them):")
    axes = [c for c in failed.columns if c.startswith("point_") and c != "point_json"]
    failed = failed.assign(error=[e.strip().splitlines()[-1] for e in failed["error"]])
    print(failed[[*axes, "attempts", "worker", "error"]].to_string(index=False))


def cmd_plot(args: argparse.Namespace) -> int:
    """``mvsim plot``: a sweep store's figures and its report.html (an index of the
    points with each claim's error/μ and verdict, and the figures)."""
    from mvsim import html_report, plots, store

    try:
        df = store.read_results(args.db)
    except FileNotFoundError as e:
        print(f"mvsim: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.db).with_suffix("").parent / "sweep-figures"
    paths = plots.sweep_figures(df, out)
    html = html_report.write_sweep(df, out / "report.html", paths, args.db)
    for p in [*paths, html]:
        print(p)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mvsim`` and its subcommands."""
    ap = argparse.ArgumentParser(
        prog="mvsim",
        description="Allen-Zhu & Li's multi-view theory of ensembles and distillation, runnable.",
    )
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the presets and their values")
    p.set_defaults(fn=cmd_presets)

    p = sub.add_parser("sample", help="export a data set (npz) with its ground truth")
    _config_args(p)
    p.add_argument("--n", type=int, required=True, help="number of samples")
    p.add_argument("--view", choices=("mixed", "multi", "single"), default="mixed")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (views and samples)")
    p.add_argument("--out", required=True, help="output .npz file")
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("verify", help="train, measure, and print the claims' verdicts")
    _config_args(p)
    p.add_argument("--seeds", type=int, help="number of single models K (overrides `seeds`)")
    p.add_argument("--claims", help="comma-separated subset of claims to report")
    p.add_argument("--out", help="directory for report.json, figures/ and report.html")
    _learner_arg(p)
    p.add_argument("--ntk", action="store_true", help="also run the NTK / linearized side")
    _cache_arg(p)
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 when a claim of the verdict table FAILs")  # fmt: skip
    p.add_argument("--no-progress", action="store_true",
                   help="no bars: one line per stage, with its time")  # fmt: skip
    p.set_defaults(fn=cmd_verify)

    p = sub.add_parser("race-model", help="the reduced race model's prediction for a config "
                       "(two-view fraction, r50, race curve), without training")  # fmt: skip
    _config_args(p)
    p.add_argument("--seeds", type=int, help="models whose races are integrated (default: the "
                   "preset's seeds)")  # fmt: skip
    p.add_argument("--law", action="store_true", help="draw the inits from the init law "
                   "instead of taking the full run's own (verify's init stream)")  # fmt: skip
    p.add_argument("--law-seed", type=int, default=0, help="key of the --law draws")
    p.add_argument("--json", action="store_true", help="print the prediction as JSON")
    p.add_argument("--validate", nargs="+", metavar="STORE",
                   help="instead: compare the model with every point of these sweep "
                   "stores (resumable; rows: --out)")  # fmt: skip
    p.add_argument("--out", help="--validate: the JSON-lines file of its rows "
                   "(default race-validation.jsonl)")  # fmt: skip
    _cache_arg(p)
    p.set_defaults(fn=cmd_race_model)

    p = sub.add_parser("experiment", help="a supporting experiment: report.json, figure, table")
    p.add_argument("name", choices=("dropping", "gaussian", "learners", "theory-scaling",
                                    "k-scaling", "race"))  # fmt: skip
    p.add_argument("--preset", default=None,
                   help="preset (default: demo; theory for theory-scaling)")  # fmt: skip
    p.add_argument("--claims", help="k-scaling: comma-separated claim ids (default: all); "
                   "race: claims beyond single (default: single)")  # fmt: skip
    p.add_argument("--levers", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="race: a lever and its values (repeatable; NAME= alone: its default "
                   "range; none: every lever, mvsim.experiments.race.LEVERS)")  # fmt: skip
    p.add_argument("--no-checks", action="store_true",
                   help="race: skip the tighter-tolerance reruns of each lever's ends")  # fmt: skip
    p.add_argument("--report-only", action="store_true",
                   help="race: train nothing; the report from what the store holds, listing "
                   "the points it lacks as not run")  # fmt: skip
    p.add_argument("--family", default=None,
                   help="k-scaling: the preset family swept over k (demo, demo-logm, "
                   "demo-theory; default demo)")  # fmt: skip
    p.add_argument("--config", help="JSON or TOML file of field overrides (flat or by section)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one field (repeatable)")  # fmt: skip
    p.add_argument("--seeds", type=int, help="number of single models K (overrides `seeds`)")
    p.add_argument("--ks", help="theory-scaling (default 4,6,8,10) and k-scaling (default "
                   "3,5,10,20,30,40): comma-separated k values")  # fmt: skip
    _learner_arg(p)
    p.add_argument("--out", help="directory for report.json, figures/ and report.html")
    p.add_argument("--store", help="also store the result rows in this SQLite store "
                   "(mvsim.store.read_experiments reads them back); k-scaling and race keep "
                   "their points there and resume from it (default: OUT/store.sqlite)")  # fmt: skip
    _executor_args(p)
    _cache_arg(p)
    p.add_argument("--no-progress", action="store_true",
                   help="no bars: one line per stage, with its time")  # fmt: skip
    p.set_defaults(fn=cmd_experiment)

    sub.add_parser(
        "bench", help="benchmarks (from a source checkout): mvsim bench [--quick] [--out F]"
    )  # its arguments go to benchmarks.run untouched (see main)

    p = sub.add_parser("sweep", help="run verify over a grid of config values into a store")
    _config_args(p)
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="FIELD=V1,V2,...",
        help="one axis, e.g. --grid mu=0.05,0.1 --grid P=16,25 (repeatable; pair fields: "
        "--grid 'rho=(0.01,0.02),(0.02,0.04)')",
    )
    p.add_argument("--grid-file", help="TOML/JSON file of axes {field: [values]}")
    _learner_arg(p)
    p.add_argument("--seeds", type=int, help="number of single models K (overrides `seeds`)")
    p.add_argument("--claims", help="comma-separated subset of claims (default: all)")
    p.add_argument("--store", default="mvsim-sweep.sqlite", help="SQLite result store")
    p.add_argument(
        "--batch-points",
        type=int,
        metavar="N",
        help="train up to N points that differ only in traced fields (mu, rho, Gamma, "
        "sigma_0, eta, ...) in one vmapped call (default: 1 on CPU, 16 on GPU/TPU)",
    )
    _executor_args(p)
    _cache_arg(p)
    p.add_argument("--no-progress", action="store_true", help="a log line per point, no bar")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("results", help="print or export a sweep store (CSV / Parquet)")
    p.add_argument("db", help="the SQLite store of `mvsim sweep`")
    p.add_argument("--csv", help="write the rows as CSV")
    p.add_argument("--parquet", help="write the rows as Parquet (needs pyarrow)")
    p.set_defaults(fn=cmd_results)

    p = sub.add_parser("plot", help="figures (PNG and SVG) and report.html of a sweep store")
    p.add_argument("db", help="the SQLite store of `mvsim sweep`")
    p.add_argument("--out", help="directory for the figures and report.html "
                   "(default: sweep-figures/ next to the store)")  # fmt: skip
    p.set_defaults(fn=cmd_plot)

    p = sub.add_parser("plot-report", help="(re)draw the figures and report.html of a saved "
                       "report.json")  # fmt: skip
    p.add_argument("report")
    p.add_argument("--out", help="figure directory (default: figures/ next to the report)")
    p.add_argument("--html", help="the HTML file (default: report.html next to the report)")
    p.set_defaults(fn=cmd_plot_report)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mvsim`` console script; returns the exit status (2 on a
    config error or an unreadable store, printed as ``mvsim: error: ...``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # argparse would reject the benchmark's own options
        return cmd_bench(argv[1:])
    args = build_parser().parse_args(argv)
    from mvsim import compilation
    from mvsim.executor import WorkerMismatch
    from mvsim.store import StoreError
    from mvsim.sweep import PointsFailed

    if hasattr(args, "no_compile_cache"):
        compilation.enable_cache(not args.no_compile_cache)
    try:
        return args.fn(args)
    except (ConfigError, StoreError, WorkerMismatch) as e:
        print(f"mvsim: error: {e}", file=sys.stderr)
        return 2
    except PointsFailed as e:
        print(f"mvsim: error: failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
