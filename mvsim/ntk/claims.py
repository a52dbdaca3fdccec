"""The NTK side's verdicts: ensembles and training averages help linearized models, and
knowledge distillation does not, each from exact paired CIs on the same test points."""

from __future__ import annotations

import numpy as np

from mvsim.compare import paired_diff_ci
from mvsim.stats import Verdict, bonferroni_level, combine_verdicts, verdict

LEVEL = 0.95

Errors = tuple[np.ndarray, np.ndarray]
"""A model's (or a pool's) error vectors on the multi- and single-view test points."""


def group_errors(E: dict, name: str, j: slice | int | None = None) -> Errors:
    """The error vectors of the models ``name`` (row ``j`` of them, if given) from
    ``E = {"multi": {name: (models, n_multi)}, "single": {name: (models, n_single)}}``."""
    em, es = E["multi"][name], E["single"][name]
    return (em, es) if j is None else (em[j], es[j])


def _diff_ci(a: Errors, b: Errors, mu: float, level: float) -> tuple[float, float]:
    """CI of E/μ(a) − E/μ(b) on the same test points: exact paired (McNemar) CIs per
    stratum at Bonferroni level, combined as lo_s + c·lo_m, hi_s + c·hi_m (monotone)."""
    c = (1 - mu) / mu
    has_m = a[0].size > 0 and mu < 1
    lvl = bonferroni_level(level, 2) if has_m else level
    lo, hi = paired_diff_ci(a[1], b[1], lvl)
    if has_m:
        lm, hm = paired_diff_ci(a[0], b[0], lvl)
        lo, hi = lo + c * lm, hi + c * hm
    return lo, hi


def _point(a: Errors, mu: float) -> float:
    c = (1 - mu) / mu
    return float(a[1].mean() + (c * a[0].mean() if a[0].size else 0.0))


def _better_verdict(
    better: list[Errors],
    worse: list[Errors],
    mu: float,
    definition: str,
) -> dict:
    """Claim 'E(better_j) < E(worse_j) for every pair j': paired CIs of the difference,
    Bonferroni over the pairs; entirely below 0 → PASS, entirely ≥ 0 → FAIL."""
    lvl = bonferroni_level(LEVEL, len(better))
    rows, vs = [], []
    for j, (a, b) in enumerate(zip(better, worse, strict=True)):
        ci = _diff_ci(a, b, mu, lvl)
        v = verdict(ci, None, 0.0)
        vs.append(v)
        rows.append({"pair": j, "diff_over_mu": _point(a, mu) - _point(b, mu), "ci": list(ci),
                     "verdict": v.name})  # fmt: skip
    return _combined(vs, definition, "pairs", rows, "pairs significantly better")


def _combined(vs: list[Verdict], definition: str, key: str, rows: list[dict], what: str) -> dict:
    """A claim over several pairs or students: the combined verdict, its definition, the
    rows under ``key``, and how many of them passed ('n/N what')."""
    n_pass = sum(x == Verdict.PASS for x in vs)
    return {
        "verdict": combine_verdicts(vs).name,
        "definition": definition,
        "level": LEVEL,
        key: rows,
        "reason": f"{n_pass}/{len(vs)} {what}",
    }


KD_FAILS_DEFINITION = (
    "For each student j (init of single j, teacher T_j), with E = error/mu on the same test "
    "points: d1 = E(S_j) - E(T_j) (student worse than its teacher) and d2 = E(S_j) - "
    "(E(L_j) + E(T_j))/2 (student above the midpoint between its own-init single L_j and the "
    "teacher, i.e. it recovered less than half the teacher's gain E(L_j) - E(T_j)). PASS iff "
    "the CIs of d1 and d2 both lie above 0; FAIL iff either lies at or below 0; precondition: "
    "the teacher is significantly better than L_j (else there is no gain to transfer: "
    "INCONCLUSIVE). CIs: exact paired (McNemar) CIs of S-T, S-L and T-L, each split over the 2 "
    "strata, Bonferroni over the 3 differences and the students; d2's CI is the mean of the "
    "CIs of S-T and S-L."
)


