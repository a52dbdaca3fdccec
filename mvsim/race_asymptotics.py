"""The race at large k: the reduced race model on a population of classes.

A class's race involves the rest of the task only through its own points' loss factors
(the other classes' logits on them) and through the other classes' points that carry its
views as noisy features. Both are local: a point carries about 2s noisy features, each
view is carried by about n·s points (n the points per class), whatever k is. So a
population of K classes whose points draw their noisy features by the task's law (each
other-class view present with probability s/k, at most max_noisy) but from the
population's views, with the other k − K classes entering every softmax through their
background (:func:`mvsim.race_model.logits`: ``absent``), is the task at k for the
reduced model, at a cost that does not grow with k. The loss is the mean over the
population's points instead of all N, which runs its clock k/K times faster: η is
scaled by K/k so that T steps are the task's T steps.

What the population does not hold is the task's slowest point: training stops when all
of N = k·n points are fitted, and the population's own last point is an earlier one. The
model is therefore run past its own fitting, every point's fitting step is recorded, and
the task's stop is read off their distribution as the median of the largest of k·n draws
(:func:`task_stop`); the race is read there, and at the population's own stop and at the
end of the integration for comparison (:func:`k_row`). The integration runs in segments
and ends once that stop is recorded and stable (:func:`integrate`), not at the budget
T·η, which grows as k^1.5 (demo) to k^2.5 (paper) while the stop stays far below it.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mvsim import race_model
from mvsim.config import Config, make_config
from mvsim.experiments.k_scaling import in_band_probability

POPULATION = 40
"""Classes simulated per population (each with its own points and inits)."""
CLASSES = 80
"""Classes simulated at every k (populations × classes each): the two-view fraction's CI
is then ±0.07 near 0.15, and a fraction of 0 is below 0.045."""

RULES: dict[str, Callable[[int], Config]] = {}


def rule(name: str) -> Callable[[Callable[[int], Config]], Callable[[int], Config]]:
    def add(fn: Callable[[int], Config]) -> Callable[[int], Config]:
        RULES[name] = fn
        return fn

    return add


@rule("demo")
def demo(k: int) -> Config:
    """The demo family at k (mvsim presets: N = 62k, s = 4, d = max(200, 4k), ...)."""
    return make_config("demo", {"k": k})


@rule("paper")
def paper(k: int) -> Config:
    """The paper's scalings on the demo family: σ_0^{q−2} ∝ 1/k and ϱ ∝ 1/ln k (the
    ``demo-theory`` preset) with m ∝ ln k (``demo-logm``'s rule), all matched at k = 10."""
    m = max(1, round(4 * math.log(k) / math.log(10)))
    return make_config("demo-theory", {"k": k, "m": m})


def population(cfg: Config, K: int, key: jax.Array) -> race_model.Structure:
    """A training set of K classes drawn by ``cfg``'s law at its k (stratified: the
    preset's points per class), with the task's other k − K classes absent."""
    D = cfg.data
    k = D.k
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    n_single = round(D.mu * D.N)
    per_view = max(1, round(n_single / (2 * k)))
    per_class = max(1, round((D.N - n_single) / k))
    rows = [(c, -1) for c in range(K) for _ in range(per_class)]
    rows += [(c, v) for c in range(K) for v in (0, 1) for _ in range(per_view)]
    y = np.array([c for c, _ in rows])
    owner = np.full((len(rows), D.P), -1)
    view = np.zeros((len(rows), D.P), int)
    z = np.zeros((len(rows), D.P))
    for n, (c, v) in enumerate(rows):
        feats = _features(rng, D, K, c, v)
        slots = rng.permutation(D.P)[: len(feats) * D.C_p].reshape(len(feats), D.C_p)
        for (o, ell, zz), ps in zip(feats, slots, strict=True):
            owner[n, ps], view[n, ps] = o, ell
            z[n, ps] = zz * _split(rng, D)
    s2 = np.where(owner >= 0, D.sigma_p**2, D.sigma_n**2)
    nu2 = s2 * rng.chisquare(D.d - 2 * k, size=s2.shape)
    other = race_model.others(y, owner)
    return race_model.Structure(y, owner, view, z, s2, nu2, other, float(k - K))


def _features(rng, D, K: int, c: int, strong: int) -> list[tuple[int, int, float]]:
    """(owner, view, Σz) of a point's features: its own view(s), then noisy features,
    Binomial(2(k − 1), s/k) of them (the task's law) capped at max_noisy and at the
    population's 2(K − 1) other views, drawn without replacement from those."""
    u = lambda r: rng.uniform(*r)
    if strong < 0:
        own = [(c, 0, u(D.own_z)), (c, 1, u(D.own_z))]
    else:
        own = [(c, strong, u(D.own_z)), (c, 1 - strong, u(D.rho))]
    count = min(rng.binomial(2 * (D.k - 1), D.s / D.k), D.noisy_cap, 2 * (K - 1))
    others = [(o, ell) for o in range(K) if o != c for ell in (0, 1)]
    pick = rng.choice(len(others), size=count, replace=False)
    zr = D.noisy_z_multi if strong < 0 else D.Gamma
    return own + [(*others[i], u(zr)) for i in pick]


def _split(rng, D) -> np.ndarray:
    """How a feature's Σz is split over its C_p patches (``z_split``)."""
    if D.C_p == 1 or D.z_split == "equal":
        return np.full(D.C_p, 1.0 / D.C_p)
    e = rng.exponential(size=D.C_p)
    return e / e.sum()


def predict_population(
    cfg: Config, *, K: int = POPULATION, seeds: int = 4, key: int = 0
) -> dict[str, Any]:
    """The reduced race on ``seeds`` populations of K classes of ``cfg``'s task (inits
    from the init law), integrated in segments until the task's stop is passed
    (:func:`integrate`): Λ (S, L, K, 2) and every point's fitting margin (S, L, N_pop) at
    the recorded steps up to the end, the end step, and the init alignments (S, K, 2)."""
    race_model.check(cfg)
    D, M = cfg.data, cfg.model
    K = min(K, D.k)
    keys = jax.random.split(jax.random.key(key), seeds + 1)
    with jax.enable_x64(True):
        st = jax.tree.map(jnp.asarray, population(cfg, K, keys[0]))
        init = race_model.law_init(keys[1], cfg, st, seeds, K=K)
        init = jax.tree.map(jnp.asarray, init)
        eta = cfg.train.eta * K / D.k  # the population's clock (module doc)
        per_class = st.y.shape[0] // K
        until = lambda steps, margin: task_stop(fit_steps(steps, margin), D.k * per_class,
                                                cfg.train.T)  # fmt: skip
        out = integrate(init, st, eta, q=M.q, varrho=M.varrho, T=cfg.train.T,
                        n_log=cfg.train.n_log, until=until)  # fmt: skip
    return {"k": D.k, "K": K, "seeds": seeds, "m": M.m, **out,
            "init_alignment": np.asarray(init.A).max(2), "points_per_class": per_class}  # fmt: skip


SEGMENT = 2.0
"""Each segment of the integration ends at the first recorded step at least SEGMENT times
the previous end: the stop is checked once per doubling of the step, so the integration
overshoots a stable stop by at most two segments (a factor ≤ 2·SEGMENT² in steps, a few
solver steps each: the adaptive steps grow with t on the late plateau)."""


def segment_ends(steps: np.ndarray, factor: float = SEGMENT) -> list[int]:
    """Indices into the recorded ``steps`` at which segments end (the last is T's)."""
    ends, last = [], 1.0
    for i, s in enumerate(steps):
        if s >= factor * last or i == len(steps) - 1:
            ends.append(i)
            last = max(float(s), 1.0)
    return ends


def integrate(
    init: race_model.Init, st: race_model.Structure, eta: float, *, q: int, varrho: float,
    T: int, n_log: int, until: Callable[[np.ndarray, np.ndarray], float] | None = None,
    rtol: float = race_model.RTOL, factor: float = SEGMENT,
) -> dict[str, Any]:  # fmt: skip
    """The reduced flow of every seed (no stop at fitting), in segments ending at
    :func:`segment_ends`, each continuing from the last one's state. ``until(steps,
    margin)`` is the step the caller reads at (the task's stop), re-estimated after every
    segment; the integration ends once that step lies within what is recorded and the
    last segment left it unchanged (no point fitted or un-fitted there moved it), else
    at T. Without ``until``, to T. Returns the recorded steps up to the end, Λ (S, L, K,
    2), margins (S, L, N), the end step, the estimates after each segment, whether every
    seed's solver succeeded, and the solver steps taken."""
    from mvsim.train import log_steps

    steps = log_steps(T, n_log)
    ts = jnp.asarray(steps, jnp.float64) * eta
    y = (init.A, init.B, init.U)
    dt = jnp.full(init.A.shape[0], eta)  # the first step: one GD step, as race_model's
    ends = segment_ends(steps, factor)
    # One length of saved times for every segment (one compile), the longest segment's:
    # each saved time costs a margin evaluation, so no longer.
    width = int(np.diff([0, *ends]).max()) + 1
    lams, margins, estimates, ok, n_steps, lo = [], [], [], True, 0, 0
    for hi in ends:
        save = ts[np.minimum(lo + np.arange(width), hi)]  # padded with the end's time
        seg = _segments(init, y, st, ts[lo], ts[hi], save, dt, q=q, varrho=varrho, rtol=rtol)
        seg = jax.tree.map(np.asarray, seg)
        take = hi - lo + 1 if lo == 0 else hi - lo
        first = 0 if lo == 0 else 1  # a later segment's first saved time is its start
        lams.append(seg.lam[:, first : first + take])
        margins.append(seg.margin[:, first : first + take])
        ok, n_steps = ok and bool(seg.ok.all()), n_steps + int(seg.steps.sum())
        y, dt = seg.y, np.maximum((ts[hi] - ts[lo]) / np.maximum(seg.steps, 1), eta)
        lo = hi
        if not ok:
            break  # NaN or max_steps: what is recorded so far is returned, flagged
        if until is None:
            continue
        estimates.append(until(steps[: hi + 1], np.concatenate(margins, 1)))
        if estimates[-1] <= steps[hi] and estimates[-2:-1] == estimates[-1:]:
            break
    return {"steps": steps[: lo + 1], "lam": np.concatenate(lams, 1),
            "margin": np.concatenate(margins, 1), "end": int(steps[lo]),
            "estimates": estimates, "ok": ok, "solver_steps": n_steps}  # fmt: skip


class _Segment(NamedTuple):
    y: tuple[jax.Array, jax.Array, jax.Array]  # (A, B, R) at the segment's end
    lam: jax.Array  # (L, K, 2) at the saved times
    margin: jax.Array  # (L, N)
    ok: jax.Array
    steps: jax.Array


@functools.partial(jax.jit, static_argnames=("q", "varrho", "rtol"))
def _segments(init, y0, st, t0, t1, save, dt0, *, q, varrho, rtol) -> _Segment:
    """Every seed's flow over [t0, t1] from y0, one seed after another
    (:func:`mvsim.race_model.seedwise`), saved at ``save``."""
    one = functools.partial(_segment, q=q, varrho=varrho, rtol=rtol)
    return race_model.seedwise(lambda a: one(a[0], a[1], st, t0, t1, save, a[2]), (init, y0, dt0))


def _segment(init, y0, st, t0, t1, save, dt0, *, q, varrho, rtol) -> _Segment:
    """race_model._solve's flow (same field, controller, norm and solver: Heun) without
    its stop event, from y0 at t0."""
    import diffrax as dfx

    from mvsim.flow import cacheable_checks

    field, margin, ctrl = race_model.flow_parts(init, st, q=q, varrho=varrho, rtol=rtol)
    record = lambda t, y, a: (jnp.maximum(y[0].max(1), 0.0), margin(y))
    saveat = dfx.SaveAt(subs=[dfx.SubSaveAt(ts=save, fn=record), dfx.SubSaveAt(t1=True)])
    with cacheable_checks():  # no host callback: the persistent cache can keep it
        sol = dfx.diffeqsolve(dfx.ODETerm(field), dfx.Heun(), t0, t1, dt0, y0,
                              stepsize_controller=ctrl, saveat=saveat, max_steps=200_000,
                              throw=False)  # fmt: skip
    lam, m = sol.ys[0]
    y1 = jax.tree.map(lambda a: a[0], sol.ys[1])
    ok = sol.result == dfx.RESULTS.successful
    return _Segment(y1, lam, m, ok, sol.stats["num_steps"])


def fit_steps(steps: np.ndarray, margin: np.ndarray) -> np.ndarray:
    """Each point's fitting step: the first recorded step from which its margin stays
    positive (inf: not fitted by T). margin (..., L, N) -> (..., N)."""
    after = np.flip(np.cumprod(np.flip(margin > 0, -2), -2), -2).astype(bool)  # fitted from l on
    first = np.where(after.any(-2), after.argmax(-2), -1)
    return np.where(first >= 0, np.asarray(steps, float)[first], np.inf)


def task_stop(fits: np.ndarray, n_task: int, T: int) -> float:
    """The step at which all n_task points of the task are fitted (the median of the max
    of n_task draws from the populations' fitting steps ``fits``): the quantile
    2^{−1/n_task}, read off the sample where it has one, else from a Pareto tail fitted to
    its top tenth (log(1 − F) linear in log step). T when that lies past the budget."""
    f = np.sort(np.asarray(fits, float).ravel())
    n = f.size
    want = 2.0 ** (-1.0 / n_task)
    if not np.isfinite(f).any() or (1 - want) * n < 1 and not np.isfinite(f[-1]):
        return float(T)
    if (1 - want) * n >= 1:
        at = np.quantile(f, want)  # inf or nan: past the last fitted point (censored)
        return float(min(at, T)) if np.isfinite(at) else float(T)
    tail = f[int(0.9 * n) :]
    tail = tail[np.isfinite(tail)]
    surv = 1 - (np.arange(n - tail.size, n) + 0.5) / n
    if tail.size < 3 or np.ptp(np.log(tail)) == 0:
        return float(T)
    b, a = np.polyfit(np.log(tail), np.log(surv[: tail.size]), 1)
    if b >= 0:
        return float(T)
    return float(min(math.exp((math.log(1 - want) - a) / b), T))


def k_row(rule_name: str, k: int, **kw: Any) -> dict[str, Any]:
    """One k of a rule: the two-view fraction when the task stops (every one of its
    k·n points fitted: :func:`task_stop`), at the populations' own stop and at the end of
    the integration (:func:`integrate`; fitting steps are judged up to it), each with its
    exact binomial CI over the populations' classes; r₅₀ at the task's stop; and the
    probability that a single model of k classes is inside [0.49, 0.51]μ given each
    fraction (:func:`mvsim.experiments.k_scaling.in_band_probability`, at the fraction
    and at its CI's ends)."""
    from mvsim.experiments import rate_ci
    from mvsim.experiments.k_scaling import race_midpoint
    from mvsim.mechanism import race_ratio

    cfg = RULES[rule_name](k)
    res = predict_population(cfg, **kw)
    steps, lam = res["steps"], res["lam"]
    fits = fit_steps(steps, res["margin"])  # (S, N_pop), judged up to the end
    stops = {
        "task": task_stop(fits, k * res["points_per_class"], cfg.train.T),
        "population": float(np.median(fits.max(1))),
        "end": float(res["end"]),
    }
    thr = cfg.verify.view_threshold * cfg.model.varrho
    row: dict[str, Any] = {"rule": rule_name, "k": k, "m": res["m"], "K": res["K"],
                           "seeds": res["seeds"], "sigma_0": cfg.model.sigma_0,
                           "varrho": cfg.model.varrho, "T": cfg.train.T, "stops": stops,
                           "ok": res["ok"], "solver_steps": res["solver_steps"],
                           "estimates": res["estimates"]}  # fmt: skip
    r = race_ratio(res["init_alignment"]).ravel()
    for when, step in stops.items():
        at = max(int(np.searchsorted(steps, min(step, res["end"]), side="right")) - 1, 0)
        two = (lam[:, at] >= thr).sum(-1) == 2
        p, lo, hi = rate_ci(int(two.sum()), two.size)
        row[f"two_view_{when}"] = [p, lo, hi]
        row[f"in_band_{when}"] = [in_band_probability(k, v) for v in (p, hi, lo)]
        if when == "task":
            row["r50"] = list(race_midpoint(r, two.ravel()))
    return row


DEFAULT_KS = (10, 40, 100, 1_000, 10_000, 1_000_000)


def run(
    rules: Sequence[str] = tuple(RULES),
    ks: Sequence[int] = DEFAULT_KS,
    *,
    out: str | Path,
    K: int = POPULATION,
    seeds: int = 2,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Every (rule, k) not yet in ``out`` (JSON lines, resumable), each appended as it
    finishes; returns all rows of ``out``."""
    from mvsim.report import append_jsonl

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    done = {(r["rule"], r["k"]) for r in rows}
    for name in rules:
        for k in ks:
            if (name, k) in done:
                continue
            log(f"race asymptotics: rule {name}, k = {k}")
            t0 = time.perf_counter()
            # At least CLASSES classes at every k: a small k has a small population.
            S = max(seeds, math.ceil(CLASSES / min(K, k)))
            row = {**k_row(name, k, K=K, seeds=S), "seconds": time.perf_counter() - t0}
            append_jsonl(out, row)
            rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mvsim.race_asymptotics --out FILE.jsonl [--rules demo,paper] [--ks ...]``."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON-lines file of the rows (resumable)")
    ap.add_argument("--rules", default=",".join(RULES), help=f"of {list(RULES)}")
    ap.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)))
    ap.add_argument("--population", type=int, default=POPULATION, help="classes simulated")
    ap.add_argument("--seeds", type=int, default=2, help="populations per k")
    args = ap.parse_args(argv)
    run(args.rules.split(","), [int(v) for v in args.ks.split(",")], out=args.out,
        K=args.population, seeds=args.seeds)  # fmt: skip


if __name__ == "__main__":
    main()
