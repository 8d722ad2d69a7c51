"""DyLoRA training and evaluation (thesis ch. 3, Algorithm 1) on any model built from ``sortedjax.nn``.

Algorithm 1, as the thesis states it: at every optimizer step one rank ``b`` is drawn from
``p_B`` over ``[r_min, r_max]`` (uniform, or geometric with parameter ``p``; 0.15 in the
thesis) and shared by every adapted layer; each adapter runs ``W_dw[:b, :]`` and ``W_up[:, :b]``
scaled by ``alpha / b`` (:class:`sortedjax.peft.LoRA`). In frozen mode only row / column ``b``
learns (gradient masked in the adapter, every other rank's entries kept after the optimizer
update by :func:`sortedjax.peft.frozen_post_update`); unfrozen, every rank ``<= b`` learns. The
summation ablation (Table 3.7) sums the losses of every rank instead of sampling one.

Plain LoRA at a fixed rank ``r`` is the same code with ``r_min = r_max = r``
(:meth:`DyLoRAConfig.lora`), so the two differ only in ``p_B``.

* :func:`attach` adds the adapters (PEFT / Hugging Face module names such as ``query`` /
  ``value`` are accepted besides ours);
* :func:`rank_pool`, :func:`make_loss`, :func:`post_update` give ``sortedjax.train.train`` what it
  needs, built on :mod:`sortedjax.methods.objectives` and :class:`sortedjax.submodel.Pool`;
* :func:`fit` runs it and times it; :func:`evaluate_ranks` scores one trained model at every rank.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

import sortedjax.methods.objectives as objectives
from sortedjax import peft as lora
from sortedjax.peft.runs import write_run_info
from sortedjax.submodel import Pool, SubModel
from sortedjax.train import train

DISTRIBUTIONS = ("uniform", "geometric")
OBJECTIVES = ("stochastic", "summation")

# task_loss(model, batch, sub) -> (loss, metrics): the task's loss of sub-model ``sub``
TaskLoss = Callable[[nnx.Module, dict, SubModel], tuple[jax.Array, dict]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DyLoRAConfig:
    """One adapter setting: ``r_min..r_max`` and ``p_B``, ``alpha``, objective, frozen mode, targets."""

    r_max: int = 8
    r_min: int = 1
    alpha: float = 16.0
    distribution: str = "uniform"  # p_B over r_min..r_max
    p: float = 0.15  # the geometric distribution's parameter
    objective: str = "stochastic"  # or "summation": the loss of every rank, summed (Table 3.7)
    frozen: bool = False
    target_modules: tuple[str, ...] = (
        "attn.q",
        "attn.v",
    )  # query and value of BERT, RoBERTa, GPT-2 (HF names work too)
    dropout: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.r_min <= self.r_max:
            raise ValueError(f"DyLoRAConfig needs 1 <= r_min <= r_max, got r_min={self.r_min}, r_max={self.r_max}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"DyLoRAConfig.distribution {self.distribution!r} unknown; allowed: {DISTRIBUTIONS}")
        if not 0.0 < self.p <= 1.0:
            raise ValueError(f"DyLoRAConfig.p must be in (0, 1], got {self.p}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"DyLoRAConfig.objective {self.objective!r} unknown; allowed: {OBJECTIVES}")
        if self.frozen and self.objective == "summation":
            raise ValueError(
                "frozen mode trains the one sampled rank; it needs objective='stochastic', not 'summation'"
            )
        if not self.alpha > 0:
            raise ValueError(f"DyLoRAConfig.alpha must be > 0, got {self.alpha}")
        if isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", (self.target_modules,))
        if not self.target_modules:
            raise ValueError("DyLoRAConfig.target_modules is empty")

    @classmethod
    def lora(cls, r: int, **kw) -> DyLoRAConfig:
        """Plain LoRA at rank ``r``: ``p_B`` puts all its mass on ``r`` (scale ``alpha / r``)."""
        return cls(r_max=r, r_min=r, **kw)

    @property
    def is_dynamic(self) -> bool:
        return self.r_min < self.r_max


def attach(model: nnx.Module, cfg: DyLoRAConfig) -> list[str]:
    """DyLoRA adapters (``r_min..r_max``, ``alpha``, frozen mode) on ``cfg.target_modules`` (our
    names or Hugging Face / PEFT module names, see :func:`sortedjax.peft.select`); returns the
    adapted paths. A name that matches no Linear raises ``ValueError`` listing those that exist."""
    return lora.apply_dylora(
        model,
        list(cfg.target_modules),
        r=cfg.r_max,
        alpha=cfg.alpha,
        r_min=cfg.r_min,
        frozen=cfg.frozen,
        dropout=cfg.dropout,
        seed=cfg.seed,
    )


def rank_pool(model: nnx.Module, cfg: DyLoRAConfig) -> Pool:
    """``p_B``: the rank dimension of the model's adapters with ``cfg``'s distribution."""
    lo, hi = lora.rank_range(model)
    if (lo, hi) != (cfg.r_min, cfg.r_max):
        raise ValueError(f"model adapters cover ranks {lo}..{hi} but the config says {cfg.r_min}..{cfg.r_max}")
    return Pool({"rank": lora.rank_dim(model, cfg.distribution, cfg.p)})


def make_loss(task_loss: TaskLoss, pool: Pool, objective: str = "stochastic"):
    """``loss_fn(model, batch, key)`` for :func:`sortedjax.train.train`.

    ``"stochastic"`` (Algorithm 1): one rank ``b ~ p_B`` drawn from the step key, shared by every
    adapted layer; ``"summation"``: the sum of the losses of every rank in the pool.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} unknown; allowed: {OBJECTIVES}")

    def loss_fn(model, batch, key):
        lora.reseed(model, key)  # adapter dropout masks from the step key (a no-op without dropout)
        return objectives.make(objective, lambda sub: task_loss(model, batch, sub), pool)(key)

    return loss_fn


