"""Recording a class's race while the singles train: what decides it, step by step.

The trainer records whatever a network's ``alignment(params, V)`` returns at its
log-spaced steps (:mod:`mvsim.train`). :func:`probe_network` wraps the patch CNN so that
this record is the race's history rather than Λ alone: every neuron's alignment with its
class's two views, every training point's margin g_n = F_y − log Σ_{j≠y} e^{F_j} (its loss
factor is 1 − p_y = σ(−g_n)), and for the single-view points the part of F_y their
noise alone carries (memorisation). The training set rides along in the views' array
("V"), which the trainer passes through untouched: nothing in the trainer changes.

:func:`race_statistics` turns that history into per-class numbers: the step at which the
class's first view reached ϱ (its escape), the loser's alignment there, the step at which
each single-view point was fitted, and the push the loser received after the escape from
the multi-view and from the single-view loss factors (the ∫C dt of the tensor-power law
dΛ/dt = C(t)·(Λ/ϱ)^{q−1}·ϱ; docs/race.md derives it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from mvsim.config import Config
from mvsim.model import Network
from mvsim.train import blocked
from mvsim.verify import Measurements

PROBE_BLOCK = 64  # training points per block of the probe's forward pass


class Layout(NamedTuple):
    """Where each recorded quantity sits in the probe's flat vector (static sizes)."""

    k: int
    m: int
    N: int
    P: int
    d: int
    n_sv: int

    def sizes(self) -> dict[str, int]:
        return {"align": self.m * self.k * 2, "margin": self.N, "noise_part": self.n_sv,
                "sv_correct": self.n_sv}  # fmt: skip

    @property
    def length(self) -> int:
        return sum(self.sizes().values())


def pack_views(
    V: Float[Array, "k 2 d"], x: Float[Array, "N P d"], noise: Float[Array, "N P d"]
) -> Float[Array, "k+NP 2 d"]:
    """The views with the training set appended: rows k.. hold (patch, its noise) pairs."""
    N, P, d = x.shape
    extra = jnp.stack([x.reshape(N * P, d), noise.reshape(N * P, d)], axis=1)
    return jnp.concatenate([V, extra.astype(V.dtype)], axis=0)


def probe_network(net: Network, y: np.ndarray, single: np.ndarray, lay: Layout) -> Network:
    """``net`` whose recorded 'alignment' is the race's history (shape (R, k, 2), a flat
    vector of :class:`Layout`'s pieces, zero-padded); its views must be :func:`pack_views`'d.

    y (N,) labels and single (N,) bool are the training set's, closed over (small)."""
    y = jnp.asarray(y)
    sv = jnp.asarray(np.flatnonzero(single))
    k, N, P, d = lay.k, lay.N, lay.P, lay.d

    def record(W: jax.Array, packed: jax.Array) -> jax.Array:
        V = packed[:k]
        x = packed[k:, 0].reshape(N, P, d)
        xi = packed[k:, 1].reshape(N, P, d)
        align = jnp.einsum("kmd,kld->mkl", W, V)
        # In blocks: the trainer evaluates this at every recorded step at once (a vmap),
        # and the whole training set's activations at 64 steps cost gigabytes.
        F = blocked(net.apply, PROBE_BLOCK)(W, x)
        noise_part = net.apply(W, xi[sv])[jnp.arange(sv.size), y[sv]]
        correct = hard_margins(F[sv], y[sv])
        vec = jnp.concatenate([align.ravel(), margins(F, y), noise_part, correct])
        pad = (-vec.size) % (2 * k)
        return jnp.concatenate([vec, jnp.zeros(pad, vec.dtype)]).reshape(-1, k, 2)

    return Network(net.init, net.apply, record)


def margins(F: Float[Array, "n k"], y: jax.Array) -> Float[Array, " n"]:
    """g_n = F_y − log Σ_{j≠y} e^{F_j}: the loss factor 1 − p_y is σ(−g_n), and the point
    is classified right when F_y beats every other F_j (g_n > 0 suffices, not needed)."""
    own = jax.nn.one_hot(y, F.shape[1], dtype=bool)
    Fy = jnp.where(own, F, 0.0).sum(1)
    return Fy - jax.nn.logsumexp(jnp.where(own, -jnp.inf, F), axis=1)


def hard_margins(F: Float[Array, "n k"], y: jax.Array) -> Float[Array, " n"]:
    """F_y − max_{j≠y} F_j: positive exactly where the point is classified right."""
    own = jax.nn.one_hot(y, F.shape[1], dtype=bool)
    return jnp.where(own, F, 0.0).sum(1) - jnp.where(own, -jnp.inf, F).max(1)


