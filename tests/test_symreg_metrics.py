import numpy as np
import pytest
import sympy

from symreg import metrics


def test_mse_n_hand_computed():
    y = np.array([1.0, 2.0, 3.0])
    y_hat = np.array([1.5, 2.0, 2.0])
    # (0.25 + 0 + 1) / 3 / ||y + 1e-5||_2
    expect = (1.25 / 3) / np.sqrt((1 + 1e-5) ** 2 + (2 + 1e-5) ** 2 + (3 + 1e-5) ** 2)
    assert metrics.mse_n(y, y_hat) == pytest.approx(expect, rel=1e-12)
    assert metrics.mse_n(y, y_hat) == pytest.approx(0.111358, rel=1e-5)
    assert metrics.log10_mse_n(y, y_hat) == pytest.approx(np.log10(expect))
    assert metrics.log10_mse_n(y, y) == -30.0
    assert metrics.mse_n(y, [1.0, np.nan, 3.0]) == float("inf")
    with pytest.raises(ValueError, match="3 values but y_hat has 2"):
        metrics.mse_n(y, y_hat[:2])


def test_r2():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert metrics.r2(y, y) == 1.0
    assert metrics.r2(y, np.full(4, 2.5)) == 0.0
    assert metrics.r2(y, y + 1.0) == pytest.approx(1 - 4 / 5)


def test_symbolic_recovery():
    x1 = sympy.Symbol("x1")
    truth = 1.3 * sympy.sin(2.8 * x1) + 0.5
    assert metrics.symbolic_recovery(1.30002 * sympy.sin(2.79999 * x1) + 0.50001, truth)
    assert metrics.symbolic_recovery(1.3 * sympy.sin(2.8 * x1) + 7.0, truth)  # differs by a constant
    assert metrics.symbolic_recovery("2*x1**2", "x1**2")  # ratio is a constant
    assert not metrics.symbolic_recovery(1.3 * sympy.sin(2.7 * x1) + 0.5, truth)
    assert not metrics.symbolic_recovery("x1**3", "x1**2")


@pytest.mark.parametrize(
    "fitted, truth",
    [
        ("log(x1+1.0)", "log(x1+1)"),  # float vs integer constant
        ("x1**2.0*0.5", "x1**2/2"),
        ("sin(x1)*cos(x1)", "sin(2*x1)/2"),  # trigonometric identity
        ("exp(x1+0.69314718)", "2*exp(x1)"),  # e^(ln 2) = 2 up to rounding, ratio constant
        ("(x1+1)**2", "x1**2+2*x1+3"),  # differ by a constant
        ("3.0001*x1*x2", "x1*x2"),  # ratio constant
        ("1.0/(1.0+exp(-x1))", "exp(x1)/(exp(x1)+1)"),
    ],
)
def test_symbolic_recovery_equivalent_forms(fitted, truth):
    assert metrics.symbolic_recovery(fitted, truth)


@pytest.mark.parametrize(
    "fitted, truth", [("log(x1+2.0)", "log(x1+1)"), ("x1*x2", "x1+x2"), ("0", "x1"), ("sqrt(x1)", "x1**0.501")]
)
def test_symbolic_recovery_rejects_different_forms(fitted, truth):
    assert not metrics.symbolic_recovery(fitted, truth)
