"""Smoke tests for mvsim._nt_compat: neural-tangents imports and its kernels are right.

Nothing here is skipped: if the import or a kernel breaks on a new JAX, these fail.
Analytic references are computed in float64 numpy from the arc-cosine formulas
(Cho & Saul 2009) for a ReLU layer after a Dense/Conv layer with W_std=1, b_std=0:
    K0 = x x'^T / d,  theta = arccos(K0 / sqrt(q q')),
    nngp = sqrt(q q') (sin theta + (pi - theta) cos theta) / (2 pi),
    kdot = (pi - theta) / (2 pi)          (E[relu'(u) relu'(v)]),
    ntk  = nngp + K0 * kdot               (NTK parameterization).
"""

import functools
import importlib
import re
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvsim import model
from mvsim._nt_compat import TF_ONLY, import_neural_tangents

nt = import_neural_tangents()
stax = nt.stax

# Tolerances for float32 kernels of O(1) values against float64 references. The NNGP
# is smooth in cos(theta) at theta=0 (the diagonal), so it is good to ~1e-6. The NTK's
# kdot = (pi - theta) / (2 pi) is not: float32 rounding of cos(theta) near 1 (~6e-8)
# moves theta = arccos(.) by ~sqrt(2 * 6e-8) = 3.5e-4, i.e. kdot by ~5.5e-5 per term.
NNGP_TOL = 1e-5
NTK_TOL = 2e-4


def _jit(kernel_fn):
    """Jitted kernel_fn: one XLA compile is ~10x faster than NT's eager op-by-op path."""
    return jax.jit(kernel_fn, static_argnames="get")


def _inputs(n: int = 4, d: int = 3, seed: int = 0) -> jnp.ndarray:
    """Rows scaled to |x|^2 = d, so every diagonal K0 entry is 1."""
    x = np.random.default_rng(seed).normal(size=(n, d))
    return jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(d), jnp.float32)


def _relu_reference(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K0, nngp, kdot) of Dense(W_std=1, b_std=0) -> Relu on rows of x and y."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    k0 = x @ y.T / x.shape[-1]
    qq = np.sqrt(np.outer(np.sum(x * x, -1), np.sum(y * y, -1))) / x.shape[-1]
    theta = np.arccos(np.clip(k0 / qq, -1.0, 1.0))
    nngp = qq * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)
    return k0, nngp, (np.pi - theta) / (2 * np.pi)


def _mlp():
    return stax.serial(
        stax.Dense(64, W_std=1.0, b_std=0.0), stax.Relu(), stax.Dense(1, W_std=1.0, b_std=0.0)
    )


def test_import_is_idempotent_and_experimental_is_stubbed() -> None:
    assert nt.__version__ == "0.6.5"
    assert import_neural_tangents() is nt
    assert "tensorflow" not in sys.modules
    for name in ("Jaxpr", "JaxprEqn", "Literal", "Primitive", "Var", "ShapedArray"):
        assert hasattr(jax.core, name), name
    from jax.interpreters import ad
    from jax.util import safe_map, safe_zip

    assert safe_map(lambda a, b: a + b, [1, 2], [3, 4]) == [4, 6]
    assert list(safe_zip([1], [2])) == [(1, 2)]
    with pytest.raises(ValueError):
        safe_zip([1, 2], [3])
    assert hasattr(ad, "zeros_like_p")


def test_tensorflow_only_entry_points_say_so() -> None:
    """neural_tangents.experimental is TensorFlow's (jax2tf): each of its entry points, however
    reached, raises an ImportError that names it, not TensorFlow's ModuleNotFoundError."""
    message = r"{}\.{} is neural-tangents' TensorFlow-only .* use neural_tangents\.empirical_ntk_fn"
    for module, names in TF_ONLY.items():
        stub = importlib.import_module(module)
        for name in names:
            with pytest.raises(ImportError, match=message.format(re.escape(module), name)):
                getattr(stub, name)
    with pytest.raises(ImportError, match="experimental.empirical_ntk_fn_tf is"):
        from neural_tangents.experimental import empirical_ntk_fn_tf  # noqa: F401
    with pytest.raises(ImportError, match="empirical.get_apply_fn_and_params is"):
        from neural_tangents.experimental.empirical_tf.empirical import (  # noqa: F401
            get_apply_fn_and_params,
        )
    with pytest.raises(ImportError, match="empirical_tf.empirical.empirical_ntk_fn_tf is"):
        nt.experimental.empirical_tf.empirical.empirical_ntk_fn_tf  # noqa: B018
    # Other names stay plain AttributeErrors, so hasattr() and introspection work.
    assert not hasattr(nt.experimental, "__file__")
    assert "tensorflow" not in sys.modules


