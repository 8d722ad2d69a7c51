import numpy as np
import sympy

from symreg import baselines
from symreg.expressions import X_SYMBOLS

RNG = np.random.default_rng(0)
X = RNG.uniform(-2, 2, size=(40, 2))
Y = 2.0 * X[:, 0] + X[:, 1]


def _agree(model):
    f = sympy.lambdify(X_SYMBOLS[:2], model.expression_, "numpy")
    with np.errstate(all="ignore"):
        pred = np.broadcast_to(np.asarray(f(X[:, 0], X[:, 1]), float), (len(X),))
    np.testing.assert_allclose(pred, model.predict(X), rtol=1e-4, atol=1e-4)


def test_gplearn_tiny():
    m = baselines.GPLearnBaseline(population_size=60, generations=3, function_set=("add", "sub", "mul"))
    m.fit(X, Y)
    assert m.fit_seconds_ > 0 and m.predict(X).shape == (40,)
    _agree(m)
    assert baselines.GPLearnBaseline().kwargs["population_size"] == 1000


def test_mlp_tiny():
    m = baselines.MLPBaseline(hidden_layer_sizes=(8,), max_iter=200).fit(X, Y)
    assert m.expression_ is None and m.fit_seconds_ > 0 and m.predict(X).shape == (40,)
    assert np.mean((m.predict(X) - Y) ** 2) < 0.5 * np.var(Y)  # it learned something beyond the mean


def test_operon_tiny():
    m = baselines.OperonBaseline(generations=5, population_size=50, max_length=10).fit(X, Y)
    assert m.fit_seconds_ > 0
    _agree(m)
    assert np.mean((m.predict(X) - Y) ** 2) < np.var(Y)
