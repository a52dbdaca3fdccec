"""The trajectory reading (mvsim.trajectory) on error curves built by hand: the fraction of
the horizon at level and its verdict, the time to level, distillation's paired times,
the end point's dependence on the cap. Pure numpy: no training."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mvsim import trajectory as traj
from mvsim.compare import mean_ci

MU = 1 / 31
STEPS = np.unique(np.concatenate([[0], np.round(np.logspace(0, 4, 40)), np.linspace(0, 1e4, 21)]))


def curve(single_errors, multi_errors=None, n=4000, acc=None, horizon=10_000, steps=STEPS):
    """A curve of S models: single-view error counts (S, L) out of n (a callable of the
    step broadcasts over models), no multi-view error unless given, training fitted."""
    t = np.asarray(steps, float)
    es = np.atleast_2d(single_errors(t) if callable(single_errors) else single_errors)
    em = np.zeros_like(es) if multi_errors is None else np.atleast_2d(multi_errors)
    return {"steps": t, "horizon": horizon, "n_multi": n, "n_single": n,
            "errors_single": es.astype(int), "errors_multi": em.astype(int),
            "train_accuracy": np.ones(es.shape) if acc is None else np.atleast_2d(acc)}  # fmt: skip


def step_down(t0, before=0.45, after=0.05, n=4000):
    """Single-view error `before` until step t0, `after` from t0 on (counts out of n)."""
    return lambda t: np.where(t < t0, round(before * n), round(after * n))[None]


def test_fraction_at_level_counts_an_interval_by_its_ends():
    t = np.array([0.0, 10, 20, 40])
    sure = np.array([False, True, True, True])
    maybe = np.array([False, False, True, True])
    lo, hi = traj.fraction_at_level(t, 40.0, sure, maybe)
    assert lo == pytest.approx(30 / 40)  # [10, 20] and [20, 40]: both ends sure
    assert hi == pytest.approx(30 / 40)  # [0, 10]: neither end possibly at level
    lo, hi = traj.fraction_at_level(t, 40.0, sure, sure | np.array([False, True, False, False]))
    assert hi == pytest.approx(1.0)  # [0, 10] has a possible end


@pytest.mark.parametrize("t0, want", [(300, "PASS"), (5000, "FAIL"), (1100, "INCONCLUSIVE")])
def test_the_verdict_is_at_level_for_90_percent_of_the_horizon(t0, want):
    """Below 0.26μ from t0 on: early enough (3% of the horizon spent above), far too late,
    or so near 10% that the recording grid's interval straddles it."""
    r = traj.reading(curve(step_down(t0)), None, 0.26, MU)
    assert r["verdict"] == want, r["fraction_at_level"]
    lo, hi = r["fraction_at_level"]
    assert lo <= 1 - t0 / 1e4 + 0.06 and hi >= 1 - t0 / 1e4 - 0.06
    assert r["time_to_level"]["mean"] == pytest.approx(STEPS[np.argmax(STEPS >= t0)])


def test_the_training_set_must_be_fitted_to_be_at_level():
    acc = np.where(STEPS < 6000, 0.99, 1.0)[None]
    r = traj.reading(curve(step_down(100), acc=acc), None, 0.26, MU)
    assert r["verdict"] == "FAIL"
    assert r["per_model"][0]["time_to_level"] == STEPS[np.argmax(STEPS >= 6000)]


def test_a_level_below_the_subsets_resolution_is_never_certain():
    """Zero errors on 4000 + 4000 points bound E/μ by ≈ 0.03, not by 0.001: possibly at
    level all along, never certainly, so INCONCLUSIVE rather than PASS."""
    r = traj.reading(curve(lambda t: np.zeros((1, t.size))), None, 0.001, MU)
    assert r["verdict"] == "INCONCLUSIVE" and r["fraction_at_level"] == [0.0, 1.0]
    assert r["resolution"] > 0.001
    assert r["time_to_level"]["mean"] == 0.0


def test_time_to_level_over_models_is_a_t_interval_of_log_times():
    reach = [200, 400, 800]
    es = np.stack([step_down(t0)(STEPS)[0] for t0 in reach])
    r = traj.reading(curve(es), None, 0.26, MU)
    first = [STEPS[np.argmax(STEPS >= t0)] for t0 in reach]
    assert [m["time_to_level"] for m in r["per_model"]] == first
    lo, hi = mean_ci(np.log1p(first))
    assert r["time_to_level"]["ci95"] == pytest.approx([math.expm1(lo), math.expm1(hi)])
    never = traj.reading(curve(np.stack([es[0], es[0] * 0 + 1800])), None, 0.26, MU)
    assert never["time_to_level"] == {"reached": 1, "models": 2, "mean": None, "ci95": None}


def _pairs(student_t0, control_t0):
    s = np.stack([step_down(t)(STEPS)[0] for t in student_t0])
    c = np.stack([step_down(t)(STEPS)[0] for t in control_t0])
    return curve(s), curve(c)


def test_students_significantly_sooner_pass_later_fail():
    s, c = _pairs([150, 200, 300], [2000, 3000, 2500])
    assert traj.paired_times(s, c, 0.26, MU)["verdict"] == "PASS"
    assert traj.paired_times(c, s, 0.26, MU)["verdict"] == "FAIL"
    s, c = _pairs([150, 3000, 300], [2000, 200, 2500])  # one student later: no consistency
    assert traj.paired_times(s, c, 0.26, MU)["verdict"] == "INCONCLUSIVE"


def test_a_control_that_never_reaches_the_level_counts_against_it_only_as_far_as_known():
    s, c = _pairs([150, 200, 300], [2000, 20_000, 2500])  # control 1 beyond the horizon
    r = traj.paired_times(s, c, 0.26, MU)
    assert r["pairs"][1]["control_time"] is None and r["verdict"] == "PASS"
    r = traj.paired_times(c, s, 0.26, MU)  # a student that never reaches it: no PASS
    assert r["verdict"] != "PASS"
    both = traj.paired_times(*_pairs([20_000] * 3, [20_000] * 3), 0.26, MU)
    assert both["informative_pairs"] == 0 and both["verdict"] == "INCONCLUSIVE"


def test_the_area_between_curves_is_negative_where_the_student_leads():
    s, c = _pairs([150, 200, 300], [2000, 3000, 2500])
    a = traj.areas(s, c, MU)
    assert a["linear"]["mean"] < 0 and a["log"]["mean"] < 0
    assert a["log"]["mean"] < a["linear"]["mean"]  # log time weighs the early lead more


def test_an_end_point_read_in_a_moving_stretch_is_cap_dependent():
    """Reaching the level at 7000 of a 10,000-step budget: a cap anywhere in [5000, 7000)
    would have read the model above it."""
    moving = traj.cap_dependence(curve(step_down(7000)), None, 0.26, MU)
    assert moving and moving["from"] == "FAIL" and moving["to"] == "PASS"
    assert moving["last_change"] == STEPS[np.argmax(STEPS >= 7000)]
    assert moving["models"] == [0] and moving["budget"] == STEPS[-1]
    assert traj.cap_dependence(curve(step_down(300)), None, 0.26, MU) is None
    s, c = _pairs([300], [7000])  # the control catches up in the last half
    lead = traj.lead_changes(s, c, MU)
    assert lead and lead["from"] == "ahead" and lead["to"] == "neither"
    assert traj.lead_changes(*_pairs([300], [400]), MU) is None  # both level before B/2
