"""Figures of a verify report (PNG and SVG). They read only the report dict, so any
saved report.json can be re-plotted: ``mvsim plot-report DIR/report.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Okabe–Ito: a colour-blind-safe palette.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        p = out / f"{name}.{ext}"
        fig.savefig(p, dpi=130, bbox_inches="tight")
        paths.append(str(p))
    _plt().close(fig)
    return paths


def alignment_over_time(
    rep: dict[str, Any], out: Path, seed: int = 0, classes: int = 4
) -> list[str]:
    """Λ_{i,ℓ} against GD step for the first few classes of one seed (log-log)."""
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
    return _save(fig, out, "alignment_over_time")


def view_matrix(rep: dict[str, Any], out: Path) -> list[str]:
    """Views learned (0/1/2) per seed × class."""
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
    return _save(fig, out, "view_matrix")


def claims_vs_bounds(rep: dict[str, Any], out: Path) -> list[str]:
    """error/μ with its 95% CI per claim, the paper's bound drawn as a band."""
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
    return _save(fig, out, "claims_vs_bounds")


def comparison_bars(rep: dict[str, Any], out: Path) -> list[str]:
    """single / ensemble / KD / self-KD / training-average side by side, split by stratum."""
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
    return _save(fig, out, "comparison_bars")


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
    return _save(fig, out, "ntk_bars")


def all_figures(rep: dict[str, Any], out: str | Path) -> list[str]:
    """Every figure of a verify report into ``out``; returns the written paths."""
    out = Path(out)
    paths: list[str] = []
    fns = [alignment_over_time, view_matrix, claims_vs_bounds, comparison_bars]
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
    ax.axhspan(0 if lo is None else lo, top if hi is None else hi, color="grey", alpha=0.25,
               lw=0, label="theorem's bound")  # fmt: skip


def error_vs_axis(df, a: str, out: Path) -> list[str]:
    """error/μ against swept axis a, one panel per claim: 95% CIs as error bars, the
    theorem's bound as a grey band, one line per combination of the other axes."""
    plt = _plt()
    axes = _axes(df)
    claims = list(dict.fromkeys(df["claim"]))
    fig, axs = plt.subplots(1, len(claims), figsize=(4.2 * len(claims), 3.6), squeeze=False)
    for ax, claim in zip(axs[0], claims, strict=True):
        d = df[df["claim"] == claim]
        top = max(float(d["ci_hi"].max()), 0.6) * 1.1
        first = d.iloc[0]
        lo = None if np.isnan(first["bound_lo"]) else float(first["bound_lo"])
        hi = None if np.isnan(first["bound_hi"]) else float(first["bound_hi"])
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
    return _save(fig, out, f"error_vs_{a}")


def views_vs_axis(df, a: str, out: Path) -> list[str]:
    """Fraction of (seed, class) pairs whose single model learned exactly one view (solid)
    and both views (dashed) against swept axis a."""
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
    return _save(fig, out, f"views_vs_{a}")


def phase_diagram(df, claim: str, out: Path) -> list[str]:
    """Heatmap of a claim over a two-axis grid: error/μ per cell (colour-blind-safe
    'cividis'), annotated with the verdict."""
    plt = _plt()
    a, b = _axes(df)
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
    return _save(fig, out, f"phase_{claim}_{a}_{b}")


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
