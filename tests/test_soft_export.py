"""An exported SoFT sub-model loads in transformers with logits equal to our exit's."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from experiments import export
from sortedjax.data import instruct as idata
from sortedjax.models import llama
from sortedjax.submodel import SubModel


def test_exported_submodel_matches_transformers(tmp_path):
    tok = idata.task_tokenizer(["the capital of zorland is vell ."])
    cfg = llama.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = llama.Llama(cfg, rngs=nnx.Rngs(3))
    src = tmp_path / "run" / "soft" / "hf"
    llama.save_pretrained(model, str(src))
    tok.save_pretrained(str(src))
    out = tmp_path / "sub2"
    export.main(["--workdir", str(tmp_path / "run"), "--method", "soft", "--layers", "2", "--out", str(out)])

    ref = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert ref.config.num_hidden_layers == 2
    ids = transformers.AutoTokenizer.from_pretrained(str(out))("the capital of zorland is vell .")["input_ids"]
    tokens = np.asarray([ids, ids[::-1]])
    with torch.no_grad():
        want = ref(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(model(jnp.asarray(tokens), exit_layer=2), want, atol=1e-4, rtol=1e-4)

    small = tmp_path / "small"
    export.main(
        ["--workdir", str(tmp_path / "run"), "--layers", "3", "--width", "40", "--heads", "2", "--out", str(small)]
    )
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(small)).eval()
    c = ref.config
    assert (c.num_hidden_layers, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads) == (3, 40, 2, 1)
    with torch.no_grad():
        want = ref(torch.tensor(tokens)).logits.numpy()
    got = model(jnp.asarray(tokens), sub=SubModel.of(depth=3, width=40, heads=2))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)

    with pytest.raises(ValueError, match="--layers 5 outside the allowed range 1..4"):
        export.main(["--workdir", str(tmp_path / "run"), "--method", "soft", "--layers", "5", "--out", str(out)])
    with pytest.raises(ValueError, match="'sft'.*methods with one: \\['soft'\\]"):
        export.main(["--workdir", str(tmp_path / "run"), "--method", "sft", "--layers", "2", "--out", str(out)])
