"""The trajectory reading: a claim read over the whole run, not at its last instant.

Theorems 3 and 4 hold "for at least 90% of the iterations t ≤ T" (paper notes §4–5), with
T the horizon of Theorem 1. The end-point reading (:mod:`mvsim.claims`) looks at the
final models only, so where training runs to a cap its verdict says where the cap fell.
This module reads each model's error curve (:mod:`mvsim.curves`: its test error on a
fixed stratified subset at every recorded time, GD-equivalent steps) over [0, H]:

- **At level at t.** The curve's estimate at t, with an exact CI (Clopper–Pearson per
  stratum, as the end point's) at the Bonferroni level 1 − 0.05/L over the L recorded
  times in [0, H], so that the whole band of per-time intervals holds at 95%; plus the
  theorem's precondition, perfect training accuracy at t (exact: the whole training set).
  "Certainly at level" = the CI inside the bound; "possibly at level" = not outside it.
- **Fraction of [0, H] at level, with its CI.** Between two recorded times the curve is
  not seen: an interval counts for the lower end when the model is certainly at level at
  both of its ends, for the upper end when it is possibly at level at either. So the
  interval [lower, upper] holds the true fraction whenever the per-time intervals hold
  and the curve does not leave and re-enter the level between two recorded times.
- **Verdict.** PASS when lower ≥ 90%, FAIL when upper < 90%, INCONCLUSIVE otherwise;
  each model on its own, combined as every claim is (any FAIL fails).
- **Time to level.** The first recorded time at which the model fits its training set and
  its estimate lies inside the bound (an upper end: the crossing lies after the previous
  recorded time); per model, and over models a Student-t interval of log(1 + t).
- **Distillation's mechanism in time** (:func:`paired_times`): each student against its
  control, paired; the students are significantly sooner when the t-interval of the
  mean log-ratio of their times lies below 0.

Pure numpy; every function takes plain arrays, so tests build curves by hand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jaxtyping import Bool, Float, Int

from mvsim import mechanism as mech
from mvsim.compare import mean_ci
from mvsim.stats import Estimate, Verdict, combine_verdicts, verdict

LEVEL_FRACTION = 0.9
"""Theorems 3–4: at level "for at least 90% of the iterations t ≤ T"."""
LEVEL = 0.95
"""Coverage of the band of per-time intervals, and of the intervals over models."""


def window(steps: Int[np.ndarray, " L"], horizon: int) -> Int[np.ndarray, " Lh"]:
    """Indices of the recorded times in [0, horizon] (the history holds the horizon itself:
    :func:`mvsim.train.history_steps`)."""
    return np.flatnonzero(np.asarray(steps) <= horizon * (1 + 1e-9))


def error_over_mu(curve: Mapping[str, Any], mu: float) -> Float[np.ndarray, "S L"]:
    """The curve's point estimates E/μ = e_single + (1−μ)/μ · e_multi, shape (S, L)."""
    es = np.asarray(curve["errors_single"]) / curve["n_single"]
    if curve["n_multi"] == 0 or mu >= 1:
        return es
    return es + (1 - mu) / mu * np.asarray(curve["errors_multi"]) / curve["n_multi"]


def per_time(
    curve: Mapping[str, Any],
    lo: float | None,
    hi: float | None,
    mu: float,
    idx: np.ndarray,
    level: float,
) -> tuple[Bool[np.ndarray, "S Lh"], Bool[np.ndarray, "S Lh"]]:
    """(certainly, possibly) at level at the recorded times ``idx``: the per-time verdict
    (the CI of E/μ at ``level`` against the bound) is PASS, resp. not FAIL, and the
    training accuracy is 1."""
    em, es = np.asarray(curve["errors_multi"]), np.asarray(curve["errors_single"])
    S = es.shape[0]
    sure = np.zeros((S, len(idx)), bool)
    maybe = np.zeros((S, len(idx)), bool)
    fitted = np.asarray(curve["train_accuracy"])[:, idx] >= 1.0
    for s in range(S):
        for a, j in enumerate(idx):
            est = Estimate(int(em[s, j]), curve["n_multi"], int(es[s, j]), curve["n_single"], mu)
            v = verdict(est.ci_over_mu(level), lo, hi)
            sure[s, a], maybe[s, a] = v == Verdict.PASS, v != Verdict.FAIL
    return sure & fitted, maybe & fitted


def fraction_at_level(
    t: Float[np.ndarray, " Lh"],
    horizon: float,
    sure: Bool[np.ndarray, " Lh"],
    maybe: Bool[np.ndarray, " Lh"],
) -> tuple[float, float]:
    """[lower, upper] of the share of [0, horizon] at level, from the recorded times ``t``
    (increasing, ending at the horizon): an interval between two recorded times counts
    for the lower end when both ends are certainly at level, for the upper end when either
    is possibly at level."""
    t = np.asarray(t, float)
    dt = np.diff(t)
    lower = float((dt * (sure[:-1] & sure[1:])).sum()) / horizon
    upper = float((dt * (maybe[:-1] | maybe[1:])).sum()) / horizon
    return lower, upper


