"""The lever map of the race: which quantity of the setting decides how close the races stay.

At k = 10 about 15% of classes learn both views after a close initial race, and the race
curve's midpoint r₅₀ sits near 0.84 (docs/k-scaling.md). Each lever here moves one
quantity of the demo regime (one axis at a time, the rest at the demo's values) and
measures what the race does: the one/two/no-view fractions, the race curve and r₅₀, the
escape-time spread, when each single-view point is fitted, the loser's alignment at the
winner's escape and the push it received afterwards (:mod:`mvsim.race_probe`), E/μ and
e_multi, and how many seeds fitted their training set.

Points are sweep points (validated before any compute) stored in a sweep store, one
transaction each, so a rerun resumes. For every lever the extreme values are rerun on a
subset of seeds with a ten times tighter flow tolerance (the first seeds of a point are
the same inits whatever the seed count), and the view patterns compared: the flow was
shown to follow GD only near the demo. The report ranks the levers by how far they move
r₅₀ and the two-view fraction.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mvsim import sweep
from mvsim.config import Config, ConfigError, make_config
from mvsim.experiments import envelope, fmt_ci, fmt_num, text_table
from mvsim.experiments.k_scaling import escape_spread, race, view_fractions
from mvsim.report import markdown_table
from mvsim.stats import normal_quantile

SEEDS = 16  # ≥ 160 classes a point at k = 10
CHECK_SEEDS = 4  # the tolerance check's subset: the first seeds of the point
CHECK_RTOL_FACTOR = 0.1  # the check's flow_rtol relative to the point's
N_LOG = 64  # recorded steps: the escape and the loser's push are read off them
KD_T = 20_000  # see _defaults
_ROOT200 = math.sqrt(200)


@dataclass(frozen=True)
class Lever:
    """One axis of the map. ``field`` levers set that config field; derived ones (the
    training-set composition) set N and μ: stratified composition takes exactly
    round(μN) single-view points, so per-(class, view) and per-class counts are N and μ."""

    name: str
    values: tuple
    label: str  # the axis label of the report's figures
    doc: str
    derived: bool = False

    def overrides(self, value: Any, base: Config) -> dict[str, Any]:
        if not self.derived:
            return {self.name: value}
        k, N, mu = base.data.k, base.data.N, base.data.mu
        n_single = round(mu * N)
        n_multi = N - n_single
        if self.name == "single_per_view":
            n_single = 2 * k * value
        else:  # multi_per_class
            n_multi = k * value
        return {"N": n_multi + n_single, "mu": n_single / (n_multi + n_single)}

    def axis(self, value: Any) -> float:
        """The value on the report's axis (a pair's midpoint; noise as its norm σ√d)."""
        v = float(np.mean(value)) if isinstance(value, tuple) else float(value)
        return v * _ROOT200 if self.name in ("sigma_p", "sigma_n") else v


LEVERS: dict[str, Lever] = {lv.name: lv for lv in (
    Lever("q", (3, 4, 5, 6, 8), "q (power of the smoothed ReLU)",
          "how strongly a head start compounds: dΛ/dt ∝ Λ^{q−1}"),
    Lever("varrho", (0.25, 0.5, 1.0, 2.0, 4.0), "ϱ (σ_0 = 0.033ϱ, η ∝ ϱ follow)",
          "where the polynomial regime ends, against the loss's logit scale; the demo "
          "preset keeps σ_0/ϱ and η/ϱ, so only ϱ against log k moves"),
    Lever("sigma_0", (0.004, 0.008, 0.012, 0.02, 0.033, 0.05), "σ_0 (init std)",
          "the init scale against ϱ and against the noise the memorisation grows"),
    Lever("sigma_p", tuple(v / _ROOT200 for v in (0.0, 0.05, 0.1, 0.2, 0.4)),
          "σ_p√d (noise norm on feature patches)", "the noise on the views' own patches"),
    Lever("sigma_n", tuple(v / _ROOT200 for v in (0.3, 0.6, 1.2, 1.5, 2.4)),
          "σ_n√d (noise norm on noise-only patches)",
          "how fast memorisation fits the single-view points"),
    Lever("single_per_view", (1, 2, 4, 8, 16), "single-view points per (class, view)",
          "how many points drive the loser after the winner's escape (60 multi-view "
          "points per class fixed; N and μ follow)", derived=True),
    Lever("multi_per_class", (15, 30, 60, 120, 240), "multi-view points per class",
          "how many points drive both views (one single-view point per (class, view) "
          "fixed; N and μ follow)", derived=True),
    Lever("own_z", ((0.5, 0.5), (1.0, 1.0), (2.0, 2.0)), "own_z (Σz of a point's own views)",
          "the views' strength in their patches, against ϱ and the noise"),
    Lever("noisy_z_multi", ((0.05, 0.1), (0.1, 0.2), (0.2, 0.4), (0.4, 0.6)),
          "noisy_z_multi (Σz of other classes' views, midpoint)",
          "how hard other classes' points push back on a learned view"),
    Lever("m", (1, 2, 3, 4, 6, 8), "m (neurons per class)",
          "how many tickets each view draws"),
    Lever("d", (100, 200, 400, 800), "d (patch dimension; noise norms fixed)",
          "how nearly orthogonal the noise vectors are"),
)}  # fmt: skip

# Lever values at which the default flow tolerance did not give the tightened one's view
# pattern (the tolerance check): their map points run at the tightened flow_rtol.
# Filled from the committed run's checks (docs/race.md); empty means every check agreed.
TIGHTENED: dict[str, tuple] = {"own_z": ((0.5, 0.5),), "sigma_n": (0.3 / _ROOT200,)}


# Lever values at which fewer than 3/4 of the seeds fitted their training set within the
# budget rule's T in the committed run (the race would be read off a few seeds): their map
# points run with T multiplied by this factor. T only caps the flow, so the seeds that
# fitted before are the same runs; the others get the time their memorisation needs.
EXTENDED_T: dict[str, dict[Any, int]] = {
    "own_z": {(2.0, 2.0): 4},
    "sigma_p": {0.0: 4, 0.05 / _ROOT200: 4},
    "noisy_z_multi": {(0.05, 0.1): 4},
    "varrho": {4.0: 4},
}


@dataclass(frozen=True)
class RacePoint:
    """One point of the map: a lever at one value (``kind`` 'map'), or the same point's
    first CHECK_SEEDS seeds at a tighter tolerance (``kind`` 'check')."""

    lever: str
    value: Any
    kind: str
    point: sweep.Point


def parse_levers(items: Sequence[str]) -> dict[str, tuple]:
    """``--levers NAME=V1,V2,...`` items into {lever: values} (a config field's values are
    parsed as ``--grid`` parses them, pairs as (lo,hi) groups); no item: every lever at its
    default range. An unknown name or a bad value is a ConfigError naming it."""
    if not items:
        return {name: lv.values for name, lv in LEVERS.items()}
    out: dict[str, tuple] = {}
    for item in items:
        name, _, text = item.partition("=")
        name = name.strip()
        if name not in LEVERS:
            raise ConfigError(name, text, f"is not a lever of the race map; levers: {list(LEVERS)}")
        if name in out:
            raise ConfigError(name, text, "this lever is given twice")
        if not text.strip():
            out[name] = LEVERS[name].values
        elif LEVERS[name].derived:
            out[name] = tuple(_count(name, v) for v in text.split(","))
        else:
            out[name] = tuple(sweep.parse_axis(item)[1])
    return out


def _count(name: str, text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ConfigError(name, text, "must be a whole number of points ≥ 1") from None
    if v < 1:
        raise ConfigError(name, v, "must be a whole number of points ≥ 1")
    return v


def budget_steps(cfg: Config) -> float:
    """GD-equivalent steps the slowest phase needs, from the tensor-power law (docs/race.md):
    the winner's plateau, or fitting the single-view points (by memorising their noise, or
    by learning the loser view from them, whichever is faster). Under the flow T is only a
    cap (a model stops when it fits), so the map scales the demo's T by this budget's ratio."""
    D, M = cfg.data, cfg.model
    q, rho, k = M.q, M.varrho, D.k
    z = float(np.mean(D.own_z))
    n_single = round(D.mu * D.N)
    per_view = (D.N - n_single) / k + n_single / (2 * k)
    free = D.d - 2 * k
    noisy = min(D.noisy_cap, 2 * (k - 1) * D.s / k)
    patches = max(D.P - D.C_p * (2 + noisy), 1.0)
    blow = lambda h0, rate: _blowup(h0 / rho, q) * rho / rate
    # The plateau of a slow class (its winner at the 10% quantile of the max of 2m draws):
    # T must cover the last class to escape, not the typical one.
    plateau = blow(z * M.sigma_0 * _max_quantile(2 * M.m, 0.1), z * z * per_view / D.N)
    nu = D.sigma_n * math.sqrt(free)
    memorise = (
        blow(nu * M.sigma_0 * _expected_max(M.m * patches), nu * nu / D.N) if nu else math.inf
    )
    learn = blow(z * M.sigma_0 * _expected_max(M.m), z * z / D.N)
    return max(plateau, min(memorise, learn)) / cfg.train.eta


def _blowup(x0: float, q: int) -> float:
    """∫C dt a tensor-power race dx/dt = C·x^{q−1} needs from x0 to 1 (units of ϱ)."""
    return math.log(1 / x0) if q == 2 else x0 ** (2 - q) / (q - 2)


def _max_quantile(n: int, p: float) -> float:
    """The p-quantile of the max of n standard normals, Φ⁻¹(p^{1/n})."""
    return normal_quantile(p ** (1 / n))


def _expected_max(n: float) -> float:
    """E[max of n standard normals] (Blom's approximation; the positive part for n = 1)."""
    n = max(n, 1.0)
    return max(normal_quantile((n - 0.375) / (n + 0.25)), 0.4)


def points(
    levers: Mapping[str, Sequence[Any]] | None = None,
    overrides: Mapping[str, Any] | None = None,
    claims: Sequence[str] | None = None,
    preset: str = "demo",
    checks: bool = True,
) -> list[RacePoint]:
    """Every map point and tolerance check, validated before any compute (a bad value is a
    ConfigError naming its field or lever and the point). Unless ``overrides`` set them:
    SEEDS seeds, the experiments' test sets, N_LOG records, and T scaled by
    :func:`budget_steps` against the preset's own point."""
    levers = dict(levers if levers is not None else parse_levers([]))
    overrides = dict(overrides or {})
    both = sorted(set(overrides) & {f for lv in levers for f in _fields(lv)})
    if both:
        raise ConfigError(
            both[0], overrides[both[0]], "is a lever of this map: give it with --levers"
        )
    base = make_config(preset, _defaults(make_config(preset, overrides), overrides))
    if base.model.learner != "patch_cnn":
        raise ConfigError("learner", base.model.learner, "the race is read off Λ (patch_cnn only)")
    if base.data.train_composition != "stratified" and any(LEVERS[n].derived for n in levers):
        raise ConfigError("train_composition", base.data.train_composition,
                          "the composition levers need 'stratified' (exact counts)")  # fmt: skip
    out: list[RacePoint] = []
    for name, values in levers.items():
        lv = LEVERS[name]
        for v in values:
            out.append(_point(lv, v, "map", base, preset, overrides, claims))
        if checks:
            for v in sorted({values[0], values[-1]}, key=lv.axis):
                out.append(_point(lv, v, "check", base, preset, overrides, claims))
    return out


def _fields(lever: str) -> tuple[str, ...]:
    return ("N", "mu") if LEVERS[lever].derived else (lever,)


def _defaults(cfg: Config, overrides: Mapping[str, Any]) -> dict[str, Any]:
    E = cfg.experiment
    # kd_T pinned to the value the committed map (docs/race/store.sqlite) ran with: the
    # default became the horizon's (None) after it, and the map trains singles only, so the
    # pin changes nothing they compute while keeping the stored points' hashes.
    base = {"seeds": SEEDS, "n_test_multi": E.exp_n_test_multi,
            "n_test_single": E.exp_n_test_single, "n_log": N_LOG, "kd_T": KD_T}  # fmt: skip
    return {**base, **overrides}


def _point(lv, value, kind, base, preset, overrides, claims) -> RacePoint:
    o = {**_defaults(base, overrides), **lv.overrides(value, base)}
    try:
        cfg = make_config(preset, o)
        if cfg.model.q < 2:
            raise ConfigError("q", cfg.model.q, "the race needs q ≥ 2: a polynomial regime "
                              "in which a head start compounds")  # fmt: skip
        if "T" not in overrides:
            ref = make_config(preset, _defaults(base, overrides))
            scale = max(1.0, budget_steps(cfg) / budget_steps(ref))
            scale *= EXTENDED_T.get(lv.name, {}).get(value, 1)
            o["T"] = max(cfg.train.T, math.ceil(ref.train.T * scale))
        tight = (value in TIGHTENED.get(lv.name, ())) + (kind == "check")
        if tight:
            o["flow_rtol"] = cfg.train.flow_rtol * CHECK_RTOL_FACTOR**tight
        if kind == "check":
            o["seeds"] = min(CHECK_SEEDS, cfg.verify.seeds)
        axis = "N" if lv.derived else lv.name  # the field the point's key shows
        pts = sweep.build_points(preset, {f: v for f, v in o.items() if f != axis},
                                 {axis: [o[axis]]}, claims)  # fmt: skip
    except ConfigError as e:
        raise ConfigError(e.field, e.value, f"{e.allowed} (lever {lv.name} = {value!r})") from None
    return RacePoint(lv.name, value, kind, pts[0])


# --- running ------------------------------------------------------------------------------


def run(
    levers: Mapping[str, Sequence[Any]] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    store: str | Path,
    claims: Sequence[str] | None = None,
    preset: str = "demo",
    checks: bool = True,
    train: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every point not yet in ``store`` (map points first, lever by lever, then the
    tolerance checks), each stored when it finishes, saying which on ``log``; then the
    report from the store. ``train=False`` trains nothing: the report is what the store
    holds, and the points it lacks are listed as not run (``rep["not_run"]``)."""
    from mvsim import race_probe
    from mvsim import store as st
    from mvsim.executor import env as process_env

    ids = list(claims) if claims is not None else ["single"]
    pts = points(levers, overrides, ids, preset, checks)
    t0 = time.perf_counter()
    conn = st.connect(store)
    try:
        done = st.stored_claims(conn)
        # Map points before checks, each in order of its budget (a proxy for its cost): a
        # long plateau (q = 8, small σ_0) does not hold up the rest of the map.
        order = lambda p: (p.kind != "map", p.point.cfg.train.T)
        todo = _unique([rp for rp in sorted(pts, key=order)
                        if not set(ids) <= done.get(rp.point.hash, set())])  # fmt: skip
        if not train:
            todo = []
        env = process_env()
        for j, rp in enumerate(todo):
            log(f"race: {j + 1}/{len(todo)} {rp.kind} {rp.lever} = {rp.value!r} "
                f"({rp.point.cfg.verify.seeds} seeds, T = {rp.point.cfg.train.T})")  # fmt: skip
            started = st.utc_now()
            out = race_probe.run_point(rp.point.cfg, ids)
            st.write_point(conn, rp.point.cfg, rp.point.values, out["claims"], out["mechanism"],
                           seconds=out["seconds"], timing=out["timing"], started_at=started,
                           env=env, peak_rss_bytes=out["peak_rss_bytes"])  # fmt: skip
    finally:
        conn.close()
    rep = from_store(store, pts, preset, missing_ok=not train)
    rep["timing"]["total"] = round(time.perf_counter() - t0, 3)
    return rep


def _unique(pts: list[RacePoint]) -> list[RacePoint]:
    """One run per config: the demo's point is on every lever's axis."""
    seen: set[str] = set()
    return [p for p in pts if not (p.point.hash in seen or seen.add(p.point.hash))]


# --- the report ------------------------------------------------------------------------------


def from_store(
    store: str | Path, pts: Sequence[RacePoint], preset: str = "demo", missing_ok: bool = False
) -> dict[str, Any]:
    """The report of ``pts`` from what ``store`` holds for them alone (with ``missing_ok``,
    the points it lacks are listed under "not_run" instead of being an error)."""
    from mvsim.store import read_results

    df = read_results(store)
    rows, not_run = [], []
    for rp in pts:
        sel = df[df["config_hash"] == rp.point.hash]
        if sel.empty and missing_ok:
            not_run.append({"lever": rp.lever, "value": _jsonable(rp.value), "kind": rp.kind,
                            "T": rp.point.cfg.train.T})  # fmt: skip
            continue
        if sel.empty:
            raise ValueError(f"{store} holds no results for {rp.kind} {rp.lever} = {rp.value!r}")
        rows.append(point_row(rp, sel))
    maps = [r for r in rows if r["kind"] == "map"]
    checks = [check_row(r, maps) for r in rows if r["kind"] == "check"]
    rep = envelope("race", pts[0].point.cfg)
    rep.update({
        "description": __doc__.strip().splitlines()[0],
        "preset": preset,
        "levers": {n: {"values": [_jsonable(v) for v in dict.fromkeys(r["value_key"]
                   for r in maps if r["lever"] == n)], "label": LEVERS[n].label,
                   "doc": LEVERS[n].doc} for n in dict.fromkeys(r["lever"] for r in maps)},
        "rows": maps,
        "checks": checks,
        "ranking": ranking(maps),
        # the demo's point sits on every lever's axis: its classes count once in the law
        "law": law_curve(list({r["hash"]: r for r in maps}.values())),
        "tightened": {k: [_jsonable(v) for v in vs] for k, vs in TIGHTENED.items()},
        "not_run": not_run,
        "timing": {"points": round(float(sum(r["point_seconds"] for r in rows)), 3)},
    })  # fmt: skip
    return rep


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def point_row(rp: RacePoint, sel: Any) -> dict[str, Any]:
    """The flat row of one point from its stored claim rows (a DataFrame slice)."""
    cfg = rp.point.cfg
    claims = {r.claim: json.loads(r.claim_json) for r in sel.itertuples()}
    first = sel.iloc[0]
    mech = json.loads(first["mechanism_json"])
    single = claims["single"]
    fit = np.array([r["train_accuracy"] >= 1.0 for r in single["per_model"]])
    views = np.asarray(mech["views"]["single"], int)
    two = views.sum(-1) == 2
    row: dict[str, Any] = {
        "lever": rp.lever, "value": _jsonable(rp.value), "value_key": rp.value,
        "axis": LEVERS[rp.lever].axis(rp.value), "kind": rp.kind, "hash": rp.point.hash,
        "seeds": cfg.verify.seeds, "seeds_unfitted": int((~fit).sum()), "T": cfg.train.T,
        "flow_rtol": cfg.train.flow_rtol, "m": cfg.model.m, "k": cfg.data.k,
        "point_seconds": float(first["seconds"]),
        "views": views.tolist(),
    }  # fmt: skip
    row["fitted_share"] = float(fit.mean())
    row["fit"] = fit.tolist()
    row.update(view_fractions(views[fit]))
    init = np.asarray(mech["init_alignment"], float)
    row.update(race(init[fit], two[fit], cfg.model.m))
    if fit.any():  # no fitted seed: no race statistics (the row says so in fitted_share)
        row.update(escape_spread(np.asarray(mech["escape_steps"], float)[fit]))
    row.update(_claim_numbers(single))
    row.update(race_numbers(mech["race"], views, fit, cfg))
    return row


def _claim_numbers(c: Mapping[str, Any]) -> dict[str, Any]:
    per = c.get("per_model", [])
    errs = np.asarray([r["error_over_mu"] for r in per], float)
    evals = [r["grad_evals"] for r in per if "grad_evals" in r]
    return {
        "error_over_mu": c["error_over_mu"], "error_ci_lo": c["ci95"][0],
        "error_ci_hi": c["ci95"][1], "e_single": c["error_single_view"],
        "e_multi": c["error_multi_view"], "finite_k_prediction": c.get("finite_k_prediction"),
        "in_band": float(((errs >= 0.49) & (errs <= 0.51)).mean()) if per else None,
        "grad_evals_per_model": float(np.mean(evals)) if evals else None,
    }  # fmt: skip


def race_numbers(rc: Mapping[str, Any], views: np.ndarray, fit: np.ndarray, cfg: Config) -> dict:
    """What the probe saw, over the fitted seeds: when the single-view points were fitted
    (median step, by whether their strong view was learned), the loser's alignment at the
    winner's escape and the push it got afterwards against the push it needed
    (ϱ(ϱ/Λ)^{q−2}/(q−2): a ratio ≥ 1 means the law says it escapes), for the classes that
    learned one view and those that learned both."""
    q = cfg.model.q
    two = (views.sum(-1) == 2)[fit]
    esc = np.asarray(rc["escape_step"], float)[fit]
    lose = np.asarray(rc["loser_at_escape"], float)[fit]
    push = (np.asarray(rc["push_multi"], float) + np.asarray(rc["push_single"], float))[fit]
    with np.errstate(divide="ignore", invalid="ignore"):
        need = cfg.model.varrho * np.where(lose > 0, lose, np.nan) ** (2 - q) / (q - 2)
        ratio = push / need
    mem = np.asarray(rc["memorised_step"], float)[fit]
    cls, strong = np.asarray(rc["sv_class"]), np.asarray(rc["sv_strong"])
    learned = views[fit][:, cls, strong].astype(bool)  # (S_fit, n_sv)
    med = lambda a: float(np.nanmedian(a)) if np.isfinite(a).any() else math.nan
    return {
        "loser_at_escape_one": med(np.where(~two & (esc >= 0), lose, np.nan)),
        "loser_at_escape_two": med(np.where(two & (esc >= 0), lose, np.nan)),
        "push_over_need_one": med(np.where(~two, ratio, np.nan)),
        "push_over_need_two": med(np.where(two, ratio, np.nan)),
        "push_single_share": med(np.asarray(rc["push_single"], float)[fit]
                                 / np.maximum(push, 1e-30)),  # fmt: skip
        "memorised_learned": med(np.where(learned & (mem >= 0), mem, np.nan)),
        "memorised_unlearned": med(np.where(~learned & (mem >= 0), mem, np.nan)),
        "memorised_last": med(np.where(mem >= 0, mem, np.nan).max(1)) if mem.size else math.nan,
        "race": {"escape_step": esc.tolist(), "loser_at_escape": lose.tolist(),
                 "push_over_need": np.round(ratio, 4).tolist(), "two": two.tolist()},
    }  # fmt: skip


def check_row(r: Mapping[str, Any], maps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A tolerance check against its map point: the same seeds' view patterns, cell by cell."""
    ref = next(m for m in maps if m["lever"] == r["lever"] and m["value_key"] == r["value_key"])
    a = np.asarray(r["views"], bool)
    b = np.asarray(ref["views"], bool)[: a.shape[0]]
    agree = a == b
    return {
        "lever": r["lever"], "value": r["value"], "seeds": r["seeds"],
        "flow_rtol": r["flow_rtol"], "reference_rtol": ref["flow_rtol"],
        "cells": int(agree.size), "agree": int(agree.sum()), "agreement": float(agree.mean()),
        "two_view": float((a.sum(-1) == 2).mean()),
        "two_view_reference": float((b.sum(-1) == 2).mean()),
        "error_over_mu": r["error_over_mu"], "seeds_unfitted": r["seeds_unfitted"],
        "reference_seeds_unfitted": int(sum(not f for f in ref["fit"][: a.shape[0]])),
    }  # fmt: skip


def ranking(rows: Sequence[Mapping[str, Any]], boot: int = 400) -> list[dict[str, Any]]:
    """Per lever, the slope of the two-view fraction and of r₅₀ against log₂ of the lever's
    value (per doubling; values > 0 only), weighted least squares with a parametric
    bootstrap 95% CI, and the move across the tested range (slope × its log₂ span); sorted
    by the two-view fraction's move, largest first."""
    out = []
    rng = np.random.default_rng(0)
    for name in dict.fromkeys(r["lever"] for r in rows):
        rs = _ranked_rows(rows, name)
        if len(rs) < 2:
            continue
        x = np.log2([r["axis"] for r in rs])
        span = float(x.max() - x.min())
        two = _slope_ci(x, [r["frac_two_view"] for r in rs], [r["classes"] for r in rs], rng, boot)
        ok = [r for r in rs if np.isfinite(r["r50"]) and np.isfinite(r["r50_lo"])]
        r50 = (_slope_ci_normal(np.log2([r["axis"] for r in ok]), ok, rng, boot)
               if len(ok) >= 2 else (math.nan,) * 3)  # fmt: skip
        out.append({
            "lever": name, "span_log2": span,
            "two_view_slope": two[0], "two_view_slope_lo": two[1], "two_view_slope_hi": two[2],
            "two_view_move": two[0] * span,
            "two_view_range": [float(min(r["frac_two_view"] for r in rs)),
                               float(max(r["frac_two_view"] for r in rs))],
            "r50_slope": r50[0], "r50_slope_lo": r50[1], "r50_slope_hi": r50[2],
            "r50_move": r50[0] * span,
        })  # fmt: skip
    return sorted(out, key=lambda d: -abs(d["two_view_move"]))


def _ranked_rows(rows: Sequence[Mapping[str, Any]], lever: str) -> list[Mapping[str, Any]]:
    """The rows a lever's slopes are fitted to: values > 0 (a log axis) with classes."""
    return [r for r in rows if r["lever"] == lever and r["axis"] > 0 and r["classes"]]


def _slope_ci(x, p, n, rng, boot) -> tuple[float, float, float]:
    p, n = np.asarray(p, float), np.asarray(n, float)
    fit = lambda pp: float(np.polyfit(x, pp, 1, w=np.sqrt(n / np.maximum(pp * (1 - pp), 0.01)))[0])
    b = [fit(rng.binomial(n.astype(int), p) / n) for _ in range(boot)]
    return fit(p), float(np.quantile(b, 0.025)), float(np.quantile(b, 0.975))


def _slope_ci_normal(x, rows, rng, boot) -> tuple[float, float, float]:
    v = np.array([r["r50"] for r in rows], float)
    se = np.maximum(np.array([r["r50_hi"] - r["r50_lo"] for r in rows], float) / 3.92, 1e-3)
    fit = lambda vv: float(np.polyfit(x, vv, 1, w=1 / se)[0])
    b = [fit(v + rng.normal(0, se)) for _ in range(boot)]
    return fit(v), float(np.quantile(b, 0.025)), float(np.quantile(b, 0.975))


# --- reading it -------------------------------------------------------------------------------


def table(rep: dict[str, Any]) -> str:
    out = [f"mvsim experiment race — preset '{rep['preset']}', one lever at a time (k = "
           f"{rep['config']['data']['k']}; every other field at the preset's value)"]  # fmt: skip
    head = ["lever", "value", "fitted", "one/two/no", "two-view [95% CI]", "r50", "E/μ", "e_multi",
            "escape q50", "loser@esc 1/2", "push/need 1/2", "fit step", "s"]  # fmt: skip
    body = []
    for r in rep["rows"]:
        body.append([
            r["lever"], _fmt_value(r["value"]), f"{r['seeds'] - r['seeds_unfitted']}/{r['seeds']}",
            f"{r['frac_one_view']:.2f}/{r['frac_two_view']:.2f}/{r['frac_no_view']:.2f}",
            fmt_ci(r["frac_two_view"], r["frac_two_view_lo"], r["frac_two_view_hi"]),
            fmt_ci(r["r50"], r["r50_lo"], r["r50_hi"], 2), f"{r['error_over_mu']:.3f}",
            f"{r['e_multi']:.4f}", f"{r.get('escape_q50', math.nan):.0f}",
            f"{r['loser_at_escape_one']:.3f}/{r['loser_at_escape_two']:.3f}",
            f"{r['push_over_need_one']:.2f}/{r['push_over_need_two']:.2f}",
            f"{r['memorised_last']:.0f}", f"{r['point_seconds']:.0f}",
        ])  # fmt: skip
    out += text_table(head, body)
    out.append("fitted: seeds that fitted their training set (the race statistics use those); "
               "loser@esc: median Λ_loser/ϱ at the winner's escape, classes with one / two "
               "views; push/need: the loser's push after the escape over the push the "
               "tensor-power law says it needs; fit step: median over seeds of the step at "
               "which the last single-view point was fitted")  # fmt: skip
    out += _check_lines(rep["checks"]) + _ranking_lines(rep["ranking"]) + _law_lines(rep["law"])
    if rep.get("not_run"):
        out.append("\nnot run (the store holds no result): " + "; ".join(
            f"{r['kind']} {r['lever']} = {_fmt_value(r['value'])} (T = {r['T']})"
            for r in rep["not_run"]))  # fmt: skip
    out.append(f"timing (s): points {rep['timing']['points']:.1f}")
    return "\n".join(out)


def _fmt_value(v: Any) -> str:
    if isinstance(v, list | tuple):
        return "(" + ",".join(f"{x:g}" for x in v) + ")"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _check_lines(checks: Sequence[Mapping[str, Any]]) -> list[str]:
    if not checks:
        return []
    head = ["lever", "value", "seeds", "rtol", "views agree", "two-view tight/default", "E/μ tight"]
    body = [[c["lever"], _fmt_value(c["value"]), str(c["seeds"]),
             f"{c['flow_rtol']:g} vs {c['reference_rtol']:g}",
             f"{c['agree']}/{c['cells']}", f"{c['two_view']:.3f}/{c['two_view_reference']:.3f}",
             f"{c['error_over_mu']:.3f}"] for c in checks]  # fmt: skip
    return ["", "tolerance checks (the first seeds of each lever's extreme values, tighter flow):",
            *text_table(head, body)]  # fmt: skip


def _ranking_lines(rank: Sequence[Mapping[str, Any]]) -> list[str]:
    head = ["lever", "two-view per doubling [95% CI]", "move over range",
            "r50 per doubling [95% CI]", "move over range"]  # fmt: skip
    body = [[r["lever"],
             fmt_ci(r["two_view_slope"], r["two_view_slope_lo"], r["two_view_slope_hi"]),
             f"{r['two_view_move']:+.3f}",
             fmt_ci(r["r50_slope"], r["r50_slope_lo"], r["r50_slope_hi"]),
             f"{r['r50_move']:+.3f}"] for r in rank]  # fmt: skip
    return ["", "levers ranked by how far they move the two-view fraction (slopes against "
            "log₂ of the value; values > 0):", *text_table(head, body)]  # fmt: skip


def _law_lines(law: Sequence[Mapping[str, Any]]) -> list[str]:
    cells = [f"[{c['lo']:g}, {c['hi']:g}): {c['classes']} classes, "
             + ("—" if not c["classes"] else f"{c['frac_two']:.2f}") for c in law]  # fmt: skip
    return ["", "the race law: two-view fraction by the loser's push / need (every class of "
            "every map point): " + "; ".join(cells)]  # fmt: skip


def markdown(rep: dict[str, Any]) -> str:
    """docs/race.md's tables, generated from the report rather than typed: every map
    point (the preset's own point once, first), the tolerance checks, the ranking (§2)
    and the race law (§1)."""
    from collections import Counter

    rows = rep["rows"]
    centre = {h for h, n in Counter(r["hash"] for r in rows).items() if n > 1}
    first = [{**r, "lever": f"**{rep['preset']}**", "shown": "(every lever's centre)"}
             for r in {r["hash"]: r for r in rows if r["hash"] in centre}.values()]  # fmt: skip
    body = [_md_point(r) for r in first + [r for r in rows if r["hash"] not in centre]]
    head = ["lever", "value", "T", "flow_rtol", "fitted", "one / two / no view",
            "two-view [95% CI]", "r₅₀ [95% CI]", "E/μ", "e_multi", "in band", "escape q50",
            "loser@esc 1v/2v", "push/need 1v/2v", "fit step", "s"]  # fmt: skip
    out = ["Every map point (noise levers as σ√d):", "", *markdown_table(head, body)]
    head = ["lever", "value", "seeds", "flow_rtol (check vs map)",
            "(class, view) cells agreeing", "two-view check / map", "E/μ check"]  # fmt: skip
    body = [[c["lever"], _md_value(c["lever"], c["value"]), c["seeds"],
             f"{c['flow_rtol']:g} vs {c['reference_rtol']:g}", f"{c['agree']}/{c['cells']}",
             f"{c['two_view']:.3f} / {c['two_view_reference']:.3f}",
             f"{c['error_over_mu']:.3f}"] for c in rep["checks"]]  # fmt: skip
    out += ["", "The tolerance checks:", "", *markdown_table(head, body)]
    out += ["", "The ranking:", "", *_md_ranking(rep)]
    head = ["push / need", "classes", "two-view fraction [95% CI]"]
    body = [[f"[{c['lo']:g}, {c['hi']:g})", c["classes"],
             fmt_ci(c["frac_two"], c["ci_lo"], c["ci_hi"], 2)] for c in rep["law"]]  # fmt: skip
    return "\n".join(out + ["", "The race law:", "", *markdown_table(head, body)]) + "\n"


def _md_value(lever: str, v: Any) -> str:
    return f"{v * _ROOT200:.3g}" if lever in ("sigma_p", "sigma_n") else _fmt_value(v)


def _md_point(r: Mapping[str, Any]) -> list[str]:
    f = lambda key, d: fmt_num(r.get(key), d)
    return [
        r["lever"], r.get("shown") or _md_value(r["lever"], r["value"]), r["T"],
        f"{r['flow_rtol']:g}", f"{r['seeds'] - r['seeds_unfitted']}/{r['seeds']}",
        f"{r['frac_one_view']:.3f} / {r['frac_two_view']:.3f} / {r['frac_no_view']:.3f}",
        fmt_ci(r["frac_two_view"], r["frac_two_view_lo"], r["frac_two_view_hi"]),
        fmt_ci(r["r50"], r["r50_lo"], r["r50_hi"], 2), f("error_over_mu", 3), f("e_multi", 4),
        f("in_band", 2), f("escape_q50", 0),
        f"{f('loser_at_escape_one', 3)} / {f('loser_at_escape_two', 3)}",
        f"{f('push_over_need_one', 2)} / {f('push_over_need_two', 2)}",
        f("memorised_last", 0), f("point_seconds", 0),
    ]  # fmt: skip


def _md_ranking(rep: dict[str, Any]) -> list[str]:
    body = []
    for k in rep["ranking"]:
        rs = _ranked_rows(rep["rows"], k["lever"])
        no = [r["frac_no_view"] for r in rs]
        body.append([
            k["lever"], ", ".join(_md_value(k["lever"], r["value"]) for r in rs),
            fmt_ci(k["two_view_slope"], k["two_view_slope_lo"], k["two_view_slope_hi"]),
            "{:.3f}–{:.3f}".format(*k["two_view_range"]),
            fmt_ci(k["r50_slope"], k["r50_slope_lo"], k["r50_slope_hi"]),
            f"{min(no):.3f}–{max(no):.3f}",
        ])  # fmt: skip
    head = ["lever", "values run", "two-view per doubling [95% CI]", "two-view over the range",
            "r₅₀ per doubling [95% CI]", "no-view over the range"]  # fmt: skip
    return markdown_table(head, body)


def figure(rep: dict[str, Any], out: Path) -> list[str]:
    """Four figures: the two-view fraction and r₅₀ against each lever, each lever's race
    curves overlaid, and the race law (two-view fraction against the loser's push over
    its need, every class of every point)."""
    from mvsim.plots import _save

    paths = []
    for name, draw in (("race_levers_two_view", draw_two_view), ("race_levers_r50", draw_r50),
                       ("race_levers_curves", draw_curves), ("race_law", draw_law)):  # fmt: skip
        paths += _save(draw(rep), out, name)
    return paths


def _grid(rep: dict[str, Any], title: str):
    from mvsim.plots import _plt

    names = list(rep["levers"])
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = _plt().subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    fig.suptitle(title)
    for ax in axes.ravel()[len(names) :]:
        ax.set_visible(False)
    return fig, list(zip(names, axes.ravel(), strict=False))


def _lever_rows(rep: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return sorted((r for r in rep["rows"] if r["lever"] == name), key=lambda r: r["axis"])


def _log_axis(ax, rows) -> None:
    if all(r["axis"] > 0 for r in rows):
        ax.set_xscale("log", base=2)


def draw_two_view(rep: dict[str, Any]):
    from mvsim.plots import PALETTE

    fig, cells = _grid(rep, "two-view fraction against each lever (95% CI)")
    for name, ax in cells:
        rs = _lever_rows(rep, name)
        x = np.array([r["axis"] for r in rs])
        keys = ("frac_two_view", "frac_two_view_lo", "frac_two_view_hi")
        v, lo, hi = (np.array([r[k] for r in rs], float) for k in keys)
        ax.errorbar(x, v, yerr=[v - lo, hi - v], fmt="o-", ms=3, capsize=2, color=PALETTE[0])
        ax.plot(x, [r["frac_no_view"] for r in rs], "x:", ms=3, color=PALETTE[3], label="no view")
        _log_axis(ax, rs)
        ax.set(xlabel=rep["levers"][name]["label"], ylim=(-0.03, 1.03))
        ax.xaxis.label.set_size(7)
    cells[0][1].legend(fontsize=6)
    fig.tight_layout()
    return fig


def draw_r50(rep: dict[str, Any]):
    from mvsim.plots import PALETTE

    fig, cells = _grid(rep, "race-curve midpoint r₅₀ against each lever (95% CI)")
    for name, ax in cells:
        rs = [r for r in _lever_rows(rep, name) if np.isfinite(r["r50"])]
        if not rs:
            continue
        x = np.array([r["axis"] for r in rs])
        v = np.array([r["r50"] for r in rs], float)
        lo = np.nan_to_num(np.array([r["r50_lo"] for r in rs], float), nan=v)
        hi = np.nan_to_num(np.array([r["r50_hi"] for r in rs], float), nan=v)
        ax.errorbar(x, v, yerr=[v - lo, hi - v], fmt="o-", ms=3, capsize=2, color=PALETTE[2])
        ax.axhline(1.0, color="grey", lw=0.6, ls=":")
        _log_axis(ax, rs)
        ax.set(xlabel=rep["levers"][name]["label"])
        ax.xaxis.label.set_size(7)
    fig.tight_layout()
    return fig


def draw_curves(rep: dict[str, Any]):
    from mvsim.plots import _plt

    fig, cells = _grid(rep, "race curves: two-view fraction per bin of r = Λ_loser/Λ_winner")
    cmap = _plt().get_cmap("viridis")
    for name, ax in cells:
        rs = _lever_rows(rep, name)
        for j, r in enumerate(rs):
            mid = [(c["lo"] + c["hi"]) / 2 for c in r["race_curve"]]
            y = [c["frac_two"] if c["classes"] else np.nan for c in r["race_curve"]]
            ax.plot(mid, y, "o-", ms=2.5, lw=1, color=cmap(j / max(len(rs) - 1, 1)),
                    label=_fmt_value(r["value"]))  # fmt: skip
        ax.set(title=name, ylim=(-0.03, 1.03), xlim=(0, 1))
        ax.title.set_size(8)
        ax.legend(fontsize=5)
    fig.tight_layout()
    return fig


LAW_BINS = (0.0, 0.03, 0.1, 0.3, 0.6, 1.0, 1.7, 3.0, 10.0, math.inf)


def law_curve(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The two-view fraction per bin of push/need over the classes of ``rows`` (fitted
    seeds, classes whose winner escaped): the tensor-power law says a loser escapes once
    its push reaches its need, so the fraction should step from 0 to 1 at a ratio of 1."""
    from mvsim.experiments import rate_ci

    ratio = np.concatenate([[], *(np.ravel(r["race"]["push_over_need"]) for r in rows)])
    two = np.concatenate([[], *(np.ravel(r["race"]["two"]) for r in rows)]).astype(bool)
    ok = np.isfinite(ratio)
    out = []
    for lo, hi in zip(LAW_BINS[:-1], LAW_BINS[1:], strict=True):
        sel = ok & (ratio >= lo) & (ratio < hi)
        rate, clo, chi = rate_ci(int(two[sel].sum()), int(sel.sum()))
        out.append({"lo": lo, "hi": hi, "classes": int(sel.sum()), "frac_two": rate,
                    "ci_lo": clo, "ci_hi": chi})  # fmt: skip
    return out


def draw_law(rep: dict[str, Any]):
    from mvsim.plots import PALETTE, _plt

    fig, ax = _plt().subplots(figsize=(5.2, 3.6))
    curve = rep["law"]
    mid = [math.sqrt(max(c["lo"], 0.01) * min(c["hi"], 30.0)) for c in curve]
    v = np.array([c["frac_two"] for c in curve], float)
    lo, hi = (np.nan_to_num(np.array([c[k] for c in curve], float), nan=0.0)
              for k in ("ci_lo", "ci_hi"))  # fmt: skip
    ax.errorbar(mid, v, yerr=[np.nan_to_num(v - lo), np.nan_to_num(hi - v)], fmt="o-",
                color=PALETTE[0], capsize=3, ms=4)  # fmt: skip
    for c, x in zip(curve, mid, strict=True):
        ax.annotate(str(c["classes"]), (x, 0.02), fontsize=6, ha="center")
    ax.axvline(1.0, color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set(xlabel="loser's push after the escape / push it needed (tensor-power law)",
           ylabel="two-view fraction", ylim=(-0.03, 1.03),
           title="the race law, every class of every lever point")  # fmt: skip
    return fig
