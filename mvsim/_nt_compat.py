"""Make neural-tangents 0.6.5 whole on current JAX: ``import_neural_tangents()``.

Why this exists
---------------
neural-tangents 0.6.5 (Dec 2023, the last release) was written against JAX 0.4 and
fails to import on current JAX: it imports names that JAX has since moved or deleted,
and its structured-derivatives NTK walks JAX's autodiff internals, which JAX rewrote.
We put the missing names back, replace the few neural-tangents functions that touch
the rewritten internals, and import it. Use ``import_neural_tangents()`` (or
``mvsim.neural_tangents()``) instead of ``import neural_tangents``; a later plain
``import neural_tangents`` returns the same, patched module.

Supported: jax >= 0.10 (tested on 0.10.2, Python 3.11). The JAX names are restored only
where they are missing, so that part is a no-op where JAX still ships them. The
replaced functions follow JAX >= 0.10's internals; on an older JAX
``import_neural_tangents`` raises an ImportError that says so. Whether the whole
public API works is checked by neural-tangents' own test suite
(``scripts/nt_upstream_suite.py``; results in docs/ntk.md).

Each patch, and the JAX change it answers
-----------------------------------------
Import time (names neural-tangents imports at module level):

``jax.core.{Jaxpr, JaxprEqn, Literal, Primitive, Var}``
    Moved from ``jax.core`` to ``jax.extend.core`` (JAX 0.4.x deprecations, removed
    later). ``ShapedArray``, ``Value``, ``AbstractValue`` and ``eval_context`` are still
    in ``jax.core`` on 0.10 but are in the same list in case a later JAX drops them.
``jax.util`` (``safe_map``, ``safe_zip``)
    The public ``jax.util`` module was deleted. Taken from ``jax._src.util``, else
    small strict re-implementations.
``jax.interpreters.ad.zeros_like_p``
    Removed (symbolic zeros replaced it); neural-tangents uses it only as a dict key.
``neural_tangents.experimental`` (stubbed)
    Its only content is the TensorFlow (jax2tf) NTK, which imports TensorFlow at import
    time; mvsim installs no TensorFlow. The stub names the entry point and raises an
    ImportError on use (:data:`TF_ONLY`).

Run time, in ``neural_tangents._src.empirical`` (module attributes replaced by
``_patch_empirical``; nothing in JAX is changed):

``_get_primals_out_and_pullback``
    ``jax.interpreters.ad.linearize`` changed signature and result with JAX's direct
    linearization: it takes a ``FlatTree`` of primals (not ``*primals``) and returns
    ``(out_primals, out_zeros, jaxpr, consts)`` (not partial values). Its old call
    raised "linearize() got multiple values for argument 'has_aux'", which broke
    implementation 3 (structured derivatives), AUTO and masking.
``_eqn_vjp_fn``
    ``Primitive.map_primitive`` was removed with the old ``pmap``; call-primitive
    transposes lost their ``reduce_axes`` argument; ``ad.reducing_transposes`` was
    removed; and several primitives (``slice``, ``dynamic_slice``, ``remat``,
    ``cond``, ``scan`` ...) now have only an accumulator-style
    ``ad.fancy_transposes`` rule, which this version calls with JAX's own
    ``ValAccum`` accumulators, as ``ad.backward_pass3`` does.
``_read_primal``, ``_write_cotangent``
    ``jax.core.DShapedArray`` (dynamic shapes), ``core.get_aval``,
    ``core.lattice_join`` and ``ad.config`` are gone; the dynamic-shape branch and the
    debug-only aval check had no other use.
``ad`` (the module name inside ``empirical``)
    ``jax.interpreters.ad.source_info_util`` is no longer re-exported; a proxy that
    adds it back is given to neural-tangents' module only.
``_get_flops``
    ``Compiled.cost_analysis()`` returns one dict, no longer a list of dicts (``[0]``
    raised ``KeyError: 0``), which broke ``implementation=AUTO``.
``_std_basis``, ``_unravel_array_into_pytree``
    ``jnp.size`` of a ``jax.ShapeDtypeStruct`` is deprecated ("will become an error");
    implementation 2 calls it on ``eval_shape`` outputs. These take sizes from shapes.
``_get_fx_axis_and_dtype``
    ``jnp.dtype(array)`` (an array converted to its dtype) is deprecated, "in the future
    an error"; implementation 3 called it on every parameter. This reads ``.dtype``.

Run time, in ``neural_tangents._src.predict``:

``_get_cho_solve``, ``_get_fns_in_eigenbasis``
    neural-tangents computes the train kernel's Cholesky / eigendecomposition once,
    inside ``jax.core.eval_context()``, so that a later ``jit`` does not capture it.
    Since JAX's "stackless" rewrite of tracing (0.4.36) that context evaluates
    *everything* eagerly, and a kernel that is itself a tracer (``gradient_descent_mse``
    under ``vmap``) escapes its trace (``UnexpectedTracerError``). These run in that
    tracer's own trace, as the context did before; a concrete kernel is still decomposed
    eagerly.
``sp`` (``scipy`` inside ``predict``)
    Not JAX: SciPy removed ``eigvalsh(..., eigvals=...)`` for ``subset_by_index``
    (deprecated in 1.12.0, gone in 1.17.1), which broke ``max_learning_rate`` on the
    CPU. The module gets a ``scipy`` whose ``linalg.eigvalsh`` takes the old keyword.

When upstream is fixed
----------------------
Once a neural-tangents release works on the JAX in use, delete this module and
replace ``import_neural_tangents()`` with ``import neural_tangents``;
``tests/test_nt_compat.py`` and the upstream suite then still serve as checks.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import math
import re
import sys
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["MIN_JAX", "TF_ONLY", "import_neural_tangents"]

_INSTALL_HINT = "pip install --no-deps neural-tangents==0.6.5 frozendict"

MIN_JAX = (0, 10)
"""The oldest JAX whose internals the run-time patches follow."""

TF_ONLY = {
    "neural_tangents.experimental": ("empirical_ntk_fn_tf", "get_apply_fn_and_params"),
    "neural_tangents.experimental.empirical_tf": ("empirical_ntk_fn_tf", "get_apply_fn_and_params"),
    "neural_tangents.experimental.empirical_tf.empirical": (
        "empirical_ntk_fn_tf",
        "get_apply_fn_and_params",
    ),
}
"""neural-tangents' TensorFlow-only entry points, by the (stub) module that holds them."""

