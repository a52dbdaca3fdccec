"""The preset families in k and the k-scaling experiment (issue 15): the rules, --set k
for every k, the store it writes and resumes, and figures that plot the stored numbers."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mvsim import cli, verify
from mvsim.config import Config, ConfigError, make_config
from mvsim.experiments import k_scaling
from mvsim.presets import PRESETS, describe_presets

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("demo", "demo-logm", "demo-theory")


def test_demo_at_k10_is_the_committed_demo_bit_for_bit():
    committed = json.loads((ROOT / "docs" / "demo" / "report.json").read_text())["config"]
    now = json.loads(json.dumps(make_config("demo").to_dict()))
    defaults = json.loads(json.dumps(Config().to_dict()))
    for section, fields in now.items():
        if not isinstance(fields, dict):
            assert fields == committed[section]
            continue
        for name, value in fields.items():  # a field added since holds its default
            assert value == committed[section].get(name, defaults[section][name]), name
    for family in FAMILIES:  # each family's constants are matched at k = 10
        assert make_config(family, {"k": 10}).flat() == make_config("demo").flat()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_set_k_validates_from_2_to_50(preset):
    for k in range(2, 51):
        cfg = make_config(preset, {"k": k})  # a derived field never trips on its own
        assert cfg.data.k == k and cfg.data.d >= 2 * k


def test_family_rules():
    for k in (3, 20, 40):
        demo, logm, theory = (make_config(f, {"k": k}) for f in FAMILIES)
        assert demo.data.N == 62 * k and demo.model.m == 4
        assert demo.train.eta == pytest.approx(2 / 3 * k)
        assert demo.data.s == min(4.0, k - 1) and demo.data.max_noisy == min(14, 2 * (k - 1))
        assert logm.model.m == round(4 * math.log(k) / math.log(10))
        assert theory.model.varrho == pytest.approx(math.log(10) / math.log(k))
        assert theory.model.sigma_0**2 * k == pytest.approx(0.033**2 * 10)  # σ_0^{q−2} ∝ 1/k
    assert make_config("demo", {"k": 100}).data.d == 400  # the 2k views fill half the space
    text = describe_presets()
    assert all(f"{f}: " in text for f in FAMILIES) and text.count("Rule in k") == 3


def test_a_field_the_user_set_still_errs():
    with pytest.raises(ConfigError) as e:
        make_config("demo", {"k": 7, "max_noisy": 14})
    assert e.value.field == "max_noisy"


def test_points_validate_before_compute(monkeypatch):
    monkeypatch.setattr(verify, "run_many", lambda *a, **k: pytest.fail("computed"))
    for ks, fam in (([3, 1], "demo"), ([], "demo"), ([3, 3], "demo"), ([3], "gaussian")):
        with pytest.raises(ConfigError) as e:
            k_scaling.points(ks, fam)
        assert e.value.field in ("--ks", "--family")
    with pytest.raises(ConfigError, match="--ks"):
        k_scaling.points([3], "demo", {"k": 4})
    pts = k_scaling.points([20, 3], "demo-logm", {"seeds": 2})
    assert [p.cfg.data.k for p in pts] == [3, 20] and pts[1].cfg.model.m == 5
    assert [p.cfg.verify.seeds for p in pts] == [2, 2]
    pts = k_scaling.points([3, 10, 40], "demo")  # ≈ 160 classes per k by default
    assert [p.cfg.verify.seeds for p in pts] == [32, 16, 4]
    assert pts[0].cfg.verify.n_test_multi == pts[0].cfg.experiment.exp_n_test_multi


def test_cli_errors_name_the_flag(capsys, tmp_path):
    assert cli.main(["experiment", "k-scaling", "--ks", "3"]) == 2
    assert "--store" in capsys.readouterr().err
    args = ["experiment", "k-scaling", "--out", str(tmp_path)]
    assert cli.main([*args, "--preset", "demo"]) == 2
    assert cli.main([*args, "--family", "nope"]) == 2
    assert "--family" in capsys.readouterr().err
    assert cli.main(["experiment", "dropping", "--family", "demo"]) == 2


def test_race_midpoint_recovers_a_logistic_curve():
    rng = np.random.default_rng(1)
    r = rng.uniform(0, 1, 4000)
    two = rng.uniform(size=r.size) < 1 / (1 + np.exp(-(r - 0.8) / 0.05))
    est, lo, hi = k_scaling.race_midpoint(r, two)
    assert lo < 0.8 < hi and hi - lo < 0.05
    assert math.isnan(k_scaling.race_midpoint(r, np.zeros_like(two))[0])


def test_in_band_probability():
    # k = 10 tolerates no two-view class: (1 − p)^k; k = 100 tolerates two.
    assert k_scaling.in_band_probability(10, 0.11) == pytest.approx(0.89**10)
    p = 0.03
    two = sum(math.comb(100, i) * p**i * (1 - p) ** (100 - i) for i in range(3))
    assert k_scaling.in_band_probability(100, p) == pytest.approx(two)


TINY = {"seeds": 2, "T": 400, "exp_n_test_multi": 400, "exp_n_test_single": 400}
# The students' claims cost compiles, not insight, here: their columns are tested by name.
CLAIMS = ["single", "ensemble"]


@pytest.fixture(scope="module")
def run_store(tmp_path_factory):
    """k = 2 alone, then k = 2, 3 on the same store: the second run computes only k = 3."""
    store = tmp_path_factory.mktemp("ks") / "store.sqlite"
    calls = []
    real = verify.run_many

    def counting(cfgs, **kw):
        calls.append([c.data.k for c in cfgs])
        return real(cfgs, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(verify, "run_many", counting)
        k_scaling.run([2], "tiny", TINY, store=store, claims=CLAIMS, progress=False)
        rep = k_scaling.run([2, 3], "tiny", TINY, store=store, claims=CLAIMS, progress=False)
    return store, rep, calls


def test_ensemble_members_follow_the_missed_view_rule():
    """A member misses a view with q = f1/2 + f0; K members leave q^K of the single-view
    stratum to views none learned, so K is the least with q^K below 0.001."""
    for f1, f0 in ((0.84, 0.0), (0.69, 0.0), (0.79, 0.06), (0.5, 0.2)):
        q, K = f1 / 2 + f0, k_scaling.ensemble_members_needed(f1, f0)
        assert q**K < 0.001 <= q ** (K - 1), (f1, f0, K)
    assert k_scaling.ensemble_members_needed(0.84, 0.0) == 8  # the demo's k = 40 (4 seeds)
    assert k_scaling.ensemble_members_needed(0.0, 1.0) is None  # no member learns a view
    row = {"frac_one_view": 0.84, "frac_no_view": 0.0}
    small, enough = k_scaling.ensemble_size(row, 4, 40), k_scaling.ensemble_size(row, 8, 40)
    assert small["ensemble_too_small"] and not enough["ensemble_too_small"]
    assert small["ensemble_missed_views_expected"] == pytest.approx(80 * 0.42**4)


def test_the_store_is_written_and_resumed(run_store):
    store, rep, calls = run_store
    assert calls == [[2], [3]]
    pts = k_scaling.points([2, 3], "tiny", TINY, CLAIMS)
    again = k_scaling.from_store(store, pts, "tiny")
    assert again["rows"] == rep["rows"]  # the report is a function of the store alone


def test_rows_hold_every_claim_and_the_race(run_store):
    _, rep, _ = run_store
    for r in rep["rows"]:
        assert r["frac_one_view"] + r["frac_two_view"] + r["frac_no_view"] == pytest.approx(1)
        assert r["frac_two_view_lo"] <= r["frac_two_view"] <= r["frac_two_view_hi"]
        assert "kd_verdict" not in r
        for c in CLAIMS:
            assert r[f"{c}_verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
            assert r[f"{c}_ci_lo"] <= r[f"{c}_error_over_mu"] <= r[f"{c}_ci_hi"]
        assert sum(c["classes"] for c in r["race_curve"]) == r["classes"]
        assert sum(r["init_law"]) == pytest.approx(1)
        assert r["peak_rss_bytes"] > 0 and r["single_grad_evals_per_model"] > 0
    assert "k-scaling" in k_scaling.table(rep)


def test_figures_plot_the_stored_numbers(run_store, tmp_path):
    _, rep, _ = run_store
    paths = k_scaling.figure(rep, tmp_path)
    assert len(paths) == 8 and all(Path(p).stat().st_size > 0 for p in paths)
    ax = k_scaling.draw_two_view(rep).axes[0]
    measured = ax.lines[0].get_ydata()
    np.testing.assert_allclose(measured, [r["frac_two_view"] for r in rep["rows"]])
    ax = k_scaling.draw_errors(rep).axes[0]
    ys = [np.asarray(line.get_ydata(), float) for line in ax.lines]
    single = [r["single_error_over_mu"] for r in rep["rows"]]
    assert any(np.allclose(y, single) for y in ys if y.size == len(single))


# Slow: a fresh process compiles every stage again (a minute on a quiet 2-core machine).
# The experiment it wraps is tested in-process above.
@pytest.mark.slow
def test_gpu_script_k_scaling_quick_on_cpu(tmp_path):
    """benchmarks/gpu.sh's k-scaling part, in its --quick form, runs on the CPU and leaves
    a report beside the JSON it was given."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable}
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--quick", "--part", "k-scaling",
           str(tmp_path / "gpu.json")]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rep = json.loads((tmp_path / "k-scaling" / "report.json").read_text())
    assert rep["family"] == "tiny" and [r["k"] for r in rep["rows"]] == [2, 3]
    assert (tmp_path / "k-scaling" / "store.sqlite").is_file()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_committed_runs_are_their_stores(family):
    """docs/k-scaling/<family>/report.json is rebuilt from its committed store by today's
    code: every point of the documented command still has its key there (a rerun would
    resume, not recompute), and the rows are the committed ones."""
    out = ROOT / "docs" / "k-scaling" / family
    committed = json.loads((out / "report.json").read_text())
    claims = None if family == "demo" else CLAIMS
    pts = k_scaling.points(committed["ks"], family, {}, claims)
    rep = k_scaling.from_store(out / "store.sqlite", pts, family)
    assert json.loads(json.dumps(rep["rows"])) == committed["rows"]


def test_the_page_header_gives_the_seeds_of_every_k():
    """k-scaling gives fewer seeds to larger k; the page's header says so per k rather
    than showing the first point's seeds (the config's) for all."""
    from mvsim import html_report

    rep = json.loads((ROOT / "docs" / "k-scaling" / "demo" / "report.json").read_text())
    page = html_report.render_experiment(rep, [], "")
    per_k = ", ".join(str(r["seeds"]) for r in rep["rows"])
    assert len({r["seeds"] for r in rep["rows"]}) > 1
    assert f"<td>{per_k} (per k)</td>" in page, per_k
