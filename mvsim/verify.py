"""The verify pipeline: train every model once, measure them on stratified test sets.

Which models (K = ``seeds``, n = ``kd_students``):

- ``single``: K networks on the same data, different inits.
- ``ensemble``: the mean of the K singles' outputs (no training).
- ``kd``: student j starts from single j's init and is taught by the mean of the other
  K−1 singles, so it is independent of its teacher and its own lottery is known.
- ``self_distillation``: student j starts from single j's init, taught by single j+1.
- ``control``: student j starts from single j's init, taught by single j itself, the
  model trained alone from that very init. It knows nothing the student would not learn
  alone, so any gain of ``kd``/``self_distillation`` over it is the teacher's doing.
- ``training_average``: one model = mean of ``avg_members`` networks, trained jointly.

All 3n students are trained in one vmapped call with per-seed teacher logits. The test
sets are drawn in chunks after training and every model is evaluated on each chunk, so
no test set is ever held whole in memory. Randomness comes from named streams of the
master seed (data, init, test, average) so that adding a stage shifts no other stage.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mvsim import data, distill, mechanism, model
from mvsim.config import Config
from mvsim.model import ApplyFn
from mvsim.train import accuracy, correct, precision, train

STREAMS = {"data": 0, "init": 1, "test": 2, "average": 3, "features": 4}


def stream(cfg: Config, name: str) -> jax.Array:
    """The PRNG key of a named stream of the master seed."""
    return jax.random.fold_in(jax.random.key(cfg.verify.seed), STREAMS[name])


@dataclass
class Group:
    """One set of S models measured on the same test points."""

    name: str
    errors_multi: np.ndarray  # (S, n_test_multi) bool
    errors_single: np.ndarray  # (S, n_test_single) bool
    train_accuracy: np.ndarray  # (S,)
    views: np.ndarray | None = None  # (S, k, 2) bool learned views, None for ensembles
    steps: np.ndarray | None = None  # (S,) GD steps taken
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Measurements:
    """Everything the claims need, as numpy arrays."""

    cfg: Config
    groups: dict[str, Group]
    test_single_y: np.ndarray  # (n_test_single,)
    test_single_strong: np.ndarray  # (n_test_single,) ℓ̂
    single_history: dict[str, np.ndarray]  # steps (L,), alignment (K, L, k, 2), loss, acc
    lottery: np.ndarray  # (K, k) predicted winning view of each single's init
    init_alignment: np.ndarray  # (K, k, 2) max_r ⟨w^{(0)}, v⟩
    memorisation: dict[str, Any]
    timing: dict[str, float]
    single_train_logits: np.ndarray | None = None  # (K, N, k) the singles on the training set


def _learned(params: jax.Array, V: jax.Array, cfg: Config) -> np.ndarray:
    lam = model.view_strength(params, V)
    return np.asarray(model.views_learned(lam, cfg.verify.view_threshold * cfg.model.varrho))


def _train_logits(apply_fn, params, x) -> jax.Array:
    return jax.vmap(apply_fn, in_axes=(0, None))(params, x)


def student_setup(
    single_logits: jax.Array, init_params: jax.Array, n: int
) -> tuple[jax.Array, jax.Array]:
    """Teachers and inits of the 3n students, in the order [kd_0..kd_{n−1}, sd_0..,
    control_0..]: student j starts from single j's init and is taught by the mean of the
    other K−1 singles (kd), by single j+1 (self-distillation) or by single j (control).

    single_logits: (K, N, k) the singles on the training set; init_params: (K, ...).
    Returns teacher logits (3n, N, k) and inits (3n, ...).
    """
    K = single_logits.shape[0]
    idx = np.arange(n)
    others = (single_logits.sum(0)[None] - single_logits[idx]) / (K - 1)
    teachers = jnp.concatenate([others, single_logits[(idx + 1) % K], single_logits[idx]], 0)
    return teachers, jnp.concatenate([init_params[idx]] * 3, axis=0)


# What each claim needs trained, beyond the singles (which every claim uses).
NEEDS: dict[str, set[str]] = {
    "single": set(),
    "ensemble": set(),
    "kd": {"students"},
    "self_distillation": {"students"},
    "training_average": {"average"},
}


def run(cfg: Config, *, claims: Iterable[str] | None = None, progress: bool = True) -> Measurements:
    """Train the models that ``claims`` (default: all) need, and measure them.

    A pure function of ``cfg``: the same config gives the same numbers. Returns
    :class:`Measurements`: per model group the boolean error vectors on the multi-view
    (S, n_test_multi) and single-view (S, n_test_single) test sets, training accuracy (S,)
    and learned views (S, k, 2); the singles' Λ history (K, L, k, 2) at the L recorded
    steps; the lottery; memorisation; wall times in seconds.
    """
    unknown = sorted(set(claims or ()) - set(NEEDS))
    if unknown:
        raise ValueError(f"unknown claims {unknown}; known: {sorted(NEEDS)}")
    needs = set().union(*(NEEDS[c] for c in (claims or NEEDS)))
    timing: dict[str, float] = {}
    D, M, Tc, KD, Vc = cfg.data, cfg.model, cfg.train, cfg.distill, cfg.verify
    K, n_st = Vc.seeds, KD.kd_students
    with precision(Tc.dtype, Tc.matmul_precision):
        dtype = jnp.dtype(Tc.dtype)
        t = time.perf_counter()
        V = data.features(stream(cfg, "features"), D.d, D.k, dtype)
        train_set, truth = data.sample(
            stream(cfg, "data"),
            D,
            D.N,
            V,
            stratified=D.train_composition == "stratified",
            ground_truth=True,
            dtype=dtype,
        )
        x, y = train_set.x, train_set.y
        net = model.network(M, D.k, D.d, dtype)
        timing["sample_train"] = time.perf_counter() - t

        t = time.perf_counter()
        singles = train(stream(cfg, "init"), net, x, y, V, Tc, seeds=K, progress=progress,
                        desc=f"{K} single models")  # fmt: skip
        timing["train_single"] = time.perf_counter() - t
        single_logits = _train_logits(net.apply, singles.params, x)  # (K, N, k)
        sets: dict[str, tuple[ApplyFn, jax.Array]] = {"single": (net.apply, singles.params)}

        students = averages = None
        if "students" in needs:
            t = time.perf_counter()
            teachers, inits = student_setup(single_logits, singles.init_params, n_st)
            students = train(None, net, x, y, V, Tc, init_params=inits,
                             objective=distill.objective(KD), teacher_logits=teachers,
                             T=KD.kd_T, stop="none", progress=progress,
                             desc=f"{3 * n_st} distilled students")  # fmt: skip
            sets["students"] = (net.apply, students.params)
            timing["train_students"] = time.perf_counter() - t

        if "average" in needs:
            t = time.perf_counter()
            avg_net = model.averaged(M, D.k, D.d, KD.avg_members, dtype)
            mult = KD.avg_members if KD.avg_eta_mult is None else KD.avg_eta_mult
            avg_cfg = dataclasses.replace(Tc, eta=Tc.eta * mult)
            averages = train(stream(cfg, "average"), avg_net, x, y, V, avg_cfg,
                             seeds=KD.avg_seeds, progress=progress,
                             desc="training-average models")  # fmt: skip
            sets["average"] = (avg_net.apply, averages.params)
            timing["train_average"] = time.perf_counter() - t

        t = time.perf_counter()
        errors, ys, strong = _evaluate(cfg, V, sets)
        timing["evaluate"] = time.perf_counter() - t

        ens_acc = float(accuracy(single_logits.mean(0), y))
        em, es = errors["single"]
        groups = {
            "single": Group("single", em, es, singles.final_accuracy,
                            _learned(singles.params, V, cfg), singles.stop_step),
            "ensemble": Group("ensemble", *errors["ensemble"], np.array([ens_acc])),
        }  # fmt: skip
        if students is not None:
            em, es = errors["students"]
            sv = _learned(students.params, V, cfg)
            for j, name in enumerate(("kd", "self_distillation", "control")):
                sl = slice(j * n_st, (j + 1) * n_st)
                groups[name] = Group(name, em[sl], es[sl], students.final_accuracy[sl],
                                     sv[sl], np.full(n_st, KD.kd_T))  # fmt: skip
        if averages is not None:
            em, es = errors["average"]
            groups["training_average"] = Group(
                "training_average", em, es, averages.final_accuracy,
                _learned(averages.params, V, cfg).any(1), averages.stop_step,
            )  # fmt: skip

        mem = _memorisation(cfg, net, singles, train_set, truth, V, groups["single"].views)
        return Measurements(
            cfg=cfg,
            groups=groups,
            test_single_y=ys,
            test_single_strong=strong,
            single_history={
                "steps": singles.steps,
                "alignment": singles.alignment,
                "loss": singles.loss,
                "accuracy": singles.accuracy,
            },
            lottery=np.asarray(model.lottery_winner(singles.init_params, V)),
            init_alignment=np.asarray(model.alignment(singles.init_params, V)),
            memorisation=mem,
            timing=timing,
            single_train_logits=np.asarray(single_logits),
        )


def _evaluate(
    cfg: Config, V: jax.Array, sets: dict[str, tuple[ApplyFn, jax.Array]]
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """One pass over the chunked test sets, every model set on every chunk.

    Returns {set name: (errors on the multi-view set (S, n_m), on the single-view set
    (S, n_s))} plus 'ensemble' (the singles' mean), and y and ℓ̂ of the single-view set.
    """
    dtype = jnp.dtype(cfg.train.dtype)

    @jax.jit
    def errs(x, yy):
        wrong = lambda lg: ~jax.vmap(lambda l: correct(l, yy))(lg)
        logits = {n: jax.vmap(f, in_axes=(0, None))(p, x) for n, (f, p) in sets.items()}
        out = {n: wrong(lg) for n, lg in logits.items()}
        out["ensemble"] = wrong(logits["single"].mean(0, keepdims=True))
        return out

    kt_m, kt_s = jax.random.split(stream(cfg, "test"))
    result: dict[str, list[np.ndarray]] = {}
    meta_y, meta_s = [], []
    for key, n, view in ((kt_m, cfg.verify.n_test_multi, "multi"),
                         (kt_s, cfg.verify.n_test_single, "single")):  # fmt: skip
        parts: list[dict] = []
        for b in data.iter_chunks(key, cfg.data, n, V, view, dtype=dtype) if n else ():
            parts.append({k: np.asarray(v) for k, v in errs(b.x, b.y).items()})
            if view == "single":
                meta_y.append(np.asarray(b.y))
                meta_s.append(np.asarray(b.strong_view))
        for name in [*sets, "ensemble"]:
            size = 1 if name == "ensemble" else jax.tree.leaves(sets[name][1])[0].shape[0]
            arr = (
                np.concatenate([p[name] for p in parts], 1) if parts else np.zeros((size, 0), bool)
            )
            result.setdefault(name, []).append(arr)
    errors = {name: (v[0], v[1]) for name, v in result.items()}
    return errors, np.concatenate(meta_y), np.concatenate(meta_s)


def _memorisation(cfg, net, singles, train_set, truth, V, views) -> dict[str, Any]:
    """How single-view training points are fitted when their strong view is unlearned.

    For each such point, F_y of the features alone (x − ξ) against F_y of the noise alone
    (ξ): memorisation shows as a noise part that carries the margin. Returns the summary
    of :func:`mvsim.mechanism.memorisation_summary` plus every point under ``points``.
    """
    pts = mechanism.memorisation_split(net.apply, singles.params, train_set, truth, views)
    summary: dict[str, Any] = mechanism.memorisation_summary(pts)
    summary["points"] = {
        name: np.round(a, 5).tolist() if a.dtype.kind == "f" else a.tolist()
        for name, a in pts.items()
    }
    return summary