def _kd_fails_verdict(
    students: list[Errors],
    teachers: list[Errors],
    singles: list[Errors],
    mu: float,
) -> dict:
    n = len(students)
    lvl = bonferroni_level(LEVEL, 3 * n)  # three differences per student; strata split inside
    rows, vs = [], []
    for j in range(n):
        s, t, l_ = students[j], teachers[j], singles[j]
        st = _diff_ci(s, t, mu, lvl)
        sl = _diff_ci(s, l_, mu, lvl)
        tl = _diff_ci(t, l_, mu, lvl)  # precondition: teacher better than the single
        d2 = ((st[0] + sl[0]) / 2, (st[1] + sl[1]) / 2)
        if verdict(tl, None, 0.0) != Verdict.PASS:
            v, why = Verdict.INCONCLUSIVE, "teacher not significantly better than the single"
        else:
            v = combine_verdicts([verdict(st, 0.0, None), verdict(d2, 0.0, None)])
            why = ""
        vs.append(v)
        rows.append(
            {
                "student": j,
                "E_student": _point(s, mu),
                "E_teacher": _point(t, mu),
                "E_single": _point(l_, mu),
                "d1_ci": list(st),
                "d2_ci": list(d2),
                "teacher_gain_ci": [-tl[1], -tl[0]],
                "verdict": v.name,
                "reason": why,
            }
        )
    return _combined(vs, KD_FAILS_DEFINITION, "students", rows, "students stay near the single")


VERDICT_DEFINITIONS = {
    "ntk_ensemble_helps": (
        "E/mu(linearized ensemble) < E/mu(linearized single j) for every single j: PASS iff "
        "every paired CI of the difference lies below 0, FAIL iff one lies at or above 0 "
        "(exact paired per-stratum CIs, Bonferroni over singles and strata)"
    ),
    "ntk_average_helps": (
        "E/mu(linearized training average j) < E/mu(linearized single j) for each pair j < "
        "min(ntk_avg_seeds, ntk_seeds): same rule as ntk_ensemble_helps"
    ),
    "ntk_kd_fails": KD_FAILS_DEFINITION,
}


def ntk_verdicts(
    E: dict,
    block: dict[str, slice],
    deep_test: Errors | None,
    S: int,
    n_avg: int,
    mu: float,
) -> dict[str, dict]:
    """The NTK side's verdicts (:data:`VERDICT_DEFINITIONS`) from the error vectors ``E`` of
    the linearized models: S singles, ``n_avg`` of them paired with a training average,
    the students in the blocks ``block`` of their variants, and the deep teacher's errors
    ``deep_test`` when known."""
    per = lambda name, j: group_errors(E, name, j)
    n_st = block["kd"].stop - block["kd"].start  # students per variant
    verdicts = {
        "ntk_ensemble_helps": _better_verdict(
            [per("ensemble", 0)] * S, [per("single", j) for j in range(S)], mu,
            VERDICT_DEFINITIONS["ntk_ensemble_helps"],
        ),
        "ntk_average_helps": _better_verdict(
            [per("average", j) for j in range(n_avg)],
            [per("single", j) for j in range(n_avg)], mu,
            VERDICT_DEFINITIONS["ntk_average_helps"],
        ),
        "ntk_kd_fails": _kd_fails_verdict(
            [per("students", block["kd"].start + j) for j in range(n_st)],
            [per("loo", j) for j in range(n_st)],
            [per("single", j) for j in range(n_st)], mu,
        ),
    }  # fmt: skip
    if "kd_from_deep" in block and deep_test is not None:
        verdicts["ntk_kd_fails_deep_teacher"] = _kd_fails_verdict(
            [per("students", block["kd_from_deep"].start + j) for j in range(n_st)],
            [deep_test] * n_st,
            [per("single", j) for j in range(n_st)],
            mu,
        )
    return verdicts
