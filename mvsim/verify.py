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
import functools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Bool, Float, Int

from mvsim import curves, data, distill, learners, mechanism, model
from mvsim import progress as prog
from mvsim.config import FIELD_SECTION, Config, ConfigError
from mvsim.model import ApplyFn
from mvsim.train import accuracy, blocked, correct, init_seeds, precision, train_points

STREAMS = {"data": 0, "init": 1, "test": 2, "average": 3, "features": 4}


def stream(cfg: Config, name: str) -> jax.Array:
    """The PRNG key of a named stream of the master seed."""
    return jax.random.fold_in(jax.random.key(cfg.verify.seed), STREAMS[name])


@dataclass
class Group:
    """One set of S models measured on the same test points."""

    name: str
    errors_multi: Bool[np.ndarray, "S n_multi"]
    errors_single: Bool[np.ndarray, "S n_single"]
    train_accuracy: Float[np.ndarray, " S"]
    views: Bool[np.ndarray, "S k 2"] | None = None  # learned views; None for ensembles
    steps: Float[np.ndarray, " S"] | None = None  # GD steps (the flow: GD-equivalent t/η)
    grad_evals: Int[np.ndarray, " S"] | None = None  # gradient evaluations they cost
    # Accuracy on the single-view test points of each (class, strong view): the
    # behavioural reading of the views (NaN where a cell has no test point).
    view_accuracy: Float[np.ndarray, "S k 2"] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The error curve (:mod:`mvsim.curves`): steps (L,), the reading's horizon, error counts
    # (S, L) on the curve subset (n_multi, n_single points), training accuracy (S, L),
    # view_correct (S, L, k, 2) / view_total (k, 2) and, where Λ is read, alignment.
    curve: dict[str, Any] | None = None


@dataclass
class Measurements:
    """Everything the claims need, as numpy arrays."""

    cfg: Config
    groups: dict[str, Group]
    test_single_y: Int[np.ndarray, " n_single"]
    test_single_strong: Int[np.ndarray, " n_single"]  # ℓ̂
    single_history: dict[str, np.ndarray]  # steps (L,), alignment (K, L, k, 2), loss, acc
    lottery: Int[np.ndarray, "K k"] | None  # predicted winning view of each single's init
    init_alignment: Float[np.ndarray, "K k 2"] | None  # max_r ⟨w^{(0)}, v⟩ (None: no Λ)
    memorisation: dict[str, Any]
    timing: dict[str, float]
    single_train_logits: np.ndarray | None = None  # (K, N, k) the singles on the training set
    # 'weights': views from Λ (the patch CNN); 'behaviour': from view_accuracy (any learner)
    view_analysis: str = "weights"
    horizon: int | None = None  # the trajectory reading's horizon (GD-equivalent steps)


def _stack(trees: Sequence[Any]) -> Any:
    """Stack params pytrees along a new leading axis (one per config)."""
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def _train_logits(apply_fn, params, x) -> jax.Array:
    return jax.vmap(apply_fn, in_axes=(0, None))(params, x)


def student_setup(
    single_logits: jax.Array, init_params: jax.Array, n: int
) -> tuple[jax.Array, jax.Array]:
    """Teachers and inits of the 3n students, in the order [kd_0..kd_{n−1}, sd_0..,
    control_0..]: student j starts from single j's init and is taught by the mean of the
    other K−1 singles (kd), by single j+1 (self-distillation) or by single j (control).

    single_logits: (K, N, k) the singles on the training set; init_params: (K, ...), any
    pytree. Returns teacher logits (3n, N, k) and inits (3n, ...).
    """
    K = single_logits.shape[0]
    idx = np.arange(n)
    others = (single_logits.sum(0)[None] - single_logits[idx]) / (K - 1)
    teachers = jnp.concatenate([others, single_logits[(idx + 1) % K], single_logits[idx]], 0)
    return teachers, jax.tree.map(lambda a: jnp.concatenate([a[idx]] * 3, axis=0), init_params)


