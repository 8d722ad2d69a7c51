"""Baselines behind one interface: ``fit(X, y)``, ``predict(X)``, ``expression_`` (sympy,
or None for the black-box MLP) and ``fit_seconds_`` (wall time of the last fit).

* ``GPLearnBaseline``: gplearn ``SymbolicRegressor``, population 1000, 10 generations
  (thesis settings). gplearn 0.4.3 runs on scikit-learn 1.9 as installed here (checked
  by the tests); if a future scikit-learn drops ``BaseEstimator._validate_data``, the
  small shim below supplies it from ``sklearn.utils.validation.validate_data``.
* ``MLPBaseline``: scikit-learn ``MLPRegressor``.
* ``OperonBaseline``: pyoperon's sklearn ``SymbolicRegressor``.
Expensive settings are constructor arguments so tests can use tiny ones.

Not included: **DSR** (deep symbolic regression, ``dso`` from
github.com/dso-org/deep-symbolic-optimization). It is not installable from the package
registry here: ``pip download deep-symbolic-optimization`` finds no distribution (the project
publishes none; its ``setup.py`` names the package ``dso``, and the PyPI ``dso`` is an
unrelated "Python bindings for the DSO datastore", 0.0.5). Installing from GitHub is not
possible offline, and DSO's ``dso/setup.py`` pins ``tensorflow==1.14``, ``numpy<=1.19`` and
``numba==0.53.1``, none of which installs on this Python 3.11 (``pip download
tensorflow==1.14.0`` finds no matching distribution; TensorFlow 1.14 wheels stop at Python 3.7).
"""

from __future__ import annotations

import re
import time

import numpy as np
import sympy

import symreg.expressions as expressions
import symreg.fit as fit


class _Timed:
    expression_: sympy.Expr | None = None
    fit_seconds_: float

    def fit(self, X, y):
        X, y = fit.check_data(X, y)
        t0 = time.perf_counter()
        self._fit(X, y)
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def predict(self, X) -> np.ndarray:
        X = np.asarray(X, np.float64)
        return np.asarray(self.model_.predict(X[:, None] if X.ndim == 1 else X), np.float64)


def _gplearn_compat(cls):
    """gplearn 0.4.3 calls ``self._validate_data``, removed from newer scikit-learn."""
    if not hasattr(cls, "_validate_data"):
        from sklearn.utils.validation import validate_data

        cls._validate_data = lambda self, *a, **k: validate_data(self, *a, **k)
    return cls


_GP_FUNCS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "sqrt": lambda a: sympy.sqrt(sympy.Abs(a)),
    "log": lambda a: sympy.log(sympy.Abs(a)),
    "neg": lambda a: -a,
    "inv": lambda a: 1 / a,
    "abs": sympy.Abs,
    "max": sympy.Max,
    "min": sympy.Min,
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
}


def _variables(prefix: str, offset: int) -> dict:
    return {f"{prefix}{i - 1 + offset}": s for i, s in enumerate(expressions.X_SYMBOLS, 1)}


class GPLearnBaseline(_Timed):
    def __init__(
        self,
        *,
        population_size: int = 1000,
        generations: int = 10,
        random_state: int = 0,
        function_set=("add", "sub", "mul", "div", "sin", "cos", "log", "sqrt"),
        **kwargs,
    ):
        self.kwargs = dict(
            population_size=population_size,
            generations=generations,
            random_state=random_state,
            function_set=tuple(function_set),
            **kwargs,
        )

    def _fit(self, X, y):
        from gplearn.genetic import SymbolicRegressor

        _gplearn_compat(SymbolicRegressor)
        self.model_ = SymbolicRegressor(**self.kwargs).fit(X, y)
        self.expression_ = _gplearn_to_sympy(self.model_._program.program)


def _gplearn_to_sympy(prefix: list) -> sympy.Expr:
    """gplearn's prefix program (full-precision constants, unlike its 3-decimal str()) to sympy.
    Protected operators (|x| in log / sqrt, guarded division near 0) are approximated."""
    pos = 0

    def walk():
        nonlocal pos
        node = prefix[pos]
        pos += 1
        if isinstance(node, (int, np.integer)):
            return expressions.X_SYMBOLS[int(node)]
        if isinstance(node, (float, np.floating)):
            return sympy.Float(float(node), 15)
        return _GP_FUNCS[node.name](*[walk() for _ in range(node.arity)])

    return walk()


class MLPBaseline(_Timed):
    """Black box: ``expression_`` is None."""

    def __init__(self, *, hidden_layer_sizes=(64, 64), max_iter: int = 2000, random_state: int = 0, **kwargs):
        self.kwargs = dict(
            hidden_layer_sizes=tuple(hidden_layer_sizes), max_iter=max_iter, random_state=random_state, **kwargs
        )

    def _fit(self, X, y):
        from sklearn.neural_network import MLPRegressor

        self.model_ = MLPRegressor(**self.kwargs).fit(X, y)
        self.expression_ = None


class OperonBaseline(_Timed):
    def __init__(
        self,
        *,
        generations: int = 1000,
        population_size: int = 1000,
        max_length: int = 50,
        random_state: int = 0,
        n_threads: int = 1,
        **kwargs,
    ):
        self.kwargs = dict(
            generations=generations,
            population_size=population_size,
            max_length=max_length,
            random_state=random_state,
            n_threads=n_threads,
            **kwargs,
        )

    def _fit(self, X, y):
        from pyoperon.sklearn import SymbolicRegressor

        self.model_ = SymbolicRegressor(**self.kwargs).fit(X, y)
        text = self.model_.get_model_string(self.model_.model_, 8)
        text = re.sub(r"\^", "**", text)
        self.expression_ = sympy.sympify(text, locals=_variables("X", 1))
