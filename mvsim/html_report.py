"""report.html: one self-contained page per run, to open in a browser and to share.

A verify run (:func:`write_verify`), a supporting experiment (:func:`write_experiment`)
and a sweep store (:func:`write_sweep`) each get one file: the figures inlined as SVG,
the CSS inlined, no script and no network access. The pages are Jinja2 templates
(``mvsim/templates/*.html.j2``, shipped as package data); this module only turns a
report dict (or a store's DataFrame) into the plain values the templates print, and
every value comes from what report.json (or the store) holds, so
``mvsim plot-report DIR/report.json`` rebuilds the page from the JSON alone.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mvsim.report import (
    fmt_bound,
    ntk_grid,
    two_readings_rows,
    view_analysis_line,
    view_gain_totals,
    write_text,
)

if TYPE_CHECKING:
    import jinja2
    import pandas as pd

# What to look for in each figure, by its file stem (sweep figures: by prefix, below).
CAPTIONS: dict[str, str] = {
    "error_curves": "Test error over training, in GD-equivalent steps (log axis), on the "
    "curve subset: each group's mean (thick) and models (thin), the theorems' levels, the "
    "horizon T of the trajectory reading (dotted) and each group's first time at its level "
    "(●). Look for whether the students reach the level before their control, and for "
    "how much of t ≤ T each curve spends at its level.",
    "claims_vs_bounds": "Each claim's error/μ with its 95% CI against the paper's bound (grey "
    "band). A PASS needs the whole interval inside the band; an interval wholly outside it "
    "is a FAIL.",
    "comparison_bars": "Test error within the single-view and the multi-view stratum for each "
    "kind of model; a black dash marks a distillation claim's control. Look for the "
    "single-view error the single model keeps and whether the ensemble and the students "
    "remove it.",
    "alignment_over_time": "Alignment Λ of both views (solid: view 1, dashed: view 2) of the "
    "first classes of single model 0 over GD steps, log-log, with ϱ dotted. Look for one "
    "view per class crossing ϱ while the other stalls: the lottery.",
    "alignment_phases": "Left: the same curves with the step at which each view reaches ϱ. "
    "Right: the growth rate dΛ/dt against Λ; during phase 1 it should follow the power law "
    "of slope q − 1 drawn as the reference line.",
    "view_matrix": "Views learned by each single model (rows) for each class (columns). The "
    "theory expects 1 almost everywhere; a 2 is a class that learned both views, a 0 one "
    "that learned none.",
    "lottery": "Each (model, class) at its initial alignment ratio of view 1 to view 2, "
    "coloured by the views it learned. Look for view 1 winning right of 1 and view 2 left "
    "of it, and for two-view classes gathering near 1 (close races).",
    "race": "Top: fraction of classes that learned both views against the initial ratio of "
    "the losing to the winning view. Bottom: how many classes the init puts in each bin. "
    "Two-view classes should come from ratios near 1.",
    "memorisation": "Single-view training points: the margin their features carry (x) "
    "against the margin their noise carries (y). Points whose strong view was not learned "
    "(crosses) sit near x = 0: they are fitted through their noise.",
    "self_distillation_views": "For each self-distilled student: the views of its own "
    "single model (its lottery), of its teacher, of its control and its own. Look for views "
    "the student has that its own single lacks and its teacher has.",
    "ntk_bars": "error/μ with 95% CIs for the deep network, the linearized network and the "
    "infinite-width NTK. Look for the ensemble helping in both regimes and distillation "
    "helping the deep network only.",
    "dropping": "Accuracy per test stratum before and after zeroing the neurons that carry a "
    "learned view, and for the ensembles that should restore it, with 95% CIs. Look for the "
    "drop on the learned view and which ensembles bring it back.",
    "gaussian": "Left: test error of the single model, the ensemble and the KD student on "
    "multi-view and on Gaussian data (log scale). Right: the ensemble's relative error "
    "reduction; the paper expects little gain without multi-view structure.",
    "theory_scaling": "error/μ of the single models against k under the paper's own "
    "parameter recipe, with the [0.49, 0.51] band in grey, and the fraction of classes "
    "that learned exactly one view. Look for whether either approaches the theory as k grows.",
}
_SWEEP_CAPTIONS: tuple[tuple[str, str], ...] = (
    ("error_vs_", "error/μ of each claim against {axis}: 95% CIs as error bars, the "
     "theorem's bound as a grey band. Look for where the intervals enter or leave the band."),
    ("views_vs_", "Fraction of classes whose single models learned exactly one view (solid) "
     "and both views (dashed) against {axis}. The theory expects one view almost everywhere."),
    ("phase_", "error/μ and verdict of one claim in every cell of a two-axis grid "
     "(colour-blind-safe cividis). Look for the region of PASS cells, if any."),
)  # fmt: skip


def caption(stem: str) -> str:
    """The 1–2 sentence caption of the figure whose file stem is ``stem``."""
    if stem in CAPTIONS:
        return CAPTIONS[stem]
    for prefix, text in _SWEEP_CAPTIONS:
        if stem.startswith(prefix):
            return text.format(axis=stem[len(prefix) :])
    return ""


# --- figures --------------------------------------------------------------------------

_ID = re.compile(r'\bid="([^"]+)"')
_REF = re.compile(r'(url\(#|href="#)([^)"]+)')
_SIZE = re.compile(r'\s(width|height)="([\d.]+)pt"')


def inline_svg(markup: str, prefix: str) -> str:
    """An SVG file's markup, ready to sit inside an HTML page next to others.

    Drops the XML prolog, the DOCTYPE and the metadata block; prefixes every id (and every
    reference to one) with ``prefix``, since matplotlib reuses ids such as "figure_1" in
    every file and one page must not hold an id twice; and replaces the fixed size in pt
    by a maximum width, so the figure shrinks with a narrow window (its viewBox keeps the
    aspect ratio).
    """
    start = markup.find("<svg")
    if start < 0:
        raise ValueError("not an SVG document")
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", markup[start:], flags=re.S)
    svg = _ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    svg = _REF.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", svg)
    head_end = svg.index(">")
    head, body = svg[:head_end], svg[head_end:]
    size = svg_size(svg)
    head = _SIZE.sub("", head)
    if "width" in size:  # 1 pt = 4/3 CSS px
        head += f' style="max-width: {size["width"] * 4 / 3:.0f}px"'
    return head + body.rstrip() + "\n"


def svg_size(markup: str) -> dict[str, float]:
    """{'width', 'height'} in pt of an SVG document's root element (matplotlib's units)."""
    start = markup.find("<svg")
    return {k: float(v) for k, v in _SIZE.findall(markup[start : markup.find(">", start)])}


def figures(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The SVG files among ``paths`` (in order), each as {name, svg, caption, wide}; a
    wide figure (side-by-side panels) gets a row of the page to itself."""
    out = []
    for i, p in enumerate(Path(p) for p in paths if str(p).endswith(".svg")):
        markup = p.read_text(encoding="utf-8")
        size = svg_size(markup)
        wide = size.get("width", 0) > 2 * size.get("height", math.inf)
        svg = inline_svg(markup, f"f{i}")
        out.append({"name": p.stem, "svg": svg, "caption": caption(p.stem), "wide": wide})
    return out