def unpack(record: np.ndarray, lay: Layout) -> dict[str, np.ndarray]:
    """The probe's record (S, L, R, k, 2) as arrays: ``align`` (S, L, m, k, 2), ``margin``
    (S, L, N), ``noise_part`` and ``sv_correct`` (F_y − max_{j≠y} F_j) (S, L, n_sv)."""
    S, L = record.shape[:2]
    flat = record.reshape(S, L, -1)
    out, at = {}, 0
    for name, size in lay.sizes().items():
        out[name] = flat[:, :, at : at + size]
        at += size
    out["align"] = out["align"].reshape(S, L, lay.m, lay.k, 2)
    return out


def race_statistics(
    steps: np.ndarray,
    hist: dict[str, np.ndarray],
    y: np.ndarray,
    single: np.ndarray,
    strong: np.ndarray,
    zsum: np.ndarray,
    *,
    varrho: float,
    q: int,
    eta: float,
    N: int,
) -> dict[str, Any]:
    """Per-class and per-point race numbers from a probe's history (one point's S seeds);
    y, single, strong (N,) and zsum (N, k, 2) describe the training set.

    Returns lists (JSON-ready): per class (S, k) ``escape_step`` (first recorded step
    with max_ℓ Λ ≥ ϱ, −1 none), ``winner`` (the view that got there), ``loser_at_escape``
    (Λ_loser/ϱ there, interpolated in log-step), ``push_multi`` and ``push_single``: the
    push ∫C dt the loser received from the escape to the stop from the class's multi-view
    points and from its single-view points whose strong view is the loser, where
    C(t) = (1/N) Σ_n (1 − p_y(X_n)) z_n^q and dΛ/dt = C·(Λ/ϱ)^{q−1} while Λ < ϱ, so a
    loser at Λ escapes once its push reaches ϱ(ϱ/Λ)^{q−2}/(q−2); per single-view point
    (S, n_sv) ``memorised_step`` (first recorded step with F_y above every other logit, −1
    never) and its class and strong view.
    """
    lam = np.maximum(hist["align"].max(2), 0.0)  # (S, L, k, 2)
    S, L, k, _ = lam.shape
    t = np.asarray(steps, float) * eta
    idx = np.flatnonzero(single)
    fitted = hist["sv_correct"] > 0  # (S, L, n_sv): F_y above every other logit
    mem = np.where(fitted.any(1), np.asarray(steps)[fitted.argmax(1)], -1)
    loss = 1.0 / (1.0 + np.exp(np.clip(hist["margin"], -50, 50)))  # 1 − p_y, (S, L, N)
    esc, win, lose_at, push_m, push_s = (np.full((S, k), v, float) for v in (-1, -1, np.nan, 0, 0))
    for s in range(S):
        for i in range(k):
            out = _class_race(steps, t, lam[s, :, i], loss[s], y, single, strong, zsum, i, q,
                              varrho, N)  # fmt: skip
            esc[s, i], win[s, i], lose_at[s, i], push_m[s, i], push_s[s, i] = out
    rnd = lambda a: np.round(a, 5).tolist()
    return {
        "escape_step": esc.astype(int).tolist(), "winner": win.astype(int).tolist(),
        "loser_at_escape": rnd(lose_at), "push_multi": rnd(push_m), "push_single": rnd(push_s),
        "memorised_step": mem.astype(int).tolist(), "sv_class": y[idx].tolist(),
        "sv_strong": strong[idx].tolist(),
    }  # fmt: skip


def _class_race(steps, t, lam, loss, y, single, strong, zsum, i, q, varrho, N) -> tuple:
    """(escape step, winning view, Λ_loser/ϱ at the escape, multi-view push, single-view
    push) of class i; lam (L, 2), loss (L, N)."""
    hit = lam >= varrho
    if not hit.any():
        return -1, -1, np.nan, 0.0, 0.0
    j = int(np.argmax(hit.any(1)))
    w = int(np.argmax(lam[j]))
    lo = 1 - w
    at = _interp_log(steps, lam[:, lo], j) / varrho
    mv = (y == i) & ~single
    sv = (y == i) & single & (strong == lo)
    # Past a model's stop its record is NaN: the loss factors there do not push anything.
    loss_ok = np.nan_to_num(loss, nan=0.0)
    zq = zsum[:, i, lo] ** q
    push = lambda sel: float(np.trapezoid((loss_ok[j:, sel] * zq[sel]).sum(1), t[j:]) / N)
    return steps[j], w, at, push(mv), push(sv)


def _interp_log(steps: np.ndarray, v: np.ndarray, j: int) -> float:
    """v at the crossing recorded at index j, interpolated linearly in log-step between
    the records j−1 and j (the crossing happened somewhere in between: take the middle)."""
    if j == 0:
        return float(v[0])
    a, b = np.log1p(steps[j - 1]), np.log1p(steps[j])
    return float(np.interp((a + b) / 2, [a, b], [v[j - 1], v[j]]))


