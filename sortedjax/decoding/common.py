"""What every decoding loop shares: prompt padding, host-side checks, the cache bucket, the prefill.

The cache (:class:`sortedjax.nn.KVCache`) has a static shape (N layers x B x S slots x kv heads x
head_dim) with ``S`` rounded up to a multiple of :data:`BUCKET`; a prompt of length ``P`` fills
slots ``0..P-1`` and the loops write generated tokens after it (per row where rows advance at
different speeds), so left and right padding are both a ``valid`` mask over slots plus per-row
RoPE positions (``cumsum(mask) - 1``). Everything the loops vary (exit depth, sampling controls,
``max_new_tokens``, stop tokens, draft exit, number of drafted tokens, thresholds) is traced, so
each loop compiles once per (batch, cache length) and the prefill once per prompt shape.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sortedjax.models.common import check_ids
from sortedjax.nn import KVCache
from sortedjax.submodel import SubModel, check_sizes

BUCKET = 64  # cache lengths are multiples of this: fewer recompilations
PAD = -1  # the default pad id of generated rows: outside every vocabulary, so never read as a token


@functools.partial(jax.jit, static_argnums=0, donate_argnums=4)
def prefill(graphdef, state, tokens_BxP, mask_BxP, cache: KVCache, exit_layer, sub: SubModel | None = None):
    """Logits of each row's last real prompt token at ``exit_layer`` (of the sub-model of layer
    sizes ``sub``, see :func:`layer_sizes`), the filled cache and each row's number of real tokens
    (the RoPE position of its next token)."""
    model = nnx.merge(graphdef, state)
    P = tokens_BxP.shape[1]
    mask = mask_BxP.astype(bool)
    pos = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    cache = dataclasses.replace(cache, valid=cache.valid.at[:, :P].set(mask))
    h, cache = model.forward_cached(tokens_BxP, cache, start=0, positions_BxT=pos, exit_layer=exit_layer, sub=sub)
    last = jnp.max(jnp.where(mask, jnp.arange(P), 0), axis=1)  # last real token per row
    h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    return model.logits_at_exit(h_last, exit_layer, sub=sub), cache, mask.sum(1).astype(jnp.int32)


def pad_prompts(prompt_ids, attention_mask=None, pad_id: int = 0):
    """(tokens B x P, mask B x P) as numpy; ragged lists are left-padded with ``pad_id`` (with 0
    when ``pad_id`` is negative, e.g. :data:`PAD`: masked prompt slots must still embed)."""
    pad_id = max(int(pad_id), 0)
    if isinstance(prompt_ids, (list, tuple)) and prompt_ids and isinstance(prompt_ids[0], (list, tuple, np.ndarray)):
        lens = [len(p) for p in prompt_ids]
        if len(set(lens)) > 1 and attention_mask is None:
            P = max(lens)
            tokens = np.full((len(prompt_ids), P), pad_id, np.int32)
            mask = np.zeros((len(prompt_ids), P), np.int32)
            for i, p in enumerate(prompt_ids):
                tokens[i, P - len(p) :], mask[i, P - len(p) :] = p, 1
            return tokens, mask
    tokens = np.asarray(prompt_ids, np.int32)
    tokens = tokens[None] if tokens.ndim == 1 else tokens
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise ValueError(f"prompt_ids must be B x P with P >= 1, got shape {tokens.shape}")
    mask = np.ones_like(tokens) if attention_mask is None else np.asarray(attention_mask, np.int32)
    mask = mask[None] if mask.ndim == 1 else mask
    if mask.shape != tokens.shape:
        raise ValueError(f"attention_mask shape {mask.shape} does not match prompt_ids {tokens.shape}")
    return tokens, mask


@dataclasses.dataclass
class Started:
    """A prefilled batch: what a decoding loop starts from."""

    graphdef: object
    state: object
    tokens: np.ndarray  # B x P
    logits: jax.Array  # B x V at the prefill's exit
    cache: KVCache
    pos: jax.Array  # B: RoPE position of the next token
    depth: jax.Array  # int32: the exit (sub-model depth) the prefill ran to
    sub: SubModel  # the layer sizes (width / heads / rank) of layer_sizes

    @property
    def P(self):
        return jnp.int32(self.tokens.shape[1])


def layer_sizes(model, sub: SubModel | None, exit_layer=None) -> tuple[jax.Array, SubModel]:
    """(depth, layer sizes) of sub-model ``sub`` (``exit_layer``: a shorthand for ``sub.depth``),
    checked against ``model.limits`` on the host: the depth as an int32 (the full depth when unset)
    and ``sub`` without its depth, every other dimension of ``model.limits`` filled
    (:meth:`SubModel.filled`), so every sub-model decodes with one compiled loop."""
    if sub is not None and not isinstance(sub, SubModel):
        raise TypeError(f"sub must be a sortedjax.SubModel, got {type(sub).__name__}")
    sub = sub or SubModel()
    if exit_layer is not None and sub.depth is not None:
        raise ValueError("give the depth once: sub=SubModel(depth=...) or exit_layer=..., not both")
    depth = jnp.int32(model.check_exit(sub.depth if exit_layer is None else exit_layer))
    rest = dataclasses.replace(sub, depth=None)
    check_sizes(rest, model.limits)
    return depth, rest.filled({k: v for k, v in model.limits.items() if k != "depth"})


def start(
    model, prompt_ids, attention_mask, pad_id, max_new_tokens, exit_layer=None, extra=0, sub: SubModel | None = None
) -> Started:
    """Check the arguments on the host, pick the cache bucket, prefill sub-model ``sub`` (or the
    first ``exit_layer`` layers)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not isinstance(pad_id, (int, np.integer)) or isinstance(pad_id, bool):
        raise TypeError(f"pad_id must be an int (a token id, or the default PAD={PAD}), got {pad_id!r}")
    tokens, mask = pad_prompts(prompt_ids, attention_mask, pad_id)
    check_ids(tokens, model.cfg.vocab_size)  # on the host: inside jit a bad id would embed as NaN
    longest = int(mask.sum(1).max()) + max_new_tokens
    limit = getattr(model.cfg, "max_position_embeddings", None)
    if limit is not None and longest > limit:
        warnings.warn(
            f"generating to position {longest} past max_position_embeddings={limit}: the model was not "
            "trained on these positions",
            stacklevel=3,
        )
    exit_, layers = layer_sizes(model, sub, exit_layer)
    S = -(-(tokens.shape[1] + max_new_tokens + extra) // BUCKET) * BUCKET
    graphdef, state = nnx.split(model)
    cache = model.init_cache(tokens.shape[0], S)
    logits, cache, pos = prefill(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask), cache, exit_, layers)
    return Started(graphdef, state, tokens, logits, cache, pos, exit_, layers)


def stop_mask(model, stop_tokens: Sequence[int]) -> jax.Array:
    """``V`` bools: which token ids stop a row (a static shape whatever the number of stop tokens)."""
    V = model.cfg.vocab_size
    stop = np.zeros(V, bool)
    ids = np.asarray([t for t in stop_tokens if 0 <= t < V], np.int64)
    stop[ids] = True
    return jnp.asarray(stop)


def finish(out, max_new_tokens: int, stop_tokens: Sequence[int], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(the first ``max_new_tokens`` columns with everything after a row's first stop token
    ``pad_id``, each row's length: the tokens it made, its stop token included)."""
    out = np.array(out, np.int32)[:, :max_new_tokens]
    lengths = np.full(out.shape[0], out.shape[1], np.int32)
    if stop_tokens:
        hit = np.isin(out, np.asarray(stop_tokens))
        after = np.cumsum(hit, axis=1) - hit > 0
        out[after] = pad_id
        lengths = (~after).sum(1).astype(np.int32)
    return out, lengths