# --- values for the templates -----------------------------------------------------------


def fmt(v: Any, digits: int | None = None) -> str:
    """A config or summary value as text: floats to ``digits`` significant digits (None:
    every digit, as the config holds it), pairs as (lo, hi), None as None."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return repr(v) if digits is None else f"{v:.{digits}g}"
    if isinstance(v, list | tuple):
        return "(" + ", ".join(fmt(x, digits) for x in v) + ")"
    if isinstance(v, Mapping):
        return ", ".join(f"{k} {fmt(x, digits)}" for k, x in v.items())
    return str(v)


def _config_sections(config: Mapping[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    return [
        (sec, [(name, fmt(v)) for name, v in fields.items()])
        for sec, fields in config.items()
        if isinstance(fields, Mapping)
    ]


def _run_header(rep: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Where a report came from: versions, backend, machine, date."""
    machine = rep.get("machine") or {}
    return [
        ("mvsim", str(rep.get("mvsim_version", "?"))),
        ("jax", str(rep.get("jax_version", "?"))),
        ("backend", f"{rep.get('backend', '?')} ({', '.join(rep.get('devices', []))})"),
        ("machine", f"{machine.get('processor', '?')}, {machine.get('cpus', '?')} CPUs"),
        ("date", rep.get("created") or "not recorded (a report from before mvsim kept dates)"),
    ]


