"""PEFT adapter files for DyLoRA adapters (:mod:`sortedjax.lora`): ``adapter_config.json`` +
``adapter_model.safetensors`` that ``peft.PeftModel.from_pretrained`` loads onto the Hugging Face
model, with Hugging Face LLaMA module names for :class:`~sortedjax.models.llama.Llama` and our
dotted module paths (layer index inserted) for other models.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sortedjax.lora import LoRA, _dotted, apply_dylora, linear_paths
from sortedjax.nn import LayerStack, Linear

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


# -- PEFT adapter files --------------------------------------------------------------------------
def _stack_prefixes(model) -> list[tuple]:
    """Paths of the stacked layer modules (``LayerStack.layers``), outermost first."""
    return sorted(
        (p + ("layers",) for p, m in nnx.iter_modules(model) if isinstance(m, LayerStack) and m.stacked), key=len
    )


def _module_names(model, path: tuple, batch_shape: tuple[int, ...]) -> dict[tuple[int, ...], str]:
    """PEFT module name (without ``.lora_A.weight``) of each slice of the adapter at ``path``."""
    from sortedjax.models import llama

    cuts = [len(s) for s in _stack_prefixes(model) if path[: len(s)] == s]
    if len(cuts) != len(batch_shape):
        raise ValueError(
            f"adapter at {_dotted(path)} has stacked axes {batch_shape} but sits in {len(cuts)} stacked LayerStacks"
        )
    out = {}
    for idx in np.ndindex(*batch_shape):
        if isinstance(model, llama.Llama):
            out[idx] = _llama_name(path, idx, llama._HF_LAYER)
        else:
            parts = list(map(str, path))
            for c, i in sorted(zip(cuts, idx), reverse=True):
                parts.insert(c, str(i))
            out[idx] = "base_model.model." + ".".join(parts)
    return out


def _llama_name(path: tuple, idx: tuple[int, ...], hf_layer: dict) -> str:
    if path == ("lm_head",):
        return "base_model.model.lm_head"
    if path[:2] == ("layers", "layers") and path[2:] + ("kernel",) in hf_layer:
        suffix = hf_layer[path[2:] + ("kernel",)][0].removesuffix(".weight")
        return f"base_model.model.model.layers.{idx[0]}.{suffix}"
    raise ValueError(
        f"no Hugging Face LLaMA module for {_dotted(path)}; PEFT files support the "
        "attention / MLP projections and lm_head"
    )


def _adapter_paths(model) -> dict[tuple, LoRA]:
    return {p: m.lora for p, m in nnx.iter_modules(model) if isinstance(m, Linear) and m.lora is not None}


def save_adapter(model: nnx.Module, out_dir, base_model_name_or_path: str | None = None) -> None:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` that ``peft.PeftModel.from_pretrained``
    loads. PEFT scales by ``lora_alpha / r``, i.e. it runs the adapter at rank ``r_max``; the
    DyLoRA fields (``r_min``, ``frozen``, our module paths) go under the extra key ``"dylora"``."""
    from safetensors.numpy import save_file

    from sortedjax.models import llama

    found = _adapter_paths(model)
    if not found:
        raise ValueError("model has no LoRA adapters; call sortedjax.lora.apply_dylora first")
    first = next(iter(found.values()))
    for p, a in found.items():
        if (a.r_max, a.r_min, a.alpha, a.frozen, a.dropout) != (
            first.r_max,
            first.r_min,
            first.alpha,
            first.frozen,
            first.dropout,
        ):
            raise ValueError(
                f"adapter at {_dotted(p)} differs in (r, r_min, alpha, frozen, dropout) from the "
                "others; one PEFT config holds one setting"
            )
    tensors, targets = {}, set()
    for p, a in found.items():
        down, up = np.asarray(jax.device_get(a.down[...])), np.asarray(jax.device_get(a.up[...]))
        for idx, name in _module_names(model, p, a.batch_shape).items():
            tensors[f"{name}.lora_A.weight"] = np.ascontiguousarray(down[idx], np.float32)
            tensors[f"{name}.lora_B.weight"] = np.ascontiguousarray(up[idx], np.float32)
            targets.add(name.rsplit(".", 1)[-1])
    is_llama = isinstance(model, llama.Llama)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if is_llama else None,
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "r": first.r_max,
        "lora_alpha": first.alpha,
        "lora_dropout": first.dropout,
        "target_modules": sorted(targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "dylora": {
            "r_min": first.r_min,
            "r_max": first.r_max,
            "frozen": first.frozen,
            "scaling": "lora_alpha / b at rank b (PEFT's lora_alpha / r is rank b = r)",
            "sortedjax_target_modules": sorted(_dotted(p) for p in found),
        },
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / CONFIG_FILE, "w") as fh:
        json.dump(config, fh, indent=2)
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})


