"""Sweeps: grid parsing and its errors, the store's schema and exports, resume after a
SIGKILL (and the CLI's persistent compilation cache), the figures, sharded = unsharded
training on 4 forced host devices, and the points as tasks of a Dask LocalCluster of 2
workers: the same numbers as the local executor, a worker or the driver killed, a
diverging point, a mismatched worker."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mvsim import cli, store, sweep
from mvsim.config import Config, ConfigError, make_config

ROOT = Path(__file__).resolve().parents[1]

# A tiny sweep: short training and small test sets, so a point takes seconds. (At most
# 2000 solver steps a model: the diverging point of the Dask tests reaches it in a second.)
FIXED = ["T=300", "n_test_multi=500", "n_test_single=500", "seeds=2", "kd_students=2",
         "flow_max_steps=2000"]  # fmt: skip
GRID = ["mu=0.05,0.1,0.2"]
CLAIMS = "single,ensemble"


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _sweep_cmd(db: Path) -> list[str]:
    cmd = [sys.executable, "-m", "mvsim.cli", "sweep", "--preset", "tiny", "--store", str(db)]
    cmd += ["--claims", CLAIMS, "--no-progress"]
    for g in GRID:
        cmd += ["--grid", g]
    for s in FIXED:
        cmd += ["--set", s]
    return cmd


# --- grid parsing -----------------------------------------------------------------------


def test_grid_product_and_types() -> None:
    grid = sweep.parse_grid(["k=4,5", "mu=0.05,0.1,0.2", "rho=(0.01,0.02),(0.02,0.04)"])
    assert grid == {"k": [4, 5], "mu": [0.05, 0.1, 0.2], "rho": [(0.01, 0.02), (0.02, 0.04)]}
    assert sweep.parse_grid(["rho=0.01,0.02;0.02,0.04"])["rho"] == [(0.01, 0.02), (0.02, 0.04)]
    assert sweep.parse_grid(["data.mu=0.1"]) == {"mu": [0.1]}  # section.field, as --set
    points = sweep.build_points("tiny", {"T": 10}, grid)
    assert len(points) == 2 * 3 * 2
    assert len({p.hash for p in points}) == len(points)
    for p in points:
        assert p.cfg.train.T == 10
        assert p.cfg.data.k == p.values["k"] and p.cfg.data.mu == p.values["mu"]
        assert p.cfg.data.N == 32 * p.values["k"]  # the preset derives N from the swept k
        assert p.hash == store.config_hash(p.cfg)


def test_grid_file(tmp_path: Path) -> None:
    f = tmp_path / "grid.toml"
    f.write_text("[grid]\nmu = [0.05, 0.1]\nP = [8, 10]\nGamma = [[0.05, 0.1], [0.1, 0.2]]\n")
    grid = sweep.load_grid(f)
    assert grid == {"mu": [0.05, 0.1], "P": [8, 10], "Gamma": [(0.05, 0.1), (0.1, 0.2)]}
    j = tmp_path / "grid.json"
    j.write_text(json.dumps({"eta": [1, 2]}))
    assert sweep.load_grid(j) == {"eta": [1.0, 2.0]}
    with pytest.raises(ConfigError, match="'mu'.*given twice"):
        sweep.merge_grids(grid, {"mu": [0.2]})


# (grid items, field the error must name, fragment of the message)
BAD_GRIDS = [
    (["kk=1,2"], "kk", "unknown config field"),
    (["mu=0.1,abc"], "mu", "cannot parse as float"),
    (["mu=0.1,1.5"], "mu", "[0.0, 1.0]"),  # out of range: found when the points are built
    (["k=4,2.5"], "k", "cannot parse as int"),
    (["mu="], "mu", "empty value"),
    (["mu=0.1,,0.2"], "mu", "empty value"),
    (["mu=0.1,0.1"], "mu", "distinct"),
    (["mu=0.1", "mu=0.2"], "mu", "given twice"),
    (["rho=0.01,0.02"], "rho", "pair field"),
    (["P=7,8"], "P", "C_p·(2 + max_noisy)"),  # a combination the config rejects
    # C_p = 2 needs P ≥ 16, and tiny's P is 8: names C_p, the field the grid set, and the point
    (["C_p=1,2"], "C_p", "P = 8 (the preset's, not set by you) invalid"),
    (["mu"], "mu", "field=v1,v2"),
]


@pytest.mark.parametrize(("items", "field", "fragment"), BAD_GRIDS)
def test_bad_grid_rejected_before_compute(items, field, fragment) -> None:
    with pytest.raises(ConfigError) as e:
        sweep.build_points("tiny", {}, sweep.parse_grid(items))
    assert e.value.field == field and fragment in str(e.value), str(e.value)


def test_empty_grid_and_clashes_rejected() -> None:
    with pytest.raises(ConfigError, match="empty"):
        sweep.build_points("tiny", {}, {})
    with pytest.raises(ConfigError, match="both swept"):
        sweep.build_points("tiny", {"mu": 0.1}, {"mu": [0.1, 0.2]})
    with pytest.raises(ConfigError, match="--claims"):
        sweep.check_claims(["single", "nope"])


def test_cli_rejects_bad_grid_without_touching_the_store(tmp_path: Path, capsys) -> None:
    db = tmp_path / "s.sqlite"
    rc = cli.main(["sweep", "--preset", "tiny", "--grid", "mu=0.1,2", "--store", str(db)])
    assert rc == 2 and "'mu'" in capsys.readouterr().err
    rc = cli.main(["sweep", "--preset", "tiny", "--store", str(db)])
    assert rc == 2 and "grid" in capsys.readouterr().err
    rc = cli.main(["sweep", "--preset", "tiny", "--grid", "mu=0.1", "--batch-points", "0",
                   "--store", str(db)])  # fmt: skip
    assert rc == 2 and "'--batch-points'" in capsys.readouterr().err
    assert not db.exists()


def test_points_are_batched_by_what_they_share() -> None:
    """μ and η points share compiled code and go together (at most n at a time); a P
    point changes shapes and a stored point missing other claims differs in work."""
    from mvsim.verify import batch_key

    pts = sweep.build_points("tiny", {}, {"mu": [0.05, 0.1, 0.2], "eta": [0.5, 1.0]})
    other = sweep.build_points("tiny", {}, {"P": [9]})[0]
    todo = [(p, ["single"]) for p in pts] + [(other, ["single"]), (pts[0], ["single", "kd"])]
    got = sweep.batches(todo, 4)
    assert sorted(len(b) for b in got) == [1, 1, 2, 4]
    for b in got:
        assert len({(batch_key(p.cfg), tuple(m)) for p, m in b}) == 1
    assert sorted(len(b) for b in sweep.batches(todo, 1)) == [1] * 8


def test_config_hash_is_canonical() -> None:
    a = make_config("tiny", {"mu": 0.1, "k": 5})
    b = make_config("tiny", {"k": 5, "mu": 0.1})
    assert store.config_hash(a) == store.config_hash(b)
    assert store.config_hash(a) != store.config_hash(make_config("tiny", {"mu": 0.1}))
    assert store.canonical_json(a) == store.canonical_json(type(a).from_json(a.to_json()))


# --- a sweep killed with SIGKILL, then resumed ------------------------------------------


def _rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(
            "SELECT config_hash, claim, finished_at, error_over_mu FROM results ORDER BY rowid"
        ).fetchall()


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Start the sweep, SIGKILL it as soon as its first point is stored, restart it.
    Returns the store, its rows when first seen, after the kill and at the end, the
    restart's log, the first run's log and the compilation cache folder both used."""
    tmp = tmp_path_factory.mktemp("sweep")
    db = tmp / "s.sqlite"
    # The CLI's own persistent compilation cache (none set by the user: a fresh user cache
    # folder), so the restart reuses the first run's executables, as a user's would; every
    # program is kept, however quick its compile.
    env = _env(XDG_CACHE_HOME=str(tmp / "xdg"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")  # fmt: skip
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    proc = subprocess.Popen(_sweep_cmd(db), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    before: list[tuple] = []
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                before = _rows(db)
            except sqlite3.OperationalError:  # the table is being created
                before = []
            if before:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    log1 = proc.communicate()[0]
    assert before, "the first point was never stored:\n" + log1[-3000:]
    after_kill = _rows(db)
    second = subprocess.run(_sweep_cmd(db), cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    caches = list((tmp / "xdg" / "mvsim").iterdir())
    return db, before, after_kill, _rows(db), second.stdout, log1, caches


def test_resume_after_sigkill_loses_and_repeats_nothing(resumed) -> None:
    db, before, after_kill, after, log, *_ = resumed
    n_points, n_claims = 3, 2
    done = len({r[0] for r in after_kill})
    # Killed mid-sweep: whole points only (both claims of each), and not all of them.
    assert len(after_kill) == done * n_claims and 1 <= done < n_points
    # The restart computed exactly the missing points and reported it.
    assert f"computed {n_points - done} points, skipped {done} already stored" in log
    assert len(after) == n_points * n_claims
    assert len(set((h, c) for h, c, *_ in after)) == len(after)  # no duplicate row
    assert after[: len(after_kill)] == after_kill  # finished rows untouched (same timestamps)
    assert set(after_kill) >= set(before)


def _compile_seconds(log: str) -> list[float]:
    """The compile time of each point in a --no-progress sweep log, in order."""
    return [float(s) for s in re.findall(r"points, .*: [0-9.]+ s, compile ([0-9.]+) s", log)]


def test_the_cli_compilation_cache_serves_the_restart(resumed) -> None:
    """The CLI keeps JAX's persistent compilation cache in the user's cache folder, named
    after the jax and mvsim that wrote it, and the restarted sweep compiles its first
    point in less time than the first run did (read from their own logs)."""
    import jax
    import jaxlib

    from mvsim import __version__
    from mvsim.compilation import source_hash

    *_, log2, log1, caches = resumed
    names = [f"jax-{jax.__version__}", f"jaxlib-{jaxlib.__version__}", f"mvsim-{__version__}"]
    assert [c.name for c in caches] == ["-".join([*names, source_hash()[:12]])]
    assert any(caches[0].iterdir())
    first, again = _compile_seconds(log1)[0], _compile_seconds(log2)[0]
    print(f"first point compiled in {first:.1f} s, after the restart in {again:.1f} s")
    assert again < first, (log1[-2000:], log2[-2000:])


def test_rerun_of_a_finished_sweep_computes_nothing(resumed, capsys) -> None:
    db = resumed[0]
    argv = _sweep_cmd(db)[3:]  # the same command, in process
    assert cli.main(argv) == 0
    assert "computed 0 points, skipped 3 already stored" in capsys.readouterr().out
    assert len(_rows(db)) == 6


def test_batched_sweep_stores_the_numbers_of_the_one_by_one_sweep(resumed, tmp_path) -> None:
    """The resumed sweep ran its points one by one (the CPU default); the same points
    vmapped together in one call store the same numbers."""
    from mvsim.config import parse_set

    db = tmp_path / "b.sqlite"
    points = sweep.build_points("tiny", parse_set(FIXED), sweep.parse_grid(GRID))
    s = sweep.run_sweep(points, db, CLAIMS.split(","), batch_points=3, progress=False,
                        log=lambda _: None)  # fmt: skip
    assert s.computed == 3 and s.rows == 6
    q = "SELECT config_hash, claim, error_over_mu, ci_lo, ci_hi, verdict FROM results"
    with sqlite3.connect(db) as a, sqlite3.connect(resumed[0]) as b:
        assert sorted(a.execute(q).fetchall()) == sorted(b.execute(q).fetchall())
        timing = [
            json.loads(t)["batch_points"] for (t,) in a.execute("SELECT timing_json FROM results")
        ]
    assert timing == [3.0] * 6


def test_store_schema(resumed) -> None:
    db = resumed[0]
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        cols = [r[1] for r in c.execute("PRAGMA table_info(results)")]
        pk = [r[1] for r in sorted(c.execute("PRAGMA table_info(results)"), key=lambda r: r[5])
              if r[5]]  # fmt: skip
    assert cols == list(store.COLUMNS) and pk == ["config_hash", "claim"]
    df = store.read_results(db)
    assert len(df) == 6 and df.attrs["axes"] == ["mu"]
    assert sorted(df["point_mu"].unique()) == [0.05, 0.1, 0.2]
    assert set(df["claim"]) == {"single", "ensemble"}
    for _, r in df.iterrows():
        cfg = json.loads(r["config_json"])
        assert cfg["data"]["mu"] == r["point_mu"] and cfg["train"]["T"] == 300
        assert store.config_hash(type(make_config("tiny")).from_dict(cfg)) == r["config_hash"]
        assert r["ci_lo"] <= r["error_over_mu"] <= r["ci_hi"]
        assert r["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
        assert abs(r["frac_one_view"] + r["frac_two_views"] + r["frac_no_view"] - 1) < 1e-9
        assert r["n_test_multi"] == 500 and r["backend"] == "cpu" and r["seconds"] > 0
        assert r["started_at"] <= r["finished_at"]
        claim = json.loads(r["claim_json"])
        assert claim["id"] == r["claim"] and claim["error_over_mu"] == r["error_over_mu"]
        # the trajectory reading and the error curve it read
        assert r["trajectory_verdict"] == claim["trajectory"]["verdict"]
        assert [r["fraction_at_level_lo"], r["fraction_at_level_hi"]] == claim["trajectory"][
            "fraction_at_level"]  # fmt: skip
        curve = json.loads(r["curve_json"])["groups"][r["claim"]]
        assert len(curve["steps"]) == len(curve["errors_single"][0]) and curve["n_multi"] == 500
    single = df[df["claim"] == "single"].iloc[0]
    assert (single["bound_lo"], single["bound_hi"]) == (0.49, 0.51)
    assert single["n_models"] == 2


def test_exports_round_trip(resumed, tmp_path: Path) -> None:
    import pandas as pd

    db = resumed[0]
    df = store.read_results(db)
    assert cli.main(["results", str(db), "--csv", str(tmp_path / "r.csv")]) == 0
    back = pd.read_csv(tmp_path / "r.csv")
    assert list(back.columns) == list(df.columns)
    # a CSV field is empty for NULL and NaN alike (e.g. mechanism_in_time, NULL for a claim
    # without students); the REAL columns are floats already (store.read_results)
    assert df["time_to_level"].dtype == float
    pd.testing.assert_frame_equal(back, df.fillna(float("nan")), check_dtype=False)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        rc = cli.main(["results", str(db), "--parquet", str(tmp_path / "r.parquet")])
        assert rc == 2 and not (tmp_path / "r.parquet").exists()
    else:
        assert cli.main(["results", str(db), "--parquet", str(tmp_path / "r.parquet")]) == 0
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "r.parquet"), df)


def test_unreadable_stores_are_clear_errors(tmp_path: Path, capsys) -> None:
    """Not SQLite, another schema version, or a results table without today's columns:
    `mvsim sweep` and `mvsim results` say which, with no traceback."""
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database " * 100)
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as c:
        c.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        c.execute("INSERT INTO meta VALUES ('schema_version', '0')")
    narrow = tmp_path / "narrow.sqlite"
    with sqlite3.connect(narrow) as c:
        c.execute("CREATE TABLE results (config_hash TEXT, claim TEXT)")
    for db, says in ((junk, "not an mvsim store"), (old, "store schema 0"),
                     (narrow, "lacks columns")):  # fmt: skip
        sweep_argv = ["sweep", "--preset", "tiny", "--grid", "mu=0.1", "--store", str(db)]
        for argv in (["results", str(db)], sweep_argv):
            assert cli.main(argv) == 2, (db, argv)
            assert says in capsys.readouterr().err, (db, argv)


def test_parquet_without_pyarrow_says_how_to_install(resumed, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    assert cli.main(["results", str(resumed[0]), "--parquet", "x.parquet"]) == 2
    assert "pip install pyarrow" in capsys.readouterr().err


def test_sweep_plots(resumed, tmp_path: Path) -> None:
    """`mvsim plot` writes the figures and report.html: an index of the points with each
    claim's error/μ and verdict, and the figures inline."""
    assert cli.main(["plot", str(resumed[0]), "--out", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f"{n}.{e}" for n in ("error_vs_mu", "views_vs_mu")
                            for e in ("png", "svg")] + ["report.html"])  # fmt: skip
    assert all((tmp_path / n).stat().st_size > 1000 for n in names)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page and page.count("<svg") == 2
    df = store.read_results(resumed[0])
    rows = re.findall(r"<tr>(.*?)</tr>", page.split('id="points"')[1].split("</table>")[0], re.S)
    assert len(rows) == 1 + df["config_hash"].nunique()  # header + one row per point
    for _, r in df.iterrows():
        cell = f"{r['error_over_mu']:.4f} [{r['ci_lo']:.4f}, {r['ci_hi']:.4f}]"
        row = next(x for x in rows[1:] if f">{r['point_mu']:.4g}<" in x)
        assert cell in row and f'class="verdict {r["verdict"]}">' in row, (cell, row)
    for claim in ("single", "ensemble"):
        assert f"<code>{claim}</code>" in page


def _two_axes(df):
    """The one-axis store with a second, fake axis eta ∈ {1, 2}: the eta = 2 rows are the
    eta = 1 rows with error/μ halved (so the two rows of a heatmap differ)."""
    import pandas as pd

    one = df.copy()
    one["point_eta"] = 1.0
    two = df.copy()
    two["point_eta"] = 2.0
    two["config_hash"] = two["config_hash"] + "b"
    two["error_over_mu"] = two["error_over_mu"] / 2
    both = pd.concat([one, two], ignore_index=True)
    both.attrs["axes"] = ["eta", "mu"]
    return both


def test_phase_diagram_for_two_axes(resumed, tmp_path: Path) -> None:
    """A two-axis store gets heatmaps."""
    from mvsim import plots

    both = _two_axes(store.read_results(resumed[0]))
    paths = plots.phase_diagram(both, "single", tmp_path)
    assert paths == [str(tmp_path / f"phase_single_eta_mu.{e}") for e in ("png", "svg")]
    assert all(Path(p).stat().st_size > 1000 for p in paths)


def test_draw_sweep_figures_show_the_store(resumed) -> None:
    """The draw_* variants (for notebooks) return Figures that plot the stored numbers:
    error/μ by μ per claim with the bound's band, the view fractions, the heatmap cells."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.figure import Figure

    from mvsim import plots

    df = store.read_results(resumed[0])
    fig = plots.draw_error_vs_axis(df, "mu")
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == ["single", "ensemble"]
    for ax, claim in zip(fig.axes, ["single", "ensemble"], strict=True):
        d = df[df["claim"] == claim].sort_values("point_mu")
        (bars,) = ax.containers  # one errorbar: one value of the other axes (none here)
        line = bars.lines[0]  # its data line
        np.testing.assert_allclose(line.get_xdata(), d["point_mu"])
        np.testing.assert_allclose(line.get_ydata(), d["error_over_mu"])
        (band,) = ax.patches  # the theorem's bound, in data units of y
        ys = band.get_path().transformed(band.get_patch_transform()).vertices[:, 1]
        lo, hi = d["bound_lo"].iloc[0], d["bound_hi"].iloc[0]
        lo = 0.0 if np.isnan(lo) else lo
        assert ys.min() == pytest.approx(lo) and (np.isnan(hi) or ys.max() == pytest.approx(hi))
    plt.close(fig)

    fig = plots.draw_views_vs_axis(df, "mu")
    pts = df.drop_duplicates("config_hash").sort_values("point_mu")
    one, two = fig.axes[0].lines
    np.testing.assert_allclose(one.get_ydata(), pts["frac_one_view"])
    np.testing.assert_allclose(two.get_ydata(), pts["frac_two_views"])
    plt.close(fig)

    both = _two_axes(df)
    fig = plots.draw_phase_diagram(both, "single")
    cells = np.asarray(fig.axes[0].images[0].get_array())  # rows: mu ascending; cols: eta
    single = df[df["claim"] == "single"].sort_values("point_mu")["error_over_mu"].to_numpy()
    np.testing.assert_allclose(cells, np.stack([single, single / 2], axis=1))
    plt.close(fig)
    with pytest.raises(ValueError, match="exactly two swept axes"):
        plots.draw_phase_diagram(df, "single")


# --- sharded seeds on 4 forced host devices --------------------------------------------

_SHARD_SCRIPT = r"""
import jax, numpy as np
from mvsim import data, devices, model
from mvsim.config import make_config
from mvsim.train import train
assert jax.device_count() == 4, jax.devices()
# GD: its sharded and unsharded runs round alike step for step; the flow's are checked below.
cfg = make_config("tiny", {"T": 200, "integrator": "gd"})
V = data.features(jax.random.key(0), cfg.data.d, cfg.data.k)
ts = data.training_set(jax.random.key(1), cfg.data, V)
net = model.network(cfg.model, cfg.data.k, cfg.data.d)
run = lambda shard: train(jax.random.key(2), net, ts.x, ts.y, V, cfg.train, seeds=8,
                          shard=shard)
a, b = run(True), run(False)
assert len(a.params.sharding.device_set) == 4, a.params.sharding
assert len(b.params.sharding.device_set) == 1, b.params.sharding
# Uneven seed counts stay where they are (documented fallback: no phantom padded seeds).
odd = np.zeros((3, 2))
assert devices.shard_seeds(odd) is odd
assert len(devices.shard_seeds(np.zeros((8, 2))).sharding.device_set) == 4
np.testing.assert_array_equal(a.stop_step, b.stop_step)
np.testing.assert_allclose(np.asarray(a.params), np.asarray(b.params), rtol=1e-5, atol=1e-6)
np.testing.assert_allclose(a.final_loss, b.final_loss, rtol=1e-5, atol=1e-7)
np.testing.assert_allclose(a.alignment, b.alignment, rtol=1e-5, atol=1e-6)
# Four sweep points of two seeds: the point axis is the one split over the devices.
from mvsim.train import train_points
stack = lambda a: jax.numpy.stack([a] * 4)
inits = jax.vmap(jax.vmap(net.init))(jax.random.split(jax.random.key(3), (4, 2)))
pts = lambda shard: train_points(net, stack(ts.x), stack(ts.y), stack(V), cfg.train, inits,
                                 etas=[0.5, 1.0, 2.0, 4.0], shard=shard)
c, e = pts(True), pts(False)
assert len(c.params.sharding.device_set) == 4, c.params.sharding
np.testing.assert_array_equal(c.stop_step, e.stop_step)
# Float32 rounding of batched vs split matmuls, grown over 200 steps at η up to 4: the
# bound of tests/test_train.py (W_TOL = 2e-4 for 300 steps).
np.testing.assert_allclose(np.asarray(c.params), np.asarray(e.params), rtol=0, atol=2e-4)
diff = float(np.abs(np.asarray(a.params) - np.asarray(b.params)).max())
# The flow, sharded: its step sizes follow error estimates, which rounding can tip, so
# the runs agree to the flow's tolerance, not bitwise: same stop (0.1%) and weights
# within flow_atol (units of σ_0) times the steps taken.
import dataclasses
fc = dataclasses.replace(cfg.train, integrator="flow")
f, g = (train(jax.random.key(2), net, ts.x, ts.y, V, fc, seeds=8, shard=s) for s in (True, False))
assert len(f.params.sharding.device_set) == 4, f.params.sharding
np.testing.assert_allclose(f.stop_step, g.stop_step, rtol=1e-3)
bound = fc.flow_atol * cfg.model.sigma_0 * f.grad_evals.max()
np.testing.assert_allclose(np.asarray(f.params), np.asarray(g.params), rtol=0, atol=bound)
print("sharded", a.params.sharding, "max |diff|", diff)
"""


# Slow (≈ 60 s on 2 cores): the default run still trains under sharding on 4 forced host
# devices (test_progress.py's meter test); this one checks the numbers against unsharded.
@pytest.mark.slow
def test_sharded_seeds_match_unsharded_on_4_devices() -> None:
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, "-c", _SHARD_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "sharded" in proc.stdout


def test_experiment_reports_are_stored_whole_and_replaced(tmp_path):
    import json as _json

    import numpy as np

    from mvsim import store

    rep = _json.loads((ROOT / "docs" / "experiments" / "dropping" / "report.json").read_text())
    db = tmp_path / "x.sqlite"
    assert store.write_experiment(db, rep) == len(rep["rows"])
    assert store.write_experiment(db, rep) == len(rep["rows"])  # again: replaced, not doubled
    df = store.read_experiments(db, "dropping")
    assert len(df) == len(rep["rows"])
    want = [np.nan if r["acc_after"] is None else r["acc_after"] for r in rep["rows"]]
    np.testing.assert_array_equal(df["acc_after"].to_numpy(float), np.array(want, float))
    assert set(df["experiment"]) == {"dropping"} and df["config_hash"].nunique() == 1
    assert store.read_experiments(db, "gaussian").empty


def test_a_store_without_the_added_columns_gains_them_on_open(tmp_path: Path) -> None:
    """A store written before mechanism_json and peak_rss_bytes existed stays readable:
    its rows read them as NULL, and new points fill them."""
    from mvsim import store as st

    old = tmp_path / "before.sqlite"
    cols = {n: t for n, t in st.COLUMNS.items() if n not in st.ADDED_COLUMNS}
    with sqlite3.connect(old) as c:
        c.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        c.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(st.SCHEMA_VERSION),))
        body = ", ".join(f"{n} {t}" for n, t in cols.items())
        c.execute(f"CREATE TABLE results ({body}, PRIMARY KEY (config_hash, claim))")
        c.execute("INSERT INTO results (config_hash, claim, point_json) VALUES ('h', 's', '{}')")
    df = st.read_results(old)
    assert set(st.ADDED_COLUMNS) <= set(df.columns)
    assert df["mechanism_json"].isna().all() and df["peak_rss_bytes"].isna().all()
    # A point written after the migration lands in its own columns, though the added ones
    # sit at the end of the migrated table: a committed k-scaling row, written again.
    src = st.read_results(ROOT / "docs" / "k-scaling" / "demo" / "store.sqlite").iloc[0]
    conn = st.connect(old)
    st.write_point(conn, Config.from_json(src.config_json), json.loads(src.point_json),
                   [json.loads(src.claim_json)], json.loads(src.mechanism_json),
                   seconds=src.seconds, timing=json.loads(src.timing_json),
                   started_at=src.started_at, env=src[["mvsim_version", "jax_version", "backend",
                   "n_devices"]].to_dict(), peak_rss_bytes=123)  # fmt: skip
    conn.close()
    new = st.read_results(old).iloc[1]
    for col in ("verdict", "error_over_mu", "ci_lo", "frac_two_views", "seconds", "started_at",
                "mvsim_version", "n_devices", "claim_json"):  # fmt: skip
        assert new[col] == src[col], col
    assert new["peak_rss_bytes"] == 123 and new["mechanism_json"] is not None


def test_reading_a_store_leaves_its_file_as_it_was() -> None:
    """A committed store read for its results and its (absent) failures is not written:
    the failures' table is made by the first failure, not by opening."""
    import hashlib

    db = ROOT / "docs" / "k-scaling" / "demo" / "store.sqlite"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    assert len(store.read_results(db)) > 0 and store.read_failures(db).empty
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_fields_added_later_stay_out_of_the_key_at_their_defaults() -> None:
    """A point's key ignores the learner fields while they hold their defaults (stores
    written before they existed keep their keys) and changes once one is set."""
    import hashlib
    import json

    from mvsim import store as st

    cfg = make_config("demo")
    d = cfg.to_dict()
    assert all(any(f in sec for sec in d.values() if isinstance(sec, dict))
               for f in st.KEY_OMITS_AT_DEFAULT)  # fmt: skip
    for sec in d.values():
        if isinstance(sec, dict):
            for f in st.KEY_OMITS_AT_DEFAULT:
                sec.pop(f, None)
    before = hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode())
    assert st.config_hash(cfg) == before.hexdigest()
    assert st.config_hash(make_config("demo", {"learner": "mlp"})) != st.config_hash(cfg)


# --- the points as tasks of a Dask LocalCluster of 2 workers ----------------------------

DASK_GRID = ["mu=0.05,0.1", "eta=2,2.5"]  # 2×2; μ and η keep the compiled programs
# Everything a point stores but its numbers: when and where it ran, and how long.
HOST_COLUMNS = {"seconds", "timing_json", "peak_rss_bytes", "started_at", "finished_at"}


def _dask_points(grid: list[str] = DASK_GRID) -> list:
    from mvsim.config import parse_set

    return sweep.build_points("tiny", parse_set(FIXED), sweep.parse_grid(grid))


@pytest.fixture(scope="module")
def cluster(resumed):
    """A LocalCluster of 2 single-threaded workers (mvsim.cluster.local_cluster) and its
    client. The session's compilation cache is first given the programs the resumed sweep
    compiled (the same static config), so neither the workers nor this process compile
    them again: a speed-up only."""
    import shutil

    import jax
    from distributed import Client

    from mvsim.cluster import local_cluster

    session_cache = jax.config.jax_compilation_cache_dir
    if session_cache:
        shutil.copytree(resumed[-1][0], session_cache, dirs_exist_ok=True)
    lc = local_cluster(2)
    client = Client(lc)
    yield client
    client.close()
    lc.close()


def _busy(dask_worker) -> tuple[int, list[str]]:
    """(pid, the mvsim tasks it is executing) of a worker (run there by client.run)."""
    keys = [str(ts.key) for ts in dask_worker.state.executing]
    return os.getpid(), [k for k in keys if k.startswith("mvsim-point")]


def _results(db: Path) -> list[tuple]:
    """Every stored row but its host columns, in key order."""
    with sqlite3.connect(db) as c:
        cols = [r[1] for r in c.execute("PRAGMA table_info(results)")]
        keep = ", ".join(n for n in cols if n not in HOST_COLUMNS)
        return c.execute(f"SELECT {keep} FROM results ORDER BY config_hash, claim").fetchall()


@pytest.fixture(scope="module")
def killed(cluster, tmp_path_factory):
    """A 2×2 sweep on the cluster, one of whose workers is SIGKILLed while it runs a
    point: (store, summary, log lines, the killed worker's address)."""
    import threading

    db = tmp_path_factory.mktemp("killed") / "k.sqlite"
    logs: list[str] = []
    out: dict = {}

    def drive() -> None:
        out["summary"] = sweep.run_sweep(_dask_points(), db, CLAIMS.split(","), progress=False,
                                         log=logs.append, scheduler=cluster)  # fmt: skip

    t = threading.Thread(target=drive)
    t.start()
    victim, deadline = None, time.monotonic() + 300
    while victim is None and t.is_alive() and time.monotonic() < deadline:
        for address, (pid, keys) in cluster.run(_busy).items():
            if keys:
                os.kill(pid, signal.SIGKILL)
                victim = address
                break
        time.sleep(0.01)
    t.join(timeout=600)
    assert victim is not None, "no worker was ever seen running a point:\n" + "\n".join(logs)
    return db, out["summary"], logs, victim


def test_a_worker_killed_mid_point_loses_and_repeats_nothing(killed) -> None:
    db, summary, logs, victim = killed
    assert (summary.computed, summary.failed, summary.rows) == (4, 0, 8), logs
    rows = _rows(db)
    assert len(rows) == 8 and len({(h, c) for h, c, *_ in rows}) == 8  # each point once
    done = [line for line in logs if "points, " in line]
    assert len(done) == 4, logs
    # Every point was finished by a live worker: the killed one's was retried elsewhere.
    assert all(f" on {victim}," not in line for line in done), (victim, logs)


def test_dask_sweep_stores_the_local_sweeps_numbers_bit_for_bit(killed, cluster, tmp_path) -> None:
    """Every stored number (error/μ, CIs, bounds, strata, view fractions, each model's
    row in claim_json, the mechanism's inits and views) is the same bit for bit whether
    the 2×2 grid ran here (2 threads) or on the 2 single-threaded workers, with or without
    a worker killed on the way."""
    points = _dask_points()
    local, dask = tmp_path / "local.sqlite", tmp_path / "dask.sqlite"
    quiet = dict(progress=False, log=lambda _: None)
    assert sweep.run_sweep(points, local, CLAIMS.split(","), executor="local", **quiet).rows == 8
    assert sweep.run_sweep(points, dask, CLAIMS.split(","), scheduler=cluster, **quiet).rows == 8
    want = _results(local)
    assert len(want) == 8 and len({r[0] for r in want}) == 4
    assert _results(dask) == want
    assert _results(killed[0]) == want


def test_a_killed_driver_reruns_only_the_missing_points(cluster, tmp_path, capsys) -> None:
    """SIGKILL the driver (`mvsim sweep --scheduler ADDRESS`) once it has stored a point;
    the same command then stores the rest, each point once."""
    db = tmp_path / "d.sqlite"
    argv = ["sweep", "--preset", "tiny", "--store", str(db), "--claims", CLAIMS,
            "--no-progress", "--scheduler", cluster.scheduler.address]  # fmt: skip
    for g in [*DASK_GRID, "seed=0,1"]:  # 8 points: the driver dies with some left to do
        argv += ["--grid", g]
    for f in FIXED:
        argv += ["--set", f]
    cmd = [sys.executable, "-m", "mvsim.cli", *argv]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    before: list[tuple] = []
    deadline = time.monotonic() + 300
    while not before and proc.poll() is None and time.monotonic() < deadline:
        try:
            before = _rows(db) if db.exists() else []
        except sqlite3.OperationalError:  # the table is being created
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    log1 = proc.communicate()[0]
    after_kill = _rows(db)
    done = len({r[0] for r in after_kill})
    assert 1 <= done < 8 and len(after_kill) == 2 * done, log1[-3000:]
    assert cli.main(argv) == 0
    assert f"computed {8 - done} points, skipped {done} already stored" in capsys.readouterr().out
    after = _rows(db)
    assert len(after) == 16 and len({(h, c) for h, c, *_ in after}) == 16
    assert after[: len(after_kill)] == after_kill  # the stored points untouched


def test_a_diverging_point_is_stored_as_failed_and_retried(cluster, tmp_path, capsys) -> None:
    """σ_n = 10⁴ makes the flow too stiff for flow_max_steps (a DivergenceError): that point
    is stored as failed with its error, the others as results; `mvsim results` lists it;
    a rerun retries it alone."""
    db = tmp_path / "f.sqlite"
    points = _dask_points(["mu=0.05", "sigma_n=0.125,10000"])
    quiet = dict(progress=False, log=lambda _: None)
    s = sweep.run_sweep(points, db, CLAIMS.split(","), scheduler=cluster, **quiet)
    assert (s.computed, s.failed, s.rows) == (2, 1, 2)
    bad = next(p for p in points if p.values["sigma_n"] == 10000)
    failed = store.read_failures(db)
    assert list(failed["config_hash"]) == [bad.hash] and list(failed["attempts"]) == [1]
    assert "DivergenceError" in failed["error"][0] and "flow_max_steps" in failed["error"][0]
    assert {r[0] for r in _rows(db)} == {p.hash for p in points if p is not bad}
    assert cli.main(["results", str(db)]) == 0
    shown = capsys.readouterr().out
    assert "failed points (1;" in shown and "DivergenceError" in shown
    again = sweep.run_sweep(points, db, CLAIMS.split(","), scheduler=cluster, **quiet)
    assert (again.computed, again.skipped, again.failed) == (1, 1, 1)
    assert list(store.read_failures(db)["attempts"]) == [2]


def _set_version(version: str) -> None:
    import mvsim

    mvsim.__version__ = version


def test_a_worker_with_another_mvsim_is_refused_before_any_point(cluster, tmp_path) -> None:
    from mvsim import __version__
    from mvsim.executor import WorkerMismatch

    one = sorted(cluster.scheduler_info()["workers"])[0]
    db = tmp_path / "v.sqlite"
    cluster.run(_set_version, "0.0.0+other", workers=[one])
    try:
        with pytest.raises(WorkerMismatch, match=r"refused: it runs mvsim '0\.0\.0\+other'"):
            sweep.run_sweep(_dask_points(), db, CLAIMS.split(","), scheduler=cluster,
                            progress=False, log=lambda _: None)  # fmt: skip
    finally:
        cluster.run(_set_version, __version__, workers=[one])
    assert _rows(db) == [] and store.read_failures(db).empty


def test_executor_flags_are_checked_before_any_compute(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("MVSIM_SCHEDULER", raising=False)
    db = tmp_path / "x.sqlite"
    base = ["sweep", "--preset", "tiny", "--grid", "mu=0.1", "--store", str(db)]
    for extra, says in ((["--executor", "local", "--scheduler", "tcp://h:1"], "'--scheduler'"),
                        (["--executor", "dask", "--workers", "0"], "'--workers'"),
                        (["--workers", "2"], "applies to --executor dask only")):  # fmt: skip
        assert cli.main(base + extra) == 2, extra
        assert says in capsys.readouterr().err, extra
    rc = cli.main(["experiment", "dropping", "--executor", "dask"])
    assert rc == 2 and "applies to k-scaling only" in capsys.readouterr().err
    from mvsim.executor import resolve_executor

    monkeypatch.setenv("MVSIM_SCHEDULER", "tcp://h:1")
    assert resolve_executor(None, None) == "dask" and resolve_executor("local", None) == "local"


def test_point_cost_orders_k_scaling_as_its_measured_times() -> None:
    """The ETA's cost model ranks the committed k-scaling points as their measured times
    do (k = 3 … 40 of the demo family), each ratio to k = 3 within a factor 3 of the
    measured one."""
    from mvsim.config import Config

    rep = json.loads((ROOT / "docs" / "k-scaling" / "demo" / "report.json").read_text())
    cfgs = [Config.from_dict(rep["configs"][str(k)]) for k in rep["ks"]]
    cost = [sweep.point_cost(c) for c in cfgs]
    seconds = [r["point_seconds"] for r in rep["rows"]]
    assert cost == sorted(cost)
    ratio = [(c / cost[0]) / (s / seconds[0]) for c, s in zip(cost, seconds, strict=True)]
    assert all(0.3 < r < 2 for r in ratio), ratio


def test_the_progress_bar_is_closed_when_the_sweep_raises(tmp_path, monkeypatch) -> None:
    """A sweep that raises mid-way (a dead cluster, Ctrl-C) closes its tqdm bar, so the
    terminal is not left with a half-drawn bar under the traceback."""
    bars: list = []

    class Recorded(sweep._Progress):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            bars.append(self)

    def fail(*a, **kw):
        raise RuntimeError("the cluster went away")

    monkeypatch.setattr(sweep, "_Progress", Recorded)
    monkeypatch.setattr(sweep, "_drive", fail)
    points = sweep.build_points("tiny", {}, {"mu": [0.1]})
    with pytest.raises(RuntimeError, match="went away"):
        sweep.run_sweep(points, tmp_path / "s.sqlite", progress=True, executor="local")
    assert len(bars) == 1 and bars[0].bar is not None and bars[0].bar.disable  # closed
