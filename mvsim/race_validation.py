"""The reduced race model against the full simulation, point by point.

For every point of a sweep store (the race lever map's, a k-scaling family's) the
reduced model is integrated from that point's own inits and training set
(:func:`mvsim.race_model.predict`) and compared with what the full run stored: the same
classes' learned views, the two-view fraction against its measured 95% CI, r₅₀ against its
CI, and, where they differ, which phase: the winners' escapes (phase 1), the stops (the
memorisation that ends training) or neither (the push a loser receives in between).
Rows are appended to a JSON-lines file, one per point, so a long validation resumes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mvsim.config import Config

# A phase is called wrong when the reduced model's median time for it differs from the
# full run's by more than this factor (either way).
PHASE_TOLERANCE = 1.25


def stored_points(store: str | Path) -> list[dict[str, Any]]:
    """Every point of a store holding the 'single' claim: its config and what the full
    run measured (views, init alignments, escapes, stops, fitted seeds)."""
    from mvsim.store import read_results

    df = read_results(store)
    out = []
    for row in df[df["claim"] == "single"].itertuples():
        claim, mech = json.loads(row.claim_json), json.loads(row.mechanism_json)
        per = claim["per_model"]
        out.append({
            "store": str(store), "hash": row.config_hash, "point": json.loads(row.point_json),
            "config": Config.from_json(row.config_json),
            "views": np.asarray(mech["views"]["single"], bool),
            "init_alignment": np.asarray(mech["init_alignment"], float),
            "escape_steps": np.asarray(mech.get("escape_steps", []), float),
            "stop_step": np.asarray([r.get("steps", math.nan) for r in per], float),
            "fit": np.asarray([r["train_accuracy"] >= 1.0 for r in per]),
        })  # fmt: skip
    return out


def compare(measured: dict[str, Any], res: dict[str, Any]) -> dict[str, Any]:
    """The reduced model's prediction ``res`` against the full run ``measured``, over the
    classes of the seeds the full run fitted (the ones its race statistics use)."""
    from mvsim.experiments import rate_ci
    from mvsim.experiments.k_scaling import race_midpoint
    from mvsim.mechanism import race_ratio

    fit = measured["fit"]
    cfg: Config = measured["config"]
    full, red = measured["views"][fit], np.asarray(res["views"])[fit]
    r = race_ratio(measured["init_alignment"][fit]).ravel()
    two_full, two_red = (full.sum(-1) == 2).ravel(), (red.sum(-1) == 2).ravel()
    p, lo, hi = rate_ci(int(two_full.sum()), two_full.size)
    r50, r50_lo, r50_hi = race_midpoint(r, two_full)
    r50_red = race_midpoint(r, two_red)[0]
    row = {
        "k": cfg.data.k, "classes": int(two_full.size), "seeds_fitted": int(fit.sum()),
        "class_agreement": float((full == red).all(-1).mean()) if fit.any() else math.nan,
        "two_view": p, "two_view_lo": lo, "two_view_hi": hi,
        "two_view_predicted": float(two_red.mean()) if two_red.size else math.nan,
        "r50": r50, "r50_lo": r50_lo, "r50_hi": r50_hi, "r50_predicted": r50_red,
        "predicted_seeds_fitted": int(np.asarray(res["fitted"]).sum()),
        "seconds": res["seconds"],
    }  # fmt: skip
    row["two_view_inside"] = bool(lo <= row["two_view_predicted"] <= hi)
    row["r50_inside"] = _inside(r50_red, r50_lo, r50_hi, r50)
    row.update(phases(measured, res, cfg.model.varrho))
    return row


def _inside(v: float, lo: float, hi: float, est: float) -> bool | None:
    """v inside [lo, hi]; None when the measurement has no r₅₀ (no two-view class, or no
    one-view class) and the prediction agrees that there is none."""
    if not math.isfinite(est) or not (math.isfinite(lo) and math.isfinite(hi)):
        return None if not math.isfinite(v) else False
    return bool(math.isfinite(v) and lo <= v <= hi)


def phases(measured: dict[str, Any], res: dict[str, Any], varrho: float) -> dict[str, Any]:
    """Median ratios reduced/full of the winners' escape steps and of the seeds' stops,
    and the phase the reduced model gets wrong first (None when both are within
    PHASE_TOLERANCE: then the outcome differs through the push between them)."""
    from mvsim.mechanism import crossing_steps

    fit = measured["fit"]
    out: dict[str, Any] = {}
    esc_full = measured["escape_steps"]
    if esc_full.size:
        cross = crossing_steps(res["steps"], np.asarray(res["lam"]), varrho).astype(float)
        esc_red = np.where(cross >= 0, cross, np.inf).min(-1)
        ok = (esc_full > 0) & np.isfinite(esc_red) & fit[:, None]
        out["escape_ratio"] = _median_ratio(esc_red[ok], esc_full[ok])
    stops = np.asarray(res["stop_step"], float)
    both = fit & np.asarray(res["fitted"], bool)
    out["stop_ratio"] = _median_ratio(stops[both], measured["stop_step"][both])
    out["phase_wrong"] = None
    for name, key in (("phase 1 (escape)", "escape_ratio"), ("memorisation (stop)", "stop_ratio")):
        v = out.get(key)
        if v is not None and math.isfinite(v) and max(v, 1 / v) > PHASE_TOLERANCE:
            out["phase_wrong"] = name
            break
    return out


def _median_ratio(a: np.ndarray, b: np.ndarray) -> float:
    good = (a > 0) & (b > 0)
    return float(np.exp(np.median(np.log(a[good] / b[good])))) if good.any() else math.nan


def run(stores: list[str | Path], out: str | Path, log: Any = print) -> list[dict[str, Any]]:
    """Validate every point of ``stores`` not yet in ``out`` (JSON lines, keyed by store
    and config hash), appending a row as each finishes; returns all rows of ``out``."""
    from mvsim import race_model
    from mvsim.report import append_jsonl

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        done = {(r["store"], r["hash"]) for r in map(json.loads, out.read_text().splitlines())}
    for store in stores:
        for m in stored_points(store):
            if (str(store), m["hash"]) in done:
                continue
            log(f"race-model validation: {store} {m['point']}")
            res = race_model.predict(m["config"])
            row = {"store": str(store), "hash": m["hash"], "point": m["point"]}
            append_jsonl(out, {**row, **compare(m, res)})
    return [json.loads(line) for line in out.read_text().splitlines()]


def table(rows: list[dict[str, Any]]) -> str:
    """The validation table, and the share of points inside each CI."""
    from mvsim.experiments import fmt_ci, text_table
    from mvsim.experiments import fmt_num as fmt

    head = ["store", "point", "classes", "agree", "two-view [95% CI]", "pred", "in",
            "r50 [95% CI]", "pred", "in", "escape", "stop", "phase wrong"]  # fmt: skip
    body = []
    for r in rows:
        body.append([
            Path(r["store"]).parent.name, " ".join(f"{a}={b}" for a, b in r["point"].items()),
            str(r["classes"]), fmt(r["class_agreement"]),
            fmt_ci(r["two_view"], r["two_view_lo"], r["two_view_hi"]),
            fmt(r["two_view_predicted"], 3), "y" if r["two_view_inside"] else "n",
            fmt_ci(r["r50"], r["r50_lo"], r["r50_hi"], 2), fmt(r["r50_predicted"]),
            {True: "y", False: "n", None: "—"}[r["r50_inside"]],
            fmt(r.get("escape_ratio")), fmt(r.get("stop_ratio")), r["phase_wrong"] or "",
        ])  # fmt: skip
    out = text_table(head, body)
    two = [r["two_view_inside"] for r in rows]
    r50 = [r["r50_inside"] for r in rows if r["r50_inside"] is not None]
    out.append(f"two-view fraction inside the measured 95% CI: {sum(two)}/{len(two)}; "
               f"r50 inside its CI: {sum(r50)}/{len(r50)} (of the points with an r50)")  # fmt: skip
    return "\n".join(out)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The validation table as docs/race.md §4 quotes it: one row per point in the file's
    order, the store named by what it holds (a race-map point the report beside its store
    leaves out is an earlier run of the same lever value, labelled with its T)."""
    from mvsim.experiments import fmt_ci
    from mvsim.experiments import fmt_num as f
    from mvsim.report import markdown_table

    yes = {True: "yes", False: "no", None: "—"}
    labels = _store_labels(rows)
    body = [[labels[r["store"], r["hash"]], _point_label(r["point"]), r["classes"],
             f"{r['class_agreement']:.3f}",
             fmt_ci(r["two_view"], r["two_view_lo"], r["two_view_hi"]),
             f(r["two_view_predicted"], 3), yes[r["two_view_inside"]],
             fmt_ci(r["r50"], r["r50_lo"], r["r50_hi"], 2), f(r["r50_predicted"]),
             yes[r["r50_inside"]], f(r.get("escape_ratio")), f(r.get("stop_ratio")),
             r["phase_wrong"] or "", f"{r['seconds']:.0f}"] for r in rows]  # fmt: skip
    head = ["store", "point", "classes", "classes agreeing", "two-view measured [95% CI]",
            "predicted", "inside", "r₅₀ measured [95% CI]", "predicted", "inside",
            "escape ratio", "stop ratio", "phase wrong", "s"]  # fmt: skip
    return "\n".join(markdown_table(head, body)) + "\n"


