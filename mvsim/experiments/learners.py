"""Bring your own learner: the claims for the patch CNN, a ViT-tiny and an MLP side by side.

The paper argues that multi-view structure explains ensembles and distillation in real
deep networks, not only in its two-layer patch CNN. Here the whole verify pipeline
(singles, their ensemble, KD and self-KD students with their own-init controls, the
training average) runs for each learner on the same data: the same streams give every
learner the same training set and the same test sets (the supporting experiments'
``exp_n_test_*`` sizes). For each learner it answers:

- does a single model learn one view per class? (the view fractions of the singles, read
  from behaviour for every learner, so the three are measured by one ruler; the patch
  CNN's Λ reading and its agreement with behaviour are reported beside it);
- does the ensemble fix it? (the ensemble's error/μ against the singles', and its claim);
- does KD move the fix into one model, against its control? (each student's single-view
  error against its own-init control's, by the exact paired CI of :mod:`mvsim.claims`).

A learner given with ``--learner`` (or ``learner``) that is not built in is run as a
fourth column.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from mvsim import claims, mechanism, store, verify
from mvsim import learners as learners_mod
from mvsim.config import BUILTIN_LEARNERS, Config
from mvsim.experiments import check_seeds, envelope, text_table
from mvsim.presets import learner_fields
from mvsim.progress import Progress
from mvsim.report import write_json
from mvsim.stats import Verdict, combine_verdicts

LEARNERS = BUILTIN_LEARNERS
MODELS = ("single", "ensemble", "kd", "self_distillation", "control", "training_average")


def learners_of(cfg: Config) -> tuple[str, ...]:
    """The built-in learners, and the config's own learner when it is a user's module."""
    own = cfg.model.learner
    return LEARNERS if own in LEARNERS else (*LEARNERS, own)


def configs(cfg: Config, learners: tuple[str, ...] | None = None) -> list[Config]:
    """One config per learner: ``cfg`` with that learner and the experiments' test sizes
    (the same data and test streams for all). The fields the presets derive from the
    learner (η, the KD objective: :func:`mvsim.presets.learner_fields`) follow each
    learner, except those ``cfg`` set by hand (that differ from what its own learner
    derives), which every learner keeps."""
    E, flat = cfg.experiment, cfg.flat()
    own = learner_fields(cfg.model.learner, cfg.data.k, cfg.model.varrho)
    kept = {f: flat[f] for f, v in own.items() if flat[f] != v}
    return [
        cfg.replace(learner=name, n_test_multi=E.exp_n_test_multi,
                    n_test_single=E.exp_n_test_single,
                    learner_kwargs=cfg.model.learner_kwargs if name == cfg.model.learner else {},
                    **{**learner_fields(name, cfg.data.k, cfg.model.varrho), **kept})
        for name in (learners or learners_of(cfg))
    ]  # fmt: skip


def run(
    cfg: Config,
    *,
    learners: tuple[str, ...] | None = None,
    progress: Progress = True,
    done: Path | None = None,
) -> dict[str, Any]:
    """verify with every claim for each learner; returns the report dict (``rows``: one
    per learner and model group; ``summary``: the three answers per learner).

    ``done``: a folder where each learner's rows are kept as it finishes
    (``<config hash>.json``), and taken from on a rerun, so an interrupted run loses no
    learner it had finished."""
    check_seeds("learners", cfg)
    cfgs = configs(cfg, learners)
    for c in cfgs:  # every learner's import path and output shape before any training
        learners_mod.check(c.model, c.data.k, c.data.d, c.data.P)
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    timing: dict[str, float] = {}
    for c in cfgs:
        part = _learner_part(c, progress, done)
        rows += part["rows"]
        summary[c.model.learner] = part["summary"]
        timing[c.model.learner] = part["seconds"]
    timing["total"] = sum(timing.values())
    rep = envelope("learners", cfg)
    rep.update(
        {
            "description": __doc__.strip().splitlines()[0],
            "learners": [c.model.learner for c in cfgs],
            "rows": rows,
            "summary": summary,
            "timing": {k: round(v, 3) for k, v in timing.items()},
        }
    )
    return rep


def _learner_part(c: Config, progress: Progress, done: Path | None) -> dict[str, Any]:
    """One learner's rows, answers and seconds: read from ``done`` when a run of this very
    config finished there, else measured (and kept there)."""
    path = None if done is None else Path(done) / f"{store.config_hash(c)}.json"
    if path is not None and path.is_file():
        if progress:
            print(f"learners: {c.model.learner} taken from {path} (finished earlier)")
        return json.loads(path.read_text())
    t = time.perf_counter()
    m = verify.run(c, progress=progress)
    results = {r.id: r for r in claims.evaluate_all(m)}
    part = {"learner": c.model.learner, "rows": _rows(c.model.learner, m, results),
            "summary": _answers(m, results), "seconds": time.perf_counter() - t}  # fmt: skip
    if path is not None:
        write_json(path, part)
        part = json.loads(path.read_text())  # the same JSON form as a resumed part
    return part


def _fractions(views: np.ndarray) -> dict[str, float]:
    per_class = np.asarray(views, bool).sum(-1)
    return {f"frac_{n}": float((per_class == v).mean())
            for n, v in (("one_view", 1), ("two_views", 2), ("no_view", 0))}  # fmt: skip


def _rows(learner: str, m: verify.Measurements, results: dict) -> list[dict[str, Any]]:
    """One flat row per trained model group: error/μ [CI], verdict, finite-k prediction,
    training accuracy, and the view fractions read from behaviour (and, for the patch
    CNN, from Λ with the agreement of the two)."""
    mu, thr = m.cfg.data.mu, m.cfg.verify.view_accuracy
    out = []
    for name in MODELS:
        g = m.groups.get(name)
        if g is None:
            continue
        est = claims._estimate(g, mu)
        lo, hi = est.ci_over_mu()
        r = results.get(name)
        row: dict[str, Any] = {
            "learner": learner, "model": name, "error_over_mu": est.error_over_mu,
            "ci_lo": lo, "ci_hi": hi, "error_single_view": est.error_single,
            "error_multi_view": est.error_multi, "verdict": r.verdict.name if r else None,
            "finite_k_prediction": r.finite_k_prediction if r else None,
            "train_accuracy_min": float(np.min(g.train_accuracy)), "models": len(g.train_accuracy),
            "view_analysis": m.view_analysis,
        }  # fmt: skip
        if g.steps is not None:  # with kd_stop 'converged', a student at its cap had not
            row["steps_max"] = float(np.max(g.steps))
        if g.view_accuracy is not None:
            beh = mechanism.behavioural_views(g.view_accuracy, thr)
            row.update({f"{k}_behaviour": v for k, v in _fractions(beh).items()})
            if m.view_analysis == "weights":
                row.update({f"{k}_weights": v for k, v in _fractions(g.views).items()})
                row["view_agreement"] = float((beh == g.views).mean())
        out.append(row)
    return out


def _answers(m: verify.Measurements, results: dict) -> dict[str, Any]:
    """The three questions, per learner: one view per class, the ensemble's fix, KD's
    transfer against its control."""
    mu = m.cfg.data.mu
    single, ens = results["single"], results["ensemble"]
    out: dict[str, Any] = {
        "view_analysis": m.view_analysis,
        **_fractions(m.groups["single"].views),
        "single_verdict": single.verdict.name,
        "single_error_over_mu": single.estimate.error_over_mu,
        "ensemble_error_over_mu": ens.estimate.error_over_mu,
        "ensemble_verdict": ens.verdict.name,
        "ensemble_relative_reduction": (
            1 - ens.estimate.error_over_mu / single.estimate.error_over_mu
            if single.estimate.error_over_mu > 0 else None
        ),
    }  # fmt: skip
    for name in ("kd", "self_distillation"):
        r = results.get(name)
        if r is None:
            continue
        vs = [Verdict[v["verdict"]] for v in r.extra["versus_control"]]
        gains = r.extra["view_gains"]
        out[name] = {
            "error_over_mu": r.estimate.error_over_mu,
            "control_error_over_mu": _est(m, "control", mu),
            "verdict": r.verdict.name,
            "against_control": combine_verdicts(vs).name,
            "students_better_than_control": sum(v == Verdict.PASS for v in vs),
            "students": len(vs),
            "views_gained_from_teacher": sum(g["gained_from_teacher"] for g in gains),
            "control_views_gained": sum(g["gained_neither_had"]
                                        for g in r.extra["control_view_gains"]),
        }  # fmt: skip
    agree = claims.mechanism(m).get("view_agreement")
    if agree:
        out["view_agreement"] = {
            "agree": sum(a["agree"] for a in agree.values()),
            "cells": sum(a["cells"] for a in agree.values()),
            "differ": {n: a["differ"] for n, a in agree.items() if a["differ"]},
        }
    return out


def _est(m: verify.Measurements, name: str, mu: float) -> float:
    return claims._estimate(m.groups[name], mu).error_over_mu


def table(rep: dict[str, Any]) -> str:
    """The terminal table: error/μ [95% CI] and verdict per learner and model, then the
    views and the three answers per learner."""
    cfg = rep["config"]
    d = cfg["data"]
    out = [
        f"mvsim experiment learners — preset '{rep['preset']}': k={d['k']} d={d['d']} "
        f"P={d['P']} N={d['N']} seeds={cfg['verify']['seeds']}; learners "
        + ", ".join(rep["learners"]),
        "error/μ [95% CI] verdict (control: the student's own-init twin as teacher)",
    ]
    cell = {(r["learner"], r["model"]): r for r in rep["rows"]}
    models = [n for n in MODELS if any((lr, n) in cell for lr in rep["learners"])]
    body = []
    for lr in rep["learners"]:
        row = [lr]
        for n in models:
            r = cell.get((lr, n))
            v = "" if r is None or r["verdict"] is None else f" {r['verdict']}"
            row.append("—" if r is None else _cell(r) + v)
        body.append(row)
    out += text_table(["learner", *models], body)
    for lr in rep["learners"]:
        out += _answer_lines(lr, rep["summary"][lr])
    out.append("timing (s): " + ", ".join(f"{k} {v:.1f}" for k, v in rep["timing"].items()))
    return "\n".join(out)


def _cell(r: dict[str, Any]) -> str:
    return f"{r['error_over_mu']:.3f} [{r['ci_lo']:.3f}, {r['ci_hi']:.3f}]"


def _answer_lines(learner: str, s: dict[str, Any]) -> list[str]:
    red = s["ensemble_relative_reduction"]
    lines = [
        f"{learner}: singles' classes with one / two / no view = {s['frac_one_view']:.2f} / "
        f"{s['frac_two_views']:.2f} / {s['frac_no_view']:.2f} (read from {s['view_analysis']})",
        f"    ensemble: {s['ensemble_error_over_mu']:.3f}μ vs single "
        f"{s['single_error_over_mu']:.3f}μ"
        + ("" if red is None else f" ({red:.0%} lower)")
        + f", claim {s['ensemble_verdict']}",
    ]
    for name in ("kd", "self_distillation"):
        k = s.get(name)
        if k:
            lines.append(
                f"    {name}: {k['error_over_mu']:.3f}μ vs control "
                f"{k['control_error_over_mu']:.3f}μ"
                f"; {k['students_better_than_control']}/{k['students']} students significantly "
                f"better than their control ({k['against_control']}); views gained from the "
                f"teacher {k['views_gained_from_teacher']}, by the controls "
                f"{k['control_views_gained']}"
            )
    agree = s.get("view_agreement")
    if agree:
        where = "; ".join(f"{g}: " + ", ".join(_differ(c) for c in cells)
                          for g, cells in agree["differ"].items())  # fmt: skip
        lines.append(f"    Λ vs behaviour: agree on {agree['agree']}/{agree['cells']} (model, "
                     f"class, view) cells" + (f"; differ at {where}" if where else ""))  # fmt: skip
    return lines


def _differ(c: dict[str, Any]) -> str:
    """One cell where the Λ and the behavioural readings disagree, in words."""
    acc = "—" if c["accuracy"] is None else f"{c['accuracy']:.2f}"
    return (f"model {c['model']} class {c['class']} view {c['view']} ({c['learned_by']} only; "
            f"accuracy {acc}, Λ {c['lambda_over_varrho']:.2f}ϱ)")  # fmt: skip


def figure(rep: dict[str, Any], out: Path) -> list[str]:
    """Left: error/μ (95% CI) of each model group per learner; right: the singles' one /
    two / no-view fractions per learner (read from behaviour)."""
    from mvsim.plots import PALETTE, _plt, _save

    plt = _plt()
    cell = {(r["learner"], r["model"]): r for r in rep["rows"]}
    learners = rep["learners"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 1.4]})
    w = 0.8 / len(MODELS)
    for j, name in enumerate(MODELS):
        xs, ys, lo, hi = [], [], [], []
        for g, lr in enumerate(learners):
            r = cell.get((lr, name))
            if r is None:
                continue
            xs.append(g + (j - (len(MODELS) - 1) / 2) * w)
            ys.append(r["error_over_mu"])
            lo.append(max(r["error_over_mu"] - r["ci_lo"], 0.0))
            hi.append(max(r["ci_hi"] - r["error_over_mu"], 0.0))
        ax.bar(xs, ys, w, yerr=[lo, hi], capsize=2, color=PALETTE[j % len(PALETTE)],
               label=name.replace("_", " "), error_kw={"lw": 0.8})  # fmt: skip
    ax.set_xticks(range(len(learners)), learners)
    # Linear below 0.01μ (zeros and the 0.001μ bounds stay visible), logarithmic above:
    # one learner's errors can be 1000× another's (the MLP's 9μ beside 0.006μ).
    ax.set_yscale("symlog", linthresh=0.01, linscale=0.5)
    ax.set(ylabel="test error / μ (95% CI, symlog)", title="The claims, learner by learner")
    ax.legend(fontsize=7, ncol=3)
    bottom = np.zeros(len(learners))
    for j, (key, label) in enumerate((("frac_one_view_behaviour", "one view"),
                                      ("frac_two_views_behaviour", "two views"),
                                      ("frac_no_view_behaviour", "no view"))):  # fmt: skip
        vals = np.array([cell[(lr, "single")].get(key, np.nan) for lr in learners])
        ax2.bar(range(len(learners)), vals, 0.6, bottom=bottom, color=PALETTE[j + 1], label=label)
        bottom += np.nan_to_num(vals)
    ax2.set_xticks(range(len(learners)), learners)
    ax2.set(ylabel="fraction of (single model, class)", ylim=(0, 1.05),
            title="Views learned (behaviour)")  # fmt: skip
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out, "learners")
