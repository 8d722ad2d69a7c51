"""GPT-2 (``transformers``' ``GPT2LMHeadModel``) in Flax NNX, sorted along depth, hidden width and heads.

A composition of :mod:`sortedjax.nn` layers: token + learned absolute position embeddings, a
:class:`~sortedjax.nn.LayerStack` of pre-LN blocks (``x + attention(LN(x))``, ``x + MLP(LN(x))``,
``gelu_new`` = the tanh GELU), a final LayerNorm and the LM head tied to the token embedding.
``model(tokens, sub=SubModel.of(depth=n, width=w, heads=h))``: the first ``n`` blocks, the first
``w`` hidden features (LayerNorm statistics over them; the MLP's inner width kept whole) and the
first ``h`` heads; one compiled program for every traced size. Decoding
(:mod:`sortedjax.decoding`) goes through ``init_cache`` / ``forward_cached`` / ``logits_at_exit``
at any exit depth, the learned positions read from ``positions_BxT``.

Checkpoints: transformers' ``Conv1D`` weights are ``in x out`` (not transposed like a Linear), and
``c_attn`` holds q, k, v concatenated on its output axis; :func:`from_pretrained` splits it,
:func:`save_pretrained` fuses it back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import sortedjax.models.common as common
from sortedjax import hf, nn
from sortedjax.extract import extract
from sortedjax.models.gpt2_config import GPT2Config
from sortedjax.protocol import HFDescriptor
from sortedjax.submodel import SubModel

_init = lambda k, s, d: nnx.initializers.normal(0.02)(k, s, d)  # noqa: E731


class Block(nnx.Module):
    """Pre-LN: ``x = x + attention(LN(x)); x = x + MLP(LN(x))``."""

    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        D, dt, eps = cfg.hidden_size, cfg.jnp_dtype, cfg.layer_norm_epsilon
        kw = dict(use_bias=True, dtype=dt, kernel_init=_init, rngs=rngs)
        self.ln_1 = nn.LayerNorm(D, eps=eps, dtype=dt)
        self.attn = nn.Attention(D, cfg.num_attention_heads, head_dim=cfg.head_dim, causal=True, **kw)
        self.ln_2 = nn.LayerNorm(D, eps=eps, dtype=dt)
        self.mlp = nn.MLP(D, cfg.intermediate_size, activation=cfg.activation, gated=False, **kw)

    def __call__(
        self, x, *, mask, width=None, heads=None, rank=None, cache=None, layer=None, start=None, kv_only=False
    ):
        kv = dict(rank=rank, cache=cache, layer=layer, start=start)
        if kv_only:  # state copying: this layer's keys / values from x, x passes unchanged
            return x, self.attn(self.ln_1(x, size=width), kv_only=True, **kv)
        a = self.attn(self.ln_1(x, size=width), mask=mask, heads=heads, embed=width, **kv)
        a, cache = a if cache is not None else (a, None)
        x = x + a
        x = x + self.mlp(self.ln_2(x, size=width), embed=width, rank=rank)
        return x if cache is None else (x, cache)


class GPT2(nnx.Module):
    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        D, dt = cfg.hidden_size, cfg.jnp_dtype
        self.wte = nn.Embed(cfg.vocab_size, D, dtype=dt, rngs=rngs)
        self.wpe = nn.Embed(cfg.max_position_embeddings, D, names=("length", "embed"), dtype=dt, rngs=rngs)
        self.layers = nn.LayerStack(lambda r: Block(cfg, rngs=r), cfg.num_hidden_layers, rngs=rngs, remat=cfg.remat)
        self.ln_f = nn.LayerNorm(D, eps=cfg.layer_norm_epsilon, dtype=dt)

    # -- the model protocol (sortedjax.protocol) ---------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.cfg.num_hidden_layers

    def hf_descriptor(self) -> HFDescriptor:
        """Hugging Face module names of the Linears (``c_attn`` fuses q, k, v) in the layout of the
        checkpoint the model came from: ``GPT2LMHeadModel``, or a headless ``GPT2Model``
        (``cfg.hf_prefix == ""``: no ``transformer.`` prefix)."""
        prefix = "transformer." if self.cfg.hf_prefix is None else self.cfg.hf_prefix
        return HFDescriptor(
            architecture="gpt2",
            layer_prefix=f"{prefix}h.",
            layer_linears=hf.hf_linears(_HF_LAYER),
            heads={},
            headless=prefix == "",
            tensors=frozenset(name for _, name, _, _ in _hf_names(self.cfg, prefix)),
        )

    @property
    def limits(self) -> dict[str, int]:
        c = self.cfg
        return {"depth": c.num_hidden_layers, "width": c.hidden_size, "heads": c.num_attention_heads}

    def check_exit(self, exit_layer):
        common.sizes(None, exit_layer, self.limits)
        return self.cfg.num_hidden_layers if exit_layer is None else exit_layer

    def logits_from_hidden(self, h_xD, exit_index=None, *, sub: SubModel | None = None):
        """Final LayerNorm + tied LM head (float32 logits); ``sub.width``: the kept width of ``h``."""
        if exit_index is not None:
            raise ValueError("exit_index given but GPT-2 has one shared head (no separate exit heads)")
        width = None if sub is None else sub.width
        return self.wte.attend(self.ln_f(h_xD, size=width)).astype(jnp.float32)

    def logits_at_exit(self, h_xD, exit_layer, *, sub: SubModel | None = None):
        """Logits for hidden states after ``exit_layer`` layers (every exit shares the head)."""
        del exit_layer
        return self.logits_from_hidden(h_xD, sub=sub)

    def _embed(self, tokens_BxT, positions_BxT, width):
        return self.wte(tokens_BxT, size=width) + self.wpe(jnp.asarray(positions_BxT), size=width)

    def _run(self, tokens_BxL, depth, exits, attention_mask, positions, kw):
        B, L = tokens_BxL.shape
        mask_BxL = jnp.ones((B, L), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        if positions is None:  # padding-aware positions, as transformers' generate uses
            positions = jnp.maximum(jnp.cumsum(mask_BxL, axis=1) - 1, 0)
        x = self._embed(tokens_BxL, positions, kw["width"])
        return self.layers(x, depth=depth, exits=exits, mask=mask_BxL[:, None, :], **kw)

    def _check(self, tokens_BxL, positions):
        common.check_ids(tokens_BxL, self.cfg.vocab_size)
        common.check_ids(positions, self.cfg.max_position_embeddings, "position", "n_positions")
        P = self.cfg.max_position_embeddings
        if positions is None and np.shape(tokens_BxL)[-1] > P:
            raise ValueError(f"input length {np.shape(tokens_BxL)[-1]} exceeds the model's {P} positions")

    def __call__(
        self, tokens_BxL, exit_layer=None, attention_mask=None, positions=None, *, sub: SubModel | None = None
    ):
        """Logits ``B x L x V`` of sub-model ``sub`` (may be traced; ``exit_layer=n``: a shorthand for
        ``sub=SubModel.of(depth=n)``); every sub-model is one compiled program (:func:`common.sizes`)."""
        depth, kw = common.sizes(sub, exit_layer, self.limits, self)
        self._check(tokens_BxL, positions)
        return nn.eager.jit_call(self, "_logits", tokens_BxL, depth, attention_mask, positions, kw)

    def _logits(self, tokens_BxL, depth, attention_mask, positions, kw):
        h = self._run(tokens_BxL, depth, None, attention_mask, positions, kw).hidden
        return self.logits_from_hidden(h, sub=SubModel(width=kw["width"]))

    def hidden_states(self, tokens_BxL, exits, attention_mask=None, positions=None, *, sub: SubModel | None = None):
        """Pre-final-LayerNorm hidden states ``E x B x L x D`` after each exit (1-based layer counts)."""
        if not isinstance(exits, jax.Array):
            self.layers.check_exits(exits)
        _, kw = common.sizes(sub, None, self.limits, self)
        self._check(tokens_BxL, positions)
        exits_E = jnp.asarray(exits, jnp.int32)
        return nn.eager.jit_call(self, "_hidden", tokens_BxL, exits_E, attention_mask, positions, kw)

    def _hidden(self, tokens_BxL, exits_E, attention_mask, positions, kw):
        return self._run(tokens_BxL, jnp.max(exits_E), exits_E, attention_mask, positions, kw).exits

    def init_cache(self, batch: int, length: int) -> nn.KVCache:
        c = self.cfg
        return nn.KVCache.create(c.num_hidden_layers, batch, length, c.num_attention_heads, c.head_dim, c.jnp_dtype)

    def forward_cached(
        self,
        tokens_BxT,
        cache: nn.KVCache,
        *,
        start,
        positions_BxT,
        exit_layer=None,
        sub: SubModel | None = None,
        hook=None,
        hook_state=None,
        start_layer=None,
        h_BxTxD=None,
        kv_only: bool = False,
    ):
        """Run ``T`` new tokens written at cache slots ``start..start+T-1`` (the protocol, as
        :meth:`sortedjax.models.llama.Llama.forward_cached`): ``(pre-LN h, cache[, hook_state])``.
        ``positions_BxT`` index the learned position table."""
        depth, kw = common.sizes(sub, exit_layer, self.limits, self)
        x = self._embed(tokens_BxT, positions_BxT, kw["width"]) if h_BxTxD is None else h_BxTxD
        return common.run_cached(
            self.layers,
            x,
            tokens_BxT.shape[1],
            cache,
            depth,
            kw,
            start=start,
            start_layer=start_layer,
            hook=hook,
            hook_state=hook_state,
            kv_only=kv_only,
        )

    # -- extraction (sortedjax.extract) -------------------------------------------------------
    def sub_config(self, sizes) -> GPT2Config:
        d, w, h = (sizes.get(k, lim) for k, lim in self.limits.items())
        c = self.cfg
        return dataclasses.replace(
            c,
            num_hidden_layers=d,
            hidden_size=w,
            num_attention_heads=h,
            head_dim=c.head_dim,
            intermediate_size=c.intermediate_size,
        )

    def axis_sizes(self, sizes) -> dict[str, int]:
        d, w, h = (sizes.get(k, lim) for k, lim in self.limits.items())
        return {"layers": d, "embed": w, "heads": h, "kv_heads": h}


# -- Hugging Face checkpoints ---------------------------------------------------------------
_HF_LAYER = {  # HF suffix -> (our per-layer paths, n_in: Conv1D input axes / 0 flat vector / None as is)
    "ln_1.weight": ([("ln_1", "scale")], None),
    "ln_1.bias": ([("ln_1", "bias")], None),
    "attn.c_attn.weight": ([("attn", n, "kernel") for n in "qkv"], 1),  # fused: q | k | v
    "attn.c_attn.bias": ([("attn", n, "bias") for n in "qkv"], 0),
    "attn.c_proj.weight": ([("attn", "o", "kernel")], 2),
    "attn.c_proj.bias": ([("attn", "o", "bias")], None),
    "ln_2.weight": ([("ln_2", "scale")], None),
    "ln_2.bias": ([("ln_2", "bias")], None),
    "mlp.c_fc.weight": ([("mlp", "up", "kernel")], None),
    "mlp.c_fc.bias": ([("mlp", "up", "bias")], None),
    "mlp.c_proj.weight": ([("mlp", "down", "kernel")], None),
    "mlp.c_proj.bias": ([("mlp", "down", "bias")], None),
}
_HF_TOP = {
    ("wte", "embedding"): "wte.weight",
    ("wpe", "embedding"): "wpe.weight",
    ("ln_f", "scale"): "ln_f.weight",
    ("ln_f", "bias"): "ln_f.bias",
}


def _hf_names(cfg: GPT2Config, prefix: str) -> list:
    shapes = hf.param_shapes(lambda: GPT2(cfg, rngs=nnx.Rngs(0)))
    out = [((p,), prefix + name, None, shapes[p[0]][p[1]]) for p, name in _HF_TOP.items()]
    return out + hf.layer_entries(_HF_LAYER, shapes["layers"]["layers"], cfg.num_hidden_layers, f"{prefix}h.")


def from_pretrained(path_or_id: str, dtype: str = "float32", mesh=None, **overrides: Any) -> GPT2:
    """Load a Hugging Face GPT-2 checkpoint (local dir or hub id), params placed into ``mesh`` shardings."""
    mesh = hf.as_mesh(mesh)
    d = hf.resolve(path_or_id)
    cfg = GPT2Config.from_hf(hf.load_config(d), dtype=dtype, **overrides)
    sd = hf.load_state_dict(d)
    prefix = common.prefix_of(sd, {"transformer.": "transformer.wte.weight", "": "wte.weight"}, "GPT-2")
    extra = sorted(k for k in sd if k.startswith(f"{prefix}h.{cfg.num_hidden_layers}."))
    if extra:
        raise ValueError(f"checkpoint has tensor {extra[0]!r} but config.json says n_layer={cfg.num_hidden_layers}")
    cfg = dataclasses.replace(cfg, hf_prefix=prefix)  # adapters are named for this checkpoint's layout
    params = hf.load_params(sd, _hf_names(cfg, prefix), np.dtype(cfg.jnp_dtype), conv1d=True)
    return hf.place(lambda: GPT2(cfg, rngs=nnx.Rngs(0)), params, mesh)


def save_pretrained(model: GPT2, out_dir, sub: SubModel | None = None, num_layers: int | None = None) -> None:
    """Write sub-model ``sub`` (or the first ``num_layers`` blocks) as a ``GPT2LMHeadModel`` checkpoint.

    transformers ties head_dim to n_embd / n_head, so a sub-model with fewer heads is written with
    its kept heads followed by all-zero heads (same logits; see :func:`common.hf_heads`).
    """

    if num_layers is not None:
        if sub is not None:
            raise ValueError("give sub=SubModel(...) or num_layers=..., not both")
        sub = SubModel.of(depth=num_layers)
    small = model if sub is None else extract(model, sub)
    c = small.cfg
    n = common.hf_heads(c.hidden_size, c.num_attention_heads, c.head_dim, "GPT-2")
    cfg = dataclasses.replace(c, num_attention_heads=n, head_dim=c.head_dim)
    pad = None if n == c.num_attention_heads else hf.param_shapes(lambda: GPT2(cfg, rngs=nnx.Rngs(0)))
    tensors = hf.checkpoint_tensors(small, _hf_names(cfg, "transformer."), conv1d=True, pad_to=pad)
    hf.write_checkpoint(out_dir, cfg.to_hf(), tensors)
