"""The flow's programs can enter JAX's persistent compilation cache.

JAX never writes a program holding a host callback into that cache. diffrax's argument
checks become host callbacks under equinox's default error mode once T and the recorded
steps are traced (mvsim.flow.cacheable_checks says why and how mvsim avoids it); before
that was found, every flow program was compiled again in every process. This file fails
if a flow solve's program holds a host callback again, e.g. after an equinox release
that no longer reads its error mode where mvsim sets it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mvsim import flow
from mvsim.config import make_config

CALLBACK_MARKERS = ("callback",)  # xla_python_cpu_callback, xla_ffi_python_cpu_callback, ...


def _lowered_solve(meter: bool = False) -> str:
    """The StableHLO text of one jitted flow solve of a small quadratic, with T, the
    recorded steps and the tolerances traced as mvsim.train passes them."""
    cfg = dataclasses.replace(make_config("tiny").train, integrator="flow")

    def run(w0, T, ts, rtol, atol):
        loss = lambda w: 0.5 * jnp.sum(jnp.square(w["w"]))
        metrics = lambda w: (loss(w), jnp.ones(()), jnp.zeros((2, 2)))
        stop = lambda w, mean: loss(w) - 1e-3
        return flow.solve(w0, jnp.asarray(0.1), loss, metrics, stop, ts, cfg=cfg, T=T,
                          rtol=rtol, atol=atol)  # fmt: skip

    args = ({"w": jnp.ones(4)}, jnp.asarray(100.0), jnp.linspace(0.0, 100.0, 5),
            jnp.asarray(1.0), jnp.asarray(1e-3))  # fmt: skip
    return jax.jit(run).lower(*args).as_text()


def test_a_flow_solve_with_traced_times_holds_no_host_callback() -> None:
    text = _lowered_solve()
    assert "custom_call" in text or "func.func" in text  # the text is the program's
    found = [m for m in CALLBACK_MARKERS if m in text]
    assert not found, f"the flow program holds a host callback ({found}): it cannot be cached"


def test_the_error_mode_is_restored_after_the_trace() -> None:
    import equinox._errors as eqx_errors

    before = eqx_errors.EQX_ON_ERROR
    _lowered_solve()
    assert eqx_errors.EQX_ON_ERROR == before


def test_every_command_that_compiles_can_turn_the_cache_off() -> None:
    """verify, sweep, experiment and race-model all compile JAX programs; each takes
    --no-compile-cache, and main() enables the cache for it unless told not to."""
    from mvsim import cli

    parser = cli.build_parser()
    for argv in (["verify"], ["sweep"], ["experiment", "race"], ["race-model"]):
        assert parser.parse_args([*argv]).no_compile_cache is False, argv
        assert parser.parse_args([*argv, "--no-compile-cache"]).no_compile_cache is True, argv
