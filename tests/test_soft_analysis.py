"""Per-exit KL to the last layer, hidden-state cosine and heatmap PNGs."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sortedjax.metrics import analysis
from sortedjax.models import llama


def test_kl_cosine_and_heatmap(tmp_path):
    cfg = llama.LlamaConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        exit_head_layers=(1,),
    )
    model = llama.Llama(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, 6)))
    att = jnp.asarray([[1] * 6, [1] * 4 + [0] * 2])
    kl = analysis.exit_kl(model, tokens, (1, 2, 3), attention_mask=att)
    assert kl.shape == (3, 6) and np.all(kl >= -1e-6)
    np.testing.assert_allclose(kl[-1], 0.0, atol=1e-6)
    kl_own = analysis.exit_kl(model, tokens, (1, 3), attention_mask=att, heads=(0, None))
    assert not np.allclose(kl_own[0], kl[0])  # exit 1 through its own head differs
    per_pos, mat = analysis.hidden_cosine(model, tokens, (1, 2, 3), attention_mask=att)
    np.testing.assert_allclose(per_pos[-1], 1.0, atol=1e-5)
    np.testing.assert_allclose(np.diag(mat), 1.0, atol=1e-5)
    np.testing.assert_allclose(mat, mat.T, atol=1e-6)
    path = analysis.heatmap(kl, str(tmp_path / "kl.png"), title="kl", row_labels=(1, 2, 3), col_labels=range(6))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="does not match"):
        analysis.heatmap(kl, str(tmp_path / "x.png"), title="x", row_labels=(1, 2), col_labels=range(6))
