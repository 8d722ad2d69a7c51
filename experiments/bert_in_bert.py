"""BERT-base inside BERT-large (thesis Table C.3): depth, hidden width and heads sorted together.

Run (offline)::

    python -m experiments.bert_in_bert

Real data and models (needs the Hugging Face hub)::

    python -m experiments.bert_in_bert --model bert-large-uncased --task mrpc --inner 12,768,12 \\
        --steps 10000 --batch-size 32 --learning-rate 2e-5 --max-len 128 --n-eval 100000

What it does: builds or reuses a "large" BERT pre-trained here by masked LM on generated text
(``WORKDIR/base/hf``: 8 layers, width 128, 8 heads of 16), then at an equal number of updates
fine-tunes it three ways: *standard* (the large model only), *sorted* (SortedNet over the pool
{inner, large}: each step samples one, where the inner model is the first ``depth`` layers, the
first ``width`` hidden features and the first ``heads`` heads, all three sorted together; the FFN
inner width stays the large model's) and *extracted* (the inner model cut out of the pre-trained
large one with :func:`sortedjax.extract.extract`, fine-tuned alone). Every model is scored at the
large and the inner size. The sorted model's inner sub-model is then extracted, exported with
:func:`sortedjax.models.encoder.save_pretrained` as a Hugging Face ``BertForSequenceClassification``
checkpoint of the inner size (``WORKDIR/inner_hf``: a real smaller BERT config, no padded heads,
with the tokenizer), loaded by ``transformers`` and scored there; the largest logit difference to
the masked sub-model is reported.

Output: the table, ``results.json`` and ``bert_in_bert.png``. Expected runtime of the default
(2-core CPU, measured on a machine shared with other jobs, load average ~20): 18:36 wall, 2:56 of
CPU user time (pre-training 9:05 of it). Not measured on an accelerator. Output of the default run::

    Table C.3 (negation, accuracy %; inner = 4 layers, width 64, 4 heads inside 8 / 128 / 8)
    model     |  large |  inner
    standard  |  100.0 |   48.6
    sorted    |  100.0 |  100.0
    extracted |      - |  100.0
    exported inner model (4 layers, hidden 64, 4 heads) in transformers: 100.0 (max |logit difference| 4.8e-07)
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np

import experiments.sortednet_glue as glue
from experiments.common import flags, requires
from sortedjax import extract, hf
from sortedjax.data import nlu
from sortedjax.data.nlu import pretrain as nlu_pretrain
from sortedjax.models import encoder
from sortedjax.submodel import Pool, SubModel, check_sizes


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertInBertExperiment:
    task: str = flags.option(
        "negation", help="a generated task (polarity, negation, overlap, binding) or a GLUE config (through datasets)"
    )
    model: str | None = flags.option(
        None, help="the large BERT (Hugging Face directory or hub id); none = the small one pre-trained here"
    )
    inner: tuple[int, ...] | None = flags.option(
        None, help="the inner model's depth,width,heads (BERT-base in BERT-large: 12,768,12); none = half of each"
    )
    workdir: str = flags.option("runs/bert_in_bert", help="directory of every run, the export, results.json, figure")
    steps: int = flags.option(300, help="optimizer updates of every fine-tuning run")
    batch_size: int = flags.option(32, help="examples per mini-batch")
    g_acc: int = flags.option(1, help="Algorithm 2's g_acc: mini-batches (each its own sampled sub-model) per update")
    learning_rate: float = flags.option(1e-3, help="peak learning rate (AdamW, warmup + cosine)")
    seed: int = flags.option(0, help="seed (head init, data order, sub-model draws)")
    max_len: int = flags.option(32, help="tokens per example")
    n_train: int = flags.option(2000, help="generated tasks: training examples")
    n_eval: int = flags.option(500, help="generated tasks: evaluation examples; GLUE: evaluate on at most this many")
    data: str = flags.option("glue", help="GLUE tasks: the datasets source (hub name, or a local JSON / CSV file)")
    pretrain_steps: int = flags.option(300, help="offline large model: masked-LM pre-training steps")
    remat: str = flags.option(
        "none", help="activation rematerialisation of the layer stack", choices=("none", "full", "dots")
    )

    def __post_init__(self):
        nlu.task_spec(self.task)
        for f in ("steps", "batch_size", "g_acc", "max_len", "n_train", "n_eval"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.pretrain_steps < 0:
            raise ValueError(f"pretrain_steps must be >= 0, got {self.pretrain_steps}")
        if self.inner is not None and (len(self.inner) != 3 or min(self.inner) < 1):
            raise ValueError(f"inner must be three positive sizes depth,width,heads, got {self.inner}")


def parse_args(argv=None) -> BertInBertExperiment:
    return flags.parse(BertInBertExperiment, argv, __doc__)


def inner_sizes(cfg: BertInBertExperiment, model) -> dict[str, int]:
    """The inner model's ``{depth, width, heads}``, checked to be a BERT transformers can load
    (width = heads x the large model's head_dim) and to fit inside the large model."""

    lim = model.limits
    d, w, h = cfg.inner or (max(lim["depth"] // 2, 1), lim["width"] // 2, max(lim["heads"] // 2, 1))
    sizes = {"depth": d, "width": w, "heads": h}
    check_sizes(sizes, lim)
    hd = model.cfg.head_dim
    if w != h * hd:
        raise ValueError(
            f"inner width {w} with {h} heads: a BERT needs width = heads x head_dim ({hd}), e.g. "
            f"{h * hd} (--inner {d},{h * hd},{h})"
        )
    return sizes


def large_checkpoint(cfg: BertInBertExperiment) -> str:
    if cfg.model is not None:
        return cfg.model
    pcfg = nlu_pretrain.PretrainConfig(
        hidden_size=128,
        num_layers=8,
        num_heads=8,
        intermediate_size=256,
        steps=cfg.pretrain_steps,
        max_len=cfg.max_len,
    )
    return nlu_pretrain.base_model(cfg.workdir, pcfg)


def export_inner(model, sizes: dict, tok, arrays: dict, spec, out_dir: str) -> dict:
    """Write the inner sub-model as a Hugging Face checkpoint, load it with transformers and
    compare: ``{"max_abs_logit_diff", "score"}`` (transformers' score on ``arrays``)."""
    import torch
    import transformers

    sub = SubModel.of(**sizes)
    encoder.save_pretrained(model, out_dir, sub=sub)
    tok.save_pretrained(out_dir)
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(out_dir).eval()
    ours, theirs = [], []
    for i in range(0, len(arrays["ids"]), 256):
        part = {k: arrays[k][i : i + 256] for k in ("ids", "mask", "types")}
        ours.append(np.asarray(model(part["ids"], attention_mask=part["mask"], token_type_ids=part["types"], sub=sub)))
        with torch.no_grad():
            t = {k: torch.tensor(np.asarray(v, np.int64)) for k, v in part.items()}
            theirs.append(ref(input_ids=t["ids"], attention_mask=t["mask"], token_type_ids=t["types"]).logits.numpy())
    ours, theirs = np.concatenate(ours), np.concatenate(theirs)
    pred = theirs[:, 0] if theirs.shape[-1] == 1 else np.argmax(theirs, -1)
    labels = arrays["label"] if spec.regression else arrays["label"].astype(np.int64)
    hf_cfg = json.loads(open(os.path.join(out_dir, "config.json")).read())
    return {
        "max_abs_logit_diff": float(np.max(np.abs(ours - theirs))),
        "score": nlu.metric(spec.metric, pred, labels),
        "config": {
            k: hf_cfg[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
        },
    }


def run(cfg: BertInBertExperiment) -> dict:
    requires.require(
        "torch", why="experiments.bert_in_bert (it checks its exported checkpoint in transformers' PyTorch)"
    )
    os.makedirs(cfg.workdir, exist_ok=True)
    large = large_checkpoint(cfg)
    tok = hf.load_tokenizer(large)
    if tok is None:
        raise ValueError(f"no tokenizer files in {large!r}; a BERT checkpoint needs its tokenizer")
    spec, train_arrays, eval_arrays = glue.load_task(cfg, cfg.task, tok, cfg.seed)
    probe = encoder.from_pretrained(large, num_labels=spec.num_labels)
    sizes, full = inner_sizes(cfg, probe), dict(probe.limits)
    inner, big = SubModel.of(**sizes), SubModel.of(**full)
    results = {"inner": sizes, "large": full, "metric": spec.metric}
    trained = {}
    for method in ("standard", "sorted", "extracted"):
        run_dir = os.path.join(cfg.workdir, method)
        model = encoder.from_pretrained(large, num_labels=spec.num_labels, remat=cfg.remat)
        pool = Pool.from_configs([sizes, full], limits=model.limits) if method == "sorted" else None
        if method == "extracted":
            model = extract.extract(model, sizes)
        tcfg = glue.train_config(cfg, os.path.join(run_dir, "train"), cfg.seed, f"{cfg.task} {method}")
        rc = {"experiment": "bert_in_bert", "task": cfg.task, "method": method, "inner": sizes}
        trained[method] = glue.fine_tune(
            model, pool, "stochastic", train_arrays, tcfg, batch_size=cfg.batch_size, run_config=rc
        )
        m = trained[method]
        results[method] = {"inner": nlu.evaluate(m, eval_arrays, spec, None if method == "extracted" else inner)}
        if method != "extracted":
            results[method]["large"] = nlu.evaluate(m, eval_arrays, spec, big)
    results["export"] = export_inner(
        trained["sorted"], sizes, tok, eval_arrays, spec, os.path.join(cfg.workdir, "inner_hf")
    )
    text = table(cfg, results)
    print(text)
    figure(results, os.path.join(cfg.workdir, "bert_in_bert.png"))
    results["config_flags"] = dataclasses.asdict(cfg)
    results["table"] = text
    with open(os.path.join(cfg.workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results


def table(cfg: BertInBertExperiment, r: dict) -> str:
    i, g = r["inner"], r["large"]
    lines = [
        f"Table C.3 ({cfg.task}, {r['metric']} %; inner = {i['depth']} layers, width {i['width']}, {i['heads']} heads "
        f"inside {g['depth']} / {g['width']} / {g['heads']})",
        f"{'model':<9} | {'large':>6} | {'inner':>6}",
    ]
    for m in ("standard", "sorted", "extracted"):
        large = f"{r[m]['large']:>6.1f}" if "large" in r[m] else f"{'-':>6}"
        lines.append(f"{m:<9} | {large} | {r[m]['inner']:>6.1f}")
    e = r["export"]
    c = e["config"]
    lines.append(
        f"exported inner model ({c['num_hidden_layers']} layers, hidden {c['hidden_size']}, {c['num_attention_heads']} "
        f"heads) in transformers: {e['score']:.1f} (max |logit difference| {e['max_abs_logit_diff']:.1e})"
    )
    return "\n".join(lines)


def figure(r: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    methods = ("standard", "sorted", "extracted")
    x = np.arange(len(methods))
    for off, size in ((-0.2, "large"), (0.2, "inner")):
        ax.bar(x + off, [r[m].get(size, 0.0) for m in methods], 0.4, label=size)
    ax.set_xticks(x, methods)
    ax.set_ylabel(f"{r['metric']} %")
    ax.set_title("BERT-base-sized model inside BERT-large")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
