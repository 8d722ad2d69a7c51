"""Write one SoFT sub-model (the first n layers + the shared head) as a standalone HF checkpoint.

Run (after ``python -m experiments.soft``)::

    python -m experiments.export --workdir runs/soft --method soft --layers 4 --out runs/soft/export_soft_4

Takes a few seconds on a 2-core CPU for the default model (minutes for a 13B LLaMA).
Output: ``OUT/config.json`` (``num_hidden_layers = n``), ``OUT/model.safetensors`` and the
tokenizer, which ``transformers.AutoModelForCausalLM.from_pretrained(OUT)`` and
``AutoTokenizer.from_pretrained(OUT)`` load directly; prints the path and parameter count.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportConfig:
    workdir: str
    method: str  # soft | sft | extracted_N : the phase whose trained model to cut
    layers: int
    out: str

    def __post_init__(self):
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")

    @property
    def source(self) -> str:
        return os.path.join(self.workdir, self.method, "hf")


def export(cfg: ExportConfig) -> str:
    from sortedjax import hf
    from sortedjax.models import llama

    if not os.path.exists(os.path.join(cfg.source, "config.json")):
        have = sorted(m for m in os.listdir(cfg.workdir) if os.path.exists(os.path.join(cfg.workdir, m, "hf", "config.json"))) \
            if os.path.isdir(cfg.workdir) else []
        raise ValueError(f"no trained model for method {cfg.method!r} at {cfg.source}; methods with one: {have} "
                         f"(run python -m experiments.soft --workdir {cfg.workdir} first)")
    model = llama.from_pretrained(cfg.source)
    n = model.cfg.num_hidden_layers
    if not 1 <= cfg.layers <= n:
        raise ValueError(f"--layers {cfg.layers} is outside the model's depth: allowed 1..{n}")
    llama.save_pretrained(model, cfg.out, num_layers=cfg.layers)
    tok = hf.load_tokenizer(cfg.source)
    if tok is None:  # the tokenizer lives beside the base checkpoint
        base = os.path.join(cfg.workdir, "base", "hf")
        tok = hf.load_tokenizer(base) if os.path.isdir(base) else None
    if tok is not None:
        tok.save_pretrained(cfg.out)
    return cfg.out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/soft")
    p.add_argument("--method", default="soft")
    p.add_argument("--layers", type=int, required=True)
    p.add_argument("--out", required=True)
    out = export(ExportConfig(**vars(p.parse_args(argv))))
    print(f"wrote the first layers as a Hugging Face checkpoint to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
