"""Figures of a verify report (PNG and SVG). They read only the report dict, so any
saved report.json can be re-plotted: ``mvsim plot-report DIR/report.json``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mvsim import mechanism

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mvsim.data import Batch, GroundTruth

# Okabe–Ito: a colour-blind-safe palette.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def _plt():
    import matplotlib

    # Headless by default (the CLI writes files), but keep a backend someone chose: a
    # notebook kernel sets MPLBACKEND to its inline backend, and forcing Agg there would
    # hide every figure.
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    png, svg = out / f"{name}.png", out / f"{name}.svg"
    fig.savefig(png, dpi=130, bbox_inches="tight")
    # The same report gives the same SVG bytes (report.html inlines it): no date, and
    # clip-path ids hashed with a fixed salt instead of a random one.
    with plt.rc_context({"svg.hashsalt": name}):
        fig.savefig(svg, dpi=130, bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return [str(png), str(svg)]


def alignment_over_time(
    rep: dict[str, Any], out: Path, seed: int = 0, classes: int = 4
) -> list[str]:
    """Λ_{i,ℓ} against GD step for the first few classes of one seed (log-log), to files."""
    return _save(draw_alignment_over_time(rep, seed, classes), out, "alignment_over_time")


def draw_alignment_over_time(rep: dict[str, Any], seed: int = 0, classes: int = 4) -> Figure:
    """Λ_{i,ℓ} (dimensionless, ϱ units on the axis) against GD step, first ``classes``
    classes of single model ``seed``, log-log, with ϱ as a dotted line."""
    plt = _plt()
    steps = np.asarray(rep["history"]["steps"], float)
    lam = np.maximum(np.asarray(rep["history"]["single_alignment"])[seed], 1e-4)  # (L, k, 2)
    varrho = rep["config"]["model"]["varrho"]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for i in range(min(classes, lam.shape[1])):
        for ell, ls in ((0, "-"), (1, "--")):
            ax.plot(
                np.maximum(steps, 1),
                lam[:, i, ell],
                ls,
                color=PALETTE[i],
                label=f"class {i}, view {ell + 1}",
            )
    ax.axhline(varrho, color="grey", lw=0.8, ls=":", label="ϱ")
    ax.set(
        xscale="log", yscale="log", xlabel="GD step", ylabel="Λ_{i,ℓ} = max_r ⟨w_{i,r}, v_{i,ℓ}⟩⁺"
    )
    ax.set_title(f"View alignment over training (seed {seed})")
    ax.legend(fontsize=7, ncol=2)
    return fig


def view_matrix(rep: dict[str, Any], out: Path) -> list[str]:
    """Views learned (0/1/2) per seed × class, to files."""
    return _save(draw_view_matrix(rep), out, "view_matrix")


def draw_view_matrix(rep: dict[str, Any]) -> Figure:
    """Views learned (0/1/2) by each single model (rows) for each class (columns)."""
    plt = _plt()
    from matplotlib.colors import ListedColormap

    v = np.asarray(rep["mechanism"]["views_learned"])
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * v.shape[1] + 2), 0.35 * v.shape[0] + 1.5))
    im = ax.imshow(
        v, cmap=ListedColormap([PALETTE[3], PALETTE[5], PALETTE[1]]), vmin=-0.5, vmax=2.5
    )
    cb = fig.colorbar(im, ax=ax, ticks=[0, 1, 2])
    cb.set_label("views learned")
    ax.set(xlabel="class", ylabel="seed", title="View-learning matrix of the single models")
    return fig


def claims_vs_bounds(rep: dict[str, Any], out: Path) -> list[str]:
    """error/μ with its 95% CI per claim, the paper's bound drawn as a band, to files."""
    return _save(draw_claims_vs_bounds(rep), out, "claims_vs_bounds")


