"""SymbolicGPT vs gplearn, an MLP and pyoperon, every setting of thesis ch. 2 (Fig. 2.2, 2.3b,
2.3c, Table 2.1), the thesis' inference protocol beside ours, and C-SymbolicGPT (appendix A, Fig. A.3).

Run::

    python -m experiments.symbolicgpt                       # default: 1var and 3var, both protocols
    python -m experiments.symbolicgpt --quick --setting 1var --workdir /tmp/sg   # smoke test
    python -m experiments.symbolicgpt --setting 2var,general,general2 --workdir runs/symbolicgpt
    python -m experiments.symbolicgpt --setting 1var --conditional    # + C-SymbolicGPT (Fig. A.3)
    python -m experiments.symbolicgpt evaluate --setting 1var --workdir runs/sg-bar \
        --model-from runs/symbolicgpt --fit-points 60 --test-points 200 --n-test 30 \
        --methods symbolicgpt,operon --protocol ours --operon-generations 1000 --benchmarks "" \
        --sweep-problems 0                                     # the bar: SymbolicGPT vs Operon
    python -m experiments.symbolicgpt train --setting 2var --preset thesis --n-train 500000 \
        --steps 100000 --batch-size 128 --max-points 500       # thesis sizes (accelerator)

Settings (``--setting``, comma-separated; each in ``WORKDIR/<setting>``): ``1var``, ``2var``,
``3var`` (30 / 200 / 500 points), ``general`` (1..9 variables, U{20..250} points) and
``general2`` (the general model on the skeletons of the 12 Nguyen and the AI-Feynman
equations with training-like constants and points, see ``symbolicgpt_data``). Fig. 2.2's
four panels (1var, 2var, 3var, general) are drawn from every setting run in the workdir.

Protocols (``--protocol ours,thesis``): *ours* samples ``--n-samples`` skeletons (top-k,
k=40), fits each with ``--n-starts``-start BFGS on the scale-robust objective and keeps the
best on the fit points; *thesis* takes one top-k sample and fits it with SciPy BFGS from
all-ones constants, one start, plain MSE, no normalisation (``FitConfig.thesis()``). Both are
in the records and ``results.json`` (methods ``symbolicgpt`` and ``symbolicgpt-thesis``).
The thesis' cumulative MSE_N plots use the natural log (the authors' plotting code); ours
use log10: every axis and table says which (``*_ln.png`` / ``frac_below_ln``: natural log).

Protocol of a problem. Generated test equations get fit points in the training range
[-3, 3]^d (as many as the test instance has, or ``--fit-points``) and held-out points in
([-5,-3] U [3,5])^d (the generator's test split, or ``--test-points`` fresh ones); Nguyen
and Feynman use independent train / test draws from their ranges. Each method sees only
the fit points. Errors are MSE_N on the held-out points; times are wall seconds of ``fit``.

Runtime: the default (1var + 3var, 20 generated problems + the Nguyen equations each, both
protocols, every baseline, sweeps on 10 problems) took 9:56 wall on this quiet 2-core CPU: 1var
226 s (data 15 s, training 96 s), 3var 368 s (training 112 s), with symreg's persistent
compilation cache filled by earlier runs (a fresh machine compiles the fitting programs once more:
the first fit of a process takes about 4 s instead of 1). Its fractions under log10 MSE_N -5
(median seconds per problem): 1var symbolicgpt 0.50 (0.26 s), thesis protocol 0.05, gplearn 0.15
(2.17 s), MLP 0.00, Operon at 200 generations 0.40 (1.22 s); 3var symbolicgpt 0.35 (1.46 s),
thesis protocol 0.10, gplearn 0.15 (2.10 s), MLP 0.00, Operon 0.25 (2.58 s).

Measured (1var, the bar's protocol, the command above with ``--n-test 20 --protocol
ours,thesis --conditional``): 20
generated problems fit on 60 points and scored on 200 fresh held-out ones, fraction under
log10 MSE_N -5 (median seconds per problem, busy machine): symbolicgpt 0.45 (1.26 s),
symbolicgpt-thesis 0.10 (0.02 s; one sample, invalid for about half the hard problems),
operon at 1000 generations 0.40 (25.2 s), c-symbolicgpt with the true node controls 0.50
(1.08 s), with the neutral control 0.45 (1.10 s); 705 s wall for the whole evaluation.
Quiet rerun of symbolicgpt vs operon with the default run's model: 0.45 (0.36 s) vs 0.40
(6.27 s), 17.4x less time per problem.

Output in ``--workdir``: ``results.json`` ``{setting: {test_set: {method: {"frac_below":
{"-10", "-5", "-2"} (log10 MSE_N), "frac_below_ln": {...} (natural log), "median_seconds",
"n"}}}, "log_base": ...}``; ``fig2_2.png`` / ``fig2_2_ln.png`` (Fig. 2.2, four panels); per
setting in ``WORKDIR/<setting>/``: ``records.jsonl`` (one line per problem and method: both
errors, seconds, true and predicted equation), ``results.json``, ``cumulative_error.png`` and
``cumulative_error_ln.png``, ``time_per_problem.png``, ``performance_over_time.png`` (Fig.
2.3c), ``error_vs_points.png`` (Fig. 2.3b), ``conditional.png`` (Fig. A.3, with
``--conditional``), ``equations.md`` / ``equations.png`` (Table 2.1), ``details.json``; the
models in ``WORKDIR/<setting>/model`` (``c-model``: C-SymbolicGPT) with training metrics in
``train/metrics.jsonl``. A summary table per setting is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

from experiments import flags, symbolicgpt_report
from experiments.symbolicgpt_data import (  # noqa: F401 - re-exported
    SETTINGS,
    _ensure_dataset,
    _eval_on,
    benchmark_test_set,
    general2_test_set,
    generated_test_set,
    model_dir,
    train_setting,
)
from experiments.symbolicgpt_eval import METHODS, THRESHOLDS, evaluate, make_method, run_one, summarize  # noqa: F401
from experiments.symbolicgpt_report import print_summary, write_figures  # noqa: F401 - re-exported

PROTOCOLS = ("ours", "thesis")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    setting: tuple[str, ...] = flags.option(
        ("1var", "3var"),
        choices=tuple(SETTINGS),
        help="comma-separated settings, each trained (general2 uses general's model) and evaluated in "
        "WORKDIR/<setting>: 1var, 2var, 3var, general (1 to 9 variables), general2 (benchmark skeletons)",
    )
    protocol: tuple[str, ...] = flags.option(
        PROTOCOLS,
        choices=PROTOCOLS,
        help="SymbolicGPT inference protocols: ours (best of --n-samples samples, --n-starts-start BFGS, "
        "scale-robust objective) and thesis (one sample, SciPy BFGS from all-ones, one start, plain MSE)",
    )
    workdir: str = flags.option(
        "runs/symbolicgpt", help="directory for the generated data, the trained models, records, results and figures"
    )
    model_from: str | None = flags.option(
        None, help="evaluate the models trained in this other workdir (none: train / use this --workdir's)"
    )
    # data and model
    n_train: int = flags.option(10000, help="generated training equations")
    preset: str = flags.option("cpu", help="model size preset of symreg.model (tiny, cpu, small, thesis)")
    max_len: int = flags.option(48, help="longest skeleton in tokens; longer training equations are dropped")
    max_points: int = flags.option(
        128,
        help="points per problem the model reads (training: the first N of each instance, inference: a random N; "
        "constants are fitted on all); the thesis' 3var instances have 500",
    )
    # training (AdamW, warmup + cosine)
    steps: int = flags.option(600, help="training steps (AdamW, warmup + cosine decay)")
    batch_size: int = flags.option(64, help="training batch size")
    learning_rate: float = flags.option(2e-3, help="peak learning rate")
    warmup_steps: int = flags.option(40, help="linear warmup steps")
    weight_decay: float = flags.option(0.01, help="AdamW weight decay")
    conditional: bool = flags.option(
        False, help="also train C-SymbolicGPT (node-control layers, appendix A) on the same data and compare (Fig A.3)"
    )
    # evaluation
    n_test: int = flags.option(20, help="generated test problems per setting (the thesis uses 1000)")
    fit_points: int | None = flags.option(
        None, help="points each method fits on (none: the test instance's count, 30 / 200 / 500 / U{20..250})"
    )
    test_points: int | None = flags.option(
        None, help="fresh held-out points per problem, |x| in [3, 5] (none: the test split's own points)"
    )
    n_samples: int = flags.option(50, help="skeletons SymbolicGPT samples per problem (protocol ours); best fit kept")
    sampling: str = flags.option("top_k", help="how skeletons are sampled: top_k, top_p or greedy")
    top_k: int = flags.option(40, help="k of top-k sampling")
    top_p: float = flags.option(0.9, help="p of nucleus (top-p) sampling")
    n_starts: int = flags.option(8, help="BFGS restarts per candidate skeleton (protocol ours)")
    methods: tuple[str, ...] = flags.option(METHODS, choices=METHODS, help="comma-separated methods to evaluate")
    benchmarks: tuple[str, ...] = flags.option(
        ("nguyen",),
        choices=("nguyen", "feynman"),
        help="comma-separated benchmark families evaluated besides the generated test set (empty: none)",
    )
    gplearn_population: int = flags.option(1000, help="gplearn baseline: population size")
    gplearn_generations: int = flags.option(10, help="gplearn baseline: generations")
    operon_generations: int = flags.option(
        200, help="pyoperon baseline: generations (200 keeps the default run in budget; the bar uses 1000)"
    )
    operon_population: int = flags.option(1000, help="pyoperon baseline: population size")
    sweep_problems: int = flags.option(
        10, help="problems used for the samples and points sweeps of Figs. 2.3b / 2.3c (0: skip them)"
    )
    seed: int = flags.option(0, help="seed of data generation, training, sampling and the baselines")
    workers: int = flags.option(2, help="processes generating data (for 2000 equations or more)")
    progress: bool = flags.option(True, help="show progress bars")

    def __post_init__(self):
        if isinstance(self.setting, str):  # Config(setting="1var") is one setting
            object.__setattr__(self, "setting", (self.setting,))
        bad = [s for s in self.setting if s not in SETTINGS]
        if bad or not self.setting:
            raise ValueError(f"setting must be a non-empty subset of {tuple(SETTINGS)}, got {self.setting!r}")
        bad = [p for p in self.protocol if p not in PROTOCOLS]
        if bad or not self.protocol:
            raise ValueError(f"protocol must be a non-empty subset of {PROTOCOLS}, got {self.protocol!r}")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"methods must be a subset of {METHODS}, got unknown {sorted(unknown)}")
        unknown = set(self.benchmarks) - {"nguyen", "feynman"}
        if unknown:
            raise ValueError(f"benchmarks must be a subset of ('nguyen', 'feynman'), got {sorted(unknown)}")
        for name in ("n_train", "steps", "batch_size", "n_test", "n_samples", "max_len", "n_starts", "max_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("fit_points", "test_points"):
            if getattr(self, name) is not None and getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2 or none, got {getattr(self, name)}")

    @property
    def current(self) -> str:
        """The one setting of a per-setting config (see :func:`for_setting`)."""
        if len(self.setting) != 1:
            raise ValueError(f"this config holds several settings {self.setting}; use for_setting(cfg, s)")
        return self.setting[0]

    @property
    def max_vars(self) -> int:
        v = SETTINGS[self.current]
        return v if isinstance(v, int) else v[1]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def for_setting(cfg: Config, setting: str) -> Config:
    """The config of one setting, working in ``WORKDIR/<setting>``."""
    model_from = cfg.model_from and os.path.abspath(cfg.model_from)
    return dataclasses.replace(
        cfg, setting=(setting,), workdir=os.path.join(cfg.workdir, setting), model_from=model_from
    )


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


def _train_config(cfg: Config, name: str):
    from sortedjax.train import TrainConfig

    return TrainConfig(
        workdir=os.path.join(os.path.dirname(model_dir(cfg)), name),
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
        desc=f"train {name} {train_setting(cfg.current)}",
    )


def train_model(cfg: Config, conditional: bool = False):
    """The setting's SymbolicGPT (``conditional``: C-SymbolicGPT), trained unless a model of
    ``cfg.steps`` steps is already in its model directory."""
    from symreg.model import ModelConfig, load_pretrained, save_pretrained
    from symreg.tokenizer import SkeletonTokenizer
    from symreg.train import make_arrays, train_symbolicgpt

    path = model_dir(cfg, conditional)
    retrain = False  # a finished model of another length is trained again from scratch
    if os.path.exists(os.path.join(path, "config.json")):
        model, saved = load_pretrained(path)
        if saved.get("steps") == cfg.steps:
            print(f"using the trained model in {path}")
            return model
        print(f"the model in {path} was trained {saved.get('steps')} steps, not {cfg.steps}: training again")
        retrain = True
    tok = SkeletonTokenizer()
    t0 = time.time()
    instances = _ensure_dataset(cfg, "train", cfg.n_train, cfg.seed)
    n_points = min(cfg.max_points, max(len(i["y"]) for i in instances))
    arrays, kept = make_arrays(instances, tok, max_len=cfg.max_len, max_vars=cfg.max_vars, n_points=n_points)
    print(f"data: {len(kept)} of {len(instances)} train equations fit max_len={cfg.max_len} ({time.time() - t0:.0f}s)")
    mcfg = ModelConfig.preset(cfg.preset, vocab_size=tok.vocab_size, max_len=cfg.max_len, max_vars=cfg.max_vars)
    t0 = time.time()
    if conditional:
        from symreg.conditional import add_controls, train_conditional

        arrays = add_controls(arrays, [instances[i]["skeleton"] for i in kept])
        tcfg = _train_config(cfg, "c-train")
        result = train_conditional(mcfg, arrays, tcfg, batch_size=cfg.batch_size, restart=retrain)
    else:
        result = train_symbolicgpt(
            mcfg, arrays, _train_config(cfg, "train"), batch_size=cfg.batch_size, restart=retrain
        )
    last = result.history[-1] if result.history else {}
    print(
        f"trained {'C-SymbolicGPT' if conditional else 'SymbolicGPT'} {result.step} steps in {time.time() - t0:.0f}s: "
        + ", ".join(f"{k}={v:.3g}" for k, v in last.items() if k != "step")
    )
    save_pretrained(
        result.model,
        path,
        extra={
            "setting": train_setting(cfg.current),
            "steps": cfg.steps,
            "tokenizer": "SkeletonTokenizer",
            "sampling": {"method": cfg.sampling, "top_k": cfg.top_k, "top_p": cfg.top_p},
            "n_samples": cfg.n_samples,
        },
    )
    return result.model


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
        f"symbolicgpt {command}: settings={','.join(cfg.setting)} protocols={','.join(cfg.protocol)} "
        f"preset={cfg.preset} n_train={cfg.n_train} steps={cfg.steps} n_test={cfg.n_test} (fewer eval problems "
        f"than the thesis' 1000 for the CPU budget) n_samples={cfg.n_samples} workdir={cfg.workdir}"
    )
    results, timings = {}, {}
    for s in cfg.setting:
        one, ts = for_setting(cfg, s), time.time()
        model = c_model = None
        if command in ("all", "train"):
            model = train_model(one) if "symbolicgpt" in cfg.methods else None
            c_model = train_model(one, conditional=True) if cfg.conditional else None
        if command in ("all", "evaluate"):
            results[s] = evaluate(one, model, c_model)
        timings[s] = time.time() - ts
        print(f"setting {s}: {timings[s]:.0f}s")
    if results:
        path = os.path.join(cfg.workdir, "results.json")
        old = json.load(open(path)) if os.path.exists(path) else {}
        with open(path, "w") as f:  # settings run earlier in this workdir are kept
            json.dump({**old, **results, "log_base": {"frac_below": "10", "frac_below_ln": "e"}}, f, indent=1)
        symbolicgpt_report.figure_2_2(cfg.workdir)
    print(f"total wall time {time.time() - t0:.0f}s (" + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + ")")


if __name__ == "__main__":
    main()
