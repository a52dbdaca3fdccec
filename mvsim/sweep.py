"""Sweeps: the verify pipeline over a grid of config values, resumable, stored in SQLite.

A grid is a mapping {field: [values]} over any config field (the names ``--set`` takes);
its points are the Cartesian product of the axes, each resolved with
:func:`mvsim.config.make_config` (so a preset's derived fields follow the swept ones, e.g.
N follows k on the demo preset). Every point's config is built and validated before
anything runs: a bad field, value or combination is a :class:`ConfigError` naming the
field, its allowed range and the point.

Each point runs :func:`mvsim.verify.run` with the chosen claims and
:func:`mvsim.claims.evaluate_all`, and is written to the store (:mod:`mvsim.store`) in one
transaction once complete, by this process alone. Points already stored (same config
hash, same claims) are skipped, so an interrupted sweep restarted with the same command
recomputes nothing that finished. A point that raises is stored as failed and retried by
the next run. Points of one shape (fields that change array shapes) run next to each
other, so consecutive points reuse the trainer's compiled program (:mod:`mvsim.train`
traces η, T, the stop thresholds and the flow's tolerances, and caches the rest).

Executors (:mod:`mvsim.executor`): the points run in this process, or as tasks of a Dask
cluster (``executor='dask'``; :mod:`mvsim.cluster`), which balances them over its
workers and retries those of a worker that died. Devices: within a point,
:func:`mvsim.train.train` shards the seed axis over all local devices
(:mod:`mvsim.devices`). With several processes under ``jax.distributed`` (see
:func:`mvsim.devices.initialize_distributed`) process i takes every n-th point into its
own store file, a static split: docs/sweeps.md says which to use when.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mvsim.config import FIELD_SECTION, Config, ConfigError, coerce, make_config
from mvsim.progress import point_line
from mvsim.resources import PeakRSS

# Fields that change an array shape or a compiled loop length: points that agree on all of
# them share compiled code. (Any other field is a value traced or closed over.)
SHAPE_FIELDS = (
    "k", "d", "P", "N", "C_p", "max_noisy", "m", "q", "seeds", "chunk",
    "kd_students", "avg_members", "avg_seeds", "n_test_multi", "n_test_single", "dtype",
    "n_log", "stop",
)  # fmt: skip

_PAIR_GROUP = re.compile(r"\(([^()]*)\)")


def _is_pair(name: str) -> bool:
    return isinstance(Config().flat()[name], tuple)  # the defaults carry the field types


def parse_axis(item: str) -> tuple[str, list[Any]]:
    """Parse one ``--grid`` item ``field=v1,v2,...`` into (field, typed values).

    Pair-valued fields (``rho``, ``Gamma``, ...) take ``(lo,hi)`` groups, e.g.
    ``rho=(0.01,0.02),(0.02,0.04)``, or ``;``-separated pairs; a bare number v means (v, v).
    """
    if "=" not in item:
        raise ConfigError(
            item, item, "a --grid item must look like field=v1,v2,..., e.g. mu=0.05,0.1"
        )
    name, _, text = item.partition("=")
    name = name.strip()
    if "." in name:  # section.field, as --set accepts
        name = name.split(".", 1)[1]
    if name not in FIELD_SECTION:
        raise ConfigError(name, text, f"unknown config field; known: {sorted(FIELD_SECTION)}")
    text = text.strip()
    if _is_pair(name):
        if "(" in text:
            raw = _PAIR_GROUP.findall(text)
            if _PAIR_GROUP.sub("", text).strip(" ,;") or not raw:
                raise ConfigError(name, text, "pair values must be (lo,hi) groups: (a,b),(c,d)")
        elif ";" in text:
            raw = text.split(";")
        elif "," in text:
            raise ConfigError(
                name, text, "is a pair field: give values as (lo,hi),(lo,hi) or lo,hi;lo,hi"
            )
        else:
            raw = [text]
    else:
        raw = text.split(",")
    return name, _axis_values(name, raw)


def _axis_values(name: str, raw: Sequence[Any]) -> list[Any]:
    values = []
    for v in raw:
        if isinstance(v, str) and not v.strip():
            raise ConfigError(name, v, "empty value in the grid (e.g. 'mu=0.1,,0.2' or 'mu=')")
        values.append(coerce(name, v))
    if not values:
        raise ConfigError(name, list(raw), "an axis needs at least one value")
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(name, values, "the values of an axis must be distinct")
    return values


def parse_grid(items: Iterable[str]) -> dict[str, list[Any]]:
    """Parse ``--grid`` items into {field: values}; a field given twice is an error."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, values = parse_axis(item)
        if name in grid:
            raise ConfigError(name, item, "this axis is given twice")
        grid[name] = values
    return grid


