"""Tests for mvsim.config: validation before compute, presets, parsing, serialisation."""

from __future__ import annotations

import json
import math

import pytest

from mvsim.config import (
    FIELD_SECTION,
    PRESETS,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    load_file,
    make_config,
    parse_set,
)

# --- rejection of invalid configs -------------------------------------------------------

# (preset, overrides, field that the message must name, a fragment of the allowed range).
# The presets derive other fields from k, d, varrho and mu, so several of these also check
# that the error comes before the preset does any arithmetic with the bad value
# (d = 0 used to raise ZeroDivisionError from sqrt(d); theory with k = 1 from 1/ln k).
INVALID_OVERRIDES = [
    ("tiny", {"k": 0}, "k", "[2,"),
    ("tiny", {"k": -3}, "k", "[2,"),
    ("theory", {"k": 1}, "k", "[2,"),
    ("tiny", {"d": 0}, "d", "[1,"),
    ("demo", {"d": -4}, "d", "[1,"),
    ("tiny", {"N": 0}, "N", "[1,"),
    ("tiny", {"N": -10}, "N", "[1,"),
    ("tiny", {"m": 0}, "m", "[1,"),
    ("tiny", {"T": 0}, "T", "[1,"),
    ("tiny", {"P": 0}, "P", "[1,"),
    ("tiny", {"C_p": 0}, "C_p", "[1,"),
    ("tiny", {"chunk": 0}, "chunk", "[1,"),
    ("tiny", {"eta": 0.0}, "eta", "(0.0,"),
    ("tiny", {"eta": -1.0}, "eta", "(0.0,"),
    ("tiny", {"sigma_0": 0.0}, "sigma_0", "(0.0,"),
    ("tiny", {"varrho": 0.0}, "varrho", "(0.0,"),
    ("tiny", {"sigma_p": -0.1}, "sigma_p", "[0.0,"),
    ("tiny", {"mu": -0.01}, "mu", "[0.0, 1.0]"),
    ("tiny", {"mu": 1.5}, "mu", "[0.0, 1.0]"),
    ("theory", {"mu": 0.0}, "mu", "(0, 1]"),
    ("tiny", {"s": 5.0}, "s", "[0.0, 4]"),
    ("tiny", {"q": 0}, "q", "[1,"),
    ("theory", {"q": 0}, "q", "[1,"),
    ("tiny", {"d": 7}, "d", "2k = 8"),  # 2k orthonormal views need d >= 2k
    # tiny: C_p = 1, max_noisy = 6, so P must be >= 1 * (2 + 6) = 8.
    ("tiny", {"P": 7}, "P", "C_p·(2 + max_noisy) = 1·(2 + 6) = 8"),
    # C_p = 2 needs P >= 2 * (2 + 6) = 16 with tiny's P = 8: the user set C_p, not P.
    ("tiny", {"C_p": 2}, "C_p", "P = 8 (the preset's, not set by you) invalid: must be ≥ C_p"),
    ("tiny", {"C_p": 2, "P": 12}, "P", "= 16"),  # both set: the rule's own field
    ("demo", {"max_noisy": None}, "max_noisy", "1·(2 + 18) = 20"),
    ("demo", {"k": 150, "d": 200}, "d", "must be ≥ 2k"),  # d follows k unless set
    ("tiny", {"seeds": 2, "kd_students": 3}, "kd_students", "≤ seeds = 2"),
    ("tiny", {"mu": 0.5, "n_test_multi": 0}, "n_test_multi", "unless mu = 1"),
    ("tiny", {"n_test_multi": 0}, "n_test_multi", "unless mu = 1"),
    ("tiny", {"max_noisy": 7}, "max_noisy", "[0, 6]"),
    ("tiny", {"rho": (0.1, 0.05)}, "rho", "lo <= hi"),
    ("tiny", {"own_z": (2.0, 1.0)}, "own_z", "lo <= hi"),
    ("tiny", {"Gamma": (-0.1, 0.1)}, "Gamma[0]", "[0.0,"),
    ("tiny", {"rho": (0.1, math.inf)}, "rho[1]", "finite"),
    ("tiny", {"eta": math.inf}, "eta", "finite"),
    ("tiny", {"sigma_n": math.nan}, "sigma_n", "finite"),
    ("tiny", {"mu": math.nan}, "mu", "finite"),
    ("theory", {"k": math.nan}, "k", "integer"),
    ("tiny", {"k": 4.5}, "k", "integer"),
    ("tiny", {"stop": "sometimes"}, "stop", "'accuracy', 'loss', 'converged', 'none'"),
    # The flow integrator's fields (issue 14): names, tolerances and the time cap.
    ("tiny", {"integrator": "euler"}, "integrator", "'flow', 'gd'"),
    ("tiny", {"flow_solver": "dopri8"}, "flow_solver", "'heun', 'bosh3', 'tsit5'"),
    ("tiny", {"flow_rtol": 0.0}, "flow_rtol", "(0.0,"),
    ("tiny", {"flow_rtol": -0.5}, "flow_rtol", "(0.0,"),
    ("tiny", {"flow_atol": 0.0}, "flow_atol", "(0.0,"),
    ("tiny", {"flow_max_steps": 0}, "flow_max_steps", "[1,"),
    ("tiny", {"converge_tol": -1e-3}, "converge_tol", "(0.0,"),
    ("tiny", {"T": -5}, "T", "[1,"),
    ("tiny", {"kd_T": -1}, "kd_T", "[1,"),
    ("tiny", {"kd_stop": "never"}, "kd_stop", "'converged', 'none'"),
    ("tiny", {"dtype": "float16"}, "dtype", "'float32', 'float64'"),
    ("tiny", {"matmul_precision": "bfloat16"}, "matmul_precision", "'highest', 'tensorfloat32'"),
    ("tiny", {"z_split": "thirds"}, "z_split", "'equal', 'random'"),
    ("tiny", {"train_composition": "shuffled"}, "train_composition", "'stratified'"),
    ("tiny", {"project_noise": 1}, "project_noise", "true or false"),
    ("tiny", {"n_log": 1}, "n_log", "[2,"),
    ("tiny", {"block": -1}, "block", "[0,"),
    ("tiny", {"seeds": 0}, "seeds", "[1,"),
    ("tiny", {"k": "abc"}, "k", "cannot parse as int"),
    ("tiny", {"bogus_field": 1}, "bogus_field", "unknown config field"),
]


