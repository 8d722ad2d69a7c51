"""Affine normalisation of a fitting problem, folded back into the fitted expression.

The fit runs in float32 with constants drawn around 1, so data far from unit scale (targets in
the millions, a large offset, inputs of 1e9) would leave it with rounding noise and useless
gradients. :func:`choose` picks per column of X and for y a shift ``m`` and scale ``s``; the
fit sees ``x' = (x - m_x) / s_x`` and ``y' = (y - m_y) / s_y``, and :func:`to_original` turns a
fitted expression ``g(x')`` back into ``m_y + s_y * g((x - m_x) / s_x)``: an expression in
the original units (sympy folds the numbers into the expression's constants, so
``C*x1+C`` stays ``C*x1+C``).

The target's map is only used as far as the skeleton absorbs it (:func:`absorbable`). A
map of X that the skeleton cannot absorb still gives an exact expression in original units,
but one with the map's numbers beside the skeleton's constants (``FitResult.folded`` False).

Modes: ``"off"`` (identity; the thesis protocol), ``"always"`` (standardise every column and
y) and ``"auto"`` (default): only what is badly scaled, so well-scaled problems keep the
exact skeleton family (a shift inside ``sin(C*x1)`` would add a phase the skeleton lacks).
A column (or y) whose offset dominates (``|mean| > OFFSET * std``) is standardised (mean 0,
std 1); one whose spread is outside ``[SMALL, LARGE]`` is only divided by its std (a scale
folds into far more skeletons than a shift); a large constant column is shifted to 0. Statistics are computed in float64 after dividing by the largest
magnitude, so values up to float64's maximum do not overflow.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import sympy

import symreg.expressions as expressions

MODES = ("auto", "always", "off")
OFFSET = 10.0
SMALL, LARGE = 1e-2, 1e2


@dataclasses.dataclass(frozen=True)
class Scaling:
    x_shift: np.ndarray  # (D,)
    x_scale: np.ndarray  # (D,)
    y_shift: float
    y_scale: float

    @property
    def identity(self) -> bool:
        return not np.any(self.x_shift) and np.all(self.x_scale == 1.0) and self.y_shift == 0.0 and self.y_scale == 1.0

    def x(self, X: np.ndarray) -> np.ndarray:
        return (X - self.x_shift) / self.x_scale

    def y(self, y: np.ndarray) -> np.ndarray:
        return (y - self.y_shift) / self.y_scale

    def y_back(self, y_scaled: np.ndarray) -> np.ndarray:
        return self.y_shift + self.y_scale * np.asarray(y_scaled, np.float64)


def _stats(v: np.ndarray) -> tuple[float, float]:
    """Mean and std of v, overflow-free for any finite values."""
    big = float(np.max(np.abs(v))) if v.size else 0.0
    if big == 0.0:
        return 0.0, 0.0
    u = v / big
    return float(np.mean(u)) * big, float(np.std(u)) * big


def _column(v: np.ndarray, mode: str) -> tuple[float, float]:
    if mode == "off":
        return 0.0, 1.0
    mean, std = _stats(v)
    if mode == "always":
        return mean, (std if std > 0.0 else 1.0)
    if std == 0.0:  # a constant: shifted to 0 only when it is large
        return (mean, 1.0) if abs(mean) > LARGE else (0.0, 1.0)
    shift = abs(mean) > OFFSET * std  # offset-dominated: the variation drowns in float32 rounding
    scale = shift or not SMALL <= std <= LARGE
    return (mean if shift else 0.0), (std if scale else 1.0)


def choose(X: np.ndarray, y: np.ndarray, mode: str = "auto") -> Scaling:
    """The normalisation of (X (n, d), y (n,)) for ``mode`` (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"scaling must be one of {MODES}, got {mode!r}")
    cols = [_column(X[:, j], mode) for j in range(X.shape[1])]
    y_shift, y_scale = _column(y, mode)
    return Scaling(
        x_shift=np.array([c[0] for c in cols], np.float64),
        x_scale=np.array([c[1] for c in cols], np.float64),
        y_shift=y_shift,
        y_scale=y_scale,
    )


def absorbable(sc: Scaling, expr: sympy.Expr, consts) -> Scaling:
    """``sc`` without the parts of the target's map the skeleton cannot absorb: a shift of y
    needs an additive constant at the top (``...+C``), a scale of y a constant factor on every
    top-level term (``C*...``), so the fitted expression stays of the skeleton's form."""
    consts = set(consts)
    terms = expr.args if expr.is_Add else (expr,)
    shift = expr.is_Add and any(t in consts for t in terms)
    scale = all(t in consts or (t.is_Mul and any(a in consts for a in t.args)) for t in terms)
    return dataclasses.replace(sc, y_shift=sc.y_shift if shift else 0.0, y_scale=sc.y_scale if scale else 1.0)


def to_original(expr: sympy.Expr, sc: Scaling) -> sympy.Expr:
    """``g(x')`` fitted on scaled data -> ``m_y + s_y * g((x - m_x) / s_x)`` in original units."""
    if sc.identity:
        return expr
    sub = {
        expressions.X_SYMBOLS[j]: (expressions.X_SYMBOLS[j] - sympy.Float(m)) / sympy.Float(s)
        for j, (m, s) in enumerate(zip(sc.x_shift, sc.x_scale))
        if m != 0.0 or s != 1.0
    }
    out = expr.xreplace(sub) if sub else expr
    if sc.y_scale != 1.0:
        out = sympy.Float(sc.y_scale) * out
    if sc.y_shift != 0.0:
        out = out + sympy.Float(sc.y_shift)
    return out
