"""DyLoRA (thesis ch. 3): one model for every LoRA rank, against LoRA trained rank by rank.

Run (offline)::

    python -m experiments.dylora                 # NLU: Tables 3.2-3.5 and 3.7 on a generated task
    python -m experiments.dylora --task nlg      # NLG: Table 3.6 (GPT-2, BLEU / ROUGE-L per rank)

Real data and models (needs the Hugging Face hub)::

    python -m experiments.dylora --task sst2 --model roberta-base --steps 20000 --batch-size 32 \\
        --learning-rate 5e-4 --max-len 128
    python -m experiments.dylora --task nlg --nlg-data e2e_nlg --model gpt2-medium

What it does (NLU): builds or reuses a small BERT pre-trained here by masked LM on generated text
(``WORKDIR/base/hf``, a Hugging Face checkpoint with its tokenizer, read back through
``encoder.from_pretrained`` as ``--model`` would be), then per seed fine-tunes, at an equal number
of steps, LoRA at every rank of ``--ranks`` and one DyLoRA model (``r_max`` = the largest rank;
``p_B`` uniform, stochastic, unfrozen), plus the ablations (frozen; geometric ``p_B`` with
``--p``; summation over every rank), and scores every model at every rank it can be truncated to.
It prints Table 3.2 (score per model and evaluation rank), the search-free comparison (Tables 3.3 /
3.4: wall time of the LoRA rank grid over one DyLoRA run), Table 3.5 (frozen vs unfrozen) and Table
3.7 (ablations), and writes ``results.json``, ``score_vs_rank.png`` and ``ablations.png``. Each run
trains in its own sub-workdir (orbax resume) and keeps its scores in ``result.json``, so a rerun
reuses finished runs. ``--task nlg`` is :mod:`experiments.dylora_nlg`.

Expected runtime of the default NLU run: 31 min wall on this 2-core CPU while it was shared with
several other jobs (load average ~20; the process got 14% of the CPU: 218 s user + 53 s system),
so about 4-5 min on a quiet machine; the ablations' summation run is 8 losses per step and takes
as long as the other seven runs together. Output of the default run (seed 0)::

    Table 3.2 (negation, accuracy, mean over 1 seed(s)): rows = trained model, columns = evaluation rank
    model             |      8|      7|      6|      5|      4|      3|      2|      1|   best
    ------------------------------------------------------------------------------------------
    LoRA r=1          |      -|      -|      -|      -|      -|      -|      -|  100.0|  100.0
    LoRA r=2          |      -|      -|      -|      -|      -|      -|  100.0|   66.6|  100.0
    LoRA r=4          |      -|      -|      -|      -|  100.0|   96.6|   86.2|   59.4|  100.0
    LoRA r=8          |  100.0|  100.0|   99.6|   93.4|   96.6|   88.8|   95.0|   75.4|  100.0
    DyLoRA            |  100.0|  100.0|  100.0|  100.0|  100.0|  100.0|  100.0|  100.0|  100.0

    Search-free (Tables 3.3/3.4): LoRA grid 437s (best accuracy 100.0 at r=1) vs one DyLoRA run 81s ...: 5.40x

(the 5.40x is inflated by the load: the first two LoRA runs shared the CPU with a test run; at
equal load every run took 77-81 s, i.e. about 4x for the 4-rank grid),

then Table 3.5 (frozen: 62-67% at every rank against 100%) and Table 3.7 (geometric and summation:
100% at every rank).
"""

from __future__ import annotations

import dataclasses
import os
import sys

from experiments import flags
from experiments.results import run_once

