"""Batched multi-start BFGS fitting of skeleton constants (the thesis' bottleneck).

    r = fit_constants("C*sin(C*x1)+C", X, y, n_starts=16, seed=0)
    r.constants, r.mse_n, r.expression      # numpy (K,), float, sympy with numbers
    rs = fit_many(["C*x1+C", "C*exp(C*x1)", "oops("], X, y)   # one FitResult each

How: every skeleton becomes a padded program (``symreg.program``); one jitted function
runs BFGS for a batch of (skeleton, start) pairs at once, vmapped over skeletons and over
random starts, with autodiff gradients (reverse mode through the interpreter's derivative
rule). Problems are grouped by program size and shapes are bucketed to powers of two
(slots, constants, points, batch), so a new skeleton almost never triggers a compile.
Start 0 is all ones (the original SymbolicGPT initial point); the others are uniform in
``init_range``. The objective is MSE / mean(y^2) plus ``penalty`` times the domain
violation (see ``symreg.program``); a start whose loss or constants are not finite is
discarded. The best start inside the domain (no violation, predictions below the clip ``BIG``) is
reported, with MSE_N of the unguarded model; when no start ends inside, the fit is
marked failed with ``mse_n = FAILED_MSE_N`` (finite: results never hold NaN).

Backends (tests check that all three agree):
  ``bfgs`` (default): hand-written BFGS with one value-and-gradient per iteration, all
    lanes in lockstep (see ``_lockstep_run``); after ``prune_after`` iterations only the
    ``keep_starts`` best starts of each problem continue. ~100 problems/s x 16 starts on a
    loaded 2-core CPU, several times a loop of scipy BFGS (benchmarks/fit_constants.py).
  ``jaxopt``: ``jaxopt.BFGS``, the reference (backtracking or zoom line search of at most
    ``maxls`` tries). vmapped, every lane pays the slowest lane's line search, so it is
    ~15x slower than ``bfgs``; jaxopt is also unmaintained.
  ``optax``: ``optax.lbfgs``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import sympy

from symreg import expressions, interpreter, metrics, program

FAILED_MSE_N = 1e30
BACKENDS = ("bfgs", "jaxopt", "optax")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitConfig:
    n_starts: int = 16
    backend: str = "bfgs"
    linesearch: str = "backtracking"  # jaxopt / optax: or "zoom", more robust steps, ~2x the compile time
    maxls: int = 8  # jaxopt / optax: line-search evaluations per iteration (vmapped, every lane pays the max)
    maxiter: int = 100
    keep_starts: int = 4  # bfgs: after prune_after iterations only this many best starts go on
    prune_after: int = 25
    tol: float = 1e-6
    init_range: tuple[float, float] = (-3.0, 3.0)
    penalty: float = 10.0
    max_batch_elements: int = 1 << 21  # batch * starts * points * program slots per chunk
    min_slots: int = 8  # leaf and operation slots are each padded to a power of two >= this
    min_consts: int = 8  # constants likewise (their cost is small; fewer shapes to compile)
    min_batch: int = 8  # batches are padded to >= this, so small calls share one compile
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


def _objective(c_K, prog, X_NxD, y_N, m_N, penalty):
    return _loss(*interpreter.evaluate(prog, c_K, X_NxD), y_N, m_N, penalty)


def _loss(y_hat, viol, y_N, m_N, penalty):
    n = jnp.sum(m_N)
    scale = jnp.sum(m_N * y_N**2) / n + 1e-12
    mse = jnp.sum(m_N * (y_hat - y_N) ** 2) / n
    return mse / scale + penalty * jnp.sum(m_N * viol) / n


def _bfgs_jaxopt(fun, init, maxiter, tol, linesearch, maxls):
    import jaxopt

    if linesearch == "backtracking":  # jaxopt's default shrinks by only 0.8 per try: too slow for few tries
        linesearch = jaxopt.BacktrackingLineSearch(fun=fun, maxiter=maxls, decrease_factor=0.25, jit=True)
    solver = jaxopt.BFGS(fun=fun, maxiter=maxiter, tol=tol, linesearch=linesearch, maxls=maxls, implicit_diff=False)
    return solver.run(init).params


def _lockstep_init(init):
    """A fresh lane: its first iteration evaluates ``init`` itself (alpha 0), so the loop
    holds the only value-and-gradient of the compiled program (fewer copies to compile)."""
    K = init.shape[0]
    return {
        "c": init,
        "f": jnp.array(jnp.inf, init.dtype),
        "g": jnp.zeros_like(init),
        "H": jnp.eye(K, dtype=init.dtype),
        "alpha": jnp.zeros((), init.dtype),
        "fresh": jnp.array(True),
        "first": jnp.array(True),
        "reset": jnp.array(False),
        "done": jnp.array(False),
        "it": jnp.array(0),
    }


def _lockstep_run(fun, s, maxiter, tol):
    """BFGS with exactly one value-and-gradient per iteration, for lanes run in lockstep.

    vmapped, a while loop runs until its slowest lane is done, so an inner line-search loop
    costs every lane the worst lane's number of evaluations. Here the backtracking is spread
    over iterations instead: each iteration evaluates one trial point ``c + alpha * d``; if
    it gives sufficient (Armijo) decrease it is taken with a BFGS update of the inverse
    Hessian, else the lane stays put and ``alpha`` shrinks (safeguarded quadratic
    interpolation). A lane is done when its gradient max-norm is below ``tol`` or its step
    has shrunk to nothing twice in a row (once after resetting the Hessian). Runs until
    iteration ``maxiter`` (counted from the state's own ``it``), so it can be resumed."""
    vag = jax.value_and_grad(fun)
    eye = jnp.eye(s["c"].shape[0], dtype=s["c"].dtype)

    def cont(s):
        return (s["it"] < maxiter) & ~s["done"]

    def step(s):
        c, f, g, H, alpha = s["c"], s["f"], s["g"], s["H"], s["alpha"]
        d = -H @ g
        slope = g @ d
        bad_dir = ~(slope < 0)  # not a descent direction: fall back to steepest descent
        d = jnp.where(bad_dir, -g, d)
        slope = jnp.where(bad_dir, -(g @ g), slope)
        H = jnp.where(bad_dir, eye, H)
        c_t = c + alpha * d
        f_t, g_t = vag(c_t)
        ok = jnp.isfinite(f_t) & jnp.all(jnp.isfinite(g_t)) & (f_t <= f + 1e-4 * alpha * slope)
        # accepted: BFGS update (first one scales H by s.y / y.y), next trial min(1, 4 alpha)
        sv, yv = c_t - c, g_t - g
        sy = sv @ yv
        curv = sy > 1e-10 * jnp.sqrt((sv @ sv) * (yv @ yv))
        H0 = jnp.where(s["first"], eye * sy / jnp.maximum(yv @ yv, 1e-30), H)
        rho = 1.0 / jnp.where(curv, sy, 1.0)
        V = eye - rho * jnp.outer(sv, yv)
        H_new = jnp.where(curv, V @ H0 @ V.T + rho * jnp.outer(sv, sv), H)
        # rejected: minimiser of the quadratic through f, slope and f_t, kept in [0.1, 0.5] alpha
        q = -slope * alpha**2 / (2.0 * (f_t - f - slope * alpha))
        shrink = jnp.where(jnp.isfinite(q), jnp.clip(q, 0.1 * alpha, 0.5 * alpha), 0.1 * alpha)
        tiny = ~ok & (shrink < 1e-10)
        fresh = s["fresh"]
        done = (
            s["done"] | (ok & (jnp.max(jnp.abs(g_t)) < tol)) | (tiny & s["reset"]) | (fresh & ~ok)
        )  # a start that is not finite is dropped at once
        # after the fresh evaluation, the first trial step is at most 1 / |g|
        alpha_ok = jnp.where(fresh, 1.0 / jnp.maximum(jnp.sqrt(g_t @ g_t), 1.0), jnp.minimum(1.0, 4.0 * alpha))
        return {
            "c": jnp.where(ok, c_t, c),
            "f": jnp.where(ok, f_t, f),
            "g": jnp.where(ok, g_t, g),
            "H": jnp.where(ok, H_new, jnp.where(tiny, eye, H)),
            "alpha": jnp.where(ok, alpha_ok, jnp.where(tiny, 1.0, shrink)).astype(alpha.dtype),
            "fresh": fresh & False,
            "first": s["first"] & ~(ok & curv),
            "reset": jnp.where(ok, False, s["reset"] | tiny),
            "done": done,
            "it": s["it"] + 1,
        }

    return jax.lax.while_loop(cont, step, s)


def _bfgs_lockstep_multistart(fun, init_SxK, maxiter, tol, keep, prune_after):
    """All starts for ``prune_after`` iterations, then only the ``keep`` best (lowest loss)
    continue to ``maxiter``: most of the work goes to the starts that matter."""
    s = jax.vmap(lambda c0: _lockstep_run(fun, _lockstep_init(c0), prune_after, tol))(init_SxK)
    if keep < init_SxK.shape[0]:
        top = jnp.argsort(jnp.where(jnp.isfinite(s["f"]), s["f"], jnp.inf))[:keep]
        s = jax.tree.map(lambda z: z[top], s)
    return jax.vmap(lambda st: _lockstep_run(fun, st, maxiter, tol))(s)["c"]


def _lbfgs_optax(fun, init, maxiter, tol, linesearch, maxls):
    import optax
    import optax.tree_utils as otu

    if linesearch == "zoom":
        opt = optax.lbfgs(linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=maxls))
    else:
        opt = optax.lbfgs(
            linesearch=optax.scale_by_backtracking_linesearch(max_backtracking_steps=maxls, store_grad=True)
        )
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(params, updates), state

    def cont(carry):
        _, state = carry
        it = otu.tree_get(state, "count")
        err = otu.tree_norm(otu.tree_get(state, "grad"))
        return (it == 0) | ((it < maxiter) & (err >= tol))

    params, _ = jax.lax.while_loop(cont, step, (init, opt.init(init)))
    return params


