"""SymbolicGPT in Flax NNX: an order-invariant T-net encoder of the points, a GPT decoder.

The T-net reads a set of points ``(x_1..x_d, y)`` of any size ``n`` (padded to ``N`` with a
mask) and any ``d <= max_vars`` (missing variables are zero columns) and returns one vector
``z`` of width ``e``:

1. learnable input normalization: each column is standardized with its masked per-instance
   mean and standard deviation, then scaled and shifted by learned per-column parameters (the
   padding-aware counterpart of the thesis's input BatchNorm); the (symlog) mean and log-std
   are kept as extra features so the scale of the data is not lost;
2. three pointwise stages of widths ``e, 2e, 4e`` (dense, LayerNorm, ReLU);
3. a global max pool over the valid points only (padding can never win the max);
4. two fully connected layers ``4e + stats -> 2e -> e``.

The decoder is a pre-LayerNorm GPT of ``n_layers`` blocks whose input at position ``t`` is
``W_t[token_t] + W_p[t] + z`` and whose output projection is tied to ``W_t^T``.

Everything is built from the shared layers of :mod:`sortedjax.nn` (``Linear``, ``Embed``,
``LayerNorm``, ``Attention``, ``MLP``); the blocks run through one ``LayerStack`` (parameters
stacked on a ``"layers"`` axis, ``lax.scan``). ``decode`` runs either a full causal pass or,
given a :class:`sortedjax.nn.KVCache` from :func:`init_cache`, appends ``T`` tokens at
position ``start`` (used by :mod:`symreg.decoding`); its ``input_bias`` and ``hook`` arguments
are how :class:`symreg.conditional.CSymbolicGPT` conditions this same decoder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sortedjax import nn
from sortedjax.sharding import param

PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(embed=32, n_layers=2, n_heads=2),  # tests
    "cpu": dict(embed=128, n_layers=3, n_heads=4),  # default 20-minute CPU run
    "small": dict(embed=256, n_layers=4, n_heads=4),
    "thesis": dict(embed=512, n_layers=8, n_heads=8),  # Valipour et al. / thesis sizes
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    vocab_size: int
    max_len: int = 32  # tokens per skeleton, start and end included
    max_vars: int = 1  # d_max: instances with fewer variables are zero-padded
    embed: int = 128
    n_layers: int = 3
    n_heads: int = 4
    mlp_ratio: int = 4
    pad_id: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "max_len", "max_vars", "embed", "n_layers", "n_heads", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.embed % self.n_heads:
            raise ValueError(f"ModelConfig.embed ({self.embed}) must be divisible by n_heads ({self.n_heads})")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"ModelConfig.pad_id must be in [0, vocab_size), got {self.pad_id}")

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; allowed: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def in_features(self) -> int:
        return self.max_vars + 1


LN_EPS = 1e-6  # flax's LayerNorm default, which the model was tuned with


def fan_in_init(scale: float = 1.0, n_in: int = 1):
    """``kernel_init``: truncated normal of variance ``scale / fan_in``, fan-in = the first ``n_in`` axes."""

    def init(key, shape, dtype=jnp.float32):
        axes = {"in_axis": tuple(range(n_in)), "out_axis": tuple(range(n_in, len(shape)))}
        return jax.nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal", **axes)(key, shape, dtype)

    return init


def dense(n_in: int, n_out: int, names: tuple, *, rngs: nnx.Rngs, scale: float = 1.0) -> nn.Linear:
    return nn.Linear(n_in, n_out, names=names, kernel_init=fan_in_init(scale), rngs=rngs)


def masked_stats(x_BxNxF: jax.Array, mask_BxN: jax.Array, eps: float = 1e-6):
    """Per-instance mean and std of every column over the valid points."""
    m = mask_BxN[..., None].astype(x_BxNxF.dtype)
    count = jnp.maximum(m.sum(axis=1), 1.0)
    mean_BxF = (x_BxNxF * m).sum(axis=1) / count
    var_BxF = (jnp.square(x_BxNxF - mean_BxF[:, None]) * m).sum(axis=1) / count
    return mean_BxF, jnp.sqrt(var_BxF + eps)


class TNet(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        e, f = cfg.embed, cfg.in_features
        self.norm_scale = param(jnp.ones((f,)), ("in",))
        self.norm_bias = param(jnp.zeros((f,)), ("in",))
        self.stages = nnx.List(
            [dense(a, b, ("in", "mlp"), rngs=rngs, scale=2.0) for a, b in ((f, e), (e, 2 * e), (2 * e, 4 * e))]
        )
        self.norms = nnx.List([nn.LayerNorm(w, eps=LN_EPS, names=("mlp",)) for w in (e, 2 * e, 4 * e)])
        self.fc1 = dense(4 * e + 2 * f, 2 * e, ("mlp", "embed"), rngs=rngs, scale=2.0)
        self.fc2 = dense(2 * e, e, ("mlp", "embed"), rngs=rngs)

    def __call__(self, points_BxNxF: jax.Array, mask_BxN: jax.Array) -> jax.Array:
        x = points_BxNxF.astype(jnp.float32)
        valid = mask_BxN.astype(bool)
        x = jnp.where(valid[..., None], x, 0.0)
        mean_BxF, std_BxF = masked_stats(x, valid)
        scale, bias = self.norm_scale[...][None, None], self.norm_bias[...][None, None]
        h = (x - mean_BxF[:, None]) / std_BxF[:, None] * scale + bias
        for linear, norm in zip(self.stages, self.norms):
            h = jax.nn.relu(norm(linear(h)))
        pooled_BxH = jnp.max(jnp.where(valid[..., None], h, -jnp.inf), axis=1)
        pooled_BxH = jnp.where(jnp.isfinite(pooled_BxH), pooled_BxH, 0.0)  # all-padding rows
        stats = jnp.concatenate([jnp.sign(mean_BxF) * jnp.log1p(jnp.abs(mean_BxF)), jnp.log(std_BxF)], -1)
        h = jax.nn.relu(self.fc1(jnp.concatenate([pooled_BxH, stats], axis=-1)))
        return self.fc2(h)


class Block(nnx.Module):
    """Pre-LayerNorm GPT block: ``x + attn(ln1(x))``, then ``+ mlp(ln2(x))`` (GELU, tanh form).

    The output projections start at variance ``1 / (2 n_layers fan_in)`` (GPT-2 residual scaling).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        e, res = cfg.embed, fan_in_init(1.0 / (2 * cfg.n_layers), n_in=2)
        self.ln1 = nn.LayerNorm(e, eps=LN_EPS)
        self.ln2 = nn.LayerNorm(e, eps=LN_EPS)
        self.attn = nn.Attention(
            e, cfg.n_heads, use_bias=True, causal=True, rope=None, kernel_init=fan_in_init(), out_init=res, rngs=rngs
        )
        self.mlp = nn.MLP(
            e,
            cfg.mlp_ratio * e,
            activation="gelu_tanh",
            gated=False,
            use_bias=True,
            kernel_init=fan_in_init(),
            out_init=fan_in_init(1.0 / (2 * cfg.n_layers)),
            rngs=rngs,
        )

    def __call__(self, x_BxTxE, *, mask=None, cache=None, layer=None, start=None):
        """``x_BxTxE`` -> same; with ``cache`` (and its ``mask``) also the updated cache."""
        h_BxTxE = self.ln1(x_BxTxE)
        if cache is None:
            a_BxTxE = self.attn(h_BxTxE, mask=mask)
        else:
            a_BxTxE, cache = self.attn(h_BxTxE, mask=mask, cache=cache, layer=layer, start=start)
        x_BxTxE = x_BxTxE + a_BxTxE
        x_BxTxE = x_BxTxE + self.mlp(self.ln2(x_BxTxE))
        return x_BxTxE if cache is None else (x_BxTxE, cache)


