"""What a run says while it runs: a bar or a line for every stage on stderr, and the meter
that moves a flow stage's bar from inside its solve.

A stage (:func:`stage`) is a step of the pipeline worth watching: sampling the training
set, one training call, the test sets, an NTK row. Its ``progress`` argument
(:data:`Progress`, what ``verify.run``, ``train.train_points`` and the CLI pass down):

- ``True`` or ``'full'``: a live display while it runs and one line when it ends, with
  its time (``mvsim verify``). Live means a tqdm bar when stderr is a terminal, else a
  line every :data:`LINE_INTERVAL` seconds (logs and CI get no carriage returns);
- ``'summary'``: only the line at the end (``mvsim verify --no-progress``);
- ``'live'``: only the live display (a point under a sweep's bar, which then prints one
  line per point: :func:`point_line`);
- ``False`` or ``'off'``: nothing (the library's default).

**The flow's meter.** A flow stage is one ``diffrax.diffeqsolve`` vmapped over its models
(:mod:`mvsim.flow`), so without help its bar can only move at the end. :class:`FlowMeter`
is a diffrax progress meter (``diffeqsolve(progress_meter=...)``): on every solver step it
reduces, across the vmapped models, the step count, how many still run and the flow time
of the slowest of them, and on the steps the host asked for it hands them to
:func:`_flow_report` through a host callback, which returns the step to report next. The
host sizes that stride so that about ten reports a second arrive whatever a step costs
(:data:`BAR_INTERVAL`), so the meter costs a handful of callbacks a second. Neither
``jit`` nor ``vmap`` nor sharding over devices is broken: the callback's arguments are
already reduced over the batch, so it is called once per step asked for, not once per
model. diffrax's own ``TqdmProgressMeter`` does not fit: it follows the slowest model of
the batch *including those an event has stopped*, so a stop rule freezes it at the first
model's stop (``benchmarks/progress.py`` shows it), it counts no gradients or stopped
models, and it refreshes every 20 solver steps whatever they cost.

The meter is compiled in only when a display is live (``train._chunk_fn(meter=True)``):
JAX never writes a program with a host callback into its persistent compilation cache, so
``'summary'`` and ``'off'`` runs keep the very programs they had before.

**Compilation** is named while it runs: ``jax.monitoring`` reports the start and end of
every XLA compile, and a stage shows "compiling <what> (once per shape)" meanwhile (on a
non-terminal stderr, as a line once it has lasted :data:`COMPILE_NOTICE` seconds), and
its end line gives the seconds spent tracing and compiling.

**The ETA** is the stage's remaining units over its rate since its first report after
compiling. For a flow stage the unit is the GD-equivalent step (flow time / η) of the
slowest model still running: a plateau passes fast and an escape slowly, so the ETA is
rough early on; a stop rule may end the stage long before its budget T.

**Tests** replace the clock and listen to every event (:func:`recording`), so that they
check what a run reports without waiting on wall time.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Literal, NamedTuple, TextIO

import diffrax as dfx
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap
from jax.experimental import io_callback

Progress = bool | Literal["full", "summary", "live", "off"]
"""A stage's display: True = 'full', False = 'off' (see the module docstring)."""

_MODES = {True: "full", False: "off", "full": "full", "summary": "summary", "live": "live",
          "off": "off"}  # fmt: skip

BAR_INTERVAL = 0.1
"""Seconds between a bar's redraws, and between the flow meter's reports (~10 a second)."""

LINE_INTERVAL = 10.0
"""Seconds between the periodic lines of a live stage on a non-terminal stderr."""

COMPILE_NOTICE = 1.0
"""A compile that has lasted this many seconds is announced on a non-terminal stderr."""

clock: Callable[[], float] = time.monotonic
"""The time every stage, throttle and ETA reads (:func:`recording` swaps in a fake one)."""


def mode(progress: Progress) -> str:
    """'full' | 'summary' | 'live' | 'off' for a :data:`Progress` value."""
    try:
        return _MODES[progress]
    except (KeyError, TypeError):
        raise ValueError(f"progress must be one of {sorted(map(str, _MODES))}, got "
                         f"{progress!r}") from None  # fmt: skip


class Throttle:
    """True at most once per ``interval`` seconds of ``clock`` (default: the module's
    :data:`clock`, read at each call so that a test's fake clock applies)."""

    def __init__(self, interval: float, clock_fn: Callable[[], float] | None = None) -> None:
        self.interval, self._clock, self.last = interval, clock_fn, None

    def ready(self) -> bool:
        now = (self._clock or clock)()
        if self.last is None or now - self.last >= self.interval:
            self.last = now
            return True
        return False


