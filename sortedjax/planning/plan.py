"""Memory plans for a LLaMA SoFT / SFT train step: compiled for full-size shapes, no weights allocated.

:func:`compile_step` builds the model with ``nnx.eval_shape`` (abstract arrays), gives every
argument the sharding training gives it, and lowers and compiles *the* train step
:func:`sortedjax.train.train` runs (:func:`sortedjax.train.jit_train_step`: the same split,
shardings, donation and jit, with :func:`sortedjax.methods.soft.make_loss`) on the mesh's
devices, simulated CPU devices included.
XLA's ``memory_analysis()`` then gives the per-device bytes (:mod:`sortedjax.planning.memory`).
Decoder layers run under ``lax.scan`` (:class:`sortedjax.nn.LayerStack`), so compile time does
not grow with depth.

:func:`search` finds, for one accelerator, the remat policy and micro-batch (global batch split
into gradient-accumulation steps) that fit: per policy it compiles two micro-batch sizes, fits
bytes = a + b * micro_batch (activations grow linearly), predicts the largest candidate that
fits and checks it with a third compile.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import jax
import jax.numpy as jnp
from flax import nnx

import sortedjax.planning.memory as memory
from sortedjax import sharding as shd
from sortedjax.methods import soft
from sortedjax.models.llama import Llama, LlamaConfig
from sortedjax.train.config import TrainConfig, make_optimizer
from sortedjax.train.step import jit_train_step, split_model

# Hugging Face config.json values of the released models (what a downloaded checkpoint holds).
PRESETS: dict[str, dict] = {
    "llama2-7b": dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-5, max_position_embeddings=4096,
    ),
    "llama2-13b": dict(
        vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
        num_attention_heads=40, num_key_value_heads=40, rms_norm_eps=1e-5, max_position_embeddings=4096,
    ),
    "llama3-8b": dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0,
        max_position_embeddings=8192,
    ),
}  # fmt: skip
REMAT_ORDER = ("none", "dots_no_batch", "dots", "full")  # least to most recomputation
MODES = ("sft", "soft")


def model_config(model: str, **overrides) -> LlamaConfig:
    """A preset name (:data:`PRESETS`) or a Hugging Face ``config.json`` (file or its directory)."""
    if model in PRESETS:
        return LlamaConfig.from_hf({"model_type": "llama", **PRESETS[model]}, **overrides)
    path = os.path.join(model, "config.json") if os.path.isdir(model) else model
    if not os.path.isfile(path):
        raise ValueError(f"model {model!r} is neither a preset {tuple(PRESETS)} nor a config.json file or directory")
    with open(path) as f:
        return LlamaConfig.from_hf(json.load(f), **overrides)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepSpec:
    """One train step to plan: loss ``mode`` over ``exits``, ``batch`` sequences of ``seq`` tokens
    per optimizer step in ``grad_accum`` micro-batches, logits at ``response_len`` positions."""

    mode: str = "soft"
    batch: int = 8
    seq: int = 2048
    grad_accum: int = 1
    response_len: int | None = None
    exits: tuple[int, ...] | None = None
    opt_state_dtype: str | None = "float32"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} unknown; allowed: {MODES}")
        for f in ("batch", "seq", "grad_accum"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.batch % self.grad_accum:
            raise ValueError(f"batch {self.batch} must be divisible by grad_accum {self.grad_accum}")

    @property
    def micro_batch(self) -> int:
        return self.batch // self.grad_accum


def abstract_batch(spec: StepSpec, mesh) -> dict:
    shape = (spec.batch, spec.seq)
    s = shd.batch_sharding(mesh, shape)
    return {
        "inputs": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=s),
        "targets": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=s),
        "mask": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=s),
    }


def _with_shardings(tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def lower_step(cfg: LlamaConfig, mesh, spec: StepSpec):
    """The jitted train step (:func:`sortedjax.train.jit_train_step`) lowered for abstract, sharded
    arguments of full-size shapes."""

    exits = soft.parse_exits(spec.exits, cfg.num_hidden_layers)
    scfg = soft.SoftConfig(
        mode=spec.mode, exits=exits, num_layers=cfg.num_hidden_layers, response_len=spec.response_len
    )
    tcfg = TrainConfig(
        workdir="", steps=1, optimizer="adamw", grad_clip_norm=1.0, grad_accum=spec.grad_accum,
        opt_state_dtype=spec.opt_state_dtype,
    )  # fmt: skip
    tx = make_optimizer(tcfg)
    model = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
    graphdef, params, state, rest = split_model(model, nnx.Param)
    batch = abstract_batch(spec, mesh)
    b_shard = jax.tree.map(lambda a: a.sharding, batch)
    jstep, sh = jit_train_step(
        graphdef, soft.make_loss(scfg), tx, params, state, rest, mesh=mesh, grad_accum=spec.grad_accum,
        donate=True, batch_shardings=b_shard,
    )  # fmt: skip
    args = (
        _with_shardings(params, sh.params),
        _with_shardings(jax.eval_shape(tx.init, params), sh.opt_state),
        _with_shardings(state, sh.state),
        _with_shardings(rest, sh.rest),
        batch,
        jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sh.replicated),
    )
    with jax.set_mesh(mesh):
        return jstep.lower(*args)


def plan(cfg: LlamaConfig, mesh, spec: StepSpec) -> dict:
    """Compile the step; ``{"per_device_bytes", "fits", "remat", "micro_batch", "grad_accum", "compile_s"}``."""
    t0 = time.time()
    compiled = lower_step(cfg, mesh, spec).compile()
    b = memory.device_bytes(compiled)
    return {
        "per_device_bytes": b.as_dict(),
        "fits": b.fits(),
        "remat": cfg.remat,
        "micro_batch": spec.micro_batch,
        "grad_accum": spec.grad_accum,
        "compile_s": round(time.time() - t0, 1),
    }


def data_parallel(mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def micro_batches(batch: int, mesh) -> list[int]:
    """Candidate micro-batches: multiples of the data-parallel size that divide ``batch``, doubling."""
    dp = data_parallel(mesh)
    if batch % dp:
        raise ValueError(f"batch {batch} must be a multiple of the data-parallel size data*fsdp = {dp}")
    out, m = [], dp
    while m <= batch:
        if batch % m == 0:
            out.append(m)
        m *= 2
    return out


def search(
    cfg: LlamaConfig,
    mesh,
    spec: StepSpec,
    accelerator: str,
    *,
    policies: tuple[str, ...] = ("none", "dots", "full"),
    progress=None,
) -> dict:
    """The remat policy and micro-batch (for ``spec.batch`` per optimizer step) that fit ``accelerator``.

    Chooses the largest micro-batch that fits (fewest accumulation steps); among policies reaching
    it, the one with the least recomputation (:data:`REMAT_ORDER`). Returns the chosen plan with
    ``"tried"``: every compiled (policy, micro_batch) and its total bytes per device.
    """
    cap = memory.check_accelerator(accelerator)
    for p in policies:
        if p not in REMAT_ORDER:
            raise ValueError(f"remat policy {p!r} unknown; allowed: {REMAT_ORDER}")
    cands = micro_batches(spec.batch, mesh)
    tried: list[dict] = []
    plans: dict[tuple[str, int], dict] = {}

    def run(policy: str, m: int) -> dict:
        if (policy, m) not in plans:
            s = dataclasses.replace(spec, grad_accum=spec.batch // m)
            r = plan(dataclasses.replace(cfg, remat=policy), mesh, s)
            plans[policy, m] = r
            tried.append({"remat": policy, "micro_batch": m, "total": r["per_device_bytes"]["total"]})
            if progress is not None:
                progress(tried[-1], r)
        return plans[policy, m]

    best: tuple[int, int, str] | None = None  # (micro_batch, -order, policy)
    for policy in sorted(policies, key=REMAT_ORDER.index):
        lo = run(policy, cands[0])["per_device_bytes"]["total"]
        if lo > cap:
            continue
        fit = cands[0]
        if len(cands) > 1:
            hi = run(policy, cands[1])["per_device_bytes"]["total"]
            slope = max(hi - lo, 0) / (cands[1] - cands[0])
            pred = [m for m in cands if lo + slope * (m - cands[0]) <= cap]
            for m in sorted(pred, reverse=True):  # check the prediction; step down if it misses
                if run(policy, m)["per_device_bytes"]["total"] <= cap:
                    fit = m
                    break
        key = (fit, -REMAT_ORDER.index(policy), policy)
        if best is None or key[:2] > best[:2]:
            best = key
        if fit == cands[-1]:
            break  # the whole batch fits in one micro-batch: more remat cannot do better
    if best is None:
        smallest = min(tried, key=lambda t: t["total"])
        raise ValueError(
            f"nothing fits {accelerator} ({memory.gib(cap)} GiB): the smallest plan, remat {smallest['remat']!r} "
            f"with micro-batch {smallest['micro_batch']}, needs {memory.gib(smallest['total'])} GiB per device; "
            "use more devices (a larger fsdp axis), a shorter sequence or bfloat16"
        )
    fit, _, policy = best
    return {**plans[policy, fit], "accelerator": accelerator, "tried": tried}


def total_bytes(result: dict) -> int:
    return int(result["per_device_bytes"]["total"])


def ratio(a: dict, b: dict) -> float:
    return total_bytes(a) / max(total_bytes(b), 1)


def num_params(cfg: LlamaConfig) -> int:
    model = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
