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
import json
import os
import time

import experiments.symbolicgpt.report as symbolicgpt_report
from experiments.common import flags, requires
from experiments.symbolicgpt.config import PROTOCOLS, QUICK, Config, for_setting  # noqa: F401 - the config, re-exported
from experiments.symbolicgpt.data import (  # noqa: F401 - re-exported
    SETTINGS,
    benchmark_test_set,
    ensure_dataset,
    eval_on,
    general2_test_set,
    generated_test_set,
    model_dir,
    train_setting,
)
from experiments.symbolicgpt.evaluate import (  # noqa: F401
    METHODS,
    THRESHOLDS,
    evaluate,
    make_method,
    run_one,
    summarize,
)
from experiments.symbolicgpt.report import print_summary, write_figures  # noqa: F401 - re-exported
from sortedjax.train import TrainConfig
from symreg.checkpoint import load_pretrained, save_pretrained
from symreg.conditional import add_controls, train_conditional
from symreg.model import ModelConfig
from symreg.tokenizer import SkeletonTokenizer
from symreg.train import make_arrays, train_symbolicgpt


def _train_config(cfg: Config, name: str):
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
    instances = ensure_dataset(cfg, "train", cfg.n_train, cfg.seed)
    n_points = min(cfg.max_points, max(len(i["y"]) for i in instances))
    arrays, kept = make_arrays(instances, tok, max_len=cfg.max_len, max_vars=cfg.max_vars, n_points=n_points)
    print(f"data: {len(kept)} of {len(instances)} train equations fit max_len={cfg.max_len} ({time.time() - t0:.0f}s)")
    mcfg = ModelConfig.preset(cfg.preset, vocab_size=tok.vocab_size, max_len=cfg.max_len, max_vars=cfg.max_vars)
    t0 = time.time()
    if conditional:
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
    if command in ("all", "evaluate"):
        needs = {"gplearn": "gplearn", "operon": "pyoperon"}
        requires.require(*[needs[m] for m in cfg.methods if m in needs], why=f"--methods {','.join(cfg.methods)}")
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
