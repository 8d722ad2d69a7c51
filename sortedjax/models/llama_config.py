"""``LlamaConfig``: the LLaMA hyper-parameters, read from and written to Hugging Face ``config.json``."""

from __future__ import annotations

import dataclasses

from sortedjax import nn
from sortedjax.models.config_checks import DTYPES, check_dtype, check_positive_ints, require_keys

REQUIRED_HF_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
ROPE_TYPES = nn.attention.ROPE_TYPES
LLAMA3_KEYS = nn.attention.LLAMA3_KEYS


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None -> num_attention_heads
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # None or {"rope_type": "llama3", factor, ...}
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    dtype: str = "float32"
    exit_head_layers: tuple[int, ...] = ()  # exits with their own norm + head (SFT+ICT)
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    remat: str = "none"  # jax.checkpoint policy per layer: sortedjax.nn.REMAT_POLICIES

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if self.num_key_value_heads is None:
            set_("num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            set_("head_dim", self.hidden_size // max(self.num_attention_heads, 1))
        check_positive_ints(
            self,
            (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "max_position_embeddings",
            ),
        )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"LlamaConfig.num_attention_heads ({self.num_attention_heads}) must be a multiple "
                f"of num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig.head_dim must be even for RoPE, got {self.head_dim}")
        check_dtype(self)
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError("LlamaConfig.rms_norm_eps and rope_theta must be > 0")
        if self.rope_scaling is not None:
            rs = dict(self.rope_scaling)
            kind = rs.get("rope_type", rs.get("type"))
            if kind not in ROPE_TYPES:
                raise ValueError(f"unsupported rope type {kind!r} in LlamaConfig.rope_scaling; supported: {ROPE_TYPES}")
            missing = [k for k in LLAMA3_KEYS if kind == "llama3" and k not in rs]
            if missing:
                raise ValueError(f"LlamaConfig.rope_scaling of type 'llama3' lacks key {missing[0]!r}")
            set_("rope_scaling", None if kind == "default" else {"rope_type": kind, **{k: rs[k] for k in LLAMA3_KEYS}})
        eh = tuple(int(e) for e in self.exit_head_layers)
        bad = [e for e in eh if not 1 <= e <= self.num_hidden_layers]
        if bad or len(set(eh)) != len(eh):
            raise ValueError(
                f"LlamaConfig.exit_head_layers must be distinct layers in "
                f"1..{self.num_hidden_layers}, got {self.exit_head_layers}"
            )
        set_("exit_head_layers", eh)
        nn.stack.check_remat(self.remat)
        if isinstance(self.eos_token_id, list):
            set_("eos_token_id", tuple(self.eos_token_id))

    def __hash__(self):  # rope_scaling is a dict; graphdefs hash their static config
        d = dataclasses.asdict(self)
        d["rope_scaling"] = tuple(sorted((self.rope_scaling or {}).items()))
        return hash(tuple(sorted(d.items())))

    @property
    def num_exit_heads(self) -> int:
        return len(self.exit_head_layers)

    @property
    def jnp_dtype(self):
        return DTYPES[self.dtype]

    @property
    def rope(self) -> nn.RoPE:
        scaling = (
            None
            if self.rope_scaling is None
            else tuple(sorted((k, v) for k, v in self.rope_scaling.items() if k != "rope_type"))
        )
        return nn.RoPE(self.head_dim, self.rope_theta, scaling)

    @classmethod
    def from_hf(cls, hf_cfg: dict, **overrides) -> LlamaConfig:
        """From a Hugging Face ``config.json`` dict (transformers 4 or 5 rope layout)."""
        hf_cfg = dict(hf_cfg)
        require_keys(hf_cfg, REQUIRED_HF_KEYS, "a LLaMA config")
        if hf_cfg.get("model_type", "llama") != "llama":
            raise ValueError(f"config model_type is {hf_cfg['model_type']!r}, expected 'llama'")
        if hf_cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config hidden_act is {hf_cfg['hidden_act']!r}, expected 'silu'")
        for k in ("attention_bias", "mlp_bias"):
            if hf_cfg.get(k):
                raise ValueError(f"config {k}=true is not supported (expected false)")
        rope = dict(hf_cfg.get("rope_parameters") or {})
        rope_theta = rope.pop("rope_theta", hf_cfg.get("rope_theta", 10000.0))
        if not rope and hf_cfg.get("rope_scaling"):
            rope = dict(hf_cfg["rope_scaling"])
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in ROPE_TYPES:
            raise ValueError(
                f"unsupported rope type {kind!r} in config (rope_parameters / rope_scaling); supported: {ROPE_TYPES}"
            )
        kw = dict(rope_theta=float(rope_theta), rope_scaling=None if kind == "default" else rope)
        for f in dataclasses.fields(cls):
            if f.name in hf_cfg and f.name not in ("rope_theta", "rope_scaling", "dtype", "exit_head_layers", "remat"):
                kw[f.name] = hf_cfg[f.name]
        dt = hf_cfg.get("dtype") or hf_cfg.get("torch_dtype")
        kw["dtype"] = dt if dt in DTYPES else "float32"
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict:
        """A ``config.json`` dict for transformers (separate exit heads are not exported)."""
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope.update(self.rope_scaling)
        eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
        return dict(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            hidden_act="silu",
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters=rope,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            attention_bias=False,
            mlp_bias=False,
            dtype=self.dtype,
            bos_token_id=self.bos_token_id,
            eos_token_id=eos,
            pad_token_id=self.pad_token_id,
        )