def _claim_row(c: Mapping[str, Any]) -> dict[str, Any]:
    per = c.get("per_model") or []
    inside = sum(r["verdict"] == "PASS" for r in per)
    fk = c.get("finite_k_prediction")
    return {
        "id": c["id"],
        "description": c.get("description", ""),
        "bound": fmt_bound(c["bound"]["lo"], c["bound"]["hi"]),
        "error": f"{c['error_over_mu']:.4f}",
        "ci": f"[{c['ci95'][0]:.4f}, {c['ci95'][1]:.4f}]",
        "e_single": f"{c['error_single_view']:.4f}",
        "e_multi": f"{c['error_multi_view']:.5f}",
        "finite_k": "" if fk is None else f"{fk:.3f}",
        "inside": f"{inside}/{len(per)}" if per else "",
        "verdict": c["verdict"],
        "reason": c.get("reason", ""),
        "over_time": (c.get("trajectory") or {}).get("readings", ""),
        "control": _control(c),
        "per_model": [
            {
                "model": r["model"],
                "error": f"{r['error_over_mu']:.4f}",
                "ci": f"[{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}]",
                "e_single": f"{r['error_single_view']:.4f}",
                "e_multi": f"{r['error_multi_view']:.5f}",
                "train_accuracy": f"{r['train_accuracy']:.4f}",
                "views": fmt(r.get("classes_with_views")),
                "verdict": r["verdict"],
            }
            for r in per
        ],
    }


def _control(c: Mapping[str, Any]) -> dict[str, str] | None:
    """A distillation claim's control, as the terminal table's control line says it."""
    if "control_error_over_mu" not in c:
        return None
    tot = view_gain_totals(c)
    ci = c.get("control_ci95")
    return {
        "error": f"{c['control_error_over_mu']:.4f}",
        "ci": f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "",
        "gains": f"{tot['gained_from_teacher']} views gained from the teacher, "
        f"{tot['gained_neither_had']} that neither had, {tot['own_lottery_lost']} of the own "
        f"lottery lost; the controls themselves gained {tot['control_gained']}",
    }


def _mechanism(rep: Mapping[str, Any]) -> dict[str, Any]:
    mech = rep["mechanism"]
    lot = mech.get("lottery_prediction_accuracy")
    mem = (mech.get("memorisation") or {}).get("unlearned_strong_view")
    return {
        "fractions": f"{mech['frac_one_view']:.3f} / {mech['frac_two_views']:.3f} / "
        f"{mech['frac_no_view']:.3f}",
        "lottery": "n/a" if lot is None else f"{lot:.3f}",
        "analysis": view_analysis_line(rep),
        "memorisation": (
            f"{mem['n_points']} single-view training points whose strong view was not learned: "
            f"F_y from their features {mem['mean_F_y_features_only']:.3f}, from their noise "
            f"{mem['mean_F_y_noise_only']:.3f}"
            if mem
            else ""
        ),
        "race": [
            {
                "bin": f"[{r['ratio_lo']:g}, {r['ratio_hi']:g}]",
                "classes": r["classes"],
                "two": "—" if r["frac_two_views"] is None else f"{r['frac_two_views']:.3f}",
            }
            for r in mech.get("two_views_by_initial_ratio", [])
        ],
    }


def _timing(timing: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(k, f"{v:.1f}") for k, v in timing.items()]


# --- pages ----------------------------------------------------------------------------


