"""How the claims converge as k grows: a preset family swept over k, against the race model.

The theorems are asymptotic in k; at k = 10 a close initial race lets 11–14% of classes
learn both views, which keeps the single model below its band. Two forces pull against
each other as k grows: the theory's windows (1 − 1/log k) make close races rarer, and a
growing m (polylog k) makes them more common (:func:`mvsim.mechanism.initial_ratio_distribution`).
The families of :mod:`mvsim.presets` separate them: ``demo`` (m fixed), ``demo-logm``
(m ∝ ln k) and ``demo-theory`` (σ_0, ϱ and T scaled as the theory scales them).

The points are a sweep over k (:func:`mvsim.sweep.build_points`, :func:`mvsim.sweep.run_sweep`)
into a SQLite store, so an interrupted run resumes where it stopped; the report is then
read back from the store alone (:func:`from_store`). Per k it holds every claim with its
CI and per-model verdicts, the one/two/no-view fractions with exact CIs, the race curve
(two-view fraction against the initial ratio r) and its midpoint r₅₀, the init law for
that m, the race model's predicted two-view fraction, the probability of a model without
a two-view class, the escape-time spread, and the cost per model.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mvsim import sweep
from mvsim.config import ConfigError, make_config
from mvsim.experiments import envelope, fmt_ci, rate_ci, text_table
from mvsim.mechanism import RATIO_BINS, initial_ratio_distribution, race_ratio, ratio_bin

DEFAULT_KS = (3, 5, 10, 20, 30, 40)
FAMILIES = ("demo", "demo-logm", "demo-theory", "tiny")  # tiny: the test suite's
# Seeds per k: enough for ≈ CLASSES classes, so the two-view fraction has the same
# precision at every k (its CI is ±0.05 at 0.12), and the cost stays in the large k's.
CLASSES = 160
SEED_RANGE = (4, 32)
# Students and training averages cost several singles each; one of each kind per k keeps
# the claims with their controls while the singles carry the race statistics.
EXPERIMENT_DEFAULTS = {"kd_students": 1, "avg_seeds": 1}
# The students' cap as the committed stores measured it, 2T (verify's default is now the
# horizon, T): a point keeps its key, so a rerun resumes from the store.
KD_CAP_PER_T = 2
ENSEMBLE_TOLERANCE = 0.001
"""The ensemble claim's bound (units of μ), which :func:`ensemble_members_needed` sizes the
ensemble for."""
BAND = (0.49, 0.51)
# The race curve the predictions carry to other k: measured where the project's regime
# study measured it (k = 10), else at the listed k nearest to it.
REF_K = 10
_BOOT = 400  # bootstrap replicates for r₅₀ and the fits; fixed seed, so reports repeat


def points(
    ks: Sequence[int],
    family: str = "demo",
    overrides: Mapping[str, Any] | None = None,
    claims: Sequence[str] | None = None,
) -> list[sweep.Point]:
    """One validated sweep point per k, in increasing k, before any compute.

    Unless ``overrides`` set them, the experiment's smaller test sets
    (``exp_n_test_multi``/``exp_n_test_single``), :data:`EXPERIMENT_DEFAULTS` and
    :func:`default_seeds` apply. Raises ConfigError naming ``--ks``, ``--family`` or the
    field at fault.
    """
    if family not in FAMILIES:
        raise ConfigError("--family", family, f"must be one of {list(FAMILIES)}")
    ks = list(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 2 for k in ks):
        raise ConfigError("--ks", ks, "must list integers k ≥ 2, e.g. 3,5,10")
    if len(set(ks)) != len(ks):
        raise ConfigError("--ks", ks, "every k must appear once")
    overrides = dict(overrides or {})
    if "k" in overrides:
        raise ConfigError("k", overrides["k"], "is the swept axis: give it with --ks")
    cfg = make_config(family, overrides)
    if cfg.model.learner != "patch_cnn":
        raise ConfigError("learner", cfg.model.learner, "k-scaling reads each class's race off "
                          "Λ at init, which only the patch CNN has (patch_cnn)")  # fmt: skip
    E = cfg.experiment
    base = {"n_test_multi": E.exp_n_test_multi, "n_test_single": E.exp_n_test_single,
            **EXPERIMENT_DEFAULTS, **overrides}  # fmt: skip
    pts = []
    for k in ks:  # one sweep point each: their seeds differ
        seeds = {} if "seeds" in overrides else {"seeds": default_seeds(k)}
        if "kd_T" not in overrides:
            seeds["kd_T"] = KD_CAP_PER_T * make_config(family, {**base, "k": k}).train.T
        pts += sweep.build_points(family, {**base, **seeds}, {"k": [k]}, claims)
    return sorted(pts, key=lambda p: p.cfg.data.k)


def default_seeds(k: int) -> int:
    """⌈CLASSES/k⌉ seeds, within SEED_RANGE (k = 3: 32, 10: 16, 20: 8, 40: 4)."""
    return min(max(math.ceil(CLASSES / k), SEED_RANGE[0]), SEED_RANGE[1])


def run(
    ks: Sequence[int] = DEFAULT_KS,
    family: str = "demo",
    overrides: Mapping[str, Any] | None = None,
    *,
    store: str | Path,
    claims: Sequence[str] | None = None,
    progress: bool = True,
    log: Any = print,
    **executor: Any,
) -> dict[str, Any]:
    """Run every k not yet in ``store`` (one sweep, :func:`mvsim.sweep.run_sweep`, each k
    stored when it finishes), then build the report from the store. ``claims``: a subset
    of the claim ids (None: all). ``executor``: run_sweep's ``executor``, ``scheduler``,
    ``workers`` and ``compile_cache`` (the points as tasks of a Dask cluster)."""
    pts = points(ks, family, overrides, claims)
    t0 = time.perf_counter()
    if progress:
        log(f"k-scaling: k = {', '.join(str(p.cfg.data.k) for p in pts)} ({family}, "
            f"seeds {', '.join(str(p.cfg.verify.seeds) for p in pts)})")  # fmt: skip
    s = sweep.run_sweep(pts, store, claims, progress=False, log=log if progress else _quiet,
                        **executor)  # fmt: skip
    if s.failed:
        raise sweep.PointsFailed(_failures(store, pts))
    rep = from_store(store, pts, family)
    rep["timing"]["total"] = round(time.perf_counter() - t0, 3)
    return rep


def _quiet(_: str) -> None:
    pass


def from_store(store: str | Path, pts: Sequence[sweep.Point], family: str) -> dict[str, Any]:
    """The report of points ``pts``, from what ``store`` holds for them alone."""
    from mvsim.store import read_results

    df = read_results(store)
    rows = []
    for p in pts:
        sel = df[df["config_hash"] == p.hash]
        if sel.empty:
            raise ValueError(f"{store} holds no results for k = {p.cfg.data.k}")
        rows.append(point_row(p, sel))
    for r, pred in zip(rows, race_model_predictions(rows), strict=True):
        r.update(pred)
    rep = envelope("k-scaling", pts[0].cfg)
    rep.update({
        "description": __doc__.strip().splitlines()[0],
        "family": family,
        "ks": [p.cfg.data.k for p in pts],
        "configs": {str(p.cfg.data.k): p.cfg.to_dict() for p in pts},
        "rows": rows,
        "summary": summarise(rows),
        "timing": {"points": round(float(sum(r["point_seconds"] for r in rows)), 3)},
    })  # fmt: skip
    return rep


def _failures(store: str | Path, pts: Sequence[sweep.Point]) -> str:
    """Which k failed, each with the last line of its error, and what to do."""
    from mvsim.store import read_failures

    df = read_failures(store)
    error = dict(zip(df["config_hash"], df["error"], strict=True))
    failed = [f"k = {p.cfg.data.k}: {error[p.hash].strip().splitlines()[-1]}" for p in pts
              if p.hash in error]  # fmt: skip
    return (
        f"{'; '.join(failed)} (stored as failed in {store}, beside the k that finished); "
        "rerun the same command to retry"
    )


# --- one k ------------------------------------------------------------------------------


def point_row(p: sweep.Point, sel: Any) -> dict[str, Any]:
    """The flat row of one k from its stored claim rows (a DataFrame slice)."""
    cfg = p.cfg
    claims = {r.claim: json.loads(r.claim_json) for r in sel.itertuples()}
    first = sel.iloc[0]
    mech = json.loads(first["mechanism_json"])
    # The race statistics are read off the singles that fitted their training set: a
    # fraction measured on a model still fitting is no result (an unfitted seed's views
    # are dropped, and counted in seeds_unfitted).
    fit = np.array([r["train_accuracy"] >= 1.0 for r in claims["single"]["per_model"]])
    views = np.asarray(mech["views"]["single"], int)[fit]  # (K_fitted, k, 2)
    row: dict[str, Any] = {
        "k": cfg.data.k, "m": cfg.model.m, "d": cfg.data.d, "N": cfg.data.N,
        "mu": cfg.data.mu, "sigma0_over_varrho": cfg.model.sigma_0 / cfg.model.varrho,
        "varrho": cfg.model.varrho, "T": cfg.train.T, "seeds": cfg.verify.seeds,
        "seeds_unfitted": int((~fit).sum()),
        "point_seconds": float(first["seconds"]),
        "peak_rss_bytes": _int_or_none(first.get("peak_rss_bytes")),
    }  # fmt: skip
    row.update(view_fractions(views))
    init = np.asarray(mech["init_alignment"], float)[fit]
    row.update(race(init, views.sum(-1) == 2, cfg.model.m))
    row.update(escape_spread(np.asarray(mech["escape_steps"], float)[fit]))
    for cid, c in claims.items():
        row.update(claim_columns(cid, c))
    row.update(ensemble_size(row, cfg.verify.seeds, cfg.data.k))
    row["fitted"] = bool(fit.any())  # any fitted single to read the race off
    D = cfg.distill
    row["models"] = cfg.verify.seeds + 3 * D.kd_students + D.avg_seeds  # + kd, self, control
    row["seconds_per_model"] = row["point_seconds"] / row["models"]
    row["in_band_predicted"] = in_band_probability(row["k"], row["frac_two_view"])
    return row


def _int_or_none(v: Any) -> int | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)


def view_fractions(views: np.ndarray) -> dict[str, Any]:
    """One/two/no-view fractions over the K·k classes of the singles, each with its exact
    95% CI, and the share of models with no two-view class."""
    per_class = views.sum(-1)
    n = per_class.size
    out: dict[str, Any] = {"classes": int(n)}
    for name, count in (("one", 1), ("two", 2), ("no", 0)):
        rate, lo, hi = rate_ci(int((per_class == count).sum()), n)
        out |= {f"frac_{name}_view": rate, f"frac_{name}_view_lo": lo, f"frac_{name}_view_hi": hi}
    out["models_without_two_view_class"] = float(((per_class == 2).sum(-1) == 0).mean())
    return out


def race(init_alignment: np.ndarray, two: np.ndarray, m: int) -> dict[str, Any]:
    """The race curve (two-view fraction per bin of the initial ratio r = Λ_loser/Λ_winner,
    with exact CIs), its midpoint r₅₀ (logistic fit over the classes, bootstrap CI), the
    init law P_m(r ∈ bin) and the two-view fraction it predicts with this curve."""
    r = race_ratio(init_alignment).ravel()
    b = ratio_bin(r)
    two = np.asarray(two, bool).ravel()
    curve = []
    for j, (lo, hi) in enumerate(zip(RATIO_BINS[:-1], RATIO_BINS[1:], strict=True)):
        sel = b == j
        rate, clo, chi = rate_ci(int(two[sel].sum()), int(sel.sum()))
        curve.append({"lo": lo, "hi": hi, "classes": int(sel.sum()), "frac_two": rate,
                      "ci_lo": clo, "ci_hi": chi})  # fmt: skip
    law = initial_ratio_distribution(m)
    rates = np.nan_to_num([c["frac_two"] for c in curve])
    r50, r50_lo, r50_hi = race_midpoint(r, two)
    return {
        "race_curve": curve,
        "init_law": law.tolist(),
        "two_view_from_own_curve": float((law * rates).sum()),
        "r50": r50,
        "r50_lo": r50_lo,
        "r50_hi": r50_hi,
    }


def race_midpoint(r: np.ndarray, two: np.ndarray) -> tuple[float, float, float]:
    """r₅₀: the initial ratio at which a logistic fit P(two views | r) = σ(a + b·r) crosses
    1/2, i.e. −a/b, with a bootstrap 95% interval over classes. NaN where the fit does not
    exist (no two-view class, or no one-view class)."""
    if r.size == 0:
        return math.nan, math.nan, math.nan
    est = _logistic_midpoint(r, two)
    rng = np.random.default_rng(0)
    boot = [_logistic_midpoint(r[i], two[i])
            for i in (rng.integers(0, len(r), len(r)) for _ in range(_BOOT))]  # fmt: skip
    boot = np.asarray(boot, float)
    boot = boot[np.isfinite(boot)]
    if not np.isfinite(est) or boot.size < _BOOT // 2:
        return est, math.nan, math.nan
    return est, float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def _logistic_midpoint(r: np.ndarray, y: np.ndarray, iters: int = 50) -> float:
    """Newton's method on the logistic log-likelihood in (a, b); NaN if it is unbounded
    (separable data) or there is nothing to fit."""
    from scipy.special import expit

    y = np.asarray(y, float)
    if y.sum() < 1 or y.sum() > len(y) - 1:
        return math.nan
    X = np.stack([np.ones_like(r), r], 1)
    w = np.zeros(2)
    for _ in range(iters):
        p = expit(X @ w)
        H = X.T @ (X * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(H, X.T @ (y - p))
        w += step
        if np.abs(step).max() < 1e-8:
            break
    if not np.all(np.isfinite(w)) or w[1] <= 0 or np.abs(w).max() > 1e3:
        return math.nan  # no midpoint (or a separable sample): no r₅₀
    return float(-w[0] / w[1])


def ensemble_members_needed(
    frac_one: float, frac_no: float, tolerance: float = ENSEMBLE_TOLERANCE
) -> int | None:
    """The fewest members for which the ensemble's expected loss to views no member learned
    stays below ``tolerance`` (units of μ); None where no number of members suffices.

    A member misses view ℓ of class i with probability q = f₁/2 + f₀ (a one-view class
    keeps either view with probability 1/2, the lottery being symmetric; a no-view class
    misses both), independently across members, whose inits are independent. A view no
    member learned costs the ensemble the single-view points of that (class, strong view),
    1/(2k) of the stratum each, so the expected E/μ it leaves is at most q^K (2k views, each
    missed with probability q^K): K ≥ ln(tolerance)/ln q keeps it below the bound."""
    q = frac_one / 2 + frac_no
    if not math.isfinite(q) or q >= 1:
        return None
    if q <= 0:
        return 1
    return max(1, math.ceil(math.log(tolerance) / math.log(q)))


def ensemble_size(row: Mapping[str, Any], members: int, k: int) -> dict[str, Any]:
    """The ensemble's members against :func:`ensemble_members_needed` at the measured view
    fractions of this k, and the expected number of views no member learned."""
    q = row["frac_one_view"] / 2 + row["frac_no_view"]
    if not math.isfinite(q):  # no fitted single to read the fractions off
        return {"ensemble_members": members, "ensemble_members_needed": None,
                "ensemble_missed_views_expected": None, "ensemble_too_small": None}  # fmt: skip
    need = ensemble_members_needed(row["frac_one_view"], row["frac_no_view"])
    return {"ensemble_members": members, "ensemble_members_needed": need,
            "ensemble_missed_views_expected": float(2 * k * q**members),
            "ensemble_too_small": need is None or members < need}  # fmt: skip


def escape_spread(escape: np.ndarray) -> dict[str, Any]:
    """Quantiles of the step at which a class's first view reached ϱ, over the singles'
    classes that escaped, and the share that did not."""
    e = escape[escape >= 0]
    q = np.quantile(e, [0.1, 0.5, 0.9]) if e.size else [math.nan] * 3
    return {"escape_q10": float(q[0]), "escape_q50": float(q[1]), "escape_q90": float(q[2]),
            "escape_none": float((escape < 0).mean())}  # fmt: skip


def claim_columns(cid: str, c: Mapping[str, Any]) -> dict[str, Any]:
    """A claim's pooled error/μ with CI and verdict, its per-model verdicts and the share of
    models whose point estimate lies in the single band, its finite-k prediction, whether
    every model fitted its training set, and its gradient evaluations per model."""
    per = c.get("per_model", [])
    errs = np.asarray([r["error_over_mu"] for r in per], float)
    evals = [r["grad_evals"] for r in per if "grad_evals" in r]
    out = {
        f"{cid}_error_over_mu": c["error_over_mu"],
        f"{cid}_ci_lo": c["ci95"][0],
        f"{cid}_ci_hi": c["ci95"][1],
        f"{cid}_verdict": c["verdict"],
        f"{cid}_models_pass": sum(r.get("verdict") == "PASS" for r in per),
        f"{cid}_models": len(per),
        f"{cid}_in_band": float(((errs >= BAND[0]) & (errs <= BAND[1])).mean()) if per else None,
        f"{cid}_finite_k_prediction": c.get("finite_k_prediction"),
        f"{cid}_fitted": all(r.get("train_accuracy", 1.0) >= 1.0 for r in per),
        f"{cid}_grad_evals_per_model": float(np.mean(evals)) if evals else None,
    }
    return out


# --- across k ---------------------------------------------------------------------------


def reference_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row whose race curve the predictions carry to every k: k = REF_K, else the
    nearest listed k (the smaller on a tie)."""
    return min(rows, key=lambda r: (abs(r["k"] - REF_K), r["k"]))


