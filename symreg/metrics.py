"""Error metrics: thesis MSE_N (eq. 2.4.5), its log10, R^2 and symbolic recovery."""

from __future__ import annotations

import numpy as np
import sympy

EPS = 1e-5  # the eps of eq. 2.4.5 (also the SymbolicGPT code's default)


def _pair(y, y_hat) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, np.float64).reshape(-1)
    y_hat = np.asarray(y_hat, np.float64).reshape(-1)
    if y.shape != y_hat.shape:
        raise ValueError(f"y has {y.size} values but y_hat has {y_hat.size}")
    if y.size == 0:
        raise ValueError("y is empty")
    return y, y_hat


def mse_n(y, y_hat, eps: float = EPS) -> float:
    """MSE_N = (1/n) sum_i (y_i - y_hat_i)^2 / ||y + eps||_2  (thesis eq. 2.4.5).

    Non-finite predictions give +inf (the caller decides how to report them)."""
    y, y_hat = _pair(y, y_hat)
    if not np.all(np.isfinite(y_hat)):
        return float("inf")
    return float(np.mean((y - y_hat) ** 2) / np.linalg.norm(y + eps))


def log10_mse_n(y, y_hat, eps: float = EPS, floor: float = 1e-30) -> float:
    """log10(MSE_N), with MSE_N floored at ``floor`` so exact fits stay finite."""
    return float(np.log10(max(mse_n(y, y_hat, eps), floor)))


def r2(y, y_hat) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot (as sklearn's r2_score)."""
    y, y_hat = _pair(y, y_hat)
    ss_res = float(np.sum((y - y_hat) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def _round_floats(expr: sympy.Expr, decimals: int) -> sympy.Expr:
    tol = 10.0 ** (-decimals)
    repl = {}
    for f in expr.atoms(sympy.Float):
        v = round(float(f), decimals)
        repl[f] = sympy.Integer(0) if abs(v) < tol else sympy.Float(v, 15)
    return expr.xreplace(repl)


def symbolic_recovery(fitted, truth, decimals: int = 3) -> bool:
    """True if, after rounding fitted constants to ``decimals`` places, fitted - truth or
    fitted / truth simplifies to a constant (the thesis' notion of recovering the equation).

    ``fitted`` and ``truth`` are sympy expressions or strings in x1..x9."""
    f = sympy.sympify(fitted) if isinstance(fitted, str) else fitted
    t = sympy.sympify(truth) if isinstance(truth, str) else truth
    f = _round_floats(f, decimals)
    t = _round_floats(t, decimals)
    for cand in (f - t, f / t):
        try:
            c = _round_floats(sympy.simplify(cand), decimals)
        except Exception:  # sympy can fail on odd inputs; treat as not recovered
            continue
        if not c.free_symbols and c.is_finite is not False and c != sympy.nan:
            if cand is not f - t and c == 0:  # ratio 0 means fitted is 0, not a recovery
                continue
            return True
    return False
