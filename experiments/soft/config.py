"""The configuration of ``python -m experiments.soft``: its flags are these fields."""

from __future__ import annotations

import dataclasses

from experiments.common import flags
from sortedjax import sharding
from sortedjax.methods import soft as soft_lib

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SoftExperiment:
    workdir: str = flags.option(
        "runs/soft",
        help="directory for every phase's checkpoints and metrics.jsonl, the exported models, "
        "results.json and the figures; rerunning in it resumes where the run stopped",
    )
    mesh: str = flags.option(
        "8",
        help='device mesh: "8" = 8-way FSDP; "data:2,fsdp:4,tensor:1" = sizes per axis; "all" = FSDP '
        "over every device (simulated CPU devices are made when the host has too few)",
    )
    model: str | None = flags.option(
        None,
        help="Hugging Face LLaMA checkpoint (directory or hub id, with its tokenizer) to fine-tune; "
        "none = build the small offline base model in WORKDIR/base/hf",
    )
    dataset: str = flags.option(
        "builtin",
        help='instruction data: "builtin" (the generated offline task), "alpaca[:FILE_OR_HUB_NAME]", '
        '"triviaqa[:FILE_OR_HUB_NAME]", or a file / hub name recognised by its fields (needs --model)',
    )
    eval_dataset: str | None = flags.option(
        None,
        help="evaluation data, in the --dataset format, validation split; none = hold out the last 5% "
        "(at most 500) of the training records (the built-in task has its own held-out questions)",
    )
    eval_limit: int | None = flags.option(None, help="evaluate on at most this many examples; none = all of them")
    exits: str | None = flags.option(
        None,
        help='comma-separated exit layers, e.g. "2,4,8"; none = layers 12, 16, ..., 40 of a 40-layer '
        "model scaled to the model's depth, plus the last layer",
    )
    dtype: str = flags.option("float32", help="parameter and compute dtype", choices=DTYPES)
    remat: str = flags.option(
        "none",
        help="per-decoder-layer rematerialisation (jax.checkpoint policy): none, full (save nothing), dots "
        "(save matmul outputs), dots_no_batch; see python -m experiments.plan for what fits",
        choices=("none", "full", "dots", "dots_no_batch"),
    )
    opt_state_dtype: str = flags.option(
        "param",
        help='AdamW moments: "param" = the parameter dtype, "float32" = float32 also for bfloat16 parameters',
        choices=("param", "float32"),
    )
    steps: int = flags.option(
        100, help="fine-tuning steps of each of SFT, SoFT and extracted fine-tuning (the equal budget)"
    )
    batch_size: int = flags.option(32, help="examples per optimizer step (split into --grad-accum micro-batches)")
    grad_accum: int = flags.option(1, help="micro-batches per optimizer step; must divide --batch-size")
    learning_rate: float = flags.option(
        1e-3, help="peak learning rate of SFT, SoFT and extracted fine-tuning (AdamW, warmup + cosine)"
    )
    ict_steps: int = flags.option(60, help="steps training the SFT+ICT exit heads on the frozen SFT body")
    ict_learning_rate: float = flags.option(3e-3, help="peak learning rate of the SFT+ICT exit heads")
    extracted: str = flags.option(
        "auto",
        help='layer counts for extracted fine-tuning (the first N layers fine-tuned alone), e.g. "3,5"; '
        '"auto" = the middle exit; "" = none',
    )
    max_len: int = flags.option(
        48, help="training sequence length in tokens; over-long prompts are truncated from the left"
    )
    max_response_len: int = flags.option(8, help="response tokens kept per training example (the rest is cut)")
    max_new_tokens: int = flags.option(6, help="tokens generated (greedily) per evaluation prompt and exit")
    eval_batch_size: int = flags.option(64, help="prompts per generation batch")
    judge: str | None = flags.option(
        None,
        help="Hugging Face directory of an LLM judge (e.g. PandaLM) for the pairwise comparisons; "
        "none = exact match, then ROUGE-L",
    )
    seed: int = flags.option(0, help="seed of initialisation, data order and the built-in task")
    distributed: bool = flags.option(
        False, help="call jax.distributed.initialize() first (every worker of a TPU pod runs the same command)"
    )
    base_layers: int = flags.option(8, help="offline base model: decoder layers")
    base_hidden: int = flags.option(64, help="offline base model: hidden size (the MLP is about 8/3 of it)")
    base_heads: int = flags.option(4, help="offline base model: attention heads (half as many key/value heads)")
    base_steps: int = flags.option(500, help="offline base model: language-model training steps")
    base_learning_rate: float = flags.option(3e-3, help="offline base model: peak learning rate")
    base_docs: int = flags.option(4000, help="offline base model: generated pre-training documents")
    # The base model stands in for a downloaded LLaMA-2, so by default it trains on one device
    # (on simulated CPU devices every collective costs a thread rendezvous); fine-tuning is sharded.
    base_sharded: bool = flags.option(
        False,
        help="train the offline base model on the mesh too (by default it trains on one device, "
        "standing in for a downloaded checkpoint; fine-tuning is always sharded)",
    )

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        for f in (
            "steps",
            "batch_size",
            "grad_accum",
            "ict_steps",
            "max_len",
            "max_response_len",
            "max_new_tokens",
            "eval_batch_size",
            "base_layers",
            "base_hidden",
            "base_heads",
            "base_docs",
        ):
            if getattr(self, f) < (0 if f in ("steps", "ict_steps") else 1):
                raise ValueError(f"{f} must be positive, got {getattr(self, f)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by grad_accum {self.grad_accum}")
        if self.model is None and self.dataset != "builtin":
            raise ValueError("the built-in base model only knows the built-in task; give --model with --dataset")
        if self.model is None:  # the base model's depth is known: check the layer lists before any work
            for name in ("exits", "extracted"):
                spec = getattr(self, name)
                if name == "extracted" and spec in ("auto", ""):
                    continue
                try:
                    soft_lib.parse_exits(spec, self.base_layers)
                except ValueError as e:
                    raise ValueError(f"{name}: {e} (the base model has base_layers={self.base_layers})") from None
        if self.mesh != "all":
            sharding.parse_mesh_spec(self.mesh)


if __name__ == "__main__":
    raise SystemExit("experiments.soft.config is part of python -m experiments.soft, not a command of its own")