def test_jax_older_than_supported_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run-time patches follow current JAX's internals: an old JAX gets an ImportError
    that names both versions, before anything is patched."""
    monkeypatch.setattr(jax, "__version__", "0.4.23")
    with pytest.raises(ImportError, match=r"needs jax >= 0\.10, found jax 0\.4\.23"):
        import_neural_tangents()
    monkeypatch.setattr(jax, "__version__", "0.10.0.dev20260101")
    assert import_neural_tangents() is nt


def test_structured_derivatives_on_a_changed_jax_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Implementation 3 walks JAX's linearize; if JAX changes its signature again, the user
    gets told which implementations still work, not a TypeError from deep inside."""
    from jax.interpreters import ad

    monkeypatch.setattr(ad, "linearize", lambda traceable, *primals, has_aux=False: None)
    apply_fn, params, x1, _ = _finite_net()
    ntk_fn = nt.empirical_ntk_fn(apply_fn, implementation=3)
    with pytest.raises(NotImplementedError, match="use implementation 1 or 2"):
        ntk_fn(x1, None, params)


def test_missing_package_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.delitem(sys.modules, "neural_tangents")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match="pip install --no-deps neural-tangents==0.6.5"):
        import_neural_tangents()


def test_mlp_kernel_matches_arccos() -> None:
    """Feature 1: serial(Dense, Relu, Dense) nngp and ntk."""
    x1, x2 = _inputs(4), _inputs(3, seed=1)
    k = _jit(_mlp()[2])(x1, x2, ("nngp", "ntk"))
    k0, nngp, kdot = _relu_reference(x1, x2)
    np.testing.assert_allclose(k.nngp, nngp, atol=NNGP_TOL)
    np.testing.assert_allclose(k.ntk, nngp + k0 * kdot, atol=NTK_TOL)


