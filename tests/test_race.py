"""The race lever map (mvsim experiment race): validation before compute, the store's
resume, the report's rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mvsim import cli, race_probe
from mvsim.config import ConfigError
from mvsim.experiments import race

# A point of a few seconds: tiny's 4 classes, 2 seeds, a short budget, small test sets.
TINY = {"seeds": 2, "n_test_multi": 200, "n_test_single": 200}


@pytest.mark.parametrize(
    ("items", "field"),
    [
        (["qq=3,4"], "qq"),  # not a lever
        (["single_per_view=0"], "single_per_view"),  # a count must be ≥ 1
        (["single_per_view=two"], "single_per_view"),
        (["m=0"], "m"),  # the config's own range
        (["sigma_0=-0.1"], "sigma_0"),
        (["q=1"], "q"),  # the race needs q ≥ 2
        (["own_z=(2,1)"], "own_z"),  # lo > hi
    ],
)
def test_bad_lever_rejected_before_compute_naming_the_field(items, field, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("trained before validating")

    monkeypatch.setattr(race_probe, "run_point", boom)
    with pytest.raises(ConfigError) as e:
        race.points(race.parse_levers(items), TINY, preset="tiny")
    assert e.value.field == field


def test_cli_bad_lever_exits_2_naming_it(tmp_path, capsys):
    argv = ["experiment", "race", "--preset", "tiny", "--levers", "sigma_n=-1",
            "--store", str(tmp_path / "s.sqlite")]  # fmt: skip
    assert cli.main(argv) == 2
    assert "sigma_n" in capsys.readouterr().err
    assert not (tmp_path / "s.sqlite").exists()


def test_a_lever_fixed_by_set_is_an_error():
    with pytest.raises(ConfigError, match="give it with --levers") as e:
        race.points({"m": (1, 2)}, {"m": 3}, preset="tiny")
    assert e.value.field == "m"


def test_composition_levers_set_n_and_mu():
    pts = race.points({"single_per_view": (1, 3), "multi_per_class": (10,)}, TINY,
                      preset="tiny", checks=False)  # fmt: skip
    by = {(p.lever, p.value): p.point.cfg.data for p in pts}
    k = 4  # tiny: 30 multi-view points per class, one single-view point per (class, view)
    assert by["single_per_view", 1].N == 30 * k + 2 * k
    three = by["single_per_view", 3]
    assert three.N == 30 * k + 6 * k and round(three.mu * three.N) == 6 * k
    ten = by["multi_per_class", 10]
    assert ten.N == 10 * k + 2 * k and round(ten.mu * ten.N) == 2 * k


def test_budget_follows_the_plateau():
    """T scales with the winner's plateau (σ_0^{2−q}) where it lengthens, never below the
    preset's."""
    pts = race.points({"sigma_0": (0.15, 0.075, 0.3)}, TINY, preset="tiny", checks=False)
    T = {p.value: p.point.cfg.train.T for p in pts}
    assert T[0.3] == T[0.15] == 2000  # tiny's
    assert T[0.075] == pytest.approx(2000 * 4, rel=0.05)  # (0.15/0.075)² at q = 4
    fixed = race.points({"sigma_0": (0.075,)}, {**TINY, "T": 300}, preset="tiny", checks=False)
    assert fixed[0].point.cfg.train.T == 300  # a T the user set is kept


def test_checks_rerun_the_ends_tighter_on_the_first_seeds():
    pts = race.points({"m": (1, 2, 3)}, {**TINY, "seeds": 3}, preset="tiny")
    checks = [p for p in pts if p.kind == "check"]
    assert [p.value for p in checks] == [1, 3]
    for p in checks:
        assert p.point.cfg.verify.seeds == race.CHECK_SEEDS - 1  # min(CHECK_SEEDS, seeds)
        assert p.point.cfg.train.flow_rtol == pytest.approx(0.1)


FIXTURE = Path(__file__).parent / "data" / "race_point_tiny.json"


def _resume(store: Path, monkeypatch, run_point) -> tuple[dict, dict, list]:
    """Run one lever point into ``store`` twice with ``run_point`` as the trainer: the
    first run's and the second's reports, and the configs the trainer was called with."""
    calls: list = []

    def counted(cfg, claims):
        calls.append(cfg)
        return run_point(cfg, claims)

    monkeypatch.setattr(race_probe, "run_point", counted)
    kw = dict(store=store, preset="tiny", checks=False, log=lambda s: None)
    first = race.run({"m": (2,)}, TINY, **kw)
    second = race.run({"m": (2,)}, TINY, **kw)
    return first, second, calls


def test_writes_and_resumes_its_store(tmp_path, monkeypatch):
    """The point goes to the store in one transaction; a rerun trains nothing and reads
    the same report back. The trainer's output is a recorded tiny run
    (tests/data/race_point_tiny.json; the real trainer: the slow test below)."""
    recorded = lambda cfg, claims: json.loads(FIXTURE.read_text())
    first, second, calls = _resume(tmp_path / "race.sqlite", monkeypatch, recorded)
    assert len(calls) == 1
    assert json.dumps(second["rows"], default=str) == json.dumps(first["rows"], default=str)
    (row,) = first["rows"]
    assert row["lever"] == "m" and row["value"] == 2 and row["seeds"] == 2
    for key in ("frac_two_view", "frac_two_view_lo", "r50", "race_curve", "error_over_mu",
                "e_multi", "escape_q50", "memorised_last", "loser_at_escape_one",
                "push_over_need_one", "fitted_share"):  # fmt: skip
        assert key in row
    assert race.table(second).startswith("mvsim experiment race")


