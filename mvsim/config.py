"""Configs: the frozen, validated dataclasses, and parsing of field-by-field overrides.

Every number that the paper leaves asymptotic in k ("poly(k)", "1/polylog(k)",
"can be arbitrary") is a named field here with a documented default, never a constant
buried in the code. Field names follow the paper's symbols (see
``../shared/paper-notes.md`` §1.5) so that a reader can map them one to one, and they
are unique across sections, so ``--set k=20`` needs no section prefix.

Configs are frozen dataclasses, validated on construction (an invalid value raises
:class:`ConfigError` naming the field and its allowed range before any compute), hashable
(so they can be static arguments of ``jax.jit``) and serialisable to and from JSON.

The presets (the rules from a user's overrides to a full config) are
:mod:`mvsim.presets`; :func:`make_config` is re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from frozendict import frozendict

Range = tuple[float, float]


class ConfigError(ValueError):
    """An invalid config value. The message names the field and the allowed range.

    ``involves`` lists the other fields a cross-field rule reads (d ≥ 2k involves k): when
    the named field was derived by a preset, :func:`make_config` blames the one of them
    the user set instead, so an error never names a field the user did not touch.
    """

    def __init__(
        self, field_name: str, value: Any, allowed: str, *, involves: tuple[str, ...] = ()
    ) -> None:
        self.field = field_name
        self.value = value
        self.allowed = allowed
        self.involves = involves
        super().__init__(f"config field '{field_name}' = {value!r} is invalid: {allowed}")


# --- validation helpers ---------------------------------------------------------------


def _int(
    name: str, v: Any, lo: int, hi: int | None = None, *, involves: tuple[str, ...] = ()
) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(name, v, "must be an integer")
    if v < lo or (hi is not None and v > hi):
        bounds = f"[{lo}, {'∞)' if hi is None else f'{hi}]'}"
        raise ConfigError(name, v, f"must be in {bounds}", involves=involves)


def _real(
    name: str,
    v: Any,
    lo: float,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    involves: tuple[str, ...] = (),
) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ConfigError(name, v, "must be a finite real number")
    bad_lo = v <= lo if lo_open else v < lo
    bad_hi = v >= hi if hi_open else v > hi
    if bad_lo or bad_hi:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open or hi == math.inf else "]"
        raise ConfigError(name, v, f"must be in {lb}{lo}, {hi}{rb}", involves=involves)


def _range(name: str, v: Any, lo: float = 0.0, hi: float = math.inf) -> None:
    if not (isinstance(v, tuple) and len(v) == 2):
        raise ConfigError(name, v, "must be a pair (lo, hi)")
    a, b = v
    _real(f"{name}[0]", a, lo, hi)
    _real(f"{name}[1]", b, lo, hi)
    if a > b:
        raise ConfigError(name, v, "needs lo <= hi")


def _choice(name: str, v: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if v not in allowed:
        raise ConfigError(name, v, f"must be one of {allowed}")


# --- sections ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """Definition 3.1 of the paper: the multi-view / single-view distribution.

    Sizes: an input X has ``P`` patches in R^``d``; class j in [k] has two orthonormal
    views v_{j,1}, v_{j,2}. z-sum ranges are the allowed values of Σ_{p∈P_v(X)} z_p, drawn
    uniformly inside the range (the paper lets them be arbitrary inside it).
    """

    k: int = 10
    """Number of classes. The paper: sufficiently large; all statements asymptotic in k."""
    d: int = 200
    """Patch dimension. The paper: poly(k). Must be ≥ 2k (orthonormal views)."""
    P: int = 16
    """Patches per input. The paper: k² (moderate confidence)."""
    C_p: int = 1
    """Patches carrying each present feature (disjoint across features)."""
    s: float = 4.0
    """Noisy-feature rate: each other-class view is present with probability s/k."""
    max_noisy: int | None = 14
    """Cap on noisy features per sample (None = 2(k−1), i.e. no cap). A finite P forces
    one: when more are drawn, a uniformly random subset of this size is kept."""
    mu: float = 1 / 31
    """Single-view fraction μ (D_s with prob. μ, D_m with prob. 1−μ)."""
    N: int = 620
    """Training-set size."""
    train_composition: Literal["stratified", "iid"] = "stratified"
    """'iid': N i.i.d. draws from the mixture (the paper). 'stratified': exactly
    round(μN) single-view points, balanced over (class, strong view), and balanced classes
    for the multi-view rest: removes the finite-N chance that a (class, view) has no
    single-view point at all."""
    own_z: Range = (1.0, 1.0)
    """Σz of a sample's own views (both in D_m; the strong view in D_s). Paper: [1, O(1)]."""
    noisy_z_multi: Range = (0.2, 0.4)
    """Σz of each noisy feature in D_m. Paper: [Ω(1), 0.4]."""
    rho: Range = (0.02, 0.04)
    """Σz of the weak view in D_s. Paper: [ρ, O(ρ)] with ρ = k^−0.01."""
    Gamma: Range = (0.05, 0.1)
    """Σz of each noisy feature in D_s. Paper: [Ω(Γ), Γ], Γ = 1/polylog k; keep ρ < Γ."""
    z_split: Literal["equal", "random"] = "random"
    """How a z-sum is split over a feature's C_p patches: equal parts, or uniform random
    proportions (flat Dirichlet). The paper: arbitrary. Irrelevant when C_p = 1."""
    gamma: float = 0.0
    """Feature noise: every patch gets α_{p,v} ~ U[0, γ] of every view v. Paper: small."""
    sigma_p: float = 0.1 / math.sqrt(200)
    """Gaussian noise std per coordinate on feature patches (norm ≈ σ_p·√d).
    Paper: 1/(√d polylog k)."""
    sigma_n: float = 1.2 / math.sqrt(200)
    """Gaussian noise std per coordinate on noise-only patches. Paper: γk/√d."""
    project_noise: bool = True
    """Project the Gaussian noise off the span of the 2k views: the d → ∞ limit of the
    paper's noise. At CPU-sized d, isotropic noise leaks ≈ σ√d/√d along every view and
    feeds the losing view (feasibility study 2). False gives isotropic noise."""
    family: Literal["multiview", "gaussian"] = "multiview"
    """Data family. 'multiview': Definition 3.1 (everything above). 'gaussian': the paper's
    control without multi-view structure (notes §7.1), a Gaussian mixture with the same
    k, d, P, N shapes: class y has mean a·u_y on every patch (u_y = v_{y,1}, one
    direction per class, present at the same strength in every sample) and isotropic
    covariance σ_n²·I on every patch, independently (``project_noise`` is ignored: the
    covariance must stay full rank). a is set by ``gauss_sep``; the multi-view fields
    (s, μ, ρ, Γ, z ranges) are unused, and every point has single_view = False."""
    gauss_sep: float = 6.0
    """'gaussian' family: separation Δ = ‖M_i − M_j‖/σ_n of any two class means (the mean
    per patch is a = Δ·σ_n/√(2P)). The Bayes error of one pairwise decision is Φ(−Δ/2);
    of the k-class decision 1 − ∫φ(z − Δ/√2)Φ(z)^{k−1}dz (``data.gaussian_bayes_error``,
    0.010 at k = 10). Chosen so that a trained single model's test error is clearly
    nonzero (an ensemble gain cannot be measured at zero error) but far below chance."""

    def __post_init__(self) -> None:
        _int("k", self.k, 2)
        _int("d", self.d, 1)
        if self.d < 2 * self.k:
            msg = f"must be ≥ 2k = {2 * self.k} (orthonormal views)"
            raise ConfigError("d", self.d, msg, involves=("k",))
        _int("C_p", self.C_p, 1)
        _real("s", self.s, 0.0, self.k, involves=("k",))
        if self.max_noisy is not None:
            _int("max_noisy", self.max_noisy, 0, 2 * (self.k - 1), involves=("k",))
        _int("P", self.P, 1)
        need = self.C_p * (2 + self.noisy_cap)
        if self.P < need:
            raise ConfigError(
                "P",
                self.P,
                f"must be ≥ C_p·(2 + max_noisy) = {self.C_p}·(2 + {self.noisy_cap}) = {need} "
                "so every feature gets its own patches (lower max_noisy or raise P)",
                involves=("C_p", "max_noisy", "k"),
            )
        _real("mu", self.mu, 0.0, 1.0)
        _int("N", self.N, 1)
        _choice("train_composition", self.train_composition, ("stratified", "iid"))
        for name in ("own_z", "noisy_z_multi", "rho", "Gamma"):
            _range(name, getattr(self, name))
        _choice("z_split", self.z_split, ("equal", "random"))
        _real("gamma", self.gamma, 0.0)
        _real("sigma_p", self.sigma_p, 0.0)
        _real("sigma_n", self.sigma_n, 0.0)
        if not isinstance(self.project_noise, bool):
            raise ConfigError("project_noise", self.project_noise, "must be true or false")
        _choice("family", self.family, ("multiview", "gaussian"))
        _real("gauss_sep", self.gauss_sep, 0.0, lo_open=True)

    @property
    def noisy_cap(self) -> int:
        """The effective cap on noisy features per sample."""
        return 2 * (self.k - 1) if self.max_noisy is None else self.max_noisy


