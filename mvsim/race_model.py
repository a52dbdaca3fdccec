"""The reduced race model: the gradient flow of the patch CNN projected onto the few
quantities that decide each class's race, integrated from a config and an init.

The full model's weights live in R^{k×m×d}; what decides a race is much smaller
(docs/race.md derives every line below from the network and the loss):

- A[j, r, ℓ] = ⟨w_{j,r}, v_{j,ℓ}⟩, each neuron's alignment with its class's two views;
- B[n, r, p] = ⟨w_{y_n,r}, ξ_{n,p}⟩, each training point's noise alignment with its own
  class's neurons, patch by patch: memorisation grows these;
- the loss factors c_{n,j} = 1[y_n = j] − p_j(X_n) of every training point, functions of
  the logits the two above give.

The views are orthonormal and the noise is projected off them (``project_noise``), so a
patch x_{n,p} = z_{n,p}·v_{o,ℓ} + ξ_{n,p} (a feature of class o, or z = 0) gives neuron
(j, r) the pre-activation z·A[j,r,ℓ]·1[o = j] + ⟨w_{j,r}, ξ_{n,p}⟩. The noise term is tracked
exactly where it grows (B: a point's own class, its own patches, each driven by its own
|ξ|² — the diagonal of the noise Gram matrix); everything else the noise does is a
Gaussian jitter ε ~ N(0, s²_{n,p}·G) on the pre-activation, s_{n,p} the patch's noise
std per coordinate and G the squared norm of the part of w's noise component that points
elsewhere (its init, σ_0²(d − 2k), for another class's neuron; what memorising *other*
points added, for the own class's). The jitter is averaged in closed form (truncated
Gaussian moments of the smoothed ReLU). Cross-class view alignments ⟨w_{j,r}, v_{o,ℓ}⟩
(o ≠ j) are dropped: every point of class o pushes them down where they are positive.

The flow of these coordinates is the gradient flow of the reduced loss L(A, B) (the
cross-entropy with these logits, the jitter's variance held fixed under the derivative):
dA/dt = −∂L/∂A and dB/dt = −|ξ_{n,p}|²·∂L/∂B (B is w's coordinate along ξ, of norm |ξ|).
It stops, as the full flow does, when every training point is classified right, or at
the budget T·η. Every constant is the config's; the init is either a run's actual one
(the same streams as ``mvsim verify``: each class's A, B and the noise norms are those of
the full run) or drawn from the init law.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from mvsim.config import Config, ConfigError


class Structure(NamedTuple):
    """A training set as the reduced model sees it (one per config; shared by its seeds)."""

    y: Int[Array, " N"]  # labels
    owner: Int[Array, "N P"]  # class whose view a patch carries (−1: none)
    view: Int[Array, "N P"]  # which of its two views
    z: Float[Array, "N P"]  # its coefficient (0 where none)
    s2: Float[Array, "N P"]  # the patch's noise variance per coordinate (σ_p² or σ_n²)
    nu2: Float[Array, "N P"]  # its noise's squared norm |ξ_{n,p}|²
    other: Int[Array, "F 2"]  # (point, patch) of every patch carrying another class's view
    absent: Float[Array, ""] = 0.0  # classes of the task not simulated (a population: k − K)


class Init(NamedTuple):
    """One model's starting point in the reduced coordinates (leading seed axis once
    stacked)."""

    A: Float[Array, "k m 2"]
    B: Float[Array, "N m P"]
    U: Float[Array, "k m"]  # |w's noise component|² per neuron


def check(cfg: Config) -> None:
    """Reject a config outside the reduced model's derivation, naming the field."""
    D, M = cfg.data, cfg.model
    if M.learner != "patch_cnn":
        raise ConfigError("learner", M.learner, "the reduced model is the patch CNN's")
    if D.family != "multiview":
        raise ConfigError("family", D.family, "the reduced model needs the multi-view data")
    if D.gamma != 0:
        raise ConfigError("gamma", D.gamma, "the reduced model needs gamma = 0: feature noise "
                          "puts every view in every patch")  # fmt: skip
    if not D.project_noise:
        raise ConfigError("project_noise", D.project_noise, "the reduced model needs the noise "
                          "projected off the views (its d → ∞ limit)")  # fmt: skip
    if M.q < 2:
        raise ConfigError("q", M.q, "the race needs q ≥ 2 (a polynomial regime that compounds)")