# What each claim needs trained, beyond the singles (which every claim uses).
NEEDS: dict[str, set[str]] = {
    "single": set(),
    "ensemble": set(),
    "kd": {"students"},
    "self_distillation": {"students"},
    "training_average": {"average"},
}


# Single models a claim needs: an ensemble averages several, a KD student is taught by
# the others and a self-distilled one by another single, so those need two.
MIN_SEEDS: dict[str, int] = {
    "single": 1,
    "ensemble": 2,
    "kd": 2,
    "self_distillation": 2,
    "training_average": 1,
}


def student_steps(cfg: Config) -> int:
    """The distilled students' budget in GD-equivalent steps: kd_T, else the horizon (so
    they train as far as the trajectory reading looks and no further); the ViT's capped at
    vit_kd_T (:func:`mvsim.learners.student_budget`)."""
    kd_T = cfg.horizon_steps() if cfg.distill.kd_T is None else cfg.distill.kd_T
    return learners.student_budget(cfg.model, kd_T)


def check_claim_seeds(cfg: Config, claims: Iterable[str] | None = None) -> None:
    """Raise :class:`ConfigError` naming ``seeds`` (the ``--seeds`` flag) and the claim
    when a requested claim (default: all) cannot be evaluated with ``cfg``'s seeds."""
    ids = list(claims) if claims is not None else list(NEEDS)
    seeds = cfg.verify.seeds
    for c in ids:
        if seeds < MIN_SEEDS[c]:
            able = [i for i in ids if MIN_SEEDS[i] <= seeds] or ["single"]
            raise ConfigError(
                "seeds",
                seeds,
                f"claim '{c}' needs seeds ≥ {MIN_SEEDS[c]} (--seeds): it combines several "
                f"single models; ask for more seeds or leave '{c}' out of --claims (with "
                f"seeds = {seeds}: --claims {','.join(able)})",
            )


# Fields in which configs may differ and still be trained in one compiled call
# (:func:`run_many`): the data is drawn per point in Python (so any data field that keeps
# the shapes may differ), inits are drawn per point (σ_0), η is traced, and the rest is
# read after training. Every other field is static to the compiled trainer or changes a
# shape, so points that differ in it go to separate calls.
BATCHABLE = frozenset(
    {f for f, sec in FIELD_SECTION.items() if sec in ("data", "ntk", "experiment")}
    - {"k", "d", "P", "N", "family"}
    | {"sigma_0", "eta", "seed", "view_threshold", "view_accuracy", "n_test_multi", "n_test_single"}
)


def batch_key(cfg: Config) -> tuple:
    """Configs with equal keys can go through :func:`run_many` together."""
    return tuple((f, repr(v)) for f, v in sorted(cfg.flat().items()) if f not in BATCHABLE)


def run(
    cfg: Config, *, claims: Iterable[str] | None = None, progress: prog.Progress = True
) -> Measurements:
    """Train the models that ``claims`` (default: all) need, and measure them.

    A pure function of ``cfg``: the same config gives the same numbers. Returns
    :class:`Measurements`: per model group the boolean error vectors on the multi-view
    (S, n_test_multi) and single-view (S, n_test_single) test sets, training accuracy (S,)
    and learned views (S, k, 2); the singles' Λ history (K, L, k, 2) at the L recorded
    steps; the lottery; memorisation; wall times in seconds. This is :func:`run_many`
    with one config. ``progress``: each stage's display (:mod:`mvsim.progress`).
    """
    return run_many([cfg], claims=claims, progress=progress)[0]