# Names neural-tangents 0.6.5 imports from ``jax.core``.
_CORE_NAMES = (
    "Jaxpr",
    "JaxprEqn",
    "Literal",
    "Primitive",
    "Var",
    "ShapedArray",
    "Value",
    "AbstractValue",
    "eval_context",
)


def _jax_version(version: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ImportError(f"cannot read the JAX version {version!r}")
    return int(match[1]), int(match[2])


def _check_jax_version() -> None:
    import jax

    if _jax_version(jax.__version__) < MIN_JAX:
        minimum = ".".join(map(str, MIN_JAX))
        raise ImportError(
            f"mvsim.neural_tangents() needs jax >= {minimum}, found jax {jax.__version__}: its "
            "patches (mvsim/_nt_compat.py) follow the internals of current JAX and would "
            "break neural-tangents on an older one. Upgrade JAX (`pip install -U jax`), or on "
            "JAX 0.4 use neural-tangents' own `import neural_tangents` without mvsim."
        )


def _first_attr(name: str, module_names: tuple[str, ...]) -> Any:
    # Callers list the public home (jax.extend) before the private one (jax._src), which
    # may move without notice.
    for module_name in module_names:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, name):
            return getattr(module, name)
    raise ImportError(f"cannot restore {name!r}: not found in any of {module_names}")


# Last-resort copies of jax's strict helpers, for a JAX that drops them from jax._src.util.
def _safe_map(f: Callable[..., Any], *args: Iterable[Any]) -> list[Any]:
    return [f(*xs) for xs in zip(*args, strict=True)]


def _safe_zip(*args: Iterable[Any]) -> list[tuple[Any, ...]]:
    return list(zip(*args, strict=True))


