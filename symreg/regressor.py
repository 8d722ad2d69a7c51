"""``SymbolicGPTRegressor``: a scikit-learn regressor around a candidate source.

    reg = SymbolicGPTRegressor.from_pretrained("runs/symbolicgpt")   # a trained SymbolicGPT
    reg.fit(X, y).predict(X); reg.sympy(); reg.latex(); reg.jax()(X); reg.equations_
    SymbolicGPTRegressor(candidate_source=FixedCandidates(["C*x1+C", "C*sin(C*x1)+C"]))

``fit`` asks the source for ``n_candidates`` skeletons, fits all their constants in one
batched call (``symreg.fit.fit_many``) and keeps the lowest MSE_N (ties: fewer nodes).
``candidates_`` lists every skeleton tried (dicts with skeleton, mse_n, r2, complexity,
expression, success, error, pareto), so unparsable model outputs are visible, not fatal;
``equations_`` is the Pareto front (complexity, loss, expression) as a pandas DataFrame, as
PySR's. Without a source, ``fit`` raises: ``candidate_source="generator"`` opts in to
random skeletons from the thesis generator (a search, not a trained model).

scikit-learn: ``check_estimator`` passes except the checks listed, with the reason, by
:meth:`SymbolicGPTRegressor.expected_failed_checks`; ``clone``, pipelines and
``cross_val_score`` work. The same seed gives the same result on every fit (sources with a
``reseed(seed)`` method, such as the neural one, are reseeded before each fit). SRBench's
interface: :meth:`model` (a sympy-parsable string) and :meth:`complexity`, also as the
module functions :func:`model` and :func:`complexity`.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import sympy
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

import symreg.cache as cache
import symreg.expressions as expressions
import symreg.fit as fit
import symreg.metrics as metrics
from symreg.candidates import GeneratorCandidates
from symreg.decoding import NeuralCandidateSource

NO_SOURCE = (
    "SymbolicGPTRegressor has no candidate_source: load a trained model with "
    "SymbolicGPTRegressor.from_pretrained(workdir), pass candidate_source=<an object with propose(X, y, n)>, "
    "or opt in to a random search over the thesis generator with candidate_source='generator'"
)


class SymbolicGPTRegressor(RegressorMixin, BaseEstimator):
    """``fit_config`` (a ``symreg.fit.FitConfig``; default ``FitConfig()``, ours) is the base of
    the constant fit; ``n_starts`` / ``backend`` override it when given. The thesis protocol:
    ``n_candidates=1, fit_config=FitConfig.thesis()``."""

    def __init__(
        self,
        candidate_source=None,
        *,
        n_candidates: int = 32,
        n_starts: int | None = None,
        backend: str | None = None,
        seed: int = 0,
        max_vars: int = expressions.MAX_VARS,
        fit_config: fit.FitConfig | None = None,
    ):
        self.candidate_source = candidate_source
        self.n_candidates = n_candidates
        self.n_starts = n_starts
        self.backend = backend
        self.seed = seed
        self.max_vars = max_vars
        self.fit_config = fit_config

    @classmethod
    def from_pretrained(cls, workdir: str, *, n_samples: int | None = None, seed: int = 0, **kwargs):
        """A regressor whose candidates are sampled from the SymbolicGPT trained in ``workdir``
        (``python -m experiments.symbolicgpt train --workdir DIR`` saves it in ``DIR/model``)."""

        cache.enable_compilation_cache()
        source = NeuralCandidateSource.from_pretrained(workdir, n_samples=n_samples, seed=seed)
        return cls(candidate_source=source, n_candidates=source.n_samples, seed=seed, **kwargs)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.regressor_tags.poor_score = True  # a random generator search is not expected to score well
        return tags

    @staticmethod
    def expected_failed_checks() -> dict[str, str]:
        """sklearn ``check_estimator`` checks that fail by design, with the reason (pass as
        ``check_estimator(est, expected_failed_checks=SymbolicGPTRegressor.expected_failed_checks())``)."""
        why = (
            "sklearn's regression dataset has 10 features; SymbolicGPT's vocabulary and generator cover at "
            f"most {expressions.MAX_VARS} variables (x1..x{expressions.MAX_VARS}), so fit raises ValueError"
        )
        names = (
            "check_regressors_train",
            "check_regressor_data_not_an_array",
            "check_regressors_int",
            "check_dtype_object",
            "check_fit2d_1sample",  # 10 features and 1 sample: the error names the 10 variables, not the sample
        )
        return dict.fromkeys(names, why)

    def _fit_config(self) -> fit.FitConfig:
        over = {k: v for k, v in (("n_starts", self.n_starts), ("backend", self.backend)) if v is not None}
        return dataclasses.replace(self.fit_config or fit.FitConfig(), **over)

    def _source(self):
        src = self.candidate_source
        if src is None:
            raise ValueError(NO_SOURCE)
        if isinstance(src, str):
            if src != "generator":
                raise ValueError(
                    f"candidate_source must be 'generator' or an object with propose(X, y, n), got {src!r}"
                )
            return GeneratorCandidates(seed=self.seed)
        if not callable(getattr(src, "propose", None)):
            raise ValueError(f"candidate_source must have a propose(X, y, n) method, got {type(src).__name__}")
        if callable(getattr(src, "reseed", None)):
            src.reseed(self.seed)  # the same samples on every fit with this seed
        return src

    def fit(self, X, y):
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        X, y = fit.check_data(X, y, max_vars=self.max_vars)
        if not (isinstance(self.n_candidates, (int, np.integer)) and self.n_candidates >= 1):
            raise ValueError(f"n_candidates must be an int >= 1, got {self.n_candidates!r}")
        cfg = self._fit_config()
        source = self._source()
        cache.enable_compilation_cache()
        skeletons = list(dict.fromkeys(source.propose(X, y, self.n_candidates)))
        if not skeletons:
            raise ValueError("the candidate source proposed no skeletons")
        results = fit.fit_many(skeletons, X, y, seed=self.seed, cfg=cfg)
        self.candidates_ = _with_pareto([_record(r, X, y) for r in results])
        ok = [c for c in self.candidates_ if c["success"]]
        if not ok:
            reasons = "; ".join(sorted({str(c["error"]) for c in self.candidates_})[:3])
            raise ValueError(
                f"none of the {len(skeletons)} candidate skeletons could be fitted ({reasons}); see candidates_"
            )
        best = min(ok, key=lambda c: (c["mse_n"], c["complexity"]))
        self.skeleton_ = best["skeleton"]
        self.expression_ = best["expression"]
        self.constants_ = best["constants"]
        self.mse_n_ = best["mse_n"]
        self.equations_ = _front_table(self.candidates_)
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "expression_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        f = _numpy_fn(self.expression_, self.n_features_in_)
        with np.errstate(all="ignore"):
            return np.broadcast_to(np.asarray(f(*X.T), np.float64), (X.shape[0],)).copy()

    # --- the chosen expression in other forms -------------------------------------------
    def sympy(self) -> sympy.Expr:
        """The chosen expression (variables x1..xd)."""
        check_is_fitted(self, "expression_")
        return self.expression_

    def latex(self, precision: int = 4) -> str:
        check_is_fitted(self, "expression_")
        return sympy.latex(_round(self.expression_, precision))

    def jax(self):
        """A jitted JAX function ``f(X (n, d)) -> y (n,)`` of the chosen expression."""
        import jax
        import jax.numpy as jnp

        check_is_fitted(self, "expression_")
        g = sympy.lambdify(expressions.X_SYMBOLS[: self.n_features_in_], self.expression_, "jax")
        return jax.jit(lambda X: jnp.broadcast_to(g(*jnp.asarray(X).T), (jnp.shape(X)[0],)))

    def model(self, X=None) -> str:
        """SRBench: the expression as a sympy-parsable string, variables named after the
        columns of ``X`` (a DataFrame) or of the fitted DataFrame, else x1..xd."""
        check_is_fitted(self, "expression_")
        names = list(getattr(X, "columns", None) if X is not None else getattr(self, "feature_names_in_", []))
        expr = self.expression_
        if names:
            expr = expr.xreplace({expressions.X_SYMBOLS[j]: sympy.Symbol(str(n)) for j, n in enumerate(names)})
        return sympy.sstr(expr)

    def complexity(self) -> int:
        """SRBench: the number of nodes of the chosen sympy expression."""
        check_is_fitted(self, "expression_")
        return sum(1 for _ in sympy.preorder_traversal(self.expression_))


def model(est: SymbolicGPTRegressor, X=None) -> str:
    """SRBench's ``model(est, X)``."""
    return est.model(X)


