"""sortedjax.nn: every masked layer at size k equals the small layer built from sliced weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sortedjax import nn

TOL = dict(atol=1e-6, rtol=1e-6)


def rand(key, shape, scale=1.0):
    return scale * jax.random.normal(jax.random.PRNGKey(key), shape)


def randomize(module, seed=0):
    """Give every parameter (norm scales and biases included) random values."""
    state = nnx.state(module, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    nnx.update(module, jax.tree.unflatten(tree, [0.5 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]))
    return module


def test_linear_in_out_prefixes_equal_sliced_linear():
    big = randomize(nn.Linear(6, (4, 3), names=("embed", "heads", "head_dim"), rngs=nnx.Rngs(0)))
    x = rand(1, (2, 5, 6))
    f = jax.jit(lambda x, i, o: big(x, in_size=i, out_size=o))
    for i, o in [(6, 4), (2, 1), (5, 3)]:
        small = nn.Linear(i, (o, 3), names=("embed", "heads", "head_dim"), rngs=nnx.Rngs(1))
        small.kernel[...], small.bias[...] = big.kernel[...][:i, :o], big.bias[...][:o]
        got = f(x, i, o)
        np.testing.assert_allclose(got[..., :o, :], small(x[..., :i]), **TOL)
        assert not np.any(np.asarray(got[..., o:, :]))  # dropped outputs are exactly zero
    assert f._cache_size() == 1


def test_embed_width_prefix():
    e = nn.Embed(10, 8, rngs=nnx.Rngs(0))
    ids = jnp.array([[1, 9, 3]])
    out = e(ids, size=5)
    np.testing.assert_allclose(out[..., :5], e.embedding[...][ids][..., :5], **TOL)
    assert not np.any(np.asarray(out[..., 5:]))
    np.testing.assert_allclose(e.attend(out[:, 0]), out[:, 0] @ e.embedding[...].T, **TOL)


@pytest.mark.parametrize("groups", [1, "depthwise"])
def test_conv_channel_prefixes_equal_sliced_conv(groups):
    cin, cout = (6, 6) if groups == "depthwise" else (5, 7)
    g = cin if groups == "depthwise" else 1
    big = randomize(nn.Conv(cin, cout, 3, strides=2, groups=g, use_bias=True, rngs=nnx.Rngs(0)))
    x = rand(2, (2, 9, 9, cin))
    for i, o in [(cin, cout), (3, 3), (2, 4)]:
        if g > 1:
            i = o  # a depthwise conv keeps the same channels in and out
        small = nn.Conv(i, o, 3, strides=2, groups=i if g > 1 else 1, use_bias=True, rngs=nnx.Rngs(1))
        small.kernel[...] = big.kernel[...][:, :, : (1 if g > 1 else i), :o]
        small.bias[...] = big.bias[...][:o]
        got = big(x, in_size=i, out_size=o)
        np.testing.assert_allclose(got[..., :o], small(x[..., :i]), atol=1e-5, rtol=1e-5)
        assert not np.any(np.asarray(got[..., o:]))


@pytest.mark.parametrize("cls", [nn.LayerNorm, nn.RMSNorm, nn.InstanceNorm])
def test_norms_use_statistics_of_the_kept_width(cls):
    big = randomize(cls(8))
    x = rand(3, (2, 4, 4, 8), scale=3.0) + 1.0
    for k in (8, 5, 1):
        small = cls(k)
        nnx.update(small, jax.tree.map(lambda a: a[:k], nnx.state(big, nnx.Param)))
        got = jax.jit(lambda x, k: big(x, size=k))(x, k)
        np.testing.assert_allclose(got[..., :k], small(x[..., :k]), atol=2e-6, rtol=2e-6)
        assert not np.any(np.asarray(got[..., k:]))


def test_batchnorm_shared_private_and_recalibrated():
    x = rand(4, (16, 3, 3, 6), scale=2.0) + 0.5
    shared = randomize(nn.BatchNorm(6))
    small = nn.BatchNorm(4)
    nnx.update(small, jax.tree.map(lambda a: a[:4], nnx.state(shared, nnx.Param)))
    np.testing.assert_allclose(shared(x, size=4)[..., :4], small(x[..., :4]), atol=2e-6, rtol=2e-6)
    # batch statistics were folded into the running averages with momentum 0.9
    np.testing.assert_allclose(shared.mean[...], 0.1 * np.mean(np.asarray(x), (0, 1, 2)), atol=1e-6)

    private = nn.BatchNorm(6, mode="private", widths=(2, 4, 6))
    private(x, size=4)
    mean = np.asarray(private.mean[...])
    np.testing.assert_allclose(mean[1], 0.1 * np.mean(np.asarray(x), (0, 1, 2)), atol=1e-6)
    assert not mean[0].any() and not mean[2].any()  # other widths' statistics untouched
    with pytest.raises(ValueError, match="statistics for widths \\(2, 4, 6\\), not 3"):
        private(x, size=3)

    batches = [rand(10 + i, (8, 2, 2, 6)) * (i + 1) for i in range(3)]
    nn.recalibrate(shared, lambda m, b: m(b, size=6), batches)
    want = np.mean([np.mean(np.asarray(b), (0, 1, 2)) for b in batches], 0)
    np.testing.assert_allclose(shared.mean[...], want, atol=1e-5)
    assert shared.use_running_average
    y = shared(batches[0])  # evaluation: the stored statistics, nothing updated
    np.testing.assert_allclose(shared.mean[...], want, atol=1e-5)
    assert y.shape == batches[0].shape


def test_mlp_hidden_and_embed_prefixes():
    big = randomize(nn.MLP(6, 10, activation="silu", gated=True, use_bias=True, rngs=nnx.Rngs(0)))
    small = nn.MLP(4, 7, activation="silu", gated=True, use_bias=True, rngs=nnx.Rngs(1))
    small.gate.kernel[...], small.gate.bias[...] = big.gate.kernel[...][:4, :7], big.gate.bias[...][:7]
    small.up.kernel[...], small.up.bias[...] = big.up.kernel[...][:4, :7], big.up.bias[...][:7]
    small.down.kernel[...], small.down.bias[...] = big.down.kernel[...][:7, :4], big.down.bias[...][:4]
    x = rand(5, (3, 6)) * (jnp.arange(6) < 4)[None, :]  # the input beyond the kept width is zero
    got = big(x, hidden=7, embed=4)
    np.testing.assert_allclose(got[:, :4], small(x[:, :4]), **TOL)
    assert not np.any(np.asarray(got[:, 4:]))


def _small_attention(big, h, rope=None):
    r = big.group_size
    small = nn.Attention(
        big.q.in_shape[0], h, num_kv_heads=h // r, head_dim=big.head_dim, use_bias=True, rope=rope, rngs=nnx.Rngs(1)
    )
    for name, n in (("q", h), ("k", h // r), ("v", h // r)):
        getattr(small, name).kernel[...] = getattr(big, name).kernel[...][:, :n]
        getattr(small, name).bias[...] = getattr(big, name).bias[...][:n]
    small.o.kernel[...], small.o.bias[...] = big.o.kernel[...][:h], big.o.bias[...]
    return small


@pytest.mark.parametrize("causal,rope", [pytest.param(True, nn.RoPE(4), marks=pytest.mark.slow), (False, None)])
def test_attention_kept_heads_equal_sliced_attention(causal, rope):
    big = randomize(
        nn.Attention(8, 6, num_kv_heads=3, head_dim=4, use_bias=True, rope=rope, causal=causal, rngs=nnx.Rngs(0))
    )
    x = rand(6, (2, 5, 8))
    pos = jnp.broadcast_to(jnp.arange(5), (2, 5))
    pad = jnp.array([[True] * 5, [False, True, True, True, True]])[:, None, :]  # row 1 left-padded
    f = jax.jit(lambda x, h: big(x, mask=pad, positions=pos, heads=h))
    for h in (6, 4, 2):
        small = _small_attention(big, h, rope)
        small.causal = causal
        np.testing.assert_allclose(f(x, h), small(x, mask=pad, positions=pos), atol=2e-6, rtol=2e-6)
    assert f._cache_size() == 1


@pytest.mark.slow
def test_attention_kv_cache_chunks_equal_full_pass():
    att = randomize(nn.Attention(8, 4, num_kv_heads=2, rope=nn.RoPE(2), rngs=nnx.Rngs(0)))
    x = rand(7, (2, 6, 8))
    pos = jnp.broadcast_to(jnp.arange(6), (2, 6))
    full = att(x, positions=pos)
    cache = nn.KVCache.create(3, 2, 8, 2, 2)
    outs = []
    for start, stop in ((0, 4), (4, 5), (5, 6)):
        o, cache = att(
            x[:, start:stop],
            positions=pos[:, start:stop],
            cache=cache,
            layer=1,
            start=start,
            mask=cache.attention_mask(start, stop - start),
        )
        outs.append(o)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=2e-6, rtol=2e-6)
    assert not np.any(np.asarray(cache.k[0])) and not np.any(np.asarray(cache.k[1, :, 6:]))  # other layers/slots


class Scale(nnx.Module):
    def __init__(self, rngs):
        self.w = nnx.Param(jax.random.uniform(rngs.params(), (3,), minval=1.0, maxval=2.0))

    def __call__(self, h):
        return h * self.w[...].reshape((1,) * (h.ndim - 1) + (-1,))


class Record(nnx.Module):
    """``Scale`` that also writes its output to row ``layer`` of an array cache."""

    def __init__(self, rngs):
        self.scale = Scale(rngs)

    def __call__(self, h, *, cache, layer):
        out = self.scale(h)
        return out, cache.at[layer].set(out)


def test_layer_stack_returns_a_stack_output_with_the_fields_of_the_call():
    stack = nn.LayerStack(Scale, 3, rngs=nnx.Rngs(0))
    w = np.asarray(stack.layers.w[...])
    out = stack(jnp.ones(3))
    assert isinstance(out, nn.StackOutput) and out._fields == ("hidden", "exits", "cache", "hook_state")
    np.testing.assert_allclose(out.hidden, np.prod(w, 0), rtol=1e-6)
    assert out.exits is None and out.cache is None and out.hook_state is None
    out = nnx.jit(lambda s, d: s(jnp.ones(3), depth=d, exits=(1, 3)))(stack, jnp.int32(2))  # a pytree under jit
    assert isinstance(out, nn.StackOutput) and out.cache is None and out.hook_state is None
    np.testing.assert_allclose(out.hidden, np.prod(w[:2], 0), rtol=1e-6)
    np.testing.assert_allclose(out.exits, [w[0], np.prod(w[:2], 0)], rtol=1e-6)  # exit 3 > depth 2
    rec = nn.LayerStack(Record, 3, rngs=nnx.Rngs(0))
    w = np.asarray(rec.layers.scale.w[...])
    want = np.stack([w[0], np.prod(w[:2], 0), np.zeros(3)])
    out = rec(jnp.ones(3), depth=2, cache=jnp.zeros((3, 3)))  # the decoding loop over the run layers
    assert isinstance(out, nn.StackOutput) and out.exits is None and out.hook_state is None
    np.testing.assert_allclose(out.hidden, want[1], rtol=1e-6)
    np.testing.assert_allclose(out.cache, want, rtol=1e-6)
    count = lambda i, h_in, h_out, n: (h_out, n + 1)  # noqa: E731
    out = rec(jnp.ones(3), depth=2, cache=jnp.zeros((3, 3)), exits=(1,), hook=count, hook_state=jnp.int32(0))
    np.testing.assert_allclose(out.cache, want, rtol=1e-6)  # the scan, as exits are collected
    np.testing.assert_allclose(out.exits, want[:1], rtol=1e-6)
    assert int(out.hook_state) == 2


def test_layer_stack_depth_gating_exits_and_one_compile():
    stack = nn.LayerStack(Scale, 5, rngs=nnx.Rngs(0))
    w = np.asarray(stack.layers.w[...])
    f = nnx.jit(lambda s, d: s(jnp.ones(3), depth=d, exits=(1, 3, 5)))
    out = f(stack, jnp.int32(3))
    np.testing.assert_allclose(out.hidden, np.prod(w[:3], 0), rtol=1e-6)
    np.testing.assert_allclose(out.exits, [w[0], np.prod(w[:3], 0), np.prod(w[:3], 0)], rtol=1e-6)  # exit 5 > depth
    for d in (1, 2, 4, 5):
        h = f(stack, jnp.int32(d)).hidden
        np.testing.assert_allclose(h, np.prod(w[:d], 0), rtol=1e-6)
    with pytest.raises(ValueError, match="depth 0 outside the allowed range 1..5"):
        stack(jnp.ones(3), depth=0)
    with pytest.raises(ValueError, match="exit 6 outside the allowed range 1..5"):
        stack(jnp.ones(3), exits=(6,))


def test_layer_stack_skipped_layers_do_not_run_and_get_no_gradient():
    stack = nn.LayerStack(Scale, 3, rngs=nnx.Rngs(0))
    stack.layers.w[...] = stack.layers.w[...].at[1:].set(jnp.nan)
    np.testing.assert_allclose(stack(jnp.ones(3), depth=1).hidden, stack.layers.w[...][0])
    g = nnx.grad(lambda s: s(jnp.ones(3), depth=1).hidden.sum())(stack)
    np.testing.assert_allclose(g["layers"]["w"][...], [[1.0] * 3, [0.0] * 3, [0.0] * 3])


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_layer_stack_remat_keeps_values_and_gradients(remat):
    mk = lambda r: nn.MLP(4, 8, activation="gelu", gated=False, rngs=r)  # noqa: E731
    plain, rem = nn.LayerStack(mk, 3, rngs=nnx.Rngs(0)), nn.LayerStack(mk, 3, rngs=nnx.Rngs(0), remat=remat)
    x = rand(8, (2, 4))
    loss = lambda s: jnp.sum(s(x, depth=2).hidden ** 2)  # noqa: E731
    np.testing.assert_allclose(loss(rem), loss(plain), **TOL)
    g1, g2 = nnx.grad(loss)(plain), nnx.grad(loss)(rem)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, g2)
    with pytest.raises(ValueError, match="remat policy 'some' unknown"):
        nn.LayerStack(mk, 2, rngs=nnx.Rngs(0), remat="some")


def test_layer_stack_of_heterogeneous_layers_gates_and_keeps_batch_stats():
    layers = [nn.BatchNorm(3), Scale(nnx.Rngs(1)), nn.BatchNorm(3)]
    stack = nn.LayerStack.of(layers)
    x = rand(9, (4, 3)) + 2.0
    stack(x, depth=2)
    assert stack.layers[0].count[...] == 1 and stack.layers[2].count[...] == 0  # layer 3 skipped
    np.testing.assert_allclose(stack.layers[0].mean[...], 0.1 * np.mean(np.asarray(x), 0), atol=1e-6)


class Widen(nnx.Module):
    """A shape-changing layer with a parameter-free ``skip`` (zero-padded features), scaled."""

    def __init__(self, cin, cout, rngs):
        self.cout = cout
        self.w = nnx.Param(jax.random.normal(rngs.params(), (cin, cout)))

    def __call__(self, h, *, scale=1.0):
        return scale * jnp.tanh(h @ self.w[...])

    def skip(self, h, *, scale=1.0):
        return jnp.pad(h, ((0, 0), (0, self.cout - h.shape[-1])))


class Normed(nnx.Module):
    def __init__(self, n):
        self.bn = nn.BatchNorm(n)

    def __call__(self, h, *, scale=1.0):
        return self.bn(h)


@pytest.mark.parametrize("gate", ["cond", "select"])
def test_layer_stack_skips_shape_changing_layers_with_their_skip(gate):
    r = nnx.Rngs(0)
    layers = [Widen(2, 3, r), Widen(3, 5, r), Normed(5), Widen(5, 6, r)]
    x = rand(3, (4, 2))
    stack = nn.LayerStack.of(layers)
    h0 = layers[0](x, scale=2.0)
    full = nnx.jit(lambda s, x, d: s(x, depth=d, gate=gate, scale=2.0).hidden)
    # depth 1: layer 1 runs, the others are their skips (a BatchNorm past the depth: the identity)
    np.testing.assert_allclose(full(stack, x, jnp.int32(1)), jnp.pad(h0, ((0, 0), (0, 3))), **TOL)
    h = layers[1](h0, scale=2.0)
    np.testing.assert_allclose(full(stack, x, jnp.int32(2)), jnp.pad(h, ((0, 0), (0, 1))), **TOL)
    assert stack.layers[2].bn.count[...] == 0  # the skipped BatchNorm kept its statistics
    full(stack, x, jnp.int32(4))
    assert stack.layers[2].bn.count[...] == 1
    with pytest.raises(ValueError, match="gate must be one of \\('cond', 'select'\\), got 'where'"):
        stack(x, depth=2, gate="where")


def test_layer_stack_hook_sees_every_executed_layer():
    stack = nn.LayerStack(Scale, 4, rngs=nnx.Rngs(0))

    def hook(i, h_in, h_out, seen):
        return h_out, seen.at[i].set(1)

    seen = stack(jnp.ones(3), depth=3, hook=hook, hook_state=jnp.zeros(4, jnp.int32)).hook_state
    np.testing.assert_array_equal(seen, [1, 1, 1, 0])
