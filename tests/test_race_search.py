"""The search for Theorem 1's regime over the reduced model (mvsim.race_search): its
targets, read off a view pattern, and its grid, validated before anything runs."""

from __future__ import annotations

import numpy as np
import pytest

from mvsim import race_search
from mvsim.config import ConfigError, make_config


def test_one_view_everywhere_meets_the_targets_and_one_two_view_class_does_not():
    """At k = 10, s = 4 a model with one view per class is predicted at
    E/μ = ½(1 − (1 − 0.4)⁹) = 0.495, inside the band; one two-view class moves it by
    ≈ 1/(2k), out of it (docs/theorems.md: the band is zero-tolerance at k = 10)."""
    cfg = make_config("demo", {"seeds": 2})
    one = np.zeros((2, 10, 2), bool)
    one[:, :, 0] = True
    s = race_search.score(cfg, one, np.array([True, True]))
    assert s["one_view"] == 1.0 and s["in_band_share"] == 1.0 and s["meets"]
    assert s["predicted_error_over_mu"][0] == pytest.approx(0.5 * (1 - 0.6**9))
    two = one.copy()
    two[:, 3, 1] = True  # one class of each seed learns both views
    s = race_search.score(cfg, two, np.array([True, True]))
    assert s["in_band_share"] == 0.0 and not s["meets"]
    unfit = race_search.score(cfg, one, np.array([True, False]))
    assert unfit["fitted"] == 0.5 and not unfit["meets"]


def test_a_bad_grid_field_is_rejected_naming_it():
    with pytest.raises(ConfigError) as e:
        race_search.parse_grid(["sigma_nn=0.1,0.2"])
    assert e.value.field == "sigma_nn"
    with pytest.raises(ConfigError) as e:
        race_search.candidates({"m": [0]}, preset="tiny")
    assert e.value.field == "m"


def test_grid_points_follow_the_race_maps_budget():
    """A grid point whose plateau is longer gets the race map's T scaling."""
    cfgs = race_search.candidates({"sigma_0": [0.033, 0.0165]}, overrides={"seeds": 2})
    T = [c.train.T for c in cfgs]
    assert T[0] == 10000 and T[1] == pytest.approx(40000, rel=0.05)  # (0.033/0.0165)² at q = 4
