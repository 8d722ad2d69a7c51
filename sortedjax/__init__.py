"""sortedjax: many-in-one neural networks in JAX / Flax NNX (SortedNet, DyLoRA, SoFT / Sorted LLaMA).

The public API, ``import sortedjax as sj``::

    sj.SubModel, sj.Pool, sj.Dim        sub-model sizes and the distributions they are sampled from
    sj.nn, sj.models                    the layers; LLaMA, GPT-2, BERT / RoBERTa, MLP, ResNet, MobileNetV2
    sj.extract(model, sub)              a sub-model out as a standalone smaller model
    sj.objectives                       SortedNet's losses over sub-models (thesis Algorithm 2)
    sj.train(model, loss_fn, data, cfg), sj.TrainConfig, sj.ArrayBatches
    sj.apply_dylora, sj.merge_lora, sj.save_peft, sj.load_peft      DyLoRA and PEFT adapters
    sj.generate, sj.speculative_generate, sj.early_exit_generate    compiled decoding at any exit
    sj.make_mesh                        a device mesh from a spec such as "8" or "data:2,fsdp:4"

Everything is imported on first use, so ``import sortedjax`` starts no JAX backend and imports
neither JAX nor torch.
"""

from __future__ import annotations

import importlib

# public name -> (module, attribute in it; None: the module itself)
_API = {
    "SubModel": ("sortedjax.submodel", "SubModel"),
    "Pool": ("sortedjax.submodel", "Pool"),
    "Dim": ("sortedjax.submodel", "Dim"),
    "nn": ("sortedjax.nn", None),
    "models": ("sortedjax.models", None),
    "extract": ("sortedjax.extract", None),  # the module calls sortedjax.extract.extract
    "objectives": ("sortedjax.methods.objectives", None),
    "train": ("sortedjax.train", None),  # the package calls sortedjax.train.loop.train
    "TrainConfig": ("sortedjax.train.config", "TrainConfig"),
    "ArrayBatches": ("sortedjax.train.batches", "ArrayBatches"),
    "apply_dylora": ("sortedjax.peft.lora", "apply_dylora"),
    "merge_lora": ("sortedjax.peft.lora", "merge"),
    "save_peft": ("sortedjax.peft.files", "save_peft"),
    "load_peft": ("sortedjax.peft.files", "load_peft"),
    "generate": ("sortedjax.decoding.plain", "generate"),
    "speculative_generate": ("sortedjax.decoding.speculative", "speculative_generate"),
    "early_exit_generate": ("sortedjax.decoding.early_exit", "early_exit_generate"),
    "make_mesh": ("sortedjax.sharding", "make_mesh"),
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'sortedjax' has no attribute {name!r}")
    module, attr = _API[name]
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
