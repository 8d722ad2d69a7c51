"""Batched multi-start BFGS fitting of skeleton constants (the thesis' bottleneck).

    r = fit_constants("C*sin(C*x1)+C", X, y, n_starts=16, seed=0)
    r.constants, r.mse_n, r.r2, r.expression  # numpy (K,), float, float, sympy with numbers
    rs = fit_many(["C*x1+C", "C*exp(C*x1)", "oops("], X, y)   # one FitResult each
    r = fit_constants("C*x1+C", X, y, cfg=FitConfig.thesis())  # the thesis protocol

How: every skeleton becomes a padded program (``symreg.program``); one jitted function
runs BFGS for a batch of (skeleton, start) pairs at once, vmapped over skeletons and over
random starts, with autodiff gradients (reverse mode through the interpreter's derivative
rule). Problems are grouped by program size and shapes are bucketed to powers of two
(slots 16 / 32 / 64, constants 8 / 16, points >= 32) and run ``min_batch`` problems per call,
so a new skeleton or a new number of candidates almost never triggers a compile,
and JAX's persistent compilation cache (``symreg.cache``) keeps compiled programs across
processes. Start 0 is all ones (the original SymbolicGPT initial point); the others are
uniform in ``init_range``.

Scale: data are normalised first where needed (``scaling``, see ``symreg.scaling``) and the
fitted expression is mapped back, so ``expression`` and ``constants`` are in the original
units. The ``relative`` objective is MSE / var(y) (that is 1 - R^2) plus ``penalty`` times
the domain violation (see ``symreg.interpreter``); BFGS stops on a relative gradient test.
A start whose loss or constants are not finite is discarded; the best start inside the
domain (no violation, predictions below the clip ``BIG``) is reported, with MSE_N and R^2
of the unguarded model in original units. ``success`` is False, with ``error`` starting
"could not fit" and saying why, when no start ends inside the domain or the best constants
explain less than the mean of y (R^2 < 0); then ``mse_n = FAILED_MSE_N`` (finite: results
never hold NaN).

Backends (tests check that they agree):
  ``bfgs`` (default): hand-written BFGS with one value-and-gradient per iteration, all
    lanes in lockstep (``symreg.solvers``); after ``prune_after`` iterations only the
    ``keep_starts`` best starts of each problem continue.
  ``jaxopt``: ``jaxopt.BFGS``, the reference (every vmapped lane pays the slowest lane's line
    search, far slower than ``bfgs``: ``benchmarks/fit_constants.py`` measures it; jaxopt is unmaintained). ``optax``: ``optax.lbfgs``.
  ``scipy``: SciPy BFGS per problem in float64 on a sympy-lambdified numpy function with
    numeric gradients: the original SymbolicGPT code (``FitConfig.thesis()``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import sympy

import symreg.cache as cache
import symreg.expressions as expressions
import symreg.interpreter as interpreter
import symreg.metrics as metrics
import symreg.program as program
import symreg.scaling as scaling
import symreg.solvers as solvers

FAILED_MSE_N = 1e30
R2_SLACK = 1e-6  # R^2 below -R2_SLACK (worse than the mean of y beyond rounding) is a failed fit
BACKENDS = ("bfgs", "jaxopt", "optax", "scipy")
OBJECTIVES = ("relative", "mse")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitConfig:
    n_starts: int = 16
    backend: str = "bfgs"
    linesearch: str = "backtracking"  # jaxopt / optax: or "zoom", more robust steps, longer compiles
    maxls: int = 8  # jaxopt / optax: line-search evaluations per iteration (vmapped, every lane pays the max)
    maxiter: int = 100
    keep_starts: int = 4  # bfgs: after prune_after iterations only this many best starts go on
    prune_after: int = 25
    tol: float = 1e-6  # bfgs: relative gradient test (see symreg.solvers); jaxopt / optax: gradient norm
    scaling: str = "auto"  # "auto" | "always" | "off": normalisation of X and y (symreg.scaling)
    objective: str = "relative"  # "relative": MSE / var(y); "mse": plain MSE (the thesis)
    init_range: tuple[float, float] = (-3.0, 3.0)
    penalty: float = 10.0
    max_batch_elements: int = 1 << 21  # batch * starts * points * program slots per chunk
    min_slots: int = 16  # leaf and operation slots are each padded to a power of two >= this
    min_consts: int = 8  # constants likewise (their cost is small; fewer shapes to compile)
    min_batch: int = 8  # problems per compiled call (padded; larger groups run in several calls): one shape
    min_starts: int = 16  # starts are padded (repeating start 0) so n_starts <= 16 share one compile

    def __post_init__(self):
        if self.n_starts < 1:
            raise ValueError(f"n_starts must be >= 1, got {self.n_starts}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.linesearch not in ("backtracking", "zoom"):
            raise ValueError(f"linesearch must be 'backtracking' or 'zoom', got {self.linesearch!r}")
        if self.maxls < 1:
            raise ValueError(f"maxls must be >= 1, got {self.maxls}")
        if self.keep_starts < 1 or self.prune_after < 0:
            raise ValueError(
                f"keep_starts must be >= 1 and prune_after >= 0, got {self.keep_starts}, {self.prune_after}"
            )
        if self.maxiter < 1:
            raise ValueError(f"maxiter must be >= 1, got {self.maxiter}")
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if not self.init_range[0] < self.init_range[1]:
            raise ValueError(f"init_range must be (low, high) with low < high, got {self.init_range}")
        if self.scaling not in scaling.MODES:
            raise ValueError(f"scaling must be one of {scaling.MODES}, got {self.scaling!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")

    @classmethod
    def thesis(cls, **overrides) -> FitConfig:
        """The thesis protocol: one start from all-ones constants, SciPy BFGS, plain MSE on the
        raw data (no normalisation of inputs, targets or objective)."""
        return cls(**{"n_starts": 1, "backend": "scipy", "scaling": "off", "objective": "mse", **overrides})


@dataclasses.dataclass(frozen=True, eq=False)
class FitResult:
    skeleton: str
    constants: np.ndarray  # float64 (K,), in the order of the C's in the skeleton
    mse_n: float
    expression: sympy.Expr | None  # constants substituted; None if the skeleton did not compile
    success: bool
    loss: float = float("inf")  # the fitted objective
    complexity: int = 0  # number of nodes of the compiled expression
    error: str | None = None
    r2: float = float("-inf")  # R^2 on the fitted data, original units
    folded: bool = True  # False: the data's normalisation did not fold into the skeleton's constants
    # (``expression`` is exact in original units, ``constants`` are those of the normalised problem)


def check_data(X, y, max_vars: int = expressions.MAX_VARS) -> tuple[np.ndarray, np.ndarray]:
    """Validates X (n, d) and y (n,); raises ValueError naming the problem."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (n_samples,), got shape {y.shape}")
    if X.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("empty data: X and y need at least one sample")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X and y have different lengths: {X.shape[0]} != {y.shape[0]}")
    if X.shape[1] == 0:
        raise ValueError("empty data: X has no features")
    if X.shape[1] > max_vars:
        raise ValueError(f"X has {X.shape[1]} variables, more than the {max_vars} supported")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or inf")
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN or inf")
    return X, y