def load_grid(path: str | Path) -> dict[str, list[Any]]:
    """Read a grid file (TOML or JSON): ``{field: [values]}``, at top level or under ``grid``.

    Pair-valued fields take a list of pairs (``rho = [[0.01, 0.02], [0.02, 0.04]]``).
    """
    path = Path(path)
    text = path.read_text()
    raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    if isinstance(raw, Mapping) and isinstance(raw.get("grid"), Mapping):
        raw = raw["grid"]
    if not isinstance(raw, Mapping):
        raise ConfigError("grid", str(path), "a grid file holds {field: [values, ...]}")
    grid: dict[str, list[Any]] = {}
    for name, values in raw.items():
        if name not in FIELD_SECTION:
            raise ConfigError(name, values, f"unknown config field; known: {sorted(FIELD_SECTION)}")
        if not isinstance(values, list):
            raise ConfigError(name, values, "a grid axis must be a list of values")
        grid[name] = _axis_values(name, values)
    return grid


def merge_grids(*grids: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
    """Union of grids; an axis in two of them is an error."""
    out: dict[str, list[Any]] = {}
    for g in grids:
        for name, values in g.items():
            if name in out:
                raise ConfigError(name, values, "this axis is given twice (grid file and --grid)")
            out[name] = list(values)
    return out


@dataclass(frozen=True)
class Point:
    """One grid point: the swept values and the resolved, validated config."""

    values: dict[str, Any]
    cfg: Config
    hash: str

    def shape_key(self) -> tuple:
        flat = self.cfg.flat()
        return tuple(repr(flat[f]) for f in SHAPE_FIELDS)


def build_points(
    preset: str,
    overrides: Mapping[str, Any],
    grid: Mapping[str, list[Any]],
    claims: Sequence[str] | None = None,
) -> list[Point]:
    """Every point of the grid (product of the axes) as a validated config.

    Raises ConfigError before any compute: empty grid, a swept field also fixed by
    ``overrides``, any point whose config is invalid, whose learner cannot be loaded or
    returns no (n, k) logits, or that has too few seeds for one of ``claims`` (default:
    all; the message names the point).
    Points that resolve to the same config are kept once.
    """
    from mvsim.learners import check
    from mvsim.store import config_hash
    from mvsim.verify import check_claim_seeds

    if not grid:
        raise ConfigError(
            "grid", {}, "empty: give at least one --grid field=v1,v2,... or a --grid-file"
        )
    both = sorted(set(grid) & set(overrides))
    if both:
        raise ConfigError(both[0], overrides[both[0]], "is both swept (--grid) and fixed (--set)")
    names = list(grid)
    points: dict[str, Point] = {}
    for combo in itertools.product(*(grid[n] for n in names)):
        values = dict(zip(names, combo, strict=True))
        try:
            cfg = make_config(preset, {**overrides, **values})
            check_claim_seeds(cfg, claims)
            check(cfg.model, cfg.data.k, cfg.data.d, cfg.data.P)  # import path, output shape
        except ConfigError as e:
            raise ConfigError(e.field, e.value, f"{e.allowed} (at grid point {values})") from None
        h = config_hash(cfg)
        points.setdefault(h, Point(values, cfg, h))
    return list(points.values())


def check_claims(ids: Sequence[str] | None) -> list[str] | None:
    """Validate a claim subset against the registry (None = all claims)."""
    from mvsim.claims import CLAIMS

    if ids is None:
        return None
    known = [c.id for c in CLAIMS]
    bad = sorted(set(ids) - set(known))
    if bad or not ids:
        raise ConfigError("--claims", ",".join(bad), f"must be a non-empty subset of {known}")
    return [c for c in known if c in ids]  # registry order


class PointsFailed(RuntimeError):
    """Points of a sweep failed (stored as failed) where the caller needs them all."""


@dataclass
class SweepSummary:
    """What a sweep did: points computed now (stored or failed), skipped (already
    stored), failed (stored as failed), rows written, wall seconds, and the seconds its
    points spent compiling (summed over the processes that ran them)."""

    points: int
    computed: int
    skipped: int
    rows: int
    seconds: float
    failed: int = 0
    compile_seconds: float = 0.0


def run_point(cfg: Config, claims: Sequence[str] | None) -> dict[str, Any]:
    """Run verify on one config. Returns claims (ClaimResult dicts), mechanism, timing,
    seconds and the peak resident memory (bytes)."""
    return run_points([cfg], claims)[0]


def run_points(
    cfgs: Sequence[Config], claims: Sequence[str] | None, progress: bool | str = False
) -> list[dict[str, Any]]:
    """Run verify on configs that share a :func:`mvsim.verify.batch_key`, all of them in
    one compiled call per stage (:func:`mvsim.verify.run_many`). Returns per config what
    :func:`run_point` does; ``seconds`` is the batch's wall time over its points, and
    ``timing['compile']`` the batch's seconds spent compiling
    (:class:`mvsim.compilation.CompileTime`). ``progress``: its stages' display
    (:mod:`mvsim.progress`)."""
    from mvsim import claims as claims_mod
    from mvsim import report, verify
    from mvsim.compilation import CompileTime

    ids = list(claims) if claims is not None else None
    t0 = time.perf_counter()
    with PeakRSS() as mem, CompileTime() as compiling:
        ms = verify.run_many(cfgs, claims=ids, progress=progress)
    outs = [
        {"claims": [r.to_dict() for r in claims_mod.evaluate_all(m, ids)],
         "mechanism": claims_mod.mechanism(m),
         "timing": {**m.timing, "compile": compiling.seconds},
         "curves": report.curves(m)}
        for m in ms
    ]  # fmt: skip
    seconds = (time.perf_counter() - t0) / len(cfgs)
    for o in outs:
        o["seconds"] = seconds
        o["peak_rss_bytes"] = mem.peak  # the batch's: its points share the arrays
    return outs


def default_batch_points(backend: str | None = None) -> int:
    """How many same-shape points :func:`run_sweep` trains in one call by default: 1 on
    CPU, where one point's seeds already keep the cores busy at the demo's sizes and
    three points together ran 15% slower per model-step (benchmarks/RESULTS.md), and 16
    on an accelerator, which one point's few small models leave mostly idle (a guess:
    not yet measured on a GPU). ``--batch-points`` overrides it. ``backend``: of the
    processes that run the points (default: this one's)."""
    if backend is None:
        import jax

        backend = jax.default_backend()
    return 1 if backend == "cpu" else 16


def batches(
    todo: Sequence[tuple[Point, list[str]]], batch_points: int
) -> list[list[tuple[Point, list[str]]]]:
    """Split (point, missing claims) pairs into runs of at most ``batch_points`` points
    that can share a compiled call (same :func:`mvsim.verify.batch_key`, same claims),
    points of one shape next to each other (so that consecutive calls reuse compiled
    code), shapes in the order they first appear in ``todo`` (k-scaling's increasing k)."""
    from mvsim.verify import batch_key

    first: dict[tuple, int] = {}
    for p, _ in todo:
        first.setdefault(p.shape_key(), len(first))
    groups: dict[tuple, list[tuple[Point, list[str]]]] = {}
    for p, missing in sorted(todo, key=lambda pm: first[pm[0].shape_key()]):
        groups.setdefault((batch_key(p.cfg), tuple(missing)), []).append((p, missing))
    n = batch_points
    return [g[i : i + n] for g in groups.values() for i in range(0, len(g), n)]


# A forward pass on one test point against training on one sample for a whole run (the
# flow's few hundred steps, each a forward and backward pass): about 1/300, from the
# stage times of the committed demo grid (evaluation 1.6× training at the demo's 240k
# test points and 620 samples).
EVAL_SHARE = 1 / 300


def point_cost(cfg: Config, claims: Sequence[str] | None = None) -> float:
    """A point's cost in relative units, for the sweep's ETA and the order of its tasks:
    the multiply-adds of one forward pass of one model on one sample (k·m·P·d for the
    patch CNN) times the training samples of every trained model plus
    :data:`EVAL_SHARE` of its test points. A rough model (it ignores how long each model
    trains): against the committed k-scaling runs it puts k = 40 at 31× k = 3, measured
    51×; the ETA rescales it by the rate measured as points finish."""
    from mvsim.verify import NEEDS

    D, M, K = cfg.data, cfg.model, cfg.distill
    needs = set().union(*(NEEDS[c] for c in (claims or NEEDS)))
    models = cfg.verify.seeds + 3 * K.kd_students * ("students" in needs)
    models += K.avg_seeds * K.avg_members * ("average" in needs)
    n_test = cfg.verify.n_test_multi + cfg.verify.n_test_single
    return float(D.k * M.m * D.P * D.d * models * (D.N + EVAL_SHARE * n_test))


def run_sweep(
    points: Sequence[Point],
    store: str | Path,
    claims: Sequence[str] | None = None,
    *,
    batch_points: int | None = None,
    progress: bool = True,
    log: Any = None,
    executor: str | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    compile_cache: bool = True,
) -> SweepSummary:
    """Run every point not yet in ``store`` and write each one when it completes.

    Args:
      points: from :func:`build_points`.
      store: SQLite path (created if missing). This process (the driver) is its only
        writer: one transaction per point as its result arrives.
      claims: claim ids (None = all); a stored point missing some of them runs only those.
      batch_points: at most this many points that differ only in fields that keep the
        compiled code (μ, ρ, Γ, σ_0, η, ...; :data:`mvsim.verify.BATCHABLE`) are trained
        together, vmapped with their seeds, as one task; None: :func:`default_batch_points`
        of the backend that runs them. A batch that fails is rerun point by point.
      progress: a tqdm bar over points with its ETA (weighted by :func:`point_cost`), a
        point's stages summarised in one line when it is done and, on the local executor,
        shown under the bar as they run (:mod:`mvsim.progress`); else one line per
        finished point on ``log``.
      log: a callable taking a str (default: print).
      executor: 'local' (this process) or 'dask' (each batch a task of a Dask cluster,
        :mod:`mvsim.executor`); None: 'dask' when a scheduler is given (or in
        ``$MVSIM_SCHEDULER``), else 'local'.
      scheduler: the Dask scheduler's address, or a ``distributed.Client``; None with
        'dask': a :func:`mvsim.cluster.local_cluster` of ``workers`` processes.
      compile_cache: Dask workers use the persistent compilation cache
        (:func:`mvsim.compilation.enable_cache`).

    A point whose run raises (divergence, out of memory, workers that died) is stored as
    failed with its error text (:func:`mvsim.store.write_failure`) and the sweep goes on;
    a rerun retries it. A worker whose mvsim, jax or config-hash code differs from this
    process's stops the sweep before any point runs (:class:`mvsim.executor.WorkerMismatch`).
    """
    from mvsim import executor as ex_mod
    from mvsim import store as st
    from mvsim.claims import CLAIMS

    if batch_points is not None and batch_points < 1:
        raise ConfigError("batch_points", batch_points, "must be ≥ 1")
    log = log or print
    wanted = list(claims) if claims is not None else [c.id for c in CLAIMS]
    client = not isinstance(scheduler, str | None)
    if not client and ex_mod.resolve_executor(executor, scheduler) == "local":
        points, store = _process_share(points, store)
    t_start = time.perf_counter()
    conn = st.connect(store)
    try:
        have = st.stored_claims(conn)
        todo = [(p, [c for c in wanted if c not in have.get(p.hash, set())]) for p in points]
        todo = [(p, missing) for p, missing in todo if missing]
        skipped = len(points) - len(todo)
        if skipped:
            log(f"sweep: {skipped}/{len(points)} points already in {store}, skipped")
        if not todo:
            return SweepSummary(len(points), 0, skipped, 0, time.perf_counter() - t_start)
        ex = ex_mod.start(executor, scheduler, workers=workers, compile_cache=compile_cache,
                          progress="live" if progress else False)  # fmt: skip
        try:
            backend = ex.check_workers(log) if ex.name == "dask" else None
            log(f"sweep: {len(todo)} points on {ex.describe()}")
            bar = _Progress(todo, progress, log)
            try:
                done = _drive(ex, conn, todo, batch_points or default_batch_points(backend),
                              bar)  # fmt: skip
            finally:  # an exception (a dead cluster, Ctrl-C) must not leave the bar drawn
                bar.close()
        finally:
            ex.close()
    finally:
        conn.close()
    return SweepSummary(len(points), len(todo), skipped, done["rows"],
                        time.perf_counter() - t_start, done["failed"], done["compile"])  # fmt: skip


def _process_share(points: Sequence[Point], store: str | Path) -> tuple[list[Point], Path]:
    """Under ``jax.distributed`` (several processes) process i's share of the points,
    every n-th, and its own store file, since SQLite's locking is not to be trusted on a
    shared network file system; else all points and ``store``."""
    import jax

    if jax.process_count() == 1:
        return list(points), Path(store)
    i, n = jax.process_index(), jax.process_count()
    return list(points)[i::n], Path(store).with_suffix(f".proc{i}{Path(store).suffix}")


def _drive(ex: Any, conn: Any, todo: list, batch_points: int, bar: _Progress) -> dict:
    """Submit every batch to ``ex`` and store each outcome as it comes: a point's rows, or
    its failure. A failed batch of several points is resubmitted point by point, so that
    one bad point fails alone. Locally the batches run in order; on a cluster the
    costliest start first, so that none is left to run alone at the end."""
    from mvsim import store as st

    cost = {p.hash: point_cost(p.cfg, missing) for p, missing in todo}
    todo_batches = batches(todo, batch_points)
    if ex.name == "dask":
        todo_batches.sort(key=lambda b: -_cost(b, cost))
    for batch in todo_batches:
        ex.submit(batch, batch[0][1], _cost(batch, cost))
    rows = failed = 0
    compile_s = 0.0
    for oc in ex.outcomes():
        if oc.error is not None and len(oc.batch) > 1:
            bar.log(f"sweep: a batch of {len(oc.batch)} points failed, rerunning its points "
                    f"one by one: {oc.error.splitlines()[-1]}")  # fmt: skip
            for item in oc.batch:
                ex.submit([item], item[1], cost[item[0].hash])
            continue
        if oc.error is not None:
            p, missing = oc.batch[0]
            st.write_failure(conn, p.cfg, p.values, missing, oc.error,
                             started_at=oc.started_at, env=oc.env, worker=oc.worker)  # fmt: skip
            failed += 1
        else:
            for (p, _), out in zip(oc.batch, oc.outs, strict=True):
                rows += st.write_point(
                    conn, p.cfg, p.values, out["claims"], out["mechanism"],
                    seconds=out["seconds"], timing=out["timing"], started_at=oc.started_at,
                    env=oc.env, peak_rss_bytes=out["peak_rss_bytes"], curves=out.get("curves"),
                )  # fmt: skip
            compile_s += oc.outs[0]["timing"]["compile"]
        bar.finished(oc, _cost(oc.batch, cost))
    return {"rows": rows, "failed": failed, "compile": compile_s}


def _cost(batch: list, cost: Mapping[str, float]) -> float:
    return sum(cost[p.hash] for p, _ in batch)


class _Progress:
    """The sweep's progress: points finished across all workers, and an ETA from the
    remaining points' :func:`point_cost` at the rate measured so far (k-scaling's points
    differ 20× in cost, so a count alone would mislead). A tqdm bar, or one line per
    outcome on ``log``."""

    def __init__(self, todo: list, bar: bool, log: Any) -> None:
        self.total = len(todo)
        self.cost_left = sum(point_cost(p.cfg, m) for p, m in todo)
        self.cost_done = 0.0
        self.done = 0
        self._log = log
        self.t0 = time.perf_counter()
        self.bar = None
        if bar:
            from tqdm.auto import tqdm  # only when drawn: it warns without ipywidgets

            self.bar = tqdm(total=self.total, desc="sweep", unit="point",
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} points "
                            "[{elapsed}{postfix}]")  # fmt: skip

    def log(self, text: str) -> None:
        (self.bar.write if self.bar is not None else self._log)(text)

    def finished(self, oc: Any, cost: float) -> None:
        n = len(oc.batch)
        self.done += n
        self.cost_done += cost
        self.cost_left -= cost
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.cost_done * self.cost_left if self.cost_done else float("nan")
        label = _short(oc.batch[0][0].values) + (f" (+{n - 1})" if n > 1 else "")
        if oc.error is not None:
            what = f"FAILED ({oc.error.splitlines()[-1]})"
        else:
            t = oc.outs[0]
            what = f"{t['seconds'] * n:.1f} s, compile {t['timing']['compile']:.1f} s"
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix_str(f"ETA {_clock(eta)}, last: {label}")
            if oc.error is not None:
                self.bar.write(f"sweep: {label}: {what}")
            else:  # the point's stages, summarised (#28)
                self.bar.write(point_line(label, t["seconds"] * n, t["timing"]))
            return
        where = "" if oc.worker == "local" else f" on {oc.worker}"
        self._log(f"sweep: {self.done}/{self.total} points, {label}: {what}{where}, "
                  f"ETA {eta:.0f} s")  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    """h:mm:ss or m:ss; '?' before anything finished."""
    if seconds != seconds:  # NaN
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def _short(values: Mapping[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )
