"""Models: each a config dataclass + a composition of :mod:`sortedjax.nn` layers.

:mod:`~sortedjax.models.llama` (sorted along depth, MLP width and heads), :mod:`~sortedjax.models.gpt2`,
:mod:`~sortedjax.models.encoder` (BERT / RoBERTa), :mod:`~sortedjax.models.mlp`,
:mod:`~sortedjax.models.resnet` (cPreResNet20), :mod:`~sortedjax.models.mobilenet_v2`.

:data:`REGISTRY` maps a Hugging Face architecture (``config.json``'s ``architectures[0]``) to our
``(Config, Model)``; :func:`for_model_type` does the same for ``config.json``'s ``model_type``.
"""

from sortedjax.models import encoder, gpt2, llama, mlp, mobilenet_v2, resnet
from sortedjax.models.encoder import Encoder, EncoderConfig
from sortedjax.models.gpt2 import GPT2, GPT2Config
from sortedjax.models.llama import Llama, LlamaConfig

REGISTRY = {
    "LlamaForCausalLM": (LlamaConfig, Llama),
    "GPT2LMHeadModel": (GPT2Config, GPT2),
    "BertForSequenceClassification": (EncoderConfig, Encoder),
    "BertModel": (EncoderConfig, Encoder),
    "RobertaForSequenceClassification": (EncoderConfig, Encoder),
    "RobertaModel": (EncoderConfig, Encoder),
}
_MODEL_TYPES = {
    "llama": (LlamaConfig, Llama),
    "gpt2": (GPT2Config, GPT2),
    "bert": (EncoderConfig, Encoder),
    "roberta": (EncoderConfig, Encoder),
}


def for_model_type(model_type: str):
    """``(Config, Model)`` of a Hugging Face ``model_type`` (``"llama"``, ``"gpt2"``, ``"bert"``, ``"roberta"``)."""
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"no sortedjax model for model_type {model_type!r}; allowed: {tuple(_MODEL_TYPES)}")
    return _MODEL_TYPES[model_type]


__all__ = [
    "GPT2",
    "REGISTRY",
    "Encoder",
    "EncoderConfig",
    "GPT2Config",
    "Llama",
    "LlamaConfig",
    "encoder",
    "for_model_type",
    "gpt2",
    "llama",
    "mlp",
    "mobilenet_v2",
    "resnet",
]