class SymbolicGPT(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.tnet = TNet(cfg, rngs=rngs)
        self.tok_embed = nn.Embed(cfg.vocab_size, cfg.embed, names=("vocab", "embed"), rngs=rngs)
        self.pos_embed = nn.Embed(cfg.max_len, cfg.embed, names=("length", "embed"), rngs=rngs)
        self.blocks = nn.LayerStack(lambda r: Block(cfg, rngs=r), cfg.n_layers, rngs=rngs)
        self.ln_f = nn.LayerNorm(cfg.embed, eps=LN_EPS)

    def encode(self, points_BxNxF: jax.Array, mask_BxN: jax.Array) -> jax.Array:
        """Points (variables zero-padded to ``max_vars``, then y) -> ``z_BxE``."""
        return self.tnet(points_BxNxF, mask_BxN)

    def decode(
        self,
        tokens_BxT: jax.Array,
        z_BxE: jax.Array,
        *,
        start=0,
        cache: nn.KVCache | None = None,
        input_bias: jax.Array | None = None,
        hook: Callable | None = None,
        hook_state=None,
    ):
        """Logits for ``T`` tokens at positions ``start..start+T-1``; returns (logits, cache).

        Without ``cache`` the ``T`` tokens attend causally among themselves; with it they are
        written at slots ``start..`` and attend to every earlier slot.

        Conditioning (used by :class:`symreg.conditional.CSymbolicGPT`; both default to none,
        which is exactly the plain decoder):

        * ``input_bias``: an additive term to the decoder input. ``B x E`` is added to ``z``
          (the same at every position; ``W_t[tok] + W_p[t] + (z + bias)``), anything else
          broadcastable to ``B x T x E`` to the summed embeddings.
        * ``hook`` / ``hook_state``: passed to the block stack
          (:class:`sortedjax.nn.LayerStack`): ``hook(i, h_in, h_out, hook_state) -> (h, hook_state)``
          after block ``i``; the final ``hook_state`` is dropped.
        """
        t = tokens_BxT.shape[1]
        if input_bias is not None and jnp.ndim(input_bias) == 2:
            z_BxE, input_bias = z_BxE + input_bias, None
        x_BxTxE = self.tok_embed(tokens_BxT) + self.pos_embed(start + jnp.arange(t))[None] + z_BxE[:, None, :]
        if input_bias is not None:
            x_BxTxE = x_BxTxE + input_bias
        x_BxTxE, cache = self.run_blocks(x_BxTxE, start=start, cache=cache, hook=hook, hook_state=hook_state)
        return self.tok_embed.attend(self.ln_f(x_BxTxE)), cache

    def run_blocks(self, x_BxTxE, *, start=0, cache: nn.KVCache | None = None, hook=None, hook_state=None):
        """The block stack on ``x_BxTxE`` (with ``cache``: at slots ``start..``); returns ``(h, cache)``."""
        t = x_BxTxE.shape[1]
        kw = {} if hook is None else {"hook": hook, "hook_state": hook_state}
        if cache is None:
            out = self.blocks(x_BxTxE, **kw)
        else:
            out = self.blocks(x_BxTxE, cache=cache, start=start, mask=cache.attention_mask(start, t), **kw)
        return out.hidden, out.cache

    def __call__(self, points_BxNxF, mask_BxN, tokens_BxT):
        logits, _ = self.decode(tokens_BxT, self.encode(points_BxNxF, mask_BxN))
        return logits


def init_cache(cfg: ModelConfig, batch: int, dtype=jnp.float32) -> nn.KVCache:
    """An empty KV cache of ``n_layers x B x max_len x n_heads x head_dim`` (every slot valid)."""
    return nn.KVCache.create(cfg.n_layers, batch, cfg.max_len, cfg.n_heads, cfg.embed // cfg.n_heads, dtype)


def make_points(instances, max_vars: int, n_points: int | None = None):
    """Instances ``{"X": (n, d), "y": (n,)}`` -> ``points_BxNx(max_vars+1)``, ``mask_BxN`` (numpy)."""
    n_max = n_points or max(len(inst["y"]) for inst in instances)
    points = np.zeros((len(instances), n_max, max_vars + 1), np.float32)
    mask = np.zeros((len(instances), n_max), bool)
    for i, inst in enumerate(instances):
        X = np.asarray(inst["X"], np.float32).reshape(len(inst["y"]), -1)
        n, d = X.shape
        if d > max_vars:
            raise ValueError(f"instance {i} has {d} variables but the model takes max_vars={max_vars}")
        n = min(n, n_max)
        points[i, :n, :d] = X[:n]
        points[i, :n, max_vars] = np.asarray(inst["y"], np.float32)[:n]
        mask[i, :n] = True
    return points, mask
