"""The lever study of issue #4: which finite-k choices sharpen the single model's lottery.

For each lever (a set of config overrides on a preset) this trains ``--seeds`` single
models exactly as ``mvsim verify`` does (same streams, same trainer) and records only what
the view-learning pattern decides: the fraction of classes with one / two / no learned
view, the two-view fraction against the initial ratio r, training accuracy, steps, and the
finite-k prediction of E/μ from the pattern (``claims.predicted_error``, which matched the
measured 0.451 with 0.442 on the demo run). No test set is drawn, so a lever costs only its
training. Rows are appended to a JSON-lines file, one per lever, written whole; a rerun
skips levers already there.

    python scripts/levers.py --out docs/levers/levers.jsonl [--seeds 16] [--only NAME ...]

What it produced (docs/theorems.md "What is reached at k = 10", docs/findings.md): in
``docs/levers/levers.jsonl`` the rows of the levers ``baseline`` and ``C_p=2`` (16 seeds,
the demo's T = 5000), and in ``docs/levers/levers-T10000.jsonl`` the baseline at
T = 10000, written by commit 2203a54 (2026-11-28; 24–28 minutes a lever at T = 5000 on 2 cores) with

    python scripts/levers.py --out docs/levers/levers.jsonl --only baseline C_p=2
    python scripts/levers.py --out docs/levers/levers-T10000.jsonl --only baseline --T 10000

The other levers below were never run. Those rows were trained by fixed-η GD, before the
flow integrator became the default (eb67a99): to reproduce them bit for bit, run the
commands at 2203a54; on later code the same commands measure the current defaults. A
rerun skips the levers already in its --out file, so write to a new file to compare.
It stays a script rather than an ``mvsim experiment``: it is a resumable study of many
hour-long rows, not one report with a figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from mvsim import claims, data, model
from mvsim.config import make_config
from mvsim.report import append_jsonl, jsonl_keys
from mvsim.train import precision, train
from mvsim.verify import stream

# name -> overrides on the demo preset. Each changes one thing unless its name says "+".
LEVERS: dict[str, dict] = {
    # C_p ≥ 2 splits each feature's z over C_p patches; P = 16 holds C_p·(2 + max_noisy)
    # only with max_noisy ≤ 6, so "max_noisy=6" is the C_p = 2 levers' own control.
    "baseline": {},
    "C_p=2": {"C_p": 2, "max_noisy": 6},
    "max_noisy=6": {"max_noisy": 6},
    "m=2": {"m": 2},
    "q=5": {"q": 5},
    "m=3": {"m": 3},
    "noisy_z=(0.05,0.1)": {"noisy_z_multi": (0.05, 0.1)},
    "sigma_0=0.02": {"sigma_0": 0.02},
    "C_p=2,equal": {"C_p": 2, "max_noisy": 6, "z_split": "equal"},
    "varrho=0.5": {"varrho": 0.5, "sigma_0": 0.0165},
    "N=1240": {"N": 1240},  # two single-view points per (class, view)
    "noisy_z=(0.4,0.6)": {"noisy_z_multi": (0.4, 0.6)},
    "sigma_0=0.05": {"sigma_0": 0.05},
    "eta/2": {"eta": 10 / 3},
    "C_p=2,P=32": {"C_p": 2, "P": 32},
    "m=8": {"m": 8},
    "q=3": {"q": 3},
    "C_p=3,P=48": {"C_p": 3, "P": 48},
}


def run_lever(name: str, overrides: dict, seeds: int, base: str, T: int | None = None) -> dict:
    cfg = make_config(base, {**overrides, "seeds": seeds, **({"T": T} if T else {})})
    D, M, Tc = cfg.data, cfg.model, cfg.train
    t0 = time.perf_counter()
    with precision(Tc.dtype):
        dtype = jnp.dtype(Tc.dtype)
        V = data.features(stream(cfg, "features"), D.d, D.k, dtype)
        ts = data.training_set(stream(cfg, "data"), D, V, dtype)
        net = model.network(M, D.k, D.d, dtype)
        res = train(stream(cfg, "init"), net, ts.x, ts.y, V, Tc, seeds=seeds)
        lam = model.view_strength(res.params, V)
        views = np.asarray(model.views_learned(lam, cfg.verify.view_threshold * M.varrho))
        a0 = np.maximum(np.asarray(model.alignment(res.init_params, V)), 0.0)
    per_class = views.sum(-1)  # (S, k)
    ratio = a0.min(-1) / np.maximum(a0.max(-1), 1e-30)
    bins = [0.0, 0.5, 0.7, 0.8, 0.9, 1.0001]
    by_r = []
    for lo, hi in zip(bins[:-1], bins[1:], strict=True):
        sel = (ratio >= lo) & (ratio < hi)
        by_r.append([lo, min(hi, 1.0), int(sel.sum()),
                     float((per_class[sel] == 2).mean()) if sel.any() else None])  # fmt: skip
    pred = [claims.predicted_error(v, D.s, D.mu) for v in views]
    one = per_class == 1
    lottery = np.asarray(model.lottery_winner(res.init_params, V))
    return {
        "lever": name,
        "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
        "seeds": seeds,
        "classes": int(per_class.size),
        "frac_one": float(one.mean()),
        "frac_two": float((per_class == 2).mean()),
        "frac_none": float((per_class == 0).mean()),
        "two_by_ratio": by_r,
        "lottery_ok": float((views.argmax(-1) == lottery)[one].mean()) if one.any() else None,
        "train_acc_min": float(np.min(res.final_accuracy)),
        "seeds_not_fitting": int((np.asarray(res.final_accuracy) < 1).sum()),
        "steps_median": float(np.median(res.stop_step)),
        "steps_max": int(np.max(res.stop_step)),
        "pred_E_over_mu": [p[2] for p in pred],
        "pred_E_over_mu_mean": float(np.mean([p[2] for p in pred])),
        "pred_in_band": int(sum(0.49 <= p[2] <= 0.51 for p in pred)),
        "wall_s": time.perf_counter() - t0,
        "T": Tc.T,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/levers/levers.jsonl")
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--T", type=int, default=None, help="step budget (default: the preset's)")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = jsonl_keys(out, "lever")
    for name, ov in LEVERS.items():
        if (args.only and name not in args.only) or name in done:
            continue
        row = run_lever(name, ov, args.seeds, args.preset, args.T)
        keys = ("lever", "frac_one", "frac_two", "frac_none", "seeds_not_fitting",
                "steps_median", "pred_E_over_mu_mean", "wall_s")  # fmt: skip
        print(json.dumps({k: row[k] for k in keys}), flush=True)
        append_jsonl(out, row)  # a kill loses at most the lever being trained


if __name__ == "__main__":
    main()