@functools.partial(
    jax.jit, static_argnames=("backend", "linesearch", "maxls", "maxiter", "tol", "penalty", "keep", "prune_after")
)
def _fit_batch(
    prog, init_SxK, X_BxNxD, y_BxN, m_BxN, *, backend, linesearch, maxls, maxiter, tol, penalty, keep, prune_after
):
    """BFGS for B programs x S starts -> best constants (B, K), loss (B,), y_hat (B, N), valid (B,)."""
    solve = {"jaxopt": _bfgs_jaxopt, "optax": _lbfgs_optax}.get(backend)

    def one_problem(p, X, y, m):
        fun = functools.partial(_objective, prog=p, X_NxD=X, y_N=y, m_N=m, penalty=penalty)
        if backend == "bfgs":
            c_SxK = _bfgs_lockstep_multistart(fun, init_SxK, maxiter, tol, keep, min(prune_after, maxiter))
        else:
            c_SxK = jax.vmap(lambda c0: solve(fun, c0, maxiter, tol, linesearch, maxls))(init_SxK)
        y_SxN, viol_SxN = jax.vmap(lambda c: interpreter.evaluate(p, c, X))(c_SxK)
        loss_S = jax.vmap(lambda yh, v: _loss(yh, v, y, m, penalty))(y_SxN, viol_SxN)
        ok = jnp.isfinite(loss_S) & jnp.all(jnp.isfinite(c_SxK), axis=1)
        inside = ok & jnp.all(jnp.where(m > 0, (viol_SxN == 0) & (jnp.abs(y_SxN) < interpreter.BIG), True), axis=1)
        # the best start inside the domain; only if there is none, the best penalised one (a failure)
        best = jnp.argmin(jnp.where(jnp.where(jnp.any(inside), inside, ok), loss_S, jnp.inf))
        c = jnp.where(ok[best], c_SxK[best], init_SxK[0])
        return c, jnp.where(ok[best], loss_S[best], jnp.inf), y_SxN[best], inside[best]

    return jax.vmap(one_problem)(prog, X_BxNxD, y_BxN, m_BxN)