def draw_claims_vs_bounds(rep: dict[str, Any]) -> Figure:
    """error/μ with its 95% CI per claim (points) and the paper's bound (grey band),
    annotated with each verdict."""
    plt = _plt()
    claims = rep["claims"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    top = max(max(c["ci95"][1] for c in claims), 0.6) * 1.1
    for i, c in enumerate(claims):
        lo, hi = c["bound"]["lo"], c["bound"]["hi"]
        band = (0 if lo is None else lo, top if hi is None else hi)
        ax.fill_between([i - 0.35, i + 0.35], *band, color="grey", alpha=0.25, lw=0)
        e, (cl, ch) = c["error_over_mu"], c["ci95"]
        ax.errorbar(
            i, e, yerr=[[e - cl], [ch - e]], fmt="o", color=PALETTE[i % len(PALETTE)], capsize=4
        )
        ax.annotate(
            c["verdict"],
            (i, ch),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    ax.set_xticks(range(len(claims)), [c["id"] for c in claims], rotation=15)
    ax.set(ylabel="test error / μ", ylim=(0, top), title="Claims against the paper's bounds (grey)")
    return fig


# The error curves: one colour per group, as in the claims' order; the control dashed.
_CURVES = (
    ("single", "single", PALETTE[0], "-"),
    ("ensemble", "ensemble", PALETTE[1], "-"),
    ("kd", "KD student", PALETTE[2], "-"),
    ("self_distillation", "self-distilled", PALETTE[4], "-"),
    ("control", "control (own-init teacher)", PALETTE[7], "--"),
    ("training_average", "training average", PALETTE[3], "-"),
)


def curve_error_over_mu(c: dict[str, Any], mu: float) -> np.ndarray:
    """E/μ (S, L) of a report's ``curves.groups`` entry (counts on the curve subset)."""
    es = np.asarray(c["errors_single"], float) / c["n_single"]
    if not c["n_multi"]:
        return es
    return es + (1 - mu) / mu * np.asarray(c["errors_multi"], float) / c["n_multi"]


def _times_to_level(rep: dict[str, Any]) -> dict[str, tuple[float, list | None, float]]:
    """{group: (mean time to its claim's level, its 95% CI over models or None, the
    level)}; the control's to the KD level, read off the KD claim's paired times."""
    out = {}
    for c in rep["claims"]:
        t = c.get("trajectory")
        if not t:
            continue
        level = c["bound"]["hi"] if c["bound"]["hi"] is not None else c["bound"]["lo"]
        ttl = t["time_to_level"]
        if ttl["mean"] is not None:
            out[c["id"]] = (ttl["mean"], ttl["ci95"], level)
        mech = t.get("mechanism")
        if c["id"] == "kd" and mech:
            ctl = [p["control_time"] for p in mech["times"][f"{mech['level']:g}"]["pairs"]]
            if ctl and all(x is not None for x in ctl):
                out["control"] = (float(np.expm1(np.log1p(ctl).mean())), None, mech["level"])
    return out


def error_curves(rep: dict[str, Any], out: Path) -> list[str]:
    """:func:`draw_error_curves` to files."""
    return _save(draw_error_curves(rep), out, "error_curves")


def draw_error_curves(rep: dict[str, Any]) -> Figure:
    """error/μ against GD-equivalent step (log axis) of every model group on the curve
    subset: the mean over a group's models (thick) and each model (thin), the theorems'
    levels (the single band shaded, 0.26μ and 0.001μ dashed; the axis is linear below
    0.001μ so that 0 shows), the horizon T of the trajectory reading (dotted), and on its
    level each group's mean time to level (●, with its 95% CI over models)."""
    plt = _plt()
    cur = rep["curves"]
    mu = cur["mu"]
    fig, ax = plt.subplots(figsize=(7.6, 5.6))
    ax.axhspan(0.49, 0.51, color="grey", alpha=0.35, lw=0, label="[0.49, 0.51]μ: single (Thm 1)")
    ax.axhline(0.26, color="grey", lw=0.9, ls="--", label="0.26μ: self-distillation (Thm 4)")
    ax.axhline(0.001, color="grey", lw=0.9, ls="-.", label="0.001μ: ensemble, KD (Thms 2–3)")
    H = cur["horizon"]
    ax.axvline(H, color="black", lw=0.9, ls=":", label=f"horizon T = {H:,}")
    reached = _times_to_level(rep)
    for name, label, color, ls in _CURVES:
        c = cur["groups"].get(name)
        if c is None:
            continue
        t = np.maximum(np.asarray(c["steps"], float), 1.0)
        e = curve_error_over_mu(c, mu)
        if e.shape[0] > 1:
            for row in e:
                ax.plot(t, row, ls, color=color, lw=0.6, alpha=0.3)
        if name in reached:
            when, ci, level = reached[name]
            label += f" (● at {level:g}μ: t ≈ {when:,.0f})"
            err = None if ci is None else [[when - ci[0]], [ci[1] - when]]
            ax.errorbar(max(when, 1.0), level, xerr=err, fmt="o", color=color, ms=6,
                        capsize=3, zorder=5)  # fmt: skip
        ax.plot(t, e.mean(0), ls, color=color, lw=2, label=label)
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-3, linscale=0.5)
    ax.set_ylim(0, 40)
    ax.set_xlim(0.8, 1.6 * max(H, max(c["steps"][-1] for c in cur["groups"].values())))
    n = next(iter(cur["groups"].values()))
    ax.set(xlabel="GD-equivalent step t", ylabel="test error / μ",
           title=f"Test error over training ({n['n_multi']:,} + {n['n_single']:,} test "
           "points at each recorded step)")  # fmt: skip
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
              frameon=False)  # fmt: skip
    fig.tight_layout()
    return fig


def comparison_bars(rep: dict[str, Any], out: Path) -> list[str]:
    """single / ensemble / KD / self-KD / training-average by stratum, to files."""
    return _save(draw_comparison_bars(rep), out, "comparison_bars")


def draw_comparison_bars(rep: dict[str, Any]) -> Figure:
    """single / ensemble / KD / self-KD / training-average side by side: the error rate
    within the single-view and the multi-view test stratum (fractions, not /μ), with each
    distillation claim's mean control error marked."""
    plt = _plt()
    claims = rep["claims"]
    names = [c["id"] for c in claims]
    es = [c["error_single_view"] for c in claims]
    em = [c["error_multi_view"] for c in claims]
    x = np.arange(len(claims))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.bar(x - 0.2, es, 0.4, color=PALETTE[0], label="single-view test error")
    ax.bar(x + 0.2, em, 0.4, color=PALETTE[1], label="multi-view test error")
    for c, xi in zip(claims, x, strict=True):
        if "control_error_over_mu" in c:
            ctrl = np.mean([r["control_error_single_view"] for r in c["versus_control"]])
            ax.plot(xi - 0.2, ctrl, "k_", ms=18)
    ax.set_xticks(x, names, rotation=15)
    ax.set(
        ylabel="error rate within stratum", title="Single vs ensemble vs distillation (— control)"
    )
    ax.legend(fontsize=8)
    return fig


