"""experiments.symbolicgpt's data: generated train / test equations per setting (cached in the
workdir) and the Nguyen / AI-Feynman benchmark problems."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the config lives with the experiment, which imports this module
    from experiments.symbolicgpt import Config

SETTINGS = {"1var": 1, "2var": 2, "3var": 3, "general": (1, 9)}


def _ensure_dataset(cfg: Config, split: str, n: int, seed: int) -> list[dict]:
    from symreg.generate import DatasetConfig, load_dataset, write_dataset

    path = os.path.join(cfg.workdir, "data", f"{cfg.setting}-{split}-{n}-{seed}")
    if not os.path.exists(os.path.join(path, "manifest.json")):
        write_dataset(
            path,
            n,
            seed,
            split,
            DatasetConfig(n_vars=SETTINGS[cfg.setting]),
            shard_size=max(1, -(-n // cfg.workers)),
            workers=cfg.workers if n >= 2000 else 1,
            progress=cfg.progress,
        )
    return load_dataset(path)


def _eval_on(expr: str, X: np.ndarray):
    import sympy

    from symreg.expressions import X_SYMBOLS

    local = {f"x{i}": s for i, s in enumerate(X_SYMBOLS, 1)}
    f = sympy.lambdify(X_SYMBOLS[: X.shape[1]], sympy.sympify(expr, locals=local), "numpy")
    with np.errstate(all="ignore"):
        return np.broadcast_to(np.asarray(f(*X.T), np.float64), (len(X),)).astype(np.float32)


def generated_test_set(cfg: Config, n: int) -> list[dict]:
    """Held-out points from the test split; fit points drawn in the training range."""
    rng = np.random.default_rng(cfg.seed + 17)
    out = []
    for inst in _ensure_dataset(cfg, "test", 2 * n, cfg.seed + 1):
        X_fit = rng.uniform(-3, 3, inst["X"].shape).astype(np.float32)
        y_fit = _eval_on(inst["expr"], X_fit)
        if not np.all(np.isfinite(y_fit)) or np.abs(y_fit).max() > 1e4:
            continue  # undefined on the training range: not a fair extrapolation test
        out.append(
            {
                "name": f"{cfg.setting}-{len(out)}",
                "expr": inst["expr"],
                "skeleton": inst["skeleton"],
                "X": X_fit,
                "y": y_fit,
                "X_test": inst["X"],
                "y_test": inst["y"],
            }
        )
        if len(out) == n:
            break
    return out


def benchmark_test_set(cfg: Config, family: str) -> list[dict]:
    from symreg.benchmark_equations import load_benchmark_equations, sample_benchmark

    out = []
    for eq in load_benchmark_equations():
        if eq.name.lower().startswith(family) and eq.n_vars <= cfg.max_vars:
            fit, test = (sample_benchmark(eq, seed=cfg.seed, split=s) for s in ("train", "test"))
            if np.all(np.isfinite(fit["y"])) and np.all(np.isfinite(test["y"])):
                out.append(
                    {
                        "name": eq.name,
                        "expr": eq.expr,
                        "skeleton": fit["skeleton"],
                        "X": fit["X"],
                        "y": fit["y"],
                        "X_test": test["X"],
                        "y_test": test["y"],
                    }
                )
    return out