def load_adapter(model: nnx.Module, adapter_dir) -> list[str]:
    """Load a PEFT LoRA adapter (ours or PEFT's) into ``model`` in place; returns the adapted paths.

    Linears without an adapter get one (:func:`apply_dylora` with the file's ``r``,
    ``lora_alpha``, ``lora_dropout`` and DyLoRA fields); existing adapters are overwritten.
    """
    from safetensors.numpy import load_file

    d = Path(adapter_dir)
    if not (d / CONFIG_FILE).is_file() or not (d / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{d} lacks {CONFIG_FILE} or {WEIGHTS_FILE}")
    with open(d / CONFIG_FILE) as fh:
        cfg = json.load(fh)
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{d / CONFIG_FILE}: peft_type {cfg.get('peft_type')!r}, expected 'LORA'")
    if cfg.get("use_rslora") or cfg.get("fan_in_fan_out") or cfg.get("bias", "none") != "none":
        raise ValueError(f"{d / CONFIG_FILE}: use_rslora, fan_in_fan_out and LoRA biases are not supported")
    extra = cfg.get("dylora") or {}
    r = int(cfg["r"])
    sd = load_file(str(d / WEIGHTS_FILE))
    plan = {}  # dotted path -> {index: module name}
    for p, linear in nnx.iter_modules(model):
        if not isinstance(linear, Linear):
            continue
        k = linear.kernel
        lead = k.shape[: k.ndim - len(linear.in_shape) - len(linear.out_shape)]
        try:
            names = _module_names(model, p, lead)
        except ValueError:
            continue
        have = [f"{n}.lora_A.weight" in sd for n in names.values()]
        if any(have) and not all(have):
            raise ValueError(f"{d / WEIGHTS_FILE} has adapters for some layers of {_dotted(p)} but not all")
        if all(have):
            plan[_dotted(p)] = names
    used = {f"{n}.{t}.weight" for names in plan.values() for n in names.values() for t in ("lora_A", "lora_B")}
    base = {f"{n}.base_layer.weight" for names in plan.values() for n in names.values()} & set(sd)
    used |= base  # PEFT also saves the base weight of an adapted lm_head / embedding
    unused = sorted(set(sd) - used)
    if unused:
        raise ValueError(f"{d / WEIGHTS_FILE}: tensors {unused[:4]} fit no Linear of {type(model).__name__}")
    if not plan:
        raise ValueError(f"{d / WEIGHTS_FILE} holds no adapter tensors")
    linears, alpha = linear_paths(model), float(cfg["lora_alpha"])
    for p, names in plan.items():  # check everything before changing the model
        lin = linears[p]
        n_in, n_out = math.prod(lin.in_shape), math.prod(lin.out_shape)
        if lin.lora is not None and (lin.lora.r_max, lin.lora.alpha) != (r, alpha):
            raise ValueError(
                f"adapter at {p} has r={lin.lora.r_max}, alpha={lin.lora.alpha}; the file r={r}, lora_alpha={alpha}"
            )
        for n in names.values():
            for t, want in (("lora_A", (r, n_in)), ("lora_B", (n_out, r)), ("base_layer", (n_out, n_in))):
                key = f"{n}.{t}.weight"
                if key in sd and tuple(sd[key].shape) != want:
                    raise ValueError(f"tensor {key} has shape {tuple(sd[key].shape)}; {p} needs {want}")
    new = [p for p in plan if linears[p].lora is None]
    if new:
        apply_dylora(
            model,
            new,
            r=r,
            alpha=alpha,
            r_min=int(extra.get("r_min", 1)),
            frozen=bool(extra.get("frozen", False)),
            dropout=float(cfg.get("lora_dropout") or 0.0),
        )

    def stacked(names, t, batch_shape):
        return np.stack([np.asarray(sd[f"{names[i]}.{t}.weight"], np.float32) for i in np.ndindex(*batch_shape)])

    for p, names in plan.items():
        lin, a = linears[p], linears[p].lora
        a.down[...] = jnp.asarray(stacked(names, "lora_A", a.batch_shape).reshape(a.down.shape), a.down.dtype)
        a.up[...] = jnp.asarray(stacked(names, "lora_B", a.batch_shape).reshape(a.up.shape), a.up.dtype)
        if all(f"{n}.base_layer.weight" in base for n in names.values()):
            w = stacked(names, "base_layer", a.batch_shape)  # torch layout: ... x out x in
            k = lin.kernel
            k[...] = jnp.asarray(np.swapaxes(w, -1, -2).reshape(k.shape), k.dtype)
    return sorted(plan)
