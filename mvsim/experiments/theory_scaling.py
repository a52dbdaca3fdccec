"""The paper's own parameter recipe (the ``theory`` preset) at growing k.

Every parameter of the ``theory`` preset is computed from k (P = k², d = 4k², μ = 1/k,
N = k^1.2/μ, s = k^0.2, ρ = k^−0.01, Γ = 1/ln k, ϱ = 1/ln k, σ_0^{q−2} = 1/k, η = 1/k,
T = k³; :func:`mvsim.presets._theory`). For each k in the list, the verify pipeline trains
the singles and measures claim ``single`` (Theorem 1: error/μ in [0.49, 0.51] with
perfect training accuracy) and the view-learning mechanism. The rows say, per k, where
the literal recipe stands: the one-view fraction (the theorem needs ≈ 1), error/μ (≈ 0.5),
whether every seed fits its training set, and the finite-k orderings the proofs rely on
(ρ < Γ, σ_0 ≪ ϱ), which the recipe only reaches asymptotically.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mvsim import claims, verify
from mvsim.config import Config, ConfigError, make_config
from mvsim.experiments import envelope, fmt_ci, text_table
from mvsim.progress import Progress

DEFAULT_KS = (4, 6, 8, 10)
BAND = (0.49, 0.51)


def rho_below_gamma_log10_k() -> float:
    """log10 of the k above which the recipe's ρ = k^−0.01 < Γ = 1/ln k holds.

    With u = ln k the condition is u < e^{0.01u}: false between u ≈ 1.01 and the large
    root u* = 100·ln u* ≈ 647, i.e. for every k from 3 to ≈ 10^281.
    """
    u = 1000.0
    for _ in range(200):  # the fixed point iteration contracts (derivative 100/u < 1)
        u = 100.0 * math.log(u)
    return u / math.log(10.0)


def init_view_fraction(cfg: Config) -> float:
    """Probability that a view counts as learned already at init: max over the m neurons of
    ⟨w_r, v⟩ ~ N(0, σ_0²) reaches ``view_threshold``·ϱ, i.e. 1 − Φ(θϱ/σ_0)^m. Near 0 in a
    lottery regime (σ_0 ≪ ϱ); large when σ_0 ≈ ϱ, where the learned-view count stops
    measuring learning."""
    z = cfg.verify.view_threshold * cfg.model.varrho / cfg.model.sigma_0
    return 1.0 - (0.5 * math.erfc(-z / math.sqrt(2.0))) ** cfg.model.m


def configs(
    ks: Sequence[int], preset: str = "theory", overrides: Mapping[str, Any] | None = None
) -> list[Config]:
    """One validated config per k (the preset re-derives every k-dependent field), built
    before any compute so a bad k or override fails at once."""
    if not ks:
        raise ConfigError("ks", list(ks), "must list at least one k")
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ConfigError("ks", k, "every k must be an integer ≥ 2")
        cfg = make_config(preset, {**(overrides or {}), "k": k})
        E = cfg.experiment
        out.append(cfg.replace(n_test_multi=E.exp_n_test_multi, n_test_single=E.exp_n_test_single))
    return out


def run(
    ks: Sequence[int] = DEFAULT_KS,
    preset: str = "theory",
    overrides: Mapping[str, Any] | None = None,
    *,
    progress: Progress = True,
) -> dict[str, Any]:
    """Claim ``single`` and the mechanism for every k; returns the report dict."""
    cfgs = configs(ks, preset, overrides)
    t_all = time.perf_counter()
    rows = []
    for cfg in cfgs:
        t = time.perf_counter()
        m = verify.run(cfg, claims=["single"], progress=progress)
        res = claims.evaluate_all(m, ["single"])[0]
        mech = claims.mechanism(m)
        rows.append(_row(cfg, m, res, mech, time.perf_counter() - t))
    rep = envelope("theory-scaling", cfgs[0])
    rep.update(
        {
            "description": __doc__.strip().splitlines()[0],
            "ks": list(ks),
            "configs": {str(c.data.k): c.to_dict() for c in cfgs},
            "rows": rows,
            "summary": {
                "band": list(BAND),
                "rho_below_Gamma_needs_log10_k_above": rho_below_gamma_log10_k(),
            },
            "timing": {"total": round(time.perf_counter() - t_all, 3)},
        }
    )
    return rep


def _row(cfg: Config, m, res, mech: dict, seconds: float) -> dict[str, Any]:
    D, M, T = cfg.data, cfg.model, cfg.train
    g = m.groups["single"]
    ci = res.estimate.ci_over_mu()
    per = [r["error_over_mu"] for r in res.per_model]
    return {
        "k": D.k,
        "d": D.d,
        "P": D.P,
        "N": D.N,
        "mu": D.mu,
        "m": M.m,
        "q": M.q,
        "T": T.T,
        "eta": T.eta,
        "sigma_0": M.sigma_0,
        "varrho": M.varrho,
        "sigma0_over_varrho": M.sigma_0 / M.varrho,
        "rho_lo": D.rho[0],
        "Gamma_hi": D.Gamma[1],
        "rho_below_Gamma": D.rho[0] < D.Gamma[1],
        "frac_views_learned_at_init_expected": init_view_fraction(cfg),
        "seeds": cfg.verify.seeds,
        "n_test_multi": res.estimate.n_multi,
        "n_test_single": res.estimate.n_single,
        "error_over_mu": res.estimate.error_over_mu,
        "ci_lo": ci[0],
        "ci_hi": ci[1],
        "error_over_mu_seed_min": float(np.min(per)),
        "error_over_mu_seed_max": float(np.max(per)),
        "error_single_view": res.estimate.error_single,
        "error_multi_view": res.estimate.error_multi,
        "finite_k_prediction": res.finite_k_prediction,
        "frac_one_view": mech["frac_one_view"],
        "frac_two_views": mech["frac_two_views"],
        "frac_no_view": mech["frac_no_view"],
        "lottery_prediction_accuracy": mech["lottery_prediction_accuracy"],
        "train_accuracy_min": float(np.min(g.train_accuracy)),
        "train_perfect_all": bool(np.all(g.train_accuracy >= 1.0)),
        "steps_max": int(np.max(g.steps)),
        "single_verdict": res.verdict.name,
        "in_band": bool(BAND[0] < ci[0] and ci[1] < BAND[1]),
        "time_s": round(seconds, 2),
    }


def table(rep: dict[str, Any]) -> str:
    out = [
        f"mvsim experiment theory-scaling — preset '{rep['preset']}', k in {rep['ks']} "
        f"(every parameter from k; seeds={rep['rows'][0]['seeds']})",
    ]
    head = ["k", "P", "d", "N", "σ0/ϱ", "ρ<Γ", "one/two/no view", "error/μ [95% CI]",
            "e_single", "e_multi", "train acc=1", "steps", "verdict", "time (s)"]  # fmt: skip
    body = []
    for r in rep["rows"]:
        body.append([
            str(r["k"]), str(r["P"]), str(r["d"]), str(r["N"]), f"{r['sigma0_over_varrho']:.2f}",
            "yes" if r["rho_below_Gamma"] else "no",
            f"{r['frac_one_view']:.2f}/{r['frac_two_views']:.2f}/{r['frac_no_view']:.2f}",
            fmt_ci(r["error_over_mu"], r["ci_lo"], r["ci_hi"]),
            f"{r['error_single_view']:.3f}", f"{r['error_multi_view']:.4f}",
            "all" if r["train_perfect_all"] else f"no (min {r['train_accuracy_min']:.3f})",
            str(r["steps_max"]), r["single_verdict"], f"{r['time_s']:.0f}",
        ])  # fmt: skip
    out += text_table(head, body)
    lk = rep["summary"]["rho_below_Gamma_needs_log10_k_above"]
    out.append(
        f"theorem band for error/μ: {rep['summary']['band']}; the recipe's ρ = k^−0.01 < Γ = "
        f"1/ln k holds only for k > 10^{lk:.0f}"
    )
    out.append(f"timing (s): total {rep['timing']['total']:.1f}")
    return "\n".join(out)


def figure(rep: dict[str, Any], out: Path) -> list[str]:
    """error/μ (pooled, with CI, and per seed's range) and the one-view fraction against k."""
    from mvsim.plots import PALETTE, _plt, _save

    plt = _plt()
    rows = rep["rows"]
    k = np.array([r["k"] for r in rows], float)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax.axhspan(*rep["summary"]["band"], color="grey", alpha=0.3, lw=0)
    ax.axhline(0.5, color="grey", lw=1, ls="--", label="Theorem 1 band [0.49, 0.51]")
    e = np.array([r["error_over_mu"] for r in rows])
    lo = np.array([r["ci_lo"] for r in rows])
    hi = np.array([r["ci_hi"] for r in rows])
    ax.errorbar(k, e, yerr=[e - lo, hi - e], fmt="o-", color=PALETTE[0], capsize=4,
                label="single, pooled (95% CI)")  # fmt: skip
    smin = np.array([r["error_over_mu_seed_min"] for r in rows])
    smax = np.array([r["error_over_mu_seed_max"] for r in rows])
    ax.fill_between(k, smin, smax, color=PALETTE[0], alpha=0.15, lw=0, label="seed range")
    pred = [r["finite_k_prediction"] for r in rows]
    ax.plot(k, pred, "s--", color=PALETTE[1], ms=4, label="finite-k prediction")
    ax.set(xlabel="k", ylabel="test error / μ", title="theory preset: single-model error")
    ax.set_xticks(k)
    ax2.set_xticks(k)
    ax.legend(fontsize=7)
    for j, (key, label) in enumerate((("frac_one_view", "one view"),
                                      ("frac_two_views", "two views"),
                                      ("frac_no_view", "no view"))):  # fmt: skip
        ax2.plot(k, [r[key] for r in rows], "o-", color=PALETTE[j + 2], label=label)
    ax2.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax2.set(xlabel="k", ylabel="fraction of classes", ylim=(-0.03, 1.03),
            title="views learned per class")  # fmt: skip
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out, "theory_scaling")
