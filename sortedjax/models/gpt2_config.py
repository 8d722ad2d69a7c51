"""``GPT2Config``: the GPT-2 hyper-parameters, read from and written to Hugging Face ``config.json``.

Field names follow :class:`~sortedjax.models.llama_config.LlamaConfig` (``hidden_size``,
``num_hidden_layers``, ...); :meth:`GPT2Config.from_hf` / :meth:`~GPT2Config.to_hf` translate
transformers' ``n_embd``, ``n_layer``, ``n_head``, ``n_inner``, ``n_positions``.
"""

from __future__ import annotations

import dataclasses

from sortedjax import nn
from sortedjax.models.common import HF_ACTIVATIONS, check_activation
from sortedjax.models.config_checks import DTYPES, check_dtype, check_positive_ints, require_keys

_HF_KEYS = {  # transformers' name -> ours
    "vocab_size": "vocab_size",
    "n_embd": "hidden_size",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_inner": "intermediate_size",
    "n_positions": "max_position_embeddings",
    "activation_function": "activation_function",
    "layer_norm_epsilon": "layer_norm_epsilon",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
}
REQUIRED_HF_KEYS = ("vocab_size", "n_embd", "n_layer", "n_head", "n_positions")
_UNSUPPORTED = {  # transformers' option -> the only value we implement
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPT2Config:
    vocab_size: int = 50257
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads (a width sub-model keeps it)
    intermediate_size: int | None = None  # None -> 4 * hidden_size
    max_position_embeddings: int = 1024
    activation_function: str = "gelu_new"  # transformers' name (sortedjax.models.common.HF_ACTIVATIONS)
    layer_norm_epsilon: float = 1e-5
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    pad_token_id: int | None = None
    dtype: str = "float32"
    remat: str = "none"
    # the tensor name prefix of the checkpoint it was loaded from: "transformer." (GPT2LMHeadModel's),
    # "" (a headless GPT2Model); None: GPT2LMHeadModel's
    hf_prefix: str | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if self.head_dim is None:
            set_("head_dim", self.hidden_size // max(self.num_attention_heads, 1))
        if self.intermediate_size is None:
            set_("intermediate_size", 4 * self.hidden_size)
        check_positive_ints(
            self,
            (
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "head_dim",
                "intermediate_size",
                "max_position_embeddings",
            ),
        )
        check_activation("GPT2Config.activation_function", self.activation_function)
        check_dtype(self)
        if self.layer_norm_epsilon <= 0:
            raise ValueError(f"GPT2Config.layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon}")
        nn.stack.check_remat(self.remat)

    @property
    def jnp_dtype(self):
        return DTYPES[self.dtype]

    @property
    def activation(self) -> str:
        return HF_ACTIVATIONS[self.activation_function]

    @classmethod
    def from_hf(cls, hf_cfg: dict, **overrides) -> GPT2Config:
        hf_cfg = dict(hf_cfg)
        if hf_cfg.get("model_type") != "gpt2":
            raise ValueError(f"config model_type is {hf_cfg.get('model_type')!r}, expected 'gpt2'")
        require_keys(hf_cfg, REQUIRED_HF_KEYS, "a GPT-2 config")
        for k, want in _UNSUPPORTED.items():
            if hf_cfg.get(k, want) != want:
                raise ValueError(f"config {k}={hf_cfg[k]!r} is not supported (expected {want!r})")
        kw = {ours: hf_cfg[k] for k, ours in _HF_KEYS.items() if k in hf_cfg}
        dt = hf_cfg.get("dtype") or hf_cfg.get("torch_dtype")
        kw["dtype"] = dt if dt in DTYPES else "float32"
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict:
        """A ``config.json`` dict for transformers' ``GPT2LMHeadModel``."""
        if self.head_dim * self.num_attention_heads != self.hidden_size:
            raise ValueError(
                f"transformers needs n_embd = n_head * head_dim, got {self.hidden_size} != "
                f"{self.num_attention_heads} * {self.head_dim}"
            )
        out = {k: getattr(self, ours) for k, ours in _HF_KEYS.items()}
        return dict(architectures=["GPT2LMHeadModel"], model_type="gpt2", **out, **_UNSUPPORTED, dtype=self.dtype)
