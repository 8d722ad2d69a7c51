"""What the exits of a Sorted LLaMA compute (thesis 5.5, Figs. 5.4 / 5.5), and heatmap PNGs.

* :func:`exit_kl` -- per position, KL(p_last || p_exit) of each exit's next-token
  distribution from the last layer's (shared head, or the exit's own head for SFT+ICT);
* :func:`hidden_cosine` -- per position, cosine similarity of each exit's hidden state to
  the last layer's, and the exit x exit similarity matrix (averaged over tokens);
* :func:`heatmap` -- one annotated PNG heatmap (matplotlib, Agg backend).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _weights(attention_mask, shape):
    if attention_mask is None:
        return jnp.ones(shape, jnp.float32)
    return jnp.asarray(attention_mask, jnp.float32)


def exit_kl(
    model, tokens_BxL, exits: Sequence[int], attention_mask=None, heads: Sequence[int | None] | None = None
) -> np.ndarray:
    """``E x L``: mean over the batch of KL(last exit || exit) at each position.

    The reference is ``exits[-1]``. ``heads[j]``: the own-head index of exit ``j`` (SFT+ICT)
    or None for the shared final norm + head (the default for every exit).
    """
    exits = tuple(exits)
    heads = tuple(heads) if heads is not None else (None,) * len(exits)
    if len(heads) != len(exits):
        raise ValueError(f"{len(heads)} heads for {len(exits)} exits")
    h_E = model.hidden_states(jnp.asarray(tokens_BxL), exits, attention_mask=attention_mask)
    last = jax.nn.log_softmax(model.logits_from_hidden(h_E[-1], heads[-1]), axis=-1)
    w_BxL = _weights(attention_mask, tokens_BxL.shape)
    rows = []
    for j in range(len(exits)):
        lp = jax.nn.log_softmax(model.logits_from_hidden(h_E[j], heads[j]), axis=-1)
        kl_BxL = jnp.sum(jnp.exp(last) * (last - lp), axis=-1)
        rows.append(jnp.sum(kl_BxL * w_BxL, 0) / jnp.maximum(jnp.sum(w_BxL, 0), 1.0))
    return np.asarray(jnp.stack(rows))


def hidden_cosine(model, tokens_BxL, exits: Sequence[int], attention_mask=None) -> tuple[np.ndarray, np.ndarray]:
    """``(E x L cosine to the last exit per position, E x E mean cosine between exits)``."""
    h_E = model.hidden_states(jnp.asarray(tokens_BxL), tuple(exits), attention_mask=attention_mask).astype(jnp.float32)
    unit = h_E / jnp.maximum(jnp.linalg.norm(h_E, axis=-1, keepdims=True), 1e-6)
    w_BxL = _weights(attention_mask, tokens_BxL.shape)
    cos_ExBxL = jnp.sum(unit * unit[-1][None], axis=-1)
    per_pos = jnp.sum(cos_ExBxL * w_BxL[None], 1) / jnp.maximum(jnp.sum(w_BxL, 0), 1.0)[None]
    pair = jnp.einsum("ebld,fbld->efbl", unit, unit)
    mat = jnp.sum(pair * w_BxL[None, None], (2, 3)) / jnp.maximum(jnp.sum(w_BxL), 1.0)
    return np.asarray(per_pos), np.asarray(mat)


def heatmap(
    matrix,
    path: str,
    *,
    title: str,
    row_labels: Sequence,
    col_labels: Sequence,
    xlabel: str = "",
    ylabel: str = "",
    cmap: str = "viridis",
    annotate: bool | None = None,
    center: float | None = None,
) -> str:
    """Write ``matrix`` as an annotated heatmap PNG at ``path``; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, np.float64)
    if m.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"matrix shape {m.shape} does not match {len(row_labels)} x {len(col_labels)} labels")
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * m.shape[1] + 2), max(3.0, 0.45 * m.shape[0] + 1.5)))
    kw = {}
    if center is not None:
        span = max(np.nanmax(np.abs(m - center)), 1e-9)
        kw = dict(vmin=center - span, vmax=center + span)
    im = ax.imshow(m, cmap=cmap, aspect="auto", **kw)
    fig.colorbar(im, ax=ax)
    step = max(1, len(col_labels) // 24)
    ax.set_xticks(range(0, len(col_labels), step), [str(c) for c in col_labels][::step])
    ax.set_yticks(range(len(row_labels)), [str(r) for r in row_labels])
    if annotate if annotate is not None else m.size <= 144:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
