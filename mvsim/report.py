"""Output formats of a verify run: the report dict (report.json) and the terminal table.

Files are written atomically (temp file + rename) so an interrupted run never leaves a
half-written report behind.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mvsim.claims import ClaimResult, mechanism
from mvsim.config import Config
from mvsim.verify import Measurements

SCHEMA_VERSION = 1


def _version() -> str:
    from mvsim import __version__

    return __version__


def header(cfg: Config) -> dict[str, Any]:
    """What every report (verify or experiment) starts with: schema, the full config,
    versions and the machine, so a number is never separated from where it came from."""
    return {
        "schema_version": SCHEMA_VERSION,
        "preset": cfg.preset,
        "config": cfg.to_dict(),
        "mvsim_version": _version(),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    """Append one JSON line and fsync it: a long study killed mid-way keeps every row it
    had finished and at most loses the one being computed."""
    with open(path, "a") as f:
        f.write(json.dumps(row, default=json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


def jsonl_keys(path: str | Path, key: str) -> set[Any]:
    """The ``key`` of every row of a JSON-lines file written by :func:`append_jsonl`
    (empty when it does not exist yet): what a resumed study can skip."""
    path = Path(path)
    if not path.exists():
        return set()
    return {json.loads(line)[key] for line in path.read_text().splitlines() if line}


def build(m: Measurements, results: list[ClaimResult], extra: dict | None = None) -> dict[str, Any]:
    """The report.json document."""
    rep: dict[str, Any] = {
        **header(m.cfg),
        "claims": [r.to_dict() for r in results],
        "mechanism": mechanism(m),
        "timing": {k: round(v, 3) for k, v in m.timing.items()},
    }
    if m.groups["single"].curve is not None:
        rep["curves"] = curves(m)
    if np.size(m.single_history["alignment"]):  # a learner without Λ records none
        rep["history"] = {
            "steps": m.single_history["steps"].tolist(),
            "single_alignment": np.round(m.single_history["alignment"], 5).tolist(),
        }
    if extra:
        rep.update(extra)
    return rep


def curves(m: Measurements) -> dict[str, Any]:
    """report.json's ``curves``: every group's error curve on the curve subset (counts
    per model and recorded step, training accuracy), from which E/μ at any time and the
    trajectory figure are redrawn; ``horizon`` is the reading's (GD-equivalent steps)."""
    out: dict[str, Any] = {"horizon": m.horizon, "mu": m.cfg.data.mu, "groups": {}}
    for name, g in m.groups.items():
        c = g.curve
        if c is None:
            continue
        out["groups"][name] = {
            "steps": np.asarray(c["steps"]).astype(int).tolist(),
            "horizon": int(c["horizon"]),
            "n_multi": int(c["n_multi"]),
            "n_single": int(c["n_single"]),
            "errors_multi": np.asarray(c["errors_multi"]).tolist(),
            "errors_single": np.asarray(c["errors_single"]).tolist(),
            "train_accuracy": np.round(np.asarray(c["train_accuracy"], float), 5).tolist(),
        }
    return out


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically: a crash leaves either the old file or the new one."""
    write_text(path, json.dumps(obj, indent=1, default=json_default))


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically: temp file, fsync, rename. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); a report is to share, as any file written.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def json_default(o: Any) -> Any:
    """JSON encoder for numpy scalars and arrays (anything else as its str)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def fmt_bound(lo: float | None, hi: float | None) -> str:
    """A claim's bound in units of μ: '[lo, hi]', '< hi' or '≥ lo'."""
    if lo is not None and hi is not None:
        return f"[{lo:g}, {hi:g}]"
    if hi is not None:
        return f"< {hi:g}"
    return f"≥ {lo:g}"


def view_gain_totals(c: dict[str, Any]) -> dict[str, int]:
    """A distillation claim's view gains summed over its students (gained from the
    teacher, that neither had, own lottery lost) and the views its controls gained."""
    keys = ("gained_from_teacher", "gained_neither_had", "own_lottery_lost")
    tot = {k: sum(g.get(k, 0) for g in c.get("view_gains", [])) for k in keys}
    tot["control_gained"] = sum(g["gained_neither_had"] for g in c.get("control_view_gains", []))
    return tot


def view_analysis_line(rep: dict[str, Any]) -> str:
    """Which reading of the views the report used, and (patch CNN) how often the other
    reading agrees with it."""
    mech, ver = rep["mechanism"], rep["config"]["verify"]
    by_acc = f"accuracy ≥ {ver.get('view_accuracy', 0.9):g} on the view's single-view test points"
    if mech.get("view_analysis", "weights") == "behaviour":
        return f"views read from behaviour: a (class, view) is learned at {by_acc}"
    line = f"views read from the weights: Λ ≥ {ver['view_threshold']:g}ϱ"
    agree = mech.get("view_agreement")
    if agree:
        cells = sum(a["cells"] for a in agree.values())
        same = sum(a["agree"] for a in agree.values())
        line += f"; behaviour ({by_acc}) agrees on {same}/{cells} (model, class, view) cells"
    return line


