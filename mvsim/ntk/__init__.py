r"""The NTK / random-feature side of the paper (notes §7), on the same data as ``verify``.

The paper contrasts deep learning with the NTK regime: for random-feature / NTK models an
ensemble helps (it enlarges the feature set), training the average helps, and knowledge
distillation does not (one model's fixed feature space cannot hold what the ensemble
represents). This module builds both NTK objects for the patch CNN of :mod:`mvsim.model`

    F_i(X) = Σ_{r∈[m]} Σ_{p∈[P]} σ(⟨w_{i,r}, x_p⟩),   σ = ReLU~ (the smoothed ReLU),

and measures them in the same table as the deep models.

Which layer is trained, and the kernel
--------------------------------------
The paper's second layer is fixed to ones and is **not trained**; only W is. The tangent
kernel is therefore the first layer's contribution alone. For one neuron w,
∇_w Σ_p σ(⟨w, x_p⟩) = Σ_p σ'(⟨w, x_p⟩) x_p, so with w ~ N(0, σ_0² I_d) (σ_0 =
``ntk_sigma_0``)

    Θ(X, X') = Σ_{p,p'} E_w[σ'(⟨w, x_p⟩) σ'(⟨w, x'_{p'}⟩)] ⟨x_p, x'_{p'}⟩        (per neuron)

and the empirical NTK of the paper's network (readout 1, m neurons per class) is
Θ_ij(X, X') → δ_ij · m · Θ(X, X') as m → ∞ (classes have their own neurons, so the
kernel is block-diagonal across classes and the same for every class). In
neural-tangents terms: a readout layer with W_std = 1 in NTK parameterization adds its
own gradient, which is the NNGP of the layer below, Σ_{p,p'} E[σ(u_p) σ(u'_{p'})]; a
fixed readout removes exactly that term, so Θ = ntk − nngp of
``serial(Conv1x1, σ, GlobalSumPool, Dense(1))``, which is the ``ntk`` of the stack
without the readout (the per-channel kernel of one neuron). :func:`ntk_stax` builds both
stacks in ``neural_tangents.stax`` (1×1 ``Conv`` in *standard* parameterization with
W_std = σ_0·√d, so the gradient is taken w.r.t. w itself as our trainer does;
``ElementwiseNumerical`` for σ; ``GlobalSumPool`` for the sum over patches);
``tests/test_ntk.py`` checks the identity, and checks Θ against a Monte-Carlo empirical
NTK of a wide network written in plain JAX and against ``nt.empirical_ntk_fn``.

A fast exact evaluator (the 'series' kernel)
--------------------------------------------
neural-tangents' quadrature costs deg² evaluations per entry of the N×N×P×P patch-pair
kernel (measured: ~7 minutes for the demo's 620 training and 4000 test points at
deg = 8–16 on 2 shared cores), and Gauss–Hermite converges only at O(1/deg) for σ', which
has a derivative kink at ϱ (errors of several % of an entry at deg = 16–32). The series kernel uses
Mehler's expansion instead: with a = σ_0|x|, b = σ_0|x'|, ρ = cos∠(x, x') and
g(z) = σ'(z) = clip(z/ϱ, 0, 1)^{q−1},

    E[g(aZ) g(bZ')] = Σ_{n≥0} α_n(a) α_n(b) ρ^n,   α_n(a) = E[g(aZ) He_n(Z)] / √n!,

(Z, Z') standard normal with correlation ρ. The α_n are 1-D integrals per *patch* (a
polynomial piece by Gauss–Legendre and the flat piece in closed form), so the per-pair
cost is one Horner pass of ``ntk_terms`` multiply-adds. Terms n ≥ L are replaced by one
term t(a) t(b) ρ^L with t(a)² = E[g(aZ)²] − Σ_{n<L} α_n(a)², exact on the diagonal; by
Cauchy–Schwarz the error is ≤ 2 t(a) t(b) |ρ|^L per patch pair (:func:`series_error_bound`).
Every term is a positive semi-definite kernel, so the truncated kernel is PSD too.

Finite width
------------
:func:`linearized_network` is the network linearized at its init,
f_lin(W, x) = f(W0, x) + ⟨W − W0, ∇f(W0, x)⟩, with ``ntk_m`` neurons per class at init
std ``ntk_sigma_0``. Linearizing at the feature-learning σ_0 ≪ ϱ gives Jacobians of
order (σ_0/ϱ)^{q−1} and does not train (feasibility study 1), hence its own init scale.
:func:`empirical_ntk_predict` is the t → ∞ limit of such a model trained on the MSE from
a zero-centred start (kernel regression with the empirical NTK of width M), and
:func:`width_convergence` measures how the mean of many of them approaches
:func:`kernel_predict` as M grows (Monte-Carlo rate 1/√M; ``tests/test_ntk.py``).

Everything here is a pure function of the config and PRNG streams of
:func:`mvsim.verify.stream`, so the training set and the (first points of the) test sets
are those of ``mvsim verify``.

Modules
-------
``kernel``      Θ: neural-tangents' quadrature, the Hermite series and its error bound,
                blocked evaluation, the infinite-width predictor
``empirical``   the empirical NTK of a wide network, wide models trained in closed form,
                their convergence to Θ's predictor as the width grows
``linearized``  finite-width linearized networks and the stages that train them
``claims``      the NTK side's verdicts (paired CIs on the same test points)
``table``       :func:`run_ntk`, the list of its stages, and the deep-vs-NTK table
"""

from mvsim._nt_compat import import_neural_tangents
from mvsim.ntk.claims import KD_FAILS_DEFINITION, LEVEL, VERDICT_DEFINITIONS
from mvsim.ntk.empirical import empirical_ntk, empirical_ntk_predict, width_convergence
from mvsim.ntk.kernel import (
    KernelFn,
    hermite_coefficients,
    kernel_matrix,
    kernel_predict,
    ntk_kernel_fn,
    ntk_stax,
    series_error_bound,
    series_kernel,
)
from mvsim.ntk.linearized import (
    centered_objective,
    linearize,
    linearized_averaged,
    linearized_network,
)
from mvsim.ntk.table import COLUMNS, EXTRA_COLUMNS, ROWS, run_ntk

__all__ = [
    "COLUMNS",
    "EXTRA_COLUMNS",
    "KD_FAILS_DEFINITION",
    "LEVEL",
    "ROWS",
    "VERDICT_DEFINITIONS",
    "KernelFn",
    "centered_objective",
    "empirical_ntk",
    "empirical_ntk_predict",
    "hermite_coefficients",
    "import_neural_tangents",
    "kernel_matrix",
    "kernel_predict",
    "linearize",
    "linearized_averaged",
    "linearized_network",
    "ntk_kernel_fn",
    "ntk_stax",
    "run_ntk",
    "series_error_bound",
    "series_kernel",
    "width_convergence",
]