BUILTIN_LEARNERS = ("patch_cnn", "vit", "mlp")
"""The learners mvsim ships (:mod:`mvsim.learners`); any other ``learner`` is an import path."""

# 'package.module:Class': dotted identifiers, a colon, an attribute name.
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# Arguments mvsim passes itself (the learner convention, :mod:`mvsim.learners`).
_RESERVED_KWARGS = ("d", "k", "rngs")


def _frozen(name: str, v: Any) -> Any:
    """A JSON-like value made hashable (configs are static arguments of jit): mappings
    become frozendicts, lists tuples; anything but JSON scalars is a ConfigError."""
    if isinstance(v, Mapping):
        return frozendict({str(key): _frozen(name, val) for key, val in v.items()})
    if isinstance(v, list | tuple):
        return tuple(_frozen(name, a) for a in v)
    if v is None or isinstance(v, bool | int | float | str):
        return v
    raise ConfigError(name, v, "values must be JSON numbers, strings, booleans, lists or objects")


@dataclass(frozen=True)
class ModelConfig:
    """The learner. The paper's (the default, ``learner = 'patch_cnn'``):
    F_i(X) = Σ_r Σ_p ReLU~(⟨w_{i,r}, x_p⟩), second layer fixed to 1; m, q, ϱ and σ_0 are
    its fields. Other learners are flax.nnx modules (:mod:`mvsim.learners`)."""

    m: int = 4
    """Neurons per class. Paper: m ∈ [polylog k, k]."""
    q: int = 4
    """Power of the smoothed ReLU's polynomial part. Paper: constant q ≥ 3."""
    varrho: float = 1.0
    """Threshold ϱ where the smoothed ReLU turns linear. Paper: 1/polylog k."""
    sigma_0: float = 0.033
    """Init std of every weight. Paper: σ_0^{q−2} = 1/k, far too large at small k (no
    lottery): the finite-k default keeps σ_0/ϱ ≈ 0.03."""
    learner: str = "patch_cnn"
    """The model trained on the data: 'patch_cnn' (the paper's), 'vit' (a ViT-tiny over
    the P patches), 'mlp' (one hidden layer on the flattened input), or a user's
    flax.nnx module as an import path 'package.module:Class', built once per seed as
    Class(d=d, k=k, rngs=nnx.Rngs(key), **learner_kwargs) and mapping x (n, P, d) to
    logits (n, k) (:mod:`mvsim.learners`). Which views a non-patch-CNN learner learned
    is read from its behaviour (``view_accuracy``), not from its weights."""
    learner_kwargs: frozendict = frozendict()
    """Keyword arguments of a user's module: a JSON object (``--set
    learner_kwargs='{"width": 64}'``, or a ``[model.learner_kwargs]`` table of a TOML
    config file). Empty for the built-in learners, whose settings are fields."""
    vit_dim: int = 32
    """'vit': width of the patch embedding and of every attention block."""
    vit_depth: int = 1
    """'vit': transformer blocks (pre-LayerNorm attention + MLP of width 2·vit_dim)."""
    vit_heads: int = 2
    """'vit': attention heads; must divide vit_dim."""
    vit_kd_T: int = 1000
    """'vit': cap on its distilled students' budget, which is min(kd_T, vit_kd_T) GD-equivalent
    steps. The ViT's gradient flow is stiff: at the demo its Hinton student's flow steps
    are ≈ η/50, so 20,000 steps cost ≈ 10⁶ gradients (hours per student on 2 CPU cores,
    past flow_max_steps), against 52k at 1,000 (flow time 500 at η = 0.5, 90–150 times
    what its singles take to fit). A student stopped at the cap is reported with its steps
    (docs/learners.md)."""
    mlp_width: int = 64
    """'mlp': hidden units of the one-hidden-layer MLP on the flattened P·d input (64 at
    demo costs about what the patch CNN's k·m neurons do per sample)."""

    def __post_init__(self) -> None:
        _int("m", self.m, 1)
        _int("q", self.q, 1)
        _real("varrho", self.varrho, 0.0, lo_open=True)
        _real("sigma_0", self.sigma_0, 0.0, lo_open=True)
        if not isinstance(self.learner, str) or not (
            self.learner in BUILTIN_LEARNERS or _IMPORT_PATH.match(self.learner)
        ):
            raise ConfigError(
                "learner",
                self.learner,
                f"must be one of {BUILTIN_LEARNERS} or an import path 'package.module:Class'",
            )
        if not isinstance(self.learner_kwargs, Mapping):
            raise ConfigError("learner_kwargs", self.learner_kwargs, "must be a JSON object")
        object.__setattr__(self, "learner_kwargs", _frozen("learner_kwargs", self.learner_kwargs))
        if self.learner_kwargs and self.learner in BUILTIN_LEARNERS:
            raise ConfigError(
                "learner_kwargs",
                dict(self.learner_kwargs),
                f"is for a user's module; the built-in '{self.learner}' is set "
                "by its own fields (vit_*, mlp_width)",
                involves=("learner",),
            )
        taken = sorted(set(self.learner_kwargs) & set(_RESERVED_KWARGS))
        if taken:
            raise ConfigError(
                "learner_kwargs",
                dict(self.learner_kwargs),
                f"must not set {taken}: mvsim passes d, k and rngs itself",
            )
        _int("vit_dim", self.vit_dim, 1)
        _int("vit_depth", self.vit_depth, 1)
        _int("vit_heads", self.vit_heads, 1)
        if self.vit_dim % self.vit_heads:
            raise ConfigError(
                "vit_heads",
                self.vit_heads,
                f"must divide vit_dim = {self.vit_dim}",
                involves=("vit_dim",),
            )
        _int("mlp_width", self.mlp_width, 1)
        _int("vit_kd_T", self.vit_kd_T, 1)