def _patch_jax() -> None:
    import jax
    import jax.core
    import jax.interpreters.ad

    for name in _CORE_NAMES:
        if not hasattr(jax.core, name):
            setattr(jax.core, name, _first_attr(name, ("jax.extend.core", "jax._src.core")))

    if "jax.util" not in sys.modules:
        try:
            importlib.import_module("jax.util")
        except ImportError:
            util = types.ModuleType("jax.util", "Shim added by mvsim._nt_compat.")
            sys.modules["jax.util"] = util
            if not hasattr(jax, "util"):
                jax.util = util
    util = sys.modules["jax.util"]
    for name, fallback in (("safe_map", _safe_map), ("safe_zip", _safe_zip)):
        if not hasattr(util, name):
            try:
                setattr(util, name, _first_attr(name, ("jax._src.util",)))
            except ImportError:
                setattr(util, name, fallback)

    ad = jax.interpreters.ad
    if not hasattr(ad, "zeros_like_p"):
        try:
            ad.zeros_like_p = _first_attr("zeros_like_p", ("jax._src.ad_util",))
        except ImportError:
            # Only used as a dict key for NT's rules; a primitive JAX never emits is harmless.
            from jax.extend.core import Primitive

            ad.zeros_like_p = Primitive("zeros_like")


def _tf_only_error(module: str, attr: str) -> ImportError:
    return ImportError(
        f"{module}.{attr} is neural-tangents' TensorFlow-only (jax2tf) NTK, and "
        "mvsim.neural_tangents() does not load TensorFlow: it is not available here. For a "
        "JAX function use neural_tangents.empirical_ntk_fn (implementations 1, 2, 3 or AUTO)."
    )


def _stub_experimental() -> None:
    for name, entry_points in TF_ONLY.items():
        if name in sys.modules:
            continue
        stub = types.ModuleType(name, "Stub from mvsim._nt_compat: TensorFlow-only, not loaded.")
        stub.__path__ = []  # a package, so `import name.sub` finds the stubbed submodules

        def __getattr__(attr: str, name: str = name, entry_points: Sequence[str] = entry_points):
            # The named entry points raise ImportError, so `from name import attr` shows
            # this message (an AttributeError there becomes a bare "cannot import name").
            if attr in entry_points:
                raise _tf_only_error(name, attr)
            raise AttributeError(f"module {name!r} (TensorFlow-only, stubbed) has no {attr!r}")

        stub.__getattr__ = __getattr__  # type: ignore[method-assign]
        # `from . import experimental` in neural_tangents/__init__ finds this entry first,
        # so the TensorFlow-importing package is never executed.
        sys.modules[name] = stub
        parent, _, child = name.rpartition(".")
        if parent in TF_ONLY:  # as an imported package holds its submodules
            setattr(sys.modules[parent], child, stub)


# --- run-time patches of neural_tangents._src.empirical (see the module docstring) ------


def _get_primals_out_and_pullback(
    fn: Callable[..., Any],
    mode: Any,
    _j_rules: bool,
    _s_rules: bool,
    _fwd: bool | None,
    *primals_in: Any,
) -> tuple[Any, Callable[..., Any]]:
    """Outputs of ``fn`` and neural-tangents' structured pullback, on JAX's direct
    linearization: ``jaxpr`` is linear in its invars (one per primal leaf), its
    outvars are the output tangents that are not symbolically zero."""
    import jax
    from jax._src.tree_util import FlatTree
    from jax.interpreters import ad
    from jax.tree_util import tree_flatten, tree_unflatten
    from neural_tangents._src import empirical

    params = list(inspect.signature(ad.linearize).parameters)
    if params[:2] != ["traceable", "primals_ft"]:
        raise NotImplementedError(
            "neural-tangents' structured derivatives (empirical_ntk_fn implementation 3, "
            "and AUTO) follow jax.interpreters.ad.linearize(traceable, primals_ft, ...) of "
            f"jax 0.10, and jax {jax.__version__} has linearize{tuple(params)}: use "
            "implementation 1 or 2, and report it against mvsim/_nt_compat.py."
        )
    primals_ft = FlatTree.flatten(primals_in)
    # As neural-tangents did: jit-compiled calls are traced through, not kept as calls.
    # is_vjp=True is jax.vjp's mode: the linear jaxpr is meant to be transposed.
    with jax.disable_jit():
        out_ft, out_zeros, jaxpr, consts = ad.linearize(
            lambda *args: fn(*args), primals_ft, is_vjp=True
        )

    def pullback_fn(*cts_in: Any) -> Any:
        cts, _ = tree_flatten(cts_in)
        cts = tuple(ct for ct, zero in zip(cts, out_zeros, strict=True) if not zero)
        dummy_args = [ad.UndefinedPrimal(v.aval) for v in jaxpr.invars]
        cts_out = empirical._backward_pass(
            jaxpr,
            mode=mode,
            consts=consts,
            primals_in=dummy_args,
            cotangents_in=cts,
            _j_rules=_j_rules,
            _s_rules=_s_rules,
            _fwd=_fwd,
        )
        return tree_unflatten(primals_ft.tree, cts_out)

    return out_ft.unflatten(), pullback_fn


