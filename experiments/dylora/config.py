"""The configuration of ``python -m experiments.dylora``: its flags are these fields."""

from __future__ import annotations

import dataclasses
import os

from experiments.common import flags
from sortedjax.data import nlu
from sortedjax.train import TrainConfig

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


def train_config(cfg: DyLoRAExperiment, workdir: str, seed: int, desc: str):
    return TrainConfig.finetune(workdir=workdir, steps=cfg.steps, learning_rate=cfg.learning_rate, seed=seed, desc=desc)


if __name__ == "__main__":
    raise SystemExit("experiments.dylora.config is part of python -m experiments.dylora, not a command of its own")