@dataclass(frozen=True)
class TrainConfig:
    """Full-batch training on the softmax cross-entropy: fixed-η gradient descent, or the
    gradient flow it approximates, integrated adaptively (:mod:`mvsim.flow`)."""

    eta: float = 20 / 3
    """Learning rate η. Paper: ≤ 1/poly(k). At finite k GD is already at its flow limit
    with η/k ≈ 0.67ϱ (halving η changed nothing); larger η/k lets a view jump past ϱ.
    Under the flow, η maps GD steps to flow time: step s is time s·η."""
    T: int = 10_000
    """Maximum number of GD steps (the flow: flow time T·η). Paper: poly(k)/η. Must cover
    the slowest class and the memorisation of the last single-view points (at demo:
    2.5k–10k+ steps per seed)."""
    integrator: Literal["flow", "gd"] = "flow"
    """'flow': the gradient flow dW/dt = −∇L with an adaptive solver (diffrax), which
    follows GD's path at ~10× fewer gradient evaluations (docs/training.md,
    docs/benchmarks.md); 'gd': fixed-η GD, the reference the flow is tested against."""
    flow_solver: Literal["heun", "bosh3", "tsit5"] = "heun"
    """Explicit Runge–Kutta solver of the flow. Its tolerance is set per solver by the
    path tests: a higher order at the same nominal rtol is not the same accuracy (Bosh3 at
    rtol 1 changed a seed's views in the prototype)."""
    flow_rtol: float = 1.0
    """Relative tolerance of the flow's step-size control (max norm over the weights).
    Chosen by the path tests (tests/test_flow.py, benchmarks flow): at 1.0 and at 0.5
    the demo's singles learn the views that GD learns from the same inits."""
    flow_atol: float = 1e-3
    """Absolute tolerance of the flow, in units of each model's initial weights' RMS
    (σ_0 for the patch CNN)."""
    flow_max_steps: int = 100_000
    """Solver steps (accepted and rejected) allowed in one model's run; hitting it stops the
    run as diverged."""
    chunk: int = 250
    """GD steps per compiled ``lax.scan`` chunk; early stopping is checked between chunks."""
    stop: Literal["accuracy", "loss", "converged", "none"] = "accuracy"
    """Per-seed early stop: at perfect training accuracy, at training loss < loss_tol, at
    'converged' (the training set fitted and the objective changing by less than
    ``converge_tol`` per e-fold of time: |L − L̄|, L̄ its running mean over log-time,
    :func:`mvsim.flow.converged`), or never (run T steps). A stopped seed's weights are
    frozen."""
    loss_tol: float = 1e-3
    """Loss threshold for ``stop = 'loss'``."""
    converge_tol: float = 1e-3
    """Objective change (nats) per e-fold of time under which ``stop = 'converged'``
    takes a model as at its limit."""
    dtype: Literal["float32", "float64"] = "float32"
    """Floating point precision of data and weights."""
    matmul_precision: Literal["highest", "tensorfloat32", "default"] = "highest"
    """Precision of float32 matmuls on accelerators (``jax.default_matmul_precision``):
    'highest' is full float32, the faithful default; 'tensorfloat32' uses TF32 tensor
    cores on NVIDIA GPUs (10-bit mantissa inputs, faster); 'default' is the backend's own
    choice. The CPU computes full float32 whichever is set."""
    n_log: int = 48
    """Number of log-spaced steps at which loss, accuracy and Λ are recorded."""
    block: int = 0
    """Samples per block in the GD step (0: all N at once). With a block, the forward and
    backward pass run over blocks of the training set in a ``lax.map``, each block's
    activations recomputed in the backward pass (``jax.checkpoint``), so that at a
    memory-bound size one read of a block of X serves every vmapped seed while it is in
    cache. The same function and gradient (up to float summation order) at 1.5× the
    matmul FLOPs; a speed choice only (``benchmarks/``: seed batching)."""

    def __post_init__(self) -> None:
        _real("eta", self.eta, 0.0, lo_open=True)
        _int("T", self.T, 1)
        _choice("integrator", self.integrator, ("flow", "gd"))
        _choice("flow_solver", self.flow_solver, ("heun", "bosh3", "tsit5"))
        _real("flow_rtol", self.flow_rtol, 0.0, lo_open=True)
        _real("flow_atol", self.flow_atol, 0.0, lo_open=True)
        _int("flow_max_steps", self.flow_max_steps, 1)
        _int("chunk", self.chunk, 1)
        _choice("stop", self.stop, ("accuracy", "loss", "converged", "none"))
        _real("loss_tol", self.loss_tol, 0.0)
        _real("converge_tol", self.converge_tol, 0.0, lo_open=True)
        _choice("dtype", self.dtype, ("float32", "float64"))
        _choice("matmul_precision", self.matmul_precision, ("highest", "tensorfloat32", "default"))
        _int("n_log", self.n_log, 2)
        _int("block", self.block, 0)


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation and self-distillation (paper §4–5, notes §4)."""

    kd_objective: Literal["paper", "hinton"] = "paper"
    """'paper': −η∇CE − η′·E[(p^τ_i(F) − p^τ_i(G))^− ∇F_i] (the one-sided update the
    theorems use). 'hinton': α·CE + (1−α)·τ²·KL(softmax(G/τ) ‖ softmax(F/τ))."""
    kd_tau: float = 1 / 3
    """Temperature τ of the paper's update: p^τ = softmax(min(τ²F, 1)/τ) when truncated.
    Recalled as τ = 1/log² k; unconfirmed."""
    kd_hinton_tau: float = 10.0
    """Temperature of the Hinton objective."""
    kd_truncate: bool = True
    """Use the paper's truncated scaled logits min(τ²F, 1)/τ (else F/τ)."""
    kd_eta_ratio: float = 1.0
    """η′/η for the paper's update. Paper: poly(k). Above ~10 the untruncated form diverges."""
    kd_hard_label: bool = True
    """Keep the hard-label cross-entropy term in the paper's update (recalled, unconfirmed)."""
    kd_alpha: float = 0.5
    """Weight α of the hard-label CE in the Hinton objective."""
    kd_T: int | None = None
    """GD steps for distilled students (the flow: flow time kd_T·η): their cap with
    ``kd_stop = 'converged'``, their budget with 'none'. None (the default): the horizon
    (``horizon``, else T), the end of the time the trajectory reading looks at, so that
    students train as far as a verdict reads them and no further. The paper's update has
    no limit to converge to (where a student's truncated p^τ stays below the teacher's,
    F_i is pushed up at a constant rate for ever), so its students run to this cap, and
    an end-point verdict read at a cap says where the cap fell (docs/verdicts.md, "Two
    readings"). A kd_T below the horizon reads the students over [0, kd_T] only."""
    kd_stop: Literal["converged", "none"] = "converged"
    """'converged': a student trains to its limit, until it fits the training set and its
    objective changes by less than ``converge_tol`` per e-fold of time (or kd_T);
    'none': exactly kd_T steps (the paper's statement is about most iterations of a run,
    which a fixed budget samples)."""
    kd_students: int = 3
    """Students per distillation claim. Student j starts from single model j's init, so
    its own lottery is known; its control is taught by single j itself."""
    avg_members: int = 4
    """Networks averaged in one 'training average' model."""
    avg_seeds: int = 2
    """Independently initialised training-average models."""
    avg_eta_mult: float | None = None
    """Learning-rate multiplier of a training-average model (None = avg_members). The mean
    of K outputs hands each member 1/K of the gradient; scaling η by K lets every member
    move as fast as a lone network driven by the joint residual."""

    def __post_init__(self) -> None:
        _choice("kd_objective", self.kd_objective, ("paper", "hinton"))
        _real("kd_tau", self.kd_tau, 0.0, lo_open=True)
        if not isinstance(self.kd_truncate, bool):
            raise ConfigError("kd_truncate", self.kd_truncate, "must be true or false")
        _real("kd_eta_ratio", self.kd_eta_ratio, 0.0)
        if not isinstance(self.kd_hard_label, bool):
            raise ConfigError("kd_hard_label", self.kd_hard_label, "must be true or false")
        _real("kd_alpha", self.kd_alpha, 0.0, 1.0)
        _real("kd_hinton_tau", self.kd_hinton_tau, 0.0, lo_open=True)
        if self.kd_T is not None:
            _int("kd_T", self.kd_T, 1)
        _choice("kd_stop", self.kd_stop, ("converged", "none"))
        _int("kd_students", self.kd_students, 1)
        _int("avg_members", self.avg_members, 1)
        _int("avg_seeds", self.avg_seeds, 1)
        if self.avg_eta_mult is not None:
            _real("avg_eta_mult", self.avg_eta_mult, 0.0, lo_open=True)


