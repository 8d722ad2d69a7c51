"""Self-speculative decoding (LayerSkip style), one compiled ``lax.while_loop``.

A round: the draft, the model's first ``E`` layers, proposes ``K`` tokens one at a time and keeps
its layer-``E`` hidden states; verification runs only layers ``E+1..N`` on those states for the
``K + 1`` tokens (the last accepted token and the drafts) in one chunk, reusing the KV the draft
wrote for layers ``1..E`` (those layers are the same in both). Each row accepts its own prefix by
the standard rejection rule (Leviathan et al. 2023; exact argmax agreement when greedy) and
advances by its own count: the cache slots and RoPE positions are per row. ``K`` is fixed, or
adaptive (Hugging Face's heuristic: +2 when every row accepted every draft, else -1). The chunk
is ``max_draft + 1`` wide whatever ``K`` is, so one compiled program serves every draft exit, K
and schedule.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

import sortedjax.decoding.common as common
from sortedjax.sampling import distribution, sample
from sortedjax.submodel import SubModel


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=3)
def speculate_loop(
    graphdef,
    W,
    state,
    cache,
    first_logits,
    P,
    pos_B,
    draft,
    k0,
    adaptive,
    key,
    controls,
    stop_V,
    max_new,
    pad_id,
    target=None,
    sub=None,
):
    """Tokens ``B x S`` and per-row counts (drafted, accepted, verifications). ``W``: the widest
    draft (static); ``draft``, ``k0`` (first K), ``adaptive`` are traced. ``target``: the depth
    verified (``None``: every layer) and ``sub`` the layer sizes (width / heads / rank) of the
    sub-model decoded (:func:`sortedjax.decoding.common.layer_sizes`), the draft's too."""
    model = nnx.merge(graphdef, state)
    N = model.num_layers if target is None else target
    B, S = cache.valid.shape
    dist = functools.partial(distribution, temperature=controls[0], top_k=controls[1], top_p=controls[2])
    # one row: a scalar slot (the cache is written with dynamic_update_slice, not a per-row scatter)
    at = (lambda slot_B: slot_B[0]) if B == 1 else (lambda slot_B: slot_B)

    def draft_token(tok_B, j, slot_B, pos_B, cache):
        h, cache = model.forward_cached(
            tok_B[:, None], cache, start=at(slot_B + j), positions_BxT=(pos_B + j)[:, None], exit_layer=draft, sub=sub
        )
        return h[:, 0], dist(model.logits_at_exit(h, draft, sub=sub)[:, 0]), cache

    h_shape = jax.eval_shape(lambda c: draft_token(jnp.zeros((B,), jnp.int32), 0, pos_B, pos_B, c)[0], cache)
    x0 = sample(first_logits, jax.random.fold_in(key, P - 1), *controls)
    V = first_logits.shape[-1]

    def round_(c):
        r, K, x0, slot, pos, n_out, done, out, cache, counts = c
        kr = jax.random.fold_in(key, S + r)  # slots use 0..S-1 in plain decoding's stream
        active = ~done

        def step(j, d):  # draft token j+1 from token j (the K+1-th run only fills h and layers 1..E)
            h_buf, q_buf, toks, cache = d
            h, q, cache = draft_token(toks[:, j], j, slot, pos, cache)
            nxt = jax.random.categorical(jax.random.fold_in(kr, j), jnp.log(q)).astype(jnp.int32)
            return (
                h_buf.at[:, j].set(h),
                q_buf.at[:, j].set(q),
                jax.lax.dynamic_update_index_in_dim(toks, nxt, j + 1, 1),
                cache,
            )

        d0 = (
            jnp.zeros((B, W + 1) + h_shape.shape[1:], h_shape.dtype),
            jnp.zeros((B, W + 1, V), jnp.float32),
            jnp.zeros((B, W + 2), jnp.int32).at[:, 0].set(x0),
            cache,
        )
        h_buf, q_buf, toks, cache = jax.lax.fori_loop(0, K + 1, step, d0)
        chunk = toks[:, : W + 1]
        h, cache = model.forward_cached(
            chunk,
            cache,
            start=at(slot),
            positions_BxT=pos[:, None] + jnp.arange(W + 1)[None, :],
            exit_layer=N,
            sub=sub,
            start_layer=draft,
            h_BxTxD=h_buf,
        )
        p = dist(model.logits_at_exit(h, N, sub=sub))  # B x (W+1) x V: the target after each chunk token
        n, nxt = accept(p, q_buf, toks, K, kr)
        out, emit, write = emit_tokens(out, toks, n, nxt, n_out, active)
        stopped = (stop_V[emit] & write).any(1)
        adv = jnp.where(active, n + 1, 0)
        n_out = n_out + adv
        done = done | stopped | (n_out >= max_new)
        counts = (
            counts[0] + jnp.where(active, K, 0),
            counts[1] + jnp.where(active, n, 0),
            counts[2] + active.astype(jnp.int32),
        )
        all_in = jnp.all(jnp.where(active, n == K, True))
        K = jnp.where(adaptive, jnp.where(all_in, jnp.minimum(K + 2, W), jnp.maximum(K - 1, 1)), K)
        x0 = jnp.where(active, nxt, x0)
        return r + 1, K, x0, slot + adv, pos + adv, n_out, done, out, cache, counts

    out = jnp.full((B, S), pad_id, jnp.int32).at[:, 0].set(x0)
    ones = jnp.ones((B,), jnp.int32)
    zeros = jnp.zeros((B,), jnp.int32)
    init = (jnp.int32(0), k0, x0, P * ones, pos_B, ones, stop_V[x0] | (max_new <= 1), out, cache, (zeros,) * 3)
    c = jax.lax.while_loop(lambda c: ~c[6].all(), round_, init)
    return c[7], c[9], c[0], c[8]


