"""KV-cache decoding at any exit depth: sampling, batched padded prompts, self-speculation.

Works with any model that implements :class:`sortedjax.protocol.CausalLM` (``init_cache``,
``forward_cached``, ``logits_at_exit``, ``check_exit``); nothing here knows LLaMA.
The cache (:class:`sortedjax.nn.KVCache`) has a static shape (N layers x B x S slots x kv
heads x head_dim); a prompt of
length P fills slots ``0..P-1`` and generated token ``t`` goes to slot ``P + t`` for every
row, so left and right padding are both just a ``valid`` mask over slots plus per-row
RoPE positions (``cumsum(mask) - 1``). Prefill and the one-token decode step are each
compiled once per shape: the exit depth, temperature, top-k and top-p are traced values.

Self-speculative decoding drafts tokens with an early exit of the same model (the cache of
the layers it shares with the full model stays valid) and verifies them with one
full-depth chunk; its greedy output equals plain greedy decoding.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sortedjax.nn import KVCache
from sortedjax.sampling import sample


@functools.partial(jax.jit, static_argnums=0, donate_argnums=4)
def _prefill(graphdef, state, tokens_BxP, mask_BxP, cache: KVCache, exit_layer):
    model = nnx.merge(graphdef, state)
    P = tokens_BxP.shape[1]
    mask = mask_BxP.astype(bool)
    pos = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    cache = dataclasses.replace(cache, valid=cache.valid.at[:, :P].set(mask))
    h, cache = model.forward_cached(tokens_BxP, cache, start=0, positions_BxT=pos, exit_layer=exit_layer)
    last = jnp.max(jnp.where(mask, jnp.arange(P), 0), axis=1)  # last real token per row
    h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    return model.logits_at_exit(h_last, exit_layer), cache, mask.sum(1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _chunk(graphdef, state, cache: KVCache, tokens_BxT, slot, pos_B, exit_layer):
    """Logits B x T x V for T new tokens at slots ``slot..`` and positions ``pos_B + t``."""
    model = nnx.merge(graphdef, state)
    pos = pos_B[:, None] + jnp.arange(tokens_BxT.shape[1])
    h, cache = model.forward_cached(tokens_BxT, cache, start=slot, positions_BxT=pos, exit_layer=exit_layer)
    return model.logits_at_exit(h, exit_layer), cache


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _step(graphdef, state, cache, tokens_B, slot, pos_B, exit_layer, key, temperature, top_k, top_p):
    """One decode step: the next token's logits at ``exit_layer`` and a sample from them."""
    logits, cache = _chunk(graphdef, state, cache, tokens_B[:, None], slot, pos_B, exit_layer)
    logits = logits[:, 0]
    return sample(logits, jax.random.fold_in(key, slot), temperature, top_k, top_p), logits, cache


def pad_prompts(prompt_ids, attention_mask=None, pad_id: int = 0):
    """(tokens B x P, mask B x P) as numpy; ragged lists are left-padded with ``pad_id``."""
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


def _setup(model, prompt_ids, attention_mask, pad_id, max_new_tokens, exit_layer, extra=0):
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    tokens, mask = pad_prompts(prompt_ids, attention_mask, pad_id)
    exit_ = jnp.int32(model.check_exit(exit_layer))
    S = -(-(tokens.shape[1] + max_new_tokens + extra) // 64) * 64  # bucket: fewer recompiles
    graphdef, state = nnx.split(model)
    cache = model.init_cache(tokens.shape[0], S)
    logits, cache, pos = _prefill(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask), cache, exit_)
    return graphdef, state, tokens.shape[1], exit_, logits, cache, pos


def _finish(out, stop_tokens, pad_id):
    """Replace everything after a row's first stop token with ``pad_id``."""
    out = np.array(out, np.int32)
    if stop_tokens:
        hit = np.isin(out, np.asarray(stop_tokens))
        after = np.cumsum(hit, axis=1) - hit > 0
        out[after] = pad_id
    return out


