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

``decode`` runs either a full causal pass or, given a KV cache from :func:`init_cache`,
appends ``T`` tokens at position ``start`` (used by :mod:`symreg.decoding`).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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
            raise ValueError(
                f"ModelConfig.embed ({self.embed}) must be divisible by n_heads ({self.n_heads})"
            )
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


class Dense(nnx.Module):
    def __init__(self, n_in: int, n_out: int, names: tuple, *, rngs: nnx.Rngs, scale: float = 1.0):
        init = jax.nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")
        self.kernel = param(init(rngs.params(), (n_in, n_out)), names)
        self.bias = param(jnp.zeros((n_out,)), names[1:])

    def __call__(self, x):
        return x @ self.kernel[...] + self.bias[...]


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
            [Dense(a, b, ("in", "mlp"), rngs=rngs, scale=2.0) for a, b in ((f, e), (e, 2 * e), (2 * e, 4 * e))]
        )
        self.norms = nnx.List([nnx.LayerNorm(w, rngs=rngs) for w in (e, 2 * e, 4 * e)])
        self.fc1 = Dense(4 * e + 2 * f, 2 * e, ("mlp", "embed"), rngs=rngs, scale=2.0)
        self.fc2 = Dense(2 * e, e, ("mlp", "embed"), rngs=rngs)

    def __call__(self, points_BxNxF: jax.Array, mask_BxN: jax.Array) -> jax.Array:
        x = points_BxNxF.astype(jnp.float32)
        valid = mask_BxN.astype(bool)
        x = jnp.where(valid[..., None], x, 0.0)
        mean_BxF, std_BxF = masked_stats(x, valid)
        h = (x - mean_BxF[:, None]) / std_BxF[:, None] * self.norm_scale[...] + self.norm_bias[...]
        for dense, norm in zip(self.stages, self.norms):
            h = jax.nn.relu(norm(dense(h)))
        pooled_BxH = jnp.max(jnp.where(valid[..., None], h, -jnp.inf), axis=1)
        pooled_BxH = jnp.where(jnp.isfinite(pooled_BxH), pooled_BxH, 0.0)  # all-padding rows
        stats = jnp.concatenate([jnp.sign(mean_BxF) * jnp.log1p(jnp.abs(mean_BxF)), jnp.log(std_BxF)], -1)
        h = jax.nn.relu(self.fc1(jnp.concatenate([pooled_BxH, stats], axis=-1)))
        return self.fc2(h)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        e, h = cfg.embed, cfg.n_heads
        self.n_heads, self.head_dim = h, e // h
        self.ln1 = nnx.LayerNorm(e, rngs=rngs)
        self.ln2 = nnx.LayerNorm(e, rngs=rngs)
        self.qkv = Dense(e, 3 * e, ("embed", "heads"), rngs=rngs)
        self.proj = Dense(e, e, ("heads", "embed"), rngs=rngs, scale=1.0 / (2 * cfg.n_layers))
        self.up = Dense(e, cfg.mlp_ratio * e, ("embed", "mlp"), rngs=rngs)
        self.down = Dense(cfg.mlp_ratio * e, e, ("mlp", "embed"), rngs=rngs, scale=1.0 / (2 * cfg.n_layers))

    def __call__(self, x_BxTxE, start, cache):
        b, t, e = x_BxTxE.shape
        q, k, v = jnp.split(self.qkv(self.ln1(x_BxTxE)), 3, axis=-1)
        q, k, v = (a.reshape(b, t, self.n_heads, self.head_dim) for a in (q, k, v))
        if cache is not None:  # write this chunk at [start, start + t) and attend to the cache
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, start, 0, 0))
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, start, 0, 0))
            cache = (k, v)
        q_pos = start + jnp.arange(t)
        k_pos = jnp.arange(k.shape[1])
        causal_TxS = k_pos[None, :] <= q_pos[:, None]
        scores_BxHxTxS = jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(self.head_dim).astype(q.dtype)
        scores_BxHxTxS = jnp.where(causal_TxS, scores_BxHxTxS.astype(jnp.float32), -1e30)
        att = jax.nn.softmax(scores_BxHxTxS, axis=-1).astype(v.dtype)
        y = jnp.einsum("bhts,bshd->bthd", att, v).reshape(b, t, e)
        x_BxTxE = x_BxTxE + self.proj(y)
        x_BxTxE = x_BxTxE + self.down(jax.nn.gelu(self.up(self.ln2(x_BxTxE))))
        return x_BxTxE, cache


class SymbolicGPT(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        init = jax.nn.initializers.normal(0.02)
        self.tnet = TNet(cfg, rngs=rngs)
        self.tok_embed = param(init(rngs.params(), (cfg.vocab_size, cfg.embed)), ("vocab", "embed"))
        self.pos_embed = param(init(rngs.params(), (cfg.max_len, cfg.embed)), ("length", "embed"))
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.ln_f = nnx.LayerNorm(cfg.embed, rngs=rngs)

    def encode(self, points_BxNxF: jax.Array, mask_BxN: jax.Array) -> jax.Array:
        """Points (variables zero-padded to ``max_vars``, then y) -> ``z_BxE``."""
        return self.tnet(points_BxNxF, mask_BxN)

    def decode(self, tokens_BxT: jax.Array, z_BxE: jax.Array, *, start=0, cache=None):
        """Logits for ``T`` tokens at positions ``start..start+T-1``; returns (logits, cache)."""
        t = tokens_BxT.shape[1]
        pos_TxE = jax.lax.dynamic_slice_in_dim(self.pos_embed[...], start, t, axis=0)
        x = self.tok_embed[...][tokens_BxT] + pos_TxE[None] + z_BxE[:, None, :]
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, c = block(x, start, None if cache is None else cache[i])
            new_cache.append(c)
        logits_BxTxV = self.ln_f(x) @ self.tok_embed[...].T
        return logits_BxTxV, (None if cache is None else tuple(new_cache))

    def __call__(self, points_BxNxF, mask_BxN, tokens_BxT):
        logits, _ = self.decode(tokens_BxT, self.encode(points_BxNxF, mask_BxN))
        return logits


def init_cache(cfg: ModelConfig, batch: int, dtype=jnp.float32):
    """An empty KV cache: per block a (keys, values) pair of ``B x max_len x H x head_dim``."""
    shape = (batch, cfg.max_len, cfg.n_heads, cfg.embed // cfg.n_heads)
    return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.n_layers))


def save_pretrained(model: SymbolicGPT, path: str, extra: dict | None = None) -> None:
    """Write ``path/config.json`` (model config + ``extra``) and ``path/params`` (orbax)."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model": dataclasses.asdict(model.cfg), **(extra or {})}, f, indent=1)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, "params"), jax.device_get(params), force=True)


def load_pretrained(path: str) -> tuple[SymbolicGPT, dict]:
    """The model saved by :func:`save_pretrained` and the saved config dict."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    cfg_file = os.path.join(path, "config.json")
    if not os.path.exists(cfg_file):
        raise FileNotFoundError(f"{path} holds no pretrained SymbolicGPT (missing config.json)")
    with open(cfg_file) as f:
        config = json.load(f)
    model = SymbolicGPT(ModelConfig(**config["model"]), rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    target = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(os.path.join(path, "params"), target)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model, config


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
