"""Learners beyond the patch CNN (issue 18): the flax.nnx adapter, training a flax learner
vmapped over seeds, loading a user's module (and rejecting a bad one before any compute),
the behavioural reading of the views against Λ, and the learners experiment on tiny."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from frozendict import frozendict

from mvsim import cli, data, learners, mechanism, verify
from mvsim.config import ConfigError, make_config
from mvsim.train import train

ROOT = Path(__file__).resolve().parents[1]

USER_MODULE = '''
import jax
from flax import nnx


class Net(nnx.Module):
    """A user's learner: a linear map per patch, mean over patches, a linear head."""

    def __init__(self, d, k, *, rngs, width=8):
        self.hidden = nnx.Linear(d, width, rngs=rngs)
        self.out = nnx.Linear(width, k, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.gelu(self.hidden(x)).mean(1))


class WrongShape(Net):
    def __call__(self, x):
        return super().__call__(x)[:, :1]


class WithBatchNorm(nnx.Module):
    def __init__(self, d, k, *, rngs):
        self.bn = nnx.BatchNorm(d, rngs=rngs)
        self.out = nnx.Linear(d, k, rngs=rngs)

    def __call__(self, x):
        return self.out(self.bn(x.mean(1)))
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    """An importable module of user learners; its name."""
    name = "mvsim_test_user_learners"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


# --- the adapter -----------------------------------------------------------------------------


def test_adapter_round_trip(user_module: str) -> None:
    """init's params are the module's own state, apply is calling the module, and merging
    the params back gives that state again: split and merge lose nothing."""
    Net = importlib.import_module(user_module).Net
    net = learners.from_nnx(Net, 6, 3, frozendict(width=5))
    assert learners.from_nnx(Net, 6, 3, frozendict(width=5)) is net  # one jit cache entry
    key = jax.random.key(4)
    params = net.init(key)
    direct = Net(d=6, k=3, rngs=nnx.Rngs(key), width=5)
    same = lambda a, b: jax.tree.map(np.testing.assert_array_equal, a, b)
    same(params, nnx.to_pure_dict(nnx.state(direct)))
    x = jax.random.normal(jax.random.key(1), (7, 4, 6))
    np.testing.assert_array_equal(net.apply(params, x), direct(x))
    same(nnx.to_pure_dict(nnx.state(nnx.merge(nnx.graphdef(direct), params))), params)
    # vmapped over keys, init draws what it draws key by key
    keys = jax.random.split(key, 3)
    stacked = jax.vmap(net.init)(keys)
    same(jax.tree.map(lambda a: a[2], stacked), net.init(keys[2]))


# --- training a flax learner -----------------------------------------------------------------

S = 3
# As tests/test_train.py's W_TOL: the same GD path computed vmapped and one seed alone
# rounds differently by ~eps32 relative per step; over ≤ 30 steps of weights ≤ ~3 that is
# ≤ 30 · 1.2e-7 · 3 ≈ 1e-5 without cancellation (the flow's steps are more, its tolerance
# the same: they stop on the same fitted training set).
W_TOL = 1e-4


@functools.cache
def _setup():
    """tiny's training set and views, an MLP of width 16, 3 inits."""
    cfg = make_config("tiny", {"learner": "mlp", "mlp_width": 16})
    D = cfg.data
    V = data.features(verify.stream(cfg, "features"), D.d, D.k)
    ts = data.training_set(verify.stream(cfg, "data"), D, V)
    net = learners.network(cfg.model, D.k, D.d, D.P)
    inits = jax.vmap(net.init)(jax.random.split(verify.stream(cfg, "init"), S))
    return cfg, V, ts.x, ts.y, net, inits


