"""experiments.symbolicgpt's evaluation: the methods (SymbolicGPT under both protocols,
C-SymbolicGPT, the baselines), one problem, the summary, the Fig. 2.3 sweeps.

Method names in the records and ``results.json``:
  ``symbolicgpt``            protocol "ours": best of ``n_samples`` top-k samples, each with
                             ``n_starts``-start BFGS on the default (scale-robust) objective;
  ``symbolicgpt-thesis``     protocol "thesis": one top-k sample, constants by SciPy BFGS from
                             all-ones, one start, plain MSE, no normalisation
                             (``symreg.fit.FitConfig.thesis()``);
  ``c-symbolicgpt``          C-SymbolicGPT given the true node controls of the test equation,
  ``c-symbolicgpt-neutral``  C-SymbolicGPT with the neutral (all-unknown) control; both with
                             protocol "ours";
  ``gplearn``, ``mlp``, ``operon``: the baselines (``symreg.baselines``).
Errors are stored as ``log10_mse_n`` and ``ln_mse_n`` (natural log: the authors' plotting code).
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np

import experiments.symbolicgpt.data as data
import experiments.symbolicgpt.report as report
from experiments.symbolicgpt.config import BASELINES, METHODS, THRESHOLDS, Config  # noqa: F401 - re-exported
from symreg import baselines, fit
from symreg.checkpoint import load_pretrained
from symreg.conditional import ControlledSource, control_vector
from symreg.decoding import NeuralCandidateSource, SamplingConfig
from symreg.metrics import log10_mse_n
from symreg.regressor import SymbolicGPTRegressor
from symreg.tokenizer import SkeletonTokenizer


def thesis_fit_config():
    return fit.FitConfig.thesis()


def symbolicgpt_method(cfg: Config, model, *, protocol: str = "ours", n_samples=None, control=None):
    """The SymbolicGPT regressor of ``protocol``; ``control`` (for a C-SymbolicGPT model):
    a node-control row, or "neutral"."""

    if protocol not in ("ours", "thesis"):
        raise ValueError(f"protocol must be 'ours' or 'thesis', got {protocol!r}")
    n = 1 if protocol == "thesis" else (n_samples or cfg.n_samples)
    sampling = SamplingConfig(method=cfg.sampling, top_k=cfg.top_k, top_p=cfg.top_p)
    source = NeuralCandidateSource(
        model, SkeletonTokenizer(), n_samples=n, sampling=sampling, max_points=cfg.max_points, seed=cfg.seed
    )
    if control is not None:
        source = ControlledSource(source, None if isinstance(control, str) else control)
    if protocol == "thesis":
        tcfg = thesis_fit_config()
        return SymbolicGPTRegressor(
            candidate_source=source, n_candidates=1, fit_config=tcfg, n_starts=1, backend=tcfg.backend, seed=cfg.seed
        )
    return SymbolicGPTRegressor(candidate_source=source, n_candidates=n, n_starts=cfg.n_starts, seed=cfg.seed)


def make_method(name: str, cfg: Config, model=None):
    """A fresh regressor with ``fit(X, y)``, ``predict(X)`` and ``expression_``."""

    if name == "symbolicgpt":
        return symbolicgpt_method(cfg, model)
    if name == "symbolicgpt-thesis":
        return symbolicgpt_method(cfg, model, protocol="thesis")
    if name == "gplearn":
        return baselines.GPLearnBaseline(
            population_size=cfg.gplearn_population, generations=cfg.gplearn_generations, random_state=cfg.seed
        )
    if name == "mlp":
        return baselines.MLPBaseline(random_state=cfg.seed)
    if name == "operon":
        return baselines.OperonBaseline(
            generations=cfg.operon_generations, population_size=cfg.operon_population, random_state=cfg.seed
        )
    raise ValueError(f"unknown method {name!r}")


def run_one(method, problem: dict) -> dict:
    t0 = time.perf_counter()
    try:
        method.fit(problem["X"], problem["y"])
        seconds = time.perf_counter() - t0
        err = log10_mse_n(problem["y_test"], method.predict(problem["X_test"]))
        pred = str(getattr(method, "expression_", ""))
    except Exception as e:  # a failed fit counts as an infinite error, and is recorded
        seconds, err, pred = time.perf_counter() - t0, float("inf"), f"error: {type(e).__name__}: {e}"[:200]
    return {"log10_mse_n": err, "ln_mse_n": err * math.log(10), "seconds": seconds, "predicted": pred}


def summarize(records: list[dict]) -> dict:
    """``{test_set: {method: {"frac_below": {...}, "frac_below_ln": {...}, "median_seconds": s,
    "n": count}}}``: fractions with log10 MSE_N (``frac_below``) and natural-log MSE_N
    (``frac_below_ln``, the thesis' plotting code) under -10 / -5 / -2."""
    out: dict = {}
    for r in records:
        out.setdefault(r["test_set"], {}).setdefault(r["method"], []).append(r)
    for by_method in out.values():
        for m, rows in by_method.items():
            err = np.array([r["log10_mse_n"] for r in rows], float)
            ln = err * math.log(10)
            by_method[m] = {
                "frac_below": {str(t): float(np.mean(err < t)) for t in THRESHOLDS},
                "frac_below_ln": {str(t): float(np.mean(ln < t)) for t in THRESHOLDS},
                "median_seconds": float(np.median([r["seconds"] for r in rows])),
                "n": len(rows),
            }
    return out


def sweeps(cfg: Config, model, problems: list[dict]) -> dict:
    """Fig. 2.3c (error vs time as the number of samples grows) and 2.3b (error vs points)."""
    probs = problems[: cfg.sweep_problems]
    out: dict = {"samples": [], "points": []}
    if not probs:
        return out
    for n in sorted({1, 4, 16, cfg.n_samples}):
        rows = [run_one(symbolicgpt_method(cfg, model, n_samples=n), p) for p in probs]
        err = np.array([r["log10_mse_n"] for r in rows])
        out["samples"].append(
            {
                "n_samples": n,
                "median_seconds": float(np.median([r["seconds"] for r in rows])),
                "frac_below_-5": float(np.mean(err < -5)),
            }
        )
    rng = np.random.default_rng(cfg.seed)
    n_max = min(len(p["y"]) for p in probs)
    for n_pts in sorted({k for k in (5, 10, 20, 50, 100, 200) if k < n_max} | {n_max}):
        errs = []
        for p in probs:
            idx = rng.choice(len(p["y"]), n_pts, replace=False)
            errs.append(
                run_one(symbolicgpt_method(cfg, model), {**p, "X": p["X"][idx], "y": p["y"][idx]})["log10_mse_n"]
            )
        errs = np.array(errs)
        out["points"].append(
            {
                "n_points": n_pts,
                "median_log10_mse_n": float(np.median(errs)),
                "frac_below_-5": float(np.mean(errs < -5)),
            }
        )
    return out


def method_names(cfg: Config) -> list[str]:
    names = []
    for m in cfg.methods:
        if m == "symbolicgpt":
            names += ["symbolicgpt" if p == "ours" else "symbolicgpt-thesis" for p in cfg.protocol]
        else:
            names.append(m)
    if cfg.conditional:
        names += ["c-symbolicgpt", "c-symbolicgpt-neutral"]
    return names


def evaluate(cfg: Config, model=None, c_model=None) -> dict:
    """Every method on the setting's test set and the benchmark families; writes
    ``records.jsonl``, ``results.json``, ``details.json`` and the figures in ``cfg.workdir``."""
    from tqdm.auto import tqdm

    needs_model = "symbolicgpt" in cfg.methods
    if model is None and needs_model:
        model, _ = load_pretrained(data.model_dir(cfg))
    if c_model is None and cfg.conditional:
        c_model, _ = load_pretrained(data.model_dir(cfg, conditional=True))
    test_sets = {cfg.current: data.generated_test_set(cfg, cfg.n_test)}
    if cfg.current != "general2":  # general2 is itself built from the benchmark skeletons
        for family in cfg.benchmarks:
            test_sets[family] = data.benchmark_test_set(cfg, family)
    names = method_names(cfg)
    print(
        "evaluating on "
        + ", ".join(f"{k}: {len(v)} problems" for k, v in test_sets.items())
        + f" (max_vars={cfg.max_vars}); methods: {', '.join(names)}"
    )
    records = []
    os.makedirs(cfg.workdir, exist_ok=True)
    with open(os.path.join(cfg.workdir, "records.jsonl"), "w") as f:
        for ts, problems in test_sets.items():
            for p in tqdm(problems, desc=f"eval {cfg.current}/{ts}", disable=not cfg.progress):
                for m in names:
                    if m == "c-symbolicgpt":
                        method = symbolicgpt_method(cfg, c_model, control=control_vector(p["skeleton"]))
                    elif m == "c-symbolicgpt-neutral":
                        method = symbolicgpt_method(cfg, c_model, control="neutral")
                    else:
                        method = make_method(m, cfg, model)
                    r = {"test_set": ts, "method": m, "problem": p["name"], "true": p["expr"], **run_one(method, p)}
                    records.append(r)
                    f.write(json.dumps(r) + "\n")
                    f.flush()
    results = summarize(records)
    with open(os.path.join(cfg.workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    sw = sweeps(cfg, model, test_sets[cfg.current]) if needs_model else {}
    with open(os.path.join(cfg.workdir, "details.json"), "w") as f:
        json.dump({"config": cfg.as_dict(), "sweeps": sw}, f, indent=1)
    report.write_figures(cfg, records, results, sw)
    report.print_summary(cfg, results)
    return results


if __name__ == "__main__":
    raise SystemExit(
        "experiments.symbolicgpt.evaluate is part of python -m experiments.symbolicgpt, not a command of its own"
    )
