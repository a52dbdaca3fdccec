"""Fixtures shared by several test files."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pickle
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

# How xdist shares the files out (--dist loadfile --no-loadscope-reorder, pyproject.toml):
# whole files go to one worker, so a module's fixtures are built once, in the order below:
# the heaviest files first (seconds of 2 cores, suite of 2026-12-07), so that no long file
# starts last and leaves the other worker idle. Not --dist loadgroup: pytest 9.2 keeps a
# node's id where xdist 3.8 no longer writes its group suffix, so every group was split
# over the workers (tests/test_suite.py checks the scheduling). The files that read the
# tiny verify run share it across workers instead (tiny_run).
HEAVY_FIRST = ("test_html.py", "test_sweep.py", "test_notebooks.py", "test_k_scaling.py",
               "test_flow.py", "test_ntk.py", "test_verify.py", "test_learners.py",
               "test_shapes.py", "test_train.py", "test_race_asymptotics.py",
               "test_experiments.py", "test_nt_compat.py", "test_race_model.py")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict:
    """`mvsim verify --preset tiny --out DIR`, run once per session with its progress
    display on: {'report': report.json's dict, 'out': DIR, 'stderr': what it printed there
    (not a terminal, so periodic lines rather than bars), 'events': every progress event}.
    A fake clock that moves 10 s at each read lets every report through
    (mvsim.progress.recording), so no wall time decides what the tests see.

    Once per session, not per xdist worker: the first worker to ask runs it under a lock in
    the directory the workers share, and the others read what it left there. Its display is
    live, so its programs hold host callbacks and no process could take them from the
    compilation cache instead."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    out, saved = shared / "tiny-verify", shared / "tiny-verify.pkl"
    with open(shared / "tiny-verify.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not saved.exists():
            err, clock = io.StringIO(), progress.StepClock()
            with progress.recording(clock) as events, contextlib.redirect_stderr(err):
                rc = cli.main(["verify", "--preset", "tiny", "--out", str(out)])
            assert rc == 0, err.getvalue()[-3000:]
            saved.with_suffix(".tmp").write_bytes(pickle.dumps((err.getvalue(), events)))
            saved.with_suffix(".tmp").rename(saved)
    stderr, events = pickle.loads(saved.read_bytes())
    report = json.loads((out / "report.json").read_text())
    return {"report": report, "out": out, "stderr": stderr, "events": events}


@pytest.fixture(scope="session")
def tiny_verify(tiny_run) -> tuple[dict, object]:
    """(report.json's dict, DIR) of :func:`tiny_run`. The verify and the report.html tests
    read it; a test that writes must copy it."""
    return tiny_run["report"], tiny_run["out"]