@dataclass(frozen=True)
class VerifyConfig:
    """What ``mvsim verify`` trains and how it measures."""

    seeds: int = 10
    """K: independently initialised single models (also the ensemble size). One model is
    enough for ``single`` and ``training_average``; the claims that compare or combine
    singles need two (``verify.MIN_SEEDS``)."""
    n_test_multi: int = 200_000
    """Multi-view test points (a stratum of its own, weight 1−μ). Its errors count
    (1−μ)/μ times in E/μ (30× at μ = 1/31), so resolving < 0.001μ with zero errors
    needs ≈ 150k points there."""
    n_test_single: int = 40_000
    """Single-view test points (weight μ). ≈ 38k gives a ±0.005 95% CI at error 0.5."""
    view_threshold: float = 0.5
    """Patch CNN: a view (i, ℓ) counts as learned when Λ_{i,ℓ} ≥ view_threshold·ϱ at the
    end (the weight-based reading)."""
    view_accuracy: float = 0.9
    """Any learner: a view (i, ℓ) counts as learned *from behaviour* when the model
    classifies at least this fraction of the single-view test points of class i whose
    strong view is ℓ right. A learned view gives ≈ 1; an unlearned one ≈ (1 − s/k)^L
    (the point survives only if none of its noisy features is a learned view of another
    class, L of them: 0.01 at demo), so any threshold well inside the gap separates them
    (``mvsim.mechanism.behavioural_views``). The patch CNN's verdicts use Λ; its report
    says how often the two readings agree."""
    seed: int = 0
    """Master seed, split into named streams (data, init, test) so stages never shift
    each other's randomness."""
    horizon: int | None = None
    """T of the trajectory reading, in GD-equivalent steps: each claim is also read as
    "at its level for ≥ 90% of t ≤ horizon" (Theorems 3–4's wording), and its models'
    test error is recorded over [0, horizon]. None: T, the singles' horizon. It must not
    exceed T, nor an explicit kd_T (or the ViT's vit_kd_T): the models are read where
    they were trained. The history's times up to it do not depend on the caps beyond it."""
    n_curve_multi: int = 8192
    """Multi-view test points on which every model's error is recorded at every history
    time (the first points of the multi-view test set; at most n_test_multi). With 0
    errors its 95% bound is 30·3.7/n_curve_multi ≈ 0.014μ at μ = 1/31: the curve tells a
    model at the single band (≈ 0.5μ) from one at the 0.001μ level's side of the
    self-distillation bound, not < 0.001μ itself, which the end point's full test set
    certifies (docs/verdicts.md)."""
    n_curve_single: int = 4096
    """Single-view test points of the error curves (the first points of the single-view
    test set; at most n_test_single): a 95% CI of about ±0.02 at error 0.5."""

    def __post_init__(self) -> None:
        _int("seeds", self.seeds, 1)
        _int("n_test_multi", self.n_test_multi, 0)
        _int("n_test_single", self.n_test_single, 1)
        _real("view_threshold", self.view_threshold, 0.0, lo_open=True)
        _real("view_accuracy", self.view_accuracy, 0.0, 1.0, lo_open=True)
        _int("seed", self.seed, 0)
        if self.horizon is not None:
            _int("horizon", self.horizon, 1)
        _int("n_curve_multi", self.n_curve_multi, 0)
        _int("n_curve_single", self.n_curve_single, 1)