class Event(NamedTuple):
    """One thing a stage reported (what :func:`recording` collects)."""

    kind: str  # 'start' | 'update' | 'note' (compiling) | 'end'
    stage: str  # the stage's description
    n: float  # units done (GD-equivalent steps, test points, ...)
    total: float | None
    text: str  # the update's status, the note, or the end line
    t: float  # the clock


_LISTENERS: list[Callable[[Event], None]] = []
_STAGES: list[Stage] = []  # the open stages, innermost last: compile events go to it
_LOCK = threading.Lock()


@contextlib.contextmanager
def recording(clock_fn: Callable[[], float] | None = None) -> Iterator[list[Event]]:
    """Collect every stage event of the block, in order, with ``clock_fn`` (if given) as
    the clock of every stage, throttle and ETA meanwhile. What a test uses to check a run's
    progress without wall time: a clock that advances by :data:`LINE_INTERVAL` at each
    read (:class:`StepClock`) lets every report through, and the flow's stride falls to
    one solver step."""
    global clock
    events: list[Event] = []
    old = clock
    _LISTENERS.append(events.append)
    if clock_fn is not None:
        clock = clock_fn
    try:
        yield events
    finally:
        _LISTENERS.remove(events.append)
        clock = old


class StepClock:
    """A fake clock for :func:`recording`: each read is ``step`` seconds after the last."""

    def __init__(self, step: float = LINE_INTERVAL) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def seconds(s: float) -> str:
    """'0.4 s', '22.1 s', '3 min 05 s', '1 h 02 min'."""
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


class Stage:
    """One stage's display (made by :func:`stage`). ``update``/``advance`` report units
    done, with a status for the postfix; ``summary`` is what its end line says besides
    its time."""

    def __init__(self, desc: str, progress: Progress, total: float | None, unit: str,
                 compiling: str) -> None:  # fmt: skip
        self.desc, self.mode, self.total, self.unit = desc, mode(progress), total, unit
        self.compiling = compiling
        self.n, self.status, self.summary, self.note = 0.0, "", "", ""
        self.t0 = clock()
        self.go: tuple[float, float] | None = None  # (time, n) at the first report: ETA's origin
        self.compile_s = 0.0
        self.live = self.mode in ("full", "live")
        self._ticking: threading.Event | None = None  # set: the compile ticker stops
        self._bar = None
        stream = sys.stderr
        if self.live and _is_tty(stream):
            from tqdm import tqdm

            # a pty of no size (script, some CI) would make tqdm draw nothing: 80 × 24
            sized = _size(stream) > (0, 0)
            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=stream,
                             dynamic_ncols=sized, ncols=None if sized else 80,
                             nrows=None if sized else 24, mininterval=0,
                             bar_format=_BAR)  # fmt: skip
        self._draw = Throttle(BAR_INTERVAL if self._bar is not None else LINE_INTERVAL)
        self._draw.ready()  # the first periodic line comes an interval in, not at once
        self._emit("start", "")

    # --- reports -----------------------------------------------------------------------

    def update(self, n: float, status: str = "") -> None:
        """``n`` units done in all (``status``: what else the postfix says)."""
        now = clock()
        if self.go is None:
            self.go = (now, n)
        self.n, self.status = n, status
        self._emit("update", status)
        if self.live and self._draw.ready():
            self._render()

    def advance(self, dn: float = 1, status: str = "") -> None:
        """``dn`` more units done."""
        self.update(self.n + dn, status)

    def eta(self) -> float | None:
        """Seconds left at the rate since the first report (None before two reports)."""
        if self.go is None or self.total is None or not self.go[1] < self.n < self.total:
            return None
        return (self.total - self.n) * (clock() - self.go[0]) / (self.n - self.go[1])

    def line(self) -> str:
        """The periodic line: where the stage is, its time, ETA and status."""
        where = self.note or ""
        if not where and self.total:
            where = f"{self.n:,.0f}/{self.total:,.0f} {self.unit} ({self.n / self.total:.0%})"
        elif not where:
            where = f"{self.n:,.0f} {self.unit}"
        return f"{self.desc}: {where}, {seconds(clock() - self.t0)}{self._postfix()}"

    def _postfix(self) -> str:
        eta = self.eta()
        parts = [f"ETA ~{seconds(eta)}"] if eta is not None and not self.note else []
        return "".join(", " + p for p in parts + ([self.status] if self.status else []))

    def _render(self) -> None:
        if self._bar is None:
            _write(self.line())
            return
        self._bar.n = min(round(self.n), self._bar.total or round(self.n))
        self._bar.set_description_str(self.desc + (f" — {self.note}" if self.note else ""),
                                      refresh=False)  # fmt: skip
        self._bar.set_postfix_str(self._postfix().lstrip(", "), refresh=False)
        self._bar.refresh()

    def _emit(self, kind: str, text: str) -> None:
        ev = Event(kind, self.desc, self.n, self.total, text, clock())
        for fn in list(_LISTENERS):
            fn(ev)

    # --- compilation (jax.monitoring, on the thread that compiles) ----------------------

    def compile_started(self) -> None:
        self.note = f"compiling {self.compiling or 'XLA programs'} (once per shape)"
        self._emit("note", self.note)
        if self.live:
            if self._bar is not None:
                self._render()
            self._ticking = threading.Event()
            threading.Thread(target=self._tick, args=(self._ticking,), daemon=True).start()

    def _tick(self, stop: threading.Event) -> None:
        """While XLA compiles (no report comes): on a log, one line once the compile has
        lasted COMPILE_NOTICE seconds; on a terminal, the bar's clock every second."""
        while not stop.wait(COMPILE_NOTICE):
            if self._bar is None:
                _write(self.line())
                return
            self._render()

    def compiled(self, secs: float, done: bool) -> None:
        self.compile_s += secs
        if done:
            self._stop_ticking()
            self.note = ""

    def _stop_ticking(self) -> None:
        if self._ticking is not None:
            self._ticking.set()
            self._ticking = None

    # --- the end -----------------------------------------------------------------------

    def close(self, failed: bool = False) -> None:
        self._stop_ticking()
        if self._bar is not None:
            self._bar.close()
        t = clock() - self.t0
        c = f" (compiling {seconds(self.compile_s)})" if self.compile_s >= 0.1 else ""
        if failed:
            end = f"{self.desc}: failed after {seconds(t)}"
        else:
            end = f"{self.desc}: {seconds(t)}{c}" + (f"; {self.summary}" if self.summary else "")
        self._emit("end", end)
        if self.mode in ("full", "summary"):
            _write(end)


