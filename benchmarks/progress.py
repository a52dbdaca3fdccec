"""What progress reporting costs: the training stages of ``mvsim verify`` at the demo,
their display off and on, side by side, in one process.

``python -m benchmarks.progress [--preset demo] [--set FIELD=VALUE ...]
[--stages singles,students,averages] [--modes off,bars,lines] [--rounds 2] [--out F.json]``

The stages are verify's three training calls (its singles, its 3n distilled students
from the singles' inits and logits, its training-average models), trained as verify
trains them (:func:`mvsim.train.train`, the same data, inits, teachers and budgets). They
are the stages where reporting reaches inside the computation; the others advance once
per test-set chunk or once per point. Modes: ``off`` (``progress=False``: the flow compiled
without its meter, the programs of a ``--no-progress`` run), ``bars`` (``progress=True`` on
a terminal: the flow meter's host callback compiled into the solve, a tqdm bar redrawn up
to ten times a second) and ``lines`` (``progress=True`` on a log: the same meter, a line
every 10 s). The display goes to an in-memory stream (the terminal is faked for ``bars``),
so what is timed is the reporting, not a terminal's drawing.

For each stage, each mode first runs once to compile its programs (the meter's are
separate ones; that time, compile included, is kept); then ``--rounds`` interleaved
rounds (off, bars, ..., off, bars, ...) time the stage with its programs compiled, and
the per-round ratio mode / off is the overhead (the issue's target: ≤ 2%). The reports
that reached the stage are counted, to show the host's stride at work. ``--out`` merges
into an existing report, so the stages can run one lock hold each.

A last part (``--stages tqdm``) shows why diffrax's own ``TqdmProgressMeter`` was not
used: on the ODE of ``tests/test_progress.py`` (nested vmap, an event stopping models at
t = 1, 3 and 5 of 10), the progress its bar receives freezes at the first stop while
mvsim's meter follows the slowest model still running.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from benchmarks.harness import ratio_stats
from mvsim import data, distill, learners, progress, train, verify
from mvsim.config import make_config, parse_set
from mvsim.report import write_json

STAGES = ("singles", "students", "averages", "tqdm", "callback")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _stages(cfg, names: list[str]) -> dict[str, Callable[[Any], Any]]:
    """verify's training calls at ``cfg``: {stage: fit(progress)}."""
    D, M, Tc, KD = cfg.data, cfg.model, cfg.train, cfg.distill
    dtype = np.dtype(Tc.dtype)
    V = data.features(verify.stream(cfg, "features"), D.d, D.k, dtype)
    ts = data.training_set(verify.stream(cfg, "data"), D, V, dtype)
    net = learners.network(M, D.k, D.d, D.P, dtype)
    K, n = cfg.verify.seeds, KD.kd_students
    inits = train.init_seeds(net, verify.stream(cfg, "init"), K)
    fits: dict[str, Callable[[Any], Any]] = {}
    fits["singles"] = lambda p: train.train(None, net, ts.x, ts.y, V, Tc, init_params=inits,
                                            progress=p, desc=f"{K} single models")  # fmt: skip
    if "students" in names:
        singles = fits["singles"](False)
        logits = verify._train_logits(net.apply, singles.params, ts.x)
        teachers, st_inits = verify.student_setup(logits, singles.init_params, n)
        fits["students"] = lambda p: train.train(
            None, net, ts.x, ts.y, V, Tc, init_params=st_inits, objective=distill.objective(KD),
            teacher_logits=teachers, T=learners.student_budget(M, KD.kd_T), stop=KD.kd_stop,
            progress=p, desc=f"{3 * n} distilled students",
        )  # fmt: skip
    avg_net = learners.averaged(M, D.k, D.d, D.P, KD.avg_members, dtype)
    mult = KD.avg_members if KD.avg_eta_mult is None else KD.avg_eta_mult
    avg_tc = dataclasses.replace(Tc, eta=Tc.eta * mult)
    avg_inits = train.init_seeds(avg_net, verify.stream(cfg, "average"), KD.avg_seeds)
    fits["averages"] = lambda p: train.train(None, avg_net, ts.x, ts.y, V, avg_tc,
                                             init_params=avg_inits, progress=p,
                                             desc="training-average models")  # fmt: skip
    return fits


def _once(fit: Callable[[Any], Any], mode: str) -> tuple[float, int]:
    """One call of ``fit`` in ``mode``: its wall time (s) and the reports it got."""
    stream = _Terminal() if mode == "bars" else io.StringIO()
    with progress.recording() as events, contextlib.redirect_stderr(stream):  # real clock
        t = time.perf_counter()
        fit(mode != "off")  # train returns numpy arrays: it has waited for the result
        secs = time.perf_counter() - t
    return secs, sum(e.kind == "update" for e in events)


def _stage(name: str, fit: Callable[[Any], Any], modes: list[str], rounds: int) -> dict:
    out: dict[str, Any] = {"first_run_s": {}, "rounds_s": {m: [] for m in modes}, "reports": {}}
    for mode in modes:
        out["first_run_s"][mode], _ = _once(fit, mode)
    for _ in range(rounds):
        for mode in modes:
            secs, reports = _once(fit, mode)
            out["rounds_s"][mode].append(secs)
            out["reports"][mode] = reports
    off = out["rounds_s"]["off"]
    out["overhead"] = {m: ratio_stats(out["rounds_s"][m], off) for m in modes if m != "off"}
    out["loadavg_end"] = list(os.getloadavg())
    ratios = [f"{m} / off {o['median']:.4f} [{o['min']:.4f}, {o['max']:.4f}], "
              f"{out['reports'][m]} reports" for m, o in out["overhead"].items()]  # fmt: skip
    print(f"{name}: off {np.median(off):.2f} s; " + "; ".join(ratios), flush=True)
    return out