def _eqn_vjp_fn(eqn: Any, cts_in: Any, *invals: Any) -> Sequence[Any]:
    """Cotangents of ``eqn``'s inputs (``None`` for the non-linear ones), with JAX's
    transpose rules as ``jax._src.interpreters.ad.backward_pass3`` applies them."""
    if eqn is None:  # neural-tangents' identity equation
        return (cts_in,)
    from jax._src import source_info_util
    from jax._src.interpreters import ad

    prim = eqn.primitive
    stack = source_info_util.current_name_stack() + eqn.source_info.name_stack
    with source_info_util.user_context(eqn.source_info.traceback, name_stack=stack):
        if prim in ad.fancy_transposes:
            accums = [
                ad.ValAccum(x.aval.to_ct_aval()) if ad.is_undefined_primal(x) else x for x in invals
            ]
            ad.fancy_transposes[prim](cts_in, *accums, **eqn.params)
            return [a.freeze() if isinstance(a, ad.ValAccum) else None for a in accums]
        rule = ad.get_primitive_transpose(prim)
        if prim.call_primitive:
            params = dict(eqn.params)
            call_jaxpr = params.pop("call_jaxpr")
            return rule(params, call_jaxpr, invals, cts_in, [v.aval for v in eqn.outvars])
        return rule(cts_in, *invals, **eqn.params)


def _read_primal(env: dict[Any, Any], v: Any) -> Any:
    from jax.extend.core import Literal
    from jax.interpreters import ad

    if type(v) is Literal:
        return v.val
    return env.get(v, ad.UndefinedPrimal(v.aval))


def _write_cotangent(prim: Any, ct_env: dict[Any, Any], v: Any, ct: Any) -> None:
    from jax.extend.core import Literal
    from jax.interpreters import ad

    if ct is None or type(v) is Literal or type(ct) is ad.Zero:
        return
    ct_env[v] = ad.add_tangents(ct_env[v], ct) if v in ct_env else ct


def _get_flops(f: Callable[..., Any], optimize: bool, *args: Any, **kwargs: Any) -> float:
    import jax

    lowered = jax.jit(f).lower(*args, **kwargs)
    analysis = lowered.compile().cost_analysis() if optimize else lowered.cost_analysis()
    if isinstance(analysis, list | tuple):  # JAX 0.4: one dict per device
        analysis = analysis[0]
    return analysis["flops"]


def _get_fx_axis_and_dtype(fx: Any, fx_axis: Any, params: Any) -> tuple[Any, Any]:
    """As neural-tangents', with each leaf's ``.dtype`` (``jnp.dtype(array)`` is deprecated)."""
    import jax
    import jax.numpy as jnp

    if fx_axis is None:
        fx_axis = jax.tree.map(lambda _: None, fx)
    dtypes = [getattr(x, "dtype", None) or jnp.dtype(x) for x in jax.tree.leaves(params)]
    return fx_axis, functools.reduce(jnp.promote_types, dtypes) if dtypes else None


def _size(x: Any) -> int:
    return math.prod(np.shape(x))


