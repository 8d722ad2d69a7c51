"""Batched multi-start BFGS fitting of skeleton constants (the thesis' bottleneck).

    r = fit_constants("C*sin(C*x1)+C", X, y, n_starts=16, seed=0)
    r.constants, r.mse_n, r.expression      # numpy (K,), float, sympy with numbers
    rs = fit_many(["C*x1+C", "C*exp(C*x1)", "oops("], X, y)   # one FitResult each

How: every skeleton becomes a padded program (``symreg.program``); one jitted function
runs BFGS for a batch of (skeleton, start) pairs at once, vmapped over skeletons and over
random starts, with autodiff gradients. Shapes are bucketed to powers of two (program
length, constants, points, batch), so a new skeleton almost never triggers a compile.
Start 0 is all ones (the original SymbolicGPT initial point); the others are uniform in
``init_range``. The objective is MSE / mean(y^2) plus ``penalty`` times the domain
violation (see ``symreg.program``); a start whose loss or constants are not finite is
discarded. The best start is reported with MSE_N of the unguarded model; a fit whose best
constants still leave points outside the domain, or give non-finite predictions, is
marked failed with ``mse_n = FAILED_MSE_N`` (finite: results never hold NaN).

Backends: ``jaxopt.BFGS`` (zoom line search) and ``optax.lbfgs`` (jaxopt is unmaintained;
tests check that both agree).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import sympy

from symreg import expressions, metrics, program

FAILED_MSE_N = 1e30
BACKENDS = ("jaxopt", "optax")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitConfig:
  n_starts: int = 16
  backend: str = "jaxopt"
  linesearch: str = "backtracking"  # or "zoom": more robust steps, ~2x the compile time
  maxiter: int = 100
  tol: float = 1e-6
  init_range: tuple[float, float] = (-3.0, 3.0)
  penalty: float = 10.0
  max_batch_elements: int = 1 << 21  # batch * starts * points * program length per chunk
  min_batch: int = 8  # batches are padded to >= this, so small calls share one compile
  min_starts: int = 16  # starts are padded (repeating start 0) so n_starts <= 16 share one compile

  def __post_init__(self):
    if self.n_starts < 1:
      raise ValueError(f"n_starts must be >= 1, got {self.n_starts}")
    if self.backend not in BACKENDS:
      raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
    if self.linesearch not in ("backtracking", "zoom"):
      raise ValueError(f"linesearch must be 'backtracking' or 'zoom', got {self.linesearch!r}")
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
  y_hat, viol = program.evaluate(prog, c_K, X_NxD)
  n = jnp.sum(m_N)
  scale = jnp.sum(m_N * y_N ** 2) / n + 1e-12
  mse = jnp.sum(m_N * (y_hat - y_N) ** 2) / n
  return mse / scale + penalty * jnp.sum(m_N * viol) / n


def _bfgs_jaxopt(fun, init, maxiter, tol, linesearch):
  import jaxopt

  solver = jaxopt.BFGS(fun=fun, maxiter=maxiter, tol=tol, linesearch=linesearch, implicit_diff=False)
  return solver.run(init).params


def _lbfgs_optax(fun, init, maxiter, tol, linesearch):
  import optax
  import optax.tree_utils as otu

  if linesearch == "zoom":
    opt = optax.lbfgs()
  else:
    opt = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(
        max_backtracking_steps=30, store_grad=True))
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


@functools.partial(jax.jit, static_argnames=("backend", "linesearch", "maxiter", "tol", "penalty"))
def _fit_batch(prog, init_SxK, X_BxNxD, y_BxN, m_BxN, *, backend, linesearch, maxiter, tol, penalty):
  """BFGS for B programs x S starts -> best constants (B, K), loss (B,), y_hat (B, N), valid (B,)."""
  solve = _bfgs_jaxopt if backend == "jaxopt" else _lbfgs_optax

  def one_problem(p, X, y, m):
    fun = functools.partial(_objective, prog=p, X_NxD=X, y_N=y, m_N=m, penalty=penalty)
    c_SxK = jax.vmap(lambda c0: solve(fun, c0, maxiter, tol, linesearch))(init_SxK)
    loss_S = jax.vmap(fun)(c_SxK)
    ok = jnp.isfinite(loss_S) & jnp.all(jnp.isfinite(c_SxK), axis=1)
    loss_S = jnp.where(ok, loss_S, jnp.inf)
    best = jnp.argmin(loss_S)
    c = jnp.where(ok[best], c_SxK[best], init_SxK[0])
    y_hat, viol = program.evaluate(p, c, X)
    valid = ok[best] & jnp.all(jnp.where(m > 0, (viol == 0) & jnp.isfinite(y_hat), True))
    return c, loss_S[best], y_hat, valid

  return jax.vmap(one_problem)(prog, X_BxNxD, y_BxN, m_BxN)


def _failed(skeleton: str, error: str) -> FitResult:
  return FitResult(skeleton=skeleton, constants=np.zeros(0), mse_n=FAILED_MSE_N, expression=None,
                   success=False, error=error)


def _substitute(p: program.Program, c: np.ndarray) -> sympy.Expr:
  return p.expr.xreplace({s: sympy.Float(float(v), 8) for s, v in zip(p.consts, c)})


def fit_problems(skeletons: list[str], Xs: list, ys: list, *, seed: int = 0,
                 cfg: FitConfig | None = None, **overrides) -> list[FitResult]:
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
  if todo:
    L = program.bucket(max(p.length for _, p in todo), 16)
    K = program.bucket(max(p.n_consts for _, p in todo), 4)
    N = program.bucket(max(len(data[i][1]) for i, _ in todo), 32)
    S = max(cfg.n_starts, cfg.min_starts)
    init = np.random.default_rng(seed).uniform(*cfg.init_range, size=(S, K))
    init[0] = 1.0
    init[cfg.n_starts:] = init[0]  # padding starts repeat start 0: same result, same shape
    per_chunk = max(1, cfg.max_batch_elements // (S * N * L))
    chunk = min(program.bucket(len(todo), cfg.min_batch), 1 << (per_chunk.bit_length() - 1))
    for s in range(0, len(todo), chunk):
      part = todo[s:s + chunk]
      _fit_chunk(part, data, results, init, L, N, chunk, cfg)
  return results  # type: ignore[return-value]


def _fit_chunk(part, data, results, init, L, N, chunk, cfg):
  B = len(part)
  progs = [p for _, p in part] + [part[0][1]] * (chunk - B)  # pad the batch with copies
  X = np.zeros((chunk, N, expressions.MAX_VARS), np.float32)
  y = np.zeros((chunk, N), np.float32)
  m = np.zeros((chunk, N), np.float32)
  for j, (i, _) in enumerate(part + [part[0]] * (chunk - B)):
    Xi, yi = data[i]
    X[j, :len(yi), :Xi.shape[1]] = Xi
    y[j, :len(yi)] = yi
    m[j, :len(yi)] = 1.0
  c, loss, y_hat, valid = jax.device_get(_fit_batch(
      program.pad_programs(progs, L), jnp.asarray(init, jnp.float32), X, y, m,
      backend=cfg.backend, linesearch=cfg.linesearch, maxiter=cfg.maxiter, tol=cfg.tol, penalty=cfg.penalty))
  for j, (i, p) in enumerate(part):
    n = len(data[i][1])
    const = np.asarray(c[j, :p.n_consts], np.float64)
    mse = metrics.mse_n(data[i][1], y_hat[j, :n]) if valid[j] else FAILED_MSE_N
    ok = bool(valid[j]) and np.isfinite(mse)
    results[i] = FitResult(
        skeleton=p.skeleton, constants=const, mse_n=float(mse) if ok else FAILED_MSE_N,
        expression=_substitute(p, const), success=ok,
        loss=float(loss[j]) if np.isfinite(loss[j]) else FAILED_MSE_N, complexity=p.length,
        error=None if ok else "outside the domain or non-finite at the best constants")


def fit_many(skeletons: list[str], X, y, *, seed: int = 0, cfg: FitConfig | None = None,
             **overrides) -> list[FitResult]:
  """Fits every skeleton to the same data; unparsable ones come back with success=False."""
  X, y = check_data(X, y)
  return fit_problems(list(skeletons), [X] * len(skeletons), [y] * len(skeletons), seed=seed,
                      cfg=cfg, **overrides)


def fit_constants(skeleton: str, X, y, *, n_starts: int = 16, seed: int = 0, backend: str = "jaxopt",
                  cfg: FitConfig | None = None, **overrides) -> FitResult:
  """Fits one skeleton's constants; see the module docstring."""
  return fit_many([skeleton], X, y, seed=seed, cfg=cfg, n_starts=n_starts, backend=backend,
                  **overrides)[0]
