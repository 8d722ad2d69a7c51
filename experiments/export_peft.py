"""Write the adapters of a trained DyLoRA (or LoRA) run at one rank as a Hugging Face PEFT LoRA adapter.

Run (after a run that trained an adapted BERT / RoBERTa / LLaMA / GPT-2 with ``sortedjax.train`` and
recorded it with ``sortedjax.peft.runs.write_run_info``, e.g. one run of ``python -m experiments.dylora``)::

    python -m experiments.export_peft --workdir runs/dylora/dylora --rank 4 --out runs/dylora/peft_r4

``--workdir`` is the run's own directory (``checkpoints/`` + ``adapter_source.json``); a directory
above it is answered with the list of runs below it. The newest checkpoint is restored (adapters,
base weights, a trained classification head), and the adapters are written at rank ``--rank``
(``r_min..r_max`` of the run; default ``r_max``) with PEFT's ``r = rank`` and ``lora_alpha`` such
that PEFT's scale ``lora_alpha / r`` is DyLoRA's ``alpha / rank`` (GPT-2's q / v adapters become
one ``c_attn`` adapter of rank ``2 * rank``).

Takes ~7 s of CPU time on a 2-core CPU for a tiny 2-layer LLaMA run (mostly imports and XLA
compiles of the parameter init; measured: 34 s wall on the shared, loaded machine); no accelerator needed.
Output: ``OUT/adapter_config.json`` and ``OUT/adapter_model.safetensors``, which
``peft.PeftModel.from_pretrained(AutoModelFor...from_pretrained(BASE), OUT)`` loads; prints the
checkpoint step, ``r``, ``lora_alpha``, ``target_modules`` and the path.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from experiments.common import flags
from sortedjax import peft as lora
from sortedjax.peft import runs as lora_runs


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportPeftConfig:
    workdir: str = flags.option(
        help="the workdir of a trained adapted-model run (it holds checkpoints/ and adapter_source.json)"
    )
    rank: int | None = flags.option(
        None, help="the DyLoRA rank b to export, r_min..r_max of the run (none: r_max)", metavar="B"
    )
    out: str = flags.option(help="directory to write adapter_config.json and adapter_model.safetensors to")
    base_model: str | None = flags.option(
        None,
        help="base_model_name_or_path written into adapter_config.json (none: the base checkpoint the run recorded)",
    )
    modules_to_save: bool = flags.option(
        True, help="also write a sequence classifier's trained pooler / classifier (PEFT modules_to_save)"
    )

    def __post_init__(self):
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")


def export(cfg: ExportPeftConfig) -> tuple[str, dict, int]:
    """Write the adapter; returns ``(out, adapter_config, step)``."""

    model, info, step = lora_runs.restore_run(cfg.workdir)
    base = cfg.base_model if cfg.base_model is not None else info.get("base_model_name_or_path")
    try:
        out = lora.save_peft(
            model, cfg.out, rank=cfg.rank, base_model_name_or_path=base, modules_to_save=cfg.modules_to_save
        )
    except ValueError as e:  # name the flag
        raise ValueError(str(e).replace("rank ", "--rank ", 1)) from None
    with open(out / "adapter_config.json") as fh:
        return str(out), json.load(fh), step


def main(argv=None) -> None:
    out, config, step = export(flags.parse(ExportPeftConfig, argv, __doc__))
    print(
        f"checkpoint step {step}: r={config['r']} lora_alpha={config['lora_alpha']} "
        f"target_modules={config['target_modules']} modules_to_save={config['modules_to_save']}"
    )
    print(f"wrote the PEFT LoRA adapter to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