_NTK_GROUPS = (
    ("single", "single"),
    ("ensemble", "ensemble"),
    ("training_average", "training average"),
    ("kd", "KD"),
    ("self_kd", "self-KD"),
)
_NTK_BARS = (
    ("deep", "deep learning (patch CNN)"),
    ("linearized", "linearized (finite width)"),
    ("infinite", "infinite-width NTK"),
)


def ntk_bars(rep: dict[str, Any], out: Path) -> list[str]:
    """The deep-vs-NTK table as grouped bars, to files (see :func:`draw_ntk_bars`)."""
    return _save(draw_ntk_bars(rep), out, "ntk_bars")


def draw_ntk_bars(rep: dict[str, Any]) -> Figure:
    """The deep-vs-NTK table as grouped bars (the paper's Figure 1 on synthetic data).

    Groups: single / ensemble / training average / KD / self-KD; one bar per row (deep,
    linearized, infinite width) at its error/μ with the 95% CI as error bars. Cells that
    are not defined or not measured (e.g. distillation at infinite width) have no bar.
    """
    plt = _plt()
    tab = rep["ntk"]["table"]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    w = 0.8 / len(_NTK_BARS)
    top = 0.0
    for j, (row, label) in enumerate(_NTK_BARS):
        xs, es, lo, hi = [], [], [], []
        for g, (col, _) in enumerate(_NTK_GROUPS):
            cell = tab.get(row, {}).get(col)
            if not cell:
                continue
            e, (cl, ch) = cell["error_over_mu"], cell["ci95"]
            xs.append(g + (j - (len(_NTK_BARS) - 1) / 2) * w)
            es.append(e)
            lo.append(max(e - cl, 0.0))
            hi.append(max(ch - e, 0.0))
            top = max(top, ch)
        if xs:
            ax.bar(xs, es, w, yerr=[lo, hi], capsize=3, color=PALETTE[j], label=label,
                   error_kw={"lw": 0.8})  # fmt: skip
    ax.set_xticks(range(len(_NTK_GROUPS)), [name for _, name in _NTK_GROUPS])
    ax.set(
        ylabel="test error / μ (95% CI)",
        ylim=(0, max(top, 1e-3) * 1.15),
        title="Deep learning vs the NTK regime on the same data",
    )
    # Below the axes: inside, it would cover the tall CIs of small test sets.
    ax.legend(fontsize=8, ncol=len(_NTK_BARS), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    return fig


# --- the mechanism, step by step (notebooks/02_mechanism.ipynb) -----------------------

_OUTCOME_COLORS = (PALETTE[3], PALETTE[0], PALETTE[1], PALETTE[2])  # none, v1, v2, both


def draw_patches(batch: Batch, truth: GroundTruth, indices: Sequence[int]) -> Figure:
    """Which patch carries which view: one heatmap per sample of its coefficients.

    Panel j shows ``truth.coef[indices[j]]`` as a (P patches × 2k views) image: the weight
    of view v_{i,ℓ} in patch p (dimensionless; x_p = Σ coef·v + ξ_p), on a square-root
    colour scale so that weak views and noisy features show. The sample's own two
    views are boxed; the title gives its class and whether it is multi-view or
    single-view (with its strong view ℓ̂).

    Args:
      batch: a data set (:func:`mvsim.data.sample`), for y, single_view, strong_view.
      truth: its ground truth (``sample(..., ground_truth=True)``), for coef (n, P, k, 2).
      indices: which samples to draw (one panel each).
    """
    plt = _plt()
    from matplotlib.colors import PowerNorm
    from matplotlib.patches import Rectangle

    coef = np.asarray(truth.coef)
    n, P, k, _ = coef.shape
    idx = list(indices)
    vmax = max(float(coef[idx].max()), 1e-9)
    fig, axes = plt.subplots(
        1, len(idx), figsize=(0.28 * 2 * k * len(idx) + 1.5, 0.25 * P + 1.6), squeeze=False
    )
    im = None
    for ax, i in zip(axes[0], idx, strict=True):
        y = int(batch.y[i])
        # A square-root colour scale: the weak view (ρ) and the noisy features (Γ) are
        # 10-50x below the strong views and would be invisible on a linear one.
        im = ax.imshow(coef[i].reshape(P, 2 * k), cmap="viridis", aspect="auto",
                       norm=PowerNorm(0.5, vmin=0, vmax=vmax),
                       interpolation="nearest")  # fmt: skip
        ax.add_patch(Rectangle((2 * y - 0.5, -0.5), 2, P, fill=False, ec="w", lw=1.5))
        kind = (
            f"single-view, strong view {int(batch.strong_view[i]) + 1}"
            if bool(batch.single_view[i])
            else "multi-view"
        )
        ax.set_title(f"sample {i}: class {y}\n{kind}", fontsize=8)
        ax.set_xticks(range(2 * k), [f"{c}.{ell + 1}" for c in range(k) for ell in range(2)],
                      rotation=90, fontsize=6)  # fmt: skip
        ax.set_yticks(range(P), [str(p) for p in range(P)], fontsize=6)
        ax.set_xlabel("view (class.view)", fontsize=7)
    axes[0][0].set_ylabel("patch")
    fig.colorbar(im, ax=list(axes[0]), label="coefficient of the view in the patch (√ scale)")
    return fig


def draw_alignment_phases(
    rep: dict[str, Any],
    seed: int = 0,
    classes: int = 4,
    fit_range: tuple[float, float] | None = None,
) -> Figure:
    """The two phases of feature learning for single model ``seed``.

    Left: Λ_{i,ℓ} against GD step (log-log) for the first ``classes`` classes, with ϱ and
    the step at which each view reaches it (the end of its phase 1; steps are the
    log-spaced recorded ones, so a crossing is known within one recording interval).
    Right: the growth rate dΛ/dt (per GD step) against Λ for every class and view; in
    a class's phase 1 (no view of it at ϱ yet, :func:`mvsim.mechanism.phase1_intervals`)
    the paper's dynamics x ↦ x + ηΘ(1/k)x^{q−1} give a power law of exponent q − 1, drawn
    as a reference line through the fitted points, next to the least-squares slope
    (:func:`mvsim.mechanism.power_law_slope`) over those points in ``fit_range``
    (default: from twice the median initial Λ to ϱ/2).
    """
    plt = _plt()
    steps = np.asarray(rep["history"]["steps"], float)
    lam_all = np.maximum(np.asarray(rep["history"]["single_alignment"], float)[seed], 0.0)
    varrho = rep["config"]["model"]["varrho"]
    q = rep["config"]["model"]["q"]
    cross = mechanism.crossing_steps(steps, lam_all, varrho)  # (k, 2)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    lam_plot = np.maximum(lam_all, 1e-4)
    for i in range(min(classes, lam_all.shape[1])):
        for ell, ls in ((0, "-"), (1, "--")):
            ax.plot(np.maximum(steps, 1), lam_plot[:, i, ell], ls, color=PALETTE[i],
                    label=f"class {i}, view {ell + 1}")  # fmt: skip
            if cross[i, ell] >= 0:
                ax.plot(max(cross[i, ell], 1), varrho, "o", color=PALETTE[i], ms=5)
    winners = cross.max(-1)
    if (winners >= 0).any():
        t1 = float(np.median(winners[winners >= 0]))
        ax.axvspan(1, max(t1, 1), color="grey", alpha=0.12, lw=0)
        ax.text(1.2, varrho * 1.15, "phase 1 (median class)", fontsize=7, color="grey")
    ax.axhline(varrho, color="grey", lw=0.8, ls=":", label="ϱ")
    ax.set(xscale="log", yscale="log", xlabel="GD step", ylabel="Λ_{i,ℓ}",
           title=f"Λ over training (seed {seed}); ● = reaches ϱ")  # fmt: skip
    ax.legend(fontsize=6, ncol=2, loc="lower right")

    mid, rate = mechanism.growth_rates(steps, lam_all)
    phase1 = mechanism.phase1_intervals(steps, lam_all, varrho)
    if fit_range is None:
        lam0 = float(np.median(lam_all[0])) if lam_all.shape[0] else 0.0
        fit_range = (2 * lam0, varrho / 2)
    lo, hi = fit_range
    slope = mechanism.power_law_slope(mid, rate, lo, hi, phase1)
    pos = np.isfinite(rate) & (rate > 0) & (mid > 0)
    bx.loglog(mid[pos & phase1], rate[pos & phase1], ".", color=PALETTE[0], ms=4,
              label="phase 1 (no view of the class ≥ ϱ yet)")  # fmt: skip
    bx.loglog(mid[pos & ~phase1], rate[pos & ~phase1], ".", color="grey", ms=4,
              label="later")  # fmt: skip
    sel = pos & phase1 & (mid >= lo) & (mid <= hi)
    if sel.any():
        x0 = float(np.exp(np.log(mid[sel]).mean()))
        y0 = float(np.exp(np.log(rate[sel]).mean()))
        xs = np.array([lo, hi])
        bx.loglog(xs, y0 * (xs / x0) ** (q - 1), "k--", lw=1, label=f"slope q − 1 = {q - 1}")
        bx.axvspan(lo, hi, color=PALETTE[0], alpha=0.08, lw=0)
    fitted = "n/a" if not np.isfinite(slope) else f"{slope:.2f}"
    bx.set(xlabel="Λ_{i,ℓ}", ylabel="dΛ/dt (per GD step)",
           title=f"Phase-1 power law: fitted slope {fitted} (shaded range)")  # fmt: skip
    bx.legend(fontsize=7)
    fig.tight_layout()
    return fig


def draw_lottery(rep: dict[str, Any]) -> Figure:
    """The lottery: initial alignment ratio Λ^{(0)}_{i,1}/Λ^{(0)}_{i,2} (log scale) of each
    (single model, class) against which views it learned, one point each (jittered).

    The paper predicts view 1 when the ratio is > 1 and view 2 when it is < 1; close
    races (ratio ≈ 1) are where two-view classes come from at finite k.
    """
    plt = _plt()
    mech = rep["mechanism"]
    ratio = mechanism.initial_ratio(np.asarray(mech["init_alignment"], float)).ravel()
    outcome = mechanism.learned_outcome(np.asarray(mech["views"]["single"], bool)).ravel()
    rng = np.random.default_rng(0)  # jitter only: fixed so the figure is reproducible
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    r = np.clip(np.nan_to_num(ratio, nan=1.0, posinf=1e3), 1e-3, 1e3)
    for code, name in enumerate(mechanism.OUTCOMES):
        sel = outcome == code
        if sel.any():
            ax.scatter(r[sel], code + rng.uniform(-0.15, 0.15, sel.sum()), s=14,
                       color=_OUTCOME_COLORS[code], label=f"{name} ({sel.sum()})")  # fmt: skip
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yticks(range(len(mechanism.OUTCOMES)), mechanism.OUTCOMES)
    acc = mech.get("lottery_prediction_accuracy")
    ax.set(xlabel="initial ratio Λ⁽⁰⁾_{i,1} / Λ⁽⁰⁾_{i,2} (clipped to [1e-3, 1e3])",
           title="The lottery: the view that starts ahead is learned"
           + ("" if acc is None else f" ({acc:.0%} of one-view classes)"))  # fmt: skip
    return fig


def draw_race(rep: dict[str, Any]) -> Figure:
    """The finite-k race: fraction of (model, class) pairs that learned both views against
    the initial ratio r = Λ^{(0)}_loser/Λ^{(0)}_winner (bins of
    ``mechanism.two_views_by_initial_ratio``), with exact 95% CIs, and below it how many
    classes the init puts in each bin: the run's count and the Monte Carlo law for its m
    (:func:`mvsim.mechanism.initial_ratio_distribution`). The two-view fraction is the
    product of the two (:func:`mvsim.mechanism.predicted_two_view_fraction`).
    """
    from mvsim.stats import clopper_pearson_interval

    plt = _plt()
    rows = rep["mechanism"]["two_views_by_initial_ratio"]
    bins = [rows[0]["ratio_lo"]] + [r["ratio_hi"] for r in rows]
    mids = np.array([(r["ratio_lo"] + r["ratio_hi"]) / 2 for r in rows])
    widths = np.diff(bins)
    n = np.array([r["classes"] for r in rows])
    frac = np.array([np.nan if r["frac_two_views"] is None else r["frac_two_views"] for r in rows])
    two = np.nan_to_num(frac * n).round().astype(int)
    ci = np.array([clopper_pearson_interval(int(t), int(c)) if c else (np.nan, np.nan)
                   for t, c in zip(two, n, strict=True)])  # fmt: skip
    m = int(rep["config"]["model"]["m"])
    law = mechanism.initial_ratio_distribution(m, bins)
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(6.4, 5.2), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 2]})  # fmt: skip
    ax.bar(mids, frac, width=widths * 0.9, color=PALETTE[2], alpha=0.8)
    ax.errorbar(mids, frac, yerr=[frac - ci[:, 0], ci[:, 1] - frac], fmt="none",
                ecolor="black", capsize=3, lw=1)  # fmt: skip
    for x, c in zip(mids, n, strict=True):
        ax.annotate(f"n={c}", (x, 1.02), ha="center", fontsize=7)
    pred = float(np.nansum(law * np.nan_to_num(frac)))
    total = float(np.nansum(frac * n) / max(n.sum(), 1))
    ax.set(ylim=(0, 1.1), ylabel="both views learned",
           title=f"The race at k = {rep['config']['data']['k']}, m = {m}: two-view classes "
           f"{total:.3f} (init law × curve: {pred:.3f})")  # fmt: skip
    bx.bar(mids - widths * 0.2, n / max(n.sum(), 1), width=widths * 0.4, color=PALETTE[0],
           label="this run")  # fmt: skip
    bx.bar(mids + widths * 0.2, law, width=widths * 0.4, color=PALETTE[1],
           label=f"init law, m = {m}")  # fmt: skip
    bx.set(xlabel="initial ratio r = Λ⁽⁰⁾ loser / Λ⁽⁰⁾ winner", ylabel="share of classes")
    bx.legend(fontsize=8)
    fig.tight_layout()
    return fig