_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}{postfix}]"


@contextlib.contextmanager
def stage(
    desc: str,
    progress: Progress,
    *,
    total: float | None = None,
    unit: str = "",
    compiling: str = "",
) -> Iterator[Stage]:
    """A stage of ``total`` ``unit`` named ``desc``, displayed as ``progress`` says; its
    end line comes when the block ends (or says it failed, if the block raised).
    ``compiling``: what a compile during it compiles ('the flow solver')."""
    _listen_to_compiles()
    st = Stage(desc, progress, total, unit, compiling)
    with _LOCK:
        _STAGES.append(st)
    failed = True
    try:
        yield st
        failed = False
    finally:
        with _LOCK:
            _STAGES.remove(st)
        st.close(failed)


def point_line(label: str, secs: float, timing: dict[str, float]) -> str:
    """One sweep point's line: its label, its time and its stages' times."""
    parts = [f"{k} {v:.1f}" for k, v in timing.items() if k not in ("total", "batch_points")]
    return f"{label}: {seconds(secs)}" + (f" ({', '.join(parts)} s)" if parts else "")


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _size(stream: TextIO) -> tuple[int, int]:
    """The terminal's (columns, lines); zeros when it reports none."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return 0, 0
    return (size.columns, size.lines) if size.columns and size.lines else (0, 0)


def _write(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)  # above any open bar, not through it


# --- compile events --------------------------------------------------------------------

_COMPILE = "/jax/core/compile/backend_compile_duration"
_COMPILE_PARTS = (_COMPILE, "/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration")  # fmt: skip
_listening = False


def _listen_to_compiles() -> None:
    """Subscribe (once per process) to JAX's compile events: a backend compile records its
    start as a scalar and its length as a duration; tracing and lowering their lengths."""
    global _listening
    if _listening:
        return
    _listening = True
    jax.monitoring.register_scalar_listener(_on_compile_start)
    jax.monitoring.register_event_duration_secs_listener(_on_compile_part)


def _innermost() -> Stage | None:
    with _LOCK:
        return _STAGES[-1] if _STAGES else None


def _on_compile_start(event: str, value: float, **_: object) -> None:
    st = _innermost() if event == _COMPILE else None
    if st is not None:
        st.compile_started()


def _on_compile_part(event: str, secs: float, **_: object) -> None:
    st = _innermost() if event in _COMPILE_PARTS else None
    if st is not None:
        st.compiled(secs, done=event == _COMPILE)


# --- the flow meter --------------------------------------------------------------------

_NEVER = np.iinfo(np.int32).max


class _Solve:
    """A running flow stage as the meter's host side sees it."""

    def __init__(self, st: Stage, T: int, models: int, per_step: int) -> None:
        self.st, self.T, self.models, self.per_step = st, T, models, per_step
        self.last: tuple[float, int] | None = None
        self.stride = 1

    def report(self, it: int, frac: float, running: int) -> int:
        """One report (``it`` solver steps taken by the models still running, ``running``
        of them, the slowest at ``frac`` of its flow time); returns the next step to
        report at."""
        now = clock()
        if self.last is not None and it > self.last[1]:
            per_step = (now - self.last[0]) / (it - self.last[1])
            ideal = BAR_INTERVAL / per_step if per_step > 0 else float("inf")
            # at most double: a stride sized on a plateau must not go quiet at an escape
            self.stride = int(max(1, min(ideal, 2 * self.stride)))
        self.last = (now, it)
        done = self.models - running
        self.st.update(frac * self.T, f"{it * self.per_step:,} grads/model, "
                       f"{done}/{self.models} done")  # fmt: skip
        return it + self.stride


