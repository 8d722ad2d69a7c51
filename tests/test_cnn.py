"""Sorted CNNs: every sub-model equals the small CNN built from sliced weights; one compile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sortedjax import flops
from sortedjax.models import cnn_common as cc
from sortedjax.models import mobilenet_v2 as mb
from sortedjax.models import resnet
from sortedjax.submodel import Pool, SubModel

STAGES = ((1, 8, 1, 1), (6, 12, 2, 2), (6, 20, 2, 2))  # 5 blocks, 3 shape changes


def images(n=3, size=16, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, size, size, 3)), jnp.float32)


def randomize_norms(model):
    """Non-trivial affine parameters and statistics, so slicing mistakes show."""
    rng = np.random.default_rng(1)
    for _, m in nnx.iter_modules(model):
        for name in ("scale", "bias", "mean", "var"):
            v = getattr(m, name, None)
            if isinstance(v, nnx.Variable) and v[...].ndim:
                r = rng.uniform(0.5, 1.5, v[...].shape) if name in ("scale", "var") else rng.normal(size=v[...].shape)
                v[...] = jnp.asarray(r * 0.5 if name in ("bias", "mean") else r, v[...].dtype)
    return model


_small = jax.jit(lambda g, s, x: nnx.merge(g, s)(x), static_argnums=0)
forward = jax.jit(lambda g, s, x, sub: nnx.merge(g, s)(x, sub), static_argnums=0)


def nn_eager(model, x):
    g, s = nnx.split(model)
    return _small(g, s, x)


def tiny_mobilenet(norm, depth_skip="select"):
    cfg = mb.config(1.0, stages=STAGES, last=24, width_levels=4, norm=norm, depth_skip=depth_skip)
    return randomize_norms(mb.MobileNetV2(cfg, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize(
    "norm,skip",
    [
        ("instance", "cond"),
        ("batch", "select"),
        ("batch", "cond"),
        pytest.param("batch_private", "select", marks=pytest.mark.slow),
    ],
)
def test_mobilenet_submodels_equal_extracted(norm, skip):
    model = cc.set_eval(tiny_mobilenet(norm, skip))
    x = images()
    g, s = nnx.split(model)
    before = forward._cache_size()
    for depth, width in ((1, 1), (2, 4), (3, 2), (4, 3), (5, 1), (5, 4)):  # every depth, every width
        big = forward(g, s, x, SubModel.of(depth=depth, width=width))
        small = cc.extract_cnn(model, {"depth": depth, "width": width})
        assert small.blocks.num_layers == depth
        assert small.cfg.stem == cc.kept(model.cfg.stem, width, 4)
        # the same arithmetic on fewer channels: equal up to float32 summation order
        np.testing.assert_allclose(big, nn_eager(small, x), rtol=1e-4, atol=1e-4)
    assert forward._cache_size() == before + 1


@pytest.mark.parametrize("norm", [pytest.param("instance", marks=pytest.mark.slow), "batch", "batch_private"])
def test_resnet_widths_equal_extracted(norm):
    model = cc.set_eval(randomize_norms(resnet.cpreresnet20(norm, base=4, width_levels=4)))
    x = images(size=8)
    for width in range(1, 5):
        small = cc.extract_cnn(model, {"width": width})
        assert small.cfg.channels == tuple(cc.kept(c, width, 4) for c in (4, 8, 16))
        big = forward(*nnx.split(model), x, SubModel.of(width=width))
        np.testing.assert_allclose(big, nn_eager(small, x), rtol=1e-4, atol=1e-4)


def test_masked_width_ignores_cut_channels():
    """Weights of channels past the kept width cannot change the sub-model's output."""
    model = cc.set_eval(tiny_mobilenet("batch"))
    x, sub = images(), SubModel.of(depth=5, width=2)
    run = nnx.jit(lambda m, x, sub: m(x, sub))
    before = run(model, x, sub)
    block = model.blocks.layers[3]
    block.project.kernel[...] = block.project.kernel[...].at[..., cc.kept(block.cout, 2, 4) :].set(100.0)
    np.testing.assert_allclose(run(model, x, sub), before, atol=1e-6)
    assert not np.allclose(run(model, x, SubModel.of(depth=5, width=3)), before, atol=1e-3)