def accept(p, q_buf, toks, K, key):
    """Per row: how many of the ``K`` drafts ``toks[:, 1:]`` (probabilities ``q_buf`` under the
    draft) are accepted against the target's ``p`` (``B x (W+1) x V``) by the rejection rule
    (accept draft ``t+1`` with probability ``min(1, p_t / q_t)``; exact argmax agreement when
    greedy), and the token after them: drawn from ``max(0, p - q)`` at a rejection, from ``p`` when
    all ``K`` were accepted."""
    B, W = p.shape[0], p.shape[1] - 1
    rows = jnp.arange(B)
    d = toks[:, 1 : W + 1]
    p_d = jnp.take_along_axis(p[:, :W], d[..., None], -1)[..., 0]
    q_d = jnp.take_along_axis(q_buf[:, :W], d[..., None], -1)[..., 0]
    u = jax.random.uniform(jax.random.fold_in(key, W + 1), (B, W))
    ok = (u * q_d < p_d) & (jnp.arange(W)[None, :] < K)
    n = jnp.cumprod(ok, axis=1).sum(1).astype(jnp.int32)
    p_n, q_n = p[rows, n], q_buf[rows, n]
    resid = jnp.where((n < K)[:, None], jnp.maximum(p_n - q_n, 0.0), p_n)
    resid = jnp.where(resid.sum(-1, keepdims=True) > 0, resid, p_n)
    nxt = jax.random.categorical(jax.random.fold_in(key, W + 2), jnp.log(resid)).astype(jnp.int32)
    return n, nxt


def emit_tokens(out, toks, n, nxt, n_out, active):
    """Write each active row's ``n`` accepted drafts and the token after them at its own output
    position ``n_out``; returns (out, the ``B x (W+1)`` tokens emitted, which of them were written)."""
    B, S = out.shape
    W = toks.shape[1] - 2
    t = jnp.arange(W + 1)[None, :]
    emit = jnp.where(t < n[:, None], toks[:, 1 : W + 2], nxt[:, None])
    write = (t <= n[:, None]) & active[:, None]
    rows = jnp.arange(B)[:, None]
    out = out.at[rows, jnp.where(write, n_out[:, None] + t, S)].set(emit, mode="drop")
    return out, emit, write


def speculative_generate(
    model,
    prompt_ids,
    *,
    max_new_tokens: int,
    draft_exit: int,
    num_draft: int = 4,
    adaptive: bool = False,
    max_draft: int = 8,
    sub: SubModel | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    stop_tokens: Sequence[int] = (),
    pad_id: int = common.PAD,
    attention_mask=None,
    return_lengths: bool = False,
):
    """Self-speculative decoding of sub-model ``sub`` (``None``: the full model) with its first
    ``draft_exit`` layers as the draft (the draft is a depth: ``sub``'s width, heads and rank apply
    to it too; ``draft_exit`` at most ``sub.depth``).

    ``num_draft``: tokens drafted per verification (the first value when ``adaptive``; at most
    ``max_draft``, the static chunk width). Greedy (``temperature=0``) output equals
    :func:`generate` greedy (of the same ``sub``); sampled output follows the decoded model's distribution (with the same
    temperature / top-k / top-p). Returns ``(tokens B x max_new_tokens, stats)``: ``verifies`` (rounds
    of draft + verification), ``tokens_per_verify`` (tokens a row made per verification), ``acceptance_rate``
    (accepted / drafted) and ``rejection_ratio`` (rejected / drafted, the thesis' measure).
    ``pad_id`` and ``return_lengths`` (appends each row's length): as :func:`generate`.
    """
    model.check_exit(draft_exit)
    if not 1 <= max_draft:
        raise ValueError(f"max_draft must be >= 1, got {max_draft}")
    if not 1 <= num_draft <= max_draft:
        raise ValueError(f"num_draft must be in 1..max_draft={max_draft}, got {num_draft}")
    depth = int(common.layer_sizes(model, sub)[0])
    if draft_exit > depth:
        raise ValueError(f"draft_exit {draft_exit} is past the decoded sub-model's depth {depth}")
    st = common.start(model, prompt_ids, attention_mask, pad_id, max_new_tokens, None, extra=max_draft + 1, sub=sub)
    controls = (jnp.float32(temperature), jnp.int32(top_k or 0), jnp.float32(1.0 if top_p is None else top_p))
    out, counts, rounds, _ = speculate_loop(
        st.graphdef,
        max_draft,
        st.state,
        st.cache,
        st.logits,
        st.P,
        st.pos,
        jnp.int32(draft_exit),
        jnp.int32(num_draft),
        jnp.bool_(adaptive),
        jax.random.key(seed),
        controls,
        common.stop_mask(model, stop_tokens),
        jnp.int32(max_new_tokens),
        jnp.int32(pad_id),
        st.depth,
        st.sub,
    )
    drafted, accepted, row_verifies = (int(x.sum()) for x in counts)
    stats = {
        "tokens_per_verify": (accepted + row_verifies) / max(row_verifies, 1),
        "verifies": int(rounds),
        "acceptance_rate": accepted / max(drafted, 1),
        "rejection_ratio": (drafted - accepted) / max(drafted, 1),
        "drafted": drafted,
    }
    tokens, lengths = common.finish(out, max_new_tokens, stop_tokens, pad_id)
    return (tokens, stats, lengths) if return_lengths else (tokens, stats)
