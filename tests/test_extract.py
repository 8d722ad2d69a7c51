"""Any model built from sortedjax.nn trains all its sub-models in one program; extract cuts them out."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx
from test_llama import save_hf, torch_logits

from sortedjax import nn
from sortedjax.extract import extract
from sortedjax.methods import objectives
from sortedjax.models import llama
from sortedjax.submodel import Dim, Pool, SubModel, check_sizes


# -- a user's own model, ~30 lines ------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NetConfig:
    width: int = 16
    depth: int = 3


class Block(nnx.Module):
    def __init__(self, cfg, *, rngs):
        self.norm = nn.LayerNorm(cfg.width)
        self.mlp = nn.MLP(cfg.width, 2 * cfg.width, activation="gelu", gated=False, use_bias=True, rngs=rngs)

    def __call__(self, h, *, width):
        hidden = None if width is None else 2 * width  # the MLP's hidden layer is sorted too
        return h + self.mlp(self.norm(h, size=width), hidden=hidden, embed=width)


class Net(nnx.Module):
    def __init__(self, cfg, *, rngs):
        self.cfg = cfg
        self.inp = nn.Linear(2, cfg.width, names=("in", "embed"), rngs=rngs)
        self.blocks = nn.LayerStack(lambda r: Block(cfg, rngs=r), cfg.depth, rngs=rngs)
        self.out = nn.Linear(cfg.width, 3, names=("embed", "classes"), rngs=rngs)

    limits = property(lambda self: {"width": self.cfg.width, "depth": self.cfg.depth})

    def __call__(self, x, sub=None):
        sub = sub or SubModel()
        check_sizes(sub, self.limits)
        h = self.blocks(self.inp(x, out_size=sub.width), depth=sub.depth, width=sub.width).hidden
        return self.out(h, in_size=sub.width)

    def sub_config(self, s):
        return NetConfig(width=s.get("width", self.cfg.width), depth=s.get("depth", self.cfg.depth))

    def axis_sizes(self, s):
        return {
            "embed": s.get("width", self.cfg.width),
            "mlp": 2 * s.get("width", self.cfg.width),
            "layers": s.get("depth", self.cfg.depth),
        }


@pytest.mark.slow
def test_own_model_trains_twenty_sampled_submodels_with_one_compilation():
    model = Net(NetConfig(), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 2))
    y = (x[:, 0] > 0).astype(jnp.int32) + (x[:, 1] > 0)
    pool = Pool({"width": Dim.range(4, 16), "depth": Dim.range(1, 3)}, limits=model.limits)
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    traces, seen = [], set()

    @nnx.jit
    def step(model, opt, key):
        traces.append(1)

        def loss(m):
            def loss_of(sub):
                return optax.softmax_cross_entropy_with_integer_labels(m(x, sub), y).mean(), {}

            return objectives.stochastic(loss_of, pool, key)

        (value, metrics), grads = nnx.value_and_grad(loss, has_aux=True)(model)
        opt.update(model, grads)
        return value, metrics

    first = None
    for t in range(20):
        value, metrics = step(model, opt, jax.random.PRNGKey(t))
        seen.add((int(metrics["sub_width"]), int(metrics["sub_depth"])))
        first = float(value) if first is None else first
    assert len(traces) == 1 and len(seen) >= 15  # twenty sub-models, one compiled program
    full = optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
    assert float(full) < first


def test_extracted_own_model_equals_masked_model():
    model = Net(NetConfig(), rngs=nnx.Rngs(3))
    x = jax.random.normal(jax.random.PRNGKey(4), (5, 2))
    for sizes in ({"width": 7, "depth": 2}, {"width": 16, "depth": 1}, {"width": 1, "depth": 3}):
        small = extract(model, SubModel.of(**sizes))
        assert small.cfg == NetConfig(**sizes) and small.blocks.layers.mlp.up.kernel.shape[1:] == (
            sizes["width"],
            2 * sizes["width"],
        )
        np.testing.assert_allclose(small(x), model(x, SubModel.of(**sizes)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="width 17 outside the allowed range 1..16"):
        extract(model, SubModel.of(width=17))


# -- LLaMA: depth, MLP width (MatFormer) and heads, exported to transformers ----------------------
@pytest.mark.parametrize("sizes", [dict(depth=2, width=40, heads=2), dict(heads=4, width=64), dict(depth=1)])
def test_llama_submodel_export_loads_in_transformers_with_equal_logits(tmp_path, sizes):
    save_hf(tmp_path / "full", num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
    model = llama.from_pretrained(str(tmp_path / "full"))
    tokens = np.random.default_rng(0).integers(0, 97, (2, 9))
    sub = SubModel.of(**sizes)
    masked = model(jnp.asarray(tokens), sub=sub)
    small = extract(model, sub)
    np.testing.assert_allclose(small(jnp.asarray(tokens)), masked, atol=1e-5, rtol=1e-5)
    llama.save_pretrained(model, tmp_path / "sub", sub=sub)
    cfg = json.loads((tmp_path / "sub" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == sizes.get("depth", 3)
    assert cfg["intermediate_size"] == sizes.get("width", 64)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (
        sizes.get("heads", 4),
        sizes.get("heads", 4) // 2,
    )
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sub").eval()
    assert sum(p.numel() for p in ref.parameters()) == sum(x.size for x in jax.tree.leaves(nnx.state(small)))
    np.testing.assert_allclose(torch_logits(ref, tokens), masked, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_llama_heads_must_keep_whole_kv_groups_to_extract(tmp_path):
    cfg = llama.LlamaConfig(
        vocab_size=11,
        hidden_size=16,
        intermediate_size=8,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = llama.Llama(cfg, rngs=nnx.Rngs(0))
    model(jnp.zeros((1, 3), jnp.int32), sub=SubModel.of(heads=3))  # the masked model runs any prefix
    with pytest.raises(ValueError, match="heads must be a multiple of 2"):
        extract(model, SubModel.of(heads=3))
    with pytest.raises(ValueError, match="heads 5 outside the allowed range 1..4"):
        model(jnp.zeros((1, 3), jnp.int32), sub=SubModel.of(heads=5))
    with pytest.raises(ValueError, match="width 0 outside the allowed range 1..8"):
        model(jnp.zeros((1, 3), jnp.int32), sub=SubModel.of(width=0))
    with pytest.raises(ValueError, match="token id 11 outside the vocabulary"):
        model(jnp.full((1, 3), 11, jnp.int32))
    torch.manual_seed(0)  # keep torch's global state as other tests expect