@dataclass(frozen=True)
class NTKConfig:
    """The NTK / random-feature side (notes §7): the infinite-width kernel of the patch CNN
    and finite-width models linearized at their init, on the same data as ``verify``."""

    ntk_sigma_0: float = 1.0
    """Init std at which the NTK is evaluated and the linearized models are linearized.
    Linearizing at the feature-learning σ_0 ≪ ϱ gives Jacobians ≈ (σ_0/ϱ)^{q−1} and does
    not train (feasibility study 1); σ_0 ≈ ϱ does. Default: ϱ of the demo preset."""
    ntk_m: int = 16
    """Neurons per class of a linearized model (its random-feature count is k·m·d)."""
    ntk_eta: float = 20 / 3
    """GD learning rate of the linearized models (default: the demo preset's η)."""
    ntk_T: int = 1000
    """Maximum GD steps of a linearized model (early stop as ``stop``)."""
    ntk_seeds: int = 4
    """Independently initialised linearized models; their mean is the linearized ensemble."""
    ntk_avg_members: int = 4
    """Linearized networks averaged in one jointly trained 'training average' model."""
    ntk_avg_seeds: int = 2
    """Independently initialised linearized training-average models."""
    ntk_kd_students: int = 2
    """Students per linearized distillation variant; student j starts from linearized
    single j's init."""
    ntk_kd_T: int = 100
    """GD steps of a linearized student (no early stop, as ``kd_T``). A linearized model's
    loss is convex in W and at η = 20/3 fits the demo training set in ~20 steps."""
    ntk_deep_teachers: int = 2
    """Deep single models (verify's first ones: same init stream) whose ensemble teaches the
    'KD from the deep ensemble' students when no teacher logits are passed to ``run_ntk``
    and the Measurements carry no ``single_train_logits``; 0 skips those students."""
    ntk_center_kd: bool = True
    """Measure distillation logits relative to their per-point class mean. A linearized
    model carries a class-independent offset f(W0, x) ≫ 1 that would saturate the paper's
    truncated logits min(τ²F, 1)/τ; CE and Hinton KD are unaffected (shift-invariant)."""
    ntk_n_test_multi: int = 2000
    """Multi-view test points for the linearized and infinite-width rows (the first points
    of verify's test stream)."""
    ntk_n_test_single: int = 2000
    """Single-view test points for the linearized and infinite-width rows."""
    ntk_kernel: Literal["series", "nt"] = "series"
    """Evaluator of the infinite-width kernel in ``kernel_predict``: 'series' (the Hermite
    series of E[σ'σ'] with a bounded tail, fast) or 'nt' (neural-tangents'
    ElementwiseNumerical quadrature, O(deg²) per entry: small inputs only)."""
    ntk_terms: int = 32
    """Hermite terms of the 'series' kernel; the tail beyond them is folded into one
    exact-on-the-diagonal term, with |error| ≤ 2·t(a)t(b)|ρ|^terms per patch pair."""
    ntk_deg: int = 32
    """Gauss–Hermite degree of neural-tangents' ElementwiseNumerical (the 'nt' kernel)."""
    ntk_chunk: int = 128
    """Test inputs per kernel block: the N×N×P×P intermediate is never held whole."""
    ntk_ridge: float = 0.0
    """Ridge added to the kernel matrix's diagonal, relative to its mean diagonal (0 =
    plain infinite-time GD on the MSE, which interpolates)."""

    def __post_init__(self) -> None:
        _real("ntk_sigma_0", self.ntk_sigma_0, 0.0, lo_open=True)
        _int("ntk_m", self.ntk_m, 1)
        _real("ntk_eta", self.ntk_eta, 0.0, lo_open=True)
        _int("ntk_T", self.ntk_T, 1)
        _int("ntk_seeds", self.ntk_seeds, 2)
        _int("ntk_avg_members", self.ntk_avg_members, 1)
        _int("ntk_avg_seeds", self.ntk_avg_seeds, 1)
        _int("ntk_kd_students", self.ntk_kd_students, 1, self.ntk_seeds, involves=("ntk_seeds",))
        _int("ntk_kd_T", self.ntk_kd_T, 1)
        _int("ntk_deep_teachers", self.ntk_deep_teachers, 0)
        if not isinstance(self.ntk_center_kd, bool):
            raise ConfigError("ntk_center_kd", self.ntk_center_kd, "must be true or false")
        _int("ntk_n_test_multi", self.ntk_n_test_multi, 0)
        _int("ntk_n_test_single", self.ntk_n_test_single, 1)
        _choice("ntk_kernel", self.ntk_kernel, ("series", "nt"))
        _int("ntk_terms", self.ntk_terms, 1)
        _int("ntk_deg", self.ntk_deg, 1)
        _int("ntk_chunk", self.ntk_chunk, 1)
        _real("ntk_ridge", self.ntk_ridge, 0.0)