def test_elementwise_numerical_matches_analytic() -> None:
    """Feature 2: ElementwiseNumerical with custom smooth functions.

    Inputs have q = K0_ii = 1, so u, v ~ N(0, 1) marginally and kernel entries are O(0.5).

    (a) A hand-written a*erf(b z)+c against the closed-form stax.Erf. erf is entire, so
    Gauss-Hermite quadrature converges faster than any power of deg: measured error is
    4e-5 (NTK) at deg=25 and float32 round-off (~1e-7) at deg=50, so deg=50 with
    atol=1e-5 leaves 100x margin.

    (b) A smoothed ReLU, softplus_beta(z) = log(1 + e^{beta z}) / beta, against the
    closed-form stax.Relu. Here the gap is the smoothing, not the quadrature. With
    delta = softplus_beta - relu, |E[f f'] - E[g g']| <= ||delta||_2 (||f|| + ||g||) in
    L2(N(0, 1)), where ||relu||_2 = ||relu'||_2 = sqrt(1/2) and
      ||delta||^2   <= 2 phi(0) beta^-3 int_0^inf log(1+e^-t)^2 dt = 0.60 phi(0) / beta^3,
      ||delta'||^2  <= 2 phi(0) beta^-1 int_0^inf sigmoid(-t)^2 dt = 0.39 phi(0) / beta.
    For beta=10 this gives 0.022 (nngp) and 0.19 (ntk); we add 0.01 for the quadrature
    of the kinked-at-scale-1/beta integrand (measured relu-quadrature error at deg=50:
    2e-3 nngp, 1.2e-2 ntk-factor). Measured total: 5e-3 nngp, 3e-2 ntk.
    """
    x = _inputs(4)
    a, b, c = 0.7, 1.3, 0.2
    with warnings.catch_warnings():
        # NT warns on every ElementwiseNumerical construction that accuracy depends on deg.
        warnings.simplefilter("ignore", UserWarning)
        num_erf = stax.ElementwiseNumerical(lambda z: a * jax.scipy.special.erf(b * z) + c, deg=50)
        beta = 10.0
        num_relu = stax.ElementwiseNumerical(lambda z: jax.nn.softplus(beta * z) / beta, deg=50)

    def kernel(layer):
        kernel_fn = stax.serial(stax.Dense(1, W_std=1.0, b_std=0.0), layer)[2]
        return _jit(kernel_fn)(x, None, ("nngp", "ntk"))

    k_num, k_ref = kernel(num_erf), kernel(stax.Erf(a=a, b=b, c=c))
    np.testing.assert_allclose(k_num.nngp, k_ref.nngp, atol=1e-5)
    np.testing.assert_allclose(k_num.ntk, k_ref.ntk, atol=1e-5)

    k_num, k_ref = kernel(num_relu), kernel(stax.Relu())
    np.testing.assert_allclose(k_num.nngp, k_ref.nngp, atol=0.022 + 0.01)
    np.testing.assert_allclose(k_num.ntk, k_ref.ntk, atol=0.19 + 0.01)
    # The analytic reference itself is the arc-cosine kernel (guards a trivially passing test).
    np.testing.assert_allclose(k_ref.nngp, _relu_reference(x, x)[1], atol=NNGP_TOL)


def test_patchwise_conv_kernel() -> None:
    """Feature 3: 1x1 Conv over P patches (n, P, d) -> (n, P, 1, d), ReLU, sum over patches.

    The readout sees sum_p relu(W x_p), so nngp = sum_{p,q} kappa(x_p, x_q) and
    ntk = sum_{p,q} [kappa + K0 kdot](x_p, x_q).
    """
    n, n_patches, d = 3, 4, 5
    x = _inputs(n * n_patches, d).reshape(n, n_patches, d)
    kernel_fn = stax.serial(
        stax.Conv(32, (1, 1), W_std=1.0, b_std=0.0),
        stax.Relu(),
        stax.GlobalSumPool(),
        stax.Dense(1, W_std=1.0, b_std=0.0),
    )[2]
    k = _jit(kernel_fn)(x[:, :, None, :], None, ("nngp", "ntk"))

    k0, kappa, kdot = _relu_reference(*2 * (np.asarray(x).reshape(n * n_patches, d),))

    def patch_sum(m: np.ndarray) -> np.ndarray:
        return m.reshape(n, n_patches, n, n_patches).sum((1, 3))

    assert k.nngp.shape == (n, n)
    # Each entry sums n_patches**2 terms, of which n_patches (p = q) sit at theta = 0.
    np.testing.assert_allclose(k.nngp, patch_sum(kappa), rtol=1e-5, atol=n_patches * NNGP_TOL)
    np.testing.assert_allclose(
        k.ntk, patch_sum(kappa + k0 * kdot), rtol=1e-5, atol=n_patches * NTK_TOL
    )


def test_gradient_descent_mse_ensemble_interpolates() -> None:
    """Feature 4: infinite-time GD prediction on the training inputs returns y_train."""
    x_train, x_test = _inputs(5, seed=2), _inputs(2, seed=3)
    y_train = jnp.asarray(np.random.default_rng(4).normal(size=(5, 1)), jnp.float32)
    kernel_fn = _jit(_mlp()[2])
    predict_fn = nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train)
    # float32 solve of a well-conditioned 5x5 system.
    on_train = predict_fn(None, x_train, ("nngp", "ntk"))
    np.testing.assert_allclose(on_train.nngp, y_train, atol=1e-3)
    np.testing.assert_allclose(on_train.ntk, y_train, atol=1e-3)
    on_test = predict_fn(None, x_test, "ntk")
    assert on_test.shape == (2, 1) and bool(jnp.all(jnp.isfinite(on_test)))


