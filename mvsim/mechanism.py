"""Reading the mechanism off a run: the two phases of Λ, the lottery, memorisation.

Pure numpy functions of what the trainer records (:class:`mvsim.train.TrainResult`:
``steps`` (L,), ``alignment`` (S, L, k, 2)) and of a model's params. They turn the
paper's §8 statements into numbers a notebook can plot and a test can check:

- Phase 1 (notes §8.2): while Λ ≪ ϱ the smoothed ReLU is in its z^q regime and Λ grows
  like x ↦ x + ηΘ(1/k)·x^{q−1}, so dΛ/dt against Λ is a power law of exponent q − 1
  (:func:`growth_rates`, :func:`power_law_slope`). Phase 2 of a class starts when its
  winning view crosses ϱ (:func:`crossing_steps`, :func:`phase1_intervals`).
- The lottery: the view with the larger initial alignment wins (:func:`initial_ratio`,
  :func:`learned_outcome`).
- Memorisation: a single-view training point whose strong view was not learned is fitted
  by its noise, F_y(ξ) ≫ F_y(x − ξ) (:func:`memorisation_split`).
- Views from behaviour, for any learner: (class i, view ℓ) is learned when the model
  classifies the single-view test points of class i with strong view ℓ right
  (:func:`view_accuracy`, :func:`behavioural_views`); on the patch CNN this reading is
  checked against Λ's (:func:`view_agreement`).
- The finite-k race model: the two-view fraction as (how many classes the init puts in a
  close race, a function of m alone) × (how sharply the dynamics settle a race of initial
  ratio r, measured) (:func:`predicted_two_view_fraction`), and what that implies for the
  per-model band of Theorem 1 (:func:`all_one_view_probability`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from mvsim.data import Batch, GroundTruth
from mvsim.model import ApplyFn, Params

# Codes of learned_outcome, in order.
OUTCOMES = ("no view", "view 1 only", "view 2 only", "both views")


def crossing_steps(steps: np.ndarray, lam: np.ndarray, level: float) -> np.ndarray:
    """First recorded step at which Λ reaches ``level`` (e.g. ϱ: the end of phase 1).

    Args:
      steps: (L,) recorded GD steps, increasing.
      lam: (..., L, k, 2) Λ (or the raw alignment) at those steps.
      level: threshold, in the units of Λ.

    Returns:
      (..., k, 2) int: the step, or −1 where Λ never reached ``level``. Recorded steps are
      log-spaced, so the value is an upper bound on the true crossing step, within one
      recording interval.
    """
    steps = np.asarray(steps)
    lam = np.asarray(lam)
    hit = lam >= level
    first = np.argmax(hit, axis=-3)
    return np.where(hit.any(axis=-3), steps[first], -1)


def growth_rates(steps: np.ndarray, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Finite-difference growth rate dΛ/dt between consecutive recorded steps.

    Args:
      steps: (L,) recorded GD steps, increasing.
      lam: (..., L, k, 2) Λ at those steps.

    Returns:
      ``(lam_mid, rate)``, both (..., L−1, k, 2): the geometric mean of Λ at the two ends
      of each interval (arithmetic where an end is ≤ 0) and (ΔΛ)/(Δt) in Λ units per GD
      step. Intervals of zero length (a repeated step) give NaN.
    """
    steps = np.asarray(steps, float)
    lam = np.asarray(lam, float)
    a, b = lam[..., :-1, :, :], lam[..., 1:, :, :]
    dt = np.diff(steps)[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(dt > 0, (b - a) / dt, np.nan)
        mid = np.where((a > 0) & (b > 0), np.sqrt(np.abs(a * b)), (a + b) / 2)
    return mid, rate


def phase1_intervals(steps: np.ndarray, lam: np.ndarray, level: float) -> np.ndarray:
    """Which recorded intervals lie in phase 1 of their class: no view of the class has
    reached ``level`` (ϱ) by the interval's end.

    After a class's first view crosses ϱ its multi-view points are fitted, the loss
    factor (1 − logit_y) collapses and its other view stops following the phase-1 law,
    so those intervals are left out of a phase-1 fit.

    Args:
      steps: (L,) recorded GD steps, increasing.
      lam: (..., L, k, 2) Λ at those steps.
      level: the threshold (ϱ), units of Λ.

    Returns:
      (..., L−1, k, 2) bool, aligned with :func:`growth_rates`.
    """
    steps = np.asarray(steps)
    cross = crossing_steps(steps, lam, level).astype(float)  # (..., k, 2)
    first = np.where(cross < 0, np.inf, cross).min(-1)  # (..., k)
    inside = steps[1:, None] < first[..., None, :]  # (..., L−1, k)
    return np.broadcast_to(inside[..., None], (*inside.shape, 2))


def power_law_slope(
    lam_mid: np.ndarray,
    rate: np.ndarray,
    lo: float,
    hi: float,
    mask: np.ndarray | None = None,
) -> float:
    """Least-squares slope of log(rate) against log(Λ) over the points with lo ≤ Λ ≤ hi.

    In phase 1 the paper's dynamics dΛ/dt ∝ Λ^{q−1} give slope q − 1. Only points with a
    positive rate enter (a losing view that shrinks has no power law), and only where
    ``mask`` (same shape, e.g. :func:`phase1_intervals`) is True. Returns NaN when fewer
    than 3 points qualify or they span no range of Λ.
    """
    x = np.asarray(lam_mid, float).ravel()
    r = np.asarray(rate, float).ravel()
    ok = np.isfinite(x) & np.isfinite(r) & (r > 0) & (x >= lo) & (x <= hi)
    if mask is not None:
        ok &= np.broadcast_to(np.asarray(mask, bool), np.shape(lam_mid)).ravel()
    if ok.sum() < 3 or np.ptp(np.log(x[ok])) == 0:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(r[ok]), 1)[0])