def table(rep: dict[str, Any]) -> str:
    """The terminal table: one row per claim, then the mechanism and timing."""
    cfg = rep["config"]
    d = cfg["data"]
    head = (
        f"mvsim verify — preset '{rep['preset']}': k={d['k']} d={d['d']} P={d['P']} "
        f"N={d['N']} μ={d['mu']:.4g} m={cfg['model']['m']} q={cfg['model']['q']} "
        f"ϱ={cfg['model']['varrho']:g} σ0={cfg['model']['sigma_0']:g} "
        f"seeds={cfg['verify']['seeds']} ({rep['backend']})"
    )
    learner = cfg["model"].get("learner", "patch_cnn")
    if learner != "patch_cnn":
        head = head.replace(f"m={cfg['model']['m']} q={cfg['model']['q']} "
                            f"ϱ={cfg['model']['varrho']:g} σ0={cfg['model']['sigma_0']:g} ",
                            f"learner={learner} ")  # fmt: skip
    cols = ("claim", "bound/μ", "error/μ", "95% CI", "e_single", "e_multi", "finite-k", "verdict")
    rows = []
    for c in rep["claims"]:
        b = c["bound"]
        fk = c.get("finite_k_prediction")
        rows.append(
            (
                c["id"],
                fmt_bound(b["lo"], b["hi"]),
                f"{c['error_over_mu']:.4f}",
                f"[{c['ci95'][0]:.4f}, {c['ci95'][1]:.4f}]",
                f"{c['error_single_view']:.4f}",
                f"{c['error_multi_view']:.5f}",
                "" if fk is None else f"{fk:.3f}",
                c["verdict"],
            )
        )
    out = [head, ""] + text_table(cols, rows)
    if any("trajectory" in c for c in rep["claims"]):
        out += ["", *two_readings(rep)]
    out.append("")
    for c in rep["claims"]:
        out.append(f"{c['id']}: {c['reason']}")
        if "trajectory" in c:
            out.append(f"    over time: {c['trajectory']['readings']}")
        if "control_error_over_mu" in c:
            tot = view_gain_totals(c)
            out.append(
                f"    control (own-init twin as teacher): {c['control_error_over_mu']:.4f}μ; "
                f"views gained from teacher {tot['gained_from_teacher']}, "
                f"that neither had {tot['gained_neither_had']}, "
                f"own lottery lost {tot['own_lottery_lost']}; the control itself gained "
                f"{tot['control_gained']} views"
            )
    mech = rep["mechanism"]
    out.append("")
    lot = mech["lottery_prediction_accuracy"]
    out.append(
        "mechanism (single models): classes with one / two / no view learned = "
        f"{mech['frac_one_view']:.3f} / {mech['frac_two_views']:.3f} / {mech['frac_no_view']:.3f}; "
        f"lottery (larger initial alignment wins) right for "
        f"{'n/a' if lot is None else f'{lot:.3f}'} of one-view classes"
    )
    out.append(view_analysis_line(rep))
    mem = mech["memorisation"].get("unlearned_strong_view")
    if mem:
        out.append(
            f"memorisation: {mem['n_points']} single-view training points with unlearned strong "
            f"view: F_y from features {mem['mean_F_y_features_only']:.3f}, "
            f"from noise {mem['mean_F_y_noise_only']:.3f}"
        )
    out.append(
        "finite-k: the prediction column is E/μ predicted from the learned-view pattern "
        "(a point is lost when its strong view is unlearned and a learned view of another "
        "class appears among its noisy features); verdicts use the paper's bound."
    )
    if "ntk" in rep:
        out += [""] + ntk_table(rep["ntk"])
    t = rep["timing"]
    out.append("timing (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    return "\n".join(out)


def text_table(cols: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Lines of a plain-text table: left-aligned columns, a dashed rule under the header."""
    widths = [max(len(str(r[i])) for r in [cols, *rows]) for i in range(len(cols))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
    return [line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]


def markdown_table(cols: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Lines of a GitHub-flavoured markdown table (a '|' in a cell is escaped)."""
    line = lambda r: "| " + " | ".join(str(v).replace("|", "\\|") for v in r) + " |"
    return [line(cols), line(["---"] * len(cols))] + [line(r) for r in rows]


def fmt_steps(x: float | None) -> str:
    """A GD-equivalent time, as an integer with thousands separators ('—' for none)."""
    return "—" if x is None else f"{x:,.0f}"


def two_readings_rows(rep: dict[str, Any]) -> list[dict[str, str]]:
    """Per claim with a trajectory reading: its end-point and trajectory verdicts, the
    fraction of t ≤ H at level, the time to level (mean over models [95% CI]), the
    mechanism in time (distillation), and whether the end point depends on the cap."""
    out = []
    for c in rep["claims"]:
        t = c.get("trajectory")
        if t is None:
            continue
        lo, hi = t["fraction_at_level"]
        ttl = t["time_to_level"]
        if ttl["mean"] is not None:
            ci = ttl["ci95"]
            when = fmt_steps(ttl["mean"]) + (
                f" [{fmt_steps(ci[0])}, {fmt_steps(ci[1])}]" if ci else ""
            )
        else:
            when = f"{ttl['reached']}/{ttl['models']} reach it"
        mech = t.get("mechanism")
        cap = bool(t.get("end_point_cap_dependent") or t.get("lead_changes"))
        out.append({
            "id": c["id"],
            "end": c["verdict"] + (" (cap-dependent)" if cap else ""),
            "fraction": f"{lo:.0%}–{hi:.0%}",
            "horizon": fmt_steps(t["horizon"]),
            "time": when,
            "mechanism": "" if mech is None else mech["verdict"],
            "trajectory": t["verdict"],
            "agree": "yes" if c["verdict"] == t["verdict"] else "NO",
        })  # fmt: skip
    return out


def two_readings(rep: dict[str, Any]) -> list[str]:
    """The terminal's second table: both readings of every claim side by side."""
    cols = ("claim", "end point", "at level for", "of t ≤", "time to level [95% CI]",
            "sooner than control", "trajectory", "agree")  # fmt: skip
    rows = [(r["id"], r["end"], r["fraction"], r["horizon"], r["time"], r["mechanism"],
             r["trajectory"], r["agree"]) for r in two_readings_rows(rep)]  # fmt: skip
    t0 = next(c["trajectory"] for c in rep["claims"] if "trajectory" in c)
    note = (
        "trajectory: at level (CI inside the bound, training set fitted) for ≥ 90% of t ≤ T, "
        f"on {t0['n_multi']:,} + {t0['n_single']:,} curve points at each recorded time "
        f"(GD-equivalent steps); they certify no E/μ below {t0['resolution']:.3f}"
    )
    return ["two readings: the end point (final models, full test sets) and the trajectory",
            *text_table(cols, rows), note]  # fmt: skip


_NTK_ROWS = {
    "deep": "deep learning (patch CNN)",
    "linearized": "linearized (finite width)",
    "infinite": "infinite-width NTK",
}
_NTK_COLUMNS = {
    "single": "single",
    "ensemble": "ensemble",
    "training_average": "training-average",
    "kd": "KD",
    "self_kd": "self-KD",
}
_NTK_VERDICTS = ("ntk_ensemble_helps", "ntk_kd_fails", "ntk_average_helps")


def _ntk_cell(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "—"
    lo, hi = cell["ci95"]
    return f"{cell['error_over_mu']:.3f} [{lo:.3f}, {hi:.3f}]"


def ntk_grid(ntk: dict[str, Any]) -> dict[str, Any]:
    """The deep-vs-NTK table (report.json ``ntk``) as strings, for the terminal and HTML:
    ``title``, ``head`` and ``body`` (error/μ [95% CI] per cell, '—' where a cell is not
    defined or not measured), ``extra`` (the extra columns' cells) and ``verdicts``
    [(name, verdict, reason)]."""
    tab = ntk["table"]
    rows_ = [r for r in ntk.get("rows", _NTK_ROWS) if r in tab]
    cols_ = list(ntk.get("columns", _NTK_COLUMNS))
    lin = tab.get("linearized", {}).get("single") or {}
    where = (
        f"; linearized and infinite-width rows on the first {lin['n_test_multi']} multi-view "
        f"/ {lin['n_test_single']} single-view test points"
        if lin
        else ""
    )
    verdicts = ntk.get("verdicts", {})
    names = [n for n in _NTK_VERDICTS if n in verdicts]
    names += [n for n in verdicts if n not in _NTK_VERDICTS]
    return {
        "title": f"deep learning vs NTK on the same training set{where}",
        "head": ["error/μ [95% CI]"] + [_NTK_COLUMNS.get(c, c) for c in cols_],
        "body": [
            [_NTK_ROWS.get(r, r)] + [_ntk_cell(tab[r].get(c)) for c in cols_] for r in rows_
        ],  # fmt: skip
        "extra": [
            f"{r} {c}: {_ntk_cell(tab[r][c])}"
            for r in rows_
            for c in ntk.get("extra_columns", ())
            if tab[r].get(c)
        ],
        "verdicts": [(n, verdicts[n]["verdict"], verdicts[n].get("reason", "")) for n in names],
    }


def ntk_table(ntk: dict[str, Any]) -> list[str]:
    """Lines of the deep-vs-NTK table (:func:`ntk_grid`), then one line per NTK verdict."""
    g = ntk_grid(ntk)
    head, body = g["head"], g["body"]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
    out = [g["title"], line(head), line(["-" * w for w in widths])] + [line(r) for r in body]
    if g["extra"]:
        out.append("extra columns: " + "; ".join(g["extra"]))
    out += [f"{n}: {v} — {reason}" for n, v, reason in g["verdicts"]]
    return out
