"""Scale-robust constant fitting: targets from 1e-6 to 1e8, large offsets, huge inputs, and
honest failures. All problems share one fit call per test (one compiled shape)."""

import numpy as np
import pytest
import sympy

from symreg import expressions, fit, scaling

RNG = np.random.default_rng(0)
X = RNG.uniform(-3, 3, size=(40, 1))
x = X[:, 0]


def _predict(expr, X):
    f = sympy.lambdify(expressions.X_SYMBOLS[: X.shape[1]], expr, "numpy")
    return np.broadcast_to(np.asarray(f(*X.T), np.float64), (X.shape[0],))


def test_targets_from_1e_minus_6_to_1e8_and_offsets_fit_in_original_units():
    mags = [1e-6, 1e-3, 1.0, 1e3, 1e6, 1e8]
    sks = ["C*exp(C*x1)+C"] * len(mags) + ["C*x1**2+C*x1+C", "C*exp(C*x1)+C"]
    ys = [m * (0.7 * np.exp(0.4 * x) - 1.1) for m in mags]
    ys += [2000 * x**2 + 300 * x + 5e6, 0.7 * np.exp(0.4 * x) + 1e6]  # offsets far from zero
    rs = fit.fit_problems(sks, [X] * len(sks), ys)
    for m, r, y in zip(mags + ["offset", "offset"], rs, ys):
        assert r.success and r.r2 > 1 - 1e-8, (m, r.error, r.r2)
        np.testing.assert_allclose(_predict(r.expression, X), y, rtol=1e-5, atol=1e-6 * np.std(y))
        assert r.folded  # the normalisation folded into the skeleton's constants
    for m, r in zip(mags, rs):
        np.testing.assert_allclose(r.constants, [0.7 * m, 0.4, -1.1 * m], rtol=1e-3)
    np.testing.assert_allclose(rs[-2].constants, [2000, 300, 5e6], rtol=1e-4)
    np.testing.assert_allclose(rs[-1].constants, [0.7, 0.4, 1e6], rtol=1e-4)


def test_huge_inputs_and_unabsorbable_maps():
    Xh = 1e9 + 1e3 * X  # huge, offset-dominated input
    Xw = 1e7 * X  # huge spread
    sks = ["C*x1+C", "C*x1**2+C", "sin(x1)+C"]
    ys = [3.0 * Xh[:, 0] + 2.0, 2e-14 * Xw[:, 0] ** 2 + 1.0, np.sin(x) + 1e3]
    rs = fit.fit_problems(sks, [Xh, Xw, X], ys)
    for r, Xi, y in zip(rs, [Xh, Xw, X], ys):
        assert r.success and r.r2 > 1 - 1e-8, (r.skeleton, r.error)
        np.testing.assert_allclose(_predict(r.expression, Xi), y, rtol=1e-6)
    # y ~ 3e9: the intercept 2 is 1e-9 of y, found to float32 precision of the normalised data
    np.testing.assert_allclose(rs[0].constants, [3.0, 2.0], rtol=1e-6, atol=0.05)
    np.testing.assert_allclose(rs[1].constants, [2e-14, 1.0], rtol=1e-3)
    # "sin(x1)+C" cannot absorb a scale of y, so only its additive constant moves: exact form kept
    assert rs[2].folded and rs[2].constants == pytest.approx([1e3])


def test_could_not_fit_is_reported_not_success():
    y = 1e6 + 5.0 * x  # no constant of "sin(x1)" or "C*cos(x1)" can follow a trend this big
    rs = fit.fit_many(["sin(x1)", "C*cos(x1)", "C*x1+C"], X, y)
    for r in rs[:2]:
        assert not r.success and r.error.startswith("could not fit") and "R^2" in r.error, r.error
        assert r.mse_n == fit.FAILED_MSE_N and r.r2 < 0
    assert rs[2].success and rs[2].r2 > 1 - 1e-9


def test_extreme_magnitudes_say_why():
    # the raw float32 fit (scaling='off') cannot hold 1e12: the error says so and what to use instead
    with pytest.raises(ValueError, match=r"magnitude [0-9.]+e\+12.*scaling=.auto."):
        fit.fit_constants("C*x1+C", X, 1e12 * x, scaling="off")
    # the default normalises: 1e150 and 1e-200 are fine (statistics and metrics do not overflow)
    for m in (1e150, 1e-200):
        r = fit.fit_constants("C*x1+C", X, m * (2 * x + 1))
        assert r.success and r.constants == pytest.approx([2 * m, m], rel=1e-4)


def test_scaling_choice():
    Xc = np.column_stack([x, 1e9 + x, 1e-5 * x])
    sc = scaling.choose(Xc, 3 * x, "auto")
    assert sc.x_shift[0] == 0 and sc.x_scale[0] == 1  # well scaled: untouched
    assert sc.x_shift[1] == pytest.approx(1e9) and sc.x_scale[1] == pytest.approx(np.std(x))
    assert sc.x_shift[2] == 0 and sc.x_scale[2] == pytest.approx(1e-5 * np.std(x))  # spread only: no shift
    assert scaling.choose(Xc, 3 * x, "always").x_shift[0] == pytest.approx(np.mean(x))
    assert sc.y_shift == 0 and sc.y_scale == 1
    assert scaling.choose(Xc, 3 * x, "off").identity
    with pytest.raises(ValueError, match="scaling must be one of"):
        scaling.choose(Xc, x, "robust")
