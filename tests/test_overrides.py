"""Overrides never trip on a field the user did not set (issue 16).

A preset derives fields from the ones the user sets; a derived value must fit them
(kd_students follows seeds, demo's s and max_noisy follow k), and a rule that still
fails names a field the user set. The property test draws random sets of overrides,
each value inside its field's own range, for every preset.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from frozendict import frozendict
from hypothesis import given, settings
from hypothesis import strategies as st

from mvsim import cli
from mvsim.config import (
    BUILTIN_LEARNERS,
    FIELD_SECTION,
    PRESETS,
    Config,
    ConfigError,
    Range,
    make_config,
)
from mvsim.verify import check_claim_seeds

ROOT = Path(__file__).resolve().parents[1]

# Each numeric field's own range, as its validator states it: (lo, hi, lo excluded). The
# upper ends are only where drawing stops (config construction is cheap at any size).
# The cross-field rules (d ≥ 2k, s ≤ k, P ≥ C_p(2 + max_noisy), kd_students ≤ seeds, ...)
# are left out on purpose: they are what the property is about.
NUMERIC: dict[str, tuple[float, float, bool]] = {
    "k": (2, 60, False), "d": (1, 400, False), "P": (1, 200, False), "C_p": (1, 4, False),
    "s": (0.0, 60.0, False), "max_noisy": (0, 100, False), "mu": (0.0, 1.0, False),
    "N": (1, 5000, False), "gamma": (0.0, 1.0, False), "sigma_p": (0.0, 1.0, False),
    "sigma_n": (0.0, 1.0, False), "gauss_sep": (0.0, 20.0, True),
    "own_z": (0.0, 3.0, False), "noisy_z_multi": (0.0, 3.0, False),
    "rho": (0.0, 1.0, False), "Gamma": (0.0, 1.0, False),
    "m": (1, 16, False), "q": (1, 8, False), "varrho": (0.0, 5.0, True),
    "sigma_0": (0.0, 2.0, True), "vit_dim": (1, 128, False), "vit_depth": (1, 4, False),
    "vit_heads": (1, 8, False), "vit_kd_T": (1, 100_000, False), "mlp_width": (1, 512, False),
    "eta": (0.0, 50.0, True), "T": (1, 100_000, False), "chunk": (1, 1000, False),
    "loss_tol": (0.0, 1.0, False), "n_log": (2, 200, False), "block": (0, 5000, False),
    "flow_rtol": (0.0, 4.0, True), "flow_atol": (0.0, 1.0, True),
    "flow_max_steps": (1, 10**6, False), "converge_tol": (0.0, 1.0, True),
    "kd_tau": (0.0, 5.0, True), "kd_hinton_tau": (0.0, 50.0, True),
    "kd_eta_ratio": (0.0, 20.0, False), "kd_alpha": (0.0, 1.0, False),
    "kd_T": (1, 10_000, False), "kd_students": (1, 20, False), "avg_members": (1, 8, False),
    "avg_seeds": (1, 8, False), "avg_eta_mult": (0.0, 10.0, True),
    "seeds": (1, 20, False), "n_test_multi": (0, 10**6, False),
    "n_test_single": (1, 10**6, False), "view_threshold": (0.0, 2.0, True),
    "view_accuracy": (0.0, 1.0, True),
    "seed": (0, 2**31, False), "horizon": (1, 100_000, False),
    "n_curve_multi": (0, 10**6, False), "n_curve_single": (1, 10**6, False),
    "ntk_sigma_0": (0.0, 5.0, True), "ntk_m": (1, 64, False), "ntk_eta": (0.0, 50.0, True),
    "ntk_T": (1, 5000, False), "ntk_seeds": (2, 16, False), "ntk_avg_members": (1, 8, False),
    "ntk_avg_seeds": (1, 8, False), "ntk_kd_students": (1, 16, False),
    "ntk_kd_T": (1, 1000, False), "ntk_deep_teachers": (0, 8, False),
    "ntk_n_test_multi": (0, 10**5, False), "ntk_n_test_single": (1, 10**5, False),
    "ntk_terms": (1, 64, False), "ntk_deg": (1, 64, False), "ntk_chunk": (1, 1024, False),
    "ntk_ridge": (0.0, 1.0, False),
    "drop_threshold": (0.0, 2.0, True), "gauss_gain_ratio": (0.0, 1.0, True),
    "exp_n_test_multi": (1, 10**6, False), "exp_n_test_single": (1, 10**6, False),
}  # fmt: skip


def _field_type(name: str) -> Any:
    from mvsim.config import _SECTIONS

    return typing.get_type_hints(_SECTIONS[FIELD_SECTION[name]])[name]


def _strategy(name: str) -> st.SearchStrategy:
    """Values of field ``name`` inside its own range, from its declared type."""
    tp = _field_type(name)
    args = typing.get_args(tp)
    if tp is bool:
        return st.booleans()
    if typing.get_origin(tp) is Literal:
        return st.sampled_from(args)
    if tp is str:  # learner: the built-in names (an import path is checked by learners.check)
        return st.sampled_from(BUILTIN_LEARNERS)
    if tp is frozendict:  # learner_kwargs: empty, or a user module's (wrong for a built-in)
        return st.sampled_from([frozendict(), frozendict(width=8)])
    lo, hi, lo_open = NUMERIC[name]
    if tp == Range:
        x = st.floats(lo, hi, allow_nan=False)
        return st.tuples(x, x).map(lambda p: (min(p), max(p)))
    inner = next((a for a in args if a is not type(None)), tp)
    if inner is int:
        value = st.integers(int(lo) + int(lo_open), int(hi))
    else:
        value = st.floats(lo, hi, exclude_min=lo_open, allow_nan=False)
    return st.none() | value if type(None) in args else value


FIELDS = sorted(FIELD_SECTION)


def test_every_numeric_field_has_a_range_to_draw_from() -> None:
    """A new numeric field must state its range here, or the property misses it."""
    numeric = [
        f for f in FIELDS
        if _field_type(f) not in (bool, str, frozendict)
        and typing.get_origin(_field_type(f)) is not Literal
    ]  # fmt: skip
    missing = sorted(set(numeric) - set(NUMERIC))
    assert not missing, f"add these fields' ranges to NUMERIC: {missing}"


overrides_strategy = st.lists(st.sampled_from(FIELDS), unique=True, max_size=6).flatmap(
    lambda names: st.fixed_dictionaries({n: _strategy(n) for n in names})
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(preset=st.sampled_from(sorted(PRESETS)), overrides=overrides_strategy)
def test_an_error_names_a_field_the_user_set(preset: str, overrides: dict[str, Any]) -> None:
    """For every preset and random overrides inside each field's range, the config either
    validates, carrying every override as given, or its error names an overridden field."""
    try:
        cfg = make_config(preset, overrides)
    except ConfigError as e:
        assert e.field.split("[")[0] in overrides, (preset, overrides, str(e))
        assert f"'{e.field}'" in str(e)
        return
    flat = cfg.flat()
    for name, value in overrides.items():
        assert flat[name] == value, (name, flat[name], value)


# --- the commands, as configs (demo runs take minutes) ------------------------------


@pytest.mark.parametrize("preset", ["demo", "paper", "tiny"])
@pytest.mark.parametrize("seeds", [1, 2])
def test_few_seeds_resolve_for_single(preset: str, seeds: int) -> None:
    """`--seeds 2 --claims single` and `--seeds 1 --claims single`: no student was asked
    for, so kd_students follows seeds (min of the preset's and seeds)."""
    cfg = make_config(preset, {"seeds": seeds})
    assert cfg.distill.kd_students == min(seeds, make_config(preset).distill.kd_students)
    check_claim_seeds(cfg, ["single"])
    check_claim_seeds(cfg, ["single", "training_average"])


def test_an_explicit_kd_students_still_wins_over_seeds() -> None:
    assert make_config("demo", {"seeds": 5, "kd_students": 5}).distill.kd_students == 5
    assert make_config("paper", {"seeds": 3}).distill.kd_students == 3  # paper asks for 4


@pytest.mark.parametrize("claim", ["ensemble", "kd", "self_distillation"])
def test_a_claim_one_seed_cannot_evaluate_names_the_flag_and_the_claim(claim: str) -> None:
    cfg = make_config("demo", {"seeds": 1})
    with pytest.raises(ConfigError) as info:
        check_claim_seeds(cfg, ["single", claim])
    msg = str(info.value)
    assert info.value.field == "seeds" and "--seeds" in msg and f"'{claim}'" in msg, msg
    assert "--claims single" in msg  # what does run with one seed
    check_claim_seeds(make_config("demo", {"seeds": 2}), [claim])


def test_demo_at_k10_is_exactly_the_committed_demo_run() -> None:
    """Every field of the demo config, bare and with k = 10 set, equals the config
    recorded in docs/demo/report.json (today's demo): deriving s, max_noisy and the
    students from k and seeds changes nothing at the k the preset was tuned at."""
    rep = json.loads((ROOT / "docs" / "demo" / "report.json").read_text())
    recorded = dataclasses.replace(Config.from_dict(rep["config"]), preset="demo")
    for overrides in ({}, {"k": 10}, {"seeds": 10}):
        cfg = make_config("demo", overrides)
        assert cfg == recorded, overrides
        assert cfg.train.eta == 2 / 3 * 1.0 * 10 and cfg.data.N == 620  # η = (2/3)ϱk, 62k


@pytest.mark.parametrize("k", range(2, 51))
def test_demo_resolves_every_k_from_2_to_50(k: int) -> None:
    """`--set k=K`: N, μ, η, s and max_noisy follow k and fit it."""
    cfg = make_config("demo", {"k": k})
    d, n_multi, n_single = cfg.data, 60 * k, 2 * k
    assert d.N == n_multi + n_single and d.mu == n_single / (n_multi + n_single)
    assert math.isclose(d.mu, 1 / 31, rel_tol=1e-12)
    assert cfg.train.eta == pytest.approx(2 / 3 * k)
    assert d.s == min(4.0, k - 1) and d.max_noisy == min(14, 2 * (k - 1))
    assert make_config("paper", {"k": k}).data == d


# --- the same through the CLI: errors before any compute ------------------------------------


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["verify", "--seeds", "1"], ["--seeds", "'ensemble'"]),
        (["verify", "--seeds", "1", "--claims", "single,kd"], ["--seeds", "'kd'"]),
        (["verify", "--seeds", "1", "--claims", "single", "--ntk"], ["--ntk", "--seeds"]),
        (["verify", "--seeds", "2", "--set", "kd_students=3"], ["'kd_students'", "≤ seeds"]),
        (["sweep", "--grid", "mu=0.1,0.2", "--claims", "single,ensemble", "--seeds", "1",
          "--store", "{tmp}/s.sqlite"], ["--seeds", "'ensemble'", "grid point"]),
        (["experiment", "dropping", "--seeds", "1"], ["--seeds", "dropping"]),
        (["experiment", "gaussian", "--seeds", "1"], ["--seeds", "gaussian"]),
    ],
)  # fmt: skip
def test_cli_names_the_flag_before_any_compute(argv, fragments, tmp_path, capsys) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    for f in fragments:
        assert f in err, err
    assert not (tmp_path / "s.sqlite").exists()
