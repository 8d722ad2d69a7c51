"""LLaMA (``transformers``' ``LlamaForCausalLM``) in Flax NNX with exits at any depth.

Layers are stacked on a leading ``"layers"`` axis and run by :func:`masks.depth_scan`,
so ``model(tokens, exit_layer=n)`` with a traced ``n`` is one compiled program for every
depth and layers past ``n`` are skipped. Every exit goes through the shared final
RMSNorm + LM head, or, for the Early-Exit / SFT+ICT baseline, through its own norm + head
(``LlamaConfig.exit_head_layers``). q/k projections keep the Hugging Face "rotate_half"
RoPE layout, so weights copy straight across (see :mod:`sortedjax.hf`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from sortedjax import masks, sharding

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ROPE_TYPES = ("default", "llama3")
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
LAYER_KEYS = ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down")


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

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if self.num_key_value_heads is None:
            set_("num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            set_("head_dim", self.hidden_size // max(self.num_attention_heads, 1))
        for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"LlamaConfig.{f} must be a positive int, got {v!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"LlamaConfig.num_attention_heads ({self.num_attention_heads}) must be a multiple "
                f"of num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig.head_dim must be even for RoPE, got {self.head_dim}")
        if self.dtype not in DTYPES:
            raise ValueError(f"LlamaConfig.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError("LlamaConfig.rms_norm_eps and rope_theta must be > 0")
        if self.rope_scaling is not None:
            rs = dict(self.rope_scaling)
            kind = rs.get("rope_type", rs.get("type"))
            if kind not in ROPE_TYPES:
                raise ValueError(f"unsupported rope type {kind!r} in LlamaConfig.rope_scaling; "
                                 f"supported: {ROPE_TYPES}")
            missing = [k for k in LLAMA3_KEYS if kind == "llama3" and k not in rs]
            if missing:
                raise ValueError(f"LlamaConfig.rope_scaling of type 'llama3' lacks key {missing[0]!r}")
            set_("rope_scaling", None if kind == "default" else {"rope_type": kind, **{k: rs[k] for k in LLAMA3_KEYS}})
        eh = tuple(int(e) for e in self.exit_head_layers)
        bad = [e for e in eh if not 1 <= e <= self.num_hidden_layers]
        if bad or len(set(eh)) != len(eh):
            raise ValueError(f"LlamaConfig.exit_head_layers must be distinct layers in "
                             f"1..{self.num_hidden_layers}, got {self.exit_head_layers}")
        set_("exit_head_layers", eh)
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

    @classmethod
    def from_hf(cls, hf: dict, **overrides) -> LlamaConfig:
        """From a Hugging Face ``config.json`` dict (transformers 4 or 5 rope layout)."""
        hf = dict(hf)
        if hf.get("model_type", "llama") != "llama":
            raise ValueError(f"config model_type is {hf['model_type']!r}, expected 'llama'")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config hidden_act is {hf['hidden_act']!r}, expected 'silu'")
        for k in ("attention_bias", "mlp_bias"):
            if hf.get(k):
                raise ValueError(f"config {k}=true is not supported (expected false)")
        rope = dict(hf.get("rope_parameters") or {})
        rope_theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
        if not rope and hf.get("rope_scaling"):
            rope = dict(hf["rope_scaling"])
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in ROPE_TYPES:
            raise ValueError(f"unsupported rope type {kind!r} in config (rope_parameters / "
                             f"rope_scaling); supported: {ROPE_TYPES}")
        kw = dict(rope_theta=float(rope_theta), rope_scaling=None if kind == "default" else rope)
        for f in dataclasses.fields(cls):
            if f.name in hf and f.name not in ("rope_theta", "rope_scaling", "dtype", "exit_head_layers"):
                kw[f.name] = hf[f.name]
        dt = hf.get("dtype") or hf.get("torch_dtype")
        kw["dtype"] = dt if dt in DTYPES else "float32"
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self, num_layers: int | None = None) -> dict:
        """A ``config.json`` dict for transformers (``num_hidden_layers = num_layers``)."""
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope.update(self.rope_scaling)
        n = self.num_hidden_layers if num_layers is None else num_layers
        tied = self.tie_word_embeddings and n not in self.exit_head_layers
        eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
        return dict(
            architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=self.vocab_size,
            hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=n, num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads, head_dim=self.head_dim,
            hidden_act="silu", rms_norm_eps=self.rms_norm_eps, rope_parameters=rope,
            max_position_embeddings=self.max_position_embeddings, tie_word_embeddings=tied,
            attention_bias=False, mlp_bias=False, dtype=self.dtype, bos_token_id=self.bos_token_id,
            eos_token_id=eos, pad_token_id=self.pad_token_id)


def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
    """Inverse frequencies (head_dim / 2,), with the ``llama3`` rescaling when configured."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    inv = inv.astype(np.float32)
    rs = cfg.rope_scaling
    if rs is None:
        return inv
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    wavelen = 2 * np.pi / inv
    scaled = np.where(wavelen > old / lo, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(cfg: LlamaConfig, positions_BxL, dtype):
    freqs = positions_BxL[..., None].astype(jnp.float32) * jnp.asarray(rope_inv_freq(cfg))
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # B x L x 1 x K
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def _rope(x, cos, sin):
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rot * sin


def rms_norm(x, w, eps):
    xf = x.astype(jnp.float32)
    xf = xf * lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return w * xf.astype(x.dtype)


def qkv(cfg, p, x_BxTxD, cos, sin):
    h = rms_norm(x_BxTxD, p["attn_norm"], cfg.rms_norm_eps)
    q = _rope(jnp.einsum("btd,dhk->bthk", h, p["wq"]), cos, sin)
    k = _rope(jnp.einsum("btd,dgk->btgk", h, p["wk"]), cos, sin)
    return q, k, jnp.einsum("btd,dgk->btgk", h, p["wv"])


def attend_mlp(cfg, p, x_BxTxD, q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, mask_BxTxS):
    """Grouped-query attention of q over (k, v) under a boolean mask, then the SwiGLU MLP."""
    B, T, H, K = q_BxTxHxK.shape
    G = k_BxSxGxK.shape[2]
    q = q_BxTxHxK.reshape(B, T, G, H // G, K)
    s = jnp.einsum("btgrk,bsgk->bgrts", q, k_BxSxGxK).astype(jnp.float32) * K**-0.5
    s = jnp.where(mask_BxTxS[:, None, None], s, jnp.finfo(jnp.float32).min)
    w = jax.nn.softmax(s, axis=-1).astype(q.dtype)
    o = jnp.einsum("bgrts,bsgk->btgrk", w, v_BxSxGxK).reshape(B, T, H, K)
    x = x_BxTxD + jnp.einsum("bthk,hkd->btd", o, p["wo"])
    h = rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
    gate = jax.nn.silu(jnp.einsum("btd,df->btf", h, p["w_gate"]))
    up = jnp.einsum("btd,df->btf", h, p["w_up"])
    return x + jnp.einsum("btf,fd->btd", gate * up, p["w_down"])


def layer_shapes(cfg: LlamaConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """Stacked per-layer parameter shapes and logical axis names."""
    N, D, F = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
    H, G, K = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    return {
        "attn_norm": ((N, D), ("layers", "embed")),
        "wq": ((N, D, H, K), ("layers", "embed", "heads", "head_dim")),
        "wk": ((N, D, G, K), ("layers", "embed", "kv_heads", "head_dim")),
        "wv": ((N, D, G, K), ("layers", "embed", "kv_heads", "head_dim")),
        "wo": ((N, H, K, D), ("layers", "heads", "head_dim", "embed")),
        "mlp_norm": ((N, D), ("layers", "embed")),
        "w_gate": ((N, D, F), ("layers", "embed", "mlp")),
        "w_up": ((N, D, F), ("layers", "embed", "mlp")),
        "w_down": ((N, F, D), ("layers", "mlp", "embed")),
    }


class Layers(nnx.Module):
    """All decoder layers' parameters, stacked on a leading ``"layers"`` axis."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        for name, (shape, names) in layer_shapes(cfg).items():
            value = (jnp.ones(shape, cfg.jnp_dtype) if name.endswith("norm")
                     else init(rngs.params(), shape, cfg.jnp_dtype))
            setattr(self, name, sharding.param(value, names))

    def stacked(self) -> dict[str, jax.Array]:
        return {k: getattr(self, k)[...] for k in LAYER_KEYS}


class Llama(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        D, V, E, dt = cfg.hidden_size, cfg.vocab_size, cfg.num_exit_heads, cfg.jnp_dtype
        init = nnx.initializers.normal(0.02)
        self.embed = sharding.param(init(rngs.params(), (V, D), dt), ("vocab", "embed"))
        self.layers = Layers(cfg, rngs=rngs)
        self.final_norm = sharding.param(jnp.ones((D,), dt), ("embed",))
        self.lm_head = (None if cfg.tie_word_embeddings
                        else sharding.param(init(rngs.params(), (D, V), dt), ("embed", "vocab")))
        if E:
            self.exit_norm = sharding.param(jnp.ones((E, D), dt), (None, "embed"))
            self.exit_head = sharding.param(init(rngs.params(), (E, D, V), dt), (None, "embed", "vocab"))

    # -- pieces shared by the full-sequence and the KV-cache paths --------------------------
    def embed_tokens(self, tokens_BxL):
        return jnp.take(self.embed[...], tokens_BxL, axis=0)

    def check_exit(self, exit_layer):
        n = self.cfg.num_hidden_layers
        if exit_layer is None:
            return n
        if not isinstance(exit_layer, jax.core.Tracer) and not 1 <= int(exit_layer) <= n:
            raise ValueError(f"exit_layer {int(exit_layer)} outside the allowed range 1..{n}")
        return exit_layer

    def logits_from_hidden(self, h_xD, exit_index=None):
        """Final RMSNorm + LM head on pre-norm hidden states (float32 logits).

        ``exit_index=None`` uses the shared final norm + head; an int (may be traced) picks
        the ``exit_index``-th separate exit head (``cfg.exit_head_layers[exit_index]``).
        """
        if exit_index is None:
            h = rms_norm(h_xD, self.final_norm[...], self.cfg.rms_norm_eps)
            w_DxV = self.embed[...].T if self.lm_head is None else self.lm_head[...]
        else:
            if not self.cfg.num_exit_heads:
                raise ValueError("exit_index given but the model has no separate exit heads "
                                 "(LlamaConfig.exit_head_layers is empty)")
            h = rms_norm(h_xD, self.exit_norm[exit_index], self.cfg.rms_norm_eps)
            w_DxV = self.exit_head[exit_index]
        return jnp.einsum("...d,dv->...v", h, w_DxV).astype(jnp.float32)

    def logits_at_exit(self, h_xD, exit_layer):
        """Logits for hidden states after ``exit_layer`` layers (own head if it has one)."""
        if not self.cfg.num_exit_heads:
            return self.logits_from_hidden(h_xD)
        layers_E = jnp.asarray(self.cfg.exit_head_layers, jnp.int32)
        hit_E = layers_E == jnp.asarray(exit_layer, jnp.int32)
        idx = jnp.argmax(hit_E)
        return lax.cond(hit_E.any(), lambda h: self.logits_from_hidden(h, idx),
                        lambda h: self.logits_from_hidden(h), h_xD)

    def _inputs(self, tokens_BxL, attention_mask, positions):
        B, L = tokens_BxL.shape
        if attention_mask is None:
            mask_BxL = jnp.ones((B, L), bool)
        else:
            mask_BxL = jnp.asarray(attention_mask).astype(bool)
        if positions is None:  # padding-aware positions, as transformers' generate uses
            positions = jnp.maximum(jnp.cumsum(mask_BxL, axis=1) - 1, 0)
        cos, sin = rope_tables(self.cfg, jnp.asarray(positions), self.cfg.jnp_dtype)
        causal = jnp.tril(jnp.ones((L, L), bool))
        return self.embed_tokens(tokens_BxL), cos, sin, causal[None] & mask_BxL[:, None, :]

    def _run(self, tokens_BxL, depth, exits, attention_mask, positions):
        x, cos, sin, mask = self._inputs(tokens_BxL, attention_mask, positions)

        def layer(p, h):
            q, k, v = qkv(self.cfg, p, h, cos, sin)
            return attend_mlp(self.cfg, p, h, q, k, v, mask)

        return masks.depth_scan(layer, self.layers.stacked(), x, depth, exits)

    def __call__(self, tokens_BxL, exit_layer=None, attention_mask=None, positions=None):
        """Logits B x L x V after ``exit_layer`` layers (``None``: all; may be traced)."""
        exit_layer = self.check_exit(exit_layer)
        h = self._run(tokens_BxL, exit_layer, None, attention_mask, positions)
        return self.logits_at_exit(h, exit_layer)

    def hidden_states(self, tokens_BxL, exits, attention_mask=None, positions=None):
        """Pre-final-norm hidden states E x B x L x D after each exit (1-based layer counts)."""
        exits_E = exits if isinstance(exits, jax.Array) else tuple(int(e) for e in exits)
        depth = jnp.max(jnp.asarray(exits_E)) if isinstance(exits_E, jax.Array) else max(exits_E)
        _, h_E = self._run(tokens_BxL, depth, exits_E, attention_mask, positions)
        return h_E

    def forward_cached(self, tokens_BxT, cache_k, cache_v, valid_BxS, start, positions_BxT, exit_layer):
        """Run ``T`` new tokens written at cache slots ``start..start+T-1``.

        ``cache_k``/``cache_v``: N x B x S x G x K; ``valid_BxS``: which slots hold real tokens.
        A query attends to valid slots ``<=`` its own slot. Layers past ``exit_layer`` are
        skipped and their cache entries left untouched. Returns (pre-norm h, cache_k, cache_v).
        """
        exit_layer = jnp.asarray(self.check_exit(exit_layer), jnp.int32)
        T, S = tokens_BxT.shape[1], cache_k.shape[2]
        x = self.embed_tokens(tokens_BxT)
        cos, sin = rope_tables(self.cfg, positions_BxT, x.dtype)
        q_slot = start + jnp.arange(T)
        mask = (jnp.arange(S)[None, :] <= q_slot[:, None])[None] & valid_BxS[:, None, :]

        def body(carry, inp):
            i, p = inp

            def run(c):
                h, ck, cv = c
                q, k, v = qkv(self.cfg, p, h, cos, sin)
                ck = lax.dynamic_update_slice(ck, k[None].astype(ck.dtype), (i, 0, start, 0, 0))
                cv = lax.dynamic_update_slice(cv, v[None].astype(cv.dtype), (i, 0, start, 0, 0))
                return attend_mlp(self.cfg, p, h, q, ck[i], cv[i], mask), ck, cv

            return lax.cond(i < exit_layer, run, lambda c: c, carry), None

        idx = jnp.arange(self.cfg.num_hidden_layers, dtype=jnp.int32)
        (h, ck, cv), _ = lax.scan(body, (x, cache_k, cache_v), (idx, self.layers.stacked()))
        return h, ck, cv


def from_pretrained(path_or_id: str, dtype: str = "float32", mesh=None, **overrides: Any) -> Llama:
    """Load a Hugging Face LLaMA checkpoint (local dir or hub id); see :mod:`sortedjax.hf`."""
    from sortedjax import hf

    return hf.load_model(path_or_id, dtype=dtype, mesh=mesh, **overrides)


def save_pretrained(model: Llama, out_dir: str, num_layers: int | None = None) -> None:
    """Export the sub-model of the first ``num_layers`` layers as a transformers checkpoint."""
    from sortedjax import hf

    hf.save_model(model, out_dir, num_layers=num_layers)


def generate(model: Llama, prompt_ids, **kwargs) -> np.ndarray:
    """KV-cache generation; see :func:`sortedjax.decoding.generate` for the arguments."""
    from sortedjax import decoding

    return decoding.generate(model, prompt_ids, **kwargs)