@pytest.mark.parametrize("integrator", ["gd", "flow"])
def test_vmap_over_seeds_equals_separate_runs(integrator: str) -> None:
    cfg, V, x, y, net, inits = _setup()
    tc = dataclasses.replace(cfg.train, integrator=integrator, T=30, eta=0.5)
    r = train(None, net, x, y, V, tc, init_params=inits)
    assert r.alignment.shape[-1] == 0  # no Λ recorded for a learner without one
    assert len(set(np.round(r.final_loss, 6).tolist())) == S  # the seeds really differ
    for s in range(S):
        seed = functools.partial(lambda s, a: a[s : s + 1], s)
        one = train(None, net, x, y, V, tc, init_params=jax.tree.map(seed, inits))
        # GD: the same step count exactly; the flow: its stop located to bisection rtol
        np.testing.assert_allclose(one.stop_step[0], r.stop_step[s], rtol=1e-3)
        for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(r.params), strict=True):
            np.testing.assert_allclose(a[0], b[s], rtol=0, atol=W_TOL)


# --- loading a user's module, and rejecting a bad one ---------------------------------------


def _cfg(learner: str, **kw):
    return make_config("tiny", {"learner": learner, **kw})


def _check(cfg) -> None:
    learners.check(cfg.model, cfg.data.k, cfg.data.d, cfg.data.P)


def test_a_user_module_is_loaded_with_its_kwargs(user_module: str) -> None:
    cfg = _cfg(f"{user_module}:Net", learner_kwargs={"width": 3})
    _check(cfg)
    params = jax.eval_shape(learners.network(cfg.model, 4, 64, 8).init, jax.random.key(0))
    assert params["hidden"]["kernel"].shape == (64, 3)
    assert json.loads(cfg.to_json())["model"]["learner_kwargs"] == {"width": 3}


