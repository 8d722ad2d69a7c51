"""Batched multi-start BFGS (symreg.fit) vs a loop of scipy BFGS from constants 1.0.

    python benchmarks/fit_constants.py [--n 32] [--n-starts 16] [--out benchmarks/results/fit_constants.json]

Both fit the constants of the true skeletons of ``--n`` generated one-variable problems
(thesis generator, 30 points each). scipy is the original SymbolicGPT approach: sympy
lambdify + ``scipy.optimize.minimize(method="BFGS")`` (finite-difference gradients) from
all-ones constants, one problem at a time. Ours: one jitted, vmapped call for all problems
and starts. Reported: problems per second (ours steady state, i.e. the second call on new
problems with the same bucket shapes, and ours including the one jit compile), the jit
compile seconds, and the fraction of problems whose true constants each recovers
(constants within 1e-2 relative, or the fitted expression symbolically equal to the truth
up to a constant, which handles sign symmetries such as a*sin(w*x) = -a*sin(-w*x)).
Runtime on a 2-core CPU: about a minute or two (most of it the compile); prints ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np
import scipy.optimize
import sympy

from symreg import expressions, fit, generate, metrics


def problems(n: int, seed: int) -> list[dict]:
  out = []
  for inst in generate.generate_dataset(4 * n, n_vars=1, seed=seed):
    expr = sympy.sympify(inst["expr"], locals={"x1": expressions.X_SYMBOLS[0]})
    sk, vals = expressions.skeletonize(expr)
    if sk == inst["skeleton"] and vals:  # keep problems that have constants to fit
      out.append({**inst, "true_constants": np.array(vals), "truth": expr})
    if len(out) == n:
      break
  return out


def scipy_fit(skeleton: str, X: np.ndarray, y: np.ndarray) -> np.ndarray:
  expr, consts = expressions.parse_skeleton(skeleton)
  f = sympy.lambdify([consts, expressions.X_SYMBOLS[0]], expr, "numpy")

  def loss(c):
    with np.errstate(all="ignore"):
      r = np.mean((np.broadcast_to(f(c, X[:, 0]), y.shape) - y) ** 2)
    return r if np.isfinite(r) else 1e30

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return scipy.optimize.minimize(loss, np.ones(len(consts)), method="BFGS").x


def recovered(p: dict, constants: np.ndarray, expr) -> bool:
  c, t = np.asarray(constants, float), p["true_constants"]
  if c.shape == t.shape and np.all(np.abs(c - t) <= 1e-2 * np.maximum(1.0, np.abs(t))):
    return True
  if expr is None or not np.all(np.isfinite(c)):
    return False
  return metrics.symbolic_recovery(expr, p["truth"], decimals=2)


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--n", type=int, default=32)
  ap.add_argument("--n-starts", type=int, default=16)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default=os.path.join("benchmarks", "results", "fit_constants.json"))
  a = ap.parse_args(argv)
  probs = probs_b = None
  probs = problems(a.n, a.seed)
  probs_b = problems(a.n, a.seed + 1)  # new problems, same bucket shapes: no compile
  cfg = fit.FitConfig(n_starts=a.n_starts)

  def ours(ps):
    t0 = time.perf_counter()
    rs = fit.fit_problems([p["skeleton"] for p in ps], [p["X"] for p in ps], [p["y"] for p in ps], cfg=cfg)
    return rs, time.perf_counter() - t0

  _, t_first = ours(probs_b)
  rs, t_ours = ours(probs)
  t0 = time.perf_counter()
  sc = [scipy_fit(p["skeleton"], p["X"].astype(np.float64), p["y"].astype(np.float64)) for p in probs]
  t_scipy = time.perf_counter() - t0
  rec_ours = np.mean([recovered(p, r.constants, r.expression) for p, r in zip(probs, rs)])
  rec_scipy = np.mean([
      recovered(p, c, expressions.parse_skeleton(p["skeleton"])[0].xreplace(
          dict(zip(expressions.parse_skeleton(p["skeleton"])[1], map(sympy.Float, c)))))
      for p, c in zip(probs, sc)])
  res = {
      "n_problems": len(probs), "n_starts": a.n_starts, "points_per_problem": int(len(probs[0]["y"])),
      "ours_problems_per_s": len(probs) / t_ours,
      "ours_problems_per_s_incl_compile": len(probs) / t_first,
      "ours_jit_compile_s": t_first - t_ours,
      "scipy_problems_per_s": len(probs) / t_scipy,
      "speedup_steady": t_scipy / t_ours,
      "speedup_incl_compile": t_scipy / t_first,
      "ours_recovered_fraction": float(rec_ours),
      "scipy_recovered_fraction": float(rec_scipy),
      "cpu_count": os.cpu_count(),
  }
  for k, v in res.items():
    print(f"{k:34s} {v:.4g}" if isinstance(v, float) else f"{k:34s} {v}")
  os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(res, f, indent=1)


if __name__ == "__main__":
  main()
