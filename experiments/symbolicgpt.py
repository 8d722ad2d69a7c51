"""SymbolicGPT vs gplearn, an MLP and pyoperon (thesis ch. 2: Fig. 2.2, 2.3b, 2.3c, Table 2.1).

Run (the whole offline 1-variable pipeline: generate, train, evaluate, figures)::

    python -m experiments.symbolicgpt                          # default, --workdir runs/symbolicgpt
    python -m experiments.symbolicgpt --quick --workdir /tmp/sg   # smoke test, ~2-3 minutes
    python -m experiments.symbolicgpt train --setting 2var --workdir runs/sg2 --preset thesis \\
        --n-train 500000 --steps 100000 --batch-size 128
    python -m experiments.symbolicgpt evaluate --setting 2var --workdir runs/sg2 --n-test 1000

Expected runtime: measured about 14 minutes on a 2-core CPU (65 s data, 234 s training of
the ``cpu`` preset, 549 s evaluation of 30 test problems plus the 1-variable Nguyen / Feynman
equations against the three baselines, and the sweeps). Measured summary (1var, 30 problems):
fraction with log10 MSE_N < -5: symbolicgpt 0.50, operon 0.37, gplearn 0.10, mlp 0.00; median
seconds per problem: symbolicgpt 0.37, gplearn 3.6, operon 8.7, mlp 0.04. The thesis
sizes (``--preset thesis``, 1000 test problems per setting) need an accelerator, where
training is about an hour and evaluation is dominated by the CPU baselines (gplearn
seconds per problem).

Protocol. Every generated test equation gets ``fit`` points in the training range
[-3, 3]^d and held-out points in ([-5,-3] U [3,5])^d (the generator's test split); Nguyen
and Feynman use independent train / test draws from their ranges. Each method sees only
the fit points; SymbolicGPT samples ``--n-samples`` skeletons (top-k, k=40), fits all their
constants with the batched BFGS, and keeps the best by MSE_N on the fit points. Errors are
log10 MSE_N on the held-out points; times are wall seconds of ``fit`` per problem.

Output in ``--workdir``: ``results.json`` ``{test_set: {method: {"frac_below": {"-10": f,
"-5": f, "-2": f}, "median_seconds": s, "n": count}}}``; ``records.jsonl`` (one line per
problem and method: error, seconds, true and predicted equation); ``cumulative_error.png``
(Fig. 2.2), ``time_per_problem.png``, ``performance_over_time.png`` (Fig. 2.3c),
``error_vs_points.png`` (Fig. 2.3b), ``equations.md`` / ``equations.png`` (Table 2.1),
``details.json`` (sweeps and settings), the trained model in ``model/`` and training
metrics in ``train/metrics.jsonl``. A summary table is printed at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np

from experiments import flags, symbolicgpt_report
from experiments.symbolicgpt_data import (  # noqa: F401 - re-exported
    SETTINGS,
    _ensure_dataset,
    _eval_on,
    benchmark_test_set,
    generated_test_set,
)
from experiments.symbolicgpt_report import print_summary, write_figures  # noqa: F401 - re-exported

METHODS = ("symbolicgpt", "gplearn", "mlp", "operon")
THRESHOLDS = (-10, -5, -2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    setting: str = flags.option(
        "1var", choices=tuple(SETTINGS), help="variables per equation: 1var, 2var, 3var, or general (1 to 9 variables)"
    )
    workdir: str = flags.option(
        "runs/symbolicgpt", help="directory for the generated data, the trained model, records, results and figures"
    )
    # data and model
    n_train: int = flags.option(10000, help="generated training equations")
    preset: str = flags.option("cpu", help="model size preset of symreg.model (tiny, cpu, small, thesis)")
    max_len: int = flags.option(48, help="longest skeleton in tokens; longer training equations are dropped")
    # training (AdamW, warmup + cosine)
    steps: int = flags.option(600, help="training steps (AdamW, warmup + cosine decay)")
    batch_size: int = flags.option(64, help="training batch size")
    learning_rate: float = flags.option(2e-3, help="peak learning rate")
    warmup_steps: int = flags.option(40, help="linear warmup steps")
    weight_decay: float = flags.option(0.01, help="AdamW weight decay")
    # evaluation
    n_test: int = flags.option(30, help="generated test problems (the thesis uses 1000)")
    n_samples: int = flags.option(50, help="skeletons SymbolicGPT samples per problem; the best fit is kept")
    sampling: str = flags.option("top_k", help="how skeletons are sampled: top_k, top_p or greedy")
    top_k: int = flags.option(40, help="k of top-k sampling")
    top_p: float = flags.option(0.9, help="p of nucleus (top-p) sampling")
    n_starts: int = flags.option(8, help="BFGS restarts per candidate skeleton when fitting its constants")
    methods: tuple[str, ...] = flags.option(METHODS, choices=METHODS, help="comma-separated methods to evaluate")
    benchmarks: tuple[str, ...] = flags.option(
        ("nguyen", "feynman"),
        choices=("nguyen", "feynman"),
        help="comma-separated benchmark equation families evaluated besides the generated test set",
    )
    gplearn_population: int = flags.option(1000, help="gplearn baseline: population size")
    gplearn_generations: int = flags.option(10, help="gplearn baseline: generations")
    operon_generations: int = flags.option(1000, help="pyoperon baseline: generations")
    operon_population: int = flags.option(1000, help="pyoperon baseline: population size")
    sweep_problems: int = flags.option(
        15, help="problems used for the samples and points sweeps of Figs. 2.3b / 2.3c (0: skip them)"
    )
    seed: int = flags.option(0, help="seed of data generation, training, sampling and the baselines")
    workers: int = flags.option(2, help="processes generating data (for 2000 equations or more)")
    progress: bool = flags.option(True, help="show progress bars")

    def __post_init__(self):
        if self.setting not in SETTINGS:
            raise ValueError(f"setting must be one of {sorted(SETTINGS)}, got {self.setting!r}")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"methods must be a subset of {METHODS}, got unknown {sorted(unknown)}")
        unknown = set(self.benchmarks) - {"nguyen", "feynman"}
        if unknown:
            raise ValueError(f"benchmarks must be a subset of ('nguyen', 'feynman'), got {sorted(unknown)}")
        for name in ("n_train", "steps", "batch_size", "n_test", "n_samples", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def max_vars(self) -> int:
        v = SETTINGS[self.setting]
        return v if isinstance(v, int) else v[1]


QUICK = {
    "n_train": 1500,
    "preset": "tiny",
    "steps": 150,
    "batch_size": 32,
    "n_test": 6,
    "n_samples": 16,
    "gplearn_population": 200,
    "gplearn_generations": 5,
    "operon_generations": 50,
    "operon_population": 200,
    "sweep_problems": 3,
}


# ----------------------------------------------------------------------------- train


def train_model(cfg: Config):
    from sortedjax.train import TrainConfig
    from symreg.model import ModelConfig, load_pretrained, save_pretrained
    from symreg.tokenizer import SkeletonTokenizer
    from symreg.train import make_arrays, train_symbolicgpt

    model_dir = os.path.join(cfg.workdir, "model")
    retrain = False  # a finished model of another length is trained again from scratch
    if os.path.exists(os.path.join(model_dir, "config.json")):
        model, saved = load_pretrained(model_dir)
        if saved.get("steps") == cfg.steps:
            print(f"using the trained model in {model_dir}")
            return model
        print(f"the model in {model_dir} was trained {saved.get('steps')} steps, not {cfg.steps}: training again")
        retrain = True
    tok = SkeletonTokenizer()
    t0 = time.time()
    instances = _ensure_dataset(cfg, "train", cfg.n_train, cfg.seed)
    arrays, kept = make_arrays(instances, tok, max_len=cfg.max_len, max_vars=cfg.max_vars)
    print(f"data: {len(kept)} of {len(instances)} train equations fit max_len={cfg.max_len} ({time.time() - t0:.0f}s)")
    mcfg = ModelConfig.preset(cfg.preset, vocab_size=tok.vocab_size, max_len=cfg.max_len, max_vars=cfg.max_vars)
    tcfg = TrainConfig(
        workdir=os.path.join(cfg.workdir, "train"),
        steps=cfg.steps,
        learning_rate=cfg.learning_rate,
        schedule="warmup_cosine",
        warmup_steps=min(cfg.warmup_steps, cfg.steps),
        optimizer="adamw",
        weight_decay=cfg.weight_decay,
        grad_clip_norm=1.0,
        checkpoint_every=max(cfg.steps // 4, 1),
        log_every=10,
        seed=cfg.seed,
        progress=cfg.progress,
        desc="train symbolicgpt",
    )
    t0 = time.time()
    result = train_symbolicgpt(mcfg, arrays, tcfg, batch_size=cfg.batch_size, restart=retrain)
    last = result.history[-1] if result.history else {}
    print(
        f"trained {result.step} steps in {time.time() - t0:.0f}s: "
        + ", ".join(f"{k}={v:.3g}" for k, v in last.items() if k != "step")
    )
    save_pretrained(
        result.model,
        model_dir,
        extra={
            "setting": cfg.setting,
            "steps": cfg.steps,
            "tokenizer": "SkeletonTokenizer",
            "sampling": {"method": cfg.sampling, "top_k": cfg.top_k, "top_p": cfg.top_p},
            "n_samples": cfg.n_samples,
        },
    )
    return result.model


# ----------------------------------------------------------------------------- methods


def make_method(name: str, cfg: Config, model=None, n_samples: int | None = None):
    """A fresh regressor with ``fit(X, y)``, ``predict(X)`` and ``expression_``."""
    if name == "symbolicgpt":
        from symreg.decoding import NeuralCandidateSource, SamplingConfig
        from symreg.regressor import SymbolicGPTRegressor
        from symreg.tokenizer import SkeletonTokenizer

        sampling = SamplingConfig(method=cfg.sampling, top_k=cfg.top_k, top_p=cfg.top_p)
        source = NeuralCandidateSource(
            model, SkeletonTokenizer(), n_samples=n_samples or cfg.n_samples, sampling=sampling, seed=cfg.seed
        )
        return SymbolicGPTRegressor(
            candidate_source=source, n_candidates=n_samples or cfg.n_samples, n_starts=cfg.n_starts, seed=cfg.seed
        )
    from symreg import baselines

    if name == "gplearn":
        return baselines.GPLearnBaseline(
            population_size=cfg.gplearn_population, generations=cfg.gplearn_generations, random_state=cfg.seed
        )
    if name == "mlp":
        return baselines.MLPBaseline(random_state=cfg.seed)
    return baselines.OperonBaseline(
        generations=cfg.operon_generations, population_size=cfg.operon_population, random_state=cfg.seed
    )


def run_one(method, problem: dict) -> dict:
    from symreg.metrics import log10_mse_n

    t0 = time.perf_counter()
    try:
        method.fit(problem["X"], problem["y"])
        seconds = time.perf_counter() - t0
        err = log10_mse_n(problem["y_test"], method.predict(problem["X_test"]))
        pred = str(getattr(method, "expression_", ""))
    except Exception as e:  # a failed fit counts as an infinite error, and is recorded
        seconds, err, pred = time.perf_counter() - t0, float("inf"), f"error: {type(e).__name__}: {e}"[:200]
    return {"log10_mse_n": err, "seconds": seconds, "predicted": pred}


# ----------------------------------------------------------------------------- evaluate


def summarize(records: list[dict]) -> dict:
    """``{test_set: {method: {"frac_below": {...}, "median_seconds": s, "n": count}}}``."""
    out: dict = {}
    for r in records:
        out.setdefault(r["test_set"], {}).setdefault(r["method"], []).append(r)
    for by_method in out.values():
        for m, rows in by_method.items():
            err = np.array([r["log10_mse_n"] for r in rows], float)
            by_method[m] = {
                "frac_below": {str(t): float(np.mean(err < t)) for t in THRESHOLDS},
                "median_seconds": float(np.median([r["seconds"] for r in rows])),
                "n": len(rows),
            }
    return out


def _sweeps(cfg: Config, model, problems: list[dict]) -> dict:
    """Fig. 2.3c (error vs time as the number of samples grows) and 2.3b (error vs points)."""
    from symreg.metrics import log10_mse_n

    probs = problems[: cfg.sweep_problems]
    sweeps: dict = {"samples": [], "points": []}
    if not probs:
        return sweeps
    for n in sorted({1, 4, 16, cfg.n_samples}):
        rows = [run_one(make_method("symbolicgpt", cfg, model, n_samples=n), p) for p in probs]
        err = np.array([r["log10_mse_n"] for r in rows])
        sweeps["samples"].append(
            {
                "n_samples": n,
                "median_seconds": float(np.median([r["seconds"] for r in rows])),
                "frac_below_-5": float(np.mean(err < -5)),
            }
        )
    rng = np.random.default_rng(cfg.seed)
    for n_pts in (5, 10, 20, len(probs[0]["y"])):
        errs = []
        for p in probs:
            idx = rng.choice(len(p["y"]), min(n_pts, len(p["y"])), replace=False)
            sub = {**p, "X": p["X"][idx], "y": p["y"][idx]}
            errs.append(run_one(make_method("symbolicgpt", cfg, model), sub)["log10_mse_n"])
        errs = np.array(errs)
        sweeps["points"].append(
            {
                "n_points": n_pts,
                "median_log10_mse_n": float(np.median(errs)),
                "frac_below_-5": float(np.mean(errs < -5)),
            }
        )
    del log10_mse_n
    return sweeps


def evaluate(cfg: Config, model=None) -> dict:
    from tqdm.auto import tqdm

    if model is None and "symbolicgpt" in cfg.methods:
        from symreg.model import load_pretrained

        model, _ = load_pretrained(os.path.join(cfg.workdir, "model"))
    test_sets = {cfg.setting: generated_test_set(cfg, cfg.n_test)}
    for family in cfg.benchmarks:
        test_sets[family] = benchmark_test_set(cfg, family)
    print(
        "evaluating on "
        + ", ".join(f"{k}: {len(v)} problems" for k, v in test_sets.items())
        + f" (max_vars={cfg.max_vars}); methods: {', '.join(cfg.methods)}"
    )
    records = []
    rec_path = os.path.join(cfg.workdir, "records.jsonl")
    with open(rec_path, "w") as f:
        for ts, problems in test_sets.items():
            for p in tqdm(problems, desc=f"eval {ts}", disable=not cfg.progress):
                for m in cfg.methods:
                    r = {
                        "test_set": ts,
                        "method": m,
                        "problem": p["name"],
                        "true": p["expr"],
                        **run_one(make_method(m, cfg, model), p),
                    }
                    records.append(r)
                    f.write(json.dumps(r) + "\n")
                    f.flush()
    results = summarize(records)
    with open(os.path.join(cfg.workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    sweeps = _sweeps(cfg, model, test_sets[cfg.setting]) if "symbolicgpt" in cfg.methods else {}
    with open(os.path.join(cfg.workdir, "details.json"), "w") as f:
        json.dump({"config": dataclasses.asdict(cfg), "sweeps": sweeps}, f, indent=1)
    symbolicgpt_report.write_figures(cfg, records, results, sweeps)
    symbolicgpt_report.print_summary(cfg, results)
    return results


# ----------------------------------------------------------------------------- CLI


def _parser(quick: bool = False):
    p = flags.parser_for(Config, __doc__, defaults=QUICK if quick else None)
    p.add_argument(
        "command",
        nargs="?",
        default="all",
        choices=("all", "train", "evaluate"),
        help="all: train, then evaluate; train: generate data and train only; evaluate: evaluate "
        "the model trained in --workdir (default: all)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes for a smoke test ("
        + ", ".join(f"{k}={v}" for k, v in QUICK.items())
        + "); flags given explicitly still win",
    )
    return p


def parse_args(argv=None) -> tuple[str, Config]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--quick", action="store_true")
    quick = pre.parse_known_args(argv)[0].quick
    p = _parser(quick)
    a = p.parse_args(argv)
    return a.command, flags.config_from(p, Config, a)


def main(argv=None) -> None:
    command, cfg = parse_args(argv)
    os.makedirs(cfg.workdir, exist_ok=True)
    t0 = time.time()
    print(
        f"symbolicgpt {command}: setting={cfg.setting} preset={cfg.preset} n_train={cfg.n_train} "
        f"steps={cfg.steps} n_test={cfg.n_test} (fewer eval problems than the thesis' 1000 for the CPU budget) "
        f"n_samples={cfg.n_samples} workdir={cfg.workdir}"
    )
    model = train_model(cfg) if command in ("all", "train") else None
    if command in ("all", "evaluate"):
        evaluate(cfg, model)
    print(f"total wall time {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
