"""Make ``import neural_tangents`` work on current JAX.

Why this exists
---------------
neural-tangents 0.6.5 (the latest release) was written against JAX ~0.4 and
fails to import on current JAX, because it imports names that JAX has since
moved out of its public modules or deleted. Its kernels themselves still work,
so we put the missing names back and import it. Use ``import_neural_tangents()``
instead of ``import neural_tangents`` everywhere in mvsim.

Tested with neural-tangents 0.6.5, jax 0.10.2, Python 3.11. Every patch only
*adds* a name that is missing and never replaces an existing one, so it is a
no-op on JAX versions that still ship the name; it is meant to be safe on newer
JAX (e.g. 0.11) too, but that is untested: run tests/test_nt_compat.py there.

Names restored, and why
-----------------------
``jax.core.{Jaxpr, JaxprEqn, Literal, Primitive, Var}``
    Removed from ``jax.core`` (they now live in ``jax.extend.core``);
    ``neural_tangents._src.empirical`` and ``_src.utils.rules`` import them
    at module level. ``ShapedArray``, ``Value``, ``AbstractValue`` and
    ``eval_context`` are still in ``jax.core`` on 0.10 but are in the same list
    in case a later JAX drops them too. Taken from ``jax.extend.core``, else
    ``jax._src.core``.
``jax.util`` (module with ``safe_map``, ``safe_zip``)
    The public ``jax.util`` module was deleted; ``_src.empirical`` imports
    both helpers from it. Taken from ``jax._src.util``, else small strict
    re-implementations.
``jax.interpreters.ad.zeros_like_p``
    Removed from ``jax.interpreters.ad``; ``_src.utils.rules`` uses it as a
    dict key when registering rules at import time. Taken from
    ``jax._src.ad_util``, else a fresh, otherwise unused ``Primitive``.
``neural_tangents.experimental`` (stubbed in ``sys.modules``)
    It only holds the TensorFlow (jax2tf) NTK, which imports TensorFlow at
    import time. We never use it and must not install TensorFlow, so it is
    replaced by an empty module that raises on attribute access.

Known limitation: ``nt.empirical_ntk_fn(..., implementation=3)`` (structured
derivatives) still fails at call time (``TypeError`` from the changed
``jax.interpreters.ad.linearize`` signature); implementations 1 and 2 work.
Known risk: implementation 2 calls ``jnp.size`` on a ``ShapeDtypeStruct``, which
JAX 0.10 accepts with a DeprecationWarning and says will become an error in a
future release (at which point the implementation-2 test will fail).

When upstream is fixed
----------------------
Once a neural-tangents release imports cleanly on the JAX in use, delete this
module and replace ``import_neural_tangents()`` with ``import neural_tangents``.
``tests/test_nt_compat.py`` then still serves as the smoke test.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["import_neural_tangents"]

_INSTALL_HINT = "pip install --no-deps neural-tangents==0.6.5 frozendict"

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


def _stub_experimental() -> None:
    name = "neural_tangents.experimental"
    if name in sys.modules:
        return
    stub = types.ModuleType(name, "Stub from mvsim._nt_compat: needs TensorFlow, not available.")

    def __getattr__(attr: str) -> Any:
        # AttributeError (not ImportError) so hasattr() and introspection keep working.
        raise AttributeError(f"{name}.{attr} needs TensorFlow; stubbed out by mvsim._nt_compat.")

    stub.__getattr__ = __getattr__  # type: ignore[method-assign]
    # `from . import experimental` in neural_tangents/__init__ finds this entry first,
    # so the TensorFlow-importing package is never executed.
    sys.modules[name] = stub


def import_neural_tangents() -> types.ModuleType:
    """Patch JAX as described in the module docstring and return ``neural_tangents``.

    Idempotent: later calls return the already imported module.

    Raises:
        ImportError: if neural-tangents (or its ``frozendict`` dependency) is
            not installed, or a name cannot be restored on this JAX.
    """
    if "neural_tangents" in sys.modules:
        return sys.modules["neural_tangents"]
    if importlib.util.find_spec("neural_tangents") is None:
        raise ImportError(f"neural-tangents is not installed; install it with `{_INSTALL_HINT}`.")
    _patch_jax()
    _stub_experimental()
    try:
        return importlib.import_module("neural_tangents")
    except ModuleNotFoundError as e:
        if e.name == "frozendict":
            raise ImportError(
                f"neural-tangents needs frozendict; install with `{_INSTALL_HINT}`."
            ) from e
        raise