_SOLVES: list[_Solve] = []


@contextlib.contextmanager
def solving(st: Stage, *, T: int, models: int, per_step: int) -> Iterator[None]:
    """Route :class:`FlowMeter`'s reports to stage ``st`` while the block runs (it must
    wait for the solve's result: the reports arrive while the solve runs). ``T``: the
    budget in GD steps; ``models``: how many the call trains; ``per_step``: gradient
    evaluations per solver step."""
    s = _Solve(st, T, models, per_step)
    with _LOCK:
        _SOLVES.append(s)
    try:
        yield
    finally:
        with _LOCK:
            _SOLVES.remove(s)


def _flow_report(it: np.ndarray, frac: np.ndarray, running: np.ndarray) -> np.ndarray:
    """The meter's host callback (on an XLA thread): the next solver step to report at."""
    with _LOCK:
        s = _SOLVES[-1] if _SOLVES else None
    if s is None or not s.st.live:
        return np.int32(_NEVER)
    scalar = lambda a: np.asarray(a).reshape(-1)[0]  # noqa: E731
    nxt = s.report(int(scalar(it)), float(scalar(frac)), int(scalar(running)))
    return np.int32(min(nxt, _NEVER))


def _keep(_: np.ndarray) -> None:
    """Reads the meter's final state, so that the meter is not dead code to XLA."""


@custom_vmap
def unvmap_sum(x: jax.Array) -> jax.Array:
    """The sum of ``x`` over every vmapped axis, unbatched (equinox has max, any, all)."""
    return x


@unvmap_sum.def_vmap
def _unvmap_sum_rule(axis_size: int, in_batched: list[bool], x: jax.Array):
    (batched,) = in_batched
    return unvmap_sum(x.sum(0) if batched else x * axis_size), False


class _MeterState(eqx.Module):
    steps: jax.Array  # solver steps this model has taken (frozen once it stopped)
    next_at: jax.Array  # the step at which the host wants its next report


class FlowMeter(dfx.AbstractProgressMeter):
    """The flow stage's progress meter (see the module docstring). Under vmap the models
    still running are those whose step count equals the largest: diffrax's vmapped loop
    steps all models together and freezes each one's state once it has stopped."""

    def init(self) -> _MeterState:
        return _MeterState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def step(self, state: _MeterState, progress: jax.Array) -> _MeterState:
        it = eqxi.unvmap_max(state.steps)
        running = state.steps == it
        slowest = -eqxi.unvmap_max(-jnp.where(running, progress, 1.0))
        n_running = unvmap_sum(running.astype(jnp.int32))
        nxt = eqxi.unvmap_max(state.next_at)
        # The predicate is unbatched, so this stays a cond (no call on skipped steps); a
        # pure callback, as diffrax's meters use, since an io_callback cannot sit in a
        # vmapped cond. Its result feeds the state, which close() reads.
        nxt = jax.lax.cond(
            eqxi.nonbatchable(it >= nxt),
            lambda: jax.pure_callback(_flow_report, jax.ShapeDtypeStruct((), jnp.int32), it,
                                      slowest, n_running, vmap_method="expand_dims"),
            lambda: nxt,
        )  # fmt: skip
        return _MeterState(state.steps + 1, nxt)

    def close(self, state: _MeterState) -> None:
        io_callback(_keep, None, eqxi.unvmap_max(state.next_at), ordered=False)
