"""Sweeps: the verify pipeline over a grid of config values, resumable, stored in SQLite.

A grid is a mapping {field: [values]} over any config field (the names ``--set`` takes);
its points are the Cartesian product of the axes, each resolved with
:func:`mvsim.config.make_config` (so a preset's derived fields follow the swept ones, e.g.
N follows k on the demo preset). Every point's config is built and validated before
anything runs: a bad field, value or combination is a :class:`ConfigError` naming the
field, its allowed range and the point.

Each point runs :func:`mvsim.verify.run` with the chosen claims and
:func:`mvsim.claims.evaluate_all`, and is written to the store (:mod:`mvsim.store`) in one
transaction once complete. Points already stored (same config hash, same claims) are
skipped, so an interrupted sweep restarted with the same command recomputes nothing that
finished. Points are run in shape order (fields that change array shapes), so consecutive
points reuse the trainer's compiled step (:func:`mvsim.train.train` caches it per shape).

Devices: within a point, :func:`mvsim.train.train` shards the seed axis over all local
devices (:mod:`mvsim.devices`). With several processes (``jax.distributed``; see
:func:`mvsim.devices.initialize_distributed`) process i takes every n-th point.
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
from mvsim.resources import PeakRSS

# Fields that change an array shape or a compiled loop length: points that agree on all of
# them share compiled code. (Any other field is a value traced or closed over.)
SHAPE_FIELDS = (
    "k", "d", "P", "N", "C_p", "max_noisy", "m", "q", "seeds", "T", "chunk", "kd_T",
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


@dataclass
class SweepSummary:
    """What a sweep did: points computed now, skipped (already stored), rows written."""

    points: int
    computed: int
    skipped: int
    rows: int
    seconds: float


def _env() -> dict[str, Any]:
    import jax

    from mvsim import __version__

    return {
        "mvsim_version": __version__,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "n_devices": jax.device_count(),
    }


def run_point(cfg: Config, claims: Sequence[str] | None) -> dict[str, Any]:
    """Run verify on one config. Returns claims (ClaimResult dicts), mechanism, timing,
    seconds and the peak resident memory (bytes)."""
    return run_points([cfg], claims)[0]


def run_points(
    cfgs: Sequence[Config], claims: Sequence[str] | None, progress: bool | str = False
) -> list[dict[str, Any]]:
    """Run verify on configs that share a :func:`mvsim.verify.batch_key`, all of them in
    one compiled call per stage (:func:`mvsim.verify.run_many`). Returns per config what
    :func:`run_point` does; ``seconds`` is the batch's wall time over its points.
    ``progress``: its stages' display (:mod:`mvsim.progress`)."""
    from mvsim import claims as claims_mod
    from mvsim import report, verify

    ids = list(claims) if claims is not None else None
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        ms = verify.run_many(cfgs, claims=ids, progress=progress)
    outs = [
        {"claims": [r.to_dict() for r in claims_mod.evaluate_all(m, ids)],
         "mechanism": claims_mod.mechanism(m), "timing": dict(m.timing),
         "curves": report.curves(m)}
        for m in ms
    ]  # fmt: skip
    seconds = (time.perf_counter() - t0) / len(cfgs)
    for o in outs:
        o["seconds"] = seconds
        o["peak_rss_bytes"] = mem.peak  # the batch's: its points share the arrays
    return outs


def default_batch_points() -> int:
    """How many same-shape points :func:`run_sweep` trains in one call by default: 1 on
    CPU, where one point's seeds already keep the cores busy at the demo's sizes and
    three points together ran 15% slower per model-step (benchmarks/RESULTS.md), and 16
    on an accelerator, which one point's few small models leave mostly idle (a guess:
    not yet measured on a GPU). ``--batch-points`` overrides it."""
    import jax

    return 1 if jax.default_backend() == "cpu" else 16