@dataclass(frozen=True)
class ExperimentConfig:
    """The supporting experiments (``mvsim experiment NAME``, :mod:`mvsim.experiments`)."""

    drop_threshold: float = 0.25
    """Neuron dropping: neuron r of class i counts as carrying view ℓ (and is zeroed with
    it) when ⟨w_{i,r}, v_{i,ℓ}⟩ ≥ drop_threshold·ϱ. In units of ϱ: far above the init
    scale (≈ 2σ_0 = 0.07ϱ at demo) and below the learned-view threshold; a neuron left
    below it adds at most ReLU~(0.25ϱ) = 0.001ϱ per patch at q = 4."""
    gauss_gain_ratio: float = 0.2
    """Gaussian control: the ensemble's relative error reduction on Gaussian data counts
    as "far smaller" than on multi-view data when its CI lies below gauss_gain_ratio × the
    lower CI end of the multi-view reduction (a fifth, by default)."""
    exp_n_test_multi: int = 20_000
    """Multi-view test points of the supporting experiments (fewer than verify's: they
    compare models with each other, no < 0.001μ bound needs resolving)."""
    exp_n_test_single: int = 20_000
    """Single-view test points of the supporting experiments (Gaussian family: the two
    test sets are pooled, as they come from the same mixture)."""

    def __post_init__(self) -> None:
        _real("drop_threshold", self.drop_threshold, 0.0, lo_open=True)
        _real("gauss_gain_ratio", self.gauss_gain_ratio, 0.0, 1.0, lo_open=True)
        _int("exp_n_test_multi", self.exp_n_test_multi, 1)
        _int("exp_n_test_single", self.exp_n_test_single, 1)