@pytest.mark.parametrize(
    "learner, kwargs, field, fragments",
    [
        ("no_such_pkg.models:Net", {}, "learner", ["no_such_pkg.models:Net", "cannot import"]),
        ("{mod}:Missing", {}, "learner", ["{mod}:Missing", "no attribute 'Missing'"]),
        ("{mod}:WrongShape", {}, "learner", ["{mod}:WrongShape", "(2, 1)", "(n, k) = (2, 4)"]),
        ("{mod}:WithBatchNorm", {}, "learner", ["BatchStat", "not an nnx.Param"]),
        ("{mod}:Net", {"depth": 2}, "learner_kwargs", ["depth", "TypeError"]),
    ],
)  # fmt: skip
def test_a_bad_learner_is_rejected_naming_the_path_and_shape(
    user_module: str, learner: str, kwargs: dict, field: str, fragments: list[str]
) -> None:
    cfg = _cfg(learner.format(mod=user_module), learner_kwargs=kwargs)
    with pytest.raises(ConfigError) as info:
        _check(cfg)
    assert info.value.field == field
    for f in fragments:
        assert f.format(mod=user_module) in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "overrides, field",
    [({"learner": "not a path"}, "learner"), ({"learner": "vit", "vit_heads": 3}, "vit_heads"),
     ({"learner": "mlp", "learner_kwargs": {"w": 1}}, "learner_kwargs"),
     ({"learner": "a.b:C", "learner_kwargs": {"k": 1}}, "learner_kwargs")],
)  # fmt: skip
def test_bad_learner_fields_are_config_errors(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config("tiny", overrides)
    assert info.value.field == field


def test_cli_rejects_a_bad_learner_before_any_compute(user_module, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    for argv in (["verify", "--learner", f"{user_module}:WrongShape"],
                 ["experiment", "learners", "--learner", "no_such_pkg:Net"],
                 ["verify", "--learner", "vit", "--ntk"]):  # fmt: skip
        assert cli.main([*argv, "--preset", "tiny", "--out", str(out), "--no-progress"]) == 2
        assert not out.exists()
    err = capsys.readouterr().err
    assert f"'{user_module}:WrongShape'" in err and "(2, 1)" in err
    assert "'no_such_pkg:Net'" in err and "--ntk" in err


# --- views from behaviour --------------------------------------------------------------------


def test_view_accuracy_counts_each_class_and_strong_view() -> None:
    errors = np.array([[False, True, False, False, True], [True, True, True, False, False]])
    y, strong = np.array([0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 0])
    acc = mechanism.view_accuracy(errors, y, strong, k=2)
    np.testing.assert_array_equal(acc[0], [[0.5, np.nan], [0.0, 1.0]])
    np.testing.assert_array_equal(acc[1], [[0.0, np.nan], [1.0, 0.5]])
    views = mechanism.behavioural_views(acc, 0.9)
    assert views.tolist() == [[[False, False], [False, True]], [[False, False], [True, False]]]


def test_behaviour_and_weights_agree_on_the_tiny_patch_cnn(tiny_verify) -> None:
    """Every single model and student of `mvsim verify --preset tiny` learned, by its
    accuracy on a view's single-view test points (≥ view_accuracy = 0.9), exactly the
    views Λ ≥ ϱ/2 says. The gap is the theory's: a learned view's points are all right,
    an unlearned one's only when no noisy feature is a learned view of another class,
    ≈ (1 − s/k)^L = (1 − 1.5/4)^3 ≈ 0.24 at tiny. (A training average's Λ views are the
    union of its members', which the mean of their outputs need not express: it is
    reported, not required.)"""
    rep, _ = tiny_verify
    mech = rep["mechanism"]
    assert mech["view_analysis"] == "weights"
    for group in ("single", "kd", "self_distillation", "control"):
        views = np.asarray(mech["views"][group], bool)
        acc = np.asarray(mech["view_accuracy"][group], float)
        assert views.any() and not views.all()  # both kinds of cell are there to compare
        np.testing.assert_array_equal(mechanism.behavioural_views(acc, 0.9), views, group)
        assert mech["view_agreement"][group]["differ"] == []


# --- the experiment --------------------------------------------------------------------------


def test_each_learner_gets_its_derived_eta_and_kd_objective() -> None:
    """The presets give a flax learner η = 0.5 and Hinton's objective (the paper's update
    has no limit for it), the patch CNN (2/3)ϱk and the paper's update; the experiment
    re-derives both per learner, but a field set by hand holds for every learner."""
    from mvsim.experiments import learners as exp

    assert make_config("demo", {"learner": "vit"}).distill.kd_objective == "hinton"
    assert make_config("demo").distill.kd_objective == "paper"
    got = {c.model.learner: (c.train.eta, c.distill.kd_objective)
           for c in exp.configs(make_config("demo"))}  # fmt: skip
    assert got == {"patch_cnn": (pytest.approx(20 / 3), "paper"), "vit": (0.5, "hinton"),
                   "mlp": (0.5, "hinton")}  # fmt: skip
    by_hand = exp.configs(make_config("demo", {"kd_objective": "hinton", "eta": 1.0}))
    assert {(c.train.eta, c.distill.kd_objective) for c in by_hand} == {(1.0, "hinton")}
    mlp_first = exp.configs(make_config("demo", {"learner": "mlp"}), ("patch_cnn",))
    assert mlp_first[0].distill.kd_objective == "paper"


def test_only_the_vits_students_are_capped_at_vit_kd_T() -> None:
    """The ViT's stiff flow caps its students at min(kd_T, vit_kd_T); every other learner
    trains its students for kd_T, whatever vit_kd_T says."""
    budget = lambda learner, **o: learners.student_budget(
        make_config("demo", {"learner": learner, **o}).model, 20_000
    )
    assert budget("vit") == 1000 and budget("vit", vit_kd_T=30_000) == 20_000
    assert budget("patch_cnn", vit_kd_T=5) == budget("mlp", vit_kd_T=5) == 20_000
    with pytest.raises(ConfigError) as info:
        make_config("demo", {"learner": "vit", "vit_kd_T": 0})
    assert info.value.field == "vit_kd_T"


def test_a_rerun_takes_each_finished_learner_from_its_folder(tmp_path, monkeypatch) -> None:
    """A learner finished in an earlier run of the same config is read back, not trained;
    one whose config differs (here: another seed count) is trained again."""
    from mvsim import store
    from mvsim.experiments import learners as exp

    cfg = make_config("tiny", SMALL)
    (c,) = exp.configs(cfg, ("mlp",))
    part = {"learner": "mlp", "rows": [{"learner": "mlp", "model": "single"}],
            "summary": {"frac_one_view": 0.25}, "seconds": 12.5}  # fmt: skip
    (tmp_path / f"{store.config_hash(c)}.json").write_text(json.dumps(part))
    trained = []
    monkeypatch.setattr(verify, "run", lambda c, **kw: trained.append(c) or 1 / 0)
    rep = exp.run(cfg, learners=("mlp",), progress=False, done=tmp_path)
    assert (rep["rows"], rep["summary"]["mlp"], rep["timing"]["mlp"]) == (
        part["rows"], part["summary"], 12.5) and not trained  # fmt: skip
    with pytest.raises(ZeroDivisionError):
        exp.run(cfg.replace(seeds=3), learners=("mlp",), progress=False, done=tmp_path)
    assert len(trained) == 1


# Seconds-sized budgets: what is checked is that every stage runs for every learner and
# lands in the report, the table, the figure, report.html and the store.
SMALL = {"seeds": 2, "kd_students": 1, "avg_seeds": 1, "avg_members": 2, "T": 100,
         "kd_T": 20, "exp_n_test_multi": 200, "exp_n_test_single": 400, "mlp_width": 8,
         "vit_dim": 8}  # fmt: skip


def _experiment(tmp_path, learners_: tuple[str, ...]) -> dict:
    from mvsim import store
    from mvsim.experiments import learners as exp
    from mvsim.experiments import write

    rep = exp.run(
        make_config("tiny", SMALL), learners=learners_, progress=False, done=tmp_path / "finished"
    )
    assert len(list((tmp_path / "finished").glob("*.json"))) == len(learners_)
    assert rep["learners"] == list(learners_)
    rows = {(r["learner"], r["model"]) for r in rep["rows"]}
    assert rows == {(lr, m) for lr in learners_ for m in exp.MODELS}
    students = [r["steps_max"] for r in rep["rows"] if r["model"] in ("kd", "control")]
    assert students and max(students) <= SMALL["kd_T"]
    for lr in learners_:
        want = "weights" if lr == "patch_cnn" else "behaviour"
        assert rep["summary"][lr]["view_analysis"] == want and "kd" in rep["summary"][lr]
    text = exp.table(rep)
    assert all(lr in text for lr in learners_) and "vs control" in text
    assert write(rep, tmp_path, exp.figure) and (tmp_path / "report.html").is_file()
    assert store.write_experiment(tmp_path / "s.sqlite", rep) == len(rep["rows"])
    assert len(store.read_experiments(tmp_path / "s.sqlite", "learners")) == len(rep["rows"])
    return rep


@pytest.mark.slow
def test_learners_experiment_runs_on_tiny(tmp_path) -> None:
    """The cheapest learner through the whole experiment (measured 40 s of CPU on tiny,
    over the default run's budget: its pieces are checked there by the tests above)."""
    _experiment(tmp_path, ("mlp",))


@pytest.mark.slow
def test_learners_experiment_runs_every_learner_on_tiny(tmp_path) -> None:
    rep = _experiment(tmp_path, ("patch_cnn", "vit", "mlp"))
    assert "view_agreement" in rep["summary"]["patch_cnn"]


@pytest.mark.slow
def test_gpu_script_learners_quick_on_cpu(tmp_path) -> None:
    """benchmarks/gpu.sh's learners part, in its --quick form, runs on the CPU and leaves
    the experiment's report beside the JSON it was given."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable}
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--quick", "--part", "learners",
           str(tmp_path / "gpu.json")]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rep = json.loads((tmp_path / "learners" / "report.json").read_text())
    assert rep["learners"] == ["patch_cnn", "vit", "mlp"]