def test_one_compilation_for_160_mobilenet_submodels():
    """The Fig 4.2 grid (16 depths x 10 widths) through one compiled program."""
    cfg = mb.config(0.25, last=16, width_levels=10)
    model = cc.set_eval(mb.MobileNetV2(cfg, rngs=nnx.Rngs(0)))
    assert len(cfg.blocks) == 17
    pool = Pool.from_configs([{"depth": d, "width": w} for d in range(2, 18) for w in range(1, 11)])
    g, s = nnx.split(model)
    traces = []

    @jax.jit
    def fwd(s, x, sub):
        traces.append(1)
        return nnx.merge(g, s)(x, sub)

    x = images(n=2, size=8)
    outs = [fwd(s, x, SubModel.of(**c)) for c in pool.configs()]
    assert len(pool.configs()) == 160 and len(traces) == 1 and fwd._cache_size() == 1
    assert len({np.asarray(o).round(5).tobytes() for o in outs}) > 150  # really different sub-models


def test_flops_match_xla_cost_and_shrink():
    model = cc.set_eval(tiny_mobilenet("instance"))
    full = flops.macs(model, {}, (16, 16))
    for sizes in ({"depth": 2, "width": 1}, {"depth": 5, "width": 4}, {"depth": 3, "width": 2}):
        small = cc.extract_cnn(model, sizes)
        ours = flops.macs(model, sizes, (16, 16))
        assert ours == flops.macs(small, {}, (16, 16))
        cost = jax.jit(lambda x: small(x)).lower(images(n=1)).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        assert 2 * ours <= cost["flops"] <= 2 * ours * 1.6, (ours, cost["flops"])
        assert ours <= full
    r = resnet.cpreresnet20()
    assert [round(flops.mflops(r, {"width": k}), 1) for k in (4, 2)] == [40.8, 10.3]


def test_bad_inputs_raise():
    model = tiny_mobilenet("batch")
    with pytest.raises(ValueError, match="depth 6 outside the allowed range 1..5"):
        model(images(), SubModel.of(depth=6))
    with pytest.raises(ValueError, match="width 5 outside"):
        model(images(), SubModel.of(width=5))
    with pytest.raises(ValueError, match="B x H x W x 3"):
        model(jnp.zeros((2, 8, 8, 1)))
    with pytest.raises(ValueError, match="norm 'layer' unknown"):
        resnet.ResNetConfig(norm="layer")
    with pytest.raises(ValueError, match="width_mult must be > 0"):
        mb.config(0.0)
    with pytest.raises(ValueError, match="cannot be residual"):
        mb.MobileNetV2Config(stem=8, blocks=((48, 16, 1, True, True),))


def test_mobilenet_depth_skip_modes_agree_in_training():
    """cond and select give the same loss, gradients and BatchNorm statistics in train mode: a
    block past the depth contributes nothing and its statistics stay as they were."""
    x, y = images(n=4), jnp.asarray([0, 1, 2, 3])
    sub = SubModel.of(depth=jnp.int32(3), width=jnp.int32(2))
    results = {}
    for skip in ("cond", "select"):
        model = tiny_mobilenet("batch", skip)
        g, params, rest = nnx.split(model, nnx.Param, ...)

        @jax.jit
        def step(params, rest):
            def loss(params, rest):
                m = nnx.merge(g, params, rest, copy=True)  # fresh Variables: the forward updates statistics
                logits = m(x, sub)
                return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), y]), nnx.state(m, nnx.BatchStat)

            return jax.grad(loss, has_aux=True)(params, rest)

        results[skip] = step(params, rest)
    (g_c, s_c), (g_s, s_s) = results["cond"], results["select"]
    for a, b in zip(jax.tree.leaves(g_c), jax.tree.leaves(g_s)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(s_c), jax.tree.leaves(s_s)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    untouched = tiny_mobilenet("batch")  # block 4 (index 3) is past depth 3: statistics unchanged
    np.testing.assert_array_equal(
        s_s["blocks"]["layers"][3]["norm1"]["mean"][...], untouched.blocks.layers[3].norm1.mean[...]
    )
    assert not np.allclose(s_s["blocks"]["layers"][1]["norm1"]["mean"][...], untouched.blocks.layers[1].norm1.mean[...])
    with pytest.raises(ValueError, match="depth_skip must be one of"):
        mb.config(1.0, stages=STAGES, depth_skip="where")
