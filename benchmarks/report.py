"""The benchmark report: the issue's targets against this run's ratios, the JSON file
(atomic, numpy-aware) and its tables as Markdown (``--render``, for RESULTS.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mvsim.report import write_json

SCHEMA_VERSION = 1
TARGETS = {
    "step_vs_same_shape_matmul": 0.70,
    "batching_speedup_S16_cpu_memory_bound": 4.0,
    "batching_speedup_S256_gpu": 30.0,
    "time_to_verdict_demo_s": 60.0,
}


def summarise(rep: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets against the measured ratios of this run."""
    out: dict[str, Any] = {}
    eff = rep.get("efficiency", {}).get("entries", [])
    t_eff = TARGETS["step_vs_same_shape_matmul"]
    for key, what in (
        ("step_vs_same_shape_matmuls", "plain jnp.matmul calls of the step's two matmul shapes"),
        ("step_vs_matmul_only_loop", "the same two matmuls alone in a compiled lax.scan"),
    ):
        vals = {
            f"{e['name']}_S{e['shape']['S']}": e["ratios"][key]
            for e in eff
            if "ratios" in e and key in e["ratios"]
        }
        if vals:
            out[f"step_vs_same_shape_matmul ({key})"] = {
                "target": t_eff,
                "reference": what,
                "measured": vals,
                "met": {k: v >= t_eff for k, v in vals.items()},
            }
    bat = rep.get("batching", {}).get("sizes", {})
    gpu = rep.get("machine", {}).get("backend") not in (None, "cpu")
    for label, sz in bat.items():
        for row in sz.get("rows", []):
            if "speedup_loop_over_vmapped" not in row:
                continue
            S, sp = row["S"], row["speedup_loop_over_vmapped"]
            if not gpu and S == 16 and label == "memory_bound":
                t = TARGETS["batching_speedup_S16_cpu_memory_bound"]
                out["batching_S16_memory_bound"] = {"target": t, "measured": sp, "met": sp >= t}
            if gpu and S == 256:
                t = TARGETS["batching_speedup_S256_gpu"]
                out[f"batching_S256_{label}"] = {"target": t, "measured": sp, "met": sp >= t}
    for r in rep.get("verify", {}).get("runs", []):
        if "total_s" in r and r["preset"] == "demo" and r["k"] == 10:
            t = TARGETS["time_to_verdict_demo_s"]
            out["time_to_verdict_demo"] = {
                "target_s": t,
                "measured_s": r["total_s"],
                "met": r["total_s"] <= t,
                "flop_lower_bound_s": r["lower_bound_s_at_peak"],
            }
    return out


def _f(v: Any, fmt: str = ".2f") -> str:
    return "–" if v is None else format(v, fmt)


def render_markdown(rep: dict[str, Any]) -> str:
    """Tables of a report (``--render FILE.json``), for benchmarks/RESULTS.md."""
    lines = _md_machine(rep)
    lines += _md_efficiency(rep.get("efficiency", {}).get("entries", []))
    lines += _md_batching(rep.get("batching", {}).get("sizes", {}))
    for sec in ("verify", "sweep"):
        lines += _md_verify(sec, rep.get(sec, {}).get("runs", []))
    lines += _md_exponents(rep.get("scaling"), rep.get("ntk"))
    return "\n".join(lines)


def _md_machine(rep: dict[str, Any]) -> list[str]:
    m = rep["machine"]
    lines = [
        f"Machine: {m['cpu_model']}, {m['cpu_affinity']} cores usable, LLC "
        f"{m['llc_bytes'] / 2**20:.0f} MiB, backend {m['backend']} ({m['device_kind']}), "
        f"jax {m['jax']}, matmul precision {m['matmul_precision']}; {m['date_utc']}; load "
        f"average {m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end.",
        "",
    ]
    pk = rep.get("peak_matmul")
    if pk:
        sq = ", ".join(f"{r['shape'][0]}²: {r['gflops']:.0f}" for r in pk["squares"])
        lines += [f"Square matmuls (GFLOP/s): {sq}; best matmul of any shape in the run: "
                  f"{_f(pk.get('best_any_matmul_gflops'), '.0f')} GFLOP/s.", ""]  # fmt: skip
    return lines


