"""Sorted RoBERTa (thesis ch. 4, Table 4.3): every layer sorted against standard fine-tuning.

Run (offline)::

    python -m experiments.sortednet_glue

Real data and models (needs the Hugging Face hub)::

    python -m experiments.sortednet_glue --model roberta-base --tasks sst2,mrpc,cola,qnli,rte,stsb,qqp,mnli \\
        --steps 20000 --batch-size 32 --learning-rate 2e-5 --max-len 128 --n-eval 100000

What it does: builds or reuses a small BERT pre-trained here by masked LM on generated text
(``WORKDIR/base/hf``, a Hugging Face checkpoint read back through ``encoder.from_pretrained`` as
``--model`` would be), then per task and seed fine-tunes it twice at an equal number of steps:
*standard* (the full model only) and *sorted* (SortedNet over depth: each step samples a depth
``n`` from P_B over ``1..L`` -- uniform by default -- and trains the first ``n`` layers through
the one shared classifier; ``--objective`` picks Algorithm 2's variant, ``--g-acc`` its gradient
accumulation). Both are then scored at every depth (the first ``n`` layers + the classifier).
``--retune-steps N`` also re-tunes a private classifier per depth of the sorted model (thesis
C.4.4). The offline tasks are generated (:mod:`sortedjax.data.nlu.tasks`: polarity, negation, overlap,
binding); GLUE configs load through ``datasets`` (``--data``: a hub name or a local file).

Output: the per-layer table (Table 4.3; mean over seeds, +- std with several), ``results.json``
and ``score_vs_depth.png``. Each run keeps its scores in ``WORKDIR/<task>/seed<s>/<method>/result.json``,
so a rerun reuses finished runs (delete it after changing settings).

Expected runtime of the default (2-core CPU, measured on a machine shared with other jobs, load
average ~16): pre-training plus polarity and negation plus binding 13:38 wall (2:37 of CPU user time);
overlap alone on the reused base 3:21 (0:40 user). Not measured on an accelerator. Output of the
default run (seed 0; ``--tasks binding``, the hardest generated task, stays at chance, 34.6%, at
this budget)::

    layer |    polarity std | polarity sorted |    negation std | negation sorted |     overlap std |  overlap sorted |...
        1 |            54.0 |           100.0 |            50.6 |           100.0 |            -8.7 |            30.7 |...
        2 |            54.0 |           100.0 |            50.6 |           100.0 |            -6.0 |            31.4 |...
        3 |           100.0 |           100.0 |            71.6 |           100.0 |            -3.8 |            32.9 |...
        4 |           100.0 |           100.0 |            70.4 |           100.0 |            11.1 |            32.6 |...
        5 |           100.0 |           100.0 |            81.4 |           100.0 |            27.5 |            32.1 |...
        6 |           100.0 |           100.0 |           100.0 |           100.0 |            26.8 |            32.0 |...
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np

from experiments.common import flags
from experiments.common.results import run_once
from sortedjax import hf
from sortedjax.data import nlu
from sortedjax.data.nlu import pretrain as nlu_pretrain
from sortedjax.data.nlu import tasks as nlu_tasks
from sortedjax.methods import objectives, retune
from sortedjax.models import encoder
from sortedjax.submodel import Dim, Pool, SubModel
from sortedjax.train import ArrayBatches, TrainConfig, train

OBJECTIVE_CHOICES = ("stochastic", "stochastic_summation", "summation")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SortedGlueExperiment:
    tasks: tuple[str, ...] = flags.option(
        ("polarity", "negation", "overlap"),
        help="tasks: generated (polarity, negation, overlap, binding) and/or GLUE configs (sst2, mrpc, cola, "
        "qnli, rte, stsb, qqp, mnli; through datasets)",
    )
    model: str | None = flags.option(
        None,
        help="BERT / RoBERTa Hugging Face checkpoint (directory or hub id); none = the small BERT pre-trained here",
    )
    workdir: str = flags.option("runs/sortednet_glue", help="directory of every run, results.json and the figure")
    objective: str = flags.option(
        "stochastic", help="Algorithm 2 objective of the sorted model", choices=OBJECTIVE_CHOICES
    )
    distribution: str = flags.option("uniform", help="P_B over the depths", choices=("uniform", "geometric"))
    p: float = flags.option(0.5, help="geometric P_B parameter (weight p (1-p)^i of depth i+1)")
    g_acc: int = flags.option(1, help="Algorithm 2's g_acc: mini-batches (each its own sampled depth) per update")
    steps: int = flags.option(300, help="optimizer updates of every fine-tuning run (standard and sorted alike)")
    batch_size: int = flags.option(32, help="examples per mini-batch")
    learning_rate: float = flags.option(1e-3, help="peak learning rate (AdamW, warmup + cosine)")
    seeds: tuple[int, ...] = flags.option((0,), help="seeds (head init, data order, depth draws); scores are averaged")
    max_len: int = flags.option(32, help="tokens per example")
    n_train: int = flags.option(2000, help="generated tasks: training examples")
    n_eval: int = flags.option(500, help="generated tasks: evaluation examples; GLUE: evaluate on at most this many")
    data: str = flags.option("glue", help="GLUE tasks: the datasets source (hub name, or a local JSON / CSV file)")
    retune_steps: int = flags.option(0, help="C.4.4: steps re-tuning a private classifier per depth (0: off)")
    pretrain_steps: int = flags.option(600, help="offline base model: masked-LM pre-training steps")
    base_layers: int = flags.option(6, help="offline base model: layers (the depths of the table)")
    remat: str = flags.option(
        "none", help="activation rematerialisation of the layer stack", choices=("none", "full", "dots")
    )

    def __post_init__(self):
        if not self.tasks:
            raise ValueError("tasks must name at least one task")
        for t in self.tasks:
            nlu.task_spec(t)  # unknown -> ValueError naming the allowed ones
        for f in ("steps", "batch_size", "g_acc", "max_len", "n_train", "n_eval", "base_layers"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        for f in ("retune_steps", "pretrain_steps"):
            if getattr(self, f) < 0:
                raise ValueError(f"{f} must be >= 0, got {getattr(self, f)}")
        if not 0.0 < self.p <= 1.0:
            raise ValueError(f"p must be in (0, 1], got {self.p}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")


def parse_args(argv=None) -> SortedGlueExperiment:
    return flags.parse(SortedGlueExperiment, argv, __doc__)


# -- pieces bert_in_bert shares ------------------------------------------------------------------
def train_config(cfg, workdir: str, seed: int, desc: str, steps: int | None = None):
    steps = cfg.steps if steps is None else steps
    return TrainConfig.finetune(
        workdir=workdir, steps=steps, learning_rate=cfg.learning_rate, seed=seed, desc=desc, grad_accum=cfg.g_acc
    )


def load_task(cfg, task: str, tok, seed: int):
    """``(spec, train arrays, eval arrays)`` of ``task``."""

    spec = nlu.task_spec(task)
    if task in nlu.GLUE:
        train = nlu.load_glue(task, "train", source=cfg.data)
        ev = nlu.load_glue(task, spec.eval_split, source=cfg.data, limit=cfg.n_eval)
    else:
        train, ev = nlu_tasks.make_task(task, n_train=cfg.n_train, n_eval=cfg.n_eval, seed=seed)
    return spec, nlu.encode(tok, train, cfg.max_len), nlu.encode(tok, ev, cfg.max_len)


def fine_tune(model, pool, objective: str, arrays: dict, tcfg, *, batch_size: int, run_config: dict):
    """Fine-tune ``model`` on ``arrays``: the full model when ``pool`` is None, else SortedNet
    ``objective`` over ``pool``. ``data(step)`` holds ``tcfg.grad_accum`` mini-batches."""

    n = len(arrays["ids"])
    bs = min(batch_size, n // tcfg.grad_accum) * tcfg.grad_accum
    if bs < 1:
        raise ValueError(f"{n} training examples cannot fill g_acc={tcfg.grad_accum} mini-batches")

    def loss_fn(m, batch, key):
        if pool is None:
            return nlu.task_loss(m, batch, None)
        return objectives.make(objective, lambda sub: nlu.task_loss(m, batch, sub), pool)(key)

    return train(model, loss_fn, ArrayBatches(arrays, bs, seed=tcfg.seed), tcfg, run_config=run_config).model


def base_checkpoint(cfg) -> str:
    """``cfg.model`` or the small BERT pre-trained here (built once in ``WORKDIR/base/hf``)."""

    if cfg.model is not None:
        return cfg.model
    pcfg = nlu_pretrain.PretrainConfig(steps=cfg.pretrain_steps, max_len=cfg.max_len, num_layers=cfg.base_layers)
    return nlu_pretrain.base_model(cfg.workdir, pcfg)


# -- the experiment ------------------------------------------------------------------------------
def scores_by_depth(model, arrays, spec, depths, heads: dict | None = None) -> dict[str, float]:
    """``{depth: score}``; ``heads[depth]`` (re-tuned models) replaces ``model`` at that depth."""

    out = {}
    for d in depths:
        m = model if heads is None else heads[f"depth{d}"]
        out[str(d)] = nlu.evaluate(m, arrays, spec, SubModel.of(depth=d))
    return out


def run_task(cfg: SortedGlueExperiment, base: str, tok, task: str, seed: int) -> dict:
    spec, train_arrays, eval_arrays = load_task(cfg, task, tok, seed)
    out = {}
    for method in ("standard", "sorted"):
        run_dir = os.path.join(cfg.workdir, task, f"seed{seed}", method)

        def compute(method=method, run_dir=run_dir):
            model = encoder.from_pretrained(base, num_labels=spec.num_labels, remat=cfg.remat)
            L = model.num_layers
            pool = None
            if method == "sorted":
                dim = Dim.range(
                    1, L, distribution=cfg.distribution, p=cfg.p if cfg.distribution == "geometric" else None
                )
                pool = Pool({"depth": dim}, limits=model.limits)
            tcfg = train_config(cfg, os.path.join(run_dir, "train"), seed, f"{task} seed {seed} {method}")
            rc = {"experiment": "sortednet_glue", "task": task, "method": method, "objective": cfg.objective}
            model = fine_tune(model, pool, cfg.objective, train_arrays, tcfg, batch_size=cfg.batch_size, run_config=rc)
            res = {"scores": scores_by_depth(model, eval_arrays, spec, range(1, L + 1))}
            if cfg.retune_steps and method == "sorted":
                rcfg = dataclasses.replace(
                    train_config(cfg, os.path.join(run_dir, "retune"), seed, "retune", cfg.retune_steps), grad_accum=1
                )
                bs = min(cfg.batch_size, len(train_arrays["ids"]))
                heads = retune.retune_classifiers(
                    model,
                    [{"depth": d} for d in range(1, L + 1)],
                    nlu.task_loss,
                    ArrayBatches(train_arrays, bs, seed=seed),
                    rcfg,
                    head=retune.head_filter("classifier", "pooler"),
                )
                res["retuned"] = scores_by_depth(model, eval_arrays, spec, range(1, L + 1), heads)
            return res

        out[method] = run_once(run_dir, compute)
    out["metric"] = spec.metric
    return out


def summarize(cfg: SortedGlueExperiment, runs: dict) -> dict:
    """Mean / std over seeds per task, method and depth, and the average over tasks."""
    methods = ["standard", "sorted"] + (["retuned"] if cfg.retune_steps else [])
    summary = {}
    for task, by_seed in runs.items():
        summary[task] = {"metric": next(iter(by_seed.values()))["metric"]}
        for m in methods:
            key = m if m != "retuned" else "sorted"
            field = "scores" if m != "retuned" else "retuned"
            per = [r[key][field] for r in by_seed.values()]
            depths = list(per[0])
            summary[task][m] = {
                d: {"mean": float(np.mean([p[d] for p in per])), "std": float(np.std([p[d] for p in per]))}
                for d in depths
            }
    depths = list(summary[cfg.tasks[0]]["standard"])
    summary["avg"] = {
        m: {d: {"mean": float(np.mean([summary[t][m][d]["mean"] for t in cfg.tasks])), "std": 0.0} for d in depths}
        for m in methods
    }
    return summary


def table(cfg: SortedGlueExperiment, summary: dict) -> str:
    methods = [m for m in ("standard", "sorted", "retuned") if m in summary["avg"]]
    short = {"standard": "std", "sorted": "sorted", "retuned": "retuned"}
    cols = [(t, m) for t in (*cfg.tasks, "avg") for m in methods]
    names = [f"{t} {short[m]}" for t, m in cols]
    metrics = ", ".join(f"{t} {summary[t]['metric']}" for t in cfg.tasks)
    lines = [f"Table 4.3 (score % per layer, mean over {len(cfg.seeds)} seed(s); {metrics})"]
    lines.append("layer | " + " | ".join(f"{n:>15}" for n in names))
    lines.append("-" * len(lines[-1]))
    several = len(cfg.seeds) > 1
    for d in summary["avg"]["standard"]:
        cells = []
        for t, m in cols:
            s = summary[t][m][d]
            cells.append(f"{s['mean']:>9.1f} +- {s['std']:<3.1f}" if several and t != "avg" else f"{s['mean']:>15.1f}")
        lines.append(f"{d:>5} | " + " | ".join(cells))
    return "\n".join(lines)


def figure(cfg: SortedGlueExperiment, summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [*cfg.tasks, "avg"]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3), squeeze=False)
    for ax, t in zip(axes[0], panels):
        for m, style in (("standard", "o--"), ("sorted", "s-"), ("retuned", "^:")):
            if m in summary[t]:
                ys = summary[t][m]
                ax.plot([int(d) for d in ys], [v["mean"] for v in ys.values()], style, label=m)
        ax.set_title(t if t == "avg" else f"{t} ({summary[t]['metric']})")
        ax.set_xlabel("layers")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("score %")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: SortedGlueExperiment) -> dict:
    os.makedirs(cfg.workdir, exist_ok=True)
    base = base_checkpoint(cfg)
    tok = hf.load_tokenizer(base)
    if tok is None:
        raise ValueError(f"no tokenizer files in {base!r}; a BERT / RoBERTa checkpoint needs its tokenizer")
    runs = {t: {str(s): run_task(cfg, base, tok, t, s) for s in cfg.seeds} for t in cfg.tasks}
    summary = summarize(cfg, runs)
    text = table(cfg, summary)
    print(text)
    figure(cfg, summary, os.path.join(cfg.workdir, "score_vs_depth.png"))
    results = {"config": dataclasses.asdict(cfg), "base": base, "runs": runs, "summary": summary, "table": text}
    with open(os.path.join(cfg.workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results


def main(argv=None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
