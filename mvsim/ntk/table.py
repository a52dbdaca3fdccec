"""The deep-vs-NTK table (report.json ``ntk``): :func:`run_ntk`, the list of its stages
(data, linearized models, the deep teacher, students, evaluation, the infinite-width
kernel, the table and the verdicts), and the stages that train nothing."""

from __future__ import annotations

import contextlib
import dataclasses
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from mvsim import data, model
from mvsim import progress as prog
from mvsim.config import Config, ConfigError
from mvsim.model import Network
from mvsim.ntk.claims import LEVEL, Errors, group_errors, ntk_verdicts
from mvsim.ntk.kernel import _TILE, kernel_predict
from mvsim.ntk.linearized import (
    TrainingSet,
    linearized_averaged,
    linearized_network,
    train_averages,
    train_singles,
    train_students,
)
from mvsim.stats import Estimate
from mvsim.train import TrainResult, correct, precision, train

ROWS = ("deep", "linearized", "infinite")
COLUMNS = ("single", "ensemble", "training_average", "kd", "self_kd")
EXTRA_COLUMNS = ("kd_control", "kd_from_deep")

_DEEP_GROUPS = (
    ("single", "single"),
    ("ensemble", "ensemble"),
    ("training_average", "training_average"),
    ("kd", "kd"),
    ("self_kd", "self_distillation"),
    ("kd_control", "control"),
)

_NTK_STREAMS = {"lin_init": 101, "lin_average": 102}

TestSets = dict[str, tuple[Float[Array, "n P d"], Int[Array, " n"]]]
"""{'multi' | 'single': (x, y)}: the first points of verify's test sets."""


class Linearized(NamedTuple):
    """The trained linearized models, and the students' variants in their blocks' order."""

    lin: Network
    singles: TrainResult
    lin_avg: Network
    averages: TrainResult
    variants: Sequence[str]
    students: TrainResult


class DeepTeacher(NamedTuple):
    """The deep ensemble that teaches 'kd_from_deep': its training logits (N, k), its
    params when trained here, and where it came from."""

    logits: np.ndarray | None
    params: Any | None
    source: str


class Infinite(NamedTuple):
    """The infinite-width predictor's errors on the test points (multi-view ones first)."""

    wrong: Bool[np.ndarray, " n"]
    n_multi: int
    memory: dict[str, float]


