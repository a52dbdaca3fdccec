"""mvsim.progress: stages, their lines and bars, the throttle, and the flow meter inside a
vmapped (and a sharded) diffrax solve. No wall time decides anything here: a fake clock
(progress.StepClock, or a list of readings) drives every throttle and ETA."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from select import select

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest

from mvsim import progress

ROOT = Path(__file__).resolve().parents[1]


class Readings:
    """A clock that returns the given readings, then keeps the last."""

    def __init__(self, *ts: float) -> None:
        self.ts = list(ts)

    def __call__(self) -> float:
        return self.ts.pop(0) if len(self.ts) > 1 else self.ts[0]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run_stage(mode, stream=None, fail=False):
    """A stage of 100 steps reporting 10, 50 and 90 at clock 0, 40 and 80 s; ends at 90 s."""
    err = stream if stream is not None else io.StringIO()
    now = [0.0]
    with progress.recording(lambda: now[0]) as events:
        with contextlib.redirect_stderr(err), contextlib.suppress(RuntimeError):
            with progress.stage("demo", mode, total=100, unit="steps") as st:
                for n, t in ((10, 0.0), (50, 40.0), (90, 80.0)):
                    now[0] = t
                    st.update(n, "x/model")
                st.summary = "all done"
                now[0] = 90.0
                if fail:
                    raise RuntimeError
    return err.getvalue(), events


def test_throttle_follows_its_clock():
    clock = Readings(0.0, 0.05, 0.1, 0.12, 0.25)
    th = progress.Throttle(0.1, clock)
    assert [th.ready() for _ in range(5)] == [True, False, True, False, True]


def test_modes():
    assert progress.mode(True) == "full" and progress.mode(False) == "off"
    assert progress.mode("summary") == "summary"
    with pytest.raises(ValueError, match="progress must be one of"):
        progress.mode("loud")


def test_lines_on_a_log_and_the_end_line():
    """Not a terminal: a line per report once the fake clock has moved LINE_INTERVAL, with
    the units done, the elapsed time, the ETA from the rate since the first report, and
    the status; then the end line with the stage's time and summary; no carriage return."""
    err, events = _run_stage(True)
    lines = err.splitlines()
    assert "\r" not in err and len(lines) == 3, lines  # at 40 and 80 s (not at 0), the end
    # 40 steps in the 40 s since the first report: 50 left at 1 step/s
    assert lines[0] == "demo: 50/100 steps (50%), 40.0 s, ETA ~50.0 s, x/model"
    assert lines[1] == "demo: 90/100 steps (90%), 1 min 20 s, ETA ~10.0 s, x/model"
    assert lines[-1] == "demo: 1 min 30 s; all done"
    assert [e.kind for e in events] == ["start", "update", "update", "update", "end"]


def test_summary_live_off_and_failure():
    assert _run_stage("summary")[0].splitlines()[0].endswith("; all done")
    assert len(_run_stage("summary")[0].splitlines()) == 1
    live = _run_stage("live")[0].splitlines()
    assert len(live) == 2 and not any("all done" in ln for ln in live)  # no end line
    assert _run_stage(False)[0] == ""
    assert _run_stage("summary", fail=True)[0].startswith("demo: failed after ")


def test_a_terminal_gets_a_bar():
    err, _ = _run_stage(True, stream=Terminal())
    assert "\r" in err and "|" in err and "90/100 steps" in err
    assert err.rstrip().splitlines()[-1].endswith("; all done")


def test_a_terminal_of_no_size_gets_a_bar(monkeypatch):
    """A pty that reports 0 × 0 (``script`` run from a pipe, some CI runners): tqdm would
    size the bar to nothing and draw no line at all; it gets 80 × 24 instead."""
    from weakref import WeakSet

    from tqdm import tqdm

    pty = pytest.importorskip("pty")
    # bars other tests left open in this process (a sweep that raised) would stack this
    # one below row 24, where tqdm draws nothing either
    monkeypatch.setattr(tqdm, "_instances", WeakSet())
    master, slave = pty.openpty()
    assert os.get_terminal_size(slave) == (0, 0)
    with os.fdopen(slave, "w") as tty:
        with progress.recording(progress.StepClock()), contextlib.redirect_stderr(tty):
            with progress.stage("demo", True, total=100, unit="steps") as st:
                st.update(50)
                tty.flush()
                os.set_blocking(master, False)  # nothing drawn must fail, not hang
                shown = os.read(master, 65536).decode() if select([master], [], [], 5)[0] else ""
    os.close(master)
    assert "demo:  50%|" in shown and "50/100 steps" in shown


def test_compiles_are_named_while_they_run():
    """jax.monitoring's compile events reach the innermost stage: a note while XLA
    compiles, and the seconds in the end line."""
    with progress.recording() as events, contextlib.redirect_stderr(io.StringIO()) as err:
        with progress.stage("fresh", "full", total=1, compiling="a fresh program") as st:
            jax.jit(lambda x: jnp.sin(x) * 3.25 + 0.125)(jnp.arange(7.0)).block_until_ready()
    notes = [e.text for e in events if e.kind == "note"]
    assert notes and notes[0] == "compiling a fresh program (once per shape)"
    assert st.compile_s > 0 and st.note == ""  # the note ends with the compile
    assert err.getvalue().startswith("fresh: ")


