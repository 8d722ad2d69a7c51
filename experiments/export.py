"""Write one sub-model of a trained LLaMA (first layers, MLP neurons, heads) as a standalone HF checkpoint.

Run (after ``python -m experiments.soft``)::

    python -m experiments.export --workdir runs/soft --method soft --layers 4 --out runs/soft/export_soft_4
    python -m experiments.export --layers 6 --width 256 --heads 2 --out runs/soft/export_small

``--layers`` keeps the first layers (with the shared head, or the exit's own head for SFT+ICT),
``--width`` the first MLP intermediate neurons of every layer (MatFormer style), ``--heads`` the
first attention heads (a multiple of the heads per kv group).

Takes a few seconds on a 2-core CPU for the default model (minutes for a 13B LLaMA).
Output: ``OUT/config.json`` (``num_hidden_layers``, ``intermediate_size``, ``num_attention_heads``
and ``num_key_value_heads`` reduced), ``OUT/model.safetensors`` and the
tokenizer, which ``transformers.AutoModelForCausalLM.from_pretrained(OUT)`` and
``AutoTokenizer.from_pretrained(OUT)`` load directly; prints the path and parameter count.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from experiments.common import flags
from sortedjax import hf
from sortedjax.models import llama
from sortedjax.submodel import SubModel


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportConfig:
    workdir: str = flags.option("runs/soft", help="the workdir of a finished `python -m experiments.soft` run")
    method: str = flags.option(
        "soft",
        help="the phase whose trained model to cut: soft, sft or extracted_N (a sub-directory "
        "WORKDIR/METHOD/hf holding a Hugging Face checkpoint)",
    )
    layers: int | None = flags.option(
        None,
        help="keep the first LAYERS layers (the exit at that layer) plus the "
        "shared head; 1..the model's depth (none: all)",
    )
    width: int | None = flags.option(
        None, help="keep the first WIDTH MLP intermediate neurons of every layer; 1..intermediate_size (none: all)"
    )
    heads: int | None = flags.option(
        None,
        help="keep the first HEADS attention heads of every layer; a multiple of "
        "num_attention_heads / num_key_value_heads (none: all)",
    )
    out: str = flags.option(help="directory to write the standalone Hugging Face checkpoint and tokenizer to")

    def __post_init__(self):
        for name in ("layers", "width", "heads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.layers is None and self.width is None and self.heads is None:
            raise ValueError("give at least one of layers, width, heads (the sizes of the sub-model to export)")

    @property
    def source(self) -> str:
        return os.path.join(self.workdir, self.method, "hf")


def export(cfg: ExportConfig) -> str:
    if not os.path.exists(os.path.join(cfg.source, "config.json")):
        have = (
            sorted(
                m for m in os.listdir(cfg.workdir) if os.path.exists(os.path.join(cfg.workdir, m, "hf", "config.json"))
            )
            if os.path.isdir(cfg.workdir)
            else []
        )
        raise ValueError(
            f"no trained model for method {cfg.method!r} at {cfg.source}; methods with one: {have} "
            f"(run python -m experiments.soft --workdir {cfg.workdir} first)"
        )
    model = llama.from_pretrained(cfg.source)
    sub = SubModel.of(depth=cfg.layers, width=cfg.width, heads=cfg.heads)
    try:
        llama.save_pretrained(model, cfg.out, sub=sub)
    except ValueError as e:  # name the flag: depth -> --layers
        raise ValueError(f"{str(e).replace('depth', '--layers', 1)} (model: {model.limits})") from None
    tok = hf.load_tokenizer(cfg.source)
    if tok is None:  # the tokenizer lives beside the base checkpoint
        base = os.path.join(cfg.workdir, "base", "hf")
        tok = hf.load_tokenizer(base) if os.path.isdir(base) else None
    if tok is not None:
        tok.save_pretrained(cfg.out)
    return cfg.out


def main(argv=None) -> None:
    out = export(flags.parse(ExportConfig, argv, __doc__))
    print(f"wrote the sub-model as a Hugging Face checkpoint to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