def run_many(
    cfgs: Sequence[Config],
    *,
    claims: Iterable[str] | None = None,
    progress: prog.Progress = True,
) -> list[Measurements]:
    """:func:`run` for Q configs that share a :func:`batch_key` (e.g. sweep points that
    differ in μ, ρ, Γ, σ_0, η or the seed), stage by stage: each training stage trains
    all Q points × their seeds in one compiled call (:func:`mvsim.train.train_points`),
    and points whose test sets are the same draw (μ and N do not enter it) are evaluated
    on one pass over it. Point i's numbers are those of ``run(cfgs[i])``; the timing of
    each stage is the whole batch's, with ``batch_points`` = Q when Q > 1.

    Raises ValueError (before any compute) for an unknown claim or configs that cannot
    share a call, :class:`ConfigError` for a claim a config has too few seeds for.
    """
    cfgs = list(cfgs)
    unknown = sorted(set(claims or ()) - set(NEEDS))
    if unknown:
        raise ValueError(f"unknown claims {unknown}; known: {sorted(NEEDS)}")
    if not cfgs:
        return []
    for c in cfgs:
        check_claim_seeds(c, claims)
        learners.check(c.model, c.data.k, c.data.d, c.data.P)
    keys = {batch_key(c) for c in cfgs}
    if len(keys) > 1:
        a, b = (dict(k) for k in list(keys)[:2])
        diff = sorted(f for f in a if a[f] != b.get(f))
        raise ValueError(f"run_many: the configs differ in {diff}, which cannot be batched")
    needs = set().union(*(NEEDS[c] for c in (claims or NEEDS)))
    # A batch's stage times are shared by its points; batch_points says how many shared them.
    timing: dict[str, float] = {"batch_points": float(len(cfgs))} if len(cfgs) > 1 else {}
    cfg0 = cfgs[0]
    D0, M0, Tc, KD = cfg0.data, cfg0.model, cfg0.train, cfg0.distill
    K, n_st = cfg0.verify.seeds, KD.kd_students
    H = cfg0.horizon_steps()  # the history's times up to H are those of H, whatever the caps
    etas = np.array([c.train.eta for c in cfgs])
    pts = f"{len(cfgs)} points × " if len(cfgs) > 1 else ""  # for the progress bars
    with precision(Tc.dtype, Tc.matmul_precision):
        dtype = jnp.dtype(Tc.dtype)
        t = time.perf_counter()
        Vs, sets_, truths = [], [], []
        with prog.stage("sampling the training set", progress, total=len(cfgs), unit="sets",
                        compiling="the sampler") as st:  # fmt: skip
            for c in cfgs:
                V = data.features(stream(c, "features"), c.data.d, c.data.k, dtype)
                ts, truth = data.training_set(stream(c, "data"), c.data, V, dtype,
                                              ground_truth=True)  # fmt: skip
                Vs.append(V), sets_.append(ts), truths.append(truth)
                st.advance()
        V = jnp.stack(Vs)
        x = jnp.stack([s.x for s in sets_])
        y = jnp.stack([s.y for s in sets_])
        net = learners.network(M0, D0.k, D0.d, D0.P, dtype)
        timing["sample_train"] = time.perf_counter() - t

        t = time.perf_counter()
        # Each point's inits from its own stream and σ_0 (the apply is the same for all).
        inits = _stack([init_seeds(learners.network(c.model, D0.k, D0.d, D0.P, dtype),
                                   stream(c, "init"), K) for c in cfgs])  # fmt: skip
        singles = train_points(net, x, y, V, Tc, inits, etas=etas, progress=progress,
                               desc=f"{pts}{K} single models", horizon=H)  # fmt: skip
        timing["train_single"] = time.perf_counter() - t
        single_logits = jax.vmap(_train_logits, in_axes=(None, 0, 0))(net.apply, singles.params, x)
        sets: dict[str, tuple[ApplyFn, jax.Array]] = {"single": (net.apply, singles.params)}
        history = {"single": (net.apply, singles.history_params)}

        students = averages = None
        if "students" in needs:
            t = time.perf_counter()
            setups = [student_setup(single_logits[q],
                                    jax.tree.map(lambda a, q=q: a[q], singles.init_params), n_st)
                      for q in range(len(cfgs))]  # fmt: skip
            teachers = jnp.stack([s[0] for s in setups])
            st_inits = _stack([s[1] for s in setups])
            students = train_points(net, x, y, V, Tc, st_inits, etas=etas,
                                    objective=distill.objective(KD), teacher_logits=teachers,
                                    T=student_steps(cfg0), stop=KD.kd_stop, progress=progress,
                                    desc=f"{pts}{3 * n_st} distilled students",
                                    horizon=H)  # fmt: skip
            sets["students"] = (net.apply, students.params)
            history["students"] = (net.apply, students.history_params)
            timing["train_students"] = time.perf_counter() - t

        if "average" in needs:
            t = time.perf_counter()
            avg_net = learners.averaged(M0, D0.k, D0.d, D0.P, KD.avg_members, dtype)
            mult = KD.avg_members if KD.avg_eta_mult is None else KD.avg_eta_mult
            avg_inits = _stack([
                init_seeds(learners.averaged(c.model, D0.k, D0.d, D0.P, KD.avg_members, dtype),
                           stream(c, "average"), KD.avg_seeds)
                for c in cfgs
            ])  # fmt: skip
            averages = train_points(avg_net, x, y, V, Tc, avg_inits, etas=etas * mult,
                                    progress=progress, desc="training-average models",
                                    horizon=H)  # fmt: skip
            sets["average"] = (avg_net.apply, averages.params)
            history["average"] = (avg_net.apply, averages.history_params)
            timing["train_average"] = time.perf_counter() - t

        t = time.perf_counter()
        n_test = sum(c.verify.n_test_multi + c.verify.n_test_single
                     for c in {test_key(c): c for c in cfgs}.values())  # fmt: skip
        with prog.stage(f"test sets ({n_test:,} points)", progress, total=n_test, unit="points",
                        compiling="the sampler and the evaluation") as st:  # fmt: skip
            evaluated, curve_s = _evaluate_points(cfgs, V, sets, history, st)
        ens_acc = curves.ensemble_train_accuracy(net.apply, singles.history_params, x, y)
        timing["evaluate"] = time.perf_counter() - t - curve_s
        timing["curves"] = time.perf_counter() - t - timing["evaluate"]

        out = []
        for q, c in enumerate(cfgs):
            errors, ys, strong, curve_counts = evaluated[q]
            curve_counts["ensemble"]["train_accuracy"] = ens_acc[q][None]
            pick = lambda r, q=q: None if r is None else r.point(q)
            out.append(_measurements(c, net, V[q], sets_[q], truths[q], single_logits[q],
                                     pick(singles), pick(students), pick(averages),
                                     errors, ys, strong, singles.steps, dict(timing),
                                     curve_counts))  # fmt: skip
        return out


