"""Instance-aware dynamic inference: each token leaves at the first exit confident enough.

Per token, one compiled loop runs the layers segment by segment, ``0..e_1``, ``e_1..e_2``, ...,
checking each row's softmax top probability at every exit against that exit's threshold, and
stops running layers once every row has left. Layers a row skips still get its keys / values,
projected from its frozen exit state (state copying, as CALM does), so later tokens attend to
every layer: a row that left keeps its state through the rest of a segment other rows still run,
and after the last row leaves, the remaining layers run in ``kv_only`` mode (K/V projections
only). Exits and thresholds are traced (padded to ``N`` entries): one compilation for any set.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import sortedjax.decoding.common as common
from sortedjax.decoding.plain import lax_set
from sortedjax.submodel import SubModel

# thesis 5.5.3: LLaMA-2 13B (40 layers), thresholds for exits 12, 16, ..., 36
THESIS_EXITS = (12, 16, 20, 24, 28, 32, 36)
THESIS_LAYERS = 40
THESIS_THRESHOLDS = (0.95, 0.95, 0.9, 0.9, 0.8, 0.8, 0.7)


def thesis_thresholds(exits: Sequence[int], num_layers: int) -> tuple[float, ...]:
    """The thesis' per-exit thresholds, scaled to another depth by relative exit position."""
    rel = np.asarray(THESIS_EXITS) / THESIS_LAYERS
    return tuple(float(np.interp(e / num_layers, rel, THESIS_THRESHOLDS)) for e in exits)


def _segments(model, exits, threshold, depth=None):
    """(bounds N+1, thresholds N): ``bounds[j]..bounds[j+1]`` is segment ``j``, checked against
    ``thresholds[j]`` at its end; the last segment ends at layer ``depth`` (the decoded
    sub-model's; ``None``: N) with threshold -1 (always)."""
    N = model.num_layers
    D = N if depth is None else int(depth)
    exits = [int(e) for e in exits]
    if not exits:
        raise ValueError("exits must name at least one layer (1-based), got an empty list")
    for e in exits:
        model.check_exit(e)
        if e > D:
            raise ValueError(f"exit {e} is past the decoded sub-model's depth {D}")
    if threshold is None:
        thr = thesis_thresholds(exits, D)
    elif np.ndim(threshold) == 0:
        thr = (float(threshold),) * len(exits)
    else:
        thr = tuple(float(t) for t in threshold)
        if len(thr) != len(exits):
            raise ValueError(f"threshold has {len(thr)} values for {len(exits)} exits: give one per exit")
    by_exit = dict(zip(exits, thr))
    inner = sorted(e for e in by_exit if e < D)
    bounds = [0] + inner + [D] * (N + 1 - len(inner) - 1)
    thresholds = [by_exit[e] for e in inner] + [-1.0] * (N - len(inner))
    return jnp.asarray(bounds, jnp.int32), jnp.asarray(thresholds, jnp.float32), len(inner) + 1


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def early_exit_loop(
    graphdef, state, cache, first_logits, P, pos_B, bounds, thresholds, stop_V, max_new, pad_id, depth=None, sub=None
):
    """Tokens and the layer each left at, both ``B x S`` (greedy). ``depth``: the decoded
    sub-model's last layer (``None``: every layer), ``sub`` its layer sizes (width / heads / rank,
    :func:`sortedjax.decoding.common.layer_sizes`)."""
    model = nnx.merge(graphdef, state)
    N = model.num_layers if depth is None else depth
    B, S = cache.valid.shape

    def keep_left(i, h_in, h_out, left):  # a row that left keeps its state (its K/V: state copying)
        return jnp.where(left[:, None, None], h_in, h_out), left

    def token(tok, slot, pos, cache):
        kw = dict(start=slot, positions_BxT=pos[:, None], hook=keep_left, sub=sub)

        def check(j, h, left, nxt, used):
            probs = jax.nn.softmax(model.logits_at_exit(h[:, 0], bounds[j + 1], sub=sub), axis=-1)
            hit = ~left & (probs.max(-1) >= thresholds[j])
            return left | hit, jnp.where(hit, probs.argmax(-1), nxt), jnp.where(hit, bounds[j + 1], used)

        left = jnp.zeros((B,), bool)
        h, cache, _ = model.forward_cached(tok[:, None], cache, exit_layer=bounds[1], hook_state=left, **kw)
        left, nxt, used = check(0, h, left, jnp.zeros((B,), jnp.int32), jnp.full((B,), N, jnp.int32))

        def segment(c):
            j, h, left, nxt, used, cache = c
            h, cache, _ = model.forward_cached(
                tok[:, None], cache, exit_layer=bounds[j + 1], start_layer=bounds[j], h_BxTxD=h, hook_state=left, **kw
            )
            return (j + 1, h) + check(j, h, left, nxt, used) + (cache,)

        j, h, _, nxt, used, cache = jax.lax.while_loop(
            lambda c: ~c[2].all(), segment, (jnp.int32(1), h, left, nxt, used, cache)
        )
        # every row has left: layers bounds[j]..N only get keys / values from the frozen states
        _, cache = model.forward_cached(
            tok[:, None],
            cache,
            start=slot,
            positions_BxT=pos[:, None],
            start_layer=bounds[j],
            h_BxTxD=h,
            kv_only=True,
            exit_layer=N,
            sub=sub,
        )
        return nxt.astype(jnp.int32), used, cache

    tok = jnp.argmax(first_logits, -1).astype(jnp.int32)
    out = jnp.full((B, S), pad_id, jnp.int32).at[:, 0].set(tok)
    used_out = jnp.zeros((B, S), jnp.int32).at[:, 0].set(N)

    def body(c):
        t, tok, done, out, used_out, cache = c
        tok, used, cache = token(tok, P + t - 1, pos_B + t - 1, cache)
        return t + 1, tok, done | stop_V[tok], lax_set(out, t, tok), lax_set(used_out, t, used), cache

    init = (jnp.int32(1), tok, stop_V[tok], out, used_out, cache)
    _, _, _, out, used_out, cache = jax.lax.while_loop(lambda c: (c[0] < max_new) & ~c[2].all(), body, init)
    return out, used_out, cache