def test_batched_kernel_equals_unbatched() -> None:
    """Feature 5: nt.batch gives the same kernel as the plain kernel_fn."""
    x1, x2 = _inputs(4), _inputs(6, seed=1)
    kernel_fn = _jit(_mlp()[2])
    batched = nt.batch(kernel_fn, batch_size=2)
    for args in ((x1, None), (x1, x2)):
        k, kb = kernel_fn(*args, ("nngp", "ntk")), batched(*args, ("nngp", "ntk"))
        np.testing.assert_allclose(kb.nngp, k.nngp, atol=NNGP_TOL)
        np.testing.assert_allclose(kb.ntk, k.ntk, atol=NTK_TOL)


def test_predict_under_vmap_and_max_learning_rate() -> None:
    """Feature 4b: gradient_descent_mse on a kernel that is a vmap tracer (it escaped its
    trace on current JAX), and max_learning_rate on the CPU (its SciPy call lost a keyword)."""
    kernel_fn = _jit(_mlp()[2])
    xs = jnp.stack([_inputs(5, seed=s) for s in range(3)])
    k_dd = jax.vmap(lambda x: kernel_fn(x, None, "ntk"))(xs)  # (3, 5, 5)
    y = jnp.asarray(np.random.default_rng(4).normal(size=(5, 1)), jnp.float32)
    fx0 = jnp.zeros_like(y)

    def predict(k: jax.Array) -> jax.Array:
        return nt.predict.gradient_descent_mse(k, y, diag_reg=1e-4)(2.0, fx0)

    batched = jax.vmap(predict)(k_dd)
    for k, b in zip(k_dd, batched, strict=True):
        np.testing.assert_allclose(b, predict(k), rtol=1e-5, atol=1e-6)
    lam_max = np.linalg.eigvalsh(np.asarray(k_dd[0], np.float64))[-1]
    lr = nt.predict.max_learning_rate(k_dd[0])
    np.testing.assert_allclose(lr, 2 * 5 / (lam_max + 1e-12), rtol=1e-5)


# Float32 agreement of two empirical-NTK implementations, relative to the kernel's largest
# entry: they contract the same Jacobians in different orders (measured: <= 1.1e-7 on both
# networks below, i.e. about one float32 ulp of the largest entry).
F32_REL = 1e-6


@functools.cache
def _finite_net():
    """A small stax network: (apply_fn, params, x1, x2), two outputs."""
    init_fn, apply_fn, _ = stax.serial(stax.Dense(16), stax.Relu(), stax.Dense(2))
    x1, x2 = _inputs(4), _inputs(3, seed=1)
    _, params = jax.jit(init_fn, static_argnums=1)(jax.random.PRNGKey(0), x1.shape)
    return apply_fn, params, x1, x2


@functools.cache
def _patch_cnn():
    """mvsim's learner, model.apply (k=3 classes, m=8 neurons, P=4 patches, d=5), at a
    random W: (apply_fn, W, x1, x2)."""
    q, varrho = 3, 0.3
    k, m, n_patches, d = 3, 8, 4, 5
    W = 0.5 * jax.random.normal(jax.random.key(0), (k, m, d))
    x1 = _inputs(4 * n_patches, d).reshape(4, n_patches, d) / np.sqrt(d)
    x2 = _inputs(3 * n_patches, d, seed=1).reshape(3, n_patches, d) / np.sqrt(d)
    return (lambda W, x: model.apply(W, x, q, varrho)), W, x1, x2


def _explicit_ntk(apply_fn, params, x1, x2) -> np.ndarray:
    """J(x1) J(x2)^T from full Jacobians, shape (n1, n2, out, out)."""

    def flat_jacobian(x):
        jac = jax.jacobian(apply_fn)(params, x)  # leaves (n, out, *param_shape)
        return jnp.concatenate([j.reshape(*j.shape[:2], -1) for j in jax.tree.leaves(jac)], -1)

    jac1, jac2 = jax.jit(lambda: (flat_jacobian(x1), flat_jacobian(x2)))()
    return np.asarray(jnp.einsum("aip,bjp->abij", jac1, jac2))


