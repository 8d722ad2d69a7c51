"""Sorted Fine-Tuning (SoFT, thesis ch. 5) and its baselines as loss functions.

* **SFT** -- the loss of the last layer only.
* **SoFT** -- the mean over exits ``B`` of the exit losses; every exit goes through the
  *shared* final RMSNorm + LM head, so intermediate layers learn to generate.
* **SFT+ICT** (Early-Exit baseline) -- after SFT, one separate norm + head per exit is
  trained with the body frozen (:func:`head_filter` selects what gets gradients).
* **Extracted fine-tuning** -- the first ``n`` layers fine-tuned alone (loss at exit ``n``).

All losses are on response tokens only (``batch["mask"]``). Memory: the hidden states of
every exit are kept (E x B x L x D, small next to the logits), but the logits are made one
exit at a time under ``jax.checkpoint`` inside ``lax.map``, and only at the (at most
``response_len``) response positions, so SoFT's peak memory stays that of SFT's single
exit. See ``benchmarks/soft_cost.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

MODES = ("sft", "soft", "sft_ict", "extracted")
# Sorted LLaMA's exits on a 40-layer LLaMA-2 13B: every 4 layers from 12 to 40.
REFERENCE_EXITS, REFERENCE_DEPTH = tuple(range(12, 41, 4)), 40


def default_exits(num_layers: int) -> tuple[int, ...]:
    """Exits 12, 16, ..., 40 of a 40-layer model, scaled to ``num_layers`` (deduplicated)."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    scaled = {max(1, min(num_layers, round(e * num_layers / REFERENCE_DEPTH))) for e in REFERENCE_EXITS}
    return tuple(sorted(scaled | {num_layers}))


def parse_exits(spec: str | Sequence[int] | None, num_layers: int) -> tuple[int, ...]:
    """``None``/``"default"`` -> :func:`default_exits`; ``"2,4,8"`` or ints -> validated, sorted."""
    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "default")):
        return default_exits(num_layers)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in items:
        try:
            e = int(item)
        except (TypeError, ValueError) as err:
            raise ValueError(f"exit {item!r} is not an integer layer count") from err
        if not 1 <= e <= num_layers:
            raise ValueError(f"exit {e} is outside the model's depth: allowed 1..{num_layers}")
        out.append(e)
    if not out:
        raise ValueError("no exits given")
    return tuple(sorted(set(out)))


def masked_xent(logits_xV: jax.Array, targets_x: jax.Array, mask_x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sum of token cross entropies where ``mask`` is 1, and the number of such tokens."""
    logits = logits_xV.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets_x[..., None].astype(jnp.int32), axis=-1)[..., 0]
    m = mask_x.astype(jnp.float32)
    return jnp.sum((lse - picked) * m), jnp.sum(m)


def response_positions(mask_BxL: jax.Array, response_len: int):
    """Indices ``B x R`` of the (first ``R``) masked positions of each row, in order, and
    whether each index is a real response position."""
    order = jnp.argsort(1 - (mask_BxL > 0).astype(jnp.int32), axis=1, stable=True)[:, :response_len]
    return order, jnp.take_along_axis(mask_BxL, order, axis=1)


def exit_losses(
    model,
    batch: dict,
    exits: Sequence[int],
    *,
    own_heads: bool = False,
    response_len: int | None = None,
    remat: bool = True,
) -> jax.Array:
    """Mean response-token cross entropy at each exit, shape ``(E,)``.

    ``own_heads``: exit ``j`` uses its own head ``model.logits_from_hidden(h, j)`` (SFT+ICT)
    instead of the shared final norm + head. ``response_len``: compute logits only at the
    first ``R`` response positions of each row (must cover every response token).
    """
    h_ExBxLxD = model.hidden_states(batch["inputs"], exits, attention_mask=batch.get("attention_mask"))
    targets, mask = batch["targets"], batch["mask"].astype(jnp.float32)
    if response_len is not None:
        idx_BxR, mask = response_positions(mask, response_len)
        targets = jnp.take_along_axis(targets, idx_BxR, axis=1)
        h_ExBxLxD = jnp.take_along_axis(h_ExBxLxD, idx_BxR[None, :, :, None], axis=2)

    def one(args):
        h_BxRxD, j = args
        logits = model.logits_from_hidden(h_BxRxD, j if own_heads else None)
        total, count = masked_xent(logits, targets, mask)
        return total / jnp.maximum(count, 1.0)

    if remat and len(exits) > 1:  # keep one exit's logits alive at a time in the backward pass too
        one = jax.checkpoint(one)
    return jax.lax.map(one, (h_ExBxLxD, jnp.arange(len(exits), dtype=jnp.int32)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SoftConfig:
    """Which loss: ``mode`` in :data:`MODES`, over ``exits`` (1-based layer counts)."""

    mode: str
    exits: tuple[int, ...]
    num_layers: int
    response_len: int | None = None
    remat: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} unknown; allowed: {MODES}")
        object.__setattr__(self, "exits", parse_exits(self.exits, self.num_layers))
        if self.mode == "extracted" and len(self.exits) != 1:
            raise ValueError(f"extracted fine-tuning trains one depth, got exits {self.exits}")
        if self.mode == "sft_ict" and self.num_layers in self.exits:
            raise ValueError(f"SFT+ICT heads are for intermediate exits; drop {self.num_layers} from {self.exits}")
        if self.response_len is not None and self.response_len < 1:
            raise ValueError(f"response_len must be >= 1 or None, got {self.response_len}")

    @property
    def loss_exits(self) -> tuple[int, ...]:
        return (self.num_layers,) if self.mode == "sft" else self.exits


def make_loss(cfg: SoftConfig):
    """``loss_fn(model, batch, key) -> (loss, metrics)`` for :func:`sortedjax.train.train`."""
    exits = cfg.loss_exits

    def loss_fn(model, batch, key):
        del key
        losses_E = exit_losses(
            model, batch, exits, own_heads=cfg.mode == "sft_ict", response_len=cfg.response_len, remat=cfg.remat
        )
        metrics = {f"loss@{e}": losses_E[j] for j, e in enumerate(exits)}
        return jnp.mean(losses_E), metrics

    return loss_fn


def head_filter():
    """nnx filter of the SFT+ICT exit heads (the only trainable part; the body is frozen)."""
    return nnx.All(nnx.Param, nnx.Any(nnx.PathContains("exit_norm"), nnx.PathContains("exit_head")))