def _measurements(cfg, net, V, train_set, truth, single_logits, singles, students, averages,
                  errors, ys, strong, steps, timing, curve_counts) -> Measurements:  # fmt: skip
    """One point's :class:`Measurements` from its slice of the batched stages."""
    n_st = cfg.distill.kd_students
    ens_acc = float(accuracy(single_logits.mean(0), train_set.y))
    weights = learners.reads_weights(cfg.model)
    H = cfg.horizon_steps()

    def curve(counts, trained, sl, budget, members=False) -> dict[str, Any]:
        c = {k: v[sl] if np.ndim(v) and k != "view_total" else v for k, v in counts.items()}
        # The whole grid (GD's metrics stop where every model has): a model is frozen past
        # its stop, its training accuracy the final one (NaN in the metrics there).
        L, final = len(trained.history_steps), trained.final_accuracy[sl][:, None]
        acc = np.full((final.shape[0], L), np.nan)
        acc[:, : trained.accuracy.shape[-1]] = trained.accuracy[sl]
        c.update(steps=trained.history_steps, horizon=min(H, budget),
                 train_accuracy=np.where(np.isnan(acc), final, acc))  # fmt: skip
        if weights and not members:  # Λ in time: when a student's views reach ϱ
            lam = np.maximum(np.asarray(trained.alignment[sl]), 0.0)
            c["alignment"] = np.concatenate(  # frozen past the last recorded metrics
                [lam, np.repeat(lam[:, -1:], L - lam.shape[1], axis=1)], axis=1
            )
        return c

    def group(name, trained, errs, sl=slice(None), members=False, budget=cfg.train.T) -> Group:
        em, es = errs[0][sl], errs[1][sl]
        counts = curve_counts["average" if members else name if name == "single" else "students"]
        g = Group(name, em, es, trained.final_accuracy[sl], None, trained.stop_step[sl],
                  grad_evals=trained.grad_evals[sl],
                  view_accuracy=mechanism.view_accuracy(es, ys, strong, cfg.data.k),
                  curve=curve(counts, trained, sl, budget, members))  # fmt: skip
        if weights:  # Λ: the patch CNN's reading; an averaged model's views are its members'
            params = jax.tree.map(lambda a: a[sl], trained.params)
            lam = np.asarray(model.view_strength(params, V))
            views = np.asarray(
                model.views_learned(lam, cfg.verify.view_threshold * cfg.model.varrho)
            )
            g.views, lam = (views.any(1), lam.max(1)) if members else (views, lam)
            g.extra["view_strength"] = lam / cfg.model.varrho
        else:
            g.views = mechanism.behavioural_views(g.view_accuracy, cfg.verify.view_accuracy)
        return g

    ens_curve = dict(curve_counts["ensemble"], steps=singles.history_steps, horizon=H)
    groups = {
        "single": group("single", singles, errors["single"]),
        "ensemble": Group("ensemble", *errors["ensemble"], np.array([ens_acc]), curve=ens_curve),
    }
    if students is not None:
        for j, name in enumerate(("kd", "self_distillation", "control")):
            sl = slice(j * n_st, (j + 1) * n_st)
            groups[name] = group(name, students, errors["students"], sl,
                                 budget=student_steps(cfg))  # fmt: skip
    if averages is not None:
        groups["training_average"] = group("training_average", averages, errors["average"],
                                           members=True)  # fmt: skip
    mem = _memorisation(cfg, net, singles, train_set, truth, V, groups["single"].views)
    return Measurements(
        cfg=cfg,
        groups=groups,
        test_single_y=ys,
        test_single_strong=strong,
        single_history={
            "steps": steps,
            "alignment": singles.alignment,
            "loss": singles.loss,
            "accuracy": singles.accuracy,
        },
        lottery=np.asarray(model.lottery_winner(singles.init_params, V)) if weights else None,
        init_alignment=np.asarray(model.alignment(singles.init_params, V)) if weights else None,
        memorisation=mem,
        timing=timing,
        single_train_logits=np.asarray(single_logits),
        view_analysis="weights" if weights else "behaviour",
        horizon=H,
    )