def draw_memorisation(rep: dict[str, Any]) -> Figure:
    """Memorisation of single-view training points: F_y of each point's features alone
    (x − ξ) against F_y of its noise alone (ξ), logit units, for every single model;
    coloured by whether the model learned the point's strong view. Points whose strong
    view was not learned sit near F_y(features) ≈ 0: their noise carries the margin."""
    plt = _plt()
    pts = rep["mechanism"]["memorisation"]["points"]
    learned = np.asarray(pts["strong_view_learned"], bool)
    fx = np.asarray(pts["F_y_features_only"], float)
    fn = np.asarray(pts["F_y_noise_only"], float)
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    ax.scatter(fx[learned], fn[learned], s=14, color=PALETTE[0],
               label=f"strong view learned ({learned.sum()})")  # fmt: skip
    ax.scatter(fx[~learned], fn[~learned], s=14, color=PALETTE[3], marker="x",
               label=f"strong view NOT learned ({(~learned).sum()})")  # fmt: skip
    top = max(float(np.max(fx, initial=0)), float(np.max(fn, initial=0)), 1e-3)
    ax.plot([0, top], [0, top], color="grey", lw=0.8, ls=":")
    ax.set(xlabel="F_y(x − ξ): features only", ylabel="F_y(ξ): noise only",
           title="Single-view training points: fitted by features or by noise?")  # fmt: skip
    ax.legend(fontsize=8)
    return fig


