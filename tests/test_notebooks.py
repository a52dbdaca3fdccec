"""The notebooks in notebooks/ run top to bottom, and are committed without outputs.

Every ``notebooks/*.ipynb`` is picked up: a new notebook is tested without touching this
file. Each runs in a real Jupyter kernel with ``MVSIM_NOTEBOOK_SMALL=1`` (its first cell
shrinks it to the tiny preset), against this checkout's mvsim, in the interpreter that
runs the tests.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 600  # generous: a slow CI machine should fail on errors, not on time
SMALL_SWITCH = 'SMALL = os.environ.get("MVSIM_NOTEBOOK_SMALL", "0") == "1"'


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 3, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_without_outputs(path: Path) -> None:
    """The policy is 'no outputs': outputs would go stale as the code changes. Clear them
    before committing (e.g. ``jupyter nbconvert --clear-output --inplace``)."""
    nb = _read(path)
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has a count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_reads_the_small_switch_first(path: Path) -> None:
    """CI can only shrink a notebook that reads MVSIM_NOTEBOOK_SMALL before any work."""
    code = [c for c in _read(path)["cells"] if c["cell_type"] == "code"]
    first = "".join(code[0]["source"]) if code else ""
    assert SMALL_SWITCH in first, f"{path.name}: first code cell must set {SMALL_SWITCH}"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernelspec that runs *this* interpreter, and the environment the kernel inherits.

    A 'python3' kernelspec found on the Jupyter path may point at another interpreter;
    a spec of our own, first on JUPYTER_PATH, cannot.
    """
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    spec_dir = tmp_path_factory.mktemp("jupyter") / "kernels" / "mvsim-test"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "mvsim test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    env = {
        "JUPYTER_PATH": str(spec_dir.parents[1]),
        "MVSIM_NOTEBOOK_SMALL": "1",
        # The session's compilation cache (conftest.py): the notebooks share the tiny
        # config with each other and with the verify fixtures, so each compiles only what
        # was not compiled before (same results).
        "JAX_COMPILATION_CACHE_DIR": os.environ["JAX_COMPILATION_CACHE_DIR"],
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        # This checkout's mvsim, whatever else is installed.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    return env


# Slow (50-120 s each on 2 cores), to keep the default run well under 10 minutes: what they
# call is tested in the default run (the NTK table, its figure and the kernel matrix in
# test_ntk.py and test_mechanism.py, the error curves and the two readings through
# test_verify.py's report; sweeps in test_sweep.py, a user's own model in
# test_learners.py); `-m slow` runs them too. 01 and 02 stay: they run the deep side as a
# user does, on the programs the rest of the session compiled.
SLOW_NOTEBOOKS = {"03_ntk_vs_dl.ipynb", "04_sweeps.ipynb", "05_your_own_model.ipynb"}


@pytest.mark.parametrize("path", [
    pytest.param(p, id=p.name, marks=[pytest.mark.slow] if p.name in SLOW_NOTEBOOKS else [])
    for p in NOTEBOOKS
])  # fmt: skip
def test_notebook_runs(path: Path, kernel_env, monkeypatch) -> None:
    """Executes every cell; a cell error fails the test with its traceback. Also checks
    that the kernel used this checkout's mvsim and that figures were displayed."""
    import nbformat
    from nbclient import NotebookClient

    for key, value in kernel_env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(
        nbformat.v4.new_code_cell("import mvsim as _m, sys as _s; print(_m.__file__); print(SMALL)")
    )
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="mvsim-test",
        resources={"metadata": {"path": str(path.parent)}},
    )
    t = time.perf_counter()
    client.execute()
    print(f"{path.name}: {time.perf_counter() - t:.1f} s")
    probe = "".join(o.get("text", "") for o in nb.cells[-1].outputs).split()
    assert Path(probe[0]).resolve() == (ROOT / "mvsim" / "__init__.py").resolve(), probe
    assert probe[1] == "True", "the kernel did not see MVSIM_NOTEBOOK_SMALL=1"
    images = sum(
        "image/png" in o.get("data", {})
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert images >= 1, f"{path.name} displayed no figure (is the inline backend in use?)"
