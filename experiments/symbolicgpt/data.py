"""experiments.symbolicgpt's data: the settings, generated train / test equations per setting
(cached in the workdir), the general-2 test set and the Nguyen / AI-Feynman benchmark problems.

Settings (thesis ch. 2): ``1var``, ``2var``, ``3var`` (fixed d, 30 / 200 / 500 points),
``general`` (d uniform in 1..9, U{20..250} points) and ``general2``: the general model
evaluated on the skeletons of the 12 Nguyen and the AI-Feynman equations
(``symreg/data/nguyen_feynman.csv``) with training-like constants and points (see
:func:`general2_test_set`); general2 has no training data of its own.

Workdir layout: ``WORKDIR/<setting>/`` holds that setting's records, results and figures;
the model and the generated data live in ``WORKDIR/<train setting>/model`` and ``.../data``
(the train setting of general2 is general).
"""

from __future__ import annotations

import os

import numpy as np

from experiments.symbolicgpt.config import SETTINGS, TRAIN_SETTING, Config  # noqa: F401 - SETTINGS re-exported
from symreg.benchmark_equations import load_benchmark_equations, sample_benchmark
from symreg.expressions import X_SYMBOLS, GeneratorConfig, parse_skeleton, skeletonize
from symreg.generate import DatasetConfig, load_dataset, sample_x, write_dataset


def train_setting(setting: str) -> str:
    return TRAIN_SETTING.get(setting, setting)


def root_dir(cfg: Config) -> str:
    """The run's top directory (``cfg.workdir`` is ``root/<setting>`` inside a setting)."""
    return os.path.dirname(os.path.abspath(cfg.workdir))


def model_dir(cfg: Config, conditional: bool = False) -> str:
    """Where the setting's trained model lives: ``<root or --model-from>/<train setting>/model``."""
    root = cfg.model_from or root_dir(cfg)
    return os.path.join(root, train_setting(cfg.current), "c-model" if conditional else "model")


def ensure_dataset(cfg: Config, split: str, n: int, seed: int) -> list[dict]:
    s = train_setting(cfg.current)
    path = os.path.join(root_dir(cfg), s, "data", f"{s}-{split}-{n}-{seed}")
    if not os.path.exists(os.path.join(path, "manifest.json")):
        write_dataset(
            path,
            n,
            seed,
            split,
            DatasetConfig(n_vars=SETTINGS[s]),
            shard_size=max(1, -(-n // cfg.workers)),
            workers=cfg.workers if n >= 2000 else 1,
            progress=cfg.progress,
        )
    return load_dataset(path)


def eval_on(expr, X: np.ndarray):
    import sympy

    local = {f"x{i}": s for i, s in enumerate(X_SYMBOLS, 1)}
    e = sympy.sympify(expr, locals=local) if isinstance(expr, str) else expr
    f = sympy.lambdify(X_SYMBOLS[: X.shape[1]], e, "numpy")
    with np.errstate(all="ignore"):
        return np.broadcast_to(np.asarray(f(*X.T), np.float64), (len(X),)).astype(np.float32)


def _usable(y: np.ndarray, max_abs: float = 1e4) -> bool:
    return bool(np.all(np.isfinite(y)) and np.abs(y).max() <= max_abs)


def _test_points(rng, cfg: Config, expr, X_default, y_default):
    """The held-out points: the test split's own, or ``cfg.test_points`` fresh ones from the
    test distribution (|x| in [3, 5], random sign)."""
    if not cfg.test_points:
        return X_default, y_default

    X = sample_x(rng, cfg.test_points, X_default.shape[1], "test", DatasetConfig()).astype(np.float32)
    return X, eval_on(expr, X)


def generated_test_set(cfg: Config, n: int) -> list[dict]:
    """Fit points drawn in the training range [-3, 3]^d (as many as the test instance has, or
    ``cfg.fit_points``); held-out points from the test split ([-5,-3] U [3,5])^d."""
    if cfg.current == "general2":
        return general2_test_set(cfg, n)
    rng = np.random.default_rng(cfg.seed + 17)
    out = []
    for inst in ensure_dataset(cfg, "test", 2 * n, cfg.seed + 1):
        n_fit = cfg.fit_points or len(inst["y"])
        X_fit = rng.uniform(-3, 3, (n_fit, inst["X"].shape[1])).astype(np.float32)
        y_fit = eval_on(inst["expr"], X_fit)
        X_test, y_test = _test_points(rng, cfg, inst["expr"], inst["X"], inst["y"])
        if not (_usable(y_fit) and np.all(np.isfinite(y_test))):
            continue  # undefined on the training range: not a fair extrapolation test
        out.append(
            {
                "name": f"{cfg.current}-{len(out)}",
                "expr": inst["expr"],
                "skeleton": inst["skeleton"],
                "X": X_fit,
                "y": y_fit,
                "X_test": X_test,
                "y_test": y_test,
            }
        )
        if len(out) == n:
            break
    return out


def general2_test_set(cfg: Config, n: int) -> list[dict]:
    """General-2: benchmark skeletons with training-like constants and points.

    The equations of ``nguyen_feynman.csv`` are visited in a seeded random order (cycling);
    each one's skeleton gets fresh constants U[-2.1, 2.1] rounded to 3 decimals (the
    generator's range) and, as at the generator's root node, an extra multiplicative and
    additive constant each with probability 0.5. Fit points: U{20..250} (or ``fit_points``)
    in [-3, 3]^d; held-out: as many (or ``test_points``) with |x| in [3, 5]. Draws that are
    not finite or exceed |y| > 1e4 on either set are skipped, as the generator drops them."""
    import sympy

    rng = np.random.default_rng(cfg.seed + 23)
    gen = GeneratorConfig()
    eqs = [e for e in load_benchmark_equations() if e.n_vars <= cfg.max_vars]
    order = rng.permutation(len(eqs))
    out = []
    for k in range(50 * max(n, 1)):
        if len(out) == n:
            break
        eq = eqs[order[k % len(eqs)]]
        skeleton, _ = skeletonize(eq.sympy_expr)
        expr, consts = parse_skeleton(skeleton)
        vals = np.round(rng.uniform(*gen.const_range, len(consts)), gen.decimals)
        expr = expr.xreplace({c: sympy.Float(float(v), 8) for c, v in zip(consts, vals)})
        if rng.random() < gen.const_prob:
            expr = sympy.Float(round(rng.uniform(*gen.const_range), 3), 8) * expr
        if rng.random() < gen.const_prob:
            expr = expr + sympy.Float(round(rng.uniform(*gen.const_range), 3), 8)
        n_fit = cfg.fit_points or int(rng.integers(20, 251))
        X = rng.uniform(-3, 3, (n_fit, eq.n_vars)).astype(np.float32)
        X_test = sample_x(rng, cfg.test_points or n_fit, eq.n_vars, "test", DatasetConfig()).astype(np.float32)
        y, y_test = eval_on(expr, X), eval_on(expr, X_test)
        if not (_usable(y) and _usable(y_test)):
            continue
        out.append(
            {
                "name": f"general2-{eq.name}-{len(out)}",
                "expr": sympy.sstr(expr, full_prec=False).replace(" ", ""),
                "skeleton": skeletonize(expr)[0],
                "X": X,
                "y": y,
                "X_test": X_test,
                "y_test": y_test,
            }
        )
    return out


def benchmark_test_set(cfg: Config, family: str) -> list[dict]:
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


if __name__ == "__main__":
    raise SystemExit(
        "experiments.symbolicgpt.data is part of python -m experiments.symbolicgpt, not a command of its own"
    )