@pytest.mark.parametrize(("preset", "overrides", "field", "allowed"), INVALID_OVERRIDES)
def test_make_config_rejects_invalid(preset, overrides, field, allowed):
    with pytest.raises(ConfigError) as info:
        make_config(preset, overrides)
    msg = str(info.value)
    assert f"'{field}'" in msg, msg
    assert allowed in msg, msg
    assert info.value.field == field


def test_unknown_preset():
    with pytest.raises(ConfigError) as info:
        make_config("huge", {})
    assert "'preset'" in str(info.value)
    for name in PRESETS:
        assert name in str(info.value)


def test_invalid_is_rejected_before_compute(monkeypatch):
    """No preset function runs when an override is of an unknown field."""
    called = []
    monkeypatch.setitem(PRESETS, "spy", lambda o: called.append(o) or {})
    with pytest.raises(ConfigError):
        make_config("spy", {"nonexistent": 3})
    with pytest.raises(ConfigError):
        make_config("spy", {"d": 0})
    assert called == []


def test_section_constructors_validate_directly():
    with pytest.raises(ConfigError, match="'k'"):
        DataConfig(k=1)
    with pytest.raises(ConfigError, match="'q'"):
        ModelConfig(q=0)
    with pytest.raises(ConfigError, match="'stop'"):
        TrainConfig(stop="sometimes")
    with pytest.raises(ConfigError, match="'project_noise'"):
        DataConfig(project_noise="yes")
    with pytest.raises(ConfigError, match="'rho'"):
        DataConfig(rho=0.05)  # not a pair
    with pytest.raises(ConfigError, match=r"'mu'.*\[0\.0, 1\.0\]"):
        DataConfig(mu=-0.1)
    with pytest.raises(ConfigError, match=r"'k'.*\[2, ∞\)"):
        DataConfig(k=0)
    with pytest.raises(ConfigError, match="'d'"):
        DataConfig(d=-1)


def test_replace_validates_and_rejects_unknown():
    cfg = make_config("tiny")
    assert cfg.replace(k=5, d=64).data.k == 5
    with pytest.raises(ConfigError, match="'mu'"):
        cfg.replace(mu=2.0)
    with pytest.raises(ConfigError, match="'nope'"):
        cfg.replace(nope=1)


@pytest.mark.parametrize(
    ("items", "field", "allowed"),
    [
        (["k20"], "k20", "field=value"),
        (["=3"], "=3", "field=value"),
        (["k=abc"], "k", "cannot parse as int"),
        (["N=1.5"], "N", "cannot parse as int"),
        (["mu=half"], "mu", "cannot parse as float"),
        (["rho=0.1,0.2,0.3"], "rho", "pair lo,hi"),
        (["project_noise=maybe"], "project_noise", "cannot parse as bool"),
        (["max_noisy=lots"], "max_noisy", "cannot parse"),
        (["nosuchfield=1"], "nosuchfield", "unknown config field"),
        (["data.nosuchfield=1"], "nosuchfield", "unknown config field"),
    ],
)
def test_parse_set_rejects(items, field, allowed):
    with pytest.raises(ConfigError) as info:
        parse_set(items)
    msg = str(info.value)
    assert f"'{field}'" in msg, msg
    assert allowed in msg, msg