@pytest.mark.slow
def test_writes_and_resumes_its_store_trained(tmp_path, monkeypatch):
    """The same with the real trainer: one tiny point trained with the probe."""
    first, second, calls = _resume(tmp_path / "race.sqlite", monkeypatch, race_probe.run_point)
    assert len(calls) == 1
    (row,) = second["rows"]
    assert row["classes"] + 4 * row["seeds_unfitted"] == 8
    assert row["seeds_unfitted"] < 2  # tiny's budget fits a seed: the race is read off it
    assert set(row["race"]) == {"escape_step", "loser_at_escape", "push_over_need", "two"}


def test_probe_statistics_follow_the_tensor_power_law():
    """A synthetic race: the loser's alignment at the winner's escape is read off the record
    and the push integrates its loss factors."""
    steps = np.array([0, 10, 20, 30])
    lam = np.zeros((1, 4, 1, 1, 2))
    lam[0, :, 0, 0, 0] = [0.1, 0.5, 1.5, 3.0]  # view 0 escapes at step 20
    lam[0, :, 0, 0, 1] = [0.05, 0.06, 0.08, 0.1]
    margin = np.zeros((1, 4, 2))  # loss factor 1/2 for both points, all along
    hist = {"align": lam, "margin": margin, "sv_correct": np.array([[[-1.0], [-1], [1], [1]]])}
    y, single, strong = np.array([0, 0]), np.array([False, True]), np.array([-1, 1])
    zsum = np.ones((2, 1, 2))
    out = race_probe.race_statistics(steps, hist, y, single, strong, zsum, varrho=1.0, q=4,
                                     eta=2.0, N=2)  # fmt: skip
    assert out["escape_step"] == [[20]] and out["winner"] == [[0]]
    assert 0.06 < out["loser_at_escape"][0][0] < 0.08
    # From the escape (t = 40) to the end (t = 60): ∫ (1/N)·(1/2) dt = 5 for each point.
    assert out["push_multi"][0][0] == pytest.approx(5.0)
    assert out["push_single"][0][0] == pytest.approx(5.0)
    assert out["memorised_step"] == [[20]]


def test_report_only_trains_nothing_and_lists_what_is_not_run(tmp_path, monkeypatch):
    """--report-only on a store that lacks a point reports it as not run (no training);
    once the point is stored, the same call reads its row back."""
    store = tmp_path / "race.sqlite"

    def boom(*a, **k):
        raise AssertionError("--report-only trained a point")

    monkeypatch.setattr(race_probe, "run_point", boom)
    kw = dict(store=store, preset="tiny", checks=False, log=lambda s: None)
    empty = race.run({"m": (2,)}, TINY, train=False, **kw)
    assert empty["rows"] == [] and [r["lever"] for r in empty["not_run"]] == ["m"]
    assert "not run" in race.table(empty)
    monkeypatch.setattr(race_probe, "run_point", lambda c, i: json.loads(FIXTURE.read_text()))
    race.run({"m": (2,)}, TINY, **kw)
    monkeypatch.setattr(race_probe, "run_point", boom)
    full = race.run({"m": (2,)}, TINY, train=False, **kw)
    assert full["not_run"] == [] and len(full["rows"]) == 1


def test_cli_report_only_is_for_race_only(capsys):
    assert cli.main(["experiment", "dropping", "--preset", "tiny", "--report-only"]) == 2
    assert "--report-only" in capsys.readouterr().err


def test_markdown_tables_are_the_reports_rows(tmp_path, monkeypatch):
    """The markdown form (docs/race.md's tables) shows every distinct map point once, the
    shared centre first, with the report's own numbers; ``experiments.write`` saves it."""
    from mvsim import experiments

    monkeypatch.setattr(race_probe, "run_point", lambda c, i: json.loads(FIXTURE.read_text()))
    kw = dict(store=tmp_path / "race.sqlite", preset="tiny", checks=False, log=lambda s: None)
    rep = race.run({"m": (2,)}, TINY, **kw)
    md = race.markdown(rep)
    lines = [ln for ln in md.splitlines() if ln.startswith("| m | 2 |")]
    (row,) = rep["rows"]
    assert len(lines) == 1 and f"| {row['frac_two_view']:.3f} [" in lines[0]
    experiments.write(rep, tmp_path / "out", lambda r, p: [])
    assert (tmp_path / "out" / "tables.md").read_text(encoding="utf-8") == md


def test_markdown_puts_the_shared_centre_first_once():
    rep = json.loads((Path(__file__).parents[1] / "docs" / "race" / "report.json").read_text())
    md = race.markdown(rep)
    body = md.split("\n\n")[1].splitlines()[2:]
    assert body[0].startswith("| **demo** |")
    assert len(body) == len({r["hash"] for r in rep["rows"]})
