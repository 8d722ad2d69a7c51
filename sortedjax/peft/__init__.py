"""DyLoRA adapters on any model and Hugging Face PEFT adapter files.

* :mod:`~sortedjax.peft.lora` -- :func:`apply_dylora` by PEFT ``target_modules``, frozen mode,
  :func:`merge` at any rank, rank ranges and distributions;
* :mod:`~sortedjax.peft.files` -- :func:`save_peft` / :func:`load_peft`: ``adapter_config.json`` +
  ``adapter_model.safetensors`` that ``peft.PeftModel.from_pretrained`` loads;
* :mod:`~sortedjax.peft.names` -- the Hugging Face module names of a model's Linears;
* :mod:`~sortedjax.peft.runs` -- the adapted model of a finished experiment run.

The adapter layer itself is :class:`sortedjax.nn.lora.LoRA` (re-exported here with its parameter types).
"""

from sortedjax.nn.lora import DROPOUT_STREAM, LoRA, LoRADown, LoRAParam, LoRAUp, adapters, check_rank, linear_paths
from sortedjax.peft.files import load_adapter, load_peft, save_adapter, save_peft
from sortedjax.peft.lora import (
    apply_dylora,
    frozen_post_update,
    keep_only_rank,
    merge,
    rank_dim,
    rank_range,
    reseed,
    select,
)

__all__ = [
    "DROPOUT_STREAM",
    "LoRA",
    "LoRADown",
    "LoRAParam",
    "LoRAUp",
    "adapters",
    "apply_dylora",
    "check_rank",
    "frozen_post_update",
    "keep_only_rank",
    "linear_paths",
    "load_adapter",
    "load_peft",
    "merge",
    "rank_dim",
    "rank_range",
    "reseed",
    "save_adapter",
    "save_peft",
    "select",
]
