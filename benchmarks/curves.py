"""What the error curves cost: test error evaluated after the solve on the saved weights
(what verify does, :mod:`mvsim.curves`) against inside it (diffrax ``SaveAt(fn=...)``).

``python -m benchmarks.curves [--preset demo] [--set FIELD=VALUE ...] [--out FILE.json]``

The singles of a preset are trained three times from the same inits, in one process,
compiles excluded (each variant is run once to compile, then timed on a second run):

- ``plain``: the flow solve as verify runs it, saving the weights at the recorded steps;
- ``inside``: the same solve with the error counts on the curve subset evaluated inside
  it at the recorded steps (``flow.solve(save_fn=...)``);
- ``after``: the curve subset evaluated on ``plain``'s saved weights in one batched pass
  (:class:`mvsim.curves.Accumulator`).

The cost of the curves is ``inside − plain`` for the one, ``after`` for the other; both
give the same counts (checked).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mvsim import curves, data, learners, train, verify
from mvsim.config import make_config, parse_set
from mvsim.report import write_json


def _subset(cfg, V) -> dict[str, Any]:
    """The curve subset verify draws: the first points of each test set's first chunk."""
    kt_m, kt_s = jax.random.split(verify.stream(cfg, "test"))
    out = {}
    for key, n, n_c, view in ((kt_m, cfg.verify.n_test_multi, cfg.verify.n_curve_multi, "multi"),
                              (kt_s, cfg.verify.n_test_single, cfg.verify.n_curve_single,
                               "single")):  # fmt: skip
        b = next(data.iter_chunks(key, cfg.data, n, V, view))
        take = min(n_c, n, b.x.shape[0])
        out[view] = (b.x[:take], b.y[:take], b.strong_view[:take])
    return out


def run(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    cfg = make_config(preset, overrides)
    D, Tc = cfg.data, cfg.train
    V = data.features(verify.stream(cfg, "features"), D.d, D.k)
    ts = data.training_set(verify.stream(cfg, "data"), D, V)
    net = learners.network(cfg.model, D.k, D.d, D.P)
    inits = train.init_seeds(net, verify.stream(cfg, "init"), cfg.verify.seeds)
    sub = _subset(cfg, V)
    H = cfg.horizon_steps()
    eta = jnp.asarray(Tc.eta, jnp.float32)
    wrong = lambda W, x, y: (~train.correct(net.apply(W, x), y)).sum()
    # float: diffrax fills the saves past a model's stop with inf, in the saved dtype
    count = lambda W: jnp.stack([wrong(W, *sub[v][:2]) for v in ("multi", "single")]).astype(
        jnp.float32
    )

    def solve(save_fn):
        one = lambda W: train._flow_one(
            W, ts.x, ts.y, None, V, eta, apply_fn=net.apply, align_fn=net.alignment,
            objective=train.cross_entropy, cfg=Tc, tr=train.traced(Tc, Tc.T, jnp.float32, H),
            stop=Tc.stop, save_fn=save_fn,
        )  # fmt: skip
        return jax.jit(jax.vmap(one))

    def timed(fn, *args):
        jax.block_until_ready(fn(*args))  # compile and warm up
        t = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        return out, time.perf_counter() - t

    plain, t_plain = timed(solve(None), inits)
    inside, t_inside = timed(solve(count), inits)

    def after(hist):
        acc = curves.Accumulator({"single": (net.apply, hist)}, len(sub["multi"][1]),
                                 len(sub["single"][1]), D.k)  # fmt: skip
        for v in ("multi", "single"):
            acc.add(v, *sub[v])
        return acc

    steps = np.asarray(train.history_steps(Tc.T, Tc.n_log, H))
    stop = np.asarray(plain.stop_step)[None]  # (1, S): one point
    live = (steps <= stop[..., None] * (1 + 1e-6))[0]  # (S, L)
    point = lambda a: jax.tree.map(lambda b: b[None], a)
    hist = train._past_stop(point(plain.history), point(plain.params), steps, stop)
    after(hist)  # compile
    t = time.perf_counter()
    acc = after(hist)
    t_after = time.perf_counter() - t
    got = acc.result(0)["single"]
    # (S, L', 2), inf-filled past the stop and padded past L (train.traced): compare live
    saved = np.asarray(inside.saved)[:, : live.shape[1]]
    same = all(
        np.array_equal(np.where(live, got[key], 0), np.where(live, saved[..., i], 0))
        for i, key in enumerate(("errors_multi", "errors_single"))
    )
    rep = {
        "preset": preset, "overrides": overrides, "config": cfg.flat(),
        "models": cfg.verify.seeds, "recorded_steps": int(live.shape[1]),
        "curve_points": [len(sub["multi"][1]), len(sub["single"][1])],
        "solve_plain_s": t_plain, "solve_inside_s": t_inside, "after_s": t_after,
        "inside_cost_s": t_inside - t_plain, "same_counts": same,
        "machine": {"cpus": jax.local_device_count(), "backend": jax.default_backend()},
    }  # fmt: skip
    print(f"{cfg.verify.seeds} singles, {rep['recorded_steps']} recorded steps, "
          f"{rep['curve_points']} curve points: solve {t_plain:.1f} s; with the curves "
          f"inside {t_inside:.1f} s (+{t_inside - t_plain:.1f} s); after the solve "
          f"{t_after:.1f} s; same counts: {same}", flush=True)  # fmt: skip
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--out", help="write the numbers as JSON")
    args = ap.parse_args(argv)
    rep = run(args.preset, parse_set(args.set))
    if args.out:
        write_json(args.out, rep)
    return 0 if rep["same_counts"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