def _failed(skeleton: str, error: str) -> FitResult:
    return FitResult(
        skeleton=skeleton, constants=np.zeros(0), mse_n=FAILED_MSE_N, expression=None, success=False, error=error
    )


def _substitute(p: program.Program, c: np.ndarray) -> sympy.Expr:
    return p.expr.xreplace({s: sympy.Float(float(v), 8) for s, v in zip(p.consts, c)})


def fit_problems(
    skeletons: list[str], Xs: list, ys: list, *, seed: int = 0, cfg: FitConfig | None = None, **overrides
) -> list[FitResult]:
    """Fits skeleton i to data (Xs[i], ys[i]); batched over everything that compiles."""
    cfg = dataclasses.replace(cfg or FitConfig(), **overrides)
    if not len(skeletons) == len(Xs) == len(ys):
        raise ValueError(f"got {len(skeletons)} skeletons, {len(Xs)} X and {len(ys)} y")
    data = [check_data(X, y) for X, y in zip(Xs, ys)]
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
    groups: dict[int, list] = {}  # by slot bucket: short programs don't pay for long ones
    for i, p in todo:
        groups.setdefault(program.bucket(max(p.n_leaves, p.length - p.n_leaves), cfg.min_slots), []).append((i, p))
    S = max(cfg.n_starts, cfg.min_starts)
    for M, group in sorted(groups.items()):
        P = M  # leaf slots = operation slots: one shape parameter, fewer compiles
        K = program.bucket(max(p.n_consts for _, p in group), cfg.min_consts)
        N = program.bucket(max(len(data[i][1]) for i, _ in group), 32)
        init = np.random.default_rng(seed).uniform(*cfg.init_range, size=(S, K))
        init[0] = 1.0
        init[cfg.n_starts :] = init[0]  # padding starts repeat start 0: same result, same shape
        per_chunk = max(1, cfg.max_batch_elements // (S * N * (M + P)))
        chunk = min(program.bucket(len(group), cfg.min_batch), 1 << (per_chunk.bit_length() - 1))
        for s in range(0, len(group), chunk):
            _fit_chunk(group[s : s + chunk], data, results, init, M, P, N, chunk, cfg)
    return results  # type: ignore[return-value]


def _fit_chunk(part, data, results, init, M, P, N, chunk, cfg):
    B = len(part)
    progs = [p for _, p in part] + [part[0][1]] * (chunk - B)  # pad the batch with copies
    X = np.zeros((chunk, N, expressions.MAX_VARS), np.float32)
    y = np.zeros((chunk, N), np.float32)
    m = np.zeros((chunk, N), np.float32)
    for j, (i, _) in enumerate(part + [part[0]] * (chunk - B)):
        Xi, yi = data[i]
        X[j, : len(yi), : Xi.shape[1]] = Xi
        y[j, : len(yi)] = yi
        m[j, : len(yi)] = 1.0
    c, loss, y_hat, valid = jax.device_get(
        _fit_batch(
            program.pack_programs(progs, M, P),
            jnp.asarray(init, jnp.float32),
            X,
            y,
            m,
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
        n = len(data[i][1])
        const = np.asarray(c[j, : p.n_consts], np.float64)
        mse = metrics.mse_n(data[i][1], y_hat[j, :n]) if valid[j] else FAILED_MSE_N
        ok = bool(valid[j]) and np.isfinite(mse)
        results[i] = FitResult(
            skeleton=p.skeleton,
            constants=const,
            mse_n=float(mse) if ok else FAILED_MSE_N,
            expression=_substitute(p, const),
            success=ok,
            loss=float(loss[j]) if np.isfinite(loss[j]) else FAILED_MSE_N,
            complexity=p.length,
            error=None if ok else "outside the domain or non-finite at the best constants",
        )


def fit_many(
    skeletons: list[str], X, y, *, seed: int = 0, cfg: FitConfig | None = None, **overrides
) -> list[FitResult]:
    """Fits every skeleton to the same data; unparsable ones come back with success=False."""
    X, y = check_data(X, y)
    return fit_problems(list(skeletons), [X] * len(skeletons), [y] * len(skeletons), seed=seed, cfg=cfg, **overrides)


def fit_constants(
    skeleton: str,
    X,
    y,
    *,
    n_starts: int = 16,
    seed: int = 0,
    backend: str = "jaxopt",
    cfg: FitConfig | None = None,
    **overrides,
) -> FitResult:
    """Fits one skeleton's constants; see the module docstring."""
    return fit_many([skeleton], X, y, seed=seed, cfg=cfg, n_starts=n_starts, backend=backend, **overrides)[0]