@dataclass(frozen=True)
class Config:
    """The whole resolved config: one section per concept, unique field names."""

    preset: str = "demo"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    ntk: NTKConfig = field(default_factory=NTKConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    def __post_init__(self) -> None:
        if self.distill.kd_students > self.verify.seeds:
            raise ConfigError(
                "kd_students",
                self.distill.kd_students,
                f"must be ≤ seeds = {self.verify.seeds} (each student reuses a single's init)",
                involves=("seeds",),
            )
        self._check_horizon()
        if self.verify.n_test_multi == 0 and self.data.mu < 1:
            raise ConfigError(
                "n_test_multi",
                0,
                "must be ≥ 1 unless mu = 1 (the multi-view stratum has weight 1−μ)",
                involves=("mu",),
            )

    def _check_horizon(self) -> None:
        """A horizon the models are not trained to is an error: beyond the singles' cap T,
        beyond an explicit students' kd_T, beyond the ViT students' vit_kd_T."""
        h = self.verify.horizon
        if h is None:
            return
        caps = [("T", self.train.T, "the singles' cap")]
        if self.distill.kd_T is not None:
            caps.append(("kd_T", self.distill.kd_T, "the students' cap"))
        if self.model.learner == "vit":
            caps.append(("vit_kd_T", self.model.vit_kd_T, "the ViT students' cap"))
        for name, cap, what in caps:
            if h > cap:
                raise ConfigError(
                    "horizon",
                    h,
                    f"must be ≤ {name} = {cap} ({what}): the trajectory reading needs every "
                    f"model trained to the horizon; lower horizon or raise {name}",
                    involves=(name,),
                )

    def horizon_steps(self) -> int:
        """The horizon of the trajectory reading in GD-equivalent steps: ``horizon``, else
        T."""
        return self.train.T if self.verify.horizon is None else self.verify.horizon

    def to_dict(self) -> dict[str, Any]:
        """Nested ``{"preset": ..., section: {field: value}}`` (tuples stay tuples)."""
        return dataclasses.asdict(self)

    def to_json(self, **kw: Any) -> str:
        """:meth:`to_dict` as a JSON string; ``kw`` goes to :func:`json.dumps`."""
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Config:
        """Inverse of :meth:`to_dict` (nested); unknown keys are errors."""
        kwargs: dict[str, Any] = {}
        for name, sec_cls in _SECTIONS.items():
            if name in d:
                kwargs[name] = _build(sec_cls, d[name])
        unknown = set(d) - set(_SECTIONS) - {"preset"}
        if unknown:
            raise ConfigError(sorted(unknown)[0], d[sorted(unknown)[0]], "unknown config field")
        return cls(preset=d.get("preset", "custom"), **kwargs)

    @classmethod
    def from_json(cls, s: str) -> Config:
        return cls.from_dict(json.loads(s))

    def replace(self, **overrides: Any) -> Config:
        """A copy with flat field overrides (``cfg.replace(k=20, mu=0.1)``), validated."""
        by_section: dict[str, dict[str, Any]] = {}
        for key, value in overrides.items():
            section = FIELD_SECTION.get(key)
            if section is None:
                raise ConfigError(
                    key, value, f"unknown config field; known: {sorted(FIELD_SECTION)}"
                )
            by_section.setdefault(section, {})[key] = value
        new = {
            sec: dataclasses.replace(getattr(self, sec), **vals) for sec, vals in by_section.items()
        }
        return dataclasses.replace(self, **new)

    def flat(self) -> dict[str, Any]:
        """All fields in one flat mapping (names are unique across sections)."""
        out: dict[str, Any] = {}
        for sec in _SECTIONS:
            out.update(dataclasses.asdict(getattr(self, sec)))
        return out


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "distill": DistillConfig,
    "verify": VerifyConfig,
    "ntk": NTKConfig,
    "experiment": ExperimentConfig,
}