def test_key(cfg: Config) -> tuple:
    """Configs with equal keys draw the same test sets (bit for bit): the test points are
    all multi-view or all single-view, so the training mixture (μ, N, composition) does
    not enter them (tests/test_verify.py checks it)."""
    flat = {
        **dataclasses.asdict(cfg.data),
        "seed": cfg.verify.seed,
        "dtype": cfg.train.dtype,
        "n_test_multi": cfg.verify.n_test_multi,
        "n_test_single": cfg.verify.n_test_single,
    }
    for f in ("mu", "N", "train_composition"):
        flat.pop(f)
    return tuple(sorted((f, repr(v)) for f, v in flat.items()))  # fmt: skip


EVAL_BLOCK = 512
"""Test points per step of the end point's evaluation (a ``lax.map`` over a chunk): the
activations of all Q·S models on a block (S·k·m × 512·P floats, 13 MB for the demo's 10
singles) stay in the CPU's cache, where a whole 8,192-point chunk's (210 MB) went through
memory: a demo chunk's evaluation alone takes 29% less time (1.18 -> 0.84 s on the shared
2-core machine), though the whole verify showed no measurable change (docs/verdicts.md).
Each logit is still its own sum over the same terms; XLA's CPU dot may order
them otherwise for another shape (a few ulps at tiny's shapes, none at the demo's; no
count moves: tests/test_verify.py, docs/verdicts.md)."""