def draw_distilled_views(rep: dict[str, Any], claim: str = "self_distillation") -> Figure:
    """What each distilled student knows, class by class, next to where it came from.

    For student j of ``claim`` ('self_distillation': taught by single j+1; 'kd': by the
    ensemble of the other singles, whose views are their union), four rows: single j
    (the student's own init trained alone, i.e. its lottery), the teacher, the control
    (same init, taught by single j) and the student. Colours: which views are learned.
    """
    plt = _plt()
    from matplotlib.colors import ListedColormap

    views = {n: np.asarray(v, bool) for n, v in rep["mechanism"]["views"].items()}
    singles, students, control = views["single"], views[claim], views["control"]
    K = singles.shape[0]
    n = students.shape[0]
    fig, axes = plt.subplots(n, 1, figsize=(0.45 * singles.shape[1] + 3.5, 1.5 * n + 0.6),
                             squeeze=False)  # fmt: skip
    for j, ax in enumerate(axes[:, 0]):
        if claim == "kd":
            teacher = np.delete(singles, j, axis=0).any(0)
            tname = "teacher (ensemble of the others)"
        else:
            teacher = singles[(j + 1) % K]
            tname = f"teacher (single {(j + 1) % K})"
        rows = [singles[j], teacher, control[j], students[j]]
        names = [f"single {j} (own lottery)", tname, "control (taught by itself)",
                 f"student {j}"]  # fmt: skip
        codes = mechanism.learned_outcome(np.stack(rows))
        ax.imshow(codes, cmap=ListedColormap(_OUTCOME_COLORS), vmin=-0.5, vmax=3.5,
                  aspect="auto")  # fmt: skip
        ax.set_yticks(range(4), names, fontsize=7)
        ax.set_xticks(range(codes.shape[1]))
        ax.tick_params(axis="x", labelsize=7)
    axes[-1, 0].set_xlabel("class")
    axes[0, 0].set_title(f"{claim}: views learned per class", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in _OUTCOME_COLORS]
    axes[-1, 0].legend(handles, mechanism.OUTCOMES, ncol=4, fontsize=7, loc="upper center",
                       bbox_to_anchor=(0.5, -0.35))  # fmt: skip
    return fig


