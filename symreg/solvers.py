"""Minimisers of a constant-fitting objective (used by :mod:`symreg.fit`).

* :func:`bfgs_lockstep_multistart` (backend ``bfgs``): BFGS with one value-and-gradient per
  iteration so that vmapped lanes run in lockstep, with pruning of the worse starts.
* :func:`bfgs_jaxopt` (``jaxopt``) and :func:`lbfgs_optax` (``optax``): reference solvers.
* :func:`scipy_bfgs` (``scipy``): ``scipy.optimize.minimize(method="BFGS")`` on a numpy
  function in float64 with finite-difference gradients, the original SymbolicGPT code path
  (the thesis protocol starts it once from all-ones constants).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np


def bfgs_jaxopt(fun, init, maxiter, tol, linesearch, maxls):
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
    interpolation). A lane is done when its relative gradient ``max_k |g_k| max(|c_k|, 1)`` is
    below ``tol * max(f, 1e-8)`` (scale-free: the same test for an objective of size 1e-6 or 1e12) or its step
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
        rel_grad = jnp.max(jnp.abs(g_t) * jnp.maximum(jnp.abs(c_t), 1.0))
        fresh = s["fresh"]
        done = (
            s["done"] | (ok & (rel_grad < tol * jnp.maximum(f_t, 1e-8))) | (tiny & s["reset"]) | (fresh & ~ok)
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


def bfgs_lockstep_multistart(fun, init_SxK, maxiter, tol, keep, prune_after):
    """All starts for ``prune_after`` iterations, then only the ``keep`` best (lowest loss)
    continue to ``maxiter``: most of the work goes to the starts that matter."""
    s = jax.vmap(lambda c0: _lockstep_run(fun, _lockstep_init(c0), prune_after, tol))(init_SxK)
    if keep < init_SxK.shape[0]:
        top = jnp.argsort(jnp.where(jnp.isfinite(s["f"]), s["f"], jnp.inf))[:keep]
        s = jax.tree.map(lambda z: z[top], s)
    return jax.vmap(lambda st: _lockstep_run(fun, st, maxiter, tol))(s)["c"]


def lbfgs_optax(fun, init, maxiter, tol, linesearch, maxls):
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


def scipy_bfgs(loss, init_SxK: np.ndarray) -> np.ndarray:
    """Runs scipy BFGS (default options, numeric gradients) from every row of ``init_SxK``;
    returns the final constants (S, K). ``loss(c)`` must return a finite float (callers map
    non-finite values to a large number, as the original code did)."""
    import scipy.optimize

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c0 in np.asarray(init_SxK, np.float64):
            out.append(scipy.optimize.minimize(loss, c0, method="BFGS").x if c0.size else c0)
    return np.asarray(out, np.float64).reshape(init_SxK.shape)
