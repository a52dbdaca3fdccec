"""Is neural-tangents' failing Monte-Carlo NTK test a drift, or JAX's changed random draws?

Upstream's ``monte_carlo_test.test_monte_carlo_vs_analytic_ntk`` compares the Monte-Carlo
NTK of 100 width-192 networks (its CPU set-up: Dense, Relu, Flatten, Dense(2)) with the
analytic one, at one fixed key, against a relative Frobenius error of 0.02. This script
computes that error the test's way, and the same statistic over ``--keys`` other keys, in
whichever venv runs it: neural-tangents through ``mvsim.neural_tangents()`` where mvsim is
installed, else upstream alone (the TensorFlow-only subpackage stubbed), as on jax 0.4.23.
``--partitionable`` sets ``jax_threefry_partitionable`` (the random stream a key gives).
It prints one JSON line; docs/ntk.md quotes the runs:

    python scripts/nt_monte_carlo_draws.py [--partitionable true|false] [--keys 30]
    /work/nt-oldjax/bin/python scripts/nt_monte_carlo_draws.py --partitionable true
"""

from __future__ import annotations

import argparse
import json
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np


def _neural_tangents() -> types.ModuleType:
    try:
        import mvsim
    except ImportError:  # an old-JAX venv without mvsim: upstream alone
        sys.modules["neural_tangents.experimental"] = types.ModuleType("experimental")
        import neural_tangents

        return neural_tangents
    return mvsim.neural_tangents()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--partitionable", choices=("true", "false"))
    p.add_argument("--keys", type=int, default=30)
    args = p.parse_args()
    if args.partitionable is not None:
        jax.config.update("jax_threefry_partitionable", args.partitionable == "true")
    nt = _neural_tangents()
    from neural_tangents._src import monte_carlo

    stax, random = nt.stax, jax.random
    # The test's inputs and network (_get_inputs_and_model(WIDTH, 2, use_conv=False)).
    key, split = random.split(random.PRNGKey(1))
    x1 = random.normal(key, (8, 4, 3, 2)).reshape(8, -1)
    x2 = random.normal(split, (4, 4, 3, 2)).reshape(4, -1)
    init_fn, apply_fn, kernel_fn = stax.serial(
        stax.Dense(192), stax.Relu(), stax.Flatten(), stax.Dense(2, 2.0, 0.5)
    )
    analytic = kernel_fn(x1, x2, "ntk")

    def error(k: jax.Array) -> float:
        mc = monte_carlo.monte_carlo_kernel_fn(init_fn, apply_fn, k, 100, 4, 0, True, vmap_axes=0)
        return float(jnp.linalg.norm(mc(x1, x2, "ntk") - analytic) / jnp.linalg.norm(analytic))

    errors = np.array([error(random.PRNGKey(1000 + i)) for i in range(args.keys)])
    print(
        json.dumps(
            {
                "jax": jax.__version__,
                "jax_threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
                "test_key_error": error(key),
                "keys": args.keys,
                "mean": float(errors.mean()),
                "sd": float(errors.std(ddof=1)),
                "max": float(errors.max()),
                "fraction_over_0.02": float((errors > 0.02).mean()),
            }
        )
    )


if __name__ == "__main__":
    main()
