"""Every model's test error at every recorded time: the error curves the trajectory
reading (:mod:`mvsim.trajectory`) reads.

The trainers keep each model's weights at the recorded steps
(:attr:`mvsim.train.TrainResult.history_params`, GD-equivalent steps). After training, one
batched pass evaluates them on a fixed stratified subset of the test sets, the first
``n_curve_multi`` multi-view and ``n_curve_single`` single-view points, which are drawn
with the test sets themselves (so the curves cost no sampling of their own, and their
last point is a subset of the end point's test set), and on the training set, for the
ensemble's training accuracy. Evaluating after the solve rather than inside it
(diffrax ``SaveAt(fn=...)``) keeps the solver's step small and, under vmap, evaluates
each model at its recorded times only (``python -m benchmarks.curves`` measures both).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from mvsim.model import ApplyFn, Params
from mvsim.train import correct

BLOCK = 512
"""Curve points per compiled call: bounds the activations of all S models at one time
(S·k·m × BLOCK·P for the patch CNN) whatever the subset's size, and keeps them in the
CPU's cache (13 MB for the demo's 10 singles; at 2,048 points, 52 MB went through memory
and the singles' curves alone took 12% more time, though the whole verify showed no
measurable change: docs/verdicts.md). The counts are the same at the demo's shapes;
XLA's CPU dot may sum a logit in another order for another block (a few ulps at tiny's
shapes, no count moved: docs/verdicts.md)."""


@functools.lru_cache(maxsize=32)
def _errors_fn(apply_fn: ApplyFn, ensemble: bool) -> Any:
    """Jitted: (history (Q, S, L, ...), x (b, P, d), y (b,)) -> errors (Q, S, L, b) bool,
    with ``ensemble`` also those of the mean of the S models' logits (Q, 1, L, b). The L
    times run one after another (``lax.map``), each a batched call over the S models."""

    def point(hist, x, y):
        def at_time(p):  # (S, ...)
            logits = jax.vmap(apply_fn, in_axes=(0, None))(p, x)  # (S, b, k)
            wrong = ~jax.vmap(lambda lg: correct(lg, y))(logits)
            if not ensemble:
                return wrong
            return wrong, ~correct(logits.mean(0), y)[None]

        by_time = jax.tree.map(lambda a: jnp.moveaxis(a, 1, 0), hist)  # (L, S, ...)
        out = jax.lax.map(at_time, by_time)  # (L, S, b) [, (L, 1, b)]
        return jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), out)

    return jax.jit(jax.vmap(point, in_axes=(0, None, None)))


@functools.lru_cache(maxsize=32)
def _ensemble_accuracy_fn(apply_fn: ApplyFn) -> Any:
    """Jitted: (history (Q, S, L, ...), x (Q, N, P, d), y (Q, N)) -> the training accuracy
    (Q, L) of the mean of the S models' logits at each recorded time."""

    def point(hist, x, y):
        def at_time(p):
            logits = jax.vmap(apply_fn, in_axes=(0, None))(p, x).mean(0)
            return correct(logits, y).mean()

        return jax.lax.map(at_time, jax.tree.map(lambda a: jnp.moveaxis(a, 1, 0), hist))

    return jax.jit(jax.vmap(point))


def ensemble_train_accuracy(
    apply_fn: ApplyFn, history: Params, x: Float[Array, "Q N P d"], y: Int[Array, "Q N"]
) -> Float[np.ndarray, "Q L"]:
    """Training accuracy of the ensemble (the mean of the S models' logits) at each recorded
    time; history (Q, S, L, ...)."""
    acc = np.asarray(_ensemble_accuracy_fn(apply_fn)(history, x, y), np.float64)
    return np.where(np.isclose(acc, 1.0, rtol=0, atol=1e-9), 1.0, acc)


class Accumulator:
    """Error counts of every recorded model on the curve subset, fed chunk by chunk as the
    end point's pass draws the test sets (:func:`mvsim.verify._evaluate_points`).

    ``sets``: {name: (apply, history (Q, S, L, ...))}; 'single' also gives the ensemble.
    Counts: ``errors_multi``, ``errors_single`` (Q, S, L) and, per (class, strong view) of
    the single-view points, ``view_correct`` (Q, S, L, k, 2) with ``view_total`` (k, 2):
    the behavioural reading of the views in time, for any learner."""

    def __init__(
        self, sets: Mapping[str, tuple[ApplyFn, Params]], n_multi: int, n_single: int, k: int
    ) -> None:
        # On the device once: the recorded params come from the host (train._past_stop), and
        # each of the pass's calls would copy them again.
        self.sets = {n: (f, jax.device_put(h)) for n, (f, h) in sets.items()}
        self.n = {"multi": n_multi, "single": n_single}
        self.k = k
        self.seen = {"multi": 0, "single": 0}
        self.counts: dict[str, dict[str, np.ndarray]] = {}
        self.view_total = np.zeros((k, 2), np.int64)
        self.seconds = 0.0

    def wants(self, view: str) -> bool:
        """Whether the next chunk of ``view`` still holds curve points."""
        return self.seen[view] < self.n[view]

    def add(
        self,
        view: str,
        x: Float[Array, "b P d"],
        y: Int[Array, " b"],
        strong: Int[Array, " b"] | None = None,
    ) -> None:
        """Count the errors on the curve points among this chunk (the next points of the
        ``view`` test set, 'multi' or 'single'), in blocks of :data:`BLOCK`."""
        take = min(self.n[view] - self.seen[view], x.shape[0])
        t = time.perf_counter()
        for i in range(0, take, BLOCK):
            j = min(i + BLOCK, take)
            yb = np.asarray(y[i:j])
            for name, (apply_fn, hist) in self.sets.items():
                out = _errors_fn(apply_fn, name == "single")(hist, x[i:j], y[i:j])
                parts = {name: out} if name != "single" else {name: out[0], "ensemble": out[1]}
                for group, wrong in parts.items():
                    self._count(group, view, np.asarray(wrong), yb, strong, i, j)
            if view == "single":
                sb = np.asarray(strong[i:j])
                np.add.at(self.view_total, (yb, sb), 1)
        self.seen[view] += take
        self.seconds += time.perf_counter() - t

    def _count(self, group, view, wrong: Bool[np.ndarray, "Q S L b"], y, strong, i, j) -> None:
        c = self.counts.setdefault(group, {})
        key = f"errors_{view}"
        c[key] = c.get(key, 0) + wrong.sum(-1)
        if view == "single":
            cells = np.zeros((wrong.shape[-1], self.k, 2), np.float32)
            cells[np.arange(wrong.shape[-1]), y, np.asarray(strong[i:j])] = 1
            ok = np.einsum("qslb,bkv->qslkv", (~wrong).astype(np.float32), cells)
            c["view_correct"] = c.get("view_correct", 0) + np.rint(ok).astype(np.int64)

    def result(self, q: int) -> dict[str, dict[str, Any]]:
        """Point q's counts: {group: {errors_multi (S, L), errors_single (S, L),
        view_correct (S, L, k, 2), view_total (k, 2), n_multi, n_single}}."""
        out = {}
        for group, c in self.counts.items():
            S, L = c["errors_single"].shape[1:3]
            em = c.get("errors_multi")  # none where the multi-view set is empty (μ = 1)
            out[group] = {
                "errors_multi": np.zeros((S, L), np.int64) if em is None else em[q],
                "errors_single": np.asarray(c["errors_single"])[q],
                "view_correct": np.asarray(c["view_correct"])[q],
                "view_total": self.view_total.copy(),
                "n_multi": self.seen["multi"],
                "n_single": self.seen["single"],
            }
        return out
