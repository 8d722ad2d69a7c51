"""Hugging Face module names of our models' Linears, for PEFT adapter files (:mod:`sortedjax.peft.files`).

:func:`hf_modules` lists, for a model, every Hugging Face module a PEFT LoRA adapter can target
and the Linears (and stacked layer index) of ours it is made of, in the order of its output axis:

* :class:`~sortedjax.models.llama.Llama`: ``model.layers.N.self_attn.q_proj`` ... ``mlp.down_proj``,
  ``lm_head`` (``LlamaForCausalLM``);
* :class:`~sortedjax.models.encoder.Encoder`: ``bert.encoder.layer.N.attention.self.query`` ...
  (``roberta.`` for RoBERTa), the pooler / classifier (``BertForSequenceClassification`` /
  ``RobertaForSequenceClassification``);
* :class:`~sortedjax.models.gpt2.GPT2`: ``transformer.h.N.attn.c_attn`` (one fused ``Conv1D`` made
  of our ``q``, ``k``, ``v``), ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj`` (``GPT2LMHeadModel``);
* any other model: our dotted paths with the layer index after each stacked ``layers``.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from flax import nnx

from sortedjax.nn.linear import Linear
from sortedjax.nn.lora import dotted
from sortedjax.nn.stack import LayerStack

ARCHITECTURES = ("llama", "bert", "roberta", "gpt2")


@dataclasses.dataclass(frozen=True)
class Module:
    """One Hugging Face module: ``parts`` = ``(our Linear dotted path, stacked index)`` in output order."""

    name: str
    parts: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def fused(self) -> bool:
        return len(self.parts) > 1


def descriptor(model):
    """The model's :class:`~sortedjax.protocol.HFDescriptor` (None: a model without HF names)."""
    describe = getattr(model, "hf_descriptor", None)
    return describe() if callable(describe) else None


def architecture(model) -> str | None:
    """``"llama"``, ``"bert"``, ``"roberta"``, ``"gpt2"`` or None (a model without HF names): the
    model class's :class:`~sortedjax.protocol.HFDescriptor`."""
    d = descriptor(model)
    return None if d is None else d.architecture


def head_names(model) -> dict[str, str]:
    """Our top-level Linear (outside the layer stack) -> its HF module name."""
    d = descriptor(model)
    return {} if d is None else dict(d.heads)


def _stack_prefixes(model) -> list[tuple]:
    """Paths of the stacked layer modules (``LayerStack.layers``), outermost first."""
    found = [p + ("layers",) for p, m in nnx.iter_modules(model) if isinstance(m, LayerStack) and m.stacked]
    return sorted(found, key=len)


def _lead_shape(linear: Linear) -> tuple[int, ...]:
    k = linear.kernel
    return tuple(k.shape[: k.ndim - len(linear.in_shape) - len(linear.out_shape)])


def hf_modules(model) -> dict[str, Module]:
    """Every Hugging Face module name (without PEFT's ``base_model.model.``) -> :class:`Module`."""
    linears = {p: m for p, m in nnx.iter_modules(model) if isinstance(m, Linear)}
    arch = architecture(model)
    out: dict[str, Module] = {}
    if arch is None:  # our dotted paths, layer indices inserted
        stacks = _stack_prefixes(model)
        for p, lin in linears.items():
            cuts = [len(s) for s in stacks if p[: len(s)] == s]
            for idx in np.ndindex(*_lead_shape(lin)):
                parts = list(map(str, p))
                for c, i in sorted(zip(cuts, idx), reverse=True):
                    parts.insert(c, str(i))
                out[".".join(parts)] = Module(".".join(parts), ((dotted(p), tuple(idx)),))
        return out
    desc = descriptor(model)
    prefix, heads = desc.layer_prefix, dict(desc.heads)
    for ours, name in heads.items():
        out[name] = Module(name, ((ours, ()),))
    for group, suffix in desc.layer_linears.items():
        for i in range(model.num_layers):
            parts = tuple((dotted(("layers", "layers") + g), (i,)) for g in group)
            out[f"{prefix}{i}.{suffix}"] = Module(f"{prefix}{i}.{suffix}", parts)
    return out


def pattern_names(names) -> list[str]:
    """Module names with layer indices written ``N`` (a short list for error messages)."""
    return sorted({re.sub(r"\.\d+\.", ".N.", n) for n in names})


def peft_matches(target: str, name: str) -> bool:
    """PEFT's rule for a list entry of ``target_modules``: the whole name or a dotted suffix."""
    return name == target or name.endswith("." + target)


def target_list(adapted: list[str], every: list[str]) -> list[str]:
    """The shortest PEFT ``target_modules`` list that selects exactly ``adapted`` among ``every``:
    the last name component (``q_proj``, ``query``, ``c_attn``) where that is exact, else longer
    dotted suffixes, else the full names."""
    for depth in (1, 2, 3):
        short = sorted({".".join(n.split(".")[-depth:]) for n in adapted})
        picked = {n for n in every if any(peft_matches(t, n) for t in short)}
        if picked == set(adapted):
            return short
    return sorted(adapted)


def pattern_value(pattern: dict, name: str, default):
    """PEFT's ``rank_pattern`` / ``alpha_pattern`` lookup for module ``name`` (first matching key)."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default
