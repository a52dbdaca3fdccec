"""Gaussian-input control: does ensembling help without multi-view structure?

The paper argues that on Gaussian-like inputs (e.g. a Gaussian mixture) an ensemble of
independently trained networks gains little or nothing, so the gain it proves needs the
multi-view structure (notes §7.1). Here the verify pipeline (claims ``single``,
``ensemble``, ``kd``; same network, training, seeds and test sizes) runs twice: on the
multi-view data of the config and on the ``gaussian`` family of :mod:`mvsim.data`
(same k, d, P, N; one direction per class, isotropic noise; difficulty ``gauss_sep``).

Errors are population test errors: on multi-view data E = μ·e_single + (1−μ)·e_multi
from the stratified test sets (:class:`mvsim.stats.Estimate`); on Gaussian data the two
test sets come from the same mixture and are pooled. The ensemble's gain is compared as a
*relative* error reduction r = 1 − E_ens/E_single (E_single pooled over the seeds), scale
free because the two families have very different error levels.

Claim ``gaussian_ensemble_no_gain`` (three-valued):

- its CI for r_gauss is the box of the two errors' exact intervals at 97.5% each
  (Bonferroni, so jointly ≥ 95%); likewise r_multi;
- PASS when the CI of r_gauss lies below ``gauss_gain_ratio`` × the lower end of r_multi's
  CI ("far smaller"), FAIL when it lies above, INCONCLUSIVE when it straddles, or when the
  Gaussian single error's CI reaches 0 (a gain cannot be measured at zero error);
- the report also says *which* way it passes: "within CI" when, for every seed, the
  exact paired CI (:func:`mvsim.compare.paired_diff_ci`, same test points) of
  err(ensemble) − err(single) contains 0, else "far smaller".
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from mvsim import verify
from mvsim.compare import paired_diff_ci
from mvsim.config import Config
from mvsim.data import gaussian_bayes_error, gaussian_mean
from mvsim.experiments import check_seeds, envelope, fmt_ci, text_table
from mvsim.progress import Progress
from mvsim.stats import Estimate, Verdict, clopper_pearson_interval, verdict
from mvsim.verify import Group

FAMILIES = ("multiview", "gaussian")
MODELS = ("single", "ensemble", "kd", "control")
CLAIM = "gaussian_ensemble_no_gain"


def _errors(g: Group, family: str) -> tuple[np.ndarray, np.ndarray]:
    """(multi, single) error matrices; Gaussian: both pooled into the first, second empty."""
    if family == "gaussian":
        return np.concatenate([g.errors_multi, g.errors_single], 1), g.errors_single[:, :0]
    return g.errors_multi, g.errors_single


def error_ci(em: np.ndarray, es: np.ndarray, mu: float, family: str, level: float):
    """(E, lo, hi) of a model (1-D error vectors) or of a pooled group (2-D: mean count
    over models, CI as one test set of that size, as in :mod:`mvsim.claims`)."""
    pooled = em.ndim == 2
    if family == "gaussian":
        n = em.shape[-1]
        e = int(round(em.sum(-1).mean())) if pooled else int(em.sum())
        lo, hi = clopper_pearson_interval(e, n, level)
        return e / n, lo, hi
    if pooled:
        est = Estimate(int(round(em.sum(1).mean())), em.shape[1],
                       int(round(es.sum(1).mean())), es.shape[1], mu)  # fmt: skip
    else:
        est = Estimate.from_errors(em, es, mu)
    lo, hi = est.ci(level)
    return est.error, lo, hi


def relative_gain(e_model: tuple, e_single: tuple) -> tuple[float, float, float]:
    """r = 1 − E_model/E_single with the box CI from two (E, lo, hi) triples (NaN bounds
    when E_single's CI reaches 0)."""
    e, lo, hi = e_model
    s, slo, shi = e_single
    r = 1 - e / s if s > 0 else math.nan
    r_lo = 1 - hi / slo if slo > 0 else -math.inf
    r_hi = 1 - lo / shi if shi > 0 else math.nan
    return r, r_lo, r_hi


def gain_verdict(
    r_gauss: tuple[float, float, float],
    r_multi: tuple[float, float, float],
    ratio: float,
    single_gauss_ci_lo: float,
) -> tuple[Verdict, str]:
    """The claim's verdict from the two relative gains' CIs (see the module docstring)."""
    if not single_gauss_ci_lo > 0:
        return Verdict.INCONCLUSIVE, (
            "the Gaussian single model's error CI reaches 0: an ensemble gain cannot be measured"
        )
    bound = ratio * r_multi[1]
    if not bound > 0:
        return Verdict.INCONCLUSIVE, (
            f"the multi-view gain itself is not resolved (its CI starts at {r_multi[1]:.3f})"
        )
    v = verdict((r_gauss[1], r_gauss[2]), None, bound)
    return v, (
        f"relative error reduction by the ensemble: Gaussian {r_gauss[0]:.3f} "
        f"[{r_gauss[1]:.3f}, {r_gauss[2]:.3f}] vs multi-view {r_multi[0]:.3f} "
        f"[{r_multi[1]:.3f}, {r_multi[2]:.3f}]; 'far smaller' bound = {ratio:g} × "
        f"{r_multi[1]:.3f} = {bound:.3f}"
    )


def run(cfg: Config, *, progress: Progress = True) -> dict[str, Any]:
    """Run single / ensemble / KD on both families; returns the report dict."""
    check_seeds("gaussian", cfg)
    t_all = time.perf_counter()
    E = cfg.experiment
    timing: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    gains: dict[str, dict[str, tuple]] = {}
    paired: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    for fam in FAMILIES:
        c = cfg.replace(family=fam, n_test_multi=E.exp_n_test_multi,
                        n_test_single=E.exp_n_test_single)  # fmt: skip
        t = time.perf_counter()
        m = verify.run(c, claims=["single", "ensemble", "kd"], progress=progress)
        timing[f"{fam}"] = time.perf_counter() - t
        mu = c.data.mu
        tri: dict[str, tuple] = {}
        for name in MODELS:
            g = m.groups[name]
            em, es = _errors(g, fam)
            tri[name] = error_ci(em, es, mu, fam, 0.975)
            e95 = error_ci(em, es, mu, fam, 0.95)
            rows.append(_row(fam, name, -1, e95, em.shape[-1] + es.shape[-1], g))
            for s in range(em.shape[0]):
                rows.append(_row(fam, name, s, error_ci(em[s], es[s], mu, fam, 0.95),
                                 em.shape[-1] + es.shape[-1], g, s))  # fmt: skip
        gains[fam] = {n: relative_gain(tri[n], tri["single"]) for n in ("ensemble", "kd")}
        if fam == "gaussian":
            em_s, _ = _errors(m.groups["single"], fam)
            em_e, _ = _errors(m.groups["ensemble"], fam)
            for s in range(em_s.shape[0]):
                lo, hi = paired_diff_ci(em_e[0], em_s[s])
                paired.append({"seed": s, "diff_ci_lo": lo, "diff_ci_hi": hi,
                               "contains_0": bool(lo <= 0 <= hi)})  # fmt: skip
            extra["gaussian_single_ci_lo_975"] = tri["single"][1]
            extra["bayes_error"] = gaussian_bayes_error(c.data.k, c.data.gauss_sep)
            extra["gaussian_mean_per_patch"] = gaussian_mean(c.data)
        sv = m.groups["single"].views  # (K, k, 2); Gaussian: view 0 is the class direction
        extra[f"{fam}_views"] = (
            {"frac_class_direction_learned": float(sv[..., 0].mean())}
            if fam == "gaussian"
            else {
                "frac_one_view": float((sv.sum(-1) == 1).mean()),
                "frac_two_views": float((sv.sum(-1) == 2).mean()),
            }
        )
    v, reason = gain_verdict(gains["gaussian"]["ensemble"], gains["multiview"]["ensemble"],
                             E.gauss_gain_ratio, extra["gaussian_single_ci_lo_975"])  # fmt: skip
    within = all(p["contains_0"] for p in paired)
    which = (
        "within CI: no seed's paired CI of err(ensemble) − err(single) excludes 0"
        if within
        else f"{sum(not p['contains_0'] for p in paired)}/{len(paired)} seeds significantly "
        "improved by the ensemble (paired CI excludes 0), so only 'far smaller' can hold"
    )
    for fam in FAMILIES:
        for name, (r, lo, hi) in gains[fam].items():
            # ±inf/NaN bounds (single error CI at 0) become None: strict JSON has no inf.
            fin = lambda x: float(x) if math.isfinite(x) else None
            rows.append({"family": fam, "model": name, "seed": -1, "kind": "relative_gain",
                         "value": fin(r), "ci_lo": fin(lo), "ci_hi": fin(hi), "n_test": None,
                         "train_accuracy_min": None})  # fmt: skip
    timing["total"] = time.perf_counter() - t_all
    rep = envelope("gaussian", cfg)
    rep.update(
        {
            "description": __doc__.strip().splitlines()[0],
            "rows": rows,
            "claims": [
                {
                    "id": CLAIM,
                    "verdict": v.name,
                    "reason": reason,
                    "which": which if v == Verdict.PASS else None,
                    "within_ci": within,
                    "paired_ensemble_minus_single": paired,
                }
            ],
            "summary": extra,
            "timing": {k: round(x, 3) for k, x in timing.items()},
        }
    )
    return rep


def _row(fam: str, name: str, seed: int, e: tuple, n: int, g: Group, s: int | None = None):
    acc = g.train_accuracy if s is None else g.train_accuracy[s : s + 1]
    return {"family": fam, "model": name, "seed": seed, "kind": "test_error", "value": e[0],
            "ci_lo": e[1], "ci_hi": e[2], "n_test": n,
            "train_accuracy_min": float(np.min(acc))}  # fmt: skip


def table(rep: dict[str, Any]) -> str:
    cfg = rep["config"]
    d = cfg["data"]
    s = rep["summary"]
    out = [
        f"mvsim experiment gaussian — preset '{rep['preset']}': k={d['k']} d={d['d']} P={d['P']} "
        f"N={d['N']} seeds={cfg['verify']['seeds']}; Gaussian Δ={d['gauss_sep']:g} "
        f"(Bayes error {s['bayes_error']:.4f}, mean {s['gaussian_mean_per_patch']:.3f}/patch)",
        "test error [95% CI] (multi-view: population error μ·e_s + (1−μ)·e_m)",
    ]
    cells = {
        (r["family"], r["model"]): r
        for r in rep["rows"]
        if r["seed"] == -1 and r["kind"] == "test_error"
    }
    body = []
    for fam in FAMILIES:
        row = [fam]
        for name in MODELS:
            r = cells[(fam, name)]
            row.append(fmt_ci(r["value"], r["ci_lo"], r["ci_hi"], 4))
        for name in ("ensemble", "kd"):
            r = cells[(fam, name)]
            row.append(fmt_ci(r["value"], r["ci_lo"], r["ci_hi"], 3))
        body.append(row)
    head = ["data", *MODELS, "ensemble gain (rel.)", "KD gain (rel.)"]
    # the last two columns come from the relative_gain rows
    rel = {(r["family"], r["model"]): r for r in rep["rows"] if r["kind"] == "relative_gain"}
    for row, fam in zip(body, FAMILIES, strict=True):
        for j, name in enumerate(("ensemble", "kd")):
            r = rel[(fam, name)]
            row[len(MODELS) + 1 + j] = fmt_ci(r["value"], r["ci_lo"], r["ci_hi"], 3)
    out += text_table(head, body)
    for c in rep["claims"]:
        out.append(f"{c['id']}: {c['verdict']} — {c['reason']}")
        out.append(f"    {c['which'] or ('within CI' if c['within_ci'] else 'not within CI')}")
    mv, ga = s["multiview_views"], s["gaussian_views"]
    out.append(
        f"singles: multi-view classes with one / two views learned {mv['frac_one_view']:.2f} / "
        f"{mv['frac_two_views']:.2f}; Gaussian classes whose direction u_y is learned "
        f"(Λ ≥ view_threshold·ϱ) {ga['frac_class_direction_learned']:.2f}"
    )
    out.append("timing (s): " + ", ".join(f"{k} {v:.1f}" for k, v in rep["timing"].items()))
    return "\n".join(out)


def figure(rep: dict[str, Any], out: Path) -> list[str]:
    """Left: error of single / ensemble / KD per family (log scale); right: relative gain."""
    from mvsim.plots import PALETTE, _plt, _save

    plt = _plt()
    cells = {
        (r["family"], r["model"]): r
        for r in rep["rows"]
        if r["seed"] == -1 and r["kind"] == "test_error"
    }
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    models = ("single", "ensemble", "kd")
    w = 0.8 / len(models)
    for j, name in enumerate(models):
        xs, ys, lo, hi = [], [], [], []
        for g, fam in enumerate(FAMILIES):
            r = cells[(fam, name)]
            xs.append(g + (j - 1) * w)
            ys.append(max(r["value"], 1e-6))
            lo.append(max(r["value"] - r["ci_lo"], 0))
            hi.append(max(r["ci_hi"] - r["value"], 0))
        ax.bar(xs, ys, w, yerr=[lo, hi], capsize=3, color=PALETTE[j], label=name)
    ax.set_xticks(range(len(FAMILIES)), ["multi-view", "Gaussian mixture"])
    ax.set(yscale="log", ylabel="test error (95% CI)", title="Same network and training")
    ax.legend(fontsize=8)
    rel = {(r["family"], r["model"]): r for r in rep["rows"] if r["kind"] == "relative_gain"}
    for j, name in enumerate(("ensemble", "kd")):
        for g, fam in enumerate(FAMILIES):
            r = rel[(fam, name)]
            if r["value"] is None:
                continue
            lo = -1.0 if r["ci_lo"] is None else r["ci_lo"]
            hi = r["value"] if r["ci_hi"] is None else r["ci_hi"]
            ax2.errorbar(g + (j - 0.5) * 0.25, r["value"],
                         yerr=[[r["value"] - lo], [hi - r["value"]]],
                         fmt="o", color=PALETTE[j + 1], capsize=4,
                         label=name if g == 0 else None)  # fmt: skip
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set_xticks(range(len(FAMILIES)), ["multi-view", "Gaussian"])
    ax2.set(ylabel="1 − E_model / E_single", title="Relative error reduction", ylim=(-0.2, 1.05))
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out, "gaussian")