def complexity(est: SymbolicGPTRegressor) -> int:
    """SRBench's ``complexity(est)``."""
    return est.complexity()


@functools.lru_cache(maxsize=256)
def _numpy_fn(expr: sympy.Expr, n_vars: int):
    return sympy.lambdify(expressions.X_SYMBOLS[:n_vars], expr, "numpy")


def _round(expr: sympy.Expr, digits: int) -> sympy.Expr:
    return expr.xreplace({f: sympy.Float(f, digits) for f in expr.atoms(sympy.Float)})


def _record(r: fit.FitResult, X: np.ndarray, y: np.ndarray) -> dict:
    """One candidate; error, loss (MSE) and MSE_N of the expression itself in float64 (what
    ``predict`` returns), so the choice and the Pareto front rank what the user gets."""
    rec = {"skeleton": r.skeleton, "mse_n": r.mse_n, "r2": r.r2, "loss": float("inf"), "complexity": r.complexity}
    rec.update(expression=r.expression, constants=r.constants, success=r.success, error=r.error)
    if r.success:
        with np.errstate(all="ignore"):
            y_hat = np.broadcast_to(np.asarray(_numpy_fn(r.expression, X.shape[1])(*X.T), np.float64), y.shape)
        if np.all(np.isfinite(y_hat)):
            rec.update(loss=float(np.mean((y - y_hat) ** 2)), mse_n=metrics.mse_n(y, y_hat))
        else:
            rec.update(success=False, mse_n=fit.FAILED_MSE_N, error="could not fit: the expression is not finite on X")
    return rec


def _with_pareto(cands: list[dict]) -> list[dict]:
    for c in cands:
        c["pareto"] = c["success"] and not any(
            o["success"]
            and o["mse_n"] <= c["mse_n"]
            and o["complexity"] <= c["complexity"]
            and (o["mse_n"] < c["mse_n"] or o["complexity"] < c["complexity"])
            for o in cands
        )
    return cands


def _front_table(cands: list[dict]):
    """The Pareto front as PySR's ``equations_``: one row per complexity, by complexity."""
    import pandas as pd

    rows = sorted((c for c in cands if c["pareto"]), key=lambda c: (c["complexity"], c["mse_n"]))
    seen: set = set()
    front = [c for c in rows if not (c["complexity"] in seen or seen.add(c["complexity"]))]
    return pd.DataFrame(
        {
            "complexity": [c["complexity"] for c in front],
            "loss": [c["loss"] for c in front],
            "mse_n": [c["mse_n"] for c in front],
            "r2": [c["r2"] for c in front],
            "equation": [sympy.sstr(c["expression"]) for c in front],
            "skeleton": [c["skeleton"] for c in front],
            "sympy_format": [c["expression"] for c in front],
        }
    )
