"""The suite's own scheduling: pyproject's options keep each test file on one xdist worker.

A module's expensive fixture (a sweep store, a k-scaling run) is built once only if its
file's tests share a worker. `--dist loadgroup` stopped doing that without a word when
pytest 9.2 moved node ids out of xdist's reach, and every such fixture was built twice;
this runs pyproject's options on a toy suite and fails if a file is split again.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_file_runs_whole_on_one_worker(tmp_path: Path) -> None:
    opts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    addopts = [a for a in shlex.split(opts["addopts"]) if a != "auto"]
    addopts[addopts.index("-n") + 1 : addopts.index("-n") + 1] = ["2"]  # two, even on 1 core
    log = tmp_path / "log"
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not the project's: its options only
    body = "".join(f"def test_{i}():\n    pathlib.Path({str(log)!r}).open('a').write("
                   f"__name__ + ' ' + os.environ['PYTEST_XDIST_WORKER'] + '\\n')\n"
                   for i in range(4))  # fmt: skip
    for name in ("test_a.py", "test_b.py", "test_c.py"):
        (tmp_path / name).write_text("import os, pathlib\n" + body)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path),
                          *addopts, str(tmp_path)],  # fmt: skip
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    workers: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        module, worker = line.split()
        workers.setdefault(module, set()).add(worker)
    assert len(workers) == 3 and all(len(w) == 1 for w in workers.values()), workers
    assert len(set().union(*workers.values())) == 2, "both workers should have had a file"
