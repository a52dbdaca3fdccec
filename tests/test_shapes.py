"""The array shapes in the signatures (jaxtyping's ``Float[Array, "n P d"]``) hold: each
public function of mvsim.data and mvsim.ntk is called on small inputs, and its arguments
and results are checked against its annotations, one dimension name bound to one size per
call. No runtime checker decorates the package; this test is what keeps the annotations
(and the docstrings that repeat them) true."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

import jax
import jaxtyping
import numpy as np
import pytest

from mvsim import data, ntk
from mvsim.config import make_config
from mvsim.ntk import linearized


def _conforms(value: Any, hint: Any) -> bool:
    """Does ``value`` match ``hint``, for the parts of it that are array shapes? Arrays are
    checked, NamedTuples field by field, tuples item by item; other hints pass."""
    if isinstance(hint, type) and issubclass(hint, jaxtyping.AbstractArray):
        return isinstance(value, hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args if a is not type(None)) or value is None
    if origin is tuple and isinstance(value, tuple) and len(args) == len(value):
        return all(_conforms(v, a) for v, a in zip(value, args, strict=True))
    if isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields"):
        if not isinstance(value, hint):
            return False
        fields = typing.get_type_hints(hint)
        return all(_conforms(getattr(value, f), h) for f, h in fields.items())
    return True


def _check(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call fn and check its arguments and result against its annotations, in one
    dimension-binding context (so 'n' is one size across all of them)."""
    hints = typing.get_type_hints(fn)
    bound = inspect.signature(fn).bind(*args, **kwargs)
    with jaxtyping.jaxtyped("context"):
        for name, value in bound.arguments.items():
            assert _conforms(value, hints.get(name)), f"{fn.__name__}: argument {name}"
        out = fn(*args, **kwargs)
        assert _conforms(out, hints.get("return")), f"{fn.__name__}: result"
    return out


@pytest.fixture(scope="module")
def cfg():
    return make_config("tiny", {})


def test_data_signatures_hold(cfg) -> None:
    D = cfg.data
    V = _check(data.features, jax.random.key(0), D.d, D.k)
    assert V.shape == (D.k, 2, D.d)
    b, truth = _check(data.sample, jax.random.key(1), D, 12, V, ground_truth=True)
    assert b.x.shape == (12, D.P, D.d) and truth.patches.shape[-1] == D.C_p
    assert _check(data.training_set, jax.random.key(2), D, V).x.shape[0] == D.N
    for part in data.iter_chunks(jax.random.key(3), D, 10, V, "single", chunk=4):
        assert _conforms(part, data.Batch)
    # A wrong shape is caught: the check is not vacuous.
    with jaxtyping.jaxtyped("context"):
        assert not _conforms(b._replace(y=b.y[:-1]), data.Batch)


def test_ntk_signatures_hold() -> None:
    cfg = make_config("tiny", {"ntk_terms": 8})
    D = cfg.data
    x1 = jax.random.normal(jax.random.key(0), (3, D.P, D.d)) / np.sqrt(D.d)
    x2 = jax.random.normal(jax.random.key(1), (5, D.P, D.d)) / np.sqrt(D.d)
    a = jax.numpy.linspace(0.0, 2.0, 7)
    alpha, second = _check(ntk.hermite_coefficients, a, 2, 0.5, 8)
    assert alpha.shape == (7, 8) and second.shape == (7,)
    assert _check(ntk.series_kernel, cfg, x1, x2).shape == (3, 5)
    assert _check(ntk.series_error_bound, cfg, x1, x2).shape == (3, 5)
    y = jax.numpy.arange(5, dtype=jax.numpy.int32) % D.k
    assert _check(ntk.kernel_predict, cfg, x2, y, x1).shape == (3, D.k)
    W = jax.random.normal(jax.random.key(2), (16, D.d))
    theta, spread = _check(ntk.empirical_ntk, W, x1, x2, 2, 0.5)
    assert theta.shape == spread.shape == (3, 5)
    logits = jax.random.normal(jax.random.key(3), (cfg.ntk.ntk_seeds, D.N, D.k))
    variants = _check(linearized.teacher_variants, cfg, logits, None, np.float32)
    assert all(v.shape == (cfg.ntk.ntk_kd_students, D.N, D.k) for v in variants.values())


def test_model_signatures_hold(cfg) -> None:
    from mvsim import model

    D, M = cfg.data, cfg.model
    W = _check(model.init_weights, jax.random.key(0), M, D.k, D.d)
    V = data.features(jax.random.key(1), D.d, D.k)
    x = data.sample(jax.random.key(2), D, 5, V).x
    assert _check(model.apply, W, x, M.q, M.varrho).shape == (5, D.k)
    _check(model.smoothed_relu, x, M.q, M.varrho)
    _check(model.smoothed_relu_grad, x, M.q, M.varrho)
    W2 = jax.numpy.stack([W, W])  # an averaged model's leading member axis
    lam = _check(model.view_strength, W2, V)
    assert lam.shape == (2, D.k, 2)
    _check(model.alignment, W, V)
    _check(model.views_learned, lam, 0.5)
    assert _check(model.lottery_winner, W2, V).shape == (2, D.k)
    hints = typing.get_type_hints(model.alignment)
    with jaxtyping.jaxtyped("context"):  # W's k against V's k: a mismatch is caught
        assert _conforms(W, hints["W"]) and not _conforms(V[:-1], hints["V"])


def test_train_signatures_hold(cfg) -> None:
    from mvsim import train

    D = cfg.data
    logits = jax.random.normal(jax.random.key(0), (6, D.k))
    y = jax.numpy.arange(6) % D.k
    for fn in (train.cross_entropy, train.accuracy, train.correct, train.margin):
        _check(fn, logits, y)
    hints = typing.get_type_hints(train.train_points)
    with jaxtyping.jaxtyped("context"):  # points' inputs: Q, N tied across x and y
        x = jax.numpy.zeros((2, 5, D.P, D.d))
        assert _conforms(x, hints["x"]) and not _conforms(y[None], hints["y"])


def test_verify_measurements_hold_their_shapes() -> None:
    """verify.run's Measurements, group by group, against the Group and Measurements
    field annotations (one S, k, n per group)."""
    from mvsim import verify

    cfg = make_config("tiny", {"seeds": 2, "T": 100, "n_test_multi": 200,
                               "n_test_single": 200})  # fmt: skip
    m = verify.run(cfg, claims=["single", "ensemble"], progress=False)
    hints = typing.get_type_hints(verify.Measurements)
    with jaxtyping.jaxtyped("context"):
        for f in ("test_single_y", "test_single_strong", "lottery", "init_alignment"):
            assert _conforms(getattr(m, f), hints[f]), f
    group = typing.get_type_hints(verify.Group)
    fields = [f for f in group if f not in ("name", "extra")]
    for name, g in m.groups.items():
        with jaxtyping.jaxtyped("context"):
            assert all(_conforms(getattr(g, f), group[f]) for f in fields), name
    g = m.groups["single"]
    with jaxtyping.jaxtyped("context"):  # one S per group: a short row count is caught
        assert _conforms(g.errors_multi, group["errors_multi"])
        assert not _conforms(g.train_accuracy[:-1], group["train_accuracy"])
