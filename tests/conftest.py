"""Fixtures shared by several test files."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile

import pytest

# One persistent compilation cache for the session, set before JAX is imported so that it
# holds in-process and in every subprocess a test starts (benchmarks, sharding, resume,
# notebooks), and shared by the session's xdist workers (their common run id names it):
# a program compiled once (a diffrax solve takes seconds) is not compiled again. It
# changes no result, only who compiles; a new session starts with an empty one.
_run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
_cache = os.path.join(tempfile.gettempdir(), f"mvsim-jax-{_run}") if _run else None
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache or tempfile.mkdtemp(prefix="mvsim-jax-"))

from mvsim import cli, progress  # noqa: E402

# How xdist shares the files out (--dist loadgroup, pyproject.toml): one group per file, so
# a module's fixtures are built once, except the files that read the session's tiny verify
# run (tiny_run below), which share a worker so that it is built once: it runs with its
# progress display live, so its programs hold host callbacks and no other process can read
# them from the compilation cache. The heaviest groups go first (seconds of 2 cores, suite
# of 2026-12-07), so that no long file starts last and leaves the other worker idle.
SHARED_GROUP = {"test_verify.py": "tiny_run", "test_html.py": "tiny_run",
                "test_learners.py": "tiny_run"}  # fmt: skip
HEAVY_FIRST = ("tiny_run", "test_notebooks.py", "test_sweep.py", "test_flow.py",
               "test_ntk.py", "test_k_scaling.py", "test_shapes.py", "test_train.py",
               "test_experiments.py", "test_nt_compat.py", "test_race_model.py")  # fmt: skip


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    group = lambda item: SHARED_GROUP.get(item.path.name, item.path.name)
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group(item)))
    rank = {g: i for i, g in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(group(item), len(rank)))  # stable: files stay whole


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict:
    """`mvsim verify --preset tiny --out DIR`, run once per session with its progress
    display on: {'report': report.json's dict, 'out': DIR, 'stderr': what it printed there
    (not a terminal, so periodic lines rather than bars), 'events': every progress event}.
    A fake clock that moves 10 s at each read lets every report through
    (mvsim.progress.recording), so no wall time decides what the tests see."""
    out = tmp_path_factory.mktemp("verify")
    err = io.StringIO()
    with progress.recording(progress.StepClock()) as events, contextlib.redirect_stderr(err):
        rc = cli.main(["verify", "--preset", "tiny", "--out", str(out)])
    assert rc == 0, err.getvalue()[-3000:]
    report = json.loads((out / "report.json").read_text())
    return {"report": report, "out": out, "stderr": err.getvalue(), "events": events}


@pytest.fixture(scope="session")
def tiny_verify(tiny_run) -> tuple[dict, object]:
    """(report.json's dict, DIR) of :func:`tiny_run`. The verify and the report.html tests
    read it; a test that writes must copy it."""
    return tiny_run["report"], tiny_run["out"]