def _objective(c_K, prog, X_NxD, y_N, m_N, scale, penalty):
    return _loss(*interpreter.evaluate(prog, c_K, X_NxD), y_N, m_N, scale, penalty)


def _loss(y_hat, viol, y_N, m_N, scale, penalty):
    n = jnp.sum(m_N)
    mse = jnp.sum(m_N * (y_hat - y_N) ** 2) / n
    return mse / scale + penalty * jnp.sum(m_N * viol) / n


def objective_scale(y: np.ndarray, objective: str) -> float:
    """The divisor of the MSE: var(y) for ``relative`` (a floor keeps constant y finite), 1 for ``mse``."""
    if objective == "mse":
        return 1.0
    return float(np.var(y) + 1e-12 * np.mean(y**2) + 1e-30)


@functools.partial(
    jax.jit, static_argnames=("backend", "linesearch", "maxls", "maxiter", "tol", "penalty", "keep", "prune_after")
)
def _fit_batch(
    prog, init_SxK, X_BxNxD, y_BxN, m_BxN, s_B, *, backend, linesearch, maxls, maxiter, tol, penalty, keep, prune_after
):
    """BFGS for B programs x S starts -> best constants (B, K), loss (B,), y_hat (B, N), valid (B,)."""
    solve = {"jaxopt": solvers.bfgs_jaxopt, "optax": solvers.lbfgs_optax}.get(backend)

    def one_problem(p, X, y, m, scale):
        fun = functools.partial(_objective, prog=p, X_NxD=X, y_N=y, m_N=m, scale=scale, penalty=penalty)
        if backend == "bfgs":
            c_SxK = solvers.bfgs_lockstep_multistart(fun, init_SxK, maxiter, tol, keep, min(prune_after, maxiter))
        else:
            c_SxK = jax.vmap(lambda c0: solve(fun, c0, maxiter, tol, linesearch, maxls))(init_SxK)
        y_SxN, viol_SxN = jax.vmap(lambda c: interpreter.evaluate(p, c, X))(c_SxK)
        loss_S = jax.vmap(lambda yh, v: _loss(yh, v, y, m, scale, penalty))(y_SxN, viol_SxN)
        ok = jnp.isfinite(loss_S) & jnp.all(jnp.isfinite(c_SxK), axis=1)
        inside = ok & jnp.all(jnp.where(m > 0, (viol_SxN == 0) & (jnp.abs(y_SxN) < interpreter.BIG), True), axis=1)
        # the best start inside the domain; only if there is none, the best penalised one (a failure)
        best = jnp.argmin(jnp.where(jnp.where(jnp.any(inside), inside, ok), loss_S, jnp.inf))
        c = jnp.where(ok[best], c_SxK[best], init_SxK[0])
        return c, jnp.where(ok[best], loss_S[best], jnp.inf), y_SxN[best], inside[best]

    return jax.vmap(one_problem)(prog, X_BxNxD, y_BxN, m_BxN, s_B)


