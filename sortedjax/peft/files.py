"""PEFT LoRA adapter files for DyLoRA adapters (:mod:`sortedjax.peft`): ``adapter_config.json`` +
``adapter_model.safetensors`` that ``peft.PeftModel.from_pretrained`` loads onto the Hugging Face
model, written at one rank ``b`` of the DyLoRA adapter, and read back.

At rank ``b`` a DyLoRA adapter is the LoRA adapter ``lora_A = W_dw[:b]`` (``b x in``), ``lora_B =
W_up[:, :b]`` (``out x b``) with scale ``alpha / b``; PEFT scales by ``lora_alpha / r``, so the file
holds ``r = b`` and ``lora_alpha = alpha``. Module names are Hugging Face's
(:mod:`sortedjax.peft.names`: LLaMA, BERT, RoBERTa, GPT-2; our dotted paths for other models).
GPT-2's ``c_attn`` is one ``Conv1D`` computing q | k | v (``fan_in_fan_out``): adapters on ``k`` of
our ``q``, ``k``, ``v`` become one adapter of rank ``k*b`` (``lora_A`` their ``W_dw[:b]`` stacked,
``lora_B`` block-diagonal over the q / k / v rows, zero for an unadapted part) with ``lora_alpha =
k*alpha``, which is exactly their sum. A sequence classifier's pooler / classifier, trained with
the task, are written as PEFT ``modules_to_save``.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import sortedjax.peft.names as names
from sortedjax.peft.lora import apply_dylora, linear_paths

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
META_KEY = "dylora"  # DyLoRA settings, in the safetensors header (PEFT warns about unknown config keys)
_TASKS = {"llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM", "bert": "SEQ_CLS", "roberta": "SEQ_CLS"}
_SAVE_HEAD = {"bert": ["classifier", "pooler"], "roberta": ["classifier"]}  # PEFT modules_to_save


def _np(x) -> np.ndarray:
    return np.asarray(jax.device_get(x), np.float32)


def _one_setting(found: dict) -> tuple:
    settings = {p: (a.r_max, a.r_min, a.alpha, a.frozen, a.dropout) for p, a in found.items()}
    first = next(iter(settings.values()))
    for p, s in settings.items():
        if s != first:
            raise ValueError(
                f"adapter at {p} has (r, r_min, alpha, frozen, dropout) = {s}, another has {first}; "
                "one PEFT file holds one setting"
            )
    return first


def _head_tensors(model, found: dict) -> tuple[dict, list[str]]:
    """Torch-layout pooler / classifier weights of a sequence classifier (PEFT ``modules_to_save``);
    a head the checkpoint's layout lacks (a headless ``BertModel`` has no classifier) is not
    written, with a warning naming it."""
    arch = names.architecture(model)
    if arch not in _SAVE_HEAD:
        return {}, []
    linears, out = linear_paths(model), {}
    heads = names.head_names(model)
    missing = sorted(p for p in linears if "." not in p and p not in heads and p in ("pooler", "classifier"))
    if missing:
        warnings.warn(
            f"{missing}: the checkpoint the model came from (a headless base model) has no such module, so "
            "the adapter file cannot hold them; save the task head with save_pretrained",
            stacklevel=3,
        )
    for ours, hf in heads.items():
        if ours in found:
            continue  # a LoRA-adapted head keeps its base weights in the base model
        lin = linears[ours]
        out[f"{PREFIX}{hf}.weight"] = np.ascontiguousarray(_np(lin.kernel[...]).T)
        out[f"{PREFIX}{hf}.bias"] = _np(lin.bias[...])
    keep = [m for m in _SAVE_HEAD[arch] if any(f".{m}." in f".{k[len(PREFIX) :]}" for k in out)]
    return out, keep


def save_peft(
    model: nnx.Module,
    out_dir,
    rank: int | None = None,
    base_model_name_or_path: str | None = None,
    modules_to_save: bool = True,
) -> Path:
    """Write the adapters of ``model`` at rank ``rank`` (``r_min..r_max``; None: ``r_max``) as a PEFT
    LoRA adapter that ``peft.PeftModel.from_pretrained(hf_model, out_dir)`` loads: its outputs equal
    ``model(..., sub=SubModel.of(rank=rank))``. ``modules_to_save``: also write a sequence
    classifier's pooler / classifier. The DyLoRA settings (``r_min``, ``r_max``, ``frozen``, our
    module paths) go into the safetensors header (key ``"dylora"``). Returns ``out_dir``."""
    from safetensors.numpy import save_file

    found = {p: lin.lora for p, lin in linear_paths(model).items() if lin.lora is not None}
    if not found:
        raise ValueError(f"{type(model).__name__} has no LoRA adapters; call sortedjax.peft.apply_dylora first")
    r_max, r_min, alpha, frozen, dropout = _one_setting(found)
    b = r_max if rank is None else rank
    if isinstance(b, (jax.Array, np.ndarray)) and np.ndim(b) == 0 and not isinstance(b, jax.core.Tracer):
        b = b.item()
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not r_min <= b <= r_max:
        raise ValueError(f"rank {b!r} outside the adapters' range r_min..r_max = {r_min}..{r_max}")
    b = int(b)
    arch = names.architecture(model)
    modules = names.hf_modules(model)
    orphans = sorted(set(found) - {p for m in modules.values() for p, _ in m.parts})
    if orphans:
        raise ValueError(
            f"adapters on {orphans} have no Hugging Face module in {type(model).__name__}; "
            f"modules PEFT files can hold: {names.pattern_names(modules)}"
        )
    host = {p: (_np(a.down[...]), _np(a.up[...])) for p, a in found.items()}
    tensors, fused, linears = {}, {}, linear_paths(model)
    for name, mod in modules.items():
        sel = [(p, idx) for p, idx in mod.parts if p in found]
        if not sel:
            continue
        outs = [math.prod(linears[p].out_shape) for p, _ in mod.parts]
        lora_b = np.zeros((sum(outs), len(sel) * b), np.float32)
        starts = np.cumsum([0] + outs)
        for k, (p, idx) in enumerate(sel):
            j = mod.parts.index((p, idx))
            lora_b[starts[j] : starts[j + 1], k * b : (k + 1) * b] = host[p][1][idx][:, :b]
        tensors[f"{PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(
            np.concatenate([host[p][0][i][:b] for p, i in sel])
        )
        tensors[f"{PREFIX}{name}.lora_B.weight"] = lora_b
        fused[name] = len(sel)
    ks = set(fused.values())
    k0 = ks.pop() if len(ks) == 1 else 1
    desc = names.descriptor(model)
    headless = desc is not None and desc.headless
    config = {
        "peft_type": "LORA",
        "task_type": "FEATURE_EXTRACTION" if headless else _TASKS.get(arch),
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "r": k0 * b,
        "lora_alpha": k0 * alpha,
        "lora_dropout": dropout,
        "target_modules": names.target_list(sorted(fused), sorted(modules)),
        "rank_pattern": {re.escape(n): k * b for n, k in fused.items() if k != k0},
        "alpha_pattern": {re.escape(n): k * alpha for n, k in fused.items() if k != k0},
        "bias": "none",
        "fan_in_fan_out": arch == "gpt2",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
    }
    meta = {
        "architecture": arch,
        "rank": b,
        "alpha": alpha,
        "r_min": r_min,
        "r_max": r_max,
        "frozen": frozen,
        "scaling": "alpha / b at rank b; PEFT's lora_alpha / r is that at rank b (k*b and k*alpha for k fused parts)",
        "sortedjax_target_modules": sorted(found),
    }
    if modules_to_save:
        head, keep = _head_tensors(model, found)
        tensors.update(head)
        config["modules_to_save"] = keep or None
    _check_names(tensors, desc, type(model).__name__)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt", META_KEY: json.dumps(meta)})
    written = set(_read(out)[1])
    if written != set(tensors):
        raise OSError(f"{out / WEIGHTS_FILE} holds {sorted(written ^ set(tensors))[:4]} unlike what was written")
    return out


def _check_names(tensors: dict, desc, model_name: str) -> None:
    """Every tensor must name a module of the checkpoint layout the model came from (``desc.tensors``):
    PEFT silently drops an adapter whose module is not in the model it is loaded onto."""
    if desc is None or not desc.tensors:
        return
    modules = {n.rsplit(".", 1)[0] for n in desc.tensors}
    bad = []
    for key in tensors:
        name = key[len(PREFIX) :]
        module = re.sub(r"\.lora_[AB]\.weight$", "", name)
        if (module if module != name else name.rsplit(".", 1)[0]) not in modules:
            bad.append(key)
    if bad:
        kind = "headless " if desc.headless else ""
        raise ValueError(
            f"adapter keys {sorted(bad)[:6]} name no module of the {kind}{desc.architecture} checkpoint "
            f"{model_name} was loaded from (its modules: {names.pattern_names(modules)[:8]}); PEFT would drop them"
        )


def _read(adapter_dir) -> tuple[dict, dict, dict]:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    d = Path(adapter_dir)
    if not (d / CONFIG_FILE).is_file() or not (d / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{d} lacks {CONFIG_FILE} or {WEIGHTS_FILE} (a PEFT LoRA adapter directory)")
    cfg = json.loads((d / CONFIG_FILE).read_text())
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{d / CONFIG_FILE}: peft_type {cfg.get('peft_type')!r}; allowed: 'LORA'")
    unsupported = {k: cfg.get(k) for k in ("use_rslora", "use_dora", "lora_bias") if cfg.get(k)}
    if cfg.get("bias", "none") != "none":
        unsupported["bias"] = cfg["bias"]
    if unsupported:
        raise ValueError(f"{d / CONFIG_FILE}: {unsupported} not supported; allowed: plain LoRA (bias 'none')")
    with safe_open(str(d / WEIGHTS_FILE), "np") as fh:
        meta = json.loads((fh.metadata() or {}).get(META_KEY, "{}"))
    return cfg, load_file(str(d / WEIGHTS_FILE)), meta


def _torch_weight(w: np.ndarray, lin, conv1d: bool, key: str) -> np.ndarray:
    n_in, n_out = math.prod(lin.in_shape), math.prod(lin.out_shape)
    want = (n_in, n_out) if conv1d else (n_out, n_in)
    if tuple(w.shape) != want:
        raise ValueError(f"tensor {key} has shape {tuple(w.shape)}; the model needs {want}")
    return w if conv1d else w.T


def load_peft(model: nnx.Module, adapter_dir) -> list[str]:
    """Read a PEFT LoRA adapter (ours from :func:`save_peft`, or one PEFT trained or created) into
    ``model`` in place; returns the adapted dotted paths.

    A module of rank ``r`` (``rank_pattern`` honoured) with ``lora_alpha`` (``alpha_pattern``)
    becomes a DyLoRA adapter whose rank ``r`` equals it: Linears without an adapter get one with
    ``r_max = r``, ``alpha = lora_alpha`` (``apply_dylora``); an existing adapter needs ``r_max >= r``
    and takes it in its first ``r`` ranks (``W_up`` scaled by ``lora_alpha / alpha``; the ranks above
    ``r`` get ``W_up = 0``). Layers of a stacked Linear the file has no adapter for get ``W_up = 0``.
    A fused GPT-2 ``c_attn`` written by :func:`save_peft` splits back into its q / k / v adapters;
    one PEFT wrote adapts each of q, k, v at the full rank. ``modules_to_save`` heads and
    ``base_layer`` weights load into the Linears' weights.
    """
    cfg, sd, meta = _read(adapter_dir)
    arch = names.architecture(model)
    what = type(model).__name__
    if "architecture" in meta and meta["architecture"] != arch:
        raise ValueError(
            f"{adapter_dir}: adapter written for architecture {meta['architecture']!r}, model {what} is {arch!r}"
        )
    modules, linears, conv1d = names.hf_modules(model), linear_paths(model), arch == "gpt2"
    known = f"{what}'s modules: {names.pattern_names(modules)}"
    bad = sorted(k for k in sd if not k.startswith(PREFIX))
    if bad:
        raise ValueError(f"{adapter_dir}: tensor names {bad[:3]} do not start with {PREFIX!r} (not a PEFT LoRA file)")
    lora_names = sorted(
        {k[len(PREFIX) :].rsplit(".", 2)[0] for k in sd if k.endswith((".lora_A.weight", ".lora_B.weight"))}
    )
    if not lora_names:
        raise ValueError(f"{adapter_dir}: {WEIGHTS_FILE} holds no lora_A / lora_B tensors")
    unknown = [n for n in lora_names if n not in modules]
    if unknown:
        raise ValueError(f"{adapter_dir}: target modules {unknown[:4]} are not modules of {what}; {known}")
    ours = set(meta.get("sortedjax_target_modules") or [])
    plan: dict[str, dict[tuple, tuple]] = {}  # our path -> {layer index: (down, up, r, alpha)}
    for name in lora_names:
        mod = modules[name]
        key_a, key_b = f"{PREFIX}{name}.lora_A.weight", f"{PREFIX}{name}.lora_B.weight"
        if key_a not in sd or key_b not in sd:
            raise ValueError(f"{adapter_dir}: module {name} has only one of lora_A / lora_B")
        r = int(names.pattern_value(cfg.get("rank_pattern"), name, cfg["r"]))
        alpha = float(names.pattern_value(cfg.get("alpha_pattern"), name, cfg["lora_alpha"]))
        n_in = math.prod(linears[mod.parts[0][0]].in_shape)
        outs = [math.prod(linears[p].out_shape) for p, _ in mod.parts]
        for key, want in ((key_a, (r, n_in)), (key_b, (sum(outs), r))):
            if tuple(sd[key].shape) != want:
                raise ValueError(f"tensor {key} has shape {tuple(sd[key].shape)}; {what} at rank r={r} needs {want}")
        a, bm, starts = np.asarray(sd[key_a], np.float32), np.asarray(sd[key_b], np.float32), np.cumsum([0] + outs)
        split = mod.fused and bool(ours)  # our fused export: each adapted part has its own column block
        sel = [j for j, (p, _) in enumerate(mod.parts) if p in ours] if split else list(range(len(mod.parts)))
        if not sel or (split and r % len(sel)):
            raise ValueError(f"{adapter_dir}: fused module {name} of rank {r} does not split into parts {sel}")
        b = r // len(sel) if split else r
        for k, j in enumerate(sel):
            p, idx = mod.parts[j]
            cols = slice(k * b, (k + 1) * b) if split else slice(0, r)
            plan.setdefault(p, {})[idx] = (a[cols], bm[starts[j] : starts[j + 1], cols], b, alpha * b / r)
    extra = _extra_weights(model, sd, conv1d, adapter_dir, known)
    groups: dict[tuple, list[str]] = {}
    for p, per in plan.items():  # check everything before changing the model
        setting = {(r, al) for _, _, r, al in per.values()}
        if len(setting) != 1:
            raise ValueError(f"{adapter_dir}: layers of {p} have different (r, lora_alpha) {sorted(setting)}")
        (r, al), have = setting.pop(), linears[p].lora
        if have is not None and have.r_max < r:
            raise ValueError(f"{adapter_dir}: module {p} has rank r={r}, above the model's adapter r_max={have.r_max}")
        if have is None:
            groups.setdefault((r, al), []).append(p)
    for (r, al), paths in groups.items():
        r_min = int(meta.get("r_min", 1))
        apply_dylora(model, paths, r=r, alpha=al, r_min=r_min if r_min <= r else 1, frozen=bool(meta.get("frozen", False)),
                     dropout=float(cfg.get("lora_dropout") or 0.0))  # fmt: skip
    for p, per in plan.items():
        ad = linears[p].lora
        down, up = np.array(_np(ad.down[...])), np.zeros(ad.up.shape, np.float32)
        for idx, (a, bm, r, al) in per.items():
            down[idx][:r] = a
            up[idx][:, :r] = bm * (al / ad.alpha)
        ad.down[...] = jnp.asarray(down, ad.down.dtype)
        ad.up[...] = jnp.asarray(up, ad.up.dtype)
    for (p, kind), w in extra.items():
        var = getattr(linears[p], kind)
        var[...] = jnp.asarray(w, var.dtype)
    return sorted(plan)


def _extra_weights(model, sd, conv1d: bool, adapter_dir, known: str) -> dict:
    """``{(our Linear path, "kernel" | "bias"): array}`` from ``base_layer`` and ``modules_to_save`` tensors."""
    modules, linears = names.hf_modules(model), linear_paths(model)
    heads = set(names.head_names(model).values())
    out, left = {}, []
    for key in sorted(sd):
        rest = key[len(PREFIX) :]
        if rest.endswith((".lora_A.weight", ".lora_B.weight")):
            continue
        mod_name, _, tail = rest.rpartition(".")
        base = mod_name.removesuffix(".base_layer")
        if base not in modules or modules[base].fused or (base == mod_name and base not in heads):
            left.append(key)
            continue
        p, idx = modules[base].parts[0]
        lin, w = linears[p], np.asarray(sd[key], np.float32)
        if tail == "weight":
            kind, w = "kernel", _torch_weight(w, lin, conv1d, key)
        elif tail == "bias" and lin.bias is not None and w.size == math.prod(lin.out_shape):
            kind = "bias"
        else:
            left.append(key)
            continue
        if (p, kind) not in out:
            out[(p, kind)] = np.array(_np(getattr(lin, kind)[...]))
        cur = out[(p, kind)]
        cur[idx] = w.reshape(cur[idx].shape)
    if left:
        raise ValueError(f"{adapter_dir}: tensors {left[:4]} fit no module of {type(model).__name__}; {known}")
    return out


save_adapter = save_peft  # the earlier names
load_adapter = load_peft