def test_parse_set_values_are_validated_by_make_config():
    # parse_set only types values; ranges and choices are checked when the config is built.
    for item, field in [
        ("stop=sometimes", "stop"),
        ("rho=0.1,0.05", "rho"),
        ("eta=inf", "eta"),
        ("sigma_p=nan", "sigma_p"),
        ("k=0", "k"),
        ("q=0", "q"),
    ]:
        with pytest.raises(ConfigError, match=f"'{field}'"):
            make_config("tiny", parse_set([item]))


# --- parsing -------------------------------------------------------------------------------


def test_parse_set_typing():
    out = parse_set(
        [
            "k=12",
            "mu=0.25",
            "eta=3",  # a float field given an integer literal
            "project_noise=false",
            "kd_truncate=True",
            "rho=0.01,0.03",
            "Gamma=(0.05, 0.1)",
            "own_z=1.5",  # a single number is the degenerate range (v, v)
            "max_noisy=None",
            "data.d=300",
            " train.T = 77 ",
            "stop=loss",
        ]
    )
    assert out == {
        "k": 12,
        "mu": 0.25,
        "eta": 3.0,
        "project_noise": False,
        "kd_truncate": True,
        "rho": (0.01, 0.03),
        "Gamma": (0.05, 0.1),
        "own_z": (1.5, 1.5),
        "max_noisy": None,
        "d": 300,
        "T": 77,
        "stop": "loss",
    }
    assert type(out["k"]) is int and type(out["d"]) is int and type(out["T"]) is int
    assert type(out["mu"]) is float and type(out["eta"]) is float
    assert all(type(v) is float for v in out["rho"])
    assert parse_set(["max_noisy=5"]) == {"max_noisy": 5}
    cfg = make_config("tiny", parse_set(["k=5", "d=40", "max_noisy=None", "P=10"]))
    assert cfg.data.max_noisy is None and cfg.data.noisy_cap == 8


def test_load_file_json_and_toml(tmp_path):
    flat_json = tmp_path / "flat.json"
    flat_json.write_text(json.dumps({"k": 6, "mu": 0.5, "rho": [0.01, 0.02], "max_noisy": None}))
    want = {"k": 6, "mu": 0.5, "rho": (0.01, 0.02), "max_noisy": None}
    assert load_file(flat_json) == want

    sec_json = tmp_path / "sec.json"
    sec_json.write_text(
        json.dumps({"preset": "tiny", "data": {"k": 6, "rho": [0.01, 0.02]}, "train": {"T": 9}})
    )
    assert load_file(sec_json) == {"k": 6, "rho": (0.01, 0.02), "T": 9}

    flat_toml = tmp_path / "flat.toml"
    flat_toml.write_text('k = 6\nmu = 1\nGamma = [0.05, 0.1]\nstop = "none"\n')
    got = load_file(flat_toml)
    assert got == {"k": 6, "mu": 1.0, "Gamma": (0.05, 0.1), "stop": "none"}
    assert type(got["mu"]) is float  # TOML integer for a float field

    sec_toml = tmp_path / "sec.toml"
    sec_toml.write_text(
        "[data]\nk = 6\nproject_noise = false\n\n[model]\nq = 3\n\n[train]\neta = 0.5\n"
    )
    assert load_file(sec_toml) == {"k": 6, "project_noise": False, "q": 3, "eta": 0.5}

    cfg = make_config("tiny", load_file(sec_toml))
    assert (cfg.data.k, cfg.data.project_noise, cfg.model.q, cfg.train.eta) == (6, False, 3, 0.5)

    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\nkk = 6\n")
    with pytest.raises(ConfigError, match="'kk'"):
        load_file(bad)


# --- presets and derived fields ------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_json_round_trip(preset):
    cfg = make_config(preset)
    assert Config.from_json(cfg.to_json()) == cfg
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg
    # also with non-default values of every type (tuple, bool, literal)
    cfg2 = make_config(preset, {"rho": (0.011, 0.037), "project_noise": True, "stop": "loss"})
    assert Config.from_json(cfg2.to_json()) == cfg2