def batches(
    todo: Sequence[tuple[Point, list[str]]], batch_points: int
) -> list[list[tuple[Point, list[str]]]]:
    """Split (point, missing claims) pairs into runs of at most ``batch_points`` points
    that can share a compiled call (same :func:`mvsim.verify.batch_key`, same claims),
    in shape order so that consecutive calls reuse compiled code."""
    from mvsim.verify import batch_key

    groups: dict[tuple, list[tuple[Point, list[str]]]] = {}
    for p, missing in sorted(todo, key=lambda pm: pm[0].shape_key()):
        groups.setdefault((batch_key(p.cfg), tuple(missing)), []).append((p, missing))
    n = batch_points
    return [g[i : i + n] for g in groups.values() for i in range(0, len(g), n)]


def run_sweep(
    points: Sequence[Point],
    store: str | Path,
    claims: Sequence[str] | None = None,
    *,
    batch_points: int | None = None,
    progress: bool = True,
    log: Any = None,
) -> SweepSummary:
    """Run every point not yet in ``store`` and write each one when it completes.

    Args:
      points: from :func:`build_points`.
      store: SQLite path (created if missing).
      claims: claim ids (None = all); a stored point missing some of them runs only those.
      batch_points: at most this many points that differ only in fields that keep the
        compiled code (μ, ρ, Γ, σ_0, η, ...; :data:`mvsim.verify.BATCHABLE`) are trained
        together, vmapped with their seeds; None: :func:`default_batch_points`. A batch's
        points are stored when the batch completes, each in its own transaction.
      progress: True: a tqdm bar over points with its ETA, each point's stages shown under
        it as they run and summarised in one line when it is done; else one line per
        batch on ``log``, and with 'live' each point's stages shown as they run.
      log: a callable taking a str (default: print).
    """
    import jax

    from mvsim import store as st
    from mvsim.claims import CLAIMS
    from mvsim.progress import point_line

    if batch_points is None:
        batch_points = default_batch_points()
    if batch_points < 1:
        raise ConfigError("batch_points", batch_points, "must be ≥ 1")
    log = log or print
    wanted = list(claims) if claims is not None else [c.id for c in CLAIMS]
    # Several processes (jax.distributed): each takes every n-th point and its own file,
    # since SQLite's locking is not to be trusted on a shared network file system.
    if jax.process_count() > 1:
        points = list(points)[jax.process_index() :: jax.process_count()]
        store = Path(store).with_suffix(f".proc{jax.process_index()}{Path(store).suffix}")
    t_start = time.perf_counter()
    conn = st.connect(store)
    try:
        have = st.stored_claims(conn)
        todo = [(p, [c for c in wanted if c not in have.get(p.hash, set())]) for p in points]
        todo = [(p, missing) for p, missing in todo if missing]
        skipped = len(points) - len(todo)
        if skipped:
            log(f"sweep: {skipped}/{len(points)} points already in {store}, skipped")
        env = _env()
        rows = done = 0
        bar = None
        if progress is True:
            from tqdm.auto import tqdm  # only when drawn: it warns without ipywidgets

            bar = tqdm(total=len(todo), desc="sweep", unit="point")
        t_loop = time.perf_counter()
        for batch in batches(todo, batch_points):
            started = st.utc_now()
            outs = run_points([p.cfg for p, _ in batch], batch[0][1],
                              "live" if progress else False)  # fmt: skip
            for (p, _), out in zip(batch, outs, strict=True):
                rows += st.write_point(
                    conn, p.cfg, p.values, out["claims"], out["mechanism"],
                    seconds=out["seconds"], timing=out["timing"], started_at=started, env=env,
                    peak_rss_bytes=out["peak_rss_bytes"], curves=out.get("curves"),
                )  # fmt: skip
            done += len(batch)
            label = _short(batch[0][0].values) + (f" (+{len(batch) - 1})" if len(batch) > 1 else "")
            if bar is not None:
                bar.update(len(batch))
                bar.set_postfix_str(label)
                bar.write(point_line(label, outs[0]["seconds"] * len(batch), outs[0]["timing"]))
            else:
                eta = (time.perf_counter() - t_loop) / done * (len(todo) - done)
                log(f"sweep: {done}/{len(todo)} points, {label}: "
                    f"{outs[0]['seconds'] * len(batch):.1f} s, ETA {eta:.0f} s")  # fmt: skip
        if bar is not None:
            bar.close()
    finally:
        conn.close()
    return SweepSummary(len(points), len(todo), skipped, rows, time.perf_counter() - t_start)


def _short(values: Mapping[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )
