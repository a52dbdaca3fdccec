"""Learners beyond the paper's patch CNN: flax.nnx modules as mvsim (init, apply) pairs.

The trainer, the flow, and every stage of verify take a :class:`mvsim.model.Network`:
``init(key) -> params`` and ``apply(params, x (n, P, d)) -> logits (n, k)``, pure
functions over a params pytree. :func:`from_nnx` makes one from a flax.nnx module class:

- the convention: ``Class(d=d, k=k, rngs=nnx.Rngs(key), **kwargs)`` is constructed once
  per seed (inside ``init``, so ``jax.vmap(init)`` draws every seed's init in one call),
  and calling the module maps x (n, P, d) to logits (n, k);
- params are the module's state as a nested dict of arrays (``nnx.split``, then a pure
  dict), the graph definition stays static in the closure, and ``apply`` is
  ``nnx.merge(graphdef, params)(x)``, so a module is rebuilt only at trace time;
- every leaf of the state is trained: a module with non-parameter state (BatchNorm
  statistics, an RNG stream kept for dropout) is not a function of its params alone and
  is rejected.

A learner without the patch CNN's weight-space reading of its views (Λ) records no Λ
(:func:`mvsim.model.no_alignment`); its views are read from behaviour
(:func:`mvsim.mechanism.behavioural_views`).

flax.linen is not supported: its ``init``/``apply`` already are an (init, apply) pair,
so a linen adapter would be three lines (``lambda key: m.init(key, x0)``,
``m.apply``), but linen is in maintenance mode and nnx is what flax documents now.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from frozendict import frozendict

from mvsim import model
from mvsim.config import ConfigError, ModelConfig
from mvsim.model import Network


class MLP(nnx.Module):
    """One hidden layer on the flattened input: logits = W₂ gelu(W₁ vec(x) + b₁) + b₂.

    No patch structure: a view must be learned at each of the P positions it can occupy.
    GELU rather than ReLU: the flow integrates a smooth vector field in fewer steps."""

    def __init__(self, d: int, k: int, *, rngs: nnx.Rngs, P: int, width: int = 64) -> None:
        self.hidden = nnx.Linear(P * d, width, rngs=rngs)
        self.out = nnx.Linear(width, k, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.gelu(self.hidden(x.reshape(x.shape[0], -1))))


class _Block(nnx.Module):
    """Pre-LayerNorm transformer block: self-attention, then a GELU MLP of width 2·dim."""

    def __init__(self, dim: int, heads: int, rngs: nnx.Rngs) -> None:
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=dim, decode=False,
                                           rngs=rngs)  # fmt: skip
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
        self.fc1 = nnx.Linear(dim, 2 * dim, rngs=rngs)
        self.fc2 = nnx.Linear(2 * dim, dim, rngs=rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        h = h + self.attn(self.ln1(h))
        return h + self.fc2(jax.nn.gelu(self.fc1(self.ln2(h))))


class ViT(nnx.Module):
    """ViT-tiny over the P patches: each patch embedded by one linear map, ``depth``
    blocks, mean pooling over the patches, LayerNorm, a linear head.

    No position embedding: the data puts a feature in a random patch, so position carries
    nothing (the patch CNN too sums over patches)."""

    def __init__(
        self, d: int, k: int, *, rngs: nnx.Rngs, dim: int = 32, depth: int = 1, heads: int = 2
    ) -> None:
        self.embed = nnx.Linear(d, dim, rngs=rngs)
        self.blocks = nnx.List([_Block(dim, heads, rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, k, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h.mean(1)))


def _thaw(v: Any) -> Any:
    """A config's frozen kwargs back to plain dicts and lists for the user's module."""
    if isinstance(v, frozendict):
        return {key: _thaw(a) for key, a in v.items()}
    if isinstance(v, tuple):
        return [_thaw(a) for a in v]
    return v


_NO_KWARGS: frozendict = frozendict()


@functools.cache
def from_nnx(
    factory: Callable[..., nnx.Module],
    d: int,
    k: int,
    kwargs: frozendict = _NO_KWARGS,
    dtype: Any = jnp.float32,
    *,
    name: str | None = None,
) -> Network:
    """The (init, apply) pair of a flax.nnx module class (see the module docstring).

    ``init(key)`` builds ``factory(d=d, k=k, rngs=nnx.Rngs(key), **kwargs)`` and returns its
    state as a nested dict of arrays in ``dtype``; ``apply(params, x (n, P, d))`` merges
    them into the module and calls it. Cached, so equal arguments give the same functions
    (jit caches compiled code by function identity). ``name`` (the learner's import path)
    is what a :class:`ConfigError` names; the module is built once abstractly here, so a
    bad constructor or non-parameter state fails before any compute.
    """
    what = name or getattr(factory, "__name__", repr(factory))
    build = lambda key: factory(d=d, k=k, rngs=nnx.Rngs(key), **_thaw(kwargs))
    try:
        abstract = nnx.eval_shape(lambda: build(jax.random.key(0)))
    except Exception as e:  # the user's constructor: any error is theirs to see
        field = "learner_kwargs" if kwargs else "learner"
        raise ConfigError(
            field,
            dict(kwargs) if kwargs else what,
            f"constructing {what}(d={d}, k={k}, rngs=..., **{dict(kwargs)}) "
            f"raised {type(e).__name__}: {e}",
        ) from None
    if not isinstance(abstract, nnx.Module):
        raise ConfigError(
            "learner",
            what,
            f"built a {type(abstract).__name__}, not a "
            "flax.nnx.Module (flax.linen modules are not supported)",
        )
    _, _, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):
        kinds = sorted({type(v).__name__ for v in jax.tree.leaves(rest, is_leaf=_is_var)})
        raise ConfigError(
            "learner",
            what,
            f"has state that is not an nnx.Param ({kinds}): "
            "mvsim trains every leaf and needs apply to be a function of the "
            "params alone (no batch statistics or stored RNG streams)",
        )
    graphdef, _ = nnx.split(abstract)

    def init(key: jax.Array) -> dict:
        state = nnx.to_pure_dict(nnx.state(build(key)))
        # Drawn at the module's own precision and cast, as the patch CNN's init is.
        return jax.tree.map(lambda a: jnp.asarray(a, dtype), state)

    def apply(params: dict, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params)(x)

    return Network(init, apply, model.no_alignment)


def _is_var(v: Any) -> bool:
    return isinstance(v, nnx.Variable)


def load(path: str) -> Callable[..., nnx.Module]:
    """The object an import path 'package.module:Class' names; :class:`ConfigError`
    naming ``learner`` and the path when it cannot be imported or found."""
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the user's module failing as it loads
        raise ConfigError(
            "learner", path, f"cannot import module '{module_name}' ({type(e).__name__}: {e})"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError("learner", path, f"module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError("learner", path, f"'{attr}' is a {type(obj).__name__}, not a class")
    return obj


def path_of(cls: type) -> str:
    """The ``learner`` value that names class ``cls``: 'module:QualName'. A class defined
    in a notebook is '__main__:Name', which the notebook's own process can import."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _spec(M: ModelConfig, P: int) -> tuple[Callable[..., nnx.Module], frozendict]:
    """The module class and keyword arguments of a non-patch-CNN learner."""
    if M.learner == "vit":
        return ViT, frozendict(dim=M.vit_dim, depth=M.vit_depth, heads=M.vit_heads)
    if M.learner == "mlp":
        return MLP, frozendict(P=P, width=M.mlp_width)
    return load(M.learner), M.learner_kwargs


def network(M: ModelConfig, k: int, d: int, P: int, dtype: Any = jnp.float32) -> Network:
    """The learner ``M.learner`` names, as an (init, apply) pair for k classes and inputs
    (n, P, d): the patch CNN (:func:`mvsim.model.network`) or a flax.nnx module."""
    if M.learner == "patch_cnn":
        return model.network(M, k, d, dtype)
    factory, kwargs = _spec(M, P)
    return from_nnx(factory, d, k, kwargs, dtype, name=M.learner)


def student_budget(M: ModelConfig, kd_T: int) -> int:
    """GD-equivalent steps a distilled student may take: ``kd_T``, capped at ``vit_kd_T``
    for the ViT (whose stiff flow would otherwise cost hours per student)."""
    return min(kd_T, M.vit_kd_T) if M.learner == "vit" else kd_T


def averaged(M: ModelConfig, k: int, d: int, P: int, K: int, dtype: Any = jnp.float32) -> Network:
    """The "training average" of K learners: one model, the mean of their outputs, trained
    jointly (:func:`mvsim.model.averaged` for the patch CNN). Params have a leading K."""
    if M.learner == "patch_cnn":
        return model.averaged(M, k, d, K, dtype)
    return mean_of(network(M, k, d, P, dtype), K)


@functools.cache
def mean_of(net: Network, K: int) -> Network:
    """One model defined as the mean of K copies of ``net``'s outputs (leading K on every
    params leaf); cached so that equal arguments share compiled code."""

    def init(key: jax.Array) -> Any:
        return jax.vmap(net.init)(jax.random.split(key, K))

    def apply(params: Any, x: jax.Array) -> jax.Array:
        return jax.vmap(net.apply, in_axes=(0, None))(params, x).mean(0)

    return Network(init, apply, net.alignment)


def reads_weights(M: ModelConfig) -> bool:
    """Whether the learner's views are read from its weights (Λ, the patch CNN) rather
    than from its behaviour."""
    return M.learner == "patch_cnn"


@functools.cache
def check(M: ModelConfig, k: int, d: int, P: int) -> None:
    """Reject a learner that cannot be trained, before any compute: an import path that
    does not resolve, a constructor that fails, non-parameter state, or a module whose
    output on x (2, P, d) is not logits (2, k) (all :class:`ConfigError` naming
    ``learner`` or ``learner_kwargs``, the path and the shape). Abstract evaluation only
    (``jax.eval_shape``): nothing is computed."""
    if M.learner != "patch_cnn":
        net = network(M, k, d, P)
        x = jax.ShapeDtypeStruct((2, P, d), jnp.float32)
        try:
            out = jax.eval_shape(net.apply, jax.eval_shape(net.init, jax.random.key(0)), x)
        except Exception as e:
            raise ConfigError(
                "learner",
                M.learner,
                f"calling it on x of shape (n, P, d) = "
                f"(2, {P}, {d}) raised {type(e).__name__}: {e}",
            ) from None
        shape = tuple(getattr(out, "shape", ())) if not isinstance(out, tuple | list) else None
        if shape != (2, k):
            got = shape if shape is not None else f"a {type(out).__name__}"
            raise ConfigError(
                "learner",
                M.learner,
                f"maps x of shape (n, P, d) = (2, {P}, "
                f"{d}) to an output of shape {got}; mvsim needs logits of shape "
                f"(n, k) = (2, {k})",
            )