def test_json_round_trip_none_and_custom():
    cfg = make_config("tiny", {"max_noisy": None, "dtype": "float64", "own_z": (1.0, 1.5)})
    assert cfg.data.max_noisy is None
    assert Config.from_json(cfg.to_json()) == cfg
    # a partial dict fills the missing sections with the section defaults
    part = Config.from_dict({"model": {"q": 3}})
    assert part.model.q == 3 and part.data == DataConfig() and part.preset == "custom"


def test_defaults_are_the_demo_preset():
    # Config() must itself be valid (DataConfig's default max_noisy used to be None, i.e.
    # a cap of 18 noisy features, which P = 16 cannot hold).
    demo = make_config("demo")
    default = Config()
    assert default.data == demo.data
    assert default.model == demo.model
    assert default.train.eta == pytest.approx(demo.train.eta, rel=1e-15)


def test_from_dict_rejects_unknown_keys():
    d = json.loads(make_config("tiny").to_json())
    d["data"]["zz"] = 1
    with pytest.raises(ConfigError, match="'zz'"):
        Config.from_dict(d)
    d = json.loads(make_config("tiny").to_json())
    d["extra"] = {}
    with pytest.raises(ConfigError, match="'extra'"):
        Config.from_dict(d)


def test_theory_preset_derives_from_k():
    k = 12
    cfg = make_config("theory", {"k": k})
    lk = math.log(k)
    data, model, train = cfg.data, cfg.model, cfg.train
    assert data.P == 144
    assert data.d == 4 * k * k == 576
    assert data.mu == pytest.approx(1 / k)
    assert data.N == round(k**1.2 * k)
    assert data.s == pytest.approx(k**0.2)
    assert data.max_noisy == min(2 * (k - 1), 144 - 2) == 22
    assert data.rho == pytest.approx((k**-0.01, min(2 * k**-0.01, 1.0)))  # capped at 1
    assert data.Gamma == pytest.approx((1 / (2 * lk), 1 / lk))
    assert data.sigma_p == pytest.approx(1 / (math.sqrt(576) * lk))
    assert data.sigma_n == pytest.approx(1 / math.sqrt(576))
    assert data.project_noise is False and data.train_composition == "iid"
    assert model.m == math.ceil(lk) == 3
    assert model.varrho == pytest.approx(1 / lk)
    assert model.sigma_0 == pytest.approx(k ** (-1 / 2))  # q = 4: sigma_0^{q-2} = 1/k
    assert train.eta == pytest.approx(1 / k)
    assert train.T == k**3
    # an overridden q feeds sigma_0
    assert make_config("theory", {"k": k, "q": 3}).model.sigma_0 == pytest.approx(1 / k)


def test_demo_derived_fields_follow_overrides():
    cfg = make_config("demo", {"d": 400})
    assert cfg.data.d == 400
    assert cfg.data.sigma_p == pytest.approx(0.1 / math.sqrt(400))
    assert cfg.data.sigma_n == pytest.approx(1.2 / math.sqrt(400))
    cfg = make_config("demo", {"k": 20, "d": 400, "varrho": 0.5})
    assert cfg.data.N == 60 * 20 + 2 * 20
    assert cfg.data.mu == pytest.approx(40 / 1240)
    assert cfg.model.sigma_0 == pytest.approx(0.033 * 0.5)
    assert cfg.train.eta == pytest.approx(2 / 3 * 0.5 * 20)
    tiny = make_config("tiny", {"d": 100})
    assert tiny.data.sigma_p == pytest.approx(0.1 / math.sqrt(100))


def test_explicit_overrides_win_over_derived():
    cfg = make_config("demo", {"d": 400, "sigma_p": 0.01, "N": 99, "mu": 0.5, "eta": 1.5})
    assert (cfg.data.sigma_p, cfg.data.N, cfg.data.mu, cfg.train.eta) == (0.01, 99, 0.5, 1.5)
    assert cfg.data.sigma_n == pytest.approx(1.2 / math.sqrt(400))  # still derived
    cfg = make_config("theory", {"k": 12, "P": 200, "m": 7})
    assert (cfg.data.P, cfg.model.m, cfg.data.d) == (200, 7, 576)


def test_configs_hashable_and_equal_by_value():
    a, b = make_config("tiny"), make_config("tiny")
    assert a == b and hash(a) == hash(b)
    assert len({a, b, make_config("tiny", {"k": 5})}) == 2
    for section in (a.data, a.model, a.train, a.distill, a.verify):
        hash(section)


def test_flat_and_field_sections_are_consistent():
    cfg = make_config("tiny")
    flat = cfg.flat()
    assert set(flat) == set(FIELD_SECTION)
    for name, sec in FIELD_SECTION.items():
        assert getattr(getattr(cfg, sec), name) == flat[name]
