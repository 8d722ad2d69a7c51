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

import experiments.soft.phases as phases
import experiments.soft.report as report
from experiments.common import flags
from experiments.soft.config import DTYPES, SoftExperiment  # noqa: F401 - the config, re-exported
from experiments.soft.report import table  # noqa: F401  (the per-exit table, re-exported)


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