def post_update(pool: Pool, cfg: DyLoRAConfig):
    """Frozen mode's optimizer post-update (only the sampled rank's row / column moves), else None."""
    if not cfg.frozen:
        return None
    return lora.frozen_post_update(lambda key: pool.sample(key).rank)  # the very rank make_loss drew


def trainable(extra: Any = None):
    """The filter of what trains: the adapters, plus ``extra`` (e.g. a task head), if given."""
    return lora.LoRAParam if extra is None else nnx.Any(lora.LoRAParam, extra)


@dataclasses.dataclass
class FitResult:
    model: nnx.Module
    seconds: float  # wall time of the training run (compilation included)
    history: list[dict]
    paths: list[str]  # the adapted Linears


def fit(
    model: nnx.Module,
    task_loss: TaskLoss,
    data,
    train_cfg,
    cfg: DyLoRAConfig,
    *,
    extra_trainable: Any = None,
    mesh=None,
    run_config: dict | None = None,
    base_model: str | None = None,
) -> FitResult:
    """Attach adapters to ``model`` (in place) per ``cfg`` and train them (plus ``extra_trainable``)
    with Algorithm 1 through :func:`sortedjax.train.train` (orbax resume in ``train_cfg.workdir``).

    ``base_model``: the Hugging Face checkpoint ``model`` was loaded from; recorded with the adapter
    settings in ``workdir/adapter_source.json`` so ``python -m experiments.export_peft`` can write
    the trained adapter at any rank."""

    if cfg.frozen and train_cfg.grad_accum != 1:
        raise ValueError(
            f"frozen mode draws its rank from the step key: it needs grad_accum=1, not {train_cfg.grad_accum}"
        )
    paths = attach(model, cfg)
    write_run_info(train_cfg.workdir, model, base_model=base_model)
    pool = rank_pool(model, cfg)
    t0 = time.time()
    res = train(
        model,
        make_loss(task_loss, pool, cfg.objective),
        data,
        train_cfg,
        mesh=mesh,
        trainable=trainable(extra_trainable),
        post_update=post_update(pool, cfg),
        run_config={"dylora": dataclasses.asdict(cfg), **(run_config or {})},
    )
    return FitResult(model=res.model, seconds=time.time() - t0, history=res.history, paths=paths)


def evaluate_ranks(model: nnx.Module, score: Callable[[nnx.Module, SubModel], Any], ranks: Sequence[int]) -> dict:
    """``{b: score(model, SubModel.of(rank=b))}`` for every ``b`` in ``ranks`` (one trained model,
    truncated to rank ``b``, also below the ``r_min`` it was trained with); a rank outside
    ``1..r_max`` raises ``ValueError``."""
    _, hi = lora.rank_range(model)
    bad = [b for b in ranks if not 1 <= int(b) <= hi]
    if bad:
        raise ValueError(f"ranks {bad} outside the allowed range 1..{hi}")
    return {int(b): score(model, SubModel.of(rank=int(b))) for b in ranks}
