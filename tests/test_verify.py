"""End to end: `mvsim verify` on the tiny preset, the report schema, the CLI's errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from mvsim import cli
from mvsim.claims import CLAIMS


@pytest.fixture(scope="module")
def report(tiny_verify):
    return tiny_verify  # conftest.py: one tiny verify run, shared with test_html.py


def test_report_schema(report):
    rep, out = report
    for key in (
        "config",
        "mvsim_version",
        "jax_version",
        "backend",
        "claims",
        "mechanism",
        "timing",
    ):
        assert key in rep
    assert rep["config"]["data"]["k"] == 4 and rep["preset"] == "tiny"
    assert [c["id"] for c in rep["claims"]] == [c.id for c in CLAIMS]
    need = {
        "id",
        "bound",
        "error",
        "error_over_mu",
        "ci95",
        "error_multi_view",
        "error_single_view",
        "n_test_multi",
        "n_test_single",
        "seeds",
        "train_accuracy",
        "verdict",
        "finite_k_prediction",
    }
    for c in rep["claims"]:
        assert need <= set(c), need - set(c)
        assert c["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
        assert c["ci95"][0] <= c["error_over_mu"] <= c["ci95"][1]
        assert set(c["bound"]) == {"lo", "hi"}
    for c in rep["claims"]:
        if c["id"] in ("kd", "self_distillation"):
            assert "control_error_over_mu" in c
            assert {"gained_from_teacher", "gained_neither_had"} <= set(c["view_gains"][0])
    mech = rep["mechanism"]
    v = np.asarray(mech["views_learned"])
    assert v.shape == (3, 4) and set(np.unique(v)) <= {0, 1, 2}
    fr = mech["frac_one_view"] + mech["frac_two_views"] + mech["frac_no_view"]
    assert fr == pytest.approx(1.0)
    assert "total" in rep["timing"]
    figs = sorted(p.name for p in (out / "figures").iterdir())
    assert "claims_vs_bounds.png" in figs and "view_matrix.svg" in figs


def test_verdicts_follow_their_ci(report):
    """No claim PASSes unless its CI sits inside its bound (and the models fit Z)."""
    rep, _ = report
    for c in rep["claims"]:
        lo, hi = c["bound"]["lo"], c["bound"]["hi"]
        if c["verdict"] == "PASS":
            assert lo is None or c["ci95"][0] > lo
            assert hi is None or c["ci95"][1] < hi
            assert min(c["train_accuracy"]) == 1.0


def test_single_model_learns_about_one_view_per_class(report):
    """On tiny, the lottery happens: most classes learn exactly one view, and the
    larger initial alignment predicts which one."""
    rep, _ = report
    mech = rep["mechanism"]
    assert mech["frac_one_view"] >= 0.5
    assert mech["lottery_prediction_accuracy"] >= 0.75


@pytest.mark.parametrize(
    "argv, field",
    [
        (["--set", "k=0"], "k"),
        (["--set", "mu=1.5"], "mu"),
        (["--set", "nonsense=1"], "nonsense"),
        (["--set", "k"], "k"),
        (["--preset", "nope"], "preset"),
        (["--claims", "single,bogus"], "--claims"),
        (["--set", "horizon=0"], "horizon"),  # a horizon of 0
        (["--set", "horizon=5000"], "horizon"),  # beyond the singles' cap T = 2000
        (["--set", "kd_T=300", "--set", "horizon=400"], "horizon"),  # beyond the students'
        (["--set", "n_log=1"], "n_log"),  # a time grid of fewer than 2 points
    ],
)
def test_bad_input_fails_before_compute(argv, field, capsys):
    rc = cli.main(
        ["verify", "--preset", "tiny", *argv] if "--preset" not in argv else ["verify", *argv]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert field in err


def test_sample_command_exports_npz(tmp_path):
    import numpy as np

    out = tmp_path / "d.npz"
    rc = cli.main(
        ["sample", "--preset", "tiny", "--n", "50", "--view", "single", "--out", str(out)]
    )
    assert rc == 0
    z = np.load(out)
    assert z["x"].shape == (50, 8, 64) and z["single_view"].all()
    rec = np.einsum("npkl,kld->npd", z["coef"], z["features"]) + z["noise"]
    np.testing.assert_allclose(rec, z["x"], atol=1e-5)
    assert json.loads(str(z["config"]))["data"]["k"] == 4


def test_presets_command(capsys):
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "theory" in out and "sigma_0" in out


def test_untuned_regime_is_reported_not_passed():
    """Isotropic noise of norm 0.8 on every patch feeds the losing view (feasibility
    study 1): the lottery breaks, so `single` must not PASS and the view statistics
    must show the two-view classes that explain it."""
    from mvsim import claims, verify
    from mvsim.config import make_config

    cfg = make_config(
        "tiny", {"project_noise": False, "sigma_p": 0.1, "sigma_n": 0.1, "n_test_single": 1000}
    )
    m = verify.run(cfg, claims=["single"], progress=False)
    (res,) = claims.evaluate_all(m, ["single"])
    assert res.verdict.name != "PASS"
    assert claims.mechanism(m)["frac_two_views"] >= 0.25


def test_report_carries_the_mechanism_figures_data(report):
    """The lottery, memorisation and distilled-views figures read only report.json: the
    report carries each model's views, the initial alignments and every memorisation
    point, consistent with the summary it prints."""
    rep, out = report
    mech = rep["mechanism"]
    K, k = 3, 4
    assert np.asarray(mech["init_alignment"]).shape == (K, k, 2)
    views = {n: np.asarray(v) for n, v in mech["views"].items()}
    assert views["single"].shape == (K, k, 2)
    np.testing.assert_array_equal(views["single"].sum(-1), mech["views_learned"])
    assert {"kd", "self_distillation", "control"} <= set(views)
    pts = mech["memorisation"]["points"]
    n_sv = round(rep["config"]["data"]["mu"] * rep["config"]["data"]["N"])
    assert all(len(v) == K * n_sv for v in pts.values())
    learned = np.asarray(pts["strong_view_learned"])
    np.testing.assert_array_equal(
        learned, views["single"][pts["seed"], pts["y"], pts["strong_view"]].astype(bool)
    )
    unl = mech["memorisation"].get("unlearned_strong_view")
    assert (unl["n_points"] if unl else 0) == (~learned).sum()
    figs = {p.stem for p in (out / "figures").iterdir()}
    assert {"alignment_phases", "lottery", "memorisation", "self_distillation_views"} <= figs


# --- several configs through one batched pipeline --------------------------------------------

_SMALL = {"T": 300, "kd_T": 100, "n_test_multi": 2000, "n_test_single": 2000, "seeds": 3,
          "kd_students": 2}  # fmt: skip


# Slow (≈ 90 s on 2 cores): the default run checks the same equivalence on stored numbers,
# test_sweep.py::test_batched_sweep_stores_the_numbers_of_the_one_by_one_sweep.
@pytest.mark.slow
def test_run_many_gives_each_point_what_run_gives_it():
    """Two points differing in μ, σ_0 and η through every stage at once: every model's
    errors on every test point, the stop steps and the learned views are those of the
    point run alone."""
    from mvsim import verify
    from mvsim.config import make_config

    cfgs = [
        make_config("tiny", {**_SMALL, "mu": 0.05}),
        make_config("tiny", {**_SMALL, "mu": 0.2, "sigma_0": 0.05, "eta": 0.5}),
    ]
    assert len({verify.batch_key(c) for c in cfgs}) == 1
    together = verify.run_many(cfgs, progress=False)
    for c, m in zip(cfgs, together, strict=True):
        alone = verify.run(c, progress=False)
        assert m.cfg == c and m.timing["batch_points"] == 2
        assert set(m.groups) == set(alone.groups)
        for name, g in alone.groups.items():
            h = m.groups[name]
            np.testing.assert_array_equal(h.errors_multi, g.errors_multi, err_msg=name)
            np.testing.assert_array_equal(h.errors_single, g.errors_single, err_msg=name)
            for attr in ("steps", "views"):
                if getattr(g, attr) is not None:
                    np.testing.assert_array_equal(getattr(h, attr), getattr(g, attr))
            for key in ("errors_multi", "errors_single", "train_accuracy", "view_correct"):
                np.testing.assert_array_equal(h.curve[key], g.curve[key], err_msg=(name, key))
        np.testing.assert_array_equal(m.test_single_y, alone.test_single_y)
        np.testing.assert_array_equal(m.lottery, alone.lottery)
    wrong = [int(m.groups["single"].errors_single.sum()) for m in together]
    assert len(set(wrong)) == 2, wrong  # the points did differ


def test_the_end_points_blocks_change_no_logit():
    """The end point's pass evaluates a chunk in blocks of verify.EVAL_BLOCK points (for the
    CPU's cache): every model's logits on every point are those of the whole chunk at once
    to float rounding, a remainder block included (XLA's CPU dot may take another path for
    another shape: at tiny's, logits move by a few ulps; at the demo's none does,
    docs/verdicts.md), and no error moves."""
    import jax

    from mvsim import data, learners, verify
    from mvsim.config import make_config

    cfg = make_config("tiny", {})
    D, M = cfg.data, cfg.model
    V = data.features(jax.random.key(0), D.d, D.k)
    b = data.sample(jax.random.key(1), D, 2 * verify.EVAL_BLOCK + 37, V, view="multi")
    nets = {"single": learners.network(M, D.k, D.d, D.P),
            "average": learners.averaged(M, D.k, D.d, D.P, 3)}  # fmt: skip
    params = {n: jax.vmap(jax.vmap(net.init))(jax.random.split(jax.random.key(2), (2, 3)))
              for n, net in nets.items()}  # fmt: skip
    params = jax.tree.map(lambda w: w * 20, params)  # grown weights: some points right
    got = verify._errs_fn(tuple((n, net.apply) for n, net in nets.items()))(params, b.x, b.y)
    each = lambda f: jax.jit(jax.vmap(jax.vmap(f, in_axes=(0, None)), in_axes=(0, None)))
    for n, net in nets.items():
        whole = np.asarray(each(net.apply)(params[n], b.x))
        blocks = np.asarray(each(verify.blocked(net.apply, verify.EVAL_BLOCK))(params[n], b.x))
        scale = np.abs(whole).max()  # rounding: a few float32 ulps of the largest logit
        np.testing.assert_allclose(blocks, whole, rtol=0, atol=1e-6 * scale, err_msg=n)
        few = [each(f)(params[n], b.x[:37]) for f in (net.apply, verify.blocked(net.apply, 512))]
        np.testing.assert_array_equal(*map(np.asarray, few))  # < a block: one call
        wrong = ~np.asarray(jax.vmap(jax.vmap(lambda lg: verify.correct(lg, b.y)))(whole))
        np.testing.assert_array_equal(np.asarray(got[n]), wrong, err_msg=n)
        assert 0 < wrong.mean() < 1, n  # some right, some wrong


def test_test_sets_do_not_depend_on_the_training_mixture():
    """run_many draws one test set for points that differ only in μ, N or the training
    composition (verify.test_key): this is the fact that makes that exact."""
    import jax

    from mvsim import data, verify
    from mvsim.config import make_config

    a = make_config("tiny", {"mu": 0.05})
    b = make_config("tiny", {"mu": 0.3, "N": 300, "train_composition": "iid"})
    c = make_config("tiny", {"mu": 0.05, "rho": (0.01, 0.02)})
    assert verify.test_key(a) == verify.test_key(b) != verify.test_key(c)
    V = data.features(jax.random.key(0), a.data.d, a.data.k)
    for view in ("multi", "single"):
        xa = next(data.iter_chunks(jax.random.key(1), a.data, 512, V, view))
        xb = next(data.iter_chunks(jax.random.key(1), b.data, 512, V, view))
        for u, v in zip(xa, xb, strict=True):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_run_many_rejects_configs_that_cannot_share_a_call():
    from mvsim import verify
    from mvsim.config import make_config

    with pytest.raises(ValueError, match=r"differ in \['P'\]"):
        verify.run_many([make_config("tiny"), make_config("tiny", {"P": 9})])


# --- exit status -------------------------------------------------------------------------------


def test_strict_exits_1_when_a_claim_fails(capsys):
    """One GD step cannot fit the training set, so `single` FAILs on its precondition:
    the status stays 0 without --strict and is 1 with it. One seed is enough for
    `single` (it used to be rejected)."""
    argv = ["verify", "--preset", "tiny", "--seeds", "1", "--claims", "single", "--set", "T=1",
            "--set", "n_test_multi=200", "--set", "n_test_single=200", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "FAIL" in out and "seeds=1" in out
    assert cli.main([*argv, "--strict"]) == 1
    assert "--strict: FAIL for single" in capsys.readouterr().err


def test_strict_keeps_0_without_a_fail(report, capsys):
    """--strict only reacts to FAIL: a report whose claims all PASS or are INCONCLUSIVE
    keeps status 0 (the decision of cli._strict_status, on the tiny run's claims)."""
    rep, _ = report
    ok = [c for c in rep["claims"] if c["verdict"] != "FAIL"]
    assert cli._strict_status(True, ok) == 0
    failed = [c for c in rep["claims"] if c["verdict"] == "FAIL"]
    assert cli._strict_status(True, rep["claims"]) == (1 if failed else 0)
    assert cli._strict_status(False, rep["claims"]) == 0


# --- verdicts that do not move with the budget ----------------------------------------------


def test_no_trajectory_verdict_moves_when_every_cap_doubles(report, tmp_path):
    """tiny (horizon 500) against tiny with every cap doubled: the singles' T (2000 → 4000),
    the students' (500 → 1000) and the solver's step cap. The trajectory reading looks at
    t ≤ 500 only, whose recorded times and dynamics the caps do not touch, so none of its
    verdicts moves, KD's and self-distillation's mechanism in time included; end-point
    verdicts may (tiny's students are far from any limit at 500 steps)."""
    from mvsim import claims, verify
    from mvsim import report as report_mod
    from mvsim.config import make_config

    rep, _ = report
    cfg = rep["config"]
    caps = {"T": 2 * cfg["train"]["T"], "kd_T": 1000,
            "flow_max_steps": 2 * cfg["train"]["flow_max_steps"]}  # fmt: skip
    doubled = make_config("tiny", {"horizon": 500, **caps})
    m = verify.run(doubled, progress=False)
    rep2 = json.loads(json.dumps(report_mod.build(m, claims.evaluate_all(m)),
                                 default=report_mod.json_default))  # fmt: skip
    assert cfg["verify"]["horizon"] == rep2["config"]["verify"]["horizon"] == 500
    for a, b in zip(rep["claims"], rep2["claims"], strict=True):
        ta, tb = a["trajectory"], b["trajectory"]
        assert (ta["verdict"], ta["level_verdict"]) == (tb["verdict"], tb["level_verdict"]), a["id"]
        if "mechanism" in ta:
            for level, pa in ta["mechanism"]["times"].items():
                assert pa["verdict"] == tb["mechanism"]["times"][level]["verdict"], (a["id"], level)
        np.testing.assert_allclose(ta["fraction_at_level"], tb["fraction_at_level"], atol=0.02)
    # the reason: the error curves up to the horizon are the same (the last point is where
    # the shorter run's solver clipped its final step). Not the students': their teachers
    # are the singles at their end, which moves for a single still running at T = 2000.
    for name in ("single", "ensemble", "training_average"):
        ca, cb = rep["curves"]["groups"][name], rep2["curves"]["groups"][name]
        t = np.asarray(ca["steps"])
        assert t[t <= 500].tolist() == [s for s in cb["steps"] if s <= 500], name
        for key in ("errors_single", "errors_multi"):
            a, b = (np.asarray(c[key])[:, : (t <= 500).sum()] for c in (ca, cb))
            np.testing.assert_array_equal(a[:, :-1], b[:, :-1], err_msg=(name, key))
            assert np.abs(a[:, -1] - b[:, -1]).max() <= 0.01 * ca["n_single"], (name, key)


# --- progress (issue 28) ---------------------------------------------------------------------

TRAINING_STAGES = ("3 single models", "6 distilled students", "training-average models")


def test_each_training_stage_reports_before_its_end(tiny_run):
    """The tiny run's progress (conftest: display on, a non-terminal stderr, a fake clock
    that lets every report through): each training stage's bar moves while its flow solve
    runs, with the flow meter's postfix, after naming its compile, and ends on one line
    with its time. The test sets advance chunk by chunk."""
    events, err = tiny_run["events"], tiny_run["stderr"]
    for name in (*TRAINING_STAGES, "test sets (4,000 points)"):
        mine = [e for e in events if e.stage == name]
        kinds = [e.kind for e in mine]
        assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("end") == 1, name
        inside = [e for e in mine if e.kind == "update" and 0 < e.n < e.total]
        assert inside, f"{name}: no report between its start and its end"
        assert max(e.t for e in inside) < mine[-1].t
    for name in TRAINING_STAGES:
        mine = [e for e in events if e.stage == name]
        notes = [i for i, e in enumerate(mine) if e.kind == "note"]
        first = next(i for i, e in enumerate(mine) if e.kind == "update")
        assert notes and notes[0] < first  # XLA compiled the solver before its first step
        assert mine[notes[0]].text == "compiling the flow solver (once per shape)"
        assert any("grads/model" in e.text and "done" in e.text for e in mine[first:])
        # ... and what a log shows: periodic lines with the step reached, then the end line
        lines = [ln for ln in err.splitlines() if ln.startswith(f"{name}: ")]
        steps = [re.match(rf"{name}: ([\d,]+)/([\d,]+) steps", ln) for ln in lines]
        assert any(m and 0 < int(m[1].replace(",", "")) < int(m[2].replace(",", "")) for m in steps)
        end = rf"{name}: .+ \(compiling .+\); stopped at step .+ gradient evaluations per model"
        assert re.fullmatch(end, lines[-1]), lines[-1]
    assert "sampling the training set: " in err
    assert "\r" not in err  # a log gets lines, not a bar's carriage returns


def test_no_progress_prints_one_line_per_stage(capsys):
    """--no-progress: one line per stage with its time on stderr, nothing in between, and
    the flow compiled without its meter (no report from inside the solve)."""
    from mvsim import progress

    argv = ["verify", "--preset", "tiny", "--seeds", "1", "--claims", "single", "--set", "T=1",
            "--set", "n_test_multi=200", "--set", "n_test_single=200", "--no-progress"]  # fmt: skip
    with progress.recording() as events:
        assert cli.main(argv) == 0  # the run of test_strict_exits_1_when_a_claim_fails
    err = capsys.readouterr().err.splitlines()
    stages = ["sampling the training set", "1 single models", "test sets (400 points)"]
    assert [ln.split(": ")[0] for ln in err] == stages, err
    assert all(re.fullmatch(r".+: (\d+\.\d s|\d+ min \d\d s).*", ln) for ln in err), err
    assert [e.n for e in events if e.stage == "1 single models" and e.kind == "update"] == [1]