NETS = {"stax MLP": _finite_net, "patch CNN": _patch_cnn}


@pytest.mark.parametrize("net", NETS)
def test_empirical_ntk_implementations_agree(net: str) -> None:
    """Feature 6: empirical_ntk_fn's implementations 2 (NTK-vector products) and 3
    (structured derivatives, which walks JAX's linearized jaxpr: the part current JAX
    broke) agree with 1 (Jacobian contraction) to float32 precision, and 1 with J J^T."""
    apply_fn, params, x1, x2 = NETS[net]()
    # Jitted: one compile is 5-10x faster than NT's op-by-op path.
    ntk = {
        impl: np.asarray(
            jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0, implementation=impl))(
                x1, x2, params
            )
        )
        for impl in (1, 2, 3)
    }
    n_out = apply_fn(params, x1).shape[1]
    assert ntk[1].shape == (len(x1), len(x2), n_out, n_out)
    scale = np.abs(ntk[1]).max()
    assert scale > 0.1
    for impl in (2, 3):
        np.testing.assert_allclose(ntk[impl], ntk[1], rtol=0, atol=F32_REL * scale, err_msg=impl)
    explicit = _explicit_ntk(apply_fn, params, x1, x2)
    np.testing.assert_allclose(ntk[1], explicit, rtol=0, atol=F32_REL * scale)


def test_empirical_ntk_auto_measures_flops_and_agrees(capsys: pytest.CaptureFixture) -> None:
    """implementation=AUTO (0) compiles 1, 2 and 3, reads their flops from XLA's cost
    analysis (a dict on current JAX, a list before) and runs the cheapest."""
    apply_fn, params, x1, x2 = _patch_cnn()
    fns = {
        impl: nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0, implementation=impl)
        for impl in (0, 1)
    }
    auto, ref = (np.asarray(fns[impl](x1, x2, params)) for impl in (0, 1))
    flops = re.findall(r"impl=(\d), flops=([\d.e+]+)", capsys.readouterr().out)
    assert [i for i, _ in flops] == ["1", "2", "3"] and all(float(f) > 0 for _, f in flops)
    np.testing.assert_allclose(auto, ref, rtol=0, atol=F32_REL * np.abs(ref).max())


def test_mvsim_neural_tangents_imports_it_in_a_fresh_interpreter():
    """`mvsim.neural_tangents()` is the public way in: in a new process (nothing patched
    yet) it returns the module, and a later plain `import neural_tangents` gets the same,
    working module: its analytic kernel, and its structured-derivatives empirical NTK
    (implementation 3, patched at run time) equal to implementation 1."""
    import subprocess

    code = (
        "import mvsim, numpy as np\n"
        "nt = mvsim.neural_tangents()\n"
        "import neural_tangents\n"
        "assert nt is neural_tangents\n"
        "_, _, kernel_fn = nt.stax.serial(nt.stax.Dense(1), nt.stax.Relu(), nt.stax.Dense(1))\n"
        "x = np.eye(3, dtype=np.float32)\n"
        "k = np.asarray(kernel_fn(x, x, 'nngp'))\n"
        "assert k.shape == (3, 3) and np.isfinite(k).all() and (np.diag(k) > 0).all()\n"
        "import jax\n"
        "init_fn, apply_fn, _ = neural_tangents.stax.serial(\n"
        "    neural_tangents.stax.Dense(8), neural_tangents.stax.Relu())\n"
        "_, params = init_fn(jax.random.PRNGKey(0), x.shape)\n"
        "ntk1, ntk3 = (np.asarray(jax.jit(neural_tangents.empirical_ntk_fn(\n"
        "    apply_fn, implementation=i))(x, None, params)) for i in (1, 3))\n"
        "assert ntk1.shape == (3, 3) and np.abs(ntk3 - ntk1).max() <= 1e-6 * np.abs(ntk1).max()\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