FIELD_SECTION: dict[str, str] = {
    f.name: sec for sec, cls in _SECTIONS.items() for f in dataclasses.fields(cls)
}
assert len(FIELD_SECTION) == sum(len(dataclasses.fields(c)) for c in _SECTIONS.values())


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(key, values[key], f"unknown field of {cls.__name__}")
    return cls(**{k: coerce(k, v) for k, v in values.items()})


# --- parsing ------------------------------------------------------------------------


def _field_type(name: str) -> Any:
    cls = _SECTIONS[FIELD_SECTION[name]]
    return typing.get_type_hints(cls)[name]


def coerce(name: str, value: Any) -> Any:
    """Convert a JSON/TOML/CLI value to the declared type of field ``name``."""
    if name not in FIELD_SECTION:
        raise ConfigError(name, value, f"unknown config field; known: {sorted(FIELD_SECTION)}")
    tp = _field_type(name)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(value, str):
        return _parse_str(name, value, tp)
    if tp is frozendict:
        return _frozen(name, value) if isinstance(value, Mapping) else value
    if tp is Range or (origin is tuple):
        if isinstance(value, list | tuple) and len(value) == 2:
            return (_num(name, value[0]), _num(name, value[1]))
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (float(value), float(value))
        raise ConfigError(name, value, "must be a pair lo,hi")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if float in args and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # float | None
    return value


def _num(name: str, v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ConfigError(name, v, "must be a number") from None


def _parse_str(name: str, text: str, tp: Any) -> Any:
    text = text.strip()
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    try:
        if tp is frozendict:  # a JSON object, e.g. --set learner_kwargs='{"width": 64}'
            value = json.loads(text or "{}")
            if not isinstance(value, dict):
                raise ValueError
            return _frozen(name, value)
        if tp is Range or origin is tuple:
            parts = [p for p in text.replace("(", "").replace(")", "").split(",")]
            if len(parts) == 1:
                v = float(parts[0])
                return (v, v)
            if len(parts) != 2:
                raise ValueError
            return (float(parts[0]), float(parts[1]))
        if tp is bool:
            low = text.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if type(None) in args:  # int | None, float | None
            if text.lower() in ("none", "null", ""):
                return None
            inner = next(a for a in args if a is not type(None))
            return inner(text)
        if origin is Literal:
            return text
        if tp is str:
            return text
    except ValueError:
        raise ConfigError(name, text, f"cannot parse as {_type_name(tp)}") from None
    return text


def _type_name(tp: Any) -> str:
    if tp is frozendict:
        return 'a JSON object, e.g. {"width": 64}'
    if tp == Range:  # get_type_hints returns an equal, not the identical, alias object
        return "a pair lo,hi"
    return getattr(tp, "__name__", str(tp))


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``--set`` items of the form ``field=value`` into typed overrides."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(item, item, "a --set item must look like field=value, e.g. k=20")
        key, _, value = item.partition("=")
        key = key.strip()
        if "." in key:  # accept section.field too
            key = key.split(".", 1)[1]
        if not key:
            raise ConfigError(item, item, "a --set item must look like field=value, e.g. k=20")
        out[key] = coerce(key, value)
    return out


def load_file(path: str | Path) -> dict[str, Any]:
    """Read overrides from a JSON or TOML file: flat ``{field: value}`` or by section."""
    path = Path(path)
    text = path.read_text()
    raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SECTIONS and isinstance(value, Mapping):
            for k2, v2 in value.items():
                flat[k2] = coerce(k2, v2)
        elif key == "preset":
            continue
        else:
            flat[key] = coerce(key, value)
    return flat


# The presets build on this module; their resolver is re-exported here, where callers have
# always found it (``from mvsim.config import make_config``).
from mvsim.presets import PRESETS, describe_presets, make_config  # noqa: E402

__all__ = ["PRESETS", "describe_presets", "make_config"]