def structure(cfg: Config, y: np.ndarray, coef: np.ndarray, noise: np.ndarray) -> Structure:
    """From a training set's labels y (N,) and ground truth: coef (N, P, k, 2) of every
    view in every patch (γ = 0: at most one per patch), noise (N, P, d)."""
    D = cfg.data
    N, P, k, _ = coef.shape
    flat = np.abs(coef).reshape(N, P, 2 * k)
    arg = flat.argmax(-1)
    z = np.take_along_axis(coef.reshape(N, P, 2 * k), arg[..., None], -1)[..., 0]
    has = z != 0
    feature_patch = has  # the sampler's noise std follows the patch's feature (data.py)
    s2 = np.where(feature_patch, D.sigma_p**2, D.sigma_n**2)
    nu2 = (np.asarray(noise, np.float64) ** 2).sum(-1)
    owner = np.where(has, arg // 2, -1)
    return Structure(
        y=np.asarray(y), owner=owner, view=np.where(has, arg % 2, 0),
        z=np.where(has, z, 0.0), s2=s2, nu2=nu2, other=others(y, owner),
    )  # fmt: skip


def others(y: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """(point, patch) of every patch that carries another class's view (F, 2): the only
    patches where another class's neurons see more than their background, so the only
    ones whose moments :func:`logits` computes (about 45% of the demo's patches)."""
    return np.argwhere((owner >= 0) & (owner != np.asarray(y)[:, None]))


def actual_init(W0: np.ndarray, V: np.ndarray, noise: np.ndarray, y: np.ndarray) -> Init:
    """A run's init in reduced coordinates: W0 (S, k, m, d), V (k, 2, d), noise (N, P, d)."""
    W0 = np.asarray(W0, np.float64)
    V = np.asarray(V, np.float64)
    A = np.einsum("skmd,kld->skml", W0, V)
    allv = np.einsum("skmd,jld->skmjl", W0, V)
    U = (W0**2).sum(-1) - (allv**2).sum((-1, -2))
    B = np.einsum("snmd,npd->snmp", W0[:, y], np.asarray(noise, np.float64))
    return Init(A, B, U)


def law_init(key: jax.Array, cfg: Config, st: Structure, seeds: int, K: int | None = None) -> Init:
    """An init drawn from the init law: w ~ N(0, σ_0² I_d), so A ~ N(0, σ_0²), B ~ N(0,
    σ_0²|ξ|²) independently (the views and noise vectors are orthogonal up to the noise's
    own overlaps), and U = σ_0²(d − 2k) (its mean; its spread is O(1/√d))."""
    D, M = cfg.data, cfg.model
    ka, kb = jax.random.split(key)
    k, m = (D.k if K is None else K), M.m
    N, P = st.z.shape
    A = M.sigma_0 * np.asarray(jax.random.normal(ka, (seeds, k, m, 2)), np.float64)
    B = M.sigma_0 * np.asarray(jax.random.normal(kb, (seeds, N, m, P)), np.float64)
    B = B * np.sqrt(np.asarray(st.nu2))[None, :, None, :]
    U = np.full((seeds, k, m), M.sigma_0**2 * (D.d - 2 * D.k))
    return Init(A, B, U)


# --- the smoothed ReLU averaged over a Gaussian jitter ---------------------------------------


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def expected_relu(
    h: Float[Array, "*s"], tau2: Float[Array, "*s"], q: int, varrho: float
) -> tuple[Float[Array, "*s"], Float[Array, "*s"], Float[Array, "*s"]]:
    """(E σ(x), E σ'(x), E σ''(x)) for x ~ N(h, τ²), σ the smoothed ReLU (exact: truncated
    moments: :func:`_moments`). Its derivative is read off these moments
    (:func:`_expected_relu_jvp`)."""
    return _moments(h, tau2, q, varrho)


@expected_relu.defjvp
def _expected_relu_jvp(q: int, varrho: float, primals, tangents):
    """d/dh E σ(h + ε) = E σ'(h + ε), and d/dτ² E σ(h + ε) = ½ E σ''(h + ε) (the heat
    equation; σ is C¹, so σ'' has jumps but no point masses): E σ's tangent, the only one
    the flow's gradient uses, from moments already computed. Differentiating the moment
    recursion and Φ instead cost as much again as the moments themselves. E σ' and E σ''
    keep their autodiff tangents (the flow never differentiates them: its jitter and
    curvature are held fixed), so the function stays exact under any derivative."""
    dh, dtau2 = tangents
    out, dout = jax.jvp(lambda h, t: _moments(h, t, q, varrho), primals, tangents)
    _, d_sigma, d2_sigma = out
    return out, (d_sigma * dh + 0.5 * d2_sigma * dtau2, dout[1], dout[2])


def _moments(
    h: Float[Array, "*s"], tau2: Float[Array, "*s"], q: int, varrho: float
) -> tuple[Float[Array, "*s"], Float[Array, "*s"], Float[Array, "*s"]]:
    """:func:`expected_relu`'s values, in closed form.

    With M_j = E[x^j 1{0 < x < ϱ}]: E σ' = M_{q−1}/ϱ^{q−1} + P(x > ϱ),
    E σ = M_q/(qϱ^{q−1}) + E[x 1{x > ϱ}] − (1 − 1/q)ϱ P(x > ϱ) and
    E σ'' = (q − 1) M_{q−2}/ϱ^{q−1}. The M_j follow from
    integration by parts, M_j = h M_{j−1} + (j−1)τ² M_{j−2} + τ(0^{j−1}φ(α) − ϱ^{j−1}φ(β)),
    α = −h/τ, β = (ϱ − h)/τ, φ the standard normal density. τ → 0 gives σ(h), σ'(h)."""
    tau = jnp.sqrt(jnp.maximum(tau2, 1e-300))
    a, b = -h / tau, (varrho - h) / tau
    pa, pb = _phi(a), _phi(b)
    Fa, Fb = _ndtr(a), _ndtr(b)
    M = [Fb - Fa, h * (Fb - Fa) + tau * (pa - pb)]
    for j in range(2, q + 1):
        M.append(h * M[j - 1] + (j - 1) * tau2 * M[j - 2] - tau * varrho ** (j - 1) * pb)
    above = 1.0 - Fb
    x_above = h * above + tau * pb
    d_sigma = M[q - 1] / varrho ** (q - 1) + above
    sigma = M[q] / (q * varrho ** (q - 1)) + x_above - (1 - 1 / q) * varrho * above
    d2_sigma = (q - 1) * M[q - 2] / varrho ** (q - 1)
    return sigma, d_sigma, d2_sigma


_SQRT_HALF = math.sqrt(0.5)


def _ndtr(x: jax.Array) -> jax.Array:
    """Φ(x) = erfc(−x/√2)/2. jax.scipy's ndtr selects between an erf and two erfc
    branches and so evaluates both functions on every element; one erfc is the same
    function to rounding in float64 (6.6·10⁻¹⁶ relative on [−38, 38]) and 3–6× cheaper
    on the reduced flow's patch arrays, where Φ dominated the moment calls (race.md §5)."""
    return 0.5 * jax.lax.erfc(x * -_SQRT_HALF)


def relu_variance(tau2: jax.Array, q: int, varrho: float) -> jax.Array:
    """Var σ(x) for x ~ N(0, τ²): the spread of a background patch's contribution, which
    the reduced logits replace by its mean (:func:`expected_relu`). σ² is x^{2q}/(qϱ^{q−1})²
    on (0, ϱ) and (x − (1 − 1/q)ϱ)² above, so E σ² needs the truncated moments to 2q."""
    tau = jnp.sqrt(jnp.maximum(tau2, 1e-300))
    b = varrho / tau
    pb, Fb = _phi(b), _ndtr(b)
    M = [Fb - 0.5, tau * (_phi(0.0) - pb)]
    for j in range(2, 2 * q + 1):
        M.append((j - 1) * tau2 * M[j - 2] - tau * varrho ** (j - 1) * pb)
    J0 = 1.0 - Fb
    J1 = tau * pb
    J2 = tau2 * J0 + tau * varrho * pb
    c = (1 - 1 / q) * varrho
    second = M[2 * q] / (q * varrho ** (q - 1)) ** 2 + J2 - 2 * c * J1 + c * c * J0
    mean = M[q] / (q * varrho ** (q - 1)) + J1 - c * J0
    return jnp.maximum(second - mean**2, 0.0)


def _phi(x: jax.Array) -> jax.Array:
    return jnp.exp(-0.5 * jnp.square(x)) / math.sqrt(2 * math.pi)


# --- the reduced loss and its flow --------------------------------------------------------------


def _pick(A: jax.Array, view: jax.Array) -> jax.Array:
    """A[..., m, 2] at each patch's view: (..., m, 2) with view (..., P) -> (..., m, P)."""
    return jnp.where(view[..., None, :] == 0, A[..., 0][..., None], A[..., 1][..., None])


def logits(
    A: Float[Array, "k m 2"], B: Float[Array, "N m P"], R: Float[Array, "k m"], init: Init,
    st: Structure, q: int, varrho: float,
) -> tuple[Float[Array, "N k"], dict[str, jax.Array]]:  # fmt: skip
    """Every training point's k logits in the reduced coordinates (jitter averaged), and
    what the collective term needs: E σ'' of every patch for every class's neurons (in
    pieces) and each neuron's |noise component|² U. The jitter variances are held fixed
    under differentiation (stop_gradient): the flow is −∂L/∂(A, B) at fixed jitter."""
    k = A.shape[0]
    y, owner, z, s2 = st.y, st.owner, st.z, st.s2
    sg = jax.lax.stop_gradient
    growth = (jnp.square(B) - jnp.square(init.B)) / st.nu2[:, None, :]  # (N, m, P)
    G = jax.ops.segment_sum(growth.sum(-1), y, num_segments=k)  # (k, m): memorised, per class
    U = sg(R + G)
    # Own class: own-view patches and the tracked noise alignments; jitter is what
    # memorising the class's *other* points added along this patch's noise.
    own = (owner == y[:, None])[:, None, :]
    h_own = jnp.where(own, z[:, None, :] * _pick(A[y], st.view), 0.0) + B
    tau_own = s2[:, None, :] * (R[y][:, :, None] + jnp.maximum(G[y][:, :, None] - growth, 0.0))
    E_own = expected_relu(h_own, sg(tau_own), q, varrho)
    # Other classes: the background of every patch (their neurons' noise components,
    # random against this point's noise), then the noisy features' own contributions.
    feat = owner >= 0
    sp, sn = s2_of(st, True), s2_of(st, False)
    bg_p = expected_relu(jnp.zeros_like(U), sp * U, q, varrho)  # (k, m) a feature patch's
    bg_n = expected_relu(jnp.zeros_like(U), sn * U, q, varrho)  # a noise-only patch's
    n_feat = feat.sum(1).astype(A.dtype)
    n_noise = owner.shape[1] - n_feat
    F = n_feat[:, None] * bg_p[0].sum(1) + n_noise[:, None] * bg_n[0].sum(1)
    n_o, p_o = st.other[:, 0], st.other[:, 1]  # the patches carrying another class's view
    o, s2_o, view_o = owner[n_o, p_o], s2[n_o, p_o], st.view[n_o, p_o]
    h_o = z[n_o, p_o][:, None] * jnp.where(view_o[:, None] == 0, A[o][..., 0], A[o][..., 1])
    E_o = expected_relu(h_o, s2_o[:, None] * U[o], q, varrho)
    F = F.at[n_o, o].add((E_o[0] - bg_p[0][o]).sum(-1))
    F_bg = F
    F = F.at[jnp.arange(y.shape[0]), y].set(E_own[0].sum((1, 2)))
    # Σ_p s²_{n,p} E σ''(pre-activation of neuron (j, r) on patch p of point n): (N, k, m)
    curv = n_feat[:, None, None] * sp * bg_p[2] + n_noise[:, None, None] * sn * bg_n[2]
    curv = curv.at[n_o, o].add(s2_o[:, None] * (E_o[2] - bg_p[2][o]))
    own_curv = (s2[:, None, :] * E_own[2]).sum(-1)  # (N, m)
    curv = curv.at[jnp.arange(y.shape[0]), y].set(own_curv)
    # The spread of each other class's background on each point, (N, k): what the means
    # above leave out, and what a margin must beat before a point counts as fitted.
    var = (n_feat[:, None] * relu_variance(sp * U, q, varrho).sum(1)
           + n_noise[:, None] * relu_variance(sn * U, q, varrho).sum(1))  # fmt: skip
    return F, {"U": U, "curv": sg(curv), "sd": sg(jnp.sqrt(var)), **_absent(F_bg, var, st)}


def _absent(F_bg: jax.Array, var: jax.Array, st: Structure) -> dict[str, jax.Array]:
    """The task's classes a population does not simulate (``st.absent`` of them): each
    meets a point only through its background, so together they add absent·E e^{F_bg} to
    the softmax's denominator (a logit ``absent_logit``), and the largest of them lies
    near mean + sd·√(2 ln absent) (``absent_rival``, the Gaussian extreme)."""
    K = F_bg.shape[1]
    mean_exp = jax.nn.logsumexp(F_bg, axis=1) - math.log(K)
    many = st.absent >= 2
    sd = jnp.sqrt(var.mean(1))
    return {
        "absent_logit": jnp.where(st.absent > 0, jnp.log(jnp.maximum(st.absent, 1.0)) + mean_exp,
                                  -jnp.inf),
        "absent_rival": jnp.where(many, F_bg.mean(1) + sd * jnp.sqrt(
            2 * jnp.log(jnp.maximum(st.absent, 2.0))), -jnp.inf),
    }  # fmt: skip


def collective(F: jax.Array, aux: dict[str, jax.Array], y: jax.Array) -> jax.Array:
    """κ (k, m): the noise Gram matrix's off-diagonal, averaged. Neuron (j, r)'s growth
    along one noise direction ξ raises its pre-activation on every other patch by
    ⟨ξ̂, ξ'⟩·B/|ξ|, whose gradient feeds back along ξ through ⟨ξ', ξ⟩: to first order
    dB/dt gains κ·B, κ = (1/N) Σ_{n,p} c_{n,j} s²_{n,p} E σ''(pre-activation) (Stein's
    lemma over the nearly orthogonal noise: E⟨ξ̂, ξ'⟩² = s'²). Balanced loss factors
    (Σ_n c_{n,j} = 0 at init) cancel it; once a class's multi-view points are fitted its
    unfitted single-view points' factors are left, and it speeds their memorisation, while
    other classes' points (c = −p_j) pull the neuron's noise component away from theirs.
    The untracked rest of the noise component, of squared norm R, follows the same law:
    dR/dt = 2κR (⟨u, du/dt⟩ = (1/N) Σ c σ'(pre)⟨u, ξ⟩, and E[ε σ'(h + ε)] = s²R E σ'')."""
    K = F.shape[1]
    p = jax.nn.softmax(jnp.concatenate([F, aux["absent_logit"][:, None]], axis=1), axis=1)
    c = jax.nn.one_hot(y, K) - p[:, :K]
    return jnp.einsum("nk,nkm->km", c, aux["curv"]) / F.shape[0]


def s2_of(st: Structure, feature: bool) -> jax.Array:
    """The noise variance per coordinate of a feature patch (σ_p²) or a noise-only one."""
    sel = st.owner >= 0 if feature else st.owner < 0
    return jnp.max(jnp.where(sel, st.s2, 0.0))


def loss_and_margin(params, init, st, q, varrho):
    A, B, R = params
    F, aux = logits(A, B, jax.lax.stop_gradient(R), init, st, q, varrho)
    own = jax.nn.one_hot(st.y, F.shape[1], dtype=bool)
    everyone = jnp.concatenate([F, aux["absent_logit"][:, None]], axis=1)
    ce = jax.nn.logsumexp(everyone, 1) - jnp.where(own, F, 0.0).sum(1)
    # Fitted: the own logit beats every other class's mean by that class's spread (the
    # reduced logits are means; at init they differ by less than their spread, and a
    # margin of means there would "fit" points a real network classifies at chance).
    rival = jnp.maximum(jnp.where(own, -jnp.inf, F + aux["sd"]).max(1), aux["absent_rival"])
    margin = jnp.where(own, F, 0.0).sum(1) - rival
    return ce.mean(), (margin, F, aux)


def velocity(params, init, st, q, varrho):
    """(dA/dt, dB/dt, dR/dt): the reduced gradient flow plus the collective term κ
    (:func:`collective`)."""
    loss = lambda p: loss_and_margin(p, init, st, q, varrho)
    grad, (_, F, aux) = jax.grad(loss, has_aux=True)(params)
    kappa = collective(F, aux, st.y)
    _, B, R = params
    return -grad[0], -st.nu2[:, None, :] * grad[1] + kappa[st.y][:, :, None] * B, 2 * kappa * R


class Solved(NamedTuple):
    """One model's reduced flow (leading seed axis once vmapped)."""

    A: jax.Array  # (k, m, 2) at the stop
    stop_step: jax.Array  # GD-equivalent step t/η of the stop (T: never fitted)
    lam: jax.Array  # (L, k, 2) Λ = max_r A⁺ at the recorded steps (frozen past the stop)
    margin: jax.Array | None  # (L, N) every point's fitting margin at the recorded steps
    # (only with ``margins``: each is a forward pass over every point)
    fitted: jax.Array  # bool
    ok: jax.Array  # bool: the solver succeeded
    steps: jax.Array  # solver steps taken


@functools.partial(
    jax.jit, static_argnames=("q", "varrho", "T", "n_log", "rtol", "solver", "stop", "margins")
)
def solve(inits: Init, st: Structure, eta: jax.Array, *, q: int, varrho: float, T: int,
          n_log: int, rtol: float, solver: str = "heun", stop: bool = True,
          margins: bool = False) -> Solved:  # fmt: skip
    """Every seed's reduced flow (inits with a leading seed axis), one seed after another
    (:func:`seedwise`): each seed its own adaptive steps and, with ``stop``, its own stop
    when it fits (else to T·η). With ``margins`` every point's margin is recorded too
    (:attr:`Solved.margin`; no prediction reads it)."""
    one = functools.partial(_solve, q=q, varrho=varrho, T=T, n_log=n_log, rtol=rtol,
                            solver=solver, stop=stop, margins=margins)  # fmt: skip
    return seedwise(lambda init: one(init, st, eta), inits)


def seedwise(fn: Callable, xs: Any) -> Any:
    """``fn`` over the leading (seed) axis of ``xs``, one seed at a time (``lax.map``)
    rather than vmapped. Under vmap every seed's solve runs until the slowest seed's has
    stopped, and each step's patch arrays, gathers and scatters carry all seeds at once;
    one at a time, a seed stops when it is done and its arrays stay in cache. Measured at
    the demo's 16 seeds (docs/race.md §5, old and new interleaved in one process): the
    field 189 → 87 ms for all seeds, the solve 1.3–1.5× faster (1.2× on a k = 100
    population's 2 seeds), the same numbers to rounding (7·10⁻¹² relative). Whole
    ``mvsim race-model`` processes back to back showed no gain (race.md §5, not explained)."""
    return jax.lax.map(fn, xs)


def flow_parts(init: Init, st: Structure, *, q, varrho, rtol) -> tuple[Callable, Callable, Any]:
    """The reduced flow's vector field, every point's margin (y -> (N,)) and its step-size
    controller, shared by :func:`_solve` and the population's segments
    (:func:`mvsim.race_asymptotics.integrate`)."""
    import diffrax as dfx

    field = lambda t, y, args: velocity(y, init, st, q, varrho)
    margin = lambda y: loss_and_margin(y, init, st, q, varrho)[1][0]  # (N,)
    scale = jnp.sqrt(jnp.mean(jnp.square(init.A)))
    # The max norm: an RMS over the N·m·P noise alignments would drown the k·m·2 view
    # alignments, whose escape is the fastest thing in the flow (the same choice as the
    # full flow's, mvsim.flow).
    norm = lambda e: jnp.max(jnp.stack([jnp.max(jnp.abs(a)) for a in jax.tree.leaves(e)]))
    ctrl = dfx.PIDController(rtol=rtol, atol=1e-3 * scale, pcoeff=0.3, icoeff=0.4, norm=norm)
    return field, margin, ctrl


def _solve(init: Init, st: Structure, eta, *, q, varrho, T, n_log, rtol, solver, stop,
           margins=False) -> Solved:  # fmt: skip
    import diffrax as dfx

    from mvsim.flow import _StopBisection, cacheable_checks
    from mvsim.train import log_steps

    ts = jnp.asarray(log_steps(T, n_log), jnp.float64) * eta
    field, margin, ctrl = flow_parts(init, st, q=q, varrho=varrho, rtol=rtol)
    event = None
    if stop:
        cond = lambda t, y, args, **kw: -margin(y).min()
        event = dfx.Event(cond, _StopBisection(rtol=1e-6, atol=1e-3 * eta, flip=True))
    record = lambda t, y, a: (y[0], margin(y) if margins else None)
    save = dfx.SaveAt(subs=[dfx.SubSaveAt(ts=ts, fn=record), dfx.SubSaveAt(t1=True)])
    method = {"tsit5": dfx.Tsit5(), "heun": dfx.Heun()}[solver]
    # η is traced, so diffrax's checks on the saved times become runtime checks; traced
    # without their host callback (flow.cacheable_checks), as the full flow's are. (With
    # jax 0.10.2 the program entered the persistent cache without this too: race.md §5.)
    with cacheable_checks():
        sol = dfx.diffeqsolve(dfx.ODETerm(field), method, 0.0, T * eta, eta,
                              (init.A, init.B, init.U), stepsize_controller=ctrl, event=event,
                              saveat=save, max_steps=200_000, throw=False)  # fmt: skip
    t_end = sol.ts[1][0]
    A_end = sol.ys[1][0][0]
    A_hist, m_hist = sol.ys[0]
    live = (ts <= t_end) & jnp.isfinite(A_hist).all((1, 2, 3))  # past the stop: frozen at it
    A_hist = jnp.where(live[:, None, None, None], A_hist, A_end[None])
    lam = jnp.maximum(A_hist.max(2), 0.0)
    fitted = sol.result == dfx.RESULTS.event_occurred
    ok = fitted | (sol.result == dfx.RESULTS.successful)
    if margins:
        m_hist = jnp.where(live[:, None], m_hist, jnp.inf)
    return Solved(A_end, t_end / eta, lam, m_hist, fitted, ok, sol.stats["num_steps"])


# --- predictions ------------------------------------------------------------------------------

RTOL = 0.3
"""Relative tolerance of the reduced flow's Tsit5 steps (the model is cheap: it is
integrated accurately, so its misses are the model's, not the integrator's)."""


def predict(cfg: Config, *, law: bool = False, seed: int = 0, rtol: float = RTOL,
            solver: str = "heun") -> dict[str, Any]:  # fmt: skip
    """The reduced model's race for ``cfg``'s seeds: the training set is the one ``mvsim
    verify`` draws (its data stream); the inits are the full run's own (its init stream)
    or, with ``law``, fresh draws from the init law (key ``seed``).

    Returns per seed and class the learned views (S, k, 2), Λ history (S, L, k, 2) at the
    recorded steps, the init alignments (S, k, 2) (max_r A⁰), stop steps and whether each
    seed fitted, and the summary: one/two/no-view fractions, race curve and r₅₀
    (:func:`summary`)."""
    import time

    from mvsim import data, learners
    from mvsim.train import init_seeds
    from mvsim.verify import stream

    check(cfg)
    D, M = cfg.data, cfg.model
    t0 = time.perf_counter()
    V = data.features(stream(cfg, "features"), D.d, D.k)
    ts, truth = data.training_set(stream(cfg, "data"), D, V, ground_truth=True)
    y, noise = np.asarray(ts.y), np.asarray(truth.noise)
    if not law:
        W0 = init_seeds(learners.network(M, D.k, D.d, D.P), stream(cfg, "init"), cfg.verify.seeds)
    with jax.enable_x64(True):
        st = jax.tree.map(jnp.asarray, structure(cfg, y, np.asarray(truth.coef), noise))
        if law:
            init = law_init(jax.random.key(seed), cfg, st, cfg.verify.seeds)
        else:
            init = actual_init(np.asarray(W0), np.asarray(V), noise, y)
        init = jax.tree.map(jnp.asarray, init)
        out = solve(init, st, jnp.asarray(cfg.train.eta), q=M.q, varrho=M.varrho, T=cfg.train.T,
                    n_log=cfg.train.n_log, rtol=rtol, solver=solver)  # fmt: skip
        out = jax.tree.map(np.asarray, out)
    if not out.ok.all():
        s = int(np.argmin(out.ok))
        raise FloatingPointError(f"the reduced flow of seed {s} failed (NaN or max steps)")
    from mvsim.train import log_steps

    lam_end = np.maximum(out.A.max(2), 0.0)
    views = lam_end >= cfg.verify.view_threshold * M.varrho
    res = {
        "init": "law" if law else "actual", "law_seed": seed if law else None,
        "views": views, "lam": out.lam, "steps": log_steps(cfg.train.T, cfg.train.n_log),
        "init_alignment": np.asarray(init.A).max(2), "stop_step": out.stop_step,
        "fitted": out.fitted, "seconds": time.perf_counter() - t0, "solver_steps": out.steps,
    }  # fmt: skip
    res["summary"] = summary(views, res["init_alignment"], out.fitted, M.m)
    return res


def summary(views: np.ndarray, init_alignment: np.ndarray, fitted: np.ndarray, m: int) -> dict:
    """One/two/no-view fractions, race curve and r₅₀ over the fitted seeds, as the race map
    reads the full runs (:func:`mvsim.experiments.k_scaling.race`)."""
    from mvsim.experiments.k_scaling import race, view_fractions

    fit = np.asarray(fitted, bool)
    v = np.asarray(views, bool)[fit]
    out: dict[str, Any] = {"seeds": int(fit.size), "seeds_fitted": int(fit.sum())}
    if not fit.any():
        return out
    out.update(view_fractions(v))
    out.update(race(np.asarray(init_alignment)[fit], v.sum(-1) == 2, m))
    return out


def report(cfg: Config, res: dict[str, Any]) -> dict[str, Any]:
    """What ``mvsim race-model --json`` prints: the prediction, the init draws it used and
    the seconds it took (JSON-ready)."""
    s = res["summary"]
    pick = lambda key: s.get(key)
    return {
        "preset": cfg.preset, "config": cfg.to_dict(),
        "init": res["init"],
        "init_seed": cfg.verify.seed if res["init"] == "actual" else res["law_seed"],
        "seeds": s["seeds"], "seeds_fitted": s["seeds_fitted"],
        "two_view_fraction": pick("frac_two_view"), "two_view_ci": [pick("frac_two_view_lo"),
                                                                  pick("frac_two_view_hi")],
        "one_view_fraction": pick("frac_one_view"), "no_view_fraction": pick("frac_no_view"),
        "r50": pick("r50"), "r50_ci": [pick("r50_lo"), pick("r50_hi")],
        "race_curve": pick("race_curve"),
        "init_ratio": np.round(_ratios(res["init_alignment"]), 5).tolist(),
        "views_learned": np.asarray(res["views"]).sum(-1).tolist(),
        "stop_step": np.round(res["stop_step"], 1).tolist(), "fitted": res["fitted"].tolist(),
        "seconds": round(res["seconds"], 2),
    }  # fmt: skip


def _ratios(init_alignment: np.ndarray) -> np.ndarray:
    from mvsim.mechanism import race_ratio

    return race_ratio(init_alignment)


def text(rep: dict[str, Any]) -> str:
    """The terminal form of :func:`report`."""
    from mvsim.experiments import fmt_ci

    seed = rep["init_seed"]
    init = f"the full run's own inits (verify's init stream, seed {seed})"
    if rep["init"] != "actual":
        init = f"fresh draws from the init law (key {seed})"
    lines = [
        f"mvsim race-model — preset '{rep['preset']}', {rep['seeds']} seeds × "
        f"{rep['config']['data']['k']} classes; inits: {init}",
        f"seeds that fitted their training set: {rep['seeds_fitted']}/{rep['seeds']}",
    ]
    if rep["two_view_fraction"] is None:
        return "\n".join([*lines, "no seed fitted within T: no race statistics"])
    lines += [
        f"two-view fraction  {fmt_ci(rep['two_view_fraction'], *rep['two_view_ci'])}"
        f"   (one view {rep['one_view_fraction']:.3f}, no view {rep['no_view_fraction']:.3f})",
        f"r50                {fmt_ci(rep['r50'], *rep['r50_ci'], 3)}",
        "race curve (initial ratio r = Λ_loser/Λ_winner: classes, two-view fraction):",
    ]
    for c in rep["race_curve"]:
        frac = "—" if not c["classes"] else f"{c['frac_two']:.2f}"
        lines.append(f"  [{c['lo']:.2f}, {c['hi']:.2f}{']' if c['hi'] >= 1 else ')'}  "
                     f"{c['classes']:4d}  {frac}")  # fmt: skip
    lines.append(f"seconds: {rep['seconds']:.1f} (no network trained)")
    return "\n".join(lines)
