"""``EncoderConfig``: BERT / RoBERTa hyper-parameters, read from and written to Hugging Face ``config.json``."""

from __future__ import annotations

import dataclasses

from sortedjax import nn
from sortedjax.models.common import HF_ACTIVATIONS, check_activation
from sortedjax.models.config_checks import DTYPES, check_dtype, check_positive_ints, require_keys

MODEL_TYPES = ("bert", "roberta")
REQUIRED_HF_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_POSITIVE = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "head_dim",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "num_labels",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    model_type: str = "bert"  # "roberta": positions start at pad_token_id + 1 and skip pads
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads (a width sub-model keeps it)
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # transformers' name (sortedjax.models.common.HF_ACTIVATIONS)
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    num_labels: int = 2  # 1: regression
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    dtype: str = "float32"
    remat: str = "none"
    # the tensor name prefix of the checkpoint it was loaded from: "bert." / "roberta." (a task
    # model's), "" (a headless base model, e.g. BertModel); None: a task model's
    hf_prefix: str | None = None

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // max(self.num_attention_heads, 1))
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"EncoderConfig.model_type {self.model_type!r} unknown; allowed: {MODEL_TYPES}")
        check_positive_ints(self, _POSITIVE)
        check_activation("EncoderConfig.hidden_act", self.hidden_act)
        check_dtype(self)
        if self.layer_norm_eps <= 0:
            raise ValueError(f"EncoderConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps}")
        if self.model_type == "roberta" and not (self.pad_token_id is not None and 0 <= self.pad_token_id):
            raise ValueError(f"a roberta EncoderConfig needs pad_token_id >= 0 (positions), got {self.pad_token_id}")
        nn.stack.check_remat(self.remat)

    @property
    def jnp_dtype(self):
        return DTYPES[self.dtype]

    @property
    def activation(self) -> str:
        return HF_ACTIVATIONS[self.hidden_act]

    @property
    def max_length(self) -> int:
        """The longest input the position table covers (RoBERTa's start after ``pad_token_id``)."""
        off = self.pad_token_id + 1 if self.model_type == "roberta" else 0
        return self.max_position_embeddings - off

    @classmethod
    def from_hf(cls, hf_cfg: dict, **overrides) -> EncoderConfig:
        """From a BERT / RoBERTa ``config.json`` dict (``num_labels`` from ``id2label`` when absent)."""
        hf_cfg = dict(hf_cfg)
        kind = hf_cfg.get("model_type")
        if kind not in MODEL_TYPES:
            raise ValueError(f"config model_type is {kind!r}; an encoder checkpoint must be one of {MODEL_TYPES}")
        require_keys(hf_cfg, REQUIRED_HF_KEYS, "an encoder")
        pos = hf_cfg.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(f"config position_embedding_type {pos!r} is not supported; allowed: ('absolute',)")
        kw = {f.name: hf_cfg[f.name] for f in dataclasses.fields(cls) if f.name in hf_cfg}
        kw.pop("remat", None)
        kw.pop("head_dim", None)
        kw.pop("hf_prefix", None)
        if "num_labels" not in hf_cfg and hf_cfg.get("id2label"):
            kw["num_labels"] = len(hf_cfg["id2label"])
        dt = hf_cfg.get("dtype") or hf_cfg.get("torch_dtype")
        kw["dtype"] = dt if dt in DTYPES else "float32"
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict:
        """A ``config.json`` dict for ``BertForSequenceClassification`` / ``RobertaForSequenceClassification``."""
        if self.head_dim * self.num_attention_heads != self.hidden_size:
            raise ValueError(
                f"transformers needs hidden_size = num_attention_heads * head_dim, got {self.hidden_size} != "
                f"{self.num_attention_heads} * {self.head_dim}"
            )
        arch = "BertForSequenceClassification" if self.model_type == "bert" else "RobertaForSequenceClassification"
        labels = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
        return dict(
            architectures=[arch],
            model_type=self.model_type,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=self.type_vocab_size,
            layer_norm_eps=self.layer_norm_eps,
            position_embedding_type="absolute",
            id2label=labels,
            label2id={v: int(k) for k, v in labels.items()},
            problem_type="regression" if self.num_labels == 1 else None,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            dtype=self.dtype,
        )
