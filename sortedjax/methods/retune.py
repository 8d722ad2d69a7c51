"""Per-sub-model classifier re-tuning (thesis C.4.4).

SortedNet trains every sub-model through one shared classifier. After training, each chosen
sub-model may get a private copy of the classifier, fine-tuned on that sub-model's features with
the body frozen: ``retune_classifiers(model, subs, loss_fn, data, cfg)`` returns one model per
sub-model, whose parameters outside ``head`` equal ``model``'s. Training is
:func:`sortedjax.train.train` with ``trainable`` restricted to the head (so it resumes like any
run; each sub-model gets its own ``workdir/<name>``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

from sortedjax.submodel import SubModel
from sortedjax.train import TrainConfig, train

SubLossFn = Callable[[nnx.Module, dict, SubModel], tuple[jax.Array, dict]]


def sub_name(sizes: dict[str, int]) -> str:
    """``depth3_width16``: a file-system-safe name for a concrete sub-model."""
    return "_".join(f"{k}{v}" for k, v in sizes.items()) or "full"


def head_filter(*names: str) -> Any:
    """The ``nnx.Param`` leaves whose path contains any of ``names`` (e.g. ``"classifier"``)."""
    if not names:
        raise ValueError("head_filter needs at least one parameter path name, e.g. 'classifier'")
    return nnx.All(nnx.Param, nnx.Any(*(nnx.PathContains(n) for n in names)))


def retune_classifiers(
    model: nnx.Module,
    subs: Sequence[dict[str, int]],
    loss_fn: SubLossFn,
    data: Callable[[int], dict],
    cfg: TrainConfig,
    *,
    head: Any = None,
) -> dict[str, nnx.Module]:
    """One model per sub-model in ``subs``, its ``head`` parameters re-tuned on that sub-model.

    Args:
      model: the trained sorted model (unchanged).
      subs: concrete sub-models as ``{dim: size}`` dicts.
      loss_fn: ``(model, batch, sub) -> (loss, metrics)`` for a fixed sub-model.
      data: ``step -> batch`` as for :func:`sortedjax.train.train`.
      cfg: the re-tuning run; sub-model ``s`` writes to ``cfg.workdir/<sub_name(s)>``.
      head: nnx filter of the re-tuned parameters (default :func:`head_filter` ``("classifier")``).
    Returns ``{sub_name(s): model}``.
    """
    if not subs:
        raise ValueError("subs is empty: give at least one sub-model {dim: size} to re-tune")
    head = head_filter("classifier") if head is None else head
    if not jax.tree.leaves(nnx.state(model, head)):
        raise ValueError(f"the head filter {head!r} selects no parameters of {type(model).__name__}")
    out = {}
    for sizes in subs:
        sub = SubModel.of(**sizes)
        name = sub_name(dict(sizes))
        run = dataclasses.replace(cfg, workdir=os.path.join(cfg.workdir, name), desc=f"retune {name}")
        res = train(model, lambda m, b, k, sub=sub: loss_fn(m, b, sub), data, run, trainable=head)
        out[name] = res.model
    return out