def run_point(cfg: Config, claims: list[str] | None = None) -> dict[str, Any]:
    """One config's singles trained with the probe and measured as ``mvsim verify`` measures
    them (same streams: data, inits and test sets are verify's), plus the race numbers.

    Returns what :func:`mvsim.sweep.run_point` returns (``claims``, ``mechanism``,
    ``timing``, ``seconds``, ``peak_rss_bytes``), the mechanism carrying ``race``
    (:func:`race_statistics`). Claims beyond 'single' need the other models, which
    verify trains: they are run through :func:`mvsim.sweep.run_point` and the singles
    trained a second time with the probe (the same inits, so the same path)."""
    import time

    from mvsim import claims as claims_mod
    from mvsim import sweep
    from mvsim.resources import PeakRSS

    ids = ["single"] if claims is None else list(claims)
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        m, race = measure_singles(cfg)
        if ids == ["single"]:
            out = {"claims": [r.to_dict() for r in claims_mod.evaluate_all(m, ids)],
                   "mechanism": claims_mod.mechanism(m), "timing": dict(m.timing)}  # fmt: skip
        else:
            out = sweep.run_point(cfg, ids)
    out["mechanism"]["race"] = race
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_bytes"] = mem.peak
    return out


def measure_singles(cfg: Config) -> tuple[Measurements, dict[str, Any]]:
    """Verify's singles of ``cfg`` (:class:`~mvsim.verify.Measurements` with the single and
    ensemble groups) and their race statistics, from one training with the probe."""
    import time

    from mvsim import data, learners, verify
    from mvsim.train import init_seeds, precision, train_points

    D, M, Tc = cfg.data, cfg.model, cfg.train
    timing: dict[str, float] = {}
    with precision(Tc.dtype, Tc.matmul_precision):
        dtype = jnp.dtype(Tc.dtype)
        t = time.perf_counter()
        V = data.features(verify.stream(cfg, "features"), D.d, D.k, dtype)
        ts, truth = data.training_set(verify.stream(cfg, "data"), D, V, dtype, ground_truth=True)
        net = learners.network(M, D.k, D.d, D.P, dtype)
        inits = init_seeds(net, verify.stream(cfg, "init"), cfg.verify.seeds)
        single = np.asarray(ts.single_view)
        lay = Layout(D.k, M.m, D.N, D.P, D.d, int(single.sum()))
        probe = probe_network(net, np.asarray(ts.y), single, lay)
        packed = pack_views(V, ts.x, truth.noise)
        timing["sample_train"] = time.perf_counter() - t
        t = time.perf_counter()
        add = lambda a: jax.tree.map(lambda b: jnp.asarray(b)[None], a)
        res = train_points(probe, add(ts.x), add(ts.y), add(packed), Tc, add(inits),
                           etas=[Tc.eta], desc="single models (race probe)").point(0)  # fmt: skip
        timing["train_single"] = time.perf_counter() - t
        hist = unpack(res.alignment, lay)
        res = res._replace(alignment=hist["align"].max(2))  # Λ, as verify records it
        m = _measurements(cfg, net, V, ts, truth, res, timing)
    race = race_statistics(res.steps, hist, np.asarray(ts.y), single,
                           np.asarray(ts.strong_view), np.asarray(truth.zsum),
                           varrho=M.varrho, q=M.q, eta=Tc.eta, N=D.N)  # fmt: skip
    return m, race


def _measurements(cfg, net, V, ts, truth, res, timing) -> Measurements:
    """Verify's measurements of trained singles: their test errors on verify's test sets,
    learned views, lottery and memorisation (:mod:`mvsim.verify`'s own helpers)."""
    import time

    from mvsim import curves, verify

    t = time.perf_counter()
    add = lambda tree: jax.tree.map(lambda a: jnp.asarray(a)[None], tree)
    params, history = add(res.params), add(res.history_params)
    (out,), curve_s = verify._evaluate_points([cfg], V[None], {"single": (net.apply, params)},
                                              {"single": (net.apply, history)})  # fmt: skip
    errors, ys, strong, counts = out
    counts["ensemble"]["train_accuracy"] = curves.ensemble_train_accuracy(
        net.apply, history, ts.x[None], ts.y[None]
    )[0][None]
    logits = jax.vmap(net.apply, in_axes=(0, None))(res.params, ts.x)
    timing["evaluate"] = time.perf_counter() - t - curve_s
    timing["curves"] = curve_s
    return verify._measurements(cfg, net, V, ts, truth, logits, res, None, None, errors, ys,
                                strong, res.steps, dict(timing), counts)  # fmt: skip