def run_ntk(
    cfg: Config,
    measurements: Any | None = None,
    *,
    deep_teacher_logits: np.ndarray | None = None,
    progress: prog.Progress = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The deep-vs-NTK table (report.json ``ntk``) and the NTK-side verdicts.

    Rows: 'deep' (from ``measurements``, a :class:`mvsim.verify.Measurements`, if given),
    'linearized' (finite width, :func:`linearized_network`), 'infinite'
    (:func:`kernel_predict`; its ensemble is its single: the infinite-width mean predictor
    is deterministic). Columns: single / ensemble / training_average / kd / self_kd, plus
    the extra columns 'kd_control' and 'kd_from_deep' (see below).

    Linearized models: ``ntk_seeds`` singles (GD to perfect training accuracy or
    ``ntk_T`` steps); the ensemble is their mean logit; the training average is
    ``ntk_avg_seeds`` models, each the mean of ``ntk_avg_members`` jointly trained nets.
    Students (``ntk_kd_students`` per variant, ``ntk_kd_T`` GD steps, student j from
    single j's init, objective ``distill.objective(cfg.distill)``, centred if
    ``ntk_center_kd``): 'kd' is taught by the mean of the *other* singles (independent of
    its teacher; single j is its own-init baseline), 'self_kd' by single j+1, 'kd_control'
    by single j itself (what the objective and the extra steps do without new knowledge),
    'kd_from_deep' by the deep ensemble: ``deep_teacher_logits`` (N, k) on the training
    set, else ``measurements.single_train_logits`` (K, N, k) if it has them, else the
    first ``ntk_deep_teachers`` deep singles of verify's init stream, trained here.

    Data: verify's streams, so the training set is verify's and the test sets are the
    first ``ntk_n_test_multi`` / ``ntk_n_test_single`` points of verify's test sets.
    Verdicts: see :data:`VERDICT_DEFINITIONS`. ``progress``: each stage's display
    (:mod:`mvsim.progress`; the trainings show their own).

    Raises :class:`ConfigError` naming ``learner`` for any learner but the patch CNN, the
    network whose kernel this is.
    """
    if cfg.model.learner != "patch_cnn":
        raise ConfigError(
            "learner",
            cfg.model.learner,
            "the NTK side linearises the patch CNN; run it with learner=patch_cnn",
        )
    log = log or (lambda s: None)
    D, C = cfg.data, cfg.ntk
    timing: dict[str, float] = {}
    t_all = time.perf_counter()
    with precision(cfg.train.dtype, cfg.train.matmul_precision):
        dtype = jnp.dtype(cfg.train.dtype)
        V, x, y, tests = _data(cfg, dtype)
        ts = TrainingSet(x, y, V)
        with _timed(timing, "linearized_single"):
            lin = linearized_network(cfg, D.k, D.d, dtype)
            singles = train_singles(_key(cfg, "init", "lin_init"), cfg, lin, ts, progress)
        log(f"linearized singles: steps {singles.stop_step.tolist()}")
        with _timed(timing, "linearized_average"):
            lin_avg = linearized_averaged(cfg, D.k, D.d, C.ntk_avg_members, dtype)
            key = _key(cfg, "average", "lin_average")
            averages = train_averages(key, cfg, lin_avg, ts, progress)
        with _timed(timing, "deep_teachers"):
            deep = _deep_teacher(cfg, measurements, deep_teacher_logits, x, y, V, dtype, progress)
        log(f"deep teacher: {deep.source}")
        with _timed(timing, "linearized_students"):
            variants, students = train_students(cfg, lin, singles, deep.logits, ts, dtype, progress)
        runs = Linearized(lin, singles, lin_avg, averages, variants, students)
        with _timed(timing, "evaluate_linearized", progress, "NTK: linearized models on the "
                    f"{C.ntk_n_test_multi + C.ntk_n_test_single:,} test points"):  # fmt: skip
            E = _evaluate(cfg, runs, deep.params, tests, dtype)
    with _timed(timing, "kernel", progress, "NTK: the infinite-width kernel predictor"):
        infinite = _infinite(cfg, x, y, tests)
    deep_test = _deep_teacher_errors(E, measurements, tests)
    out = _report(cfg, runs, E, infinite, measurements, deep, deep_test, tests)
    timing["total"] = time.perf_counter() - t_all
    return {**out, "timing": timing}


@contextlib.contextmanager
def _timed(
    timing: dict[str, float], name: str, progress: prog.Progress = False, desc: str = ""
) -> Iterator[None]:
    """Time the block into ``timing[name]``; with a ``desc``, it is a stage of its own."""
    t = time.perf_counter()
    with prog.stage(desc, progress) if desc else contextlib.nullcontext():
        yield
    timing[name] = time.perf_counter() - t


def _stream(cfg: Config, name: str) -> jax.Array:
    from mvsim.verify import stream

    return stream(cfg, name)


def _key(cfg: Config, stream: str, sub: str) -> jax.Array:
    """The linearized models' own keys, folded out of verify's streams."""
    return jax.random.fold_in(_stream(cfg, stream), _NTK_STREAMS[sub])


def _data(cfg: Config, dtype: Any) -> tuple[jax.Array, jax.Array, jax.Array, TestSets]:
    """verify's views, training set and (the first points of) its test sets: (V, x, y, tests)."""
    D = cfg.data
    V = data.features(_stream(cfg, "features"), D.d, D.k, dtype)
    tr = data.training_set(_stream(cfg, "data"), D, V, dtype)
    return V, tr.x, tr.y, _test_sets(cfg, V, dtype)


def _deep_teacher(
    cfg: Config,
    measurements: Any | None,
    logits: np.ndarray | None,
    x: jax.Array,
    y: jax.Array,
    V: jax.Array,
    dtype: Any,
    progress: prog.Progress,
) -> DeepTeacher:
    """The deep ensemble's training logits: given, else the mean of verify's singles' (when
    the measurements carry them), else of the first ``ntk_deep_teachers`` deep singles of
    verify's init stream, trained here (or none when that is 0)."""
    C = cfg.ntk
    if logits is not None:
        return DeepTeacher(logits, None, "argument")
    if getattr(measurements, "single_train_logits", None) is not None:
        mean = np.asarray(measurements.single_train_logits).mean(0)
        return DeepTeacher(mean, None, "measurements")
    if C.ntk_deep_teachers <= 0:
        return DeepTeacher(None, None, "none")
    net = model.network(cfg.model, cfg.data.k, cfg.data.d, dtype)
    deep = train(_stream(cfg, "init"), net, x, y, V, cfg.train, seeds=C.ntk_deep_teachers,
                 progress=progress, desc=f"{C.ntk_deep_teachers} deep teachers")  # fmt: skip
    logits = np.asarray(jax.vmap(net.apply, in_axes=(0, None))(deep.params, x).mean(0))
    return DeepTeacher(logits, deep.params,
                       f"trained here: verify's first {C.ntk_deep_teachers} singles")  # fmt: skip


def _evaluate(
    cfg: Config, runs: Linearized, deep_params: Any | None, tests: TestSets, dtype: Any
) -> dict[str, dict[str, np.ndarray]]:
    """Every finite model on the same test points: {'multi' | 'single': {name: (models,
    n)}} error vectors of the singles, their ensemble, the kd teachers ('loo'), the
    training averages, the students and (when trained here) the deep teacher."""
    S, idx = cfg.ntk.ntk_seeds, np.arange(cfg.ntk.ntk_kd_students)
    lin, lin_avg = runs.lin, runs.lin_avg
    net_deep = model.network(cfg.model, cfg.data.k, cfg.data.d, dtype)

    @jax.jit
    def errs(xb: jax.Array, yb: jax.Array) -> dict[str, jax.Array]:
        wrong = lambda lg: ~jax.vmap(lambda l_: correct(l_, yb))(lg)
        ls = jax.vmap(lin.apply, in_axes=(0, None))(runs.singles.params, xb)
        la = jax.vmap(lin_avg.apply, in_axes=(0, None))(runs.averages.params, xb)
        out = {
            "single": wrong(ls),
            "ensemble": wrong(ls.mean(0, keepdims=True)),
            "loo": wrong((ls.sum(0)[None] - ls[idx]) / (S - 1)),  # the kd teachers
            "average": wrong(la),
            "students": wrong(jax.vmap(lin.apply, in_axes=(0, None))(runs.students.params, xb)),
        }
        if deep_params is not None:
            ld = jax.vmap(net_deep.apply, in_axes=(0, None))(deep_params, xb)
            out["deep_teacher"] = wrong(ld.mean(0, keepdims=True))
        return out

    E = {name: _errors(errs, *tests[name]) for name in ("single", "multi")}
    E["multi"] = E["multi"] or {
        kk: np.zeros((v.shape[0], 0), bool) for kk, v in E["single"].items()
    }
    return E


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _infinite(cfg: Config, x: jax.Array, y: jax.Array, tests: TestSets) -> Infinite:
    """Infinite width: kernel regression on the same training set and test points, and
    its memory."""
    D = cfg.data
    rss0 = _peak_rss_mb()
    x_test = jnp.concatenate([tests["multi"][0], tests["single"][0]])
    logits_test = kernel_predict(cfg, x, y, x_test)
    rss1 = _peak_rss_mb()
    y_all = np.concatenate([np.asarray(tests["multi"][1]), np.asarray(tests["single"][1])])
    wrong = ~np.asarray(correct(jnp.asarray(logits_test), jnp.asarray(y_all)))
    memory = {
        "peak_rss_mb_before_kernel": rss0,
        "peak_rss_mb_after_kernel": rss1,
        # The largest intermediate of the series kernel: a tile of _TILE samples' patches
        # against every training patch, ~4 live float64 arrays of that shape.
        "kernel_tile_mb": _TILE * D.P * D.N * D.P * 8 * 4 / 2**20,
        "unchunked_nxnxpxp_mb": (D.N + x_test.shape[0]) * D.N * D.P**2 * 8 / 2**20,
    }
    return Infinite(wrong, int(tests["multi"][0].shape[0]), memory)


def _cell(em: np.ndarray, es: np.ndarray, mu: float, train_acc: Sequence[float] | None) -> dict:
    """A table cell from per-model error vectors em (S, n_multi), es (S, n_single).

    Several models are pooled as in :mod:`mvsim.claims`: the mean error count over the S
    models on the same n test points (its CI treats it as one test set of size n).
    """
    em, es = np.atleast_2d(em), np.atleast_2d(es)
    est = Estimate(
        int(round(em.sum(1).mean())), em.shape[1], int(round(es.sum(1).mean())), es.shape[1], mu
    )
    ci = est.ci_over_mu(LEVEL)
    return {
        "error_over_mu": est.error_over_mu,
        "ci95": [ci[0], ci[1]],
        "error_multi_view": est.error_multi if est.n_multi else None,
        "error_single_view": est.error_single,
        "n_test_multi": est.n_multi,
        "n_test_single": est.n_single,
        "models": int(em.shape[0]),
        "train_accuracy": None if train_acc is None else [float(a) for a in train_acc],
    }


def _blocks(variants: Sequence[str], n_st: int) -> dict[str, slice]:
    """Each variant's students: the n_st rows of its block."""
    return {v: slice(i * n_st, (i + 1) * n_st) for i, v in enumerate(variants)}


def _table(
    cfg: Config, runs: Linearized, E: dict, infinite: Infinite, measurements: Any | None
) -> dict[str, dict[str, Any]]:
    """Rows ``ROWS``, columns ``COLUMNS + EXTRA_COLUMNS``: a cell per model (None where a
    row has no such model)."""
    mu, n_m = cfg.data.mu, infinite.n_multi
    grp = lambda name, j=None: group_errors(E, name, j)
    block = _blocks(runs.variants, cfg.ntk.ntk_kd_students)
    acc = runs.students.final_accuracy
    stu_cell = lambda v: _cell(*grp("students", block[v]), mu, acc[block[v]])
    table: dict[str, dict[str, Any]] = {r: dict.fromkeys(COLUMNS + EXTRA_COLUMNS) for r in ROWS}
    table["linearized"].update(
        single=_cell(*grp("single"), mu, runs.singles.final_accuracy),
        ensemble=_cell(*grp("ensemble"), mu, None),
        training_average=_cell(*grp("average"), mu, runs.averages.final_accuracy),
        **{v: stu_cell(v) for v in runs.variants},
    )
    inf_cell = _cell(infinite.wrong[None, :n_m], infinite.wrong[None, n_m:], mu, None)
    table["infinite"].update(single=inf_cell, ensemble=inf_cell)
    if measurements is not None:
        for col, name in _DEEP_GROUPS:
            gg = measurements.groups.get(name)
            if gg is not None:
                table["deep"][col] = _cell(gg.errors_multi, gg.errors_single, mu, gg.train_accuracy)
    return table


def _report(
    cfg: Config,
    runs: Linearized,
    E: dict,
    infinite: Infinite,
    measurements: Any | None,
    deep: DeepTeacher,
    deep_test: Errors | None,
    tests: TestSets,
) -> dict[str, Any]:
    """report.json's ``ntk``, all but its timing: the table, the verdicts, the teachers'
    own errors and what was run."""
    C, mu = cfg.ntk, cfg.data.mu
    block = _blocks(runs.variants, C.ntk_kd_students)
    n_avg = min(C.ntk_avg_seeds, C.ntk_seeds)
    teachers = {"kd": _cell(*group_errors(E, "loo"), mu, None)}
    if deep_test is not None:
        teachers["kd_from_deep"] = _cell(deep_test[0][None], deep_test[1][None], mu, None)
    n_test = sum(int(tests[s][0].shape[0]) for s in ("multi", "single"))
    return {
        "rows": list(ROWS),
        "columns": list(COLUMNS),
        "extra_columns": list(EXTRA_COLUMNS),
        "table": _table(cfg, runs, E, infinite, measurements),
        "verdicts": ntk_verdicts(E, block, deep_test, C.ntk_seeds, n_avg, mu),
        "ntk_config": dataclasses.asdict(C),
        "deep_teacher": deep.source,
        "teachers": teachers,
        "linearized": {
            "single_steps": runs.singles.stop_step.tolist(),
            "average_steps": runs.averages.stop_step.tolist(),
            "student_final_objective": {
                v: runs.students.final_loss[block[v]].tolist() for v in runs.variants
            },
        },
        "kernel": {
            "evaluator": C.ntk_kernel,
            "terms": C.ntk_terms,
            "deg": C.ntk_deg,
            "n_train": cfg.data.N,
            "n_test": n_test,
        },
        "memory": infinite.memory,
    }


def _test_sets(cfg: Config, V: jax.Array, dtype: Any) -> dict[str, tuple[jax.Array, jax.Array]]:
    """The first n points of verify's multi- and single-view test sets (same key split and
    chunk size as :func:`mvsim.verify.run`, and ``split`` is prefix-stable), held whole:
    the NTK rows use a few thousand points."""
    D, C = cfg.data, cfg.ntk
    kt_m, kt_s = jax.random.split(_stream(cfg, "test"))
    out = {}
    for name, key, n in (("multi", kt_m, C.ntk_n_test_multi),
                         ("single", kt_s, C.ntk_n_test_single)):  # fmt: skip
        parts = list(data.iter_chunks(key, D, n, V, name, dtype=dtype)) if n else []
        out[name] = (
            jnp.concatenate([b.x for b in parts]) if parts else jnp.zeros((0, D.P, D.d), dtype),
            jnp.concatenate([b.y for b in parts]) if parts else jnp.zeros((0,), jnp.int32),
        )
    return out


def _errors(errs: Callable, xs: jax.Array, ys: jax.Array, chunk: int = 1024) -> dict:
    """Per-model error vectors {name: (models, n)} over a test set, in chunks."""
    parts = [errs(xs[i : i + chunk], ys[i : i + chunk]) for i in range(0, xs.shape[0], chunk)]
    if not parts:
        return {}
    return {kk: np.concatenate([np.asarray(p[kk]) for p in parts], 1) for kk in parts[0]}


def _deep_teacher_errors(
    E: dict, measurements: Any | None, tests: dict
) -> tuple[np.ndarray, np.ndarray] | None:
    """The deep teacher's test errors on our points: measured here if it was trained here,
    else verify's ensemble restricted to our (prefix) test points, if it covers them."""
    if "deep_teacher" in E["single"]:
        return E["multi"]["deep_teacher"][0], E["single"]["deep_teacher"][0]
    g = None if measurements is None else measurements.groups.get("ensemble")
    n_m, n_s = tests["multi"][0].shape[0], tests["single"][0].shape[0]
    if g is None or g.errors_multi.shape[1] < n_m or g.errors_single.shape[1] < n_s:
        return None
    return g.errors_multi[0, :n_m], g.errors_single[0, :n_s]