def draw_kernel_matrix(kernel: np.ndarray, y: np.ndarray) -> Figure:
    """A kernel matrix Θ(X, X) (n, n) between n inputs of labels y (n,), rows and columns
    sorted by class and normalised to cosine similarity Θ_ab / √(Θ_aa Θ_bb), with the
    class blocks outlined. The NTK is fixed at init: this is all a kernel model will ever
    know about which inputs resemble which."""
    plt = _plt()
    kern = np.asarray(kernel, float)
    y = np.asarray(y)
    order = np.argsort(y, kind="stable")
    kern = kern[np.ix_(order, order)]
    dg = np.sqrt(np.clip(np.diag(kern), 1e-300, None))
    cos = kern / dg[:, None] / dg[None, :]
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(cos, cmap="magma", interpolation="nearest")
    ys = y[order]
    edges = np.flatnonzero(np.diff(ys)) + 0.5
    for e in edges:
        ax.axhline(e, color="w", lw=0.6)
        ax.axvline(e, color="w", lw=0.6)
    fig.colorbar(im, ax=ax, label="Θ(x, x′) / √(Θ(x, x) Θ(x′, x′))")
    ax.set(xlabel="input (sorted by class)", ylabel="input (sorted by class)",
           title="Infinite-width NTK between inputs")  # fmt: skip
    return fig


def alignment_phases(rep: dict[str, Any], out: Path, seed: int = 0) -> list[str]:
    """:func:`draw_alignment_phases`, to files."""
    return _save(draw_alignment_phases(rep, seed), out, "alignment_phases")


def race(rep: dict[str, Any], out: Path) -> list[str]:
    """:func:`draw_race`, to files."""
    return _save(draw_race(rep), out, "race")


def lottery(rep: dict[str, Any], out: Path) -> list[str]:
    """:func:`draw_lottery`, to files."""
    return _save(draw_lottery(rep), out, "lottery")


def memorisation(rep: dict[str, Any], out: Path) -> list[str]:
    """:func:`draw_memorisation`, to files."""
    return _save(draw_memorisation(rep), out, "memorisation")


def distilled_views(rep: dict[str, Any], out: Path) -> list[str]:
    """:func:`draw_distilled_views` of self-distillation, to files."""
    return _save(draw_distilled_views(rep), out, "self_distillation_views")


