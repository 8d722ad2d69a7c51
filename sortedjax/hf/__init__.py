"""Hugging Face checkpoint files <-> parameters: config and safetensors reading, tensor layout,
placement on a mesh, writing checkpoints, tokenizers (:mod:`sortedjax.hf.files`)."""

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
]