def generate(
    model,
    prompt_ids,
    *,
    max_new_tokens: int,
    exit_layer=None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (),
    pad_id: int = 0,
    seed: int = 0,
    attention_mask=None,
    return_logits: bool = False,
):
    """Generate ``max_new_tokens`` per row with a KV cache, logits taken after ``exit_layer``.

    ``prompt_ids``: B x P (padded per ``attention_mask``, left or right) or a ragged list
    (left-padded here). Returns numpy B x max_new_tokens token ids; after a row's stop token
    the row holds ``pad_id``. ``return_logits`` also returns the B x T x V step logits.
    """
    graphdef, state, P, exit_, logits, cache, pos = _setup(
        model, prompt_ids, attention_mask, pad_id, max_new_tokens, exit_layer
    )
    key = jax.random.key(seed)
    controls = (jnp.float32(temperature), jnp.int32(top_k or 0), jnp.float32(1.0 if top_p is None else top_p))
    tok = sample(logits, jax.random.fold_in(key, P - 1), *controls)
    out, all_logits = [np.asarray(tok)], [logits]
    done = np.isin(out[0], np.asarray(stop_tokens, np.int32))
    for t in range(1, max_new_tokens):
        if done.all():
            break
        tok, logits, cache = _step(
            graphdef, state, cache, tok, jnp.int32(P + t - 1), pos + t - 1, exit_, key, *controls
        )
        out.append(np.asarray(tok))
        all_logits.append(logits)
        done |= np.isin(out[-1], np.asarray(stop_tokens, np.int32))
    out += [np.full_like(out[0], pad_id)] * (max_new_tokens - len(out))
    tokens = _finish(np.stack(out, axis=1), stop_tokens, pad_id)
    return (tokens, np.stack([np.asarray(x) for x in all_logits], 1)) if return_logits else tokens


