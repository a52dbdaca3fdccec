"""What progress reporting costs: ``mvsim.verify.run`` at the demo, its display off and on,
side by side, in one process.

``python -m benchmarks.progress [--preset demo] [--set FIELD=VALUE ...] [--modes off,bars]
[--rounds 2] [--out FILE.json]``

Modes: ``off`` (``progress=False``: no display, the flow compiled without its meter, the
programs of a ``--no-progress`` run), ``bars`` (``progress=True`` on a terminal: tqdm bars
redrawn up to ten times a second, the flow meter's host callback compiled into every
solve) and ``lines`` (``progress=True`` on a log: the same meter, a line every 10 s). The
displays are written to an in-memory stream (the terminal is faked for ``bars``), so
what is timed is the reporting, not a terminal's drawing.

Each mode first runs once to compile its programs (the meter's are separate ones); its
stage times, compile included, are kept. Then ``--rounds`` interleaved rounds (off, bars,
..., off, bars, ...) time every stage with the programs compiled, and the per-round
ratio mode / off of each stage is the overhead (the issue's target: ≤ 2% on every
stage). It also counts the reports that reached a stage, to show the stride at work.

A last part shows why diffrax's own ``TqdmProgressMeter`` was not used: on the ODE of
``tests/test_progress.py`` (nested vmap, an event stopping models at t = 1, 3 and 5 of
10), the progress its bar receives freezes at the first stop while mvsim's meter follows
the slowest model still running.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import time
from typing import Any

import jax
import numpy as np

from benchmarks.harness import ratio_stats
from mvsim import progress, verify
from mvsim.config import make_config, parse_set
from mvsim.report import write_json

STAGES = ("sample_train", "train_single", "train_students", "train_average", "evaluate", "total")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _once(cfg, mode: str) -> tuple[dict[str, float], dict[str, int]]:
    """One verify run in ``mode``: its stage times (s) and the reports each stage got."""
    stream = _Terminal() if mode == "bars" else io.StringIO()
    with progress.recording() as events, contextlib.redirect_stderr(stream):  # real clock
        t = time.perf_counter()
        m = verify.run(cfg, progress=mode != "off")
        total = time.perf_counter() - t
    timing = {k: float(v) for k, v in m.timing.items()} | {"total": total}
    reports: dict[str, int] = {}
    for e in events:
        if e.kind == "update":
            reports[e.stage] = reports.get(e.stage, 0) + 1
    return timing, reports


def run(preset: str, overrides: dict[str, Any], modes: list[str], rounds: int) -> dict[str, Any]:
    cfg = make_config(preset, overrides)
    rep: dict[str, Any] = {"preset": preset, "overrides": overrides, "modes": modes,
                           "rounds": rounds, "first_run": {}, "reports": {}}  # fmt: skip
    for mode in modes:
        timing, reports = _once(cfg, mode)
        rep["first_run"][mode] = timing
        print(f"{mode}: first run (compiling) {timing['total']:.1f} s", flush=True)
    times: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for r in range(rounds):
        for mode in modes:
            timing, reports = _once(cfg, mode)
            times[mode].append(timing)
            rep["reports"][mode] = reports
            print(f"round {r + 1} {mode}: " + ", ".join(f"{k} {timing[k]:.1f}" for k in STAGES),
                  flush=True)  # fmt: skip
    rep["rounds_s"] = times
    rep["overhead"] = {
        mode: {
            k: ratio_stats([t[k] for t in times[mode]], [t[k] for t in times["off"]])
            for k in STAGES
        }
        for mode in modes
        if mode != "off"
    }
    rep["diffrax_tqdm_meter"] = _tqdm_meter_freezes()
    rep["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                      "backend": jax.default_backend(), "jax": jax.__version__,
                      "loadavg_end": list(os.getloadavg())}  # fmt: skip
    return rep


def _tqdm_meter_freezes() -> dict[str, Any]:
    """The largest progress (of 1) that diffrax's TqdmProgressMeter and mvsim's meter each
    report before the end of the test's ODE, whose models stop at t = 1, 3, 5 or run to 10."""
    import sys
    from pathlib import Path

    import diffrax as dfx

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import test_progress as t  # the test's ODE, its stops, and the metered solve

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
    finally:
        dfx.TqdmProgressMeter._step_bar = staticmethod(step)
    with contextlib.redirect_stderr(io.StringIO()):  # its stage's lines
        _, _, ups = t._metered(t.RATES, t.STOPS, compare=False)
    return {"stops": np.asarray(t.STOPS).tolist(), "tqdm_meter_max": max(seen),
            "mvsim_meter_max": max(e.n for e in ups) / 1000, "t1": 10.0}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").split("\n")[0]
    p = argparse.ArgumentParser(prog="python -m benchmarks.progress", description=doc)
    p.add_argument("--preset", default="demo")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--modes", default="off,bars", help="off first, then any of bars, lines")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", help="write the report as JSON here")
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    if modes[0] != "off" or not set(modes) <= {"off", "bars", "lines"}:
        p.error("--modes: 'off' first, then any of bars, lines")
    rep = run(args.preset, parse_set(args.set), modes, args.rounds)
    for mode, o in rep["overhead"].items():
        print(f"{mode} / off: " + ", ".join(f"{k} {v['median']:.3f} [{v['min']:.3f}, "
                                            f"{v['max']:.3f}]" for k, v in o.items()))  # fmt: skip
    d = rep["diffrax_tqdm_meter"]
    print(f"diffrax's TqdmProgressMeter reached {d['tqdm_meter_max']:.2f} of the solve before "
          f"its end, mvsim's meter {d['mvsim_meter_max']:.2f}")  # fmt: skip
    if args.out:
        write_json(args.out, rep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