@functools.lru_cache(maxsize=32)
def _errs_fn(applies: tuple[tuple[str, ApplyFn], ...]) -> Callable:
    """Jitted: (params {name: (Q, S, ...)}, x (n, P, d), y (n,)) -> {name: (Q, S, n) bool
    errors}, plus 'ensemble' (Q, 1, n): the mean of each point's singles. The n points go
    through in blocks of :data:`EVAL_BLOCK`."""

    def errs(params, x, yy):
        wrong = lambda lg: ~jax.vmap(jax.vmap(lambda l: correct(l, yy)))(lg)
        each = lambda f: jax.vmap(jax.vmap(f, in_axes=(0, None)), in_axes=(0, None))
        logits = {n: each(blocked(f, EVAL_BLOCK))(params[n], x) for n, f in applies}
        out = {n: wrong(lg) for n, lg in logits.items()}
        out["ensemble"] = wrong(logits["single"].mean(1, keepdims=True))
        return out

    return jax.jit(errs)


def _evaluate_points(
    cfgs: Sequence[Config],
    V: jax.Array,
    sets: dict[str, tuple[ApplyFn, jax.Array]],
    history: dict[str, tuple[ApplyFn, Any]],
    st: prog.Stage | None = None,
) -> tuple[list[tuple[dict, np.ndarray, np.ndarray, dict]], float]:
    """One pass over each distinct chunked test set, every model of the points that draw
    it on every chunk (no test set is held whole); the first points of each set also go
    to the error curves (:class:`mvsim.curves.Accumulator`), every recorded model on them.
    Stage ``st`` advances chunk by chunk.

    V: (Q, k, 2, d); sets: {name: (apply, params (Q, S, ...))}; history: {name: (apply,
    params (Q, S, L, ...))}. Returns per point ({set name: (errors on the multi-view set
    (S, n_m), on the single-view set (S, n_s))} plus 'ensemble', y and ℓ̂ of the
    single-view set, the curve counts {group: ...}), and the seconds the curves took.
    """
    fn = _errs_fn(tuple((n, f) for n, (f, _) in sets.items()))
    groups: dict[tuple, list[int]] = {}
    for q, c in enumerate(cfgs):
        groups.setdefault(test_key(c), []).append(q)
    out: list = [None] * len(cfgs)
    curve_s = 0.0
    for qs in groups.values():
        cfg = cfgs[qs[0]]
        dtype = jnp.dtype(cfg.train.dtype)
        idx = np.asarray(qs)
        take = lambda a, i=idx: a[i]
        params = {n: jax.tree.map(take, p) for n, (_, p) in sets.items()}
        acc = curves.Accumulator({n: (f, jax.tree.map(take, p)) for n, (f, p) in history.items()},
                                 min(cfg.verify.n_curve_multi, cfg.verify.n_test_multi),
                                 min(cfg.verify.n_curve_single, cfg.verify.n_test_single),
                                 cfg.data.k)  # fmt: skip
        kt_m, kt_s = jax.random.split(stream(cfg, "test"))
        result: dict[str, list[np.ndarray]] = {}
        meta_y, meta_s = [], []
        for key, n, view in ((kt_m, cfg.verify.n_test_multi, "multi"),
                             (kt_s, cfg.verify.n_test_single, "single")):  # fmt: skip
            parts: list[dict] = []
            for b in data.iter_chunks(key, cfg.data, n, V[qs[0]], view, dtype=dtype) if n else ():
                parts.append({k: np.asarray(v) for k, v in fn(params, b.x, b.y).items()})
                if acc.wants(view):
                    acc.add(view, b.x, b.y, b.strong_view)
                if st is not None:
                    st.advance(b.y.shape[0])
                if view == "single":
                    meta_y.append(np.asarray(b.y))
                    meta_s.append(np.asarray(b.strong_view))
            for name in [*sets, "ensemble"]:
                size = 1 if name == "ensemble" else jax.tree.leaves(params[name])[0].shape[1]
                arr = (np.concatenate([p[name] for p in parts], 2) if parts
                       else np.zeros((len(qs), size, 0), bool))  # fmt: skip
                result.setdefault(name, []).append(arr)
        ys, strong = np.concatenate(meta_y), np.concatenate(meta_s)
        curve_s += acc.seconds
        for i, q in enumerate(qs):
            errors = {name: (v[0][i], v[1][i]) for name, v in result.items()}
            out[q] = (errors, ys, strong, acc.result(i))
    return out, curve_s


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