def _failed(skeleton: str, error: str) -> FitResult:
    return FitResult(
        skeleton=skeleton, constants=np.zeros(0), mse_n=FAILED_MSE_N, expression=None, success=False, error=error
    )


def _substitute(p: program.Program, c: np.ndarray) -> sympy.Expr:
    return p.expr.xreplace({s: sympy.Float(float(v)) for s, v in zip(p.consts, c)})


def _init(cfg: FitConfig, seed: int, S: int, K: int) -> np.ndarray:
    init = np.random.default_rng(seed).uniform(*cfg.init_range, size=(S, K))
    init[0] = 1.0
    init[cfg.n_starts :] = init[0]  # padding starts repeat start 0: same result, same shape
    return init


def fit_problems(
    skeletons: list[str], Xs: list, ys: list, *, seed: int = 0, cfg: FitConfig | None = None, **overrides
) -> list[FitResult]:
    """Fits skeleton i to data (Xs[i], ys[i]); batched over everything that compiles."""
    cfg = dataclasses.replace(cfg or FitConfig(), **overrides)
    if not len(skeletons) == len(Xs) == len(ys):
        raise ValueError(f"got {len(skeletons)} skeletons, {len(Xs)} X and {len(ys)} y")
    data = [check_data(X, y) for X, y in zip(Xs, ys)]
    if cfg.scaling == "off" and cfg.backend != "scipy":
        for X, y in data:
            _check_float32_range(X, y)
    scalings = [scaling.choose(X, y, cfg.scaling) for X, y in data]
    results: list[FitResult | None] = [None] * len(skeletons)
    todo = []
    for i, (sk, (X, _)) in enumerate(zip(skeletons, data)):
        try:
            p = program.compile_skeleton(sk)
        except (ValueError, TypeError, RecursionError) as e:
            results[i] = _failed(sk, str(e))
            continue
        if p.n_vars > X.shape[1]:
            results[i] = _failed(sk, f"skeleton uses x{p.n_vars} but X has {X.shape[1]} variables")
            continue
        todo.append((i, p))
        scalings[i] = scaling.absorbable(scalings[i], p.expr, p.consts)
    if cfg.backend == "scipy":
        for i, p in todo:
            results[i] = _fit_scipy(p, data[i], scalings[i], cfg, seed)
        return results  # type: ignore[return-value]
    cache.enable_compilation_cache()
    groups: dict[int, list] = {}  # by slot bucket: short programs don't pay for long ones
    for i, p in todo:
        groups.setdefault(program.bucket(max(p.n_leaves, p.length - p.n_leaves), cfg.min_slots), []).append((i, p))
    S = max(cfg.n_starts, cfg.min_starts)
    for M, group in sorted(groups.items()):
        P = M  # leaf slots = operation slots: one shape parameter, fewer compiles
        K = program.bucket(max(p.n_consts for _, p in group), cfg.min_consts)
        N = program.bucket(max(len(data[i][1]) for i, _ in group), 32)
        init = _init(cfg, seed, S, K)
        per_chunk = max(1, cfg.max_batch_elements // (S * N * (M + P)))
        chunk = min(cfg.min_batch, 1 << (per_chunk.bit_length() - 1))  # fixed: no compile per group size
        for s in range(0, len(group), chunk):
            _fit_chunk(group[s : s + chunk], data, scalings, results, init, M, P, N, chunk, cfg)
    return results  # type: ignore[return-value]


def _check_float32_range(X: np.ndarray, y: np.ndarray) -> None:
    """Unscaled JAX fits compute in float32, clipped at ``interpreter.BIG``: say so, not NaN."""
    for name, v in (("X", X), ("y", y)):
        big = float(np.max(np.abs(v)))
        if big > interpreter.BIG**0.5:
            raise ValueError(
                f"{name} has values of magnitude {big:.3g}; with scaling='off' the float32 fit supports at most "
                f"{interpreter.BIG**0.5:.0e} (squares are clipped at {interpreter.BIG:.0e}): use scaling='auto' "
                "or backend='scipy'"
            )


def _result(p: program.Program, X, y, sc: scaling.Scaling, c, y_hat_scaled, inside: bool, loss: float) -> FitResult:
    """Maps a fit on scaled data back to original units and decides success honestly."""
    y_hat = sc.y_back(y_hat_scaled)
    expr = scaling.to_original(_substitute(p, c), sc)
    constants = folded = np.asarray(c, np.float64)
    if not sc.identity:  # the scaling folds into the skeleton's constants when its form allows
        folded = _fold(p, expr)
    mse = metrics.mse_n(y, y_hat)
    r2 = metrics.r2(y, y_hat) if np.all(np.isfinite(y_hat)) else float("-inf")
    error = None
    if not inside:
        error = "could not fit: outside the domain or non-finite at every start's best constants"
    elif not np.isfinite(mse):
        error = "could not fit: predictions are not finite in float64 at the best constants"
    elif r2 < -R2_SLACK:
        error = f"could not fit: the best constants explain less than the mean of y (R^2 = {r2:.3g} < 0)"
    ok = error is None
    return FitResult(
        skeleton=p.skeleton,
        constants=constants if folded is None else folded,
        folded=folded is not None,
        mse_n=float(mse) if ok else FAILED_MSE_N,
        expression=expr,
        success=ok,
        loss=float(loss) if np.isfinite(loss) else FAILED_MSE_N,
        complexity=p.length,
        error=error,
        r2=float(r2) if np.isfinite(r2) else float("-inf"),
    )


def _fold(p: program.Program, expr: sympy.Expr) -> np.ndarray | None:
    """The skeleton's constants that give ``expr`` (sympy pattern match), else None."""
    wild = {c: sympy.Wild(c.name, properties=[lambda v: v.is_Number]) for c in p.consts}
    try:
        m = expr.match(p.expr.xreplace(wild))
    except Exception:  # sympy's matcher can raise on odd forms; the fallback is still right
        m = None
    if not m or any(w not in m for w in wild.values()):
        return None
    return np.array([float(m[wild[c]]) for c in p.consts], np.float64)


def _fit_chunk(part, data, scalings, results, init, M, P, N, chunk, cfg):
    B = len(part)
    progs = [p for _, p in part] + [part[0][1]] * (chunk - B)  # pad the batch with copies
    X = np.zeros((chunk, N, expressions.MAX_VARS), np.float32)
    y = np.zeros((chunk, N), np.float32)
    m = np.zeros((chunk, N), np.float32)
    obj = np.ones((chunk,), np.float32)
    for j, (i, _) in enumerate(part + [part[0]] * (chunk - B)):
        Xi, yi = data[i]
        ys = scalings[i].y(yi)
        X[j, : len(yi), : Xi.shape[1]] = scalings[i].x(Xi)
        y[j, : len(yi)] = ys
        m[j, : len(yi)] = 1.0
        obj[j] = objective_scale(ys, cfg.objective)
    c, loss, y_hat, valid = jax.device_get(
        _fit_batch(
            program.pack_programs(progs, M, P),
            jnp.asarray(init, jnp.float32),
            X,
            y,
            m,
            obj,
            backend=cfg.backend,
            linesearch=cfg.linesearch,
            maxls=cfg.maxls,
            maxiter=cfg.maxiter,
            tol=cfg.tol,
            penalty=cfg.penalty,
            keep=min(cfg.keep_starts, init.shape[0]),
            prune_after=cfg.prune_after,
        )
    )
    for j, (i, p) in enumerate(part):
        Xi, yi = data[i]
        results[i] = _result(
            p, Xi, yi, scalings[i], c[j, : p.n_consts], y_hat[j, : len(yi)], bool(valid[j]), float(loss[j])
        )


def _fit_scipy(p: program.Program, data, sc: scaling.Scaling, cfg: FitConfig, seed: int) -> FitResult:
    """The ``scipy`` backend for one problem (float64, numpy, numeric gradients)."""
    X, y = data
    Xs, ys = sc.x(X), sc.y(y)
    f = sympy.lambdify([list(p.consts), *expressions.X_SYMBOLS[: X.shape[1]]], p.expr, "numpy")
    scale = objective_scale(ys, cfg.objective)

    def predict(c):
        with np.errstate(all="ignore"):
            return np.broadcast_to(np.asarray(f(c, *Xs.T), np.float64), ys.shape)

    def loss(c):
        r = np.mean((predict(c) - ys) ** 2) / scale
        return float(r) if np.isfinite(r) else 1e30

    c_SxK = solvers.scipy_bfgs(loss, _init(cfg, seed, cfg.n_starts, p.n_consts))
    losses = [loss(c) for c in c_SxK]
    best = int(np.argmin(losses))
    y_hat = predict(c_SxK[best])
    inside = bool(np.all(np.isfinite(y_hat)) and np.all(np.isreal(y_hat)))
    return _result(p, X, y, sc, c_SxK[best], y_hat, inside, losses[best])


def fit_many(
    skeletons: list[str], X, y, *, seed: int = 0, cfg: FitConfig | None = None, **overrides
) -> list[FitResult]:
    """Fits every skeleton to the same data; unparsable ones come back with success=False."""
    X, y = check_data(X, y)
    return fit_problems(list(skeletons), [X] * len(skeletons), [y] * len(skeletons), seed=seed, cfg=cfg, **overrides)


def fit_constants(skeleton: str, X, y, *, seed: int = 0, cfg: FitConfig | None = None, **overrides) -> FitResult:
    """Fits one skeleton's constants (``cfg`` plus ``overrides``, e.g. ``n_starts=4``); see the
    module docstring. The default backend is ``bfgs``, as everywhere."""
    return fit_many([skeleton], X, y, seed=seed, cfg=cfg, **overrides)[0]