def test_point_line_and_seconds():
    line = progress.point_line("mu=0.1", 65.0, {"train_single": 20.0, "evaluate": 30.25,
                                                "batch_points": 2.0})  # fmt: skip
    assert line == "mu=0.1: 1 min 05 s (train_single 20.0, evaluate 30.2 s)"
    assert progress.seconds(3725) == "1 h 02 min"


# --- the flow meter ------------------------------------------------------------------------


def _solve(rate, stop_at, meter):
    """dy/dt = −rate·y to t = 10, stopped by an event at t = stop_at (when before 10)."""
    term = dfx.ODETerm(lambda t, y, args: -rate * y)
    event = dfx.Event(lambda t, y, args, **kw: stop_at - t,
                      optx.Bisection(rtol=1e-6, atol=1e-6, flip=True))  # fmt: skip
    sol = dfx.diffeqsolve(term, dfx.Heun(), 0.0, 10.0, 0.01, 1.0, event=event,
                          stepsize_controller=dfx.PIDController(rtol=1e-5, atol=1e-5),
                          progress_meter=meter, max_steps=10_000, throw=False)  # fmt: skip
    return sol.ts[0], sol.stats["num_steps"]


RATES = jnp.array([[1.0, 1.0, 2.0], [1.0, 3.0, 1.0]])
STOPS = jnp.array([[1.0, 20.0, 5.0], [3.0, 20.0, 20.0]])  # 20: runs to the end, t = 10


def _metered(rates, stops, compare=True):
    """The nested-vmapped solve with the meter (and without it, if ``compare``), and the
    meter's reports."""
    st = progress.Stage("ode", "live", total=1000, unit="steps", compiling="")
    with progress.recording(progress.StepClock()) as events:
        with progress.solving(st, T=1000, models=rates.size, per_step=2):
            out = jax.jit(jax.vmap(jax.vmap(lambda r, s: _solve(r, s, progress.FlowMeter()))))(
                rates, stops
            )
            ts, steps = jax.block_until_ready(out)
    st.close()
    plain = jax.jit(jax.vmap(jax.vmap(lambda r, s: _solve(r, s, dfx.NoProgressMeter()))))
    ups = [e for e in events if e.kind == "update"]
    return (ts, steps), plain(rates, stops) if compare else None, ups


def test_the_meter_follows_the_slowest_running_model():
    """Under nested vmap with an event that stops models at t = 1, 3, 5: the reports
    follow the slowest model *still running* (diffrax's TqdmProgressMeter would freeze at
    the first stop, t = 1), count the models done and the gradients per model; the solve
    is the same as without the meter."""
    (ts, steps), (ts0, steps0), ups = _metered(RATES, STOPS)
    np.testing.assert_array_equal(steps, steps0)
    np.testing.assert_array_equal(ts, ts0)
    assert len(ups) >= int(steps.max()) - 1  # the fake clock makes the stride one step
    n = [e.n for e in ups]
    assert n == sorted(n) and n[-1] > 900  # GD-equivalent steps of 1000, t/10 each: not
    # frozen at the first stop (t = 1, step 100) as diffrax's TqdmProgressMeter would be
    done = [int(e.text.split(", ")[1].split("/")[0]) for e in ups]
    # done: stopped by the event, or at t = 10 in fewer solver steps than the slowest
    last_running = int((steps == steps.max()).sum())
    assert done[0] == 0 and done[-1] == steps.size - last_running and done == sorted(done)
    assert ups[-1].text.startswith(f"{2 * (int(steps.max()) - 1):,} grads/model")


def test_the_meter_under_sharding(tmp_path):
    """The same reports with the models sharded over 4 forced host devices (the
    callback's arguments are reduced over the batch across them)."""
    code = (
        "import sys; sys.path.insert(0, 'tests'); import jax, numpy as np\n"
        "from jax.sharding import Mesh, NamedSharding, PartitionSpec as P\n"
        "import test_progress as t\n"
        "mesh = Mesh(np.array(jax.devices()), ('s',)); sh = NamedSharding(mesh, P(None, 's'))\n"
        "r = jax.numpy.concatenate([t.RATES, t.RATES[:, :1]], 1)\n"
        "s = jax.numpy.concatenate([t.STOPS, t.STOPS[:, :1]], 1)\n"
        "r, s = jax.device_put(r, sh), jax.device_put(s, sh)\n"
        "(ts, steps), _, ups = t._metered(r, s, compare=False)\n"
        "last = int((steps == steps.max()).sum())\n"
        "print(len(jax.devices()), len(ups), int(steps.max()), f'{8 - last}/8', ups[-1].text)\n"
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    devices, n_ups, max_steps, done, last = r.stdout.split(maxsplit=4)
    assert devices == "4" and int(n_ups) >= int(max_steps) - 1
    assert last.strip().endswith(f"{done} done")
