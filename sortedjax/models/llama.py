"""LLaMA (``transformers``' ``LlamaForCausalLM``) in Flax NNX, sorted along depth, width and heads.

A composition of :mod:`sortedjax.nn` layers: :class:`~sortedjax.nn.LayerStack` runs the
decoder layers, so ``model(tokens, sub=SubModel.of(depth=n, width=f, heads=h))`` with traced
sizes is one compiled program for every sub-model (``depth``: first layers, layers past it
skipped; ``width``: first MLP neurons, MatFormer style; ``heads``: first attention heads).
Every exit goes through the shared final RMSNorm + LM head, or, for the Early-Exit / SFT+ICT
baseline, through its own norm + head (``LlamaConfig.exit_head_layers``). q/k keep the
Hugging Face "rotate_half" RoPE layout, so weights copy straight across.

:func:`from_pretrained` / :func:`save_pretrained` read and write Hugging Face checkpoints
(any sub-model, through :func:`sortedjax.extract.extract`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

import sortedjax.models.common as common
from sortedjax import distributed, hf, nn, sharding
from sortedjax.extract import extract
from sortedjax.models.llama_config import DTYPES, LlamaConfig  # noqa: F401 - re-exported
from sortedjax.protocol import HFDescriptor
from sortedjax.submodel import SubModel, check_sizes


def _constrain_cache(cache):
    """The KV cache's keys / values sharded by their logical names (batch and kv heads)."""
    if cache is None:
        return None
    names = sharding.CACHE_NxBxSxGxK
    return dataclasses.replace(cache, k=sharding.constrain(cache.k, names), v=sharding.constrain(cache.v, names))