def _std_basis(pytree: Any) -> Any:
    import jax
    import jax.numpy as jnp

    leaves = jax.tree.leaves(pytree)
    eye = jnp.eye(sum(map(_size, leaves)), dtype=jax.dtypes.result_type(*leaves))
    return _unravel_array_into_pytree(pytree, 1, eye)


def _unravel_array_into_pytree(pytree: Any, axis: int, arr: Any) -> Any:
    """Split ``arr`` along ``axis`` into the leaves of ``pytree`` (their shapes there)."""
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree.flatten(pytree)
    if arr.ndim > 0:
        axis %= arr.ndim
    parts = jnp.split(arr, np.cumsum([_size(leaf) for leaf in leaves[:-1]]), axis)
    shapes = [arr.shape[:axis] + np.shape(leaf) + arr.shape[axis + 1 :] for leaf in leaves]
    return jax.tree.unflatten(treedef, [p.reshape(s) for p, s in zip(parts, shapes, strict=True)])


def _in_own_trace(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(kernel, ...)`` in the kernel's own trace when it is a tracer (see above)."""

    @functools.wraps(fn)
    def wrapper(kernel: Any, *args: Any, **kwargs: Any) -> Any:
        from jax._src import core

        if isinstance(kernel, core.Tracer):
            with core.set_current_trace(kernel._trace):
                return fn(kernel, *args, **kwargs)
        return fn(kernel, *args, **kwargs)

    return wrapper


def _eigvalsh(a: Any, *args: Any, eigvals: Any = None, **kwargs: Any) -> Any:
    import scipy.linalg

    if eigvals is not None:
        kwargs["subset_by_index"] = eigvals
    return scipy.linalg.eigvalsh(a, *args, **kwargs)


def _patch_predict(predict: types.ModuleType) -> None:
    for name in ("_get_cho_solve", "_get_fns_in_eigenbasis"):
        setattr(predict, name, _in_own_trace(getattr(predict, name)))
    # neural-tangents calls only sp.linalg.eigvalsh (max_learning_rate).
    predict.sp = types.SimpleNamespace(linalg=types.SimpleNamespace(eigvalsh=_eigvalsh))


class _AdWithSourceInfo(types.ModuleType):
    """``jax.interpreters.ad`` plus the ``source_info_util`` it no longer re-exports."""

    def __getattr__(self, name: str) -> Any:
        from jax._src import source_info_util
        from jax.interpreters import ad

        return source_info_util if name == "source_info_util" else getattr(ad, name)


def _patch_empirical(empirical: types.ModuleType) -> None:
    for fn in (
        _get_primals_out_and_pullback,
        _eqn_vjp_fn,
        _read_primal,
        _write_cotangent,
        _get_flops,
        _get_fx_axis_and_dtype,
        _std_basis,
        _unravel_array_into_pytree,
    ):
        setattr(empirical, fn.__name__, fn)
    empirical.ad = _AdWithSourceInfo("jax.interpreters.ad")


def import_neural_tangents() -> types.ModuleType:
    """Patch JAX and neural-tangents as described in the module docstring and return
    ``neural_tangents``.

    Idempotent: later calls return the already imported module.

    Raises:
        ImportError: if neural-tangents (or its ``frozendict`` dependency) is not
            installed, if JAX is older than :data:`MIN_JAX`, or if a name cannot be
            restored on this JAX.
    """
    _check_jax_version()
    if "neural_tangents" in sys.modules:
        return sys.modules["neural_tangents"]
    if importlib.util.find_spec("neural_tangents") is None:
        raise ImportError(f"neural-tangents is not installed; install it with `{_INSTALL_HINT}`.")
    _patch_jax()
    _stub_experimental()
    try:
        nt = importlib.import_module("neural_tangents")
    except ModuleNotFoundError as e:
        if e.name == "frozendict":
            raise ImportError(
                f"neural-tangents needs frozendict; install with `{_INSTALL_HINT}`."
            ) from e
        raise
    _patch_empirical(importlib.import_module("neural_tangents._src.empirical"))
    _patch_predict(importlib.import_module("neural_tangents._src.predict"))
    return nt
