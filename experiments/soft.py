"""Sorted LLaMA (thesis ch. 5): SoFT against SFT, SFT+ICT and extracted fine-tuning.

Run (offline, 8 simulated CPU devices, FSDP)::

    python -m experiments.soft --mesh=8

Expected runtime: under 10 minutes on a 2-core CPU from a fresh workdir (measured 2:02 wall on
a quiet machine, 6:13 on a busy one; Table 5.2 adds about 13 s); a rerun reuses the base model
and every finished phase. On a TPU pod with a real LLaMA-2 13B::

    python -m experiments.soft --mesh=data:4,fsdp:8 --model meta-llama/Llama-2-13b-hf \\
        --dataset alpaca:tatsu-lab/alpaca --eval-dataset triviaqa --dtype bfloat16 \\
        --steps 2000 --batch-size 64 --grad-accum 4 --max-len 512 --max-response-len 256 \\
        --learning-rate 2e-5 --distributed

(hours; see ``tpu_scripts/soft_pod.sh``).

What it does: builds (or reuses from ``WORKDIR/base/hf``) a small LLaMA-architecture base
model by ordinary language-model training on generated text about an invented world, saves
it with its word-level tokenizer as a Hugging Face checkpoint, loads it back through
``llama.from_pretrained`` (the path a real LLaMA-2 takes), then at an equal budget
fine-tunes it with SFT and SoFT (mean of the exit losses, shared head), trains SFT+ICT heads
on the frozen SFT body, extracted fine-tuning of the first (middle-exit) layers, and greedily
decodes the 37 held-out questions at every exit. Output of the default run (seed 0)::

    exit |     sft EM% |    soft EM% | sft_ict EM% | soft vs sft
    ------------------------------------------------------------
       2 |         5.4 |        64.9 |        45.9 |       +0.59
       3 |        24.3 |        75.7 |        51.4 |       +0.51
       4 |        24.3 |        75.7 |        56.8 |       +0.51
       5 |        35.1 |        78.4 |        56.8 |       +0.43
       6 |        48.6 |        78.4 |        67.6 |       +0.30
       7 |        67.6 |        78.4 |        81.1 |       +0.11
       8 |        91.9 |        75.7 |        91.9 |       -0.16
    extracted fine-tuning of the first 5 layers: EM 78.4% (soft vs extracted: +0.00)
    Table 5.2: decoding speed and quality (37 prompts in batches of 37, 6 new tokens, greedy, 4 drafted tokens per verification, best of 5 timed passes)
    model | mode                     | ms/token | speedup |   EM% |  vs AR | rejection | mean exit
    ----------------------------------------------------------------------------------------------
    soft  | autoregressive           |    1.016 |   1.00x |  75.7 |  +0.00 |         - |         -
    soft  | speculative, draft 2     |    1.381 |   0.74x |  75.7 |  +0.00 |      0.09 |         -
    soft  | speculative, draft 3     |    1.421 |   0.71x |  75.7 |  +0.00 |      0.14 |         -
    soft  | speculative, draft 4     |    1.494 |   0.68x |  75.7 |  +0.00 |      0.06 |         -
    soft  | speculative, draft 5     |    1.552 |   0.65x |  75.7 |  +0.00 |      0.06 |         -
    soft  | speculative, draft 6     |    1.615 |   0.63x |  75.7 |  +0.00 |      0.06 |         -
    soft  | speculative, draft 7     |    1.752 |   0.58x |  75.7 |  +0.00 |      0.05 |         -
    soft  | dynamic                  |    0.873 |   1.16x |  75.7 |  +0.00 |         - |      5.00
    sft   | autoregressive           |    0.928 |   1.00x |  91.9 |  +0.00 |         - |         -
    sft   | speculative, draft 2     |    1.291 |   0.72x |  91.9 |  +0.00 |      0.87 |         -
    sft   | speculative, draft 3     |    1.327 |   0.70x |  91.9 |  +0.00 |      0.61 |         -
    sft   | speculative, draft 4     |    1.443 |   0.64x |  91.9 |  +0.00 |      0.47 |         -
    sft   | speculative, draft 5     |    1.472 |   0.63x |  91.9 |  +0.00 |      0.45 |         -
    sft   | speculative, draft 6     |    1.583 |   0.59x |  91.9 |  +0.00 |      0.25 |         -
    sft   | speculative, draft 7     |    1.613 |   0.58x |  91.9 |  +0.00 |      0.20 |         -
    sft   | dynamic                  |    0.888 |   1.05x |  91.9 |  +0.00 |         - |      5.99

plus ``WORKDIR/results.json`` (``table_5_2``: the decoding rows above; per-exit exact match and ROUGE-L per method, pairwise scores
(W-L)/(W+L+T) over both presentation orders, KL / cosine summaries, wall times) and PNGs:
``pairwise_soft_vs_sft.png`` (Fig. 5.1), ``kl_{sft,soft}.png`` and ``cosine_{sft,soft}.png``
(Figs. 5.4 / 5.5). Every phase has its own sub-workdir with orbax checkpoints and
``metrics.jsonl``; rerunning the command resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import sys

from experiments import flags
from experiments import soft_phases as phases
from experiments import soft_report as report
from experiments.soft_report import table  # noqa: F401  (the per-exit table, re-exported)
from sortedjax import sharding
from sortedjax import soft as soft_lib

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


def parse_args(argv=None) -> SoftExperiment:
    return flags.parse(SoftExperiment, argv, __doc__)


def run(cfg: SoftExperiment) -> dict:
    """Every phase in order; each reuses its sub-workdir's checkpoints when rerun."""
    ctx = phases.setup(cfg)  # mesh, examples, base model (built or reused), tokenizer, exits, batches
    results = phases.describe(ctx)
    outputs, trained = {}, {}
    for mode in ("sft", "soft"):
        trained[mode], outputs[mode], results[mode] = phases.finetune_and_decode(ctx, mode)
    ict = phases.sft_ict(ctx, outputs["sft"])  # None when the only exit is the last layer
    if ict is not None:
        trained["sft_ict"], outputs["sft_ict"], results["sft_ict"] = ict
    extracted_outputs, results["extracted"] = phases.extracted(ctx)
    outputs.update(extracted_outputs)
    results["pairwise"], systems = report.pairwise(ctx, outputs, [int(n) for n in results["extracted"]])
    results.update(report.figures_and_analysis(ctx, results, trained))
    results.update(report.decoding_table(ctx, trained))  # Table 5.2: speculative / dynamic decoding
    return report.finish(ctx, results, systems)


def main(argv=None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