def inside(e: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
    """Whether point estimates lie inside the bound (strictly, as the verdicts read it)."""
    ok = np.ones(np.shape(e), bool)
    if lo is not None:
        ok &= e > lo
    if hi is not None:
        ok &= e < hi
    return ok


def at_level(
    curve: Mapping[str, Any], lo: float | None, hi: float | None, mu: float, idx: np.ndarray
) -> Bool[np.ndarray, "S Lh"]:
    """The point reading of "at level" at the recorded times ``idx``: the model fits its
    training set and its estimate lies inside the bound (the theorem's statement, without
    the CI; what the time to level reads)."""
    fitted = np.asarray(curve["train_accuracy"])[:, idx] >= 1.0
    return fitted & inside(error_over_mu(curve, mu)[:, idx], lo, hi)


def first_times(
    t: Float[np.ndarray, " Lh"], at: Bool[np.ndarray, "S Lh"]
) -> tuple[list[float | None], list[float | None]]:
    """Per model, the first recorded time at which ``at`` holds (None: never within the
    window) and the recorded time before it (the crossing lies in between; 0 at t = 0)."""
    first, before = [], []
    for row in np.asarray(at, bool):
        if not row.any():
            first.append(None), before.append(None)
            continue
        j = int(np.argmax(row))
        first.append(float(t[j])), before.append(float(t[j - 1]) if j else float(t[0]))
    return first, before


def log_mean_ci(times: Sequence[float | None]) -> dict[str, Any]:
    """Times over models: how many reached, their geometric mean of (1 + t) minus 1, and
    a Student-t 95% interval of log(1 + t) mapped back (None where a model never reached
    or there is one model)."""
    reached = [x for x in times if x is not None]
    out: dict[str, Any] = {
        "reached": len(reached),
        "models": len(times),
        "mean": None,
        "ci95": None,
    }
    if reached and len(reached) == len(times):
        logs = np.log1p(reached)
        out["mean"] = float(np.expm1(logs.mean()))
        if len(logs) > 1:
            lo, hi = mean_ci(logs, LEVEL)
            out["ci95"] = [float(np.expm1(lo)), float(np.expm1(hi))]
    return out


def reading(
    curve: Mapping[str, Any], lo: float | None, hi: float | None, mu: float
) -> dict[str, Any]:
    """The trajectory reading of one group of models against the bound (lo, hi) (units of
    μ) over [0, curve['horizon']]: per model the fraction at level [lower, upper], its
    verdict and the time to level; over models the combined verdict and the time to
    level's interval."""
    steps = np.asarray(curve["steps"], float)
    H = float(curve["horizon"])
    idx = window(steps, H)
    t = steps[idx]
    sure, maybe = per_time(curve, lo, hi, mu, idx, 1 - (1 - LEVEL) / len(idx))
    reach, before = first_times(t, at_level(curve, lo, hi, mu, idx))
    rows, vs = [], []
    for s in range(sure.shape[0]):
        f_lo, f_hi = fraction_at_level(t, H, sure[s], maybe[s])
        v = (
            Verdict.PASS
            if f_lo >= LEVEL_FRACTION
            else Verdict.FAIL
            if f_hi < LEVEL_FRACTION
            else Verdict.INCONCLUSIVE
        )
        vs.append(v)
        rows.append(
            {
                "model": s,
                "fraction_at_level": [f_lo, f_hi],
                "verdict": v.name,
                "time_to_level": reach[s],
                "time_to_level_after": before[s],
            }
        )
    return {
        "horizon": int(H),
        "times": len(idx),
        "per_time_level": 1 - (1 - LEVEL) / len(idx),
        "n_multi": int(curve["n_multi"]),
        "n_single": int(curve["n_single"]),
        "resolution": resolution(curve["n_multi"], curve["n_single"], mu),
        "verdict": combine_verdicts(vs).name,
        "fraction_at_level": [
            min(r["fraction_at_level"][0] for r in rows),
            max(r["fraction_at_level"][1] for r in rows),
        ],
        "time_to_level": log_mean_ci(reach),
        "per_model": rows,
    }


def resolution(n_multi: int, n_single: int, mu: float, level: float = LEVEL) -> float:
    """The smallest E/μ the curve subset can certify: the upper end of the CI of a model
    with no error on it (at 95%)."""
    return Estimate(0, n_multi, 0, n_single, mu).ci_over_mu(level)[1]


# --- the end point's dependence on the cap ---------------------------------------------


def _claim_state(state: Int[np.ndarray, "S Lw"]) -> Int[np.ndarray, " Lw"]:
    """Per recorded time, the models' states combined as a claim combines its models:
    0 if any is 0, 2 if all are 2, else 1."""
    return np.where((state == 0).any(0), 0, np.where((state == 2).all(0), 2, 1))


def _last_change(
    steps: np.ndarray, state: np.ndarray, names: Sequence[str], budget: float
) -> dict[str, Any] | None:
    """The last recorded time at which a claim-level state changes (None: it never does)."""
    claim = _claim_state(state)
    moves = np.flatnonzero(np.diff(claim))
    if not moves.size:
        return None
    j = int(moves[-1]) + 1
    changed = [s for s in range(state.shape[0]) if np.diff(state[s]).any()]
    return {
        "last_change": float(steps[j]),
        "budget": float(budget),
        "from": names[claim[j - 1]],
        "to": names[claim[j]],
        "models": changed,
    }


def cap_dependence(
    curve: Mapping[str, Any], lo: float | None, hi: float | None, mu: float
) -> dict[str, Any] | None:
    """Whether the end point's level reading would change had the cap fallen anywhere in the
    last half of the run: the claim's 95% verdict on the curve subset (its models' verdicts
    with the training-accuracy precondition, combined) at every recorded time between the
    budget B/2 and B (the last recorded time). Where it changes: the time of the last
    change, the verdicts it changed between, and the models that moved; else None."""
    steps = np.asarray(curve["steps"], float)
    B = steps[-1]
    idx = np.flatnonzero(steps >= B / 2)
    sure, maybe = per_time(curve, lo, hi, mu, idx, LEVEL)
    state = sure.astype(int) + maybe.astype(int)  # 2 PASS, 1 INCONCLUSIVE, 0 FAIL
    return _last_change(steps[idx], state, ("FAIL", "INCONCLUSIVE", "PASS"), B)


def lead_changes(
    student: Mapping[str, Any], control: Mapping[str, Any], mu: float
) -> dict[str, Any] | None:
    """Whether the students' standing against their controls changes over the last half of
    the run: each student ahead (its 95% CI of E/μ wholly below its control's), behind, or
    neither, on the curve subset; the students together ahead when all are, behind when
    any is. Where that changes, the end point's comparison depends on the cap."""
    steps = np.asarray(student["steps"], float)
    idx = np.flatnonzero(steps >= steps[-1] / 2)
    cs, cc = _cis(student, mu, idx), _cis(control, mu, idx)
    state = 1 + (cs[..., 1] < cc[..., 0]).astype(int) - (cs[..., 0] > cc[..., 1])
    return _last_change(steps[idx], state, ("behind", "neither", "ahead"), steps[-1])


def _cis(curve: Mapping[str, Any], mu: float, idx: np.ndarray) -> Float[np.ndarray, "S Lh 2"]:
    """The 95% CI of E/μ of every model at the recorded times ``idx``."""
    em, es = np.asarray(curve["errors_multi"]), np.asarray(curve["errors_single"])
    return np.array(
        [
            [
                Estimate(
                    int(em[s, j]), curve["n_multi"], int(es[s, j]), curve["n_single"], mu
                ).ci_over_mu(LEVEL)
                for j in idx
            ]
            for s in range(es.shape[0])
        ]
    )


# --- distillation's mechanism in time -----------------------------------------------------


def paired_times(
    student: Mapping[str, Any], control: Mapping[str, Any], level: float, mu: float
) -> dict[str, Any]:
    """Students against their controls (pair j: student j, control j; the same init):
    when each first reaches E/μ < ``level`` with its training set fitted, the log-ratio of
    the times, and the verdict "students significantly sooner" by a paired t-interval
    over students.

    Times are known within a recording interval (t_prev, t], and a model that never
    reaches the level within the horizon H only as ≥ H. The interval's upper end uses the
    least favourable ends for "sooner" (the student's t, the control's t_prev; a censored
    student makes it +∞), its lower end the most favourable (so a censored control makes
    it −∞); a pair where neither reaches the level says nothing and is left out. PASS:
    the upper end < 0; FAIL: the lower end > 0 (students significantly later); else
    INCONCLUSIVE, as with fewer than two informative pairs. The t-interval assumes normal
    differences: with 3 or 4 students no rank test can reach 5%."""
    H = float(min(student["horizon"], control["horizon"]))
    steps = np.asarray(student["steps"], float)
    idx = window(steps, H)
    t = steps[idx]
    below = lambda c: at_level(c, None, level, mu, idx)
    ts, ts0 = first_times(t, below(student))
    tc, tc0 = first_times(t, below(control))
    rows, d_hi, d_lo = [], [], []
    for j in range(len(ts)):
        rows.append({"student": j, "student_time": ts[j], "control_time": tc[j]})
        if ts[j] is None and tc[j] is None:
            continue
        up_s = math.inf if ts[j] is None else math.log1p(ts[j])
        lo_s = math.log1p(H) if ts[j] is None else math.log1p(ts0[j])
        up_c = math.inf if tc[j] is None else math.log1p(tc[j])
        lo_c = math.log1p(H) if tc[j] is None else math.log1p(tc0[j])
        d_hi.append(up_s - lo_c)
        d_lo.append(lo_s - up_c)
    out: dict[str, Any] = {
        "level": level,
        "horizon": int(H),
        "pairs": rows,
        "informative_pairs": len(d_hi),
    }
    if len(d_hi) < 2:
        out.update(ci95=None, verdict=Verdict.INCONCLUSIVE.name, reason=_few(len(d_hi), len(rows)))
        return out
    hi = mean_ci(d_hi, LEVEL)[1] if np.all(np.isfinite(d_hi)) else math.inf
    lo = mean_ci(d_lo, LEVEL)[0] if np.all(np.isfinite(d_lo)) else -math.inf
    v = verdict((lo, hi), None, 0.0) if lo <= hi else Verdict.INCONCLUSIVE
    n_sooner = sum(1 for r in rows if _sooner(r))
    out.update(
        ci95=[lo, hi],
        verdict=v.name,
        reason=f"{n_sooner}/{len(rows)} students reach E/μ < {level:g} before their "
        f"control; mean log(time ratio) in [{_f(lo)}, {_f(hi)}]",
    )
    return out


def _sooner(r: Mapping[str, Any]) -> bool:
    s, c = r["student_time"], r["control_time"]
    return s is not None and (c is None or s < c)


def _few(n: int, total: int) -> str:
    return (
        f"{n} of {total} pairs have a student or control that reaches the level within "
        "the horizon: too few to compare"
    )


def _f(x: float) -> str:
    return "−∞" if x == -math.inf else "∞" if x == math.inf else f"{x:.2f}"


def areas(student: Mapping[str, Any], control: Mapping[str, Any], mu: float) -> dict[str, Any]:
    """The area between each student's and its control's E/μ curves over [0, H], per unit
    of linear time (the mean gap over the horizon) and of log(1 + t) (the gap as the
    log-time figure shows it); negative where the student is below. Per pair and their
    mean with a Student-t 95% interval."""
    H = float(min(student["horizon"], control["horizon"]))
    steps = np.asarray(student["steps"], float)
    idx = window(steps, H)
    t = steps[idx]
    gap = error_over_mu(student, mu)[:, idx] - error_over_mu(control, mu)[:, idx]
    trap = lambda x: (np.diff(x) * (gap[:, :-1] + gap[:, 1:]) / 2).sum(-1) / (x[-1] - x[0])
    out = {}
    for name, x in (("linear", t), ("log", np.log1p(t))):
        a = trap(x)
        out[name] = {
            "per_pair": a.tolist(),
            "mean": float(a.mean()),
            "ci95": list(mean_ci(a, LEVEL)) if len(a) > 1 else None,
        }
    return out


def view_times(
    steps: np.ndarray, horizon: int, strength: np.ndarray, threshold: float
) -> Int[np.ndarray, "S k 2"]:
    """When each (model, class, view) first reaches ``threshold`` within the horizon (Λ ≥ ϱ,
    or from behaviour the view's accuracy ≥ view_accuracy); −1 where it does not.
    strength: (S, L, k, 2)."""
    idx = window(steps, horizon)
    return mech.crossing_steps(np.asarray(steps)[idx], np.asarray(strength)[:, idx], threshold)


def gained_view_times(
    gained: Bool[np.ndarray, "S k 2"], student: np.ndarray, control: np.ndarray
) -> dict[str, Any]:
    """The views each student gained from its teacher, in time: per gained (class, view),
    when the student's reaches the threshold and when the control's (same init) does
    (−1: not within the horizon). Counts and medians over all students' gained views."""
    rows = [
        {
            "student": int(s),
            "class": int(i),
            "view": int(v),
            "student_time": int(student[s, i, v]),
            "control_time": int(control[s, i, v]),
        }
        for s, i, v in zip(*np.nonzero(gained), strict=True)
    ]
    st = [r["student_time"] for r in rows if r["student_time"] >= 0]
    ct = [r["control_time"] for r in rows if r["control_time"] >= 0]
    sooner = sum(
        1
        for r in rows
        if r["student_time"] >= 0
        and (r["control_time"] < 0 or r["student_time"] < r["control_time"])
    )
    return {
        "views": len(rows),
        "student_reached": len(st),
        "control_reached": len(ct),
        "student_sooner": sooner,
        "student_median": float(np.median(st)) if st else None,
        "control_median": float(np.median(ct)) if ct else None,
        "per_view": rows,
    }
