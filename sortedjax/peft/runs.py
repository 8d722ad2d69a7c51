"""A trained DyLoRA / LoRA run's model back from its workdir, for export (``experiments.export_peft``).

A run that trains an adapted model with :func:`sortedjax.train.train` calls :func:`write_run_info`
once with its workdir; ``WORKDIR/adapter_source.json`` then records the architecture, the model
config and each adapter's settings (the static parts a checkpoint does not hold).
:func:`restore_run` builds that model, attaches the adapters and fills every parameter (adapters,
base weights, a trained head) from the newest orbax checkpoint in ``WORKDIR/checkpoints``.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from flax import nnx

import sortedjax.peft.names as names
from sortedjax import models
from sortedjax.nn.lora import adapters
from sortedjax.peft.lora import apply_dylora

INFO_FILE = "adapter_source.json"


def write_run_info(workdir, model: nnx.Module, base_model: str | None = None) -> str:
    """Write ``workdir/adapter_source.json`` for the adapted ``model`` a run in ``workdir`` trains;
    ``base_model``: the Hugging Face checkpoint (path or hub id) it started from. Returns the path."""
    arch = names.architecture(model)
    if arch is None:
        raise ValueError(
            f"{type(model).__name__} has no Hugging Face PEFT module names; allowed models: {names.ARCHITECTURES}"
        )
    found = adapters(model)
    if not found:
        raise ValueError(f"{type(model).__name__} has no LoRA adapters; call sortedjax.peft.apply_dylora first")
    info = {
        "architecture": arch,
        "config": dataclasses.asdict(model.cfg),
        "base_model_name_or_path": base_model,
        "adapters": {
            p: dict(r=a.r_max, r_min=a.r_min, alpha=a.alpha, frozen=a.frozen, dropout=a.dropout)
            for p, a in sorted(found.items())
        },
    }
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, INFO_FILE)
    with open(path, "w") as fh:
        json.dump(info, fh, indent=2)
    return path


def _runs_below(workdir: str) -> list[str]:
    found = []
    for root, _, files in os.walk(workdir):
        if INFO_FILE in files:
            found.append(os.path.relpath(root, workdir))
    return sorted(found)


def read_run_info(workdir) -> dict:
    path = os.path.join(workdir, INFO_FILE)
    if not os.path.isfile(path):
        below = _runs_below(workdir) if os.path.isdir(workdir) else []
        raise ValueError(
            f"{workdir} holds no {INFO_FILE} (a run that trained an adapted model writes it with "
            f"sortedjax.peft.runs.write_run_info); runs below it: {[os.path.join(workdir, b) for b in below]}"
        )
    with open(path) as fh:
        info = json.load(fh)
    arch = info.get("architecture")
    if arch not in names.ARCHITECTURES:
        raise ValueError(f"{path}: architecture {arch!r} cannot be exported; allowed: {names.ARCHITECTURES}")
    kind = info["config"].get("model_type", arch)
    if arch in ("bert", "roberta") and kind != arch:
        raise ValueError(f"{path}: architecture {arch!r} but its config has model_type {kind!r}")
    return info


def _flat(tree, prefix=()) -> dict[tuple, np.ndarray]:
    """``{path: array}`` of a restored raw state (dicts / lists whose Variables end in ``"value"``)."""
    out = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else None
    if items is None:
        return {prefix[:-1] if prefix[-1:] == ("value",) else prefix: np.asarray(tree)}
    for k, v in items:
        out.update(_flat(v, prefix + (k,)))
    return out


def restore_run(workdir) -> tuple[nnx.Module, dict, int]:
    """``(model, info, step)``: the adapted model of the run in ``workdir`` at its newest checkpoint."""
    import orbax.checkpoint as ocp

    info = read_run_info(workdir)
    cfg_cls, model_cls = models.for_model_type(info["architecture"])
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in info["config"].items()}
    model = model_cls(cfg_cls(**fields), rngs=nnx.Rngs(0))
    for p, a in info["adapters"].items():
        apply_dylora(model, [p], **a)
    ckpt_dir = os.path.abspath(os.path.join(workdir, "checkpoints"))
    mngr = ocp.CheckpointManager(ckpt_dir) if os.path.isdir(ckpt_dir) else None
    step = mngr.latest_step() if mngr is not None else None
    if step is None:
        raise ValueError(f"{workdir} has no checkpoint in {ckpt_dir} (train the run first)")
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
    finally:
        mngr.close()
    saved = _flat(restored["params"])
    for part in restored.get("rest", []):
        saved.update(_flat(part))
    state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state)
    for path, _ in nnx.to_flat_state(state):
        if path not in saved:
            raise ValueError(
                f"checkpoint step {step} in {ckpt_dir} has no parameter {'/'.join(map(str, path))}: it is not a "
                f"checkpoint of the {info['architecture']} model {INFO_FILE} describes"
            )
        node = pure
        for k in path[:-1]:
            node = node[k]
        if tuple(saved[path].shape) != tuple(node[path[-1]].shape):
            raise ValueError(
                f"checkpoint parameter {'/'.join(map(str, path))} has shape {saved[path].shape}, the "
                f"{info['architecture']} model {INFO_FILE} describes needs {tuple(node[path[-1]].shape)}: it is "
                "not a checkpoint of that model"
            )
        node[path[-1]] = saved[path]
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return model, info, int(step)