@functools.cache
def _env() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("mvsim", "templates"),
        autoescape=True,  # every value is text; only the SVG figures go in as markup
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the render, not blanks
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **values: Any) -> str:
    """Render ``mvsim/templates/<template>`` with ``values``."""
    return _env().get_template(template).render(**values)


def _training(t: Mapping[str, Any]) -> str:
    """How the models were trained: the integrator (reports before it existed used GD)."""
    if t.get("integrator", "gd") == "gd":
        return f"fixed-η GD, η = {t['eta']:.4g}, T = {t['T']}"
    return (f"gradient flow ({t['flow_solver']}, rtol {t['flow_rtol']:g}), "
            f"η = {t['eta']:.4g}, T·η = {t['T'] * t['eta']:.4g}")  # fmt: skip


def render_verify(rep: Mapping[str, Any], figure_paths: Iterable[str | Path]) -> str:
    """The page of a verify report (report.json's dict) and its figure files."""
    cfg = rep["config"]
    d, m = cfg["data"], cfg["model"]
    run = [
        ("preset", rep["preset"]),
        ("k", str(d["k"])),
        ("seeds", str(cfg["verify"]["seeds"])),
        ("data", f"d = {d['d']}, P = {d['P']}, N = {d['N']}, μ = {d['mu']:.4g}"),
        ("model", f"m = {m['m']}, q = {m['q']}, ϱ = {m['varrho']:g}, σ0 = {m['sigma_0']:g}"),
        ("training", _training(cfg["train"])),
    ]
    figs = figures(figure_paths)
    lead = next((f for f in figs if f["name"] == "error_curves"), None)
    return render(
        "verify.html.j2",
        title=f"mvsim verify — preset {rep['preset']}, k = {d['k']}",
        run=run,
        provenance=_run_header(rep),
        claims=[_claim_row(c) for c in rep["claims"]],
        readings=two_readings_rows(rep),
        lead_figure=lead,
        mechanism=_mechanism(rep) if "mechanism" in rep else None,
        ntk=ntk_grid(rep["ntk"]) if "ntk" in rep else None,
        figures=[f for f in figs if f is not lead],
        config=_config_sections(cfg),
        timing=_timing(rep.get("timing", {})),
    )


def _experiment_seeds(rep: Mapping[str, Any]) -> str:
    """The seeds of an experiment's run: its config's, or one per k where its points
    differ (k-scaling gives fewer seeds to larger k; the config holds only the first's)."""
    per = [r["seeds"] for r in rep.get("rows", []) if "seeds" in r]
    if len(set(per)) <= 1:
        return str(rep["config"]["verify"]["seeds"])
    return ", ".join(map(str, per)) + (" (per k)" if len(per) == len(rep.get("ks", ())) else "")


def render_experiment(
    rep: Mapping[str, Any], figure_paths: Iterable[str | Path], table: str
) -> str:
    """The page of a supporting experiment's report, with its terminal ``table``."""
    cfg = rep["config"]
    run = [
        ("experiment", rep["experiment"]),
        ("preset", rep["preset"]),
        ("k", ", ".join(map(str, rep["ks"])) if "ks" in rep else str(cfg["data"]["k"])),
        ("seeds", _experiment_seeds(rep)),
    ]
    verdicts = [
        {"id": c["id"], "verdict": c["verdict"], "reason": c.get("reason", "")}
        for c in rep.get("claims", [])
    ]
    rows = rep.get("rows", [])
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return render(
        "experiment.html.j2",
        title=f"mvsim experiment {rep['experiment']} — preset {rep['preset']}",
        description=rep.get("description", ""),
        run=run,
        provenance=_run_header(rep),
        table=table,
        verdicts=verdicts,
        summary=[(k, fmt(v, 4)) for k, v in (rep.get("summary") or {}).items()],
        columns=columns,
        rows=[[fmt(r.get(c, ""), 4) for c in columns] for r in rows],
        figures=figures(figure_paths),
        config=_config_sections(cfg),
        timing=_timing(rep.get("timing", {})),
    )


