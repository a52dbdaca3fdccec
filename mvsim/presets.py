"""Presets: rules from the user's overrides to a full config, and the resolver.

A preset is a function of the user's overrides rather than a fixed table: fields that
the paper expresses through other fields (the noise scales through ``d``, the theory
preset's everything through ``k``, the demo's N, η, s and max_noisy through k) are
derived from the overridden values, and explicit overrides always win. A derived value
never trips on its own: an error is reported on a field the user set
(:func:`make_config`). The dataclasses, their validation and the parsing of values are
:mod:`mvsim.config`'s.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from mvsim.config import (
    _SECTIONS,
    FIELD_SECTION,
    Config,
    ConfigError,
    _int,
    _real,
    coerce,
)


def _noisy_caps(k: int, s: float, max_noisy: int) -> dict[str, Any]:
    """A preset's s and max_noisy at k: its values, lowered where k has fewer other
    classes (k − 1) or other-class views (2(k − 1)) than they count, so that any k ≥ 2
    resolves (the k the preset was tuned at keeps its values exactly)."""
    return {"s": min(s, float(k - 1)), "max_noisy": min(max_noisy, 2 * (k - 1))}


FLAX_ETA = 0.5
"""η of the flax learners (vit, mlp, a user's module) in the demo, paper and tiny presets.
The patch CNN's η = (2/3)ϱk is set by its ϱ; a flax learner at its default init has no ϱ.
Under the flow (the default integrator) η only scales time, so it sets the budget T·η.
GD at this η does not follow the flow for the ViT: at the demo its singles learned both
views of 18 of 20 classes where the flow's learned both of 5 (and GD at η = 0.1 of 6),
so a flax learner run with ``integrator = 'gd'`` needs a smaller η (docs/learners.md)."""

FLAX_KD_OBJECTIVE = "hinton"
"""The distillation objective of the flax learners in the demo-like presets (the patch
CNN keeps the paper's update, which its theorems use). The paper's update has no limit
for them: once a student's logit passes 1/τ² its truncated p^τ stops moving while the
one-sided push on that logit stays, so the logits grow without bound. At the demo GD
diverged (ViT at step 183, MLP at step 12,230) and the flow stalled in its first chunk."""


def learner_fields(learner: str, k: int, varrho: float) -> dict[str, Any]:
    """What the demo-like presets derive from the learner: η and the KD objective. The
    patch CNN: (2/3)ϱk and the paper's update; a flax learner: :data:`FLAX_ETA` and
    :data:`FLAX_KD_OBJECTIVE`."""
    if learner == "patch_cnn":
        return {"eta": 2 / 3 * varrho * k, "kd_objective": "paper"}
    return {"eta": FLAX_ETA, "kd_objective": FLAX_KD_OBJECTIVE}


def _demo(o: Mapping[str, Any]) -> dict[str, Any]:
    """k = 10 regime of the feasibility study (study 2): projected noise of norm 0.1 on
    feature patches and 1.2 elsewhere, ϱ = 1, σ_0/ϱ ≈ 0.033, q = 4, s = 4 with ρ < Γ,
    60 multi-view points per class and one single-view point per (class, view).

    Rule in k (k = 10 gives exactly these numbers): N = 62k, μ = 1/31, η = (2/3)ϱk (a
    flax learner: 0.5), s = min(4, k − 1), max_noisy = min(14, 2(k − 1)), d = max(200, 4k)
    (the 2k views fill at most half the space, leaving the projected noise room),
    T = 10⁴·max(10/k, (k/10)^{3/2}) (below k = 10 the flow time T·η stays that of k = 10,
    since η ∝ k; above, measured stops grow like k^{1.5}: at most 16,053 steps at k = 20
    and 44,927 at 40; the flow pays only for the steps a model takes), students trained to
    the horizon (T unless set), P = 16 and m = 4 fixed."""
    k = o.get("k", 10)
    d = o.get("d", max(200, 4 * k))
    varrho = o.get("varrho", 1.0)
    n_multi, n_single = 60 * k, 2 * k
    return dict(
        k=k,
        d=d,
        P=16,
        **_noisy_caps(k, 4.0, 14),
        N=n_multi + n_single,
        mu=n_single / (n_multi + n_single),
        sigma_p=0.1 / math.sqrt(d),
        sigma_n=1.2 / math.sqrt(d),
        varrho=varrho,
        sigma_0=0.033 * varrho,
        **learner_fields(o.get("learner", "patch_cnn"), k, varrho),
        T=_demo_budget(k),
    )


def _demo_budget(k: int) -> int:
    return round(10_000 * max(10 / k, (k / 10) ** 1.5))


def _demo_logm(o: Mapping[str, Any]) -> dict[str, Any]:
    """The demo family with m growing like ln k (the theory's polylog k), matched at k = 10.

    Rule in k: demo's, and m = max(1, round(4 ln k / ln 10)) (k = 3: 2, 5: 3, 10: 4, 20: 5,
    40: 6, 100: 8). More neurons per class make close initial races more common (the
    init law of mechanism.initial_ratio_distribution), so beside demo it separates what
    m does from what k does."""
    k = o.get("k", 10)
    return {**_demo(o), "m": max(1, round(4 * math.log(k) / math.log(10)))}


def _demo_theory(o: Mapping[str, Any]) -> dict[str, Any]:
    """The demo family with the theory's scalings in k for σ_0, ϱ and the budget, each
    matched at k = 10.

    Rule in k: demo's, and ϱ = ln 10 / ln k (1/polylog k), σ_0 = 0.033 · (10/k)^{1/(q−2)}
    (σ_0^{q−2} ∝ 1/k, which lengthens the plateau); σ_0/ϱ ∝ ln k/√k then stays near 0.03
    up to k = 40 (0.029 at k = 3, 0.033 at 10, 0.026 at 40) and falls beyond; η = (2/3)ϱk
    as in demo; T is demo's budget times the plateau's growth 1/σ_0^{q−2} ∝ k relative to
    k = 10, 10⁴·max(1, k/10)^{5/2}; students to the horizon, as in demo."""
    k = o.get("k", 10)
    q = o.get("q", 4)
    varrho = o.get("varrho", math.log(10) / math.log(k))
    base = _demo({**o, "varrho": varrho})
    sigma_0 = 0.033 * (10 / k) ** (1 / (q - 2)) if q > 2 else 0.033 * 10 / k
    T = round(_demo_budget(k) * max(1.0, k / 10))
    return {**base, "sigma_0": sigma_0, "T": T}


def _tiny(o: Mapping[str, Any]) -> dict[str, Any]:
    """Seconds-sized runs for the test suite: k = 4, small N and d, few steps (N, μ, η,
    s, max_noisy and d = max(64, 4k) follow k as in demo). Its trajectories are read over
    the first 500 steps (or T, or an explicit kd_T, if smaller), and its students train
    that far."""
    k = o.get("k", 4)
    d = o.get("d", max(64, 4 * k))
    n_multi, n_single = 30 * k, 2 * k
    return dict(
        k=k,
        d=d,
        P=8,
        **_noisy_caps(k, 1.5, 6),
        N=n_multi + n_single,
        mu=n_single / (n_multi + n_single),
        sigma_p=0.1 / math.sqrt(d),
        sigma_n=1.0 / math.sqrt(d),
        m=2,
        varrho=1.0,
        sigma_0=0.15,
        **learner_fields(o.get("learner", "patch_cnn"), k, 1.0),
        T=2000,
        chunk=100,
        horizon=min(500, o.get("T", 2000), o.get("kd_T") or 500),
        kd_students=2,
        avg_members=2,
        avg_seeds=2,
        seeds=3,
        n_test_multi=2000,
        n_test_single=2000,
    )


def _paper(o: Mapping[str, Any]) -> dict[str, Any]:
    """The demo regime with the budgets the theorems ask for, for a GPU or a long CPU run:
    16 seeds, twice demo's T (20000 at k = 10), the horizon (and the students' budget)
    with it, 4 students of each kind, and test sets large enough (400k multi-view, 80k
    single-view points) that a zero-error ensemble's CI lies below 0.001μ with room to
    spare. Measured on the CPU (docs/theorems.md): the longer budget does not move the
    single model, whose gap is set by the races the init leaves close, not by T."""
    return {
        **_demo(o),
        "seeds": 16,
        "T": 2 * _demo_budget(o.get("k", 10)),
        "kd_students": 4,
        "n_test_multi": 400_000,
        "n_test_single": 80_000,
    }


def _theory(o: Mapping[str, Any]) -> dict[str, Any]:
    """The paper's recipe, every parameter computed from k (notes §1.5). Where the paper
    gives only an order (poly, polylog), the simplest member is taken: d = 4k², log = ln,
    μ = 1/k, N = k^1.2/μ, s = k^0.2, m = ⌈ln k⌉, T = k³, feature noise γ = 0 and
    noise-only patches of norm 1 (σ_n = γk/√d with the unknown γ taken as 1/k), isotropic
    noise, i.i.d. training set. Expect it to fail at
    small k: the orderings it relies on (ρ ≪ Γ, σ_0 ≪ ϱ) do not hold there."""
    k = o.get("k", 10)
    q = o.get("q", 4)
    lk = math.log(k)
    d = o.get("d", 4 * k * k)
    mu = o.get("mu", 1 / k)
    if mu <= 0 or not math.isfinite(k**1.2 / mu):
        raise ConfigError("mu", mu, "must be in (0, 1] for the theory preset (N = k^1.2/μ)")
    rho = k**-0.01
    Gamma = 1 / lk
    s = min(k**0.2, float(k))
    P = k * k
    return dict(
        k=k,
        d=d,
        P=P,
        C_p=1,
        s=s,
        max_noisy=min(2 * (k - 1), P - 2),
        mu=mu,
        N=max(int(round(k**1.2 / mu)), k),
        train_composition="iid",
        own_z=(1.0, 1.0),
        noisy_z_multi=(0.2, 0.4),
        rho=(rho, min(2 * rho, 1.0)),
        Gamma=(Gamma / 2, Gamma),
        gamma=0.0,
        sigma_p=1 / (math.sqrt(d) * lk),
        sigma_n=1 / math.sqrt(d),
        project_noise=False,
        m=max(1, math.ceil(lk)),
        q=q,
        varrho=1 / lk,
        sigma_0=k ** (-1 / (q - 2)) if q > 2 else 1 / k,
        eta=1 / k,
        T=k**3,
        stop="accuracy",
    )


_PRESET_INPUTS: dict[str, Callable[[Any], None]] = {
    "k": lambda v: _int("k", v, 2),
    "d": lambda v: _int("d", v, 1),
    "q": lambda v: _int("q", v, 1),
    "varrho": lambda v: _real("varrho", v, 0.0, lo_open=True),
    "mu": lambda v: _real("mu", v, 0.0, 1.0),
}

PRESETS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "demo": _demo,
    "demo-logm": _demo_logm,
    "demo-theory": _demo_theory,
    "paper": _paper,
    "tiny": _tiny,
    "theory": _theory,
}


def make_config(preset: str = "demo", overrides: Mapping[str, Any] | None = None) -> Config:
    """Resolve a preset with overrides (flat field names), validating everything.

    Raises :class:`ConfigError` for an unknown preset or field, or an invalid value.
    """
    if preset not in PRESETS:
        raise ConfigError("preset", preset, f"must be one of {sorted(PRESETS)}")
    overrides = dict(overrides or {})
    for key in overrides:
        if key not in FIELD_SECTION:
            raise ConfigError(
                key, overrides[key], f"unknown config field; known: {sorted(FIELD_SECTION)}"
            )
    # Type and range-check the fields presets derive others from before the preset runs,
    # so that e.g. d = 0 is a ConfigError naming d, not a ZeroDivisionError in sqrt(d).
    overrides = {key: coerce(key, value) for key, value in overrides.items()}
    for key, check in _PRESET_INPUTS.items():
        if key in overrides:
            check(overrides[key])
    values = PRESETS[preset](overrides)
    values.update(overrides)
    _fit_caps(values, overrides)
    by_section: dict[str, dict[str, Any]] = {sec: {} for sec in _SECTIONS}
    for key, value in values.items():
        by_section[FIELD_SECTION[key]][key] = coerce(key, value)
    try:
        return Config(
            preset=preset, **{sec: _SECTIONS[sec](**vals) for sec, vals in by_section.items()}
        )
    except ConfigError as e:
        raise _blame_user_field(e, preset, overrides) from None


# A count that is only an upper end: unless the user sets it, it shrinks to the count that
# bounds it (kd_students = min(3, seeds)), so that --seeds 2 never trips on students
# nobody asked for.
_CAPPED_BY = {"kd_students": "seeds"}

DEFAULTS: dict[str, Any] = {
    f.name: f.default for cls in _SECTIONS.values() for f in dataclasses.fields(cls)
}


def _fit_caps(values: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for name, bound in _CAPPED_BY.items():
        b = values.get(bound, DEFAULTS[bound])
        # An invalid bound is left for its own section to reject, naming it.
        if name not in overrides and isinstance(b, int) and not isinstance(b, bool) and b >= 1:
            values[name] = min(values.get(name, DEFAULTS[name]), b)


def _blame_user_field(e: ConfigError, preset: str, overrides: Mapping[str, Any]) -> ConfigError:
    """The error to show for ``e``: itself when it names a field the user set, else the
    same rule reported on a field the user set and can change: one the rule involves
    (d ≥ 2k: k), else one the preset derived the failing field from (σ_0 from ϱ). ``e``
    itself when there is none (then the preset is wrong, which tests/test_overrides.py
    looks for)."""
    fields = [e.field.split("[")[0], *e.involves]
    if fields[0] in overrides:
        return e
    blamed = next((f for f in fields if f in overrides), None)
    for f in fields:
        blamed = blamed or next(iter(_derived_from(preset, overrides, f)), None)
    if blamed is None:
        return e
    return ConfigError(
        blamed,
        overrides[blamed],
        f"it makes {e.field} = {e.value!r} (the preset's, not set by you) invalid: {e.allowed}",
        involves=(e.field, *e.involves),
    )


def _derived_from(preset: str, overrides: Mapping[str, Any], name: str) -> list[str]:
    """The overridden fields the preset derives field ``name`` from: those whose removal
    changes the value it gives ``name`` (presets are cheap pure functions)."""
    fn = PRESETS[preset]
    value = fn(overrides).get(name)
    return [
        f
        for f in overrides
        if fn({g: v for g, v in overrides.items() if g != f}).get(name) != value
    ]


def describe_presets() -> str:
    """A human-readable listing of every preset and its resolved values."""
    lines = []
    for name, fn in PRESETS.items():
        cfg = make_config(name)
        doc = inspect.cleandoc(fn.__doc__ or "").split("\n\n")
        lines.append(f"{name}: {' '.join(doc[0].split())}")
        # A family's rule in k is the paragraph that says so; it is the preset's contract.
        lines += [f"  {' '.join(p.split())}" for p in doc[1:] if p.startswith("Rule in k")]
        for key, value in cfg.flat().items():
            if isinstance(value, float):
                value = f"{value:.6g}"
            elif isinstance(value, tuple):
                value = "(" + ", ".join(f"{v:.4g}" for v in value) + ")"
            lines.append(f"    {key} = {value}")
    return "\n".join(lines)
