"""Smoke test of the benchmark harness: the ``--quick`` run finishes and writes a JSON of the
documented shape. Timings are never asserted (they belong to the machine and its load).

The full benchmarks are not part of the test run; the GPU script's CPU form and the
sweep-batching and flow benchmarks' smoke runs are slow tests
(``pytest -m slow tests/test_benchmarks.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _report(cmd: list[str], out: Path, cwd: Path, timeout: int) -> dict:
    """Run a benchmark command to completion and read the JSON report it wrote to out."""
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_machine(m: dict) -> None:
    for key in (
        "cpu_model",
        "cpu_count",
        "backend",
        "devices",
        "device_kind",
        "jax",
        "jaxlib",
        "matmul_precision",
        "llc_bytes",
        "loadavg_start",
        "loadavg_end",
        "date_utc",
    ):
        assert key in m, key
    assert m["backend"] == "cpu"
    assert len(m["loadavg_start"]) == 3 and all(_is_num(x) for x in m["loadavg_start"])
    assert m["llc_bytes"] > 0


def _check_stats(st: dict) -> None:
    for key in ("median", "min", "max", "iqr", "n"):
        assert _is_num(st[key]), key
    assert st["min"] <= st["median"] <= st["max"]


@pytest.mark.slow  # ≈ 45 s on 2 cores; the benchmarks' harness is tested above
def test_quick_benchmark_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # An unlimited budget: on a loaded machine the quick run's 120 s default skips sections,
    # and what is checked here is the report, not the machine's speed.
    cmd = [sys.executable, "-m", "benchmarks.run", "--quick", "--budget-s", "1e9"]
    cmd += ["--out", str(out)]
    rep = _report(cmd, out, ROOT, 900)

    assert rep["schema_version"] == 1 and rep["quick"] is True
    assert rep["sections_requested"] == ["efficiency", "batching", "scaling", "ntk"]
    assert "verify" not in rep  # minutes long: only without --quick, or with --only verify
    _check_machine(rep["machine"])
    assert rep["peak_matmul"]["best_gflops"] > 0

    entries = rep["efficiency"]["entries"]
    assert {e["shape"]["S"] for e in entries} == {1, 2}
    for e in entries:
        _check_stats(e["call_time_s"])
        assert e["flops_per_step"]["executed_2_matmuls"] > 0
        # what the compiled step multiplies, read from its HLO, is the forward matmul and
        # the weight gradient: 2·(2·N·P·d·k·m·S) plus the tiny Λ einsum
        hlo_flops = e["flops_per_step"]["from_compiled_hlo"]
        assert hlo_flops >= e["flops_per_step"]["executed_2_matmuls"]
        assert e["hlo"]["seeds_fused_into_one_matmul"] is True
        for key in (
            "step_vs_same_shape_matmuls",
            "step_vs_matmul_only_loop",
            "step_executed_vs_peak",
            "step_issue_flops_vs_forward_matmul",
        ):
            assert _is_num(e["ratios"][key]) and e["ratios"][key] > 0
        for mm in e["matmul_same_shapes"].values():
            assert mm["gflops"] > 0
    assert "step_time_s" in next(e for e in entries if e["shape"]["S"] == 1)["train_path"]

    sizes = rep["batching"]["sizes"]
    assert set(sizes) == {"cache_resident", "memory_bound"}
    assert "skipped" in sizes["memory_bound"]  # minutes long: not in --quick
    rows = sizes["cache_resident"]["rows"]
    assert [r["S"] for r in rows] == [1, 2]
    for r in rows:
        _check_stats(r["vmapped_s"])
        _check_stats(r["loop_s"])
        assert r["speedup_loop_over_vmapped"] > 0
        assert r["hlo"]["seeds_fused_into_one_matmul"] is True

    sc = rep["scaling"]
    assert set(sc["exponents_time"]) == {"N", "P", "d", "k*m"}
    assert all(_is_num(v) for v in sc["exponents_time"].values())
    assert len(sc["memory"]) == 2 and all("NPd" in p for p in sc["memory"])
    assert _is_num(sc["exponents_memory_vs_NPd"]["xla_buffers"])

    ntk = rep["ntk"]
    assert "skipped" in ntk or {"N", "P"} <= set(ntk["points"])
    assert any(k.startswith("step_vs_same_shape_matmul") for k in rep["targets"])


@pytest.mark.slow
def test_gpu_script_runs_quick_on_cpu(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    out = tmp_path / "gpu.json"
    rep = _report(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--quick", str(out)], out,
                  tmp_path, 1200)  # fmt: skip
    assert rep["machine"]["matmul_precision"] == "highest"
    assert rep["sections_requested"] == ["efficiency", "batching", "verify", "precision", "sweep"]
    assert [r["k"] for r in rep["verify"]["runs"]] == [10, 20]
    for r in rep["verify"]["runs"] + rep["sweep"]["runs"]:
        assert "total_s" in r and r["verdicts"], r
    assert [r["set"] for r in rep["sweep"]["runs"]] == ["mu=0.02", "mu=0.1"]
    prec = rep["precision"]
    assert prec["base"] == "highest" and prec["other"] == "tensorfloat32"
    assert isinstance(prec["verdicts_unchanged"], bool)


# Slow (35 s and 31 s of compiling in a fresh process each): what they compare is also
# checked in the default run, the flow against GD by tests/test_flow.py and batched against
# one-by-one sweeps by tests/test_sweep.py; these two check the benchmark scripts around it.
@pytest.mark.slow
def test_sweep_batching_benchmark_agrees_across_modes(tmp_path: Path) -> None:
    """The batched and one-by-one modes of benchmarks.sweep_batching store the same numbers
    (its exit status says so) and the report has each mode's time and the ratio."""
    out = tmp_path / "sb.json"
    fixed = ["T=100", "seeds=2", "kd_students=2", "n_test_multi=500", "n_test_single=500"]
    cmd = [sys.executable, "-m", "benchmarks.sweep_batching", "--axis", "mu=0.05,0.2",
           "--modes", "batched,reused", "--out", str(out)]  # fmt: skip
    for s in fixed:
        cmd += ["--set", s]
    rep = _report(cmd, out, ROOT, timeout=600)
    assert rep["same_numbers"] is True
    assert _is_num(rep["batched"]["total_s"]) and _is_num(rep["reused"]["total_s"])
    assert len(rep["reused"]["per_call_s"]) == 2 and len(rep["batched"]["per_call_s"]) == 1
    assert rep["batched"]["stages_s"][0]["batch_points"] == 2
    assert _is_num(rep["speedup_batched_over_reused"]) and "fresh" not in rep


@pytest.mark.slow
def test_flow_benchmark_compares_every_stage(tmp_path: Path) -> None:
    """benchmarks.flow on tiny: each stage trained by both integrators from the same inits,
    with gradient evaluations, walls, the view cells compared and the ratios; its exit
    status is 0 only when every stage learned GD's views."""
    out = tmp_path / "flow.json"
    cmd = [sys.executable, "-m", "benchmarks.flow", "--preset", "tiny", "--set", "seeds=2",
           "--set", "kd_students=1", "--set", "avg_seeds=1", "--set", "kd_T=200",
           "--set", "T=1000", "--out", str(out)]  # fmt: skip
    rep = _report(cmd, out, ROOT, timeout=600)
    for stage in ("singles", "students", "training_average"):
        r = rep[stage]
        assert r["gd"]["grad_evals"] > 0 and r["flow"]["grad_evals"] > 0
        assert r["cells_differing"] == 0 and r["cells"] > 0
        assert _is_num(r["eval_ratio"]) and _is_num(r["wall_ratio"])
    assert rep["total"]["identical_views"] is True