class DecoderLayer(nnx.Module):
    """Pre-norm attention + SwiGLU MLP, each with a residual."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        D, dt = cfg.hidden_size, cfg.jnp_dtype
        init = lambda k, s, d: nnx.initializers.normal(0.02)(k, s, d)  # noqa: E731
        self.attn_norm = nn.RMSNorm(D, eps=cfg.rms_norm_eps, dtype=dt)
        self.attn = nn.Attention(
            D,
            cfg.num_attention_heads,
            num_kv_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim,
            rope=cfg.rope,
            dtype=dt,
            kernel_init=init,
            rngs=rngs,
        )
        self.mlp_norm = nn.RMSNorm(D, eps=cfg.rms_norm_eps, dtype=dt)
        self.mlp = nn.MLP(
            D, cfg.intermediate_size, activation="silu", gated=True, dtype=dt, kernel_init=init, rngs=rngs
        )

    def __call__(
        self,
        x,
        *,
        mask,
        positions,
        width=None,
        heads=None,
        rank=None,
        cache=None,
        layer=None,
        start=None,
        kv_only=False,
    ):
        x = sharding.constrain(x, sharding.ACT_BxLxD)
        if kv_only:  # state copying: this layer's keys / values from x, x passes unchanged
            kv = dict(positions=positions, rank=rank, cache=cache, layer=layer, start=start)
            return x, self.attn(self.attn_norm(x), kv_only=True, **kv)
        a = self.attn(
            self.attn_norm(x),
            mask=mask,
            positions=positions,
            heads=heads,
            rank=rank,
            cache=cache,
            layer=layer,
            start=start,
        )
        a, cache = a if cache is not None else (a, None)
        cache = _constrain_cache(cache)
        x = sharding.constrain(x + a, sharding.ACT_BxLxD)
        x = sharding.constrain(x + self.mlp(self.mlp_norm(x), hidden=width, rank=rank), sharding.ACT_BxLxD)
        return x if cache is None else (x, cache)


class Llama(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        D, V, E, dt = cfg.hidden_size, cfg.vocab_size, cfg.num_exit_heads, cfg.jnp_dtype
        init = lambda k, s, d: nnx.initializers.normal(0.02)(k, s, d)  # noqa: E731
        self.embed = nn.Embed(V, D, dtype=dt, rngs=rngs)
        self.layers = nn.LayerStack(
            lambda r: DecoderLayer(cfg, rngs=r), cfg.num_hidden_layers, rngs=rngs, remat=cfg.remat
        )
        self.final_norm = nn.RMSNorm(D, eps=cfg.rms_norm_eps, dtype=dt)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else nn.Linear(D, V, names=("embed", "vocab"), use_bias=False, dtype=dt, kernel_init=init, rngs=rngs)
        )
        if E:
            self.exit_norm = sharding.param(jnp.ones((E, D), dt), (None, "embed"))
            self.exit_head = sharding.param(init(rngs.params(), (E, D, V), dt), (None, "embed", "vocab"))

    # -- the model protocol (sortedjax.protocol) ---------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.cfg.num_hidden_layers

    def hf_descriptor(self) -> HFDescriptor:
        """Hugging Face module names of the Linears (``LlamaForCausalLM``), for PEFT adapters."""
        layer = hf.hf_linears(_HF_LAYER)
        heads = {} if self.cfg.tie_word_embeddings else {"lm_head": "lm_head"}
        tensors = frozenset(name for _, name, _, _ in _hf_names(self.cfg))
        return HFDescriptor(
            architecture="llama", layer_prefix="model.layers.", layer_linears=layer, heads=heads, tensors=tensors
        )

    @property
    def limits(self) -> dict[str, int]:
        c = self.cfg
        return {"depth": c.num_hidden_layers, "width": c.intermediate_size, "heads": c.num_attention_heads}

    def _sizes(self, sub: SubModel | None, exit_layer):
        """(depth, layer kwargs) of ``sub`` / ``exit_layer``, validated when concrete."""
        return common.sizes(sub, exit_layer, self.limits, self)

    def check_exit(self, exit_layer):
        check_sizes({"depth": exit_layer}, self.limits)
        return self.cfg.num_hidden_layers if exit_layer is None else exit_layer

    def logits_from_hidden(self, h_xD, exit_index=None, *, sub: SubModel | None = None):
        """Final RMSNorm + LM head on pre-norm hidden states (float32 logits).

        ``exit_index=None`` uses the shared final norm + head; an int (may be traced) picks
        the ``exit_index``-th separate exit head (``cfg.exit_head_layers[exit_index]``).
        ``sub.rank`` is the rank a DyLoRA adapter on ``lm_head`` runs at (``None``: r_max).
        """
        if exit_index is None:
            h = self.final_norm(h_xD)
            rank = None if sub is None else sub.rank
            out = self.embed.attend(h) if self.lm_head is None else self.lm_head(h, rank=rank)
            return sharding.constrain(out.astype(jnp.float32), ("act_batch", "act_length", "act_vocab"))
        if not self.cfg.num_exit_heads:
            raise ValueError(
                "exit_index given but the model has no separate exit heads (LlamaConfig.exit_head_layers is empty)"
            )
        scale = self.exit_norm[exit_index].reshape((1,) * (h_xD.ndim - 1) + (-1,))
        normed = scale * nn.norm.rms_normalize(h_xD, self.cfg.rms_norm_eps)
        return jnp.einsum("...d,dv->...v", normed, self.exit_head[exit_index]).astype(jnp.float32)

    def logits_at_exit(self, h_xD, exit_layer, *, sub: SubModel | None = None):
        """Logits for hidden states after ``exit_layer`` layers (own head if it has one)."""
        if not self.cfg.num_exit_heads:
            return self.logits_from_hidden(h_xD, sub=sub)
        hit_E = jnp.asarray(self.cfg.exit_head_layers, jnp.int32) == jnp.asarray(exit_layer, jnp.int32)
        return lax.cond(
            hit_E.any(),
            lambda h: self.logits_from_hidden(h, jnp.argmax(hit_E)),
            lambda h: self.logits_from_hidden(h, sub=sub),
            h_xD,
        )

    def _run(self, tokens_BxL, depth, exits, attention_mask, positions, kw):
        B, L = tokens_BxL.shape
        mask_BxL = jnp.ones((B, L), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        if positions is None:  # padding-aware positions, as transformers' generate uses
            positions = jnp.maximum(jnp.cumsum(mask_BxL, axis=1) - 1, 0)
        x = sharding.constrain(self.embed(tokens_BxL), sharding.ACT_BxLxD)
        return self.layers(
            x, depth=depth, exits=exits, mask=mask_BxL[:, None, :], positions=jnp.asarray(positions), **kw
        )

    def check_ids(self, tokens) -> None:
        """Token ids outside the vocabulary raise (concrete ids only; ``jnp.take`` would give NaN)."""
        common.check_ids(tokens, self.cfg.vocab_size)

    def __call__(
        self, tokens_BxL, exit_layer=None, attention_mask=None, positions=None, *, sub: SubModel | None = None
    ):
        """Logits B x L x V of sub-model ``sub`` (may be traced; ``exit_layer=n``: a shorthand for
        ``sub=SubModel.of(depth=n)``). Unset sizes are filled (:func:`common.sizes`): every
        sub-model, the full model included, is one compiled program.

        Sizes and token ids are checked here, on the host; called eagerly, the forward pass runs
        as one compiled program (:func:`sortedjax.nn.eager.jit_call`).
        """
        depth, kw = self._sizes(sub, exit_layer)
        self.check_ids(tokens_BxL)
        return nn.eager.jit_call(self, "_logits", tokens_BxL, depth, attention_mask, positions, kw)

    def _logits(self, tokens_BxL, depth, attention_mask, positions, kw):
        h = self._run(tokens_BxL, depth, None, attention_mask, positions, kw).hidden
        exit_layer = self.cfg.num_hidden_layers if depth is None else depth
        return self.logits_at_exit(h, exit_layer, sub=SubModel(rank=kw["rank"]))

    def hidden_states(self, tokens_BxL, exits, attention_mask=None, positions=None, *, sub: SubModel | None = None):
        """Pre-final-norm hidden states E x B x L x D after each exit (1-based layer counts)."""
        if not isinstance(exits, jax.Array):
            self.layers.check_exits(exits)
        _, kw = self._sizes(sub, None)
        self.check_ids(tokens_BxL)
        exits_E = jnp.asarray(exits, jnp.int32)
        return nn.eager.jit_call(self, "_hidden", tokens_BxL, exits_E, attention_mask, positions, kw)

    def _hidden(self, tokens_BxL, exits_E, attention_mask, positions, kw):
        return self._run(tokens_BxL, jnp.max(exits_E), exits_E, attention_mask, positions, kw).exits

    def init_cache(self, batch: int, length: int) -> nn.KVCache:
        c = self.cfg
        cache = nn.KVCache.create(c.num_hidden_layers, batch, length, c.num_key_value_heads, c.head_dim, c.jnp_dtype)
        return _constrain_cache(cache)

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
        """Run ``T`` new tokens written at cache slots ``start..start+T-1`` (see the protocol).

        A query attends to valid slots ``<=`` its own. Layers past ``exit_layer`` are skipped and
        their cache entries left untouched. Returns ``(pre-norm h, cache[, hook_state])``.
        ``start`` and ``positions_BxT`` may differ per row (``start``: ``B``). ``start_layer``
        and ``h_BxTxD``: run only layers ``start_layer+1..exit_layer`` on the state after
        ``start_layer`` layers; ``kv_only``: those layers only write keys / values from ``h``.
        """
        depth, kw = self._sizes(sub, exit_layer)
        x = self.embed(tokens_BxT) if h_BxTxD is None else h_BxTxD
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
            positions=positions_BxT,
        )

    # -- extraction (sortedjax.extract) -------------------------------------------------------
    def sub_config(self, sizes) -> LlamaConfig:
        c = self.cfg
        d, f, h = (sizes.get(k, lim) for k, lim in self.limits.items())
        r = c.num_attention_heads // c.num_key_value_heads
        if h % r:
            raise ValueError(
                f"heads {h}: a standalone model keeps whole kv groups, so heads must be a multiple of "
                f"{r} (num_attention_heads / num_key_value_heads)"
            )
        own = d in c.exit_head_layers
        return dataclasses.replace(
            c,
            num_hidden_layers=d,
            intermediate_size=f,
            num_attention_heads=h,
            num_key_value_heads=h // r,
            head_dim=c.head_dim,
            exit_head_layers=(),
            tie_word_embeddings=c.tie_word_embeddings and not own,
        )

    def axis_sizes(self, sizes) -> dict[str, int]:
        c = self.cfg
        d, f, h = (sizes.get(k, lim) for k, lim in self.limits.items())
        return {"layers": d, "mlp": f, "heads": h, "kv_heads": h // (c.num_attention_heads // c.num_key_value_heads)}

    def extract_params(self, params: dict, sizes) -> dict:
        """Exit ``depth`` with its own head becomes the small model's final norm + head."""
        d = sizes.get("depth", self.cfg.num_hidden_layers)
        exit_norm, exit_head = params.pop("exit_norm", None), params.pop("exit_head", None)
        if d in self.cfg.exit_head_layers:
            j = self.cfg.exit_head_layers.index(d)
            params["final_norm"] = {"scale": exit_norm[j]}
            params["lm_head"] = {"kernel": exit_head[j]}
        return params