def race_model_predictions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row, the race model's two-view fraction (the reference row's curve weighted by
    this k's init law) and the chance it gives a model of no two-view class."""
    ref_curve = np.nan_to_num([c["frac_two"] for c in reference_row(rows)["race_curve"]])
    out = []
    for r in rows:
        p = float((np.asarray(r["init_law"]) * ref_curve).sum())
        out.append({"two_view_predicted": p, "no_two_view_class_predicted": (1 - p) ** r["k"]})
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the rows say together: the power law of the two-view fraction in k (fitted k's
    only), the k at which a model would sit in the band with probability ≥ 1/2, and the
    cost's growth."""
    fitted = [r for r in rows if r["fitted"]]
    return {
        "band": list(BAND),
        "reference_k": reference_row(rows)["k"],
        "not_fitted": [r["k"] for r in rows if not r["fitted"]],
        "unfitted_seeds": {str(r["k"]): r["seeds_unfitted"] for r in rows if r["seeds_unfitted"]},
        "two_view_power_law": two_view_power_law(fitted),
        "time_exponent": power_fit([r["k"] for r in rows], [r["point_seconds"] for r in rows]),
        # The default seeds fall like 1/k, so a point's time understates a model's growth.
        "time_per_model_exponent": power_fit(
            [r["k"] for r in rows], [r["seconds_per_model"] for r in rows]
        ),
        "memory_exponent": power_fit(
            [r["k"] for r in rows if r["peak_rss_bytes"]],
            [r["peak_rss_bytes"] for r in rows if r["peak_rss_bytes"]],
        ),
    }


