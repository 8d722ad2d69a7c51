"""``SymbolicGPTRegressor``: sklearn-style symbolic regression around a candidate source.

    reg = SymbolicGPTRegressor(candidate_source=FixedCandidates(["C*x1+C", "C*sin(C*x1)+C"]))
    reg.fit(X, y).predict(X); reg.expression_; reg.candidates_

``fit`` asks the source for ``n_candidates`` skeletons, fits all their constants in one
batched call (``symreg.fit.fit_many``) and keeps the lowest MSE_N (ties: fewer nodes).
``candidates_`` lists every skeleton tried (dicts with skeleton, mse_n, complexity,
expression, success, error, pareto), so unparsable model outputs are visible, not fatal;
``pareto`` marks the error / complexity front. The neural model plugs in as a source.
"""

from __future__ import annotations

import numpy as np
import sympy

from symreg import expressions, fit, metrics
from symreg.candidates import CandidateSource, GeneratorCandidates


class SymbolicGPTRegressor:
    def __init__(
        self,
        candidate_source: CandidateSource | None = None,
        *,
        n_candidates: int = 32,
        n_starts: int = 16,
        backend: str = "bfgs",
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

    def get_params(self, deep: bool = True) -> dict:
        return {
            k: getattr(self, k)
            for k in ("candidate_source", "n_candidates", "n_starts", "backend", "seed", "max_vars", "fit_config")
        }

    def set_params(self, **params):
        for k, v in params.items():
            setattr(self, k, v)
        return self

    # --- from_pretrained: neural candidate source (issue 4, symreg.decoding) -------------
    @classmethod
    def from_pretrained(cls, workdir: str, *, n_samples: int | None = None, seed: int = 0, **kwargs):
        """A regressor whose candidates are sampled from the SymbolicGPT trained in ``workdir``
        (``python -m experiments.symbolicgpt train --workdir DIR`` saves it in ``DIR/model``)."""
        from symreg.decoding import NeuralCandidateSource

        source = NeuralCandidateSource.from_pretrained(workdir, n_samples=n_samples, seed=seed)
        return cls(candidate_source=source, n_candidates=source.n_samples, seed=seed, **kwargs)

    # --- end from_pretrained ------------------------------------------------------------

    def fit(self, X, y):
        X, y = fit.check_data(X, y, max_vars=self.max_vars)
        if self.n_candidates < 1:
            raise ValueError(f"n_candidates must be >= 1, got {self.n_candidates}")
        source = self.candidate_source or GeneratorCandidates(seed=self.seed)
        skeletons = list(dict.fromkeys(source.propose(X, y, self.n_candidates)))
        if not skeletons:
            raise ValueError("the candidate source proposed no skeletons")
        cfg = self.fit_config or fit.FitConfig()
        results = fit.fit_many(skeletons, X, y, seed=self.seed, cfg=cfg, n_starts=self.n_starts, backend=self.backend)
        self.n_features_in_ = X.shape[1]
        self.candidates_ = _with_pareto(
            [
                {
                    "skeleton": r.skeleton,
                    "mse_n": r.mse_n,
                    "complexity": r.complexity,
                    "expression": r.expression,
                    "constants": r.constants,
                    "success": r.success,
                    "error": r.error,
                }
                for r in results
            ]
        )
        ok = [c for c in self.candidates_ if c["success"]]
        if not ok:
            raise ValueError(f"none of the {len(skeletons)} candidate skeletons could be fitted; see candidates_")
        best = min(ok, key=lambda c: (c["mse_n"], c["complexity"]))
        self.skeleton_ = best["skeleton"]
        self.expression_ = best["expression"]
        self.constants_ = best["constants"]
        self.mse_n_ = best["mse_n"]
        self._predict_fn = sympy.lambdify(expressions.X_SYMBOLS[: X.shape[1]], self.expression_, "numpy")
        return self

    def predict(self, X) -> np.ndarray:
        if not hasattr(self, "expression_"):
            raise ValueError("this SymbolicGPTRegressor is not fitted yet; call fit(X, y) first")
        X = np.asarray(X, np.float64)
        if X.ndim == 1:
            X = X[:, None]
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must have shape (n, {self.n_features_in_}), got {X.shape}")
        with np.errstate(all="ignore"):
            return np.broadcast_to(np.asarray(self._predict_fn(*X.T), np.float64), (X.shape[0],)).copy()

    def score(self, X, y) -> float:
        """R^2 on (X, y), as sklearn regressors."""
        return metrics.r2(y, self.predict(X))


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