# -- Hugging Face checkpoints ---------------------------------------------------------------
_HF_LAYER = {  # HF suffix -> (our per-layer paths, n_in: Linear input axes / None as is)
    "input_layernorm.weight": ((("attn_norm", "scale"),), None),
    "self_attn.q_proj.weight": ((("attn", "q", "kernel"),), 1),
    "self_attn.k_proj.weight": ((("attn", "k", "kernel"),), 1),
    "self_attn.v_proj.weight": ((("attn", "v", "kernel"),), 1),
    "self_attn.o_proj.weight": ((("attn", "o", "kernel"),), 2),
    "post_attention_layernorm.weight": ((("mlp_norm", "scale"),), None),
    "mlp.gate_proj.weight": ((("mlp", "gate", "kernel"),), 1),
    "mlp.up_proj.weight": ((("mlp", "up", "kernel"),), 1),
    "mlp.down_proj.weight": ((("mlp", "down", "kernel"),), 1),
}


def _hf_names(cfg: LlamaConfig) -> list:
    """The checkpoint's entries (:mod:`sortedjax.hf.walk`): embedding, final norm, head, layers."""
    shapes = hf.param_shapes(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
    top = {
        ("embed", "embedding"): ("model.embed_tokens.weight", None),
        ("final_norm", "scale"): ("model.norm.weight", None),
    }
    if not cfg.tie_word_embeddings:
        top[("lm_head", "kernel")] = ("lm_head.weight", 1)
    out = [((p,), name, n_in, shapes[p[0]][p[1]]) for p, (name, n_in) in top.items()]
    return out + hf.layer_entries(_HF_LAYER, shapes["layers"]["layers"], cfg.num_hidden_layers, "model.layers.")


def from_pretrained(path_or_id: str, dtype: str = "float32", mesh=None, **overrides: Any) -> Llama:
    """Load a Hugging Face LLaMA checkpoint (local dir or hub id), params placed into ``mesh`` shardings."""
    mesh = hf.as_mesh(mesh)  # a bad --mesh spec fails before any reading
    d = hf.resolve(path_or_id)
    cfg = LlamaConfig.from_hf(hf.load_config(d), dtype=dtype, **overrides)
    sd = hf.load_state_dict(d)
    extra = sorted(k for k in sd if k.startswith(f"model.layers.{cfg.num_hidden_layers}."))
    if extra:
        raise ValueError(
            f"checkpoint has tensor {extra[0]!r} but config.json says num_hidden_layers={cfg.num_hidden_layers}"
        )
    params = hf.load_params(sd, _hf_names(cfg), np.dtype(cfg.jnp_dtype))
    if cfg.num_exit_heads:  # separate exit heads start as copies of the final norm + head
        head = params["embed"]["embedding"].T if cfg.tie_word_embeddings else params["lm_head"]["kernel"]
        params["exit_norm"] = np.stack([params["final_norm"]["scale"]] * cfg.num_exit_heads)
        params["exit_head"] = np.stack([head] * cfg.num_exit_heads)
    return hf.place(lambda: Llama(cfg, rngs=nnx.Rngs(0)), params, mesh)


def save_pretrained(model: Llama, out_dir, sub: SubModel | None = None, num_layers: int | None = None) -> None:
    """Write sub-model ``sub`` (or the first ``num_layers`` layers) as a transformers checkpoint.

    With several processes every one must call it (the parameters are gathered); process 0 writes.
    """

    if num_layers is not None:
        if sub is not None:
            raise ValueError("give sub=SubModel(...) or num_layers=..., not both")
        sub = SubModel.of(depth=num_layers)
    small = model if sub is None else extract(model, sub)
    if small.cfg.num_exit_heads:
        small = extract(small, SubModel.of(depth=small.cfg.num_hidden_layers))
    params = distributed.gather(nnx.to_pure_dict(nnx.state(small, nnx.Param)))  # all processes take part
    if not distributed.is_main():  # several processes: process 0 writes, the others wait for it
        distributed.sync("llama_save_pretrained")
        return
    hf.write_checkpoint(out_dir, small.cfg.to_hf(), hf.checkpoint_tensors(params, _hf_names(small.cfg)))
    distributed.sync("llama_save_pretrained")