def in_band_probability(k: int, p_two: float) -> float:
    """P(a single model's E/μ lies in the band), from its count of two-view classes alone.

    A model with one view per class has E/μ ≈ 1/2, and each two-view class lowers it by
    1/(2k) (one of its two single-view kinds is no longer missed), so E/μ ≥ 0.49 needs at
    most ⌊0.02k⌋ two-view classes: Binomial(k, p_two) ≤ ⌊0.02k⌋ (no-view classes taken
    as absent, as measured)."""
    return float(_in_band(np.asarray(k), np.asarray(p_two, float)))


def _in_band(k: np.ndarray, p_two: np.ndarray) -> np.ndarray:
    """:func:`in_band_probability` over arrays of k and p_two (one scipy call for a grid,
    which the bootstrap of :func:`two_view_power_law` searches 400 fits deep)."""
    from scipy.stats import binom

    return binom.cdf(np.floor((0.5 - BAND[0]) * 2 * k + 1e-9), k, p_two)


def power_fit(k: Sequence[float], y: Sequence[float]) -> dict[str, Any] | None:
    """Least-squares exponent b of y ∝ k^b (over the k ≥ 10 given, where fixed costs such as
    compiles no longer dominate; all k if fewer than two are that large)."""
    k, y = np.asarray(k, float), np.asarray(y, float)
    sel = k >= REF_K if (k >= REF_K).sum() >= 2 else np.ones_like(k, bool)
    if sel.sum() < 2 or np.any(y[sel] <= 0):
        return None
    b, a = np.polyfit(np.log(k[sel]), np.log(y[sel]), 1)
    return {"exponent": float(b), "ks": k[sel].astype(int).tolist()}


