"""Hugging Face LLaMA checkpoints <-> our parameters, both directions.

Reads ``config.json`` and safetensors (one file or a sharded ``model.safetensors.index.json``)
from a local directory, or from a hub id through ``huggingface_hub.snapshot_download``.
Tensors are read lazily one at a time, converted (torch Linear ``out x in`` -> ``in x out``,
per-layer tensors stacked on the ``"layers"`` axis), cast, and placed straight into the
shardings that :func:`sharding.state_shardings` derives for a given mesh.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from sortedjax import sharding
from sortedjax.models import llama

SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
_HF_LAYER = {  # our stacked name -> (HF suffix, is a Linear weight)
    "attn_norm": ("input_layernorm.weight", False),
    "wq": ("self_attn.q_proj.weight", True),
    "wk": ("self_attn.k_proj.weight", True),
    "wv": ("self_attn.v_proj.weight", True),
    "wo": ("self_attn.o_proj.weight", True),
    "mlp_norm": ("post_attention_layernorm.weight", False),
    "w_gate": ("mlp.gate_proj.weight", True),
    "w_up": ("mlp.up_proj.weight", True),
    "w_down": ("mlp.down_proj.weight", True),
}


def resolve(path_or_id: str | os.PathLike) -> Path:
    """A local checkpoint directory, downloading a hub id when it is not a local path."""
    p = Path(path_or_id)
    if p.is_dir():
        return p
    if p.exists() or str(path_or_id).startswith((".", "/", "~")) or str(path_or_id).count("/") > 1:
        raise FileNotFoundError(f"checkpoint directory {str(path_or_id)!r} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_id), allow_patterns=["*.json", "*.safetensors", "tokenizer*"]))
    except Exception as e:
        raise FileNotFoundError(
            f"{str(path_or_id)!r} is not a local directory and could not be downloaded from the "
            f"Hugging Face hub ({type(e).__name__}: {e})") from e


def load_config(path) -> dict:
    f = resolve(path) / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"missing {f}: a Hugging Face checkpoint needs config.json")
    with open(f) as fh:
        return json.load(fh)


class StateDict(Mapping):
    """Lazy ``{name: np.ndarray}`` over one or several safetensors files."""

    def __init__(self, files: dict[str, Path]):
        self.files = files  # tensor name -> file

    def __getitem__(self, name: str) -> np.ndarray:
        from safetensors import safe_open

        if name not in self.files:
            where = sorted({str(f) for f in self.files.values()})
            raise KeyError(f"tensor {name!r} not found in {where}")
        with safe_open(self.files[name], framework="numpy") as f:
            return f.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def load_state_dict(path) -> StateDict:
    """Tensors of ``model.safetensors`` or of every shard listed in the index file."""
    from safetensors import safe_open

    d = resolve(path)
    if (d / INDEX).is_file():
        with open(d / INDEX) as fh:
            weight_map = json.load(fh).get("weight_map")
        if not weight_map:
            raise ValueError(f"{d / INDEX} has no 'weight_map'")
        for shard in set(weight_map.values()):
            if not (d / shard).is_file():
                raise FileNotFoundError(f"shard {d / shard} listed in {d / INDEX} is missing")
        return StateDict({k: d / v for k, v in weight_map.items()})
    if (d / SINGLE).is_file():
        with safe_open(d / SINGLE, framework="numpy") as f:
            return StateDict({k: d / SINGLE for k in f.keys()})
    raise FileNotFoundError(f"no {SINGLE} or {INDEX} in {d}")


def _get(sd: Mapping, name: str, shape: tuple, dtype) -> np.ndarray:
    try:
        x = sd[name]
    except KeyError as e:
        raise KeyError(f"checkpoint lacks tensor {name!r} (expected shape {shape}): {e}") from None
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"tensor {name!r} has shape {tuple(x.shape)}, but config.json implies {tuple(shape)}")
    return np.asarray(x).astype(dtype)


def hf_to_params(sd: Mapping, cfg: llama.LlamaConfig) -> dict:
    """HF tensors -> our nested pure dict of numpy arrays (stacked layers, ``in x out``)."""
    dt = np.dtype(cfg.jnp_dtype)
    D, V, N = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    layers = {}
    for name, (shape, _) in llama.layer_shapes(cfg).items():
        suffix, linear = _HF_LAYER[name]
        one = shape[1:]
        if linear:  # torch Linear stores out x in; our head axes are split out
            ins = one[2:] if name == "wo" else one[1:]
            outs = one[:2] if name == "wo" else one[:1]
            t_shape = (int(np.prod(ins)), int(np.prod(outs)))
        else:
            t_shape = one
        per = [_get(sd, f"model.layers.{i}.{suffix}", t_shape, dt) for i in range(N)]
        layers[name] = np.stack([w.T.reshape(one) if linear else w for w in per])
    extra = sorted(k for k in sd if k.startswith(f"model.layers.{N}."))
    if extra:
        raise ValueError(f"checkpoint has tensor {extra[0]!r} but config.json says num_hidden_layers={N}")
    out = {"embed": _get(sd, "model.embed_tokens.weight", (V, D), dt), "layers": layers,
           "final_norm": _get(sd, "model.norm.weight", (D,), dt)}
    if not cfg.tie_word_embeddings:
        out["lm_head"] = _get(sd, "lm_head.weight", (V, D), dt).T
    if cfg.num_exit_heads:  # separate exit heads start as copies of the final norm + head
        head = out["embed"].T if cfg.tie_word_embeddings else out["lm_head"]
        out["exit_norm"] = np.stack([out["final_norm"]] * cfg.num_exit_heads)
        out["exit_head"] = np.stack([head] * cfg.num_exit_heads)
    return out


def params_to_hf(params: Mapping, cfg: llama.LlamaConfig, num_layers: int | None = None) -> dict:
    """Our pure dict -> HF tensor dict of the sub-model of the first ``num_layers`` layers."""
    n = cfg.num_hidden_layers if num_layers is None else int(num_layers)
    if not 1 <= n <= cfg.num_hidden_layers:
        raise ValueError(f"num_layers {n} outside the allowed range 1..{cfg.num_hidden_layers}")
    np_ = lambda x: np.asarray(jax.device_get(x))  # noqa: E731
    out = {"model.embed_tokens.weight": np_(params["embed"])}
    for name, (suffix, linear) in _HF_LAYER.items():
        stacked = np_(params["layers"][name])
        for i in range(n):
            w = stacked[i]
            if linear:
                w = w.reshape(-1, w.shape[-1]) if name == "wo" else w.reshape(w.shape[0], -1)
                w = w.T
            out[f"model.layers.{i}.{suffix}"] = np.ascontiguousarray(w)
    if n in cfg.exit_head_layers:  # the n-layer sub-model's own exit norm + head
        j = cfg.exit_head_layers.index(n)
        out["model.norm.weight"] = np_(params["exit_norm"])[j]
        out["lm_head.weight"] = np.ascontiguousarray(np_(params["exit_head"])[j].T)
    else:
        out["model.norm.weight"] = np_(params["final_norm"])
        if not cfg.tie_word_embeddings:
            out["lm_head.weight"] = np.ascontiguousarray(np_(params["lm_head"]).T)
    return out


def load_model(path_or_id, dtype: str = "float32", mesh=None, **overrides) -> llama.Llama:
    """Build a :class:`llama.Llama` from a checkpoint, params placed into ``mesh`` shardings."""
    d = resolve(path_or_id)
    cfg = llama.LlamaConfig.from_hf(load_config(d), dtype=dtype, **overrides)
    params = hf_to_params(load_state_dict(d), cfg)
    abstract = nnx.eval_shape(lambda: llama.Llama(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    if mesh is None:
        put = jax.tree.map(lambda x: jax.numpy.asarray(x), params)
    else:
        shard = nnx.to_pure_dict(sharding.state_shardings(state, mesh))
        put = jax.tree.map(lambda x, s: jax.device_put(x, s), params, shard)
    nnx.replace_by_pure_dict(state, put)
    return nnx.merge(graphdef, state)


def save_model(model: llama.Llama, out_dir, num_layers: int | None = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` that transformers loads as is."""
    from safetensors.numpy import save_file

    cfg = model.cfg
    tensors = params_to_hf(nnx.to_pure_dict(nnx.state(model, nnx.Param)), cfg, num_layers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "config.json", "w") as fh:
        json.dump(cfg.to_hf(num_layers), fh, indent=2)
    save_file(tensors, str(out / SINGLE), metadata={"format": "pt"})


def load_tokenizer(path):
    """``transformers.AutoTokenizer`` from the checkpoint directory, or None without files."""
    d = resolve(path)
    if not any((d / f).is_file() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(d))