def all_figures(rep: dict[str, Any], out: str | Path) -> list[str]:
    """Every figure a report has the data for, into ``out``; returns the written paths.

    Reports written before a figure existed lack its data (e.g. ``mechanism.views``):
    that figure is skipped, so any saved report.json can be re-plotted.
    """
    out = Path(out)
    paths: list[str] = []
    mech = rep.get("mechanism", {})
    # The verdicts first: report.html shows the figures in this order.
    fns = [error_curves] if "curves" in rep else []
    fns += [claims_vs_bounds, comparison_bars]
    if "history" in rep:  # Λ over training: the patch CNN's
        fns.append(alignment_over_time)
    fns.append(view_matrix)
    if "history" in rep:
        fns.append(alignment_phases)
    if "init_alignment" in mech and "single" in mech.get("views", {}):
        fns.append(lottery)
    if mech.get("two_views_by_initial_ratio"):
        fns.append(race)
    if "points" in mech.get("memorisation", {}):
        fns.append(memorisation)
    if {"single", "self_distillation", "control"} <= set(mech.get("views", {})):
        fns.append(distilled_views)
    if "ntk" in rep:
        fns.append(ntk_bars)
    for fn in fns:
        paths += fn(rep, out)
    return paths


# --- sweeps (a result store as a DataFrame: mvsim.store.read_results) ------------------

_MARKERS = "osD^vP*X"


def _axes(df) -> list[str]:
    """The swept fields that actually vary in the store."""
    axes = df.attrs.get("axes") or [c[6:] for c in df.columns if c.startswith("point_")]
    return [a for a in axes if df[f"point_{a}"].nunique() > 1]


def _axis_values(df, a: str) -> tuple[np.ndarray, list, bool]:
    """(x positions, tick labels, numeric) of axis a: numbers as they are, others (pairs)
    as evenly spaced categories in the order they first appear."""
    col = df[f"point_{a}"]
    vals = list(dict.fromkeys(col))
    if all(isinstance(v, int | float | np.number) for v in vals):
        return col.to_numpy(float), sorted(vals), True
    pos = {v: i for i, v in enumerate(vals)}
    return col.map(pos).to_numpy(float), vals, False


def _groups(df, a: str, axes: list[str]):
    """(label, rows) for each combination of the other swept axes."""
    others = [o for o in axes if o != a]
    if not others:
        yield "", df
        return
    for key, sub in df.groupby([f"point_{o}" for o in others], sort=True):
        key = key if isinstance(key, tuple) else (key,)
        yield ", ".join(f"{o}={_fmt(v)}" for o, v in zip(others, key, strict=True)), sub


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _bound_band(ax, lo: float | None, hi: float | None, top: float) -> None:
    if lo is None and hi is None:
        return
    lo_, hi_ = 0 if lo is None else lo, top if hi is None else hi
    ax.axhspan(lo_, hi_, color="grey", alpha=0.25, lw=0, label="theorem's bound")
    for edge in {lo_, hi_} - {0, top}:  # a thin band ([0, 0.001]) stays visible by its edge
        ax.axhline(edge, color="grey", lw=0.8, ls="--")


def error_vs_axis(df, a: str, out: Path) -> list[str]:
    """:func:`draw_error_vs_axis`, to files ``error_vs_<a>``."""
    return _save(draw_error_vs_axis(df, a), out, f"error_vs_{a}")


def draw_error_vs_axis(df, a: str) -> Figure:
    """error/μ against swept axis a, one panel per claim: 95% CIs as error bars, the
    theorem's bound as a grey band, one line per combination of the other axes.

    ``df`` is a store's DataFrame (:func:`mvsim.store.read_results`), one row per
    (point, claim); ``a`` one of its swept fields (a ``point_<a>`` column). Error/μ is
    dimensionless (the test error in units of μ)."""
    plt = _plt()
    axes = _axes(df)
    claims = list(dict.fromkeys(df["claim"]))
    fig, axs = plt.subplots(1, len(claims), figsize=(4.2 * len(claims), 3.6), squeeze=False)
    for ax, claim in zip(axs[0], claims, strict=True):
        d = df[df["claim"] == claim]
        first = d.iloc[0]
        lo = None if np.isnan(first["bound_lo"]) else float(first["bound_lo"])
        hi = None if np.isnan(first["bound_hi"]) else float(first["bound_hi"])
        # The y range follows the claim's data and bound, so that the ensemble's
        # [0, 0.001μ] is as readable as the single model's [0.49μ, 0.51μ].
        top = 1.25 * max(float(d["ci_hi"].max()), hi or 0.0, lo or 0.0, 1e-3)
        _bound_band(ax, lo, hi, top)
        for i, (label, sub) in enumerate(_groups(d, a, axes)):
            x, ticks, numeric = _axis_values(sub, a)
            order = np.argsort(x)
            e = sub["error_over_mu"].to_numpy()[order]
            yerr = [np.maximum(e - sub["ci_lo"].to_numpy()[order], 0),
                    np.maximum(sub["ci_hi"].to_numpy()[order] - e, 0)]  # fmt: skip
            ax.errorbar(x[order], e, yerr=yerr, fmt=_MARKERS[i % len(_MARKERS)] + "-",
                        color=PALETTE[i % len(PALETTE)], capsize=3, ms=5,
                        label=label or None)  # fmt: skip
            if not numeric:
                ax.set_xticks(range(len(ticks)), [str(t) for t in ticks])
        ax.set(xlabel=a, ylabel="test error / μ (95% CI)", ylim=(0, top), title=claim)
        ax.legend(fontsize=7)
    fig.suptitle(f"Claims against {a}: measured error/μ and the theorems' bounds (grey)")
    fig.tight_layout()
    return fig


