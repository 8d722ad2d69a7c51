"""DyLoRA on any model built from :class:`sortedjax.nn.Linear`: apply by target_modules, merge, PEFT files.

For a base weight ``W`` (``in x out``, the kernel flattened over its input and output axes),
``W_dw`` (``r_max x in``, PEFT ``lora_A``: kaiming-uniform) and ``W_up`` (``out x r_max``,
PEFT ``lora_B``: zeros), a :class:`LoRA` adapter attached at ``linear.lora`` adds, at rank ``b``,

    y = x W + bias + (alpha / b) * (x W_dw[:b]^T) W_up[:, :b]^T

through a static-shape mask ``arange(r_max) < b``; ``b`` may be traced, so one compiled step
trains every rank. Models pass ``rank=sub.rank`` down to their Linears, so
``model(tokens, sub=SubModel.of(rank=b))`` runs rank ``b`` (``None``: ``r_max``).

* :func:`apply_dylora` adds adapters in place, PEFT style (``target_modules`` names, suffixes
  or one regex). Linears inside a :class:`~sortedjax.nn.LayerStack` get stacked adapters (a
  leading ``"layers"`` axis, different random init per layer). Adapter weights are
  :class:`LoRAParam`, so ``train(..., trainable=LoRAParam)`` trains them only.
* Frozen mode (DyLoRA paper, Valipour et al.): only row / column ``b-1`` (the ``b``-th rank)
  gets gradient; :func:`frozen_post_update` also keeps every other rank's entries after the
  optimizer update, so Adam momentum cannot move them either.
* Dropout on the adapter input (PEFT ``lora_dropout``) draws from a per-adapter RNG stream
  ``"lora_dropout"``; ``model.eval()`` / ``model.train()`` switch it off / on. Inside a jitted
  step call :func:`reseed` with the step key first (a pure step does not carry RNG counts over).
* :func:`merge` returns a plain model (no adapters) equal to the adapted one at rank ``b``;
  :func:`save_peft` writes the adapters at rank ``b`` as a Hugging Face PEFT LoRA adapter
  (``adapter_config.json`` + ``adapter_model.safetensors``, HF module names for LLaMA, BERT,
  RoBERTa and GPT-2) and :func:`load_peft` reads one back (:mod:`sortedjax.peft.files`).
* ``target_modules`` may also name Hugging Face modules (``"query"``, ``"q_proj"``, ``"c_attn"``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

import sortedjax.peft.names as hf_names
from sortedjax.nn.linear import Linear
from sortedjax.nn.lora import (  # noqa: F401
    DROPOUT_STREAM,
    LoRA,
    LoRADown,
    LoRAParam,
    LoRAUp,
    adapters,
    check_rank,
    dotted,
    linear_paths,
)
from sortedjax.submodel import Dim


def _matches(target: str, path: str) -> bool:
    return path == target or path.endswith("." + target)


def select(model: nnx.Module, target_modules: str | Sequence[str]) -> list[str]:
    """Dotted paths of the Linears ``target_modules`` picks, PEFT style.

    A list / tuple: names or dotted suffixes (``"q"``, ``"attn.q"``, ``"layers.layers.attn.q"``);
    every entry must match at least one Linear, or (LLaMA, BERT, RoBERTa, GPT-2) a Hugging Face
    module name as PEFT matches it (``"query"``, ``"self_attn.q_proj"``; GPT-2's ``"c_attn"`` picks
    ``q``, ``k`` and ``v``). A single string: a regex that must
    ``re.fullmatch`` the whole path. Raises ``ValueError`` listing the Linears that exist.
    """
    paths = sorted(linear_paths(model))
    if isinstance(target_modules, str):
        chosen = [p for p in paths if re.fullmatch(target_modules, p)]
        if not chosen:
            raise ValueError(
                f"target_modules regex {target_modules!r} matches no Linear module; Linear modules: {paths}"
            )
        return chosen
    targets = list(target_modules)
    if not targets:
        raise ValueError(f"target_modules is empty; Linear modules: {paths}")
    chosen = {p for p in paths if any(_matches(t, p) for t in targets)}
    unknown = [t for t in targets if not any(_matches(t, p) for p in paths)]
    if unknown:  # Hugging Face module names (PEFT's target_modules for this architecture)
        modules = hf_names.hf_modules(model) if hf_names.architecture(model) else {}
        for t in list(unknown):
            hit = {p for n, m in modules.items() if hf_names.peft_matches(t, n) for p, _ in m.parts}
            if hit:
                chosen |= hit
                unknown.remove(t)
        if unknown:
            hf = f"; Hugging Face modules: {hf_names.pattern_names(modules)}" if modules else ""
            raise ValueError(f"target_modules {unknown} match no Linear module; Linear modules: {paths}{hf}")
    return sorted(chosen)


def _adapter_for(linear: Linear, *, r, alpha, r_min, frozen, dropout, rngs) -> LoRA:
    kernel = linear.kernel
    n_in, n_out = len(linear.in_shape), len(linear.out_shape)
    lead = kernel.ndim - n_in - n_out
    names = tuple(kernel.get_metadata().get("out_sharding") or (None,) * kernel.ndim)
    return LoRA(
        math.prod(linear.in_shape),
        math.prod(linear.out_shape),
        r=r,
        alpha=alpha,
        r_min=r_min,
        frozen=frozen,
        dropout=dropout,
        batch_shape=kernel.shape[:lead],
        batch_names=names[:lead],
        in_name=names[lead],
        out_name=names[lead + n_in],
        rngs=rngs,
    )


def apply_dylora(
    model: nnx.Module,
    target_modules: str | Sequence[str] = ("q", "v"),
    *,
    r: int = 8,
    alpha: float = 16.0,
    r_min: int = 1,
    frozen: bool = False,
    dropout: float = 0.0,
    seed: int = 0,
) -> list[str]:
    """Attach a DyLoRA adapter to every Linear ``target_modules`` selects (see :func:`select`).

    Modifies ``model`` in place and returns the adapted paths. The default targets are PEFT's
    LLaMA default (``q_proj``, ``v_proj``). ``r``: ``r_max``; ``r_min``: the smallest rank the
    samplers draw (:func:`rank_dim`); ``frozen``: DyLoRA frozen mode; ``dropout``: on the adapter
    input; ``seed``: the adapters' random init (``W_dw``) and dropout streams.

    A Linear runs its adapter at the ``rank`` its model passes down; one called without a rank
    (e.g. LLaMA's ``lm_head``, every Linear of ``SortedMLP``) runs it at ``r_max``.
    """
    chosen = select(model, target_modules)
    linears = linear_paths(model)
    done = [p for p in chosen if linears[p].lora is not None]
    if done:
        raise ValueError(f"Linear modules {done} already have a LoRA adapter")
    rngs = nnx.Rngs(seed)
    for p in chosen:
        linears[p].lora = nnx.data(
            _adapter_for(linears[p], r=r, alpha=alpha, r_min=r_min, frozen=frozen, dropout=dropout, rngs=rngs)
        )
    return chosen


def _only_adapters(model) -> list[LoRA]:
    found = list(adapters(model).values())
    if not found:
        raise ValueError("model has no LoRA adapters; call sortedjax.peft.apply_dylora first")
    return found


def rank_range(model: nnx.Module) -> tuple[int, int]:
    """``(r_min, r_max)`` shared by every adapter of ``model``."""
    ranges = {(a.r_min, a.r_max) for a in _only_adapters(model)}
    if len(ranges) != 1:
        raise ValueError(f"adapters disagree on (r_min, r_max): {sorted(ranges)}")
    return ranges.pop()


def rank_dim(model: nnx.Module, distribution: str = "uniform", p: float | None = 0.15) -> Dim:
    """The ``rank`` dimension of a :class:`~sortedjax.submodel.Pool`: ``r_min..r_max``.

    ``distribution="uniform"`` is the DyLoRA paper's sampler; ``"geometric"`` (parameter ``p``)
    favours small ranks.
    """
    lo, hi = rank_range(model)
    return Dim.range(lo, hi, distribution=distribution, p=p if distribution == "geometric" else None)


def reseed(model: nnx.Module, key) -> None:
    """Fresh adapter dropout masks from ``key`` (call at the start of a ``loss_fn``: a pure train
    step does not carry the RNG counters from one step to the next). Stacked adapters get
    one split key per layer."""
    nnx.reseed(model, policy="match_shape", **{DROPOUT_STREAM: key})


# -- merging -------------------------------------------------------------------------------------
def merge(model: nnx.Module, rank: int | None = None) -> nnx.Module:
    """A new plain model (no adapters) whose Linears hold ``W + alpha/b (W_up[:, :b] W_dw[:b])^T``.

    Its outputs equal the adapted model's at rank ``b`` (``None``: ``r_max``); ``model`` is unchanged.
    """
    if isinstance(rank, jax.core.Tracer):
        raise ValueError("merge needs a concrete rank (an int), not a traced value")
    out = nnx.clone(model)
    for linear in linear_paths(out).values():
        if linear.lora is None:
            continue
        k = linear.kernel
        delta = linear.lora.delta(rank).reshape(k.shape)
        k[...] = (k[...].astype(jnp.float32) + delta).astype(k.dtype)
        linear.lora = nnx.static(None)
    return out


# -- frozen mode across optimizer momentum -------------------------------------------------------
def keep_only_rank(old_params, new_params, rank):
    """Frozen mode: adapters take the update of rank ``rank`` only (row ``rank-1`` of ``down``,
    column ``rank-1`` of ``up``); every other adapter entry keeps its old value, bit for bit.

    Works on nnx States / pytrees holding :class:`LoRADown` / :class:`LoRAUp` variables, stacked
    or not (``rank`` may be traced). Every other parameter takes its new value.
    """

    def pick(old, new):
        if isinstance(new, LoRADown):
            keep = (jnp.arange(new.shape[-2]) == jnp.asarray(rank) - 1)[:, None]
        elif isinstance(new, LoRAUp):
            keep = (jnp.arange(new.shape[-1]) == jnp.asarray(rank) - 1)[None, :]
        else:
            return new
        return new.replace(jnp.where(keep, new[...], old[...]))

    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    return jax.tree.map(pick, old_params, new_params, is_leaf=is_var)


def frozen_post_update(rank_of_key: Callable[[jax.Array], jax.Array]):
    """``train(..., post_update=frozen_post_update(rank_of_key))`` for DyLoRA frozen mode.

    Contract: ``rank_of_key(key)`` must return the very rank the ``loss_fn`` used with the step
    key ``key``, e.g. both ``pool.sample(key).rank`` for the same ``pool``. The loss must draw
    its rank from the step key itself, so use ``grad_accum=1`` (micro-batches get split keys).
    """

    def post_update(old_params, new_params, key):
        return keep_only_rank(old_params, new_params, rank_of_key(key))

    return post_update
