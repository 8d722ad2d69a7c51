"""Constant fitting. Every fit here uses 30 points, <= 8 skeletons, <= 16 leaves and <= 16
operations per program, so all tests share one compiled program per backend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symreg import fit, interpreter, program

RNG = np.random.default_rng(0)
X1 = RNG.uniform(-3, 3, size=(30, 1))
TRUE = np.array([1.3, 2.8, 0.5])
Y1 = TRUE[0] * np.sin(TRUE[1] * X1[:, 0]) + TRUE[2]


def _close_up_to_sign(c):
    # C*sin(C*x1)+C is symmetric under (a, w) -> (-a, -w)
    return np.allclose(c, TRUE, atol=1e-3) or np.allclose(c * [-1, -1, 1], TRUE, atol=1e-3)


@pytest.mark.slow
def test_multistart_recovers_where_single_start_fails():
    single = fit.fit_constants("C*sin(C*x1)+C", X1, Y1, n_starts=1)
    assert single.mse_n > 1e-2 and not _close_up_to_sign(single.constants)  # stuck from 1.0
    wins = 0
    for seed in range(3):
        r = fit.fit_constants("C*sin(C*x1)+C", X1, Y1, n_starts=16, seed=seed)
        assert r.success and np.all(np.isfinite(r.constants))
        wins += _close_up_to_sign(r.constants) and r.mse_n < 1e-9
    assert wins >= 2


@pytest.mark.slow
def test_backends_agree():
    sks = ["C*sin(C*x1)+C", "C*exp(C*x1)+C", "C*x1**2+C*x1+C"]
    y = [Y1, 0.7 * np.exp(0.4 * X1[:, 0]) - 1.1, 0.5 * X1[:, 0] ** 2 - 2.0 * X1[:, 0] + 0.3]
    a = fit.fit_problems(sks, [X1] * 3, y, backend="jaxopt")
    b = fit.fit_problems(sks, [X1] * 3, y, backend="optax")
    c = fit.fit_problems(sks, [X1] * 3, y, backend="bfgs")
    for ra, rb, rc in zip(a, b, c):
        assert ra.success and rb.success and rc.success
        assert ra.mse_n < 1e-9 and rb.mse_n < 1e-9 and rc.mse_n < 1e-9
        np.testing.assert_allclose(np.abs(ra.constants), np.abs(rb.constants), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(np.abs(ra.constants), np.abs(rc.constants), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(a[2].constants, [0.5, -2.0, 0.3], atol=1e-3)
    np.testing.assert_allclose(b[1].constants, [0.7, 0.4, -1.1], atol=1e-3)


def test_domain_errors_are_finite_failures_and_bad_skeletons_are_reported():
    pos = np.linspace(1.0, 3.0, 30)[:, None]
    rs = fit.fit_many(["log(C*x1)", "sqrt(C*x1)+C", "sin(x1", "C*x2", "foo(x1)"], X1, Y1)
    assert [r.success for r in rs] == [False] * 5
    for r in rs:
        assert r.mse_n == fit.FAILED_MSE_N and np.all(np.isfinite(r.constants)) and r.error
    assert "does not parse" in rs[2].error
    assert "x2" in rs[3].error
    assert "foo" in rs[4].error
    good = fit.fit_many(["log(C*x1+C)", "sqrt(C*x1)+C"], pos, np.log(2 * pos[:, 0] + 1))
    assert good[0].success and good[0].mse_n < 1e-9
    np.testing.assert_allclose(good[0].constants, [2.0, 1.0], atol=1e-3)
    assert good[1].success and np.isfinite(good[1].mse_n) and good[1].mse_n < 1e-2


def test_no_recompile_for_new_skeletons_and_bad_data():
    fit.fit_many(["C*x1+C"], X1, Y1)
    before = fit._fit_batch._cache_size()
    rs = fit.fit_many(["C*cos(C*x1)", "C*x1**3+C", "x1*C+C*x1**2"], X1, Y1, seed=3)
    assert fit._fit_batch._cache_size() == before and all(r.success for r in rs)
    assert str(rs[2].expression).count("x1") == 2
    with pytest.raises(ValueError, match="different lengths"):
        fit.fit_constants("C*x1", X1, Y1[:-1])
    with pytest.raises(ValueError, match="y contains NaN"):
        fit.fit_constants("C*x1", X1, np.where(Y1 > 0, np.nan, Y1))
    with pytest.raises(ValueError, match="backend must be one of"):
        fit.FitConfig(backend="lbfgsb")
    with pytest.raises(ValueError, match="scaling must be one of"):
        fit.FitConfig(scaling="minmax")
    with pytest.raises(ValueError, match="objective must be one of"):
        fit.FitConfig(objective="mae")


def test_default_backend_is_bfgs_everywhere():
    import inspect

    from symreg.regressor import SymbolicGPTRegressor

    assert fit.FitConfig().backend == "bfgs"
    assert "backend" not in inspect.signature(fit.fit_constants).parameters  # no second default to drift
    assert SymbolicGPTRegressor(candidate_source="generator")._fit_config().backend == "bfgs"


def test_thesis_protocol_is_one_scipy_start_from_ones():
    cfg = fit.FitConfig.thesis()
    assert (cfg.n_starts, cfg.backend, cfg.scaling, cfg.objective) == (1, "scipy", "off", "mse")
    y = 0.5 * X1[:, 0] ** 2 - 2.0 * X1[:, 0] + 0.3
    r = fit.fit_constants("C*x1**2+C*x1+C", X1, y, cfg=cfg)
    assert r.success and r.mse_n < 1e-9
    np.testing.assert_allclose(r.constants, [0.5, -2.0, 0.3], atol=1e-4)
    # one start from ones: the periodic problem stays in the local minimum near 1 (as in the thesis)
    s = fit.fit_constants("C*sin(C*x1)+C", X1, Y1, cfg=cfg)
    assert not _close_up_to_sign(s.constants)
    jx = fit.fit_constants("C*x1**2+C*x1+C", X1, y, cfg=fit.FitConfig.thesis(backend="bfgs"))
    np.testing.assert_allclose(jx.constants, [0.5, -2.0, 0.3], atol=1e-3)


def test_program_matches_numpy():
    p = program.compile_skeleton("C*sin(C*x1)+C")
    assert (p.length, p.n_consts, p.n_vars) == (8, 3, 1)
    assert program.bucket(8, 16) == 16 and program.bucket(17, 16) == 32
    # the interpreter and its hand-written gradient equal plain jnp code and its autodiff
    x = jnp.asarray(X1[:, 0], jnp.float32)
    cases = {
        "C*sin(C*x1)+C": lambda c: c[0] * jnp.sin(c[1] * x) + c[2],
        "C*x1**3+exp(C*x1)/(C+x1**2)": lambda c: c[0] * x**3 + jnp.exp(c[1] * x) / (c[2] + x**2),
        "atan(C*x1)+tanh(C*x1)*cos(x1)": lambda c: jnp.arctan(c[0] * x) + jnp.tanh(c[1] * x) * jnp.cos(x),
    }
    progs = program.pack_programs([program.compile_skeleton(s) for s in cases], 16, 16)
    c = jnp.asarray([0.7, -1.3, 2.1, 0.0])

    @jax.jit
    def run(p, c, X):  # value, violation, d sum(value^2) / dc, d sum(violation) / dc
        f = lambda c, i: jnp.sum(interpreter.evaluate(p, c, X)[i] ** (2 - i))
        return (*interpreter.evaluate(p, c, X), jax.grad(f)(c, 0), jax.grad(f)(c, 1))

    for j, ref in enumerate(cases.values()):
        y_hat, _, g, _ = run({k: v[j] for k, v in progs.items()}, c, jnp.asarray(X1, jnp.float32))
        np.testing.assert_allclose(y_hat, ref(c), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(g, jax.grad(lambda c: jnp.sum(ref(c) ** 2))(c), rtol=1e-4, atol=1e-4)
    # outside the domain: finite value and gradient, positive violation pushing back inside
    p = program.pack_programs([program.compile_skeleton("log(C*x1)")], 16, 16)
    pos = np.linspace(1.0, 3.0, 30, dtype=np.float32)[:, None] * np.ones((1, 9), np.float32)
    y_hat, viol, _, g = run({k: v[0] for k, v in p.items()}, jnp.asarray([-2.0, 0, 0, 0]), pos)
    assert np.all(np.isfinite(y_hat)) and np.all(viol > 0) and np.isfinite(g[0]) and g[0] < 0
