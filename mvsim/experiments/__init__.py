"""The paper's supporting experiments (issue 8), beside the four theorems.

- ``dropping`` (:mod:`.dropping`): zero the neurons of a class that carry its learned
  view; accuracy by view before and after; ensembles of the other seeds restore it.
- ``gaussian`` (:mod:`.gaussian`): single vs ensemble vs KD on a Gaussian mixture with
  the same shapes, beside the multi-view data; claim ``gaussian_ensemble_no_gain``.
- ``theory-scaling`` (:mod:`.theory_scaling`): the paper's own parameter recipe (the
  ``theory`` preset) at growing k.
- ``k-scaling`` (:mod:`.k_scaling`): a preset family (demo, demo-logm, demo-theory) swept
  over k through the sweep store, every claim and the race model at each k.
- ``learners`` (:mod:`.learners`, issue 18): every claim for the patch CNN, a ViT-tiny and
  an MLP (and a user's module) side by side on the same data.
- ``race`` (:mod:`.race`, issue 24): the lever map of the race between a class's two views,
  one lever at a time from the demo, through a sweep store.

Each ``run_*`` is a function of a config (theory-scaling: of a preset, overrides and a
list of k) and returns a JSON-ready report dict with the full config, versions, timing
and ``rows``: flat dicts of scalars, one per measured cell, ready for a results store.
``write`` saves it atomically (``report.write_json``) with its figure (PNG + SVG).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mvsim.config import Config, ConfigError
from mvsim.report import header, text_table, write_json
from mvsim.stats import clopper_pearson_interval

NAMES = ("dropping", "gaussian", "learners", "theory-scaling", "k-scaling", "race")
DEFAULT_PRESET = {"dropping": "demo", "gaussian": "demo", "learners": "demo",
                  "theory-scaling": "theory", "k-scaling": "demo", "race": "demo"}  # fmt: skip
# Single models each needs: dropping restores with the other seeds, gaussian and learners
# measure an ensemble and KD students; theory-scaling evaluates the single models alone;
# k-scaling's default claims include the ensemble.
MIN_SEEDS = {"dropping": 2, "gaussian": 2, "learners": 2, "theory-scaling": 1, "k-scaling": 2,
             "race": 1}  # fmt: skip


def check_seeds(name: str, cfg: Config) -> None:
    """Raise :class:`ConfigError` (naming ``seeds`` / ``--seeds`` and the experiment) when
    experiment ``name`` cannot run with ``cfg``'s seeds, before any compute."""
    if cfg.verify.seeds < MIN_SEEDS[name]:
        raise ConfigError(
            "seeds",
            cfg.verify.seeds,
            f"the {name} experiment needs seeds ≥ {MIN_SEEDS[name]} (--seeds): it compares "
            "each model with the other seeds",
        )


def envelope(name: str, cfg: Config) -> dict[str, Any]:
    """The header every experiment report shares with a verify report."""
    return {"experiment": name, **header(cfg)}


def rate_ci(correct: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """(rate, lo, hi): a proportion with its exact Clopper–Pearson interval (NaNs if n = 0)."""
    if n == 0:
        return math.nan, math.nan, math.nan
    lo, hi = clopper_pearson_interval(int(correct), int(n), level)
    return correct / n, lo, hi


def fmt_ci(rate: float, lo: float, hi: float, digits: int = 3) -> str:
    """'0.512 [0.498, 0.526]', or '—' for an undefined rate; an unbounded end shows as ∞."""
    if rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return "—"
    end = lambda v, inf: inf if v is None or not math.isfinite(v) else f"{v:.{digits}f}"
    return f"{rate:.{digits}f} [{end(lo, '−∞')}, {end(hi, '∞')}]"


def fmt_num(v: float | None, digits: int = 2) -> str:
    """A number to ``digits`` decimals, or '—' where it is undefined (None, NaN, ±∞)."""
    return "—" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def write(
    rep: dict[str, Any], out: str | Path, figure: Callable[[dict, Path], list[str]]
) -> list[str]:
    """``out/report.json`` (atomic), the experiment's figure under ``out/figures`` and
    ``out/report.html`` (:func:`write_html`), and ``out/tables.md`` where the experiment
    has a ``markdown`` form (the tables its docs page quotes); returns the figure files."""
    out = Path(out)
    write_json(out / "report.json", rep)
    md = getattr(module(rep["experiment"]), "markdown", None)
    if md is not None:
        (out / "tables.md").write_text(md(rep), encoding="utf-8")
    paths = figure(rep, out / "figures")
    write_html(rep, out / "report.html", paths)
    return paths


def write_html(rep: dict[str, Any], path: str | Path, figure_paths: list[str]) -> Path:
    """The experiment's report.html: its table, verdicts, rows, figures, config, timing."""
    from mvsim.html_report import write_experiment

    return write_experiment(rep, path, figure_paths, module(rep["experiment"]).table(rep))


def module(name: str):
    """The module implementing experiment ``name`` (one of :data:`NAMES`)."""
    if name == "dropping":
        from mvsim.experiments import dropping as mod
    elif name == "gaussian":
        from mvsim.experiments import gaussian as mod
    elif name == "learners":
        from mvsim.experiments import learners as mod
    elif name == "theory-scaling":
        from mvsim.experiments import theory_scaling as mod
    elif name == "k-scaling":
        from mvsim.experiments import k_scaling as mod
    elif name == "race":
        from mvsim.experiments import race as mod
    else:
        raise ValueError(f"unknown experiment {name!r}; known: {list(NAMES)}")
    return mod


__all__ = [
    "MIN_SEEDS",
    "NAMES",
    "check_seeds",
    "envelope",
    "fmt_ci",
    "module",
    "rate_ci",
    "text_table",
    "write",
    "write_html",
]
