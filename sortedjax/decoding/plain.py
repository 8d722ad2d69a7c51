"""Plain decoding (greedy or sampled) at any exit depth, as one compiled ``lax.while_loop``."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import sortedjax.decoding.common as common
from sortedjax.sampling import sample
from sortedjax.submodel import SubModel


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=3)
def decode_loop(
    graphdef, with_logits, state, cache, first_logits, P, pos_B, exit_, key, controls, stop_V, max_new, pad_id, sub=None
):
    """Tokens ``B x S`` (column ``t``: new token ``t``; ``pad_id`` where none was made) and, with
    ``with_logits``, their logits ``B x S x V``. Token ``t`` is drawn with ``fold_in(key, P + t - 1)``
    (the slot of the token it follows); the loop stops when every row hit a stop token or made
    ``max_new`` tokens. ``sub``: the layer sizes (width / heads / rank) of the sub-model decoded
    at depth ``exit_`` (:func:`sortedjax.decoding.common.layer_sizes`)."""
    model = nnx.merge(graphdef, state)
    B, S = cache.valid.shape
    tok = sample(first_logits, jax.random.fold_in(key, P - 1), *controls)
    out = jnp.full((B, S), pad_id, jnp.int32).at[:, 0].set(tok)
    lg = jnp.zeros((B, S) + first_logits.shape[1:], jnp.float32).at[:, 0].set(first_logits) if with_logits else None

    def body(c):
        t, tok, done, out, lg, cache = c
        slot = P + t - 1
        h, cache = model.forward_cached(
            tok[:, None], cache, start=slot, positions_BxT=(pos_B + t - 1)[:, None], exit_layer=exit_, sub=sub
        )
        logits = model.logits_at_exit(h, exit_, sub=sub)[:, 0]
        tok = sample(logits, jax.random.fold_in(key, slot), *controls)
        out = lax_set(out, t, tok)
        lg = lax_set(lg, t, logits) if with_logits else None
        return t + 1, tok, done | stop_V[tok], out, lg, cache

    init = (jnp.int32(1), tok, stop_V[tok], out, lg, cache)
    _, _, _, out, lg, cache = jax.lax.while_loop(lambda c: (c[0] < max_new) & ~c[2].all(), body, init)
    return out, lg, cache  # the cache comes back so that the donated one is reused in place


def lax_set(buf_BxS, t, x_B):
    """``buf[:, t] = x`` for a traced ``t``."""
    return jax.lax.dynamic_update_index_in_dim(buf_BxS, x_B.astype(buf_BxS.dtype), t, 1)


def generate(
    model,
    prompt_ids,
    *,
    max_new_tokens: int,
    exit_layer=None,
    sub: SubModel | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (),
    pad_id: int = common.PAD,
    seed: int = 0,
    attention_mask=None,
    return_logits: bool = False,
    return_lengths: bool = False,
):
    """Generate ``max_new_tokens`` per row with a KV cache from sub-model ``sub`` (``depth``, ``width``,
    ``heads``, ``rank`` as the model defines them; ``None``: the full model). ``exit_layer=e`` is a
    shorthand for ``sub=SubModel.of(depth=e)``. Every sub-model shares one compiled loop.

    ``prompt_ids``: B x P (padded per ``attention_mask``, left or right) or a ragged list
    (left-padded here). Returns numpy B x max_new_tokens token ids; after a row's stop token
    the row holds ``pad_id`` (default :data:`~sortedjax.decoding.common.PAD` = -1, outside every
    vocabulary; pass the tokenizer's pad id to get decodable rows). ``return_logits`` also returns
    the B x T x V step logits; ``return_lengths`` appends each row's length (the tokens it made,
    its stop token included) as the last value. The prefill and one on-device loop run; nothing
    returns to the host per token.
    """
    st = common.start(model, prompt_ids, attention_mask, pad_id, max_new_tokens, exit_layer, sub=sub)
    controls = (jnp.float32(temperature), jnp.int32(top_k or 0), jnp.float32(1.0 if top_p is None else top_p))
    out, lg, _ = decode_loop(
        st.graphdef,
        return_logits,
        st.state,
        st.cache,
        st.logits,
        st.P,
        st.pos,
        st.depth,
        jax.random.key(seed),
        controls,
        common.stop_mask(model, stop_tokens),
        jnp.int32(max_new_tokens),
        jnp.int32(pad_id),
        st.sub,
    )
    tokens, lengths = common.finish(out, max_new_tokens, stop_tokens, pad_id)
    # steps after every row stopped were not run: their logits are zeros (as tokens are pad_id)
    result = (tokens,) + ((np.asarray(lg[:, :max_new_tokens]),) if return_logits else ())
    result += (lengths,) if return_lengths else ()
    return result[0] if len(result) == 1 else result
