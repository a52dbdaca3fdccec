"""The flow integrator against fixed-η GD, on the models ``mvsim verify`` trains.

``python -m benchmarks.flow [--preset demo] [--set FIELD=VALUE ...] [--out FILE.json]``

From the same data and inits, each stage of the pipeline is trained twice, once per
integrator, in one process (compiling included, caches cleared before each):

- the single models (accuracy stop);
- the distilled students: kd, self-distillation and their own-init controls, from the
  GD singles' logits as teachers for both integrators, so that only the integrator
  differs (each with ``kd_stop``, by default 'converged');
- the training-average models.

For each it reports gradient evaluations (GD: one per step), wall time, the learned
view of every (class, view) cell (the path's outcome the verdicts read) and the stop
times. The issue's target: ≥ 8× fewer gradient evaluations at an identical view pattern.
The exit status is 1 when a stage's views differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from typing import Any

import jax
import numpy as np

from benchmarks.sweep_batching import _clear
from mvsim import data, distill, model, train, verify
from mvsim.config import make_config, parse_set
from mvsim.report import write_json


def _stage(name: str, fit, views) -> dict[str, Any]:
    """Train one stage with each integrator; compare what the verdicts read."""
    out: dict[str, Any] = {}
    res = {}
    for integ in ("gd", "flow"):
        _clear()
        t0 = time.perf_counter()
        r = fit(integ)
        jax.block_until_ready(r.params)
        res[integ] = r
        out[integ] = {
            "wall_s": time.perf_counter() - t0,
            "grad_evals": int(np.sum(r.grad_evals)),
            "stop_steps": np.round(r.stop_step, 1).tolist(),
        }
    g, f = res["gd"], res["flow"]
    vg, vf = views(g.params), views(f.params)
    out["cells_differing"] = int((vg != vf).sum())
    out["cells"] = int(vg.size)
    out["stop_rel_diff_max"] = float(np.max(np.abs(f.stop_step - g.stop_step) / g.stop_step))
    out["eval_ratio"] = out["gd"]["grad_evals"] / max(out["flow"]["grad_evals"], 1)
    out["wall_ratio"] = out["gd"]["wall_s"] / out["flow"]["wall_s"]
    print(f"{name}: gradient evaluations {out['gd']['grad_evals']} (gd) / "
          f"{out['flow']['grad_evals']} (flow) = {out['eval_ratio']:.1f}x; wall "
          f"{out['gd']['wall_s']:.1f} s / {out['flow']['wall_s']:.1f} s = "
          f"{out['wall_ratio']:.1f}x; (class, view) cells differing "
          f"{out['cells_differing']} of {out['cells']}; stops within "
          f"{100 * out['stop_rel_diff_max']:.1f}%", flush=True)  # fmt: skip
    return out


def run(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    cfg = make_config(preset, overrides)
    D, M, Tc, KD = cfg.data, cfg.model, cfg.train, cfg.distill
    V = data.features(verify.stream(cfg, "features"), D.d, D.k)
    ts = data.training_set(verify.stream(cfg, "data"), D, V)
    net = model.network(M, D.k, D.d)
    K = cfg.verify.seeds
    inits = train.init_seeds(net, verify.stream(cfg, "init"), K)
    thr = cfg.verify.view_threshold * M.varrho
    views = lambda W: np.asarray(model.views_learned(model.view_strength(W, V), thr))
    tc = lambda integ: dataclasses.replace(Tc, integrator=integ)
    rep: dict[str, Any] = {"preset": preset, "overrides": overrides, "config": cfg.flat()}
    singles: dict[str, Any] = {}

    def fit_singles(integ):
        singles[integ] = train.train(None, net, ts.x, ts.y, V, tc(integ), init_params=inits)
        return singles[integ]

    rep["singles"] = _stage("singles", fit_singles, views)
    logits = verify._train_logits(net.apply, singles["gd"].params, ts.x)
    teachers, st_inits = verify.student_setup(logits, inits, KD.kd_students)
    rep["students"] = _stage("students", lambda integ: train.train(
        None, net, ts.x, ts.y, V, tc(integ), init_params=st_inits,
        objective=distill.objective(KD), teacher_logits=teachers, T=verify.student_steps(cfg),
        stop=KD.kd_stop,
    ), views)  # fmt: skip
    avg_net = model.averaged(M, D.k, D.d, KD.avg_members)
    mult = KD.avg_members if KD.avg_eta_mult is None else KD.avg_eta_mult
    avg_tc = lambda integ: dataclasses.replace(tc(integ), eta=Tc.eta * mult)
    avg_inits = train.init_seeds(avg_net, verify.stream(cfg, "average"), KD.avg_seeds)
    rep["training_average"] = _stage("training average", lambda integ: train.train(
        None, avg_net, ts.x, ts.y, V, avg_tc(integ), init_params=avg_inits), views)  # fmt: skip
    stages = ("singles", "students", "training_average")
    g = sum(rep[s]["gd"]["grad_evals"] for s in stages)
    f = sum(rep[s]["flow"]["grad_evals"] for s in stages)
    same = all(rep[s]["cells_differing"] == 0 for s in stages)
    rep["total"] = {"gd_grad_evals": g, "flow_grad_evals": f, "eval_ratio": g / f,
                    "identical_views": same}  # fmt: skip
    rep["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                      "backend": jax.default_backend(), "jax": jax.__version__,
                      "loadavg": list(os.getloadavg())}  # fmt: skip
    return rep


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").split("\n")[0]
    p = argparse.ArgumentParser(prog="python -m benchmarks.flow", description=doc)
    p.add_argument("--preset", default="demo")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--out", help="write the report as JSON here")
    args = p.parse_args(argv)
    rep = run(args.preset, parse_set(args.set))
    t = rep["total"]
    print(f"total: {t['gd_grad_evals']} / {t['flow_grad_evals']} gradient evaluations = "
          f"{t['eval_ratio']:.1f}x fewer; identical views: {t['identical_views']}")  # fmt: skip
    if args.out:
        write_json(args.out, rep)
    return 0 if t["identical_views"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
