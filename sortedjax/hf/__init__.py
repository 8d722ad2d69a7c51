"""Hugging Face checkpoint files <-> parameters: config and safetensors reading, tensor layout,
placement on a mesh, writing checkpoints, tokenizers (:mod:`sortedjax.hf.files`), and the one walk
between a checkpoint's tensors and every model's parameter tree (:mod:`sortedjax.hf.walk`)."""

from sortedjax.hf.files import (
    INDEX,
    SINGLE,
    TOKENIZER_FILES,
    StateDict,
    as_mesh,
    load_config,
    load_state_dict,
    load_tokenizer,
    place,
    read_tensor,
    resolve,
    set_path,
    to_torch_layout,
    write_checkpoint,
)
from sortedjax.hf.walk import (
    checkpoint_tensors,
    hf_linears,
    layer_entries,
    load_params,
    param_shapes,
    read_parts,
    write_parts,
)

__all__ = [
    "INDEX",
    "SINGLE",
    "TOKENIZER_FILES",
    "StateDict",
    "as_mesh",
    "load_config",
    "load_state_dict",
    "load_tokenizer",
    "place",
    "read_tensor",
    "resolve",
    "set_path",
    "to_torch_layout",
    "write_checkpoint",
    "checkpoint_tensors",
    "hf_linears",
    "layer_entries",
    "load_params",
    "param_shapes",
    "read_parts",
    "write_parts",
]
