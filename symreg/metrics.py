"""Error metrics: thesis MSE_N (eq. 2.4.5), its log10, R^2 and symbolic recovery (SRBench)."""

from __future__ import annotations

import numpy as np
import sympy

from symreg.expressions import SYMPY_FUNCS, X_SYMBOLS

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
    r = y - y_hat
    s = float(np.max(np.abs(r))) or 1.0  # squares of residuals beyond 1e154 would overflow: scale first
    with np.errstate(over="ignore"):
        return float(s * (s * np.mean((r / s) ** 2)) / np.linalg.norm(y + eps))


def log10_mse_n(y, y_hat, eps: float = EPS, floor: float = 1e-30) -> float:
    """log10(MSE_N), with MSE_N floored at ``floor`` so exact fits stay finite."""
    return float(np.log10(max(mse_n(y, y_hat, eps), floor)))


def r2(y, y_hat) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot (as sklearn's r2_score); -inf for
    non-finite predictions."""
    y, y_hat = _pair(y, y_hat)
    if not np.all(np.isfinite(y_hat)):
        return float("-inf")
    s = float(max(np.max(np.abs(y - y.mean())), np.max(np.abs(y - y_hat)))) or 1.0  # overflow-free ratio
    ss_res = float(np.sum(((y - y_hat) / s) ** 2))
    ss_tot = float(np.sum(((y - y.mean()) / s) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def _rationalise(expr: sympy.Expr, decimals: int) -> sympy.Expr:
    """Every float rounded to ``decimals`` places and made an exact rational (``1.0 -> 1``,
    ``0.5 -> 1/2``, ``1e-9 -> 0``), so that float and integer forms of a constant agree."""
    repl = {f: sympy.Rational(repr(round(float(f), decimals))) for f in expr.atoms(sympy.Float)}
    return expr.xreplace(repl)


def _parse(e) -> sympy.Expr:
    if isinstance(e, str):
        return sympy.sympify(e, locals={**{str(x): x for x in X_SYMBOLS}, **SYMPY_FUNCS})
    return sympy.sympify(e)


def _numerically_not_constant(e: sympy.Expr, n: int = 16) -> bool:
    """True if ``e`` takes clearly different finite values at random points (so it cannot
    simplify to a constant); False when unsure (too few finite values)."""
    syms = sorted(e.free_symbols, key=str)
    if not syms:
        return False
    try:
        g = sympy.lambdify(syms, e, "numpy")
        pts = np.random.default_rng(0).uniform(0.5, 2.0, size=(len(syms), n))
        with np.errstate(all="ignore"):
            v = np.asarray(g(*pts), np.complex128).reshape(-1)
    except Exception:  # not evaluable numerically: let simplify decide
        return False
    v = v[np.isfinite(v)]
    if v.size < 4:
        return False
    return bool(np.max(np.abs(v - v[0])) > 1e-6 * (1.0 + np.max(np.abs(v))))


def symbolic_recovery(fitted, truth, decimals: int = 3) -> bool:
    """SRBench's symbolic solution: after rationalising the constants of both (rounded to
    ``decimals`` places), ``fitted - truth`` simplifies to a constant or ``fitted / truth``
    to a non-zero constant. So ``log(x1+1.0)`` recovers ``log(x1+1)``, ``2*x1**2`` recovers
    ``x1**2`` and ``x1**2+7`` recovers ``x1**2``; ``x1**3`` does not recover ``x1**2``.

    ``fitted`` and ``truth`` are sympy expressions or strings in x1..x9."""
    f = _rationalise(_parse(fitted), decimals)
    t = _rationalise(_parse(truth), decimals)
    if t == 0:
        return f == 0
    if _numerically_not_constant(f - t) and _numerically_not_constant(f / t):
        return False  # sound shortcut: simplify (slow, sometimes minutes) only for candidates that may match
    for cand, is_ratio in ((f - t, False), (f / t, True)):
        try:
            c = sympy.simplify(cand)
        except Exception:  # sympy can fail on odd inputs; treat as not recovered
            continue
        if c.free_symbols:
            continue
        if c.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo) or (is_ratio and c == 0):
            continue  # a ratio of 0 means fitted is 0, not a recovery
        return True
    return False