def early_exit_generate(
    model,
    prompt_ids,
    *,
    max_new_tokens: int,
    exits: Sequence[int],
    threshold: float | Sequence[float] | None = None,
    stop_tokens: Sequence[int] = (),
    pad_id: int = common.PAD,
    attention_mask=None,
    sub: SubModel | None = None,
    return_lengths: bool = False,
):
    """Greedy decoding with confidence-based early exit (prompt prefilled at full depth) of
    sub-model ``sub`` (``None``: the full model; its width, heads and rank apply at every exit,
    its depth is the last layer, at least every exit).

    Each new token is taken at the first layer in ``exits`` whose softmax top probability reaches
    that exit's threshold (else at the last layer). ``threshold``: one value for every exit, one
    per exit, or ``None`` for the thesis' schedule (:func:`thesis_thresholds`). Returns (tokens,
    exit layer used per token), both numpy B x max_new_tokens (the layer is 0 after a stop).
    ``pad_id`` and ``return_lengths`` (appends each row's length): as :func:`generate`.
    """
    bounds, thresholds, _ = _segments(model, exits, threshold, common.layer_sizes(model, sub)[0])
    st = common.start(model, prompt_ids, attention_mask, pad_id, max_new_tokens, sub=sub)
    out, used, _ = early_exit_loop(
        st.graphdef,
        st.state,
        st.cache,
        st.logits,
        st.P,
        st.pos,
        bounds,
        thresholds,
        common.stop_mask(model, stop_tokens),
        jnp.int32(max_new_tokens),
        jnp.int32(pad_id),
        st.depth,
        st.sub,
    )
    tokens, lengths = common.finish(out, max_new_tokens, stop_tokens, pad_id)
    used = np.array(used[:, :max_new_tokens])
    used[np.arange(used.shape[1])[None, :] >= lengths[:, None]] = 0  # no layer ran for padding
    return (tokens, used, lengths) if return_lengths else (tokens, used)