def initial_ratio(init_alignment: np.ndarray) -> np.ndarray:
    """The lottery's ticket: Λ^{(0)}_{i,1} / Λ^{(0)}_{i,2} of each class at init.

    Args:
      init_alignment: (..., k, 2) max_r ⟨w^{(0)}_{i,r}, v_{i,ℓ}⟩ (its positive part is taken).

    Returns:
      (..., k) float: > 1 where view 1 starts ahead. inf where view 2 starts at ≤ 0 and view
      1 does not; NaN where both do.
    """
    a = np.maximum(np.asarray(init_alignment, float), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return a[..., 0] / a[..., 1]


def learned_outcome(views: np.ndarray) -> np.ndarray:
    """Which views of each class were learned, as a code indexing :data:`OUTCOMES`.

    Args:
      views: (..., k, 2) bool learned-view indicator (:func:`mvsim.model.views_learned`).

    Returns:
      (..., k) int: 0 no view, 1 view 1 only, 2 view 2 only, 3 both views.
    """
    v = np.asarray(views, bool)
    return v[..., 0].astype(int) + 2 * v[..., 1].astype(int)


def view_accuracy(
    errors_single: np.ndarray, y: np.ndarray, strong: np.ndarray, k: int
) -> np.ndarray:
    """Accuracy of each model on the single-view test points of each (class, strong view).

    Args:
      errors_single: (S, n) bool, True where model s gets single-view test point j wrong.
      y: (n,) the points' classes; strong: (n,) their strong view ℓ̂ ∈ {0, 1}.
      k: number of classes.

    Returns:
      (S, k, 2) float in [0, 1]; NaN for a (class, view) with no test point.
    """
    ok = ~np.asarray(errors_single, bool)
    cell = 2 * np.asarray(y, int) + np.asarray(strong, int)  # (n,) in [0, 2k)
    onehot = cell[:, None] == np.arange(2 * k)[None]  # (n, 2k)
    n = onehot.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = (ok.astype(float) @ onehot) / n  # (S, 2k); 0/0 = NaN for empty cells
    return acc.reshape(ok.shape[0], k, 2)


def behavioural_views(accuracy: np.ndarray, threshold: float) -> np.ndarray:
    """Learned views read from behaviour: accuracy ≥ ``threshold`` (``view_accuracy``).

    A learned view's single-view points are classified right (≈ 1); an unlearned one's
    only when none of their noisy features is a learned view of another class, ≈ (1 −
    s/k)^L with L such views (0.01 at demo, ≈ 0.2 at tiny). A cell without test points
    counts as unlearned. Shape (..., k, 2) bool, like :func:`mvsim.model.views_learned`.
    """
    return np.nan_to_num(np.asarray(accuracy, float), nan=0.0) >= threshold


def view_agreement(
    weight_views: np.ndarray, accuracy: np.ndarray, threshold: float, strength: np.ndarray
) -> dict[str, Any]:
    """How often the weight-based (Λ) and the behavioural view patterns agree, and where not.

    Args:
      weight_views: (S, k, 2) bool, Λ ≥ view_threshold·ϱ.
      accuracy: (S, k, 2) :func:`view_accuracy`; threshold: ``view_accuracy``.
      strength: (S, k, 2) Λ/ϱ, reported for the cells that disagree.

    Returns:
      ``cells``, ``agree`` and ``fraction`` (over all (model, class, view) cells), and
      ``differ``: one dict per disagreeing cell (model, class, view, which reading says
      learned, its accuracy and Λ/ϱ).
    """
    beh = behavioural_views(accuracy, threshold)
    w = np.asarray(weight_views, bool)
    agree = beh == w
    differ = [
        {
            "model": int(s), "class": int(i), "view": int(v),
            "learned_by": "weights" if w[s, i, v] else "behaviour",
            "accuracy": None if np.isnan(accuracy[s, i, v]) else float(accuracy[s, i, v]),
            "lambda_over_varrho": float(strength[s, i, v]),
        }
        for s, i, v in zip(*np.nonzero(~agree), strict=True)
    ]  # fmt: skip
    return {"cells": int(agree.size), "agree": int(agree.sum()),
            "fraction": float(agree.mean()) if agree.size else None, "differ": differ}  # fmt: skip


def memorisation_split(
    apply_fn: ApplyFn, params: Params, batch: Batch, truth: GroundTruth, views: np.ndarray
) -> dict[str, np.ndarray]:
    """How each single-view training point is fitted: by its features or by its noise.

    F_y is evaluated on the point's features alone (x − ξ) and on its noise alone (ξ);
    memorisation shows as a noise part that carries the margin while the features part
    is ≈ 0, on points whose strong view the model did not learn.

    Args:
      apply_fn: the network's apply, ``apply(params, x (n, P, d)) -> (n, k)``.
      params: (S, ...) S models' params.
      batch: the training set (x (N, P, d), y, single_view, strong_view).
      truth: its ground truth (noise (N, P, d)).
      views: (S, k, 2) bool, the views each model learned.

    Returns:
      Flat arrays over all (model, single-view training point) pairs, all of one length:
      ``seed`` and ``index`` (the model and the point's row in ``batch``), ``y``,
      ``strong_view`` (ℓ̂), ``strong_view_learned`` (bool), ``F_y_features_only`` and
      ``F_y_noise_only`` (logit units).
    """
    sv = np.asarray(batch.single_view)
    idx = np.flatnonzero(sv)
    y = np.asarray(batch.y)[idx]
    strong = np.asarray(batch.strong_view)[idx]
    x = batch.x[idx]
    noise = truth.noise[idx]
    logits = jax.vmap(apply_fn, in_axes=(0, None))
    F_feat = np.asarray(logits(params, x - noise))  # (S, n_sv, k)
    F_noise = np.asarray(logits(params, noise))
    S = F_feat.shape[0]
    cols = np.arange(len(idx))
    views = np.asarray(views, bool)
    return {
        "seed": np.repeat(np.arange(S), len(idx)),
        "index": np.tile(idx, S),
        "y": np.tile(y, S),
        "strong_view": np.tile(strong, S),
        "strong_view_learned": views[:, y, strong].reshape(-1),
        "F_y_features_only": F_feat[:, cols, y].reshape(-1),
        "F_y_noise_only": F_noise[:, cols, y].reshape(-1),
    }


def memorisation_summary(points: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Mean F_y from features and from noise, for points whose strong view was unlearned
    and for those where it was learned (keys absent when a group is empty).

    Args:
      points: the output of :func:`memorisation_split` (or its report.json form, lists).
    """
    learned = np.asarray(points["strong_view_learned"], bool)
    feat = np.asarray(points["F_y_features_only"], float)
    noise = np.asarray(points["F_y_noise_only"], float)
    out: dict[str, dict[str, float]] = {}
    for name, mask in (("unlearned_strong_view", ~learned), ("learned_strong_view", learned)):
        if mask.any():
            out[name] = {
                "n_points": int(mask.sum()),
                "mean_F_y_features_only": float(feat[mask].mean()),
                "mean_F_y_noise_only": float(noise[mask].mean()),
            }
    return out


# --- the finite-k race model ------------------------------------------------------------

# The bins of claims.mechanism's two_views_by_initial_ratio.
RATIO_BINS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0)


def initial_ratio_distribution(
    m: int, bins: Sequence[float] = RATIO_BINS, n: int = 200_000, seed: int = 0
) -> np.ndarray:
    """Probability of each initial-ratio bin for a class with m neurons, shape (len(bins)−1,).

    At init ⟨w_{i,r}, v_{i,ℓ}⟩ ~ N(0, σ_0²) independently (orthonormal views), so Λ^{(0)}_{i,ℓ}
    is σ_0 times the positive part of the max of m standard normals, and the ratio
    r = Λ_loser/Λ_winner does not depend on σ_0. Monte Carlo with n classes; a class whose
    two views both start at 0 counts as r = 0 (no race).
    """
    rng = np.random.default_rng(seed)
    r = race_ratio(rng.standard_normal((n, 2, m)).max(-1))
    return np.bincount(ratio_bin(r, bins), minlength=len(bins) - 1) / n


def race_ratio(init_alignment: np.ndarray) -> np.ndarray:
    """r = Λ_loser/Λ_winner of each class at init, in [0, 1], shape (..., k) from (..., k, 2)
    max_r ⟨w^{(0)}, v⟩ (positive parts taken); 0 where both views start at ≤ 0 (no race)."""
    a = np.maximum(np.asarray(init_alignment, float), 0.0)
    return a.min(-1) / np.maximum(a.max(-1), 1e-30)


def ratio_bin(r: np.ndarray, bins: Sequence[float] = RATIO_BINS) -> np.ndarray:
    """The bin of each ratio: bins[j] ≤ r < bins[j+1], the last bin closed at r = 1."""
    return np.clip(np.searchsorted(bins, r, side="right") - 1, 0, len(bins) - 2)


def predicted_two_view_fraction(
    m: int, curve: Sequence[float], bins: Sequence[float] = RATIO_BINS
) -> float:
    """Two-view fraction predicted from the init alone: Σ_b P_m(r ∈ b) · curve[b].

    ``curve[b]`` is the measured fraction of classes in ratio bin b that learned both views
    (the race's sharpness, e.g. ``report["mechanism"]["two_views_by_initial_ratio"]``).
    Separates what the dynamics decide (the curve) from what the init decides (how many
    classes start in a close race, which grows with m).
    """
    p = initial_ratio_distribution(m, bins)
    c = np.nan_to_num(np.asarray(curve, float))
    return float((p * c).sum())


def all_one_view_probability(p_two: float, k: int, seeds: int) -> float:
    """P(no two-view class among ``seeds`` models of k classes) = (1 − p_two)^{k·seeds}.

    At k = 10 one two-view class moves a model's E/μ by about 1/(2k) = 0.05, more than the
    width of the band [0.49, 0.51], so the per-model verdict needs this event.
    """
    return float((1.0 - p_two) ** (k * seeds))
