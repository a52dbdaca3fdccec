"""Neuron dropping: does a class's accuracy live in the neurons of its learned view?

The paper removes the channels of trained ResNets that carry one object part and finds
that accuracy falls, and that an ensemble (whose members use other parts) restores it
(notes §7.2). Here, with the ground-truth views known:

1. Train the K singles exactly as ``mvsim verify`` does (same streams, so the same
   models).
2. For model s and class i, zero every neuron (i, r) with ⟨w_{i,r}, v_{i,ℓ}⟩ ≥
   ``drop_threshold``·ϱ for a view ℓ that model s learned for class i. Only F_i changes,
   and only downwards (ReLU~ ≥ 0), so a test point of class i can only go from right to
   wrong: each point is evaluated with its own class's neurons dropped.
3. Accuracy on class-i test points, by stratum and view: single-view points whose strong
   view is the one model s learned ("learned"), whose strong view is the other one
   ("other"), and multi-view points; before and after dropping.
4. Recovery: on the same points, the ensemble (mean output) of (a) the other seeds that
   learned the *other* view of class i, (b) all other seeds, (c) all K seeds with model s
   dropped.

Rows are pooled over (model, one-view class) pairs; classes where model s learned both
views get rows of their own ("two-view classes"), classes with no view are skipped.
Accuracies carry exact Clopper–Pearson intervals; since each test point is reused by
every model, the interval uses the number of distinct test points, not of evaluations
(conservative, as the pooled estimates of :mod:`mvsim.claims`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mvsim import data, model
from mvsim.config import Config, ConfigError
from mvsim.experiments import check_seeds, envelope, fmt_ci, rate_ci, text_table
from mvsim.progress import Progress
from mvsim.train import correct, precision, train
from mvsim.verify import stream

# Strata of a (model, class, test point) evaluation; see the module docstring.
CATEGORIES = {
    "learned": "single-view, strong view = the view the model learned",
    "other": "single-view, strong view = the view the model did not learn",
    "multi": "multi-view (both views present)",
    "two_view_single": "single-view, class with both views learned",
    "two_view_multi": "multi-view, class with both views learned",
}
MODELS = {
    "before": "the model as trained",
    "after": "its class-y neurons carrying a learned view zeroed",
    "ens_other_view": "ensemble of the other seeds that learned the other view of class y",
    "ens_others": "ensemble of all other seeds",
    "ens_with_dropped": "ensemble of all seeds, this one dropped",
}


def neuron_outputs(W: jax.Array, x: jax.Array, q: int, varrho: float) -> jax.Array:
    """Per-neuron outputs Σ_p ReLU~(⟨w_{i,r}, x_p⟩): W (k, m, d), x (n, P, d) -> (n, k, m).

    Their sum over r is :func:`mvsim.model.apply`.
    """
    k, m, d = W.shape
    n, P, _ = x.shape
    pre = W.reshape(k * m, d) @ x.reshape(n * P, d).T
    act = model.smoothed_relu(pre, q, varrho)
    return act.reshape(k, m, n, P).sum(3).transpose(2, 0, 1)


def drop_mask(W: jax.Array, V: jax.Array, views: jax.Array, threshold: float) -> jax.Array:
    """Neurons to zero: (..., k, m) bool, True where ⟨w_{i,r}, v_{i,ℓ}⟩ ≥ threshold for a
    view ℓ with ``views[..., i, ℓ]`` (W (..., k, m, d), V (k, 2, d), views (..., k, 2))."""
    corr = jnp.einsum("...kmd,kld->...kml", W, V)
    return ((corr >= threshold) & views[..., :, None, :]).any(-1)


def _other_view_mask(views: np.ndarray) -> np.ndarray:
    """(S, S, k) bool: seed t ≠ s learned, for class c, the view that s did not (s must
    have learned exactly one view of c)."""
    S = views.shape[0]
    one = views.sum(-1) == 1  # (S, k)
    missing = ~views & one[..., None]  # (S, k, 2): the view s lacks, for one-view classes
    m = (missing[:, None] & views[None, :]).any(-1)  # (s, t, k)
    m &= ~np.eye(S, dtype=bool)[:, :, None]
    return m


def run(cfg: Config, *, progress: Progress = True) -> dict[str, Any]:
    """Train the singles, drop neurons class by class, measure; returns the report dict."""
    timing: dict[str, float] = {}
    t_all = time.perf_counter()
    D, M, Tc = cfg.data, cfg.model, cfg.train
    if D.family != "multiview":
        raise ValueError("the dropping experiment needs family = 'multiview' (it drops views)")
    if M.learner != "patch_cnn":
        raise ConfigError(
            "learner",
            M.learner,
            "the dropping experiment zeroes the patch "
            "CNN's neurons that carry a view; run it with learner=patch_cnn",
        )
    check_seeds("dropping", cfg)
    K = cfg.verify.seeds
    with precision(Tc.dtype):
        dtype = jnp.dtype(Tc.dtype)
        t = time.perf_counter()
        V = data.features(stream(cfg, "features"), D.d, D.k, dtype)
        ts = data.training_set(stream(cfg, "data"), D, V, dtype)
        net = model.network(M, D.k, D.d, dtype)
        singles = train(stream(cfg, "init"), net, ts.x, ts.y, V, Tc, seeds=K, progress=progress,
                        desc=f"{K} single models")  # fmt: skip
        timing["train_single"] = time.perf_counter() - t

        t = time.perf_counter()
        W = singles.params
        lam = model.view_strength(W, V)
        views = np.asarray(model.views_learned(lam, cfg.verify.view_threshold * M.varrho))
        drop = drop_mask(W, V, jnp.asarray(views), cfg.experiment.drop_threshold * M.varrho)
        keep = (~drop).astype(dtype)  # (S, k, m)
        other_mask = jnp.asarray(_other_view_mask(views))

        @jax.jit
        def evaluate(x, y):
            G = jax.vmap(neuron_outputs, in_axes=(0, None, None, None))(W, x, M.q, M.varrho)
            F = G.sum(-1)  # (S, n, k)
            own = jax.nn.one_hot(y, D.k, dtype=bool)[None]
            F_drop = jnp.where(own, (G * keep[:, None]).sum(-1), F)
            ok = jax.vmap(lambda lg: correct(lg, y))
            tot = F.sum(0)
            m = other_mask[:, :, y]  # (S, S, n)
            cnt = m.sum(1)
            ens_ov = jnp.einsum("stn,tnk->snk", m.astype(F.dtype), F)
            ens_ov = ens_ov / jnp.maximum(cnt, 1)[..., None]
            return {
                "before": ok(F),
                "after": ok(F_drop),
                "ens_other_view": ok(ens_ov),
                "ens_others": ok((tot[None] - F) / (K - 1)),
                "ens_with_dropped": ok((tot[None] - F + F_drop) / K),
                "other_view_valid": cnt > 0,
            }

        kt_m, kt_s = jax.random.split(stream(cfg, "test"))
        E = cfg.experiment
        parts: dict[str, list] = {"multi": [], "single": []}
        for key, n, view in ((kt_m, E.exp_n_test_multi, "multi"),
                             (kt_s, E.exp_n_test_single, "single")):  # fmt: skip
            for b in data.iter_chunks(key, D, n, V, view, dtype=dtype):
                res = {k_: np.asarray(v) for k_, v in evaluate(b.x, b.y).items()}
                res["y"], res["strong"] = np.asarray(b.y), np.asarray(b.strong_view)
                parts[view].append(res)
        timing["evaluate"] = time.perf_counter() - t

    rows = _aggregate(parts, views, K)
    n_drop = np.asarray(drop).sum(-1)  # (S, k)
    one = views.sum(-1) == 1
    per_class = views.sum(-1)
    timing["total"] = time.perf_counter() - t_all
    rep = envelope("dropping", cfg)
    rep.update(
        {
            "description": __doc__.strip().splitlines()[0],
            "categories": CATEGORIES,
            "models": MODELS,
            "rows": rows,
            "summary": {
                "seeds": K,
                "drop_threshold_over_varrho": cfg.experiment.drop_threshold,
                "frac_one_view": float(one.mean()),
                "frac_two_views": float((per_class == 2).mean()),
                "frac_no_view": float((per_class == 0).mean()),
                "mean_neurons_dropped_one_view_class": float(n_drop[one].mean())
                if one.any()
                else None,
                "neurons_per_class": M.m,
                "train_accuracy_min": float(singles.final_accuracy.min()),
            },
            "timing": {k_: round(v, 3) for k_, v in timing.items()},
        }
    )
    return rep


def _aggregate(parts: dict[str, list], views: np.ndarray, K: int) -> list[dict[str, Any]]:
    """Flat rows: one per category pooled over seeds (seed = -1), then one per (seed,
    category). Accuracy CIs use the distinct test points (see the module docstring)."""
    cat_masks: dict[str, np.ndarray] = {}
    stacked: dict[str, np.ndarray] = {}
    for view in ("multi", "single"):
        if not parts[view]:
            continue
        cat = {k_: np.concatenate([p[k_] for p in parts[view]], -1) for k_ in parts[view][0]}
        y, strong = cat["y"], cat["strong"]
        nv = views[:, y, :].sum(-1)  # (S, n) views model s learned for the point's class
        learned_view = views[:, y, 1]  # for one-view classes: True iff that view is ℓ = 1
        if view == "single":
            match = learned_view == (strong[None] == 1)
            masks = {
                "learned": (nv == 1) & match,
                "other": (nv == 1) & ~match,
                "two_view_single": nv == 2,
            }
        else:
            masks = {"multi": nv == 1, "two_view_multi": nv == 2}
        for name, mk in masks.items():
            cat_masks[name] = mk
            stacked[name] = cat  # type: ignore[assignment]
    rows: list[dict[str, Any]] = []
    for seed in [-1, *range(K)]:
        for name in CATEGORIES:
            if name not in cat_masks:
                continue
            mk = cat_masks[name]
            cat = stacked[name]
            sel = mk if seed < 0 else mk & (np.arange(K) == seed)[:, None]
            n_eval = int(sel.sum())
            n_points = int(sel.any(0).sum())
            row: dict[str, Any] = {"seed": seed, "category": name, "n_evaluations": n_eval,
                                   "n_test_points": n_points}  # fmt: skip
            for mod in MODELS:
                s = sel & cat["other_view_valid"] if mod == "ens_other_view" else sel
                ne = int(s.sum())
                npts = int(s.any(0).sum())
                # None, not NaN, where no such ensemble exists: strict JSON has no NaN.
                acc = float(cat[mod][s].mean()) if ne else None
                _, lo, hi = rate_ci(round(acc * npts), npts) if npts else (0, None, None)
                row[f"acc_{mod}"] = acc
                row[f"acc_{mod}_ci_lo"] = lo
                row[f"acc_{mod}_ci_hi"] = hi
                if mod == "ens_other_view":
                    row["n_evaluations_other_view"] = ne
            diff = lambda a, b: None if a is None or b is None else a - b
            row["drop"] = diff(row["acc_before"], row["acc_after"])
            row["recovery_ens_other_view"] = diff(row["acc_ens_other_view"], row["acc_after"])
            row["recovery_ens_with_dropped"] = diff(row["acc_ens_with_dropped"], row["acc_after"])
            rows.append(row)
    return rows


def table(rep: dict[str, Any]) -> str:
    """The terminal table: pooled rows, accuracy [95% CI] per model column."""
    cfg, s = rep["config"], rep["summary"]
    d = cfg["data"]
    head_line = (
        f"mvsim experiment dropping — preset '{rep['preset']}': k={d['k']} m={cfg['model']['m']} "
        f"seeds={s['seeds']}; neurons with ⟨w, v⟩ ≥ {s['drop_threshold_over_varrho']:g}ϱ on a "
        f"learned view of the point's class are zeroed"
    )
    cols = ["stratum", "evaluations", "before", "after drop", "ens: other view",
            "ens: all others", "ens incl. dropped"]  # fmt: skip
    body = []
    for r in rep["rows"]:
        if r["seed"] != -1:
            continue
        body.append(
            [r["category"], f"{r['n_evaluations']}"]
            + [fmt_ci(r[f"acc_{m}"], r[f"acc_{m}_ci_lo"], r[f"acc_{m}_ci_hi"]) for m in MODELS]
        )
    out = [head_line, "accuracy [95% CI]"] + text_table(cols, body)
    nd = s["mean_neurons_dropped_one_view_class"]
    out.append(
        f"classes with one / two / no view: {s['frac_one_view']:.3f} / {s['frac_two_views']:.3f}"
        f" / {s['frac_no_view']:.3f}; neurons zeroed per one-view class: "
        f"{'n/a' if nd is None else f'{nd:.2f}'} of {s['neurons_per_class']}"
    )
    out.append("strata: " + "; ".join(f"{k}: {v}" for k, v in rep["categories"].items()))
    out.append("timing (s): " + ", ".join(f"{k} {v:.1f}" for k, v in rep["timing"].items()))
    return "\n".join(out)


def figure(rep: dict[str, Any], out: Path) -> list[str]:
    """Grouped bars: accuracy per stratum for each model column, with 95% CIs."""
    from mvsim.plots import PALETTE, _plt, _save

    plt = _plt()
    rows = [r for r in rep["rows"] if r["seed"] == -1]
    labels = {
        "before": "before",
        "after": "after drop",
        "ens_other_view": "ens: other-view seeds",
        "ens_others": "ens: all other seeds",
        "ens_with_dropped": "ens incl. dropped",
    }
    fig, ax = plt.subplots(figsize=(8, 3.8))
    w = 0.8 / len(MODELS)
    for j, mod in enumerate(MODELS):
        xs, ys, lo, hi = [], [], [], []
        for g, r in enumerate(rows):
            a = r[f"acc_{mod}"]
            if a is None:  # no such ensemble
                continue
            xs.append(g + (j - (len(MODELS) - 1) / 2) * w)
            ys.append(a)
            lo.append(max(a - r[f"acc_{mod}_ci_lo"], 0.0))
            hi.append(max(r[f"acc_{mod}_ci_hi"] - a, 0.0))
        ax.bar(xs, ys, w, yerr=[lo, hi], capsize=2, color=PALETTE[j], label=labels[mod],
               error_kw={"lw": 0.8})  # fmt: skip
    names = {
        "learned": "single-view:\nlearned view",
        "other": "single-view:\nother view",
        "multi": "multi-view",
        "two_view_single": "two-view class:\nsingle-view",
        "two_view_multi": "two-view class:\nmulti-view",
    }
    ax.set_xticks(range(len(rows)), [names.get(r["category"], r["category"]) for r in rows])
    ax.set(ylabel="test accuracy (95% CI)", ylim=(0, 1.05),
           title="Dropping the neurons of a class's learned view")  # fmt: skip
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    return _save(fig, out, "dropping")
