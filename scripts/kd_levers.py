"""The distillation lever study of issue #4: what the teacher adds over the objective alone.

Trains the demo preset's single models once (as ``mvsim verify`` does: same streams), then
for each distillation variant trains, in one vmapped call, ``kd_students`` KD students
(teacher: mean of the other singles), as many self-distillation students (teacher: the
next single) and as many controls (teacher: the single from the student's own init), all
from the singles' inits. Records the views each student learned beyond its own lottery
(from its teacher / that neither had) and the finite-k E/μ predicted from its views. No
test set is drawn. One JSON line per variant; a rerun skips variants already written.

    python scripts/kd_levers.py --out docs/levers/kd_levers.jsonl

What it produced (docs/theorems.md "Distillation to its limit", docs/findings.md): the nine rows of
``docs/levers/kd_levers.jsonl``, one per variant below, 4 students of each kind, written
by that command at commits adceffc and f79bea0 (2026-11-28; the singles took 27 minutes
and each variant about 8 on 2 cores). Then the trainer was fixed-η GD and students ran
exactly their kd_T steps (2000 unless the variant says otherwise); since eb67a99 and
77c3b00 the defaults are the flow integrator and students trained to convergence, so the
rows are reproduced bit for bit only by running the command at f79bea0; on later code it
measures the current defaults. A rerun skips the variants already in its --out file, so
write to a new file to compare. It stays a script rather than an ``mvsim experiment``: a
resumable study of many long rows, not one report with a figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mvsim import claims, data, distill, model
from mvsim.config import make_config
from mvsim.report import append_jsonl, jsonl_keys
from mvsim.train import precision, train
from mvsim.verify import stream, student_setup, student_steps

VARIANTS: dict[str, dict] = {
    "paper,eta'=eta,T=2000": {},
    "paper,eta'=eta,T=6000": {"kd_T": 6000},
    "paper,eta'=3eta,T=2000": {"kd_eta_ratio": 3.0},
    "paper,eta'=10eta,T=2000": {"kd_eta_ratio": 10.0},
    "paper,no hard label,eta'=3eta": {"kd_hard_label": False, "kd_eta_ratio": 3.0},
    "paper,tau=1/2": {"kd_tau": 0.5},
    "paper,tau=1/5": {"kd_tau": 0.2},
    "hinton,tau=10,alpha=0.5": {"kd_objective": "hinton"},
    "hinton,tau=10,alpha=0,T=6000": {"kd_objective": "hinton", "kd_alpha": 0.0, "kd_T": 6000},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/levers/kd_levers.jsonl")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--students", type=int, default=4)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = jsonl_keys(out, "variant")
    todo = [v for v in VARIANTS if v not in done and (not args.only or v in args.only)]
    if not todo:
        return
    cfg = make_config(args.preset, {"kd_students": args.students})
    D, M, Tc, Vc = cfg.data, cfg.model, cfg.train, cfg.verify
    K, n = Vc.seeds, args.students
    with precision(Tc.dtype, Tc.matmul_precision):
        dtype = jnp.dtype(Tc.dtype)
        V = data.features(stream(cfg, "features"), D.d, D.k, dtype)
        ts = data.training_set(stream(cfg, "data"), D, V, dtype)
        net = model.network(M, D.k, D.d, dtype)
        t0 = time.perf_counter()
        singles = train(stream(cfg, "init"), net, ts.x, ts.y, V, Tc, seeds=K)
        t_single = time.perf_counter() - t0
        thr = Vc.view_threshold * M.varrho
        sv = np.asarray(model.views_learned(model.view_strength(singles.params, V), thr))
        logits = jax.vmap(net.apply, in_axes=(0, None))(singles.params, ts.x)  # (K, N, k)
        idx = np.arange(n)
        teachers, inits = student_setup(logits, singles.init_params, n)
        teacher_views = [
            np.stack([np.delete(sv, j, 0).any(0) for j in idx]),
            sv[(idx + 1) % K],
            sv[idx],
        ]
        for name in todo:
            vcfg = make_config(args.preset, {"kd_students": n, **VARIANTS[name]})
            KD = vcfg.distill
            t = time.perf_counter()
            st = train(None, net, ts.x, ts.y, V, Tc, init_params=inits,
                       objective=distill.objective(KD), teacher_logits=teachers,
                       T=student_steps(vcfg), stop="none")  # fmt: skip
            views = np.asarray(model.views_learned(model.view_strength(st.params, V), thr))
            row = {"variant": name, "overrides": VARIANTS[name], "students": n,
                   "singles_seconds": t_single, "wall_s": time.perf_counter() - t,
                   "singles_frac_two": float((sv.sum(-1) == 2).mean())}  # fmt: skip
            for g, role in enumerate(("kd", "self_distillation", "control")):
                sl = slice(g * n, (g + 1) * n)
                own, got, teach = sv[idx], views[sl], teacher_views[g]
                gained = got & ~own
                row[role] = {
                    "train_accuracy": np.asarray(st.final_accuracy[sl]).tolist(),
                    "own_lost": int((own & ~got).sum()),
                    "gained_from_teacher": int((gained & teach).sum()),
                    "gained_neither_had": int((gained & ~teach).sum()),
                    "teacher_views_missing": int((teach & ~got).sum()),
                    "frac_two": float((got.sum(-1) == 2).mean()),
                    "pred_E_over_mu": [claims.predicted_error(v, D.s, D.mu)[2] for v in got],
                }
            print(json.dumps({"variant": name, **{r: (row[r]["gained_from_teacher"],
                  row[r]["gained_neither_had"], round(float(np.mean(row[r]["pred_E_over_mu"])), 3))
                  for r in ("kd", "self_distillation", "control")}}), flush=True)  # fmt: skip
            append_jsonl(out, row)


if __name__ == "__main__":
    main()