def speculative_generate(
    model,
    prompt_ids,
    *,
    max_new_tokens: int,
    draft_exit: int,
    num_draft: int = 4,
    stop_tokens: Sequence[int] = (),
    pad_id: int = 0,
    attention_mask=None,
):
    """Greedy self-speculative decoding: draft ``num_draft`` tokens with the first
    ``draft_exit`` layers, verify them in one full-depth chunk, keep the agreeing prefix plus
    the full model's next token. Output equals :func:`generate` greedy. Returns (tokens,
    stats) with stats the mean number of tokens accepted per verification."""
    model.check_exit(draft_exit)
    graphdef, state, P, full, logits, cache, pos = _setup(
        model, prompt_ids, attention_mask, pad_id, max_new_tokens, None, extra=num_draft + 1
    )
    draft, key, greedy = jnp.int32(draft_exit), jax.random.key(0), (jnp.float32(0), jnp.int32(0), jnp.float32(1))
    x0 = jnp.argmax(logits, -1).astype(jnp.int32)
    out, n_out, slot, verifies = [np.asarray(x0)[:, None]], 1, P, 0
    stop = np.asarray(stop_tokens, np.int32)
    while n_out < max_new_tokens and not np.isin(np.concatenate(out, 1), stop).any(1).all():
        drafts, tok = [x0], x0
        for j in range(num_draft):
            tok, _, cache = _step(graphdef, state, cache, tok, jnp.int32(slot + j), pos + j, draft, key, *greedy)
            drafts.append(tok)
        logits, cache = _chunk(graphdef, state, cache, jnp.stack(drafts, 1), jnp.int32(slot), pos, full)
        g = np.asarray(jnp.argmax(logits, -1))  # B x (num_draft + 1): the full model's choices
        d = np.stack([np.asarray(x) for x in drafts[1:]], 1)
        agree = np.cumprod(d == g[:, :-1], axis=1).sum(1)
        n = int(agree.min())  # every row advances by the same n + 1 (static slots)
        out.append(g[:, : n + 1])
        n_out, slot, pos, verifies = n_out + n + 1, slot + n + 1, pos + n + 1, verifies + 1
        x0 = jnp.asarray(g[:, n], jnp.int32)
    out = np.concatenate(out, 1)[:, :max_new_tokens]
    out = np.pad(out, ((0, 0), (0, max_new_tokens - out.shape[1])), constant_values=pad_id)
    return _finish(out, stop_tokens, pad_id), {
        "tokens_per_verify": (n_out - 1) / max(verifies, 1),
        "verifies": verifies,
    }


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _early_exit_step(graphdef, state, cache: KVCache, tokens_B, slot, pos_B, is_exit_N, threshold):
    """Greedy step that stops at the first exit (``is_exit_N[n-1]``) whose top probability reaches
    ``threshold`` (per row; the last layer always answers). Layers after a row's exit get
    K/V projected from its frozen hidden state (CALM-style state copying), so later tokens
    can still attend to it at every depth. Runs through the model's own layer runner with a
    per-layer hook."""
    model = nnx.merge(graphdef, state)
    N = model.num_layers
    B = tokens_B.shape[0]

    def hook(i, h_in, h_out, hs):
        done, tok, used = hs
        h = jnp.where(done[:, None, None], h_in, h_out)  # a row that exited keeps its state

        def check(c):
            done, tok, used = c
            probs = jax.nn.softmax(model.logits_at_exit(h[:, 0], i + 1), axis=-1)
            hit = ~done & ((probs.max(-1) >= threshold) | (i + 1 == N))
            return done | hit, jnp.where(hit, probs.argmax(-1), tok), jnp.where(hit, i + 1, used)

        at_exit = is_exit_N[i] | (i + 1 == N)
        return h, jax.lax.cond(at_exit & ~done.all(), check, lambda c: c, (done, tok, used))

    init = (jnp.zeros((B,), bool), jnp.zeros((B,), jnp.int32), jnp.full((B,), N, jnp.int32))
    _, cache, (_, tok, used) = model.forward_cached(
        tokens_B[:, None], cache, start=slot, positions_BxT=pos_B[:, None], hook=hook, hook_state=init
    )
    return tok.astype(jnp.int32), used, cache


def early_exit_generate(
    model,
    prompt_ids,
    *,
    max_new_tokens: int,
    exits: Sequence[int],
    threshold: float,
    stop_tokens: Sequence[int] = (),
    pad_id: int = 0,
    attention_mask=None,
):
    """Greedy decoding with confidence-based early exit (prompt prefilled at full depth).

    Each new token is taken at the first layer in ``exits`` whose softmax top probability is
    ``>= threshold`` (else at the last layer). Returns (tokens, exit layer used per token),
    both numpy B x max_new_tokens. ``exits`` and ``threshold`` are traced: one compile.
    """
    for e in exits:
        model.check_exit(e)
    graphdef, state, P, _, logits, cache, pos = _setup(model, prompt_ids, attention_mask, pad_id, max_new_tokens, None)
    tok = jnp.argmax(logits, -1).astype(jnp.int32)
    N = model.num_layers
    out, used = [np.asarray(tok)], [np.full(tok.shape, N, np.int32)]
    is_exit_N = jnp.zeros((N,), bool).at[np.asarray(exits, np.int32) - 1].set(True)
    thr = jnp.float32(threshold)
    stop = np.asarray(stop_tokens, np.int32)
    for t in range(1, max_new_tokens):
        if np.isin(np.stack(out, 1), stop).any(1).all():
            break
        tok, u, cache = _early_exit_step(graphdef, state, cache, tok, jnp.int32(P + t - 1), pos + t - 1, is_exit_N, thr)
        out.append(np.asarray(tok))
        used.append(np.asarray(u))
    pad = max_new_tokens - len(out)
    out += [np.full_like(out[0], pad_id)] * pad
    used += [np.zeros_like(used[0])] * pad
    return _finish(np.stack(out, 1), stop_tokens, pad_id), np.stack(used, 1)
