"""Batched multi-start BFGS (symreg.fit) vs a loop of scipy BFGS from constants 1.0.

    python benchmarks/fit_constants.py [--n 32] [--n-starts 16] [--backends bfgs,jaxopt]
                                       [--model runs/symbolicgpt] [--out benchmarks/results/fit_constants.json]

Both fit the constants of the true skeletons of ``--n`` generated one-variable problems
(thesis generator, 30 points each). scipy is the original SymbolicGPT approach: sympy
lambdify + ``scipy.optimize.minimize(method="BFGS")`` (finite-difference gradients) from
all-ones constants, one problem at a time. Ours: ``fit.fit_problems`` on all problems at
once (one jitted, vmapped call per program-size bucket), ``--n-starts`` starts each, per
backend. Timing per backend: the first call (jit compile + run) and the best of
``--repeats`` further calls on the SAME problems (steady state: same shapes, no compile,
checked with the jit cache size); compile seconds = first - steady. scipy is timed the same
way (first run, best of ``--repeats``). ``--compile-cache DIR`` turns on JAX's persistent
compilation cache, so a second run of the script skips most compiling. Reported: problems per
second (steady and including compile), the ratios to scipy, and the fraction of problems
whose true constants each recovers (constants within 1e-2 relative, or the fitted
expression symbolically equal to the truth up to a constant, which handles sign
symmetries such as a*sin(w*x) = -a*sin(-w*x)). The top-level ``ours_*`` keys are the
first backend (the default, ``bfgs``).

One-off fits (``one_off``): what a user pays for ONE new problem in a fresh Python process.
Each is a fresh subprocess timing its imports and then one ``fit_constants`` (default config)
on a problem it has not seen: once with an empty persistent compilation cache (``cold``,
everything compiles), once more with the cache that run filled (``warm``, the default
experience after the first use on a machine, see ``symreg.cache``), and the scipy loop in a
fresh process. With ``--model DIR`` (a trained SymbolicGPT, ``experiments.symbolicgpt``) the
same for ``SymbolicGPTRegressor.from_pretrained(DIR)``: loading, the first ``fit`` (split
into sampling the candidates and fitting their constants) and the median of the later fits
of new problems. The machine's load average is stored next to the timings.
Runtime on a 2-core CPU: about two minutes (mostly compiles and the jaxopt backend).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import scipy.optimize
import sympy

from symreg import cache, expressions, fit, generate, metrics


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


def _child(kind: str, seed: int, model: str) -> dict:
    """Runs in a fresh process: imports, then one-off fits; returns the timings."""
    t0 = time.perf_counter()
    if kind == "scipy":
        p = problems(1, seed)[0]
        t1 = time.perf_counter()
        scipy_fit(p["skeleton"], p["X"].astype(np.float64), p["y"].astype(np.float64))
        return {"import_s": t1 - t0, "first_fit_s": time.perf_counter() - t1}
    p = problems(1, seed)[0]
    if kind == "fit":
        t1 = time.perf_counter()
        r = fit.fit_constants(p["skeleton"], p["X"], p["y"])
        return {"import_s": t1 - t0, "first_fit_s": time.perf_counter() - t1, "success": bool(r.success)}
    from symreg.regressor import SymbolicGPTRegressor

    t1 = time.perf_counter()
    reg = SymbolicGPTRegressor.from_pretrained(model)
    t2 = time.perf_counter()
    cfg = reg._fit_config()
    probs = generate.generate_dataset(11, n_vars=1, seed=seed + 1, split="valid")
    t3 = time.perf_counter()  # the first fit, split into its two parts
    cands = list(dict.fromkeys(reg.candidate_source.propose(probs[0]["X"], probs[0]["y"], reg.n_candidates)))
    t4 = time.perf_counter()
    fit.fit_many(cands, probs[0]["X"], probs[0]["y"], cfg=cfg)
    t5 = time.perf_counter()
    later = []
    for q in probs[1:]:
        t = time.perf_counter()
        try:
            reg.fit(q["X"], q["y"])
        except ValueError:  # no candidate could be fitted: still a finished fit
            pass
        later.append(time.perf_counter() - t)
    return {
        "import_s": t1 - t0,
        "load_s": t2 - t1,
        "first_fit_s": t5 - t3,
        "first_fit_sampling_s": t4 - t3,
        "first_fit_constants_s": t5 - t4,
        "later_fit_median_s": float(np.median(later)),
        "n_candidates": reg.n_candidates,
    }


def _fresh(kind: str, seed: int, cache_dir: str, model: str = "") -> dict:
    env = {**os.environ, "SYMREG_COMPILATION_CACHE": cache_dir, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--seed", str(seed), "--model", model]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    res["load_avg_1m"] = os.getloadavg()[0]
    return res


def one_off(seed: int, model: str) -> dict:
    """Cold (empty cache) then warm fresh-process fits; scipy in a fresh process."""
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for kind in ("fit",) + (("regressor",) if model else ()):
            cache_dir = os.path.join(d, kind)
            out[kind] = {"cold": _fresh(kind, seed, cache_dir, model), "warm": _fresh(kind, seed + 7, cache_dir, model)}
    out["scipy"] = _fresh("scipy", seed + 7, "off")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--n-starts", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backends", default="bfgs,jaxopt", help="comma-separated symreg.fit backends")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--compile-cache", default="", help="persistent compilation cache dir for the in-process runs (off if empty)"
    )
    ap.add_argument("--out", default=os.path.join("benchmarks", "results", "fit_constants.json"))
    ap.add_argument("--model", default="", help="a trained SymbolicGPT workdir: time the regressor's first fits")
    ap.add_argument("--one-off", type=int, default=1, choices=[0, 1], help="1: also time one-off fresh-process fits")
    ap.add_argument("--child", default="", choices=["", "fit", "regressor", "scipy"], help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(_child(a.child, a.seed, a.model)))
        return
    oneoff = one_off(a.seed + 1000, a.model) if a.one_off else {}
    print("one-off fits in a fresh process (seconds):", flush=True)
    for kind, runs in oneoff.items():
        for cache_state, r in [("-", runs)] if kind == "scipy" else runs.items():
            print(f"  {kind:9s} {cache_state:5s} " + "  ".join(f"{k} {v:.3g}" for k, v in r.items() if k != "success"))
    sys.stdout.flush()
    probs = problems(a.n, a.seed)
    args = ([p["skeleton"] for p in probs], [p["X"] for p in probs], [p["y"] for p in probs])

    if a.compile_cache:  # a repeat run then loads its executables instead of compiling
        cache.enable_compilation_cache(a.compile_cache)
    else:  # the in-process timings below measure real compiles
        os.environ[cache.ENV] = "off"
    t_scipy_runs = []
    for _ in range(1 + a.repeats):  # same protocol as ours: first run, then the best repeat
        t0 = time.perf_counter()
        sc = [scipy_fit(p["skeleton"], p["X"].astype(np.float64), p["y"].astype(np.float64)) for p in probs]
        t_scipy_runs.append(time.perf_counter() - t0)
    t_scipy = min(t_scipy_runs[1:])
    rec_scipy = np.mean(
        [
            recovered(
                p,
                c,
                expressions.parse_skeleton(p["skeleton"])[0].xreplace(
                    dict(zip(expressions.parse_skeleton(p["skeleton"])[1], map(sympy.Float, c)))
                ),
            )
            for p, c in zip(probs, sc)
        ]
    )

    per_backend = {}
    for backend in a.backends.split(","):
        cfg = fit.FitConfig(n_starts=a.n_starts, backend=backend)
        t0 = time.perf_counter()
        fit.fit_problems(*args, cfg=cfg)
        t_first = time.perf_counter() - t0
        compiles = fit._fit_batch._cache_size()
        steady = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            rs = fit.fit_problems(*args, cfg=cfg)
            steady.append(time.perf_counter() - t0)
        assert fit._fit_batch._cache_size() == compiles, "a steady-state call recompiled"
        t_ours = min(steady)
        per_backend[backend] = {
            "problems_per_s": len(probs) / t_ours,
            "problems_per_s_incl_compile": len(probs) / t_first,
            "jit_compile_s": t_first - t_ours,
            "speedup_steady": t_scipy / t_ours,
            "speedup_incl_compile": t_scipy / t_first,
            "recovered_fraction": float(np.mean([recovered(p, r.constants, r.expression) for p, r in zip(probs, rs)])),
        }
    first = per_backend[a.backends.split(",")[0]]
    res = {
        "n_problems": len(probs),
        "n_starts": a.n_starts,
        "points_per_problem": int(len(probs[0]["y"])),
        "backend": a.backends.split(",")[0],
        "ours_problems_per_s": first["problems_per_s"],
        "ours_problems_per_s_incl_compile": first["problems_per_s_incl_compile"],
        "ours_jit_compile_s": first["jit_compile_s"],
        "scipy_problems_per_s": len(probs) / t_scipy,
        "scipy_problems_per_s_first_run": len(probs) / t_scipy_runs[0],
        "speedup_steady": first["speedup_steady"],
        "speedup_incl_compile": first["speedup_incl_compile"],
        "ours_recovered_fraction": first["recovered_fraction"],
        "scipy_recovered_fraction": float(rec_scipy),
        "cpu_count": os.cpu_count(),
        "compile_cache": bool(a.compile_cache),
    }
    for k, v in res.items():
        print(f"{k:34s} {v:.4g}" if isinstance(v, float) else f"{k:34s} {v}")
    for backend, r in per_backend.items():
        print(f"{backend:8s} " + "  ".join(f"{k} {v:.4g}" for k, v in r.items()))
    res["backends"] = per_backend
    res["one_off"] = oneoff
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
