"""Nguyen and Feynman benchmark equations (``symreg/data/nguyen_feynman.csv``).

Each row has ``name, expr, n_vars, sampling, variables``; expressions are in x1..x9.
Sampling, as the CSV documents it:
  * Nguyen-*: every variable ~ U[a, b] with the range given in ``sampling``
    ("train: all vars ~ U[a,b], N random points"), N points (20); the test split is a fresh
    sample from the same distribution.
  * Feynman-*: variable j ~ U[low_j, high_j] from the JSON in ``variables``. The AI
    Feynman files have 1e5 rows; we draw ``n_points`` (default 500) fresh rows per split.

    eqs = load_benchmark_equations()              # list[BenchmarkEquation]
    inst = sample_benchmark(eqs[0], seed=0)       # {"X", "y", "skeleton", "expr", "n_vars", "name"}
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re

import numpy as np
import sympy

import symreg.expressions as expressions

FEYNMAN_POINTS = 500
DATA_FILE = os.path.join(os.path.dirname(__file__), "data", "nguyen_feynman.csv")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchmarkEquation:
    name: str
    expr: str
    n_vars: int
    ranges: tuple[tuple[float, float], ...]  # per variable
    n_points: int

    @property
    def sympy_expr(self) -> sympy.Expr:
        local = {f"x{i}": s for i, s in enumerate(expressions.X_SYMBOLS, 1)}
        return sympy.sympify(self.expr, locals=local)


def _parse_row(row: dict) -> BenchmarkEquation:
    d = int(row["n_vars"])
    if row["name"].startswith("Nguyen"):
        m = re.search(r"U\[([-\d.]+),\s*([-\d.]+)\],\s*(\d+) random points", row["sampling"])
        if not m:
            raise ValueError(f"{row['name']}: cannot read sampling {row['sampling']!r}")
        lo, hi, n = float(m.group(1)), float(m.group(2)), int(m.group(3))
        return BenchmarkEquation(name=row["name"], expr=row["expr"], n_vars=d, ranges=((lo, hi),) * d, n_points=n)
    spec = json.loads(row["variables"])
    ranges = tuple((float(v[1]), float(v[2])) for v in spec["vars"])
    if len(ranges) != d:
        raise ValueError(f"{row['name']}: {len(ranges)} variable ranges for n_vars={d}")
    return BenchmarkEquation(name=row["name"], expr=row["expr"], n_vars=d, ranges=ranges, n_points=FEYNMAN_POINTS)


def load_benchmark_equations(names: list[str] | None = None) -> list[BenchmarkEquation]:
    with open(DATA_FILE, newline="") as f:
        eqs = [_parse_row(r) for r in csv.DictReader(f)]
    if names is not None:
        by_name = {e.name: e for e in eqs}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"unknown benchmark equations {missing}")
        eqs = [by_name[n] for n in names]
    return eqs


def sample_benchmark(
    eq: BenchmarkEquation, *, n_points: int | None = None, seed: int = 0, split: str = "train"
) -> dict:
    """One instance of ``eq``; train and test are independent draws from the same ranges."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    n = n_points or eq.n_points
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    lo, hi = np.array(eq.ranges).T
    X = rng.uniform(lo, hi, size=(n, eq.n_vars))
    expr = eq.sympy_expr
    f = sympy.lambdify(expressions.X_SYMBOLS[: eq.n_vars], expr, "numpy")
    with np.errstate(all="ignore"):
        y = np.broadcast_to(np.asarray(f(*X.T), np.float64), (n,))
    skeleton, _ = expressions.skeletonize(expr)
    return {
        "X": X.astype(np.float32),
        "y": y.astype(np.float32),
        "skeleton": skeleton,
        "expr": eq.expr,
        "n_vars": eq.n_vars,
        "name": eq.name,
    }