def render_sweep(df: pd.DataFrame, figure_paths: Iterable[str | Path], store: str) -> str:
    """The page of a sweep store (:func:`mvsim.store.read_results`'s DataFrame): an index
    of its points with each claim's error/μ and verdict, and its figures."""
    axes = list(df.attrs.get("axes") or [c[6:] for c in df.columns if c.startswith("point_")])
    claims = list(dict.fromkeys(df["claim"]))
    points = []
    for _, sub in df.groupby("config_hash", sort=False):
        first = sub.iloc[0]
        by_claim = {r["claim"]: r for _, r in sub.iterrows()}
        points.append(
            {
                "axis_values": [fmt(first[f"point_{a}"], 4) for a in axes],
                "cells": [_sweep_cell(by_claim.get(c)) for c in claims],
                "seconds": f"{first['seconds']:.1f}",
            }
        )
    configs = [json.loads(s) for s in dict.fromkeys(df["config_json"])]
    run, provenance = _sweep_header(df, store, axes, len(points))
    return render(
        "sweep.html.j2",
        title=f"mvsim sweep — {Path(store).name}",
        run=run,
        provenance=provenance,
        axes=axes,
        claims=claims,
        points=points,
        figures=figures(figure_paths),
        config=_config_sections(_common(configs, axes)),
        total_seconds=f"{df.drop_duplicates('config_hash')['seconds'].sum():.1f}",
    )


def _sweep_cell(r: Any) -> dict[str, str] | None:
    if r is None:
        return None
    return {"error": f"{r['error_over_mu']:.4f}", "ci": f"[{r['ci_lo']:.4f}, {r['ci_hi']:.4f}]",
            "verdict": str(r["verdict"])}  # fmt: skip


def _sweep_header(
    df: pd.DataFrame, store: str, axes: Sequence[str], n: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(what was swept, where and when it ran), from the store's rows."""
    uniq = lambda col: ", ".join(sorted({str(v) for v in df[col].dropna()}))
    run = [
        ("store", str(store)),
        ("preset", uniq("preset")),
        ("points", f"{n} over {', '.join(axes)}"),
        ("k", uniq("point_k") if "point_k" in df else _fixed(df, "data", "k")),
        ("seeds", uniq("point_seeds") if "point_seeds" in df else _fixed(df, "verify", "seeds")),
    ]
    provenance = [
        ("mvsim", uniq("mvsim_version")),
        ("jax", uniq("jax_version")),
        ("backend", f"{uniq('backend')} ({uniq('n_devices')} devices)"),
        # ISO 8601 UTC as stored, to the second
        ("date", f"{df['started_at'].min()[:19]} to {df['finished_at'].max()[:19]} UTC"),
    ]
    return run, provenance


def _fixed(df: pd.DataFrame, section: str, name: str) -> str:
    """The values of a config field over the store's points, as text."""
    return ", ".join(sorted({str(json.loads(s)[section][name]) for s in df["config_json"]}))


def _common(configs: list[dict[str, Any]], axes: Sequence[str]) -> dict[str, Any]:
    """The config fields every point shares (the swept ones are in the index)."""
    first = configs[0]
    out: dict[str, Any] = {"preset": first.get("preset")}
    for sec, fields in first.items():
        if isinstance(fields, Mapping):
            out[sec] = {
                k: v
                for k, v in fields.items()
                if k not in axes and all(c[sec][k] == v for c in configs)
            }
    return out


# --- files ----------------------------------------------------------------------------


def write_verify(rep: Mapping[str, Any], path: str | Path, figure_paths: Iterable) -> Path:
    """:func:`render_verify` to ``path``."""
    return write_text(path, render_verify(rep, figure_paths))


def write_experiment(
    rep: Mapping[str, Any], path: str | Path, figure_paths: Iterable, table: str
) -> Path:
    """:func:`render_experiment` to ``path``."""
    return write_text(path, render_experiment(rep, figure_paths, table))


def write_sweep(df: pd.DataFrame, path: str | Path, figure_paths: Iterable, store: str) -> Path:
    """:func:`render_sweep` to ``path``."""
    return write_text(path, render_sweep(df, figure_paths, store))