TARGETS = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DyLoRAExperiment:
    task: str = flags.option(
        "negation",
        help="NLU task: a generated one (polarity, negation, overlap, contrast, binding: easy to hard), a GLUE "
        "config (sst2, mrpc, cola, qnli, rte, stsb, qqp, mnli; through datasets), or nlg (GPT-2, Table 3.6)",
    )
    model: str | None = flags.option(
        None,
        help="Hugging Face checkpoint (directory or hub id): BERT / RoBERTa for NLU, GPT-2 for nlg; "
        "none = the small model pre-trained here in WORKDIR/base/hf",
    )
    workdir: str = flags.option("runs/dylora", help="directory of every run, results.json and the figures")
    ranks: tuple[int, ...] = flags.option(
        (1, 2, 4, 8), help="LoRA ranks trained separately; DyLoRA's r_max is the largest"
    )
    alpha: float = flags.option(16.0, help="LoRA alpha: every adapter is scaled by alpha / b at rank b")
    p: float = flags.option(0.15, help="parameter of the geometric p_B (Table 3.7 ablation)")
    steps: int = flags.option(400, help="fine-tuning steps of every run (LoRA, DyLoRA and ablations alike)")
    batch_size: int = flags.option(32, help="examples per step")
    learning_rate: float = flags.option(3e-3, help="peak learning rate (AdamW, warmup + cosine)")
    seeds: tuple[int, ...] = flags.option(
        (0,), help="seeds (adapter init, data order, rank draws); scores are averaged"
    )
    target_modules: tuple[str, ...] = flags.option(
        ("attn.q", "attn.v"),
        help="modules that get adapters: ours (attn.q, attn.v: query and value in BERT, RoBERTa and GPT-2) "
        "or Hugging Face names (query, value; GPT-2: c_attn = q, k and v)",
    )
    ablations: bool = flags.option(True, help="also run Table 3.5 (frozen) and Table 3.7 (geometric p_B, summation)")
    max_len: int = flags.option(32, help="tokens per NLU example (nlg training sequences: 64)")
    n_train: int = flags.option(2000, help="generated tasks: training examples")
    n_eval: int = flags.option(500, help="generated tasks: evaluation examples; GLUE: evaluate on at most this many")
    data: str = flags.option("glue", help="GLUE tasks: the datasets source (hub name, or a local JSON / CSV file)")
    eval_data: str | None = flags.option(
        None, help="GLUE tasks: the evaluation source (a local JSON / CSV file); none = --data's evaluation split"
    )
    remat: str = flags.option(
        "none", help="activation rematerialisation of the model's layer stack", choices=("none", "full", "dots")
    )
    pretrain_steps: int = flags.option(400, help="offline base model: masked-LM (NLU) / LM (nlg) pre-training steps")
    nlg_data: str = flags.option(
        "generated", help='nlg: "generated" (offline data-to-text task) or "e2e_nlg[:FILE_OR_HUB_NAME]"'
    )
    max_new_tokens: int = flags.option(24, help="nlg: generated tokens per meaning representation (greedy)")

    def __post_init__(self):
        from sortedjax import nlu

        if self.task != "nlg":
            nlu.task_spec(self.task)  # unknown -> ValueError naming the allowed ones
        if not self.ranks or min(self.ranks) < 1:
            raise ValueError(f"ranks must be positive integers, got {self.ranks}")
        if len(set(self.ranks)) != len(self.ranks):
            raise ValueError(f"ranks must be distinct, got {self.ranks}")
        for f in ("steps", "batch_size", "max_len", "n_train", "n_eval", "max_new_tokens"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.pretrain_steps < 0:
            raise ValueError(f"pretrain_steps must be >= 0, got {self.pretrain_steps}")
        if not 0.0 < self.p <= 1.0:
            raise ValueError(f"p must be in (0, 1], got {self.p}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if self.task in nlu.GLUE and os.path.exists(self.data) and self.eval_data is None:
            raise ValueError(f"data {self.data!r} is a local file: give eval_data too (a file holds one split)")
        if self.remat not in ("none", "full", "dots"):
            raise ValueError(f"remat {self.remat!r} unknown; allowed: ('none', 'full', 'dots')")

    @property
    def r_max(self) -> int:
        return max(self.ranks)


def parse_args(argv=None) -> DyLoRAExperiment:
    return flags.parse(DyLoRAExperiment, argv, __doc__)


def variants(cfg: DyLoRAExperiment) -> dict:
    """Every run of one seed: ``{name: DyLoRAConfig}`` (LoRA per rank, DyLoRA, ablations)."""
    from sortedjax.dylora import DyLoRAConfig

    common = dict(alpha=cfg.alpha, target_modules=tuple(cfg.target_modules))
    out = {f"lora_r{r}": DyLoRAConfig.lora(r, **common) for r in sorted(cfg.ranks)}
    out["dylora"] = DyLoRAConfig(r_max=cfg.r_max, **common)
    if cfg.ablations:
        out["dylora_frozen"] = DyLoRAConfig(r_max=cfg.r_max, frozen=True, **common)
        out["dylora_geometric"] = DyLoRAConfig(r_max=cfg.r_max, distribution="geometric", p=cfg.p, **common)
        out["dylora_summation"] = DyLoRAConfig(r_max=cfg.r_max, objective="summation", **common)
    return out


def train_config(cfg: DyLoRAExperiment, workdir: str, seed: int, desc: str):
    from sortedjax.train import TrainConfig

    return TrainConfig.finetune(workdir=workdir, steps=cfg.steps, learning_rate=cfg.learning_rate, seed=seed, desc=desc)


def load_nlu_data(cfg: DyLoRAExperiment, tok, seed: int):
    """``(spec, train arrays, eval arrays)`` of ``cfg.task``."""
    from sortedjax import nlu, nlu_tasks

    spec = nlu.task_spec(cfg.task)
    if cfg.task in nlu.GLUE:
        train = nlu.load_glue(cfg.task, "train", source=cfg.data)
        ev = nlu.load_glue(cfg.task, spec.eval_split, source=cfg.eval_data or cfg.data, limit=cfg.n_eval)
    else:
        train, ev = nlu_tasks.make_task(cfg.task, n_train=cfg.n_train, n_eval=cfg.n_eval, seed=seed)
    return spec, nlu.encode(tok, train, cfg.max_len), nlu.encode(tok, ev, cfg.max_len)


def run_nlu(cfg: DyLoRAExperiment) -> dict:
    from flax import nnx

    from experiments import dylora_report as report
    from sortedjax import dylora, hf, nlu, nlu_pretrain
    from sortedjax.models import encoder
    from sortedjax.train import ArrayBatches

    os.makedirs(cfg.workdir, exist_ok=True)
    base = cfg.model
    if base is None:
        base = nlu_pretrain.base_model(
            cfg.workdir, nlu_pretrain.PretrainConfig(steps=cfg.pretrain_steps, max_len=cfg.max_len)
        )
    tok = hf.load_tokenizer(base)
    if tok is None:
        raise ValueError(f"no tokenizer files in {base!r}; a BERT / RoBERTa checkpoint needs its tokenizer")
    head = nnx.Any(nnx.PathContains("classifier"), nnx.PathContains("pooler"))  # the task head trains fully
    runs: dict[str, dict[str, dict]] = {}
    for seed in cfg.seeds:
        spec, train_arrays, eval_arrays = load_nlu_data(cfg, tok, seed)
        data = ArrayBatches(train_arrays, min(cfg.batch_size, len(train_arrays["ids"])), seed=seed)
        for name, dcfg in variants(cfg).items():
            dcfg = dataclasses.replace(dcfg, seed=seed)
            run_dir = os.path.join(cfg.workdir, f"seed{seed}", name)

            def compute(
                dcfg=dcfg, run_dir=run_dir, name=name, seed=seed, data=data, spec=spec, eval_arrays=eval_arrays
            ):
                model = encoder.from_pretrained(base, num_labels=spec.num_labels, remat=cfg.remat)
                fit = dylora.fit(
                    model,
                    nlu.task_loss,
                    data,
                    train_config(cfg, run_dir, seed, f"seed {seed} {name}"),
                    dcfg,
                    extra_trainable=head,
                    run_config={"task": cfg.task, "model": base},
                    base_model=base,
                )
                ranks = range(1, dcfg.r_max + 1)
                scores = dylora.evaluate_ranks(fit.model, lambda m, sub: nlu.evaluate(m, eval_arrays, spec, sub), ranks)
                return {"seconds": fit.seconds, "scores": {str(b): s for b, s in scores.items()}, "r_max": dcfg.r_max}

            runs.setdefault(name, {})[str(seed)] = run_once(run_dir, compute)
            r = runs[name][str(seed)]
            print(
                f"seed {seed} {name}: {spec.metric} per rank {[round(v, 1) for v in r['scores'].values()]} ({r['seconds']:.0f}s)"
            )
    return report.finish(cfg, spec.metric, base, runs)


def main(argv=None) -> None:
    cfg = parse_args(argv)
    if cfg.task == "nlg":
        from experiments import dylora_nlg

        dylora_nlg.run(cfg)
    else:
        run_nlu(cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
