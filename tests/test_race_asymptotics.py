"""The reduced race at large k (mvsim.race_asymptotics): reading the task's stop off a
population's fitting steps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mvsim import race_asymptotics as ra


def test_fit_steps_is_the_first_step_from_which_a_point_stays_fitted():
    steps = np.array([0, 10, 20, 30])
    margin = np.array([[-1, -1, -1], [1, -1, -1], [-1, 1, -1], [1, 1, -1]], float)  # (L, N)
    assert ra.fit_steps(steps, margin).tolist() == [30.0, 20.0, math.inf]


def test_task_stop_is_the_median_of_the_max_of_the_tasks_points():
    """Inside the sample: its 2^{−1/n} quantile. Beyond it: the Pareto tail fitted to the
    top tenth. A Pareto(2) sample of 10⁴ (fixed seed) has median max of n draws
    √(n/ln 2); the tail slope's standard error over 10³ points is ≈ 3%, which the
    extrapolation to survival ln2/n = 7·10⁻⁷ amplifies to ≈ 18% in the step (one σ):
    the margin is 3σ."""
    rng = np.random.default_rng(0)
    fits = 1.0 / np.sqrt(rng.uniform(size=10_000))  # survival x^{-2}
    assert ra.task_stop(fits, 10, T=10**9) == pytest.approx(np.quantile(fits, 2**-0.1))
    want = math.sqrt(1e6 / math.log(2))
    got = ra.task_stop(fits, 10**6, T=10**9)
    assert abs(math.log(got / want)) < 3 * 0.18
    assert ra.task_stop(fits, 10**6, T=100) == 100  # past the budget: T
    assert ra.task_stop(np.full(100, np.inf), 10, T=500) == 500  # nothing fitted