def two_view_power_law(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """p_two(k) ≈ c·k^b fitted over the fitted k's (weighted by their classes), with a
    parametric bootstrap (each k's count redrawn from its binomial), and the k* ≥ the
    largest measured k at which :func:`in_band_probability` first reaches 1/2 under the
    fit, searched up to 10⁶."""
    rows = [r for r in rows if r["frac_two_view"] > 0]
    if len(rows) < 2:
        return None
    k = np.array([r["k"] for r in rows], float)
    n = np.array([r["classes"] for r in rows])
    p = np.array([r["frac_two_view"] for r in rows])
    rng = np.random.default_rng(0)
    fits = [_weighted_loglog(k, p, n)]
    for _ in range(_BOOT):
        pb = rng.binomial(n, p) / n
        if (pb > 0).all():
            fits.append(_weighted_loglog(k, pb, n))
    b = np.array([f[0] for f in fits])
    kstar = np.array([_k_in_band(*f, k_from=int(k.max())) for f in fits])
    return {
        "exponent": float(b[0]),
        "exponent_lo": float(np.quantile(b[1:], 0.025)),
        "exponent_hi": float(np.quantile(b[1:], 0.975)),
        "coefficient": float(fits[0][1]),
        "k_in_band_half": float(kstar[0]),
        # Order statistics, not interpolation: k* is inf for every fit that never gets there.
        "k_in_band_half_lo": float(np.quantile(kstar[1:], 0.025, method="lower")),
        "k_in_band_half_hi": float(np.quantile(kstar[1:], 0.975, method="higher")),
        "ks": k.astype(int).tolist(),
    }


def _weighted_loglog(k: np.ndarray, p: np.ndarray, n: np.ndarray) -> tuple[float, float]:
    # Weights n·p/(1−p): the inverse variance of log p̂ for a binomial proportion.
    w = np.sqrt(n * p / np.maximum(1 - p, 1e-12))
    b, a = np.polyfit(np.log(k), np.log(p), 1, w=w)
    return float(b), float(math.exp(a))


def _k_in_band(b: float, c: float, k_from: int, k_max: int = 1_000_000) -> float:
    """The smallest k from the largest measured one (an extrapolation, on a log grid to
    10⁶) with in-band probability ≥ 1/2 under p = c·k^b; inf if none. Below it the
    binomial picture is no guide: at k ≤ 3 a model misses the band for other reasons
    (noisy features of s of its k − 1 neighbours), whatever its two-view count."""
    ks = np.unique(np.geomspace(k_from, k_max, 400).astype(int))
    ok = _in_band(ks, np.minimum(1.0, c * ks.astype(float) ** b)) >= 0.5
    return float(ks[np.argmax(ok)]) if ok.any() else math.inf


# --- reading it -------------------------------------------------------------------------

CLAIM_IDS = ("single", "ensemble", "kd", "self_distillation", "training_average")


def table(rep: dict[str, Any]) -> str:
    rows = rep["rows"]
    out = [f"mvsim experiment k-scaling — family '{rep['family']}', k in {rep['ks']} "
           "(the family's rule: mvsim presets)"]  # fmt: skip
    head = ["k", "m", "seeds", "fitted", "one/two/no view", "two-view [95% CI]", "predicted", "r50",
            *[c for c in CLAIM_IDS if f"{c}_verdict" in rows[0]], "in band", "s/model"]  # fmt: skip
    body = []
    for r in rows:
        claims = [f"{r[f'{c}_error_over_mu']:.3f} {r[f'{c}_verdict'][:4]}"
                  + (" (too small)" if c == "ensemble" and r.get("ensemble_too_small") else "")
                  for c in CLAIM_IDS if f"{c}_verdict" in r]  # fmt: skip
        body.append([
            str(r["k"]), str(r["m"]), str(r["seeds"]),
            f"{r['seeds'] - r['seeds_unfitted']}/{r['seeds']}",
            f"{r['frac_one_view']:.2f}/{r['frac_two_view']:.2f}/{r['frac_no_view']:.2f}",
            fmt_ci(r["frac_two_view"], r["frac_two_view_lo"], r["frac_two_view_hi"]),
            f"{r['two_view_predicted']:.3f}", fmt_ci(r["r50"], r["r50_lo"], r["r50_hi"], 2),
            *claims, f"{r.get('single_in_band', 0):.2f}", f"{r['seconds_per_model']:.1f}",
        ])  # fmt: skip
    out += text_table(head, body)
    out += _summary_lines(rep["summary"])
    out += ensemble_lines(rows)
    out.append(f"timing (s): points {rep['timing']['points']:.1f}")
    return "\n".join(out)


def ensemble_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per k whose ensemble is too small for the < 0.001μ claim, why, in words (rows from
    before the rule have no such keys and say nothing)."""
    out = []
    for r in rows:
        if r.get("ensemble_too_small"):
            need = r["ensemble_members_needed"]
            out.append(
                f"ensemble too small for < {ENSEMBLE_TOLERANCE:g}μ at k = {r['k']}: "
                f"{r['ensemble_members']} members, "
                + (f"{need} needed" if need else "no number suffices")
                + f" at the measured one/no-view fractions {r['frac_one_view']:.2f}/"
                f"{r['frac_no_view']:.2f} (expected views learned by no member "
                f"{r['ensemble_missed_views_expected']:.2f}); its verdict says so, not "
                "that averaging fails"
            )
    return out


def _summary_lines(s: dict[str, Any]) -> list[str]:
    out = [f"claims: error/μ and verdict; predicted: the race model with k = "
           f"{s['reference_k']}'s race curve and each k's init law; in band: share of singles "
           f"with error/μ in {s['band']}"]  # fmt: skip
    if s["unfitted_seeds"]:
        out.append(
            "seeds that did not fit their training set within T, left out of the view "
            f"fractions and race curves: {s['unfitted_seeds']}"
        )
    if s["not_fitted"]:
        out.append(f"NOT FITTED (no single fitted; no race statistics): k = {s['not_fitted']}")
    law = s["two_view_power_law"]
    if law:
        out.append(
            f"two-view fraction ∝ k^{law['exponent']:.2f} [{law['exponent_lo']:.2f}, "
            f"{law['exponent_hi']:.2f}] over k = {law['ks']}; a single model is in the band "
            f"with probability ≥ 1/2 from k ≈ {law['k_in_band_half']:.3g} "
            f"[{law['k_in_band_half_lo']:.3g}, {law['k_in_band_half_hi']:.3g}] (inf: not below 10⁶)"
        )
    for name, what in (("time", "time per point"), ("time_per_model", "time per model"),
                       ("memory", "peak memory per point")):  # fmt: skip
        e = s.get(f"{name}_exponent")
        if e:
            out.append(f"{what} ∝ k^{e['exponent']:.2f} (k = {e['ks']})")
    return out


def figure(rep: dict[str, Any], out: Path) -> list[str]:
    """Four figures: error/μ against k per claim, the two-view fraction against k, the race
    curves of every k, and the share of singles inside the band."""
    from mvsim.plots import _save

    paths = []
    for name, draw in (("k_scaling_error", draw_errors), ("k_scaling_two_view", draw_two_view),
                       ("k_scaling_race", draw_race), ("k_scaling_band", draw_band)):  # fmt: skip
        paths += _save(draw(rep), out, name)
    return paths


def _axes(title: str, ylabel: str):
    from mvsim.plots import _plt

    fig, ax = _plt().subplots(figsize=(5.2, 3.6))
    ax.set(xlabel="k (classes)", ylabel=ylabel, title=title)
    ax.set_xscale("log")
    return fig, ax


def _ks(rep: dict[str, Any], ax) -> np.ndarray:
    k = np.array([r["k"] for r in rep["rows"]], float)
    ax.set_xticks(k, [str(int(v)) for v in k])
    ax.minorticks_off()
    return k


def _with_ci(ax, k: np.ndarray, rows: list[dict], keys: tuple[str, str, str], **kw) -> None:
    """A value and its CI (the three row keys) against k, as points with error bars."""
    v, lo, hi = (np.array([r[key] for r in rows], float) for key in keys)
    ax.errorbar(k, v, yerr=[v - lo, hi - v], fmt="o-", capsize=3, ms=4, **kw)


def _series(ax, k: np.ndarray, rows: list[dict], specs: list[tuple[str, str, str]],
            first_color: int = 0) -> None:  # fmt: skip
    """One line per (row key, marker style, label), in the palette's order."""
    from mvsim.plots import PALETTE

    for j, (key, fmt, label) in enumerate(specs):
        ax.plot(k, [r.get(key) for r in rows], fmt, color=PALETTE[first_color + j], label=label)


def draw_errors(rep: dict[str, Any]):
    from mvsim.plots import PALETTE

    fig, ax = _axes(f"error/μ against k ({rep['family']})", "test error / μ")
    k = _ks(rep, ax)
    ax.axhspan(*BAND, color="grey", alpha=0.3, lw=0, label="single band [0.49, 0.51]")
    for j, c in enumerate(c for c in CLAIM_IDS if f"{c}_verdict" in rep["rows"][0]):
        keys = (f"{c}_error_over_mu", f"{c}_ci_lo", f"{c}_ci_hi")
        _with_ci(ax, k, rep["rows"], keys, color=PALETTE[j], label=c)
    pred = [r.get("single_finite_k_prediction") for r in rep["rows"]]
    ax.plot(k, pred, "s--", color=PALETTE[0], mfc="none", ms=5, label="single, finite-k prediction")
    ax.legend(fontsize=7)
    return fig


def draw_two_view(rep: dict[str, Any]):
    from mvsim.plots import PALETTE

    fig, ax = _axes("classes that learned both views", "two-view fraction")
    k = _ks(rep, ax)
    rows = rep["rows"]
    keys = ("frac_two_view", "frac_two_view_lo", "frac_two_view_hi")
    _with_ci(ax, k, rows, keys, color=PALETTE[0], label="measured (95% CI)")
    ref = rep["summary"]["reference_k"]
    _series(ax, k, rows, [("two_view_predicted", "s--", f"race model (k = {ref} curve, init "
                           "law at each m)")], first_color=1)  # fmt: skip
    law = rep["summary"]["two_view_power_law"]
    if law:
        kk = np.geomspace(k.min(), k.max(), 50)
        ax.plot(kk, law["coefficient"] * kk ** law["exponent"], ":", color="grey",
                label=f"fit ∝ k^{law['exponent']:.2f}")  # fmt: skip
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    return fig


def draw_race(rep: dict[str, Any]):
    from mvsim.plots import _plt

    fig, ax = _plt().subplots(figsize=(5.2, 3.6))
    cmap = _plt().get_cmap("viridis")
    rows = rep["rows"]
    for j, r in enumerate(rows):
        mid = [(c["lo"] + c["hi"]) / 2 for c in r["race_curve"]]
        y = [c["frac_two"] if c["classes"] else np.nan for c in r["race_curve"]]
        ax.plot(mid, y, "o-", color=cmap(j / max(len(rows) - 1, 1)), ms=4,
                label=f"k = {r['k']} (r₅₀ {r['r50']:.2f})")  # fmt: skip
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="initial ratio r = Λ_loser/Λ_winner", ylabel="two-view fraction",
           title="race curves", ylim=(-0.03, 1.03))  # fmt: skip
    ax.legend(fontsize=7)
    return fig


def draw_band(rep: dict[str, Any]):

    fig, ax = _axes("single models inside the band", "share of models")
    _series(ax, _ks(rep, ax), rep["rows"], [
        ("single_in_band", "o-", "measured: error/μ in [0.49, 0.51]"),
        ("in_band_predicted", "s--", "from the two-view fraction (binomial)"),
        ("models_without_two_view_class", "^:", "measured: no two-view class"),
    ])  # fmt: skip
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7)
    return fig