def _point_label(point: dict[str, Any]) -> str:
    from mvsim.experiments.race import LEVERS

    out = []
    for name, v in point.items():
        if name in ("sigma_p", "sigma_n"):  # as the map shows them: the noise's norm σ√d
            out.append(f"{name}={LEVERS[name].axis(v):.2g} (norm)")
        elif isinstance(v, list):
            out.append(f"{name}=({v[0]}, {v[1]})")
        else:
            out.append(f"{name}={v}")
    return " ".join(out)


def _store_labels(rows: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """{(store, hash): label}, each store's report and results read once."""
    from mvsim.store import read_results

    out = {}
    for name in dict.fromkeys(r["store"] for r in rows):
        store = Path(name)
        hashes = [r["hash"] for r in rows if r["store"] == name]
        if store.parent.name != "race":
            out.update({(name, h): f"k-scaling {store.parent.name}" for h in hashes})
            continue
        report = store.parent / "report.json"
        shown = ({r["hash"] for r in json.loads(report.read_text())["rows"]}
                 if report.exists() else set(hashes))  # fmt: skip
        df = read_results(store).drop_duplicates("config_hash").set_index("config_hash")
        for h in hashes:
            T = json.loads(df.loc[h, "config_json"])["train"]["T"] if h not in shown else None
            out[name, h] = "race map" if T is None else f"race map (T = {T:,}, earlier run)"
    return out