def _tqdm_meter_freezes() -> dict[str, Any]:
    """The largest progress (of 1) that diffrax's TqdmProgressMeter and mvsim's meter each
    report before the end of the test's ODE, whose models stop at t = 1, 3, 5 or run to 10."""
    import diffrax as dfx

    t = _test_module()

    seen: list[float] = []
    step = dfx.TqdmProgressMeter._step_bar

    def spy(bar, p):
        seen.append(float(np.asarray(p).reshape(-1)[0]))
        step(bar, p)

    dfx.TqdmProgressMeter._step_bar = staticmethod(spy)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            solve = lambda r, s: t._solve(r, s, dfx.TqdmProgressMeter(refresh_steps=1))  # noqa: E731
            jax.block_until_ready(jax.jit(jax.vmap(jax.vmap(solve)))(t.RATES, t.STOPS))
            _, _, ups = t._metered(t.RATES, t.STOPS, compare=False)
    finally:
        dfx.TqdmProgressMeter._step_bar = staticmethod(step)
    out = {"stops": np.asarray(t.STOPS).tolist(), "t1": 10.0, "tqdm_meter_max": max(seen),
           "mvsim_meter_max": max(e.n for e in ups) / 1000}  # fmt: skip
    print(f"diffrax's TqdmProgressMeter reached {out['tqdm_meter_max']:.2f} of the solve "
          f"before its end, mvsim's meter {out['mvsim_meter_max']:.2f}", flush=True)  # fmt: skip
    return out


def _callback_cost(rounds: int, reps: int = 20) -> dict[str, Any]:
    """What the meter costs per solver step, on the test's ODE (24 models, vmapped, run to
    t = 10): without it, with it but no stage listening (one callback, then the meter's
    reductions and cond alone), and with a report at every step (a fake clock makes the
    stride one step). Per round, ``reps`` solves each, interleaved; per-step costs are the
    differences over the steps of the slowest model. Too small to time at the demo on a
    shared machine, they bound the meter's share there: steps × meter + reports × report."""
    import diffrax as dfx

    t = _test_module()
    rates, stops = jax.numpy.tile(t.RATES, (1, 4)), jax.numpy.full((2, 12), 20.0)
    solve = lambda m: jax.jit(jax.vmap(jax.vmap(lambda r, s: t._solve(r, s, m()))))  # noqa: E731
    plain, metered = solve(dfx.NoProgressMeter), solve(progress.FlowMeter)
    steps = int(np.asarray(jax.block_until_ready(plain(rates, stops))[1]).max())
    st = progress.Stage("ode", "live", total=1000, unit="steps", compiling="")

    def timed(fn: Callable[[], Any]) -> float:
        fn()  # compiled, and warm
        t0 = time.perf_counter()
        for _ in range(reps):
            jax.block_until_ready(fn())
        return (time.perf_counter() - t0) / reps

    def reporting() -> Any:
        with progress.recording(progress.StepClock()), contextlib.redirect_stderr(io.StringIO()):
            with progress.solving(st, T=1000, models=rates.size, per_step=2):
                return metered(rates, stops)

    secs: dict[str, list[float]] = {"plain": [], "meter": [], "reports": []}
    for _ in range(rounds):
        secs["plain"].append(timed(lambda: plain(rates, stops)))
        secs["meter"].append(timed(lambda: metered(rates, stops)))
        secs["reports"].append(timed(reporting))
    st.close()
    med = {k: float(np.median(v)) for k, v in secs.items()}
    out = {"models": int(rates.size), "solver_steps": steps, "rounds": rounds, "reps": reps,
           "solve_s": secs, "meter_per_step_us": (med["meter"] - med["plain"]) / steps * 1e6,
           "report_us": (med["reports"] - med["meter"]) / steps * 1e6}  # fmt: skip
    print(
        f"meter: {out['meter_per_step_us']:.1f} µs per solver step, "
        f"{out['report_us']:.1f} µs per report ({steps} steps, {rates.size} models)",
        flush=True,
    )
    return out


def _test_module() -> Any:
    """tests/test_progress.py: its ODE, its stops, and its metered solve."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import test_progress

    return test_progress


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").split("\n")[0]
    p = argparse.ArgumentParser(prog="python -m benchmarks.progress", description=doc)
    p.add_argument("--preset", default="demo")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--modes", default="off,bars,lines", help="off first, then bars, lines")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", help="write (or update) the report as JSON here")
    args = p.parse_args(argv)
    modes, names = args.modes.split(","), args.stages.split(",")
    if modes[0] != "off" or not set(modes) <= {"off", "bars", "lines"}:
        p.error("--modes: 'off' first, then any of bars, lines")
    if not set(names) <= set(STAGES):
        p.error(f"--stages: any of {','.join(STAGES)}")
    overrides = parse_set(args.set)
    cfg = make_config(args.preset, overrides)
    rep: dict[str, Any] = {}
    if args.out and Path(args.out).is_file():
        rep = json.loads(Path(args.out).read_text())
    rep.update({"preset": args.preset, "overrides": overrides})
    rep.setdefault("stages", {})
    with train.precision(cfg.train.dtype, cfg.train.matmul_precision):
        fits = _stages(cfg, names)
        for name in names:
            if name == "tqdm":
                rep["diffrax_tqdm_meter"] = _tqdm_meter_freezes()
            elif name == "callback":
                rep["meter_cost"] = _callback_cost(max(args.rounds, 3))
            else:
                rep["stages"][name] = _stage(name, fits[name], modes, args.rounds)
                rep["stages"][name]["modes"] = modes
    rep["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                      "backend": jax.default_backend(), "jax": jax.__version__}  # fmt: skip
    if args.out:
        write_json(args.out, rep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