def _md_efficiency(eff: list[dict[str, Any]]) -> list[str]:
    if not eff:
        return []
    lines = [
        "| shape | S | step ms | GFLOP/s executed (2 matmuls) | GFLOP/s, issue's 3-matmul "
        "count | step / plain same-shape matmuls (range) | step / same matmuls in a "
        "compiled loop | step / square peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in eff:
        if "ratios" not in e:
            continue
        r = e["ratios"]
        lines.append(
            f"| {e['name']} | {e['shape']['S']} | {e['step_time_s'] * 1e3:.2f} | "
            f"{e['gflops_step_executed']:.0f} | {e['gflops_step_issue_convention']:.0f} | "
            f"**{r['step_vs_same_shape_matmuls']:.2f}** "
            f"({r['step_vs_same_shape_matmuls_range']['min']:.2f}–"
            f"{r['step_vs_same_shape_matmuls_range']['max']:.2f}) | "
            f"**{r['step_vs_matmul_only_loop']:.2f}** | "
            f"{r['step_executed_vs_peak']:.2f} |"
        )
    return lines + [""]


def _md_batching(bat: dict[str, Any]) -> list[str]:
    if not bat:
        return []
    lines = ["| size | X / LLC | S | loop s | vmapped s | speedup (loop / vmapped) | "
             "vmapped GFLOP/s |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, sz in bat.items():
        for row in sz.get("rows", [{"S": "–", "skipped": sz.get("skipped")}]):
            if "skipped" in row:
                lines.append(f"| {label} | {sz['x_over_llc']:.2f} | {row['S']} | "
                             f"skipped: {row['skipped']} | | | |")  # fmt: skip
                continue
            lines.append(
                f"| {label} | {sz['x_over_llc']:.2f} | {row['S']} | "
                f"{row['loop_s']['median']:.3f} | {row['vmapped_s']['median']:.3f} | "
                f"**{row['speedup_loop_over_vmapped']:.2f}×** | "
                f"{row['vmapped_gflops_executed']:.0f} |"
            )
    return lines + [""]


def _md_verify(sec: str, runs: list[dict[str, Any]]) -> list[str]:
    if not runs:
        return []
    lines = ["| run | total s | stages s | FLOP lower bound s | verdicts |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in runs:
        tag = f"{sec} k={r.get('k', '')} {r.get('set', '')}".strip()
        if "total_s" not in r:
            lines.append(f"| {tag} | skipped: {r.get('skipped')} | | | |")
            continue
        st = ", ".join(f"{k} {v:.0f}" for k, v in r["stages_s"].items())
        vd = ", ".join(f"{k}: {v}" for k, v in r["verdicts"].items())
        lines.append(f"| {tag} | **{r['total_s']:.0f}** | {st} | "
                     f"{_f(r['lower_bound_s_at_peak'], '.0f')} | {vd} |")  # fmt: skip
    return lines + [""]


def _md_exponents(sc: dict[str, Any] | None, nt: dict[str, Any] | None) -> list[str]:
    lines = []
    if sc and "exponents_time" in sc:
        et = ", ".join(f"{k}: {_f(v)}" for k, v in sc["exponents_time"].items())
        em = ", ".join(f"{k}: {_f(v)}" for k, v in sc["exponents_memory_vs_NPd"].items())
        lines += [f"Scaling exponents, time per step vs {et}. Memory vs N·P·d: {em}.", ""]
    if nt:
        if "skipped" in nt:
            lines += [f"NTK: skipped ({nt['skipped']}).", ""]
        else:
            lines += [f"NTK kernel_matrix: time ∝ N^{_f(nt.get('exponent_time_vs_N'))}, "
                      f"P^{_f(nt.get('exponent_time_vs_P'))}.", ""]  # fmt: skip
    return lines


def write(rep: dict[str, Any], path: Path) -> None:
    # The report's atomic writer (temp file, fsync, rename) and its numpy-aware encoder.
    write_json(path, rep)
