"""Searching for Theorem 1's regime at a size we can run, with the reduced race model.

Theorem 1 asks every single model for perfect training accuracy and a test error in
[0.49, 0.51]μ. At finite k a model is inside the band only with (almost) no two-view and
no no-view class and no multi-view error (docs/race.md §6), so the search's targets are:
one-view fraction ≥ 0.98, every seed fitted, and the finite-k prediction of E/μ from the
learned views (:func:`mvsim.claims.predicted_error`) inside the band for at least half of
the seeds. A grid of lever combinations is scored by the reduced model (cheap, from each
point's own inits); the best are then confirmed by the full simulation.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mvsim.config import Config, make_config

BAND = (0.49, 0.51)
TARGET_ONE_VIEW = 0.98

GRID: dict[str, list[Any]] = {
    "sigma_n": [v / math.sqrt(200) for v in (1.2, 1.5, 1.8, 2.1)],
    "noisy_z_multi": [(0.2, 0.4), (0.05, 0.1), (0.02, 0.05)],
    "q": [4, 5],
}
"""The default grid: the levers the race map found to move the post-escape push
(docs/race.md §2), around the demo. Its points use the race map's budget rule."""


def candidates(grid: Mapping[str, Sequence[Any]] = GRID, preset: str = "demo",
               overrides: Mapping[str, Any] | None = None) -> list[Config]:  # fmt: skip
    """Every combination of the grid as a validated config (16 seeds, the budget scaled
    as the race map scales it)."""
    from mvsim.experiments import race

    base = {"seeds": race.SEEDS, **(overrides or {})}
    ref = make_config(preset, base)
    out = []
    for combo in itertools.product(*grid.values()):
        o = {**base, **dict(zip(grid, combo, strict=True))}
        cfg = make_config(preset, o)
        if "T" not in base:
            scale = max(1.0, race.budget_steps(cfg) / race.budget_steps(ref))
            cfg = make_config(preset, {**o, "T": math.ceil(ref.train.T * scale)})
        out.append(cfg)
    return out


def score(cfg: Config, views: np.ndarray, fitted: np.ndarray) -> dict[str, Any]:
    """The targets from a view pattern (S, k, 2) and the seeds' fit: one/two/no-view
    fractions, fitted share, per-seed predicted E/μ and the share inside the band."""
    from mvsim.claims import predicted_error

    per_class = np.asarray(views, bool).sum(-1)
    pred = np.array([predicted_error(v, cfg.data.s, cfg.data.mu)[2] for v in views])
    inside = (pred >= BAND[0]) & (pred <= BAND[1]) & np.asarray(fitted, bool)
    return {
        "one_view": float((per_class == 1).mean()), "two_view": float((per_class == 2).mean()),
        "no_view": float((per_class == 0).mean()), "fitted": float(np.mean(fitted)),
        "predicted_error_over_mu": pred.tolist(), "in_band_share": float(inside.mean()),
        "meets": bool((per_class == 1).mean() >= TARGET_ONE_VIEW and np.all(fitted)
                      and inside.mean() >= 0.5),
    }  # fmt: skip


def run(
    cfgs: Sequence[Config],
    *,
    out: str | Path,
    grid: Mapping[str, Sequence[Any]] = GRID,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Score every config not yet in ``out`` (JSON lines, keyed by config hash) with the
    reduced model, appending each row as it finishes; returns all rows, best first."""
    from mvsim import race_model
    from mvsim.report import append_jsonl
    from mvsim.store import config_hash

    out = Path(out)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    done = {r["hash"] for r in rows}
    for cfg in cfgs:
        h = config_hash(cfg)
        if h in done:
            continue
        log(f"race search: {describe(cfg, grid)}")
        t0 = time.perf_counter()
        res = race_model.predict(cfg)
        row = {"hash": h, "levers": describe(cfg, grid), "config": cfg.to_dict(),
               **score(cfg, res["views"], res["fitted"]),
               "seconds": time.perf_counter() - t0}  # fmt: skip
        append_jsonl(out, row)
        rows.append(row)
    return sorted(rows, key=lambda r: (-r["one_view"], -r["in_band_share"]))


def describe(cfg: Config, grid: Mapping[str, Any] = GRID) -> dict[str, Any]:
    """The grid's fields of ``cfg`` (noise as its norm σ√d)."""
    flat = cfg.flat()
    out = {}
    for name in grid:
        v = flat[name]
        out[name] = round(v * math.sqrt(cfg.data.d), 3) if name.startswith("sigma") else v
    return out


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``--grid FIELD=V1,V2,...`` items (parsed as ``mvsim sweep --grid`` parses them) into
    a grid; none: :data:`GRID`. A field the config does not have is a ConfigError naming
    it, before anything is integrated."""
    from mvsim import sweep

    if not items:
        return dict(GRID)
    return dict(sweep.parse_axis(item) for item in items)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mvsim.race_search --out FILE.jsonl [--grid F=V1,V2 ...] [--seeds S]``:
    score a grid (default :data:`GRID`), best first."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON-lines file of the rows (resumable)")
    ap.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="FIELD=V1,V2,...",
        help="a field and its values (repeatable; none: the default grid)",
    )
    ap.add_argument("--seeds", type=int, help="seeds per config (default: the race map's 16)")
    args = ap.parse_args(argv)
    grid = parse_grid(args.grid)
    over = {"seeds": args.seeds} if args.seeds else None
    for r in run(candidates(grid, overrides=over), out=args.out, grid=grid)[:5]:
        print(json.dumps({k: r[k] for k in ("levers", "one_view", "two_view", "no_view",
                                             "fitted", "in_band_share", "meets")}))  # fmt: skip


if __name__ == "__main__":
    main()