def views_vs_axis(df, a: str, out: Path) -> list[str]:
    """:func:`draw_views_vs_axis`, to files ``views_vs_<a>``."""
    return _save(draw_views_vs_axis(df, a), out, f"views_vs_{a}")


def draw_views_vs_axis(df, a: str) -> Figure:
    """Fraction of (seed, class) pairs whose single model learned exactly one view (solid)
    and both views (dashed) against swept axis a, one pair of lines per combination of
    the other axes. ``df``: a store's DataFrame (one point counted once, whatever its
    claims)."""
    plt = _plt()
    axes = _axes(df)
    pts = df.drop_duplicates("config_hash")
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    ticks: list = []
    for i, (label, sub) in enumerate(_groups(pts, a, axes)):
        x, ticks, numeric = _axis_values(sub, a)
        order = np.argsort(x)
        c = PALETTE[i % len(PALETTE)]
        ax.plot(x[order], sub["frac_one_view"].to_numpy()[order], _MARKERS[i % len(_MARKERS)] + "-",
                color=c, label=f"one view {label}".strip())  # fmt: skip
        ax.plot(x[order], sub["frac_two_views"].to_numpy()[order], "--", color=c, alpha=0.8,
                label=f"two views {label}".strip())  # fmt: skip
        if not numeric:
            ax.set_xticks(range(len(ticks)), [str(t) for t in ticks])
    ax.set(xlabel=a, ylabel="fraction of classes (single models)", ylim=(-0.02, 1.02),
           title=f"Views learned against {a}")  # fmt: skip
    ax.legend(fontsize=7)
    return fig


def phase_diagram(df, claim: str, out: Path) -> list[str]:
    """:func:`draw_phase_diagram`, to files ``phase_<claim>_<a>_<b>``."""
    fig = draw_phase_diagram(df, claim)
    a, b = _axes(df)
    return _save(fig, out, f"phase_{claim}_{a}_{b}")


def draw_phase_diagram(df, claim: str) -> Figure:
    """Heatmap of a claim over a two-axis grid: error/μ per cell (colour-blind-safe
    'cividis'), annotated with the verdict. ``df``: a store's DataFrame whose swept
    fields that vary are exactly two, a (columns, ascending) and b (rows, ascending
    upwards); a cell the store lacks stays blank."""
    axes = _axes(df)
    if len(axes) != 2:
        raise ValueError(f"a phase diagram needs exactly two swept axes that vary, not {axes}")
    plt = _plt()
    a, b = axes
    d = df[df["claim"] == claim]
    xs = sorted(d[f"point_{a}"].unique(), key=_sort_key)
    ys = sorted(d[f"point_{b}"].unique(), key=_sort_key)
    grid = np.full((len(ys), len(xs)), np.nan)
    verdicts = np.full((len(ys), len(xs)), "", dtype=object)
    for _, r in d.iterrows():
        i, j = ys.index(r[f"point_{b}"]), xs.index(r[f"point_{a}"])
        grid[i, j], verdicts[i, j] = r["error_over_mu"], r["verdict"]
    fig, ax = plt.subplots(figsize=(1.3 * len(xs) + 2.5, 0.9 * len(ys) + 1.8))
    im = ax.imshow(grid, cmap="cividis", origin="lower", aspect="auto")
    fig.colorbar(im, ax=ax).set_label("test error / μ")
    lim = np.nanmean(grid)
    for i in range(len(ys)):
        for j in range(len(xs)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}\n{verdicts[i, j]}", ha="center", va="center",
                        fontsize=8, color="white" if grid[i, j] < lim else "black")  # fmt: skip
    ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs])
    ax.set_yticks(range(len(ys)), [_fmt(v) for v in ys])
    ax.set(xlabel=a, ylabel=b, title=f"{claim}: error/μ and verdict over {a} × {b}")
    return fig


def _sort_key(v: Any) -> tuple:
    return (0, float(v), "") if isinstance(v, int | float | np.number) else (1, 0.0, str(v))


def sweep_figures(df, out: str | Path) -> list[str]:
    """Every sweep figure of a store's DataFrame into ``out``: error/μ and the view
    fractions against each swept axis, and for a two-axis grid a phase diagram per claim."""
    out = Path(out)
    axes = _axes(df)
    if not axes:
        raise ValueError("the store has no axis with more than one value: nothing to plot")
    paths: list[str] = []
    for a in axes:
        paths += error_vs_axis(df, a, out)
        paths += views_vs_axis(df, a, out)
    if len(axes) == 2:
        for claim in dict.fromkeys(df["claim"]):
            paths += phase_diagram(df, claim, out)
    return paths
