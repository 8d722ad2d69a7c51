"""One compiled program for every sub-model: the full model, ``SubModel.of(depth=3)``,
``SubModel.of(heads=2)``, ``SubModel.of(depth=2, width=30)`` and ``exit_layer=4`` reach the layers
as one pytree structure (the models fill unset sizes at their boundary, ``models.common.sizes``),
so after the first call none of them compiles again. Counted exactly: XLA backend compilations
(jax.monitoring's compile event, any program anywhere) and the cache sizes of the jitted functions.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sortedjax import decoding
from sortedjax.decoding import common, early_exit, plain, speculative
from sortedjax.models import encoder, gpt2, llama
from sortedjax.nn import eager
from sortedjax.submodel import SubModel

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
VARIANTS = [  # after the full model: each must add no compilation
    dict(sub=SubModel.of(depth=3)),
    dict(sub=SubModel.of(heads=2)),
    dict(sub=SubModel.of(depth=2, width=30)),
    dict(exit_layer=4),
]


@contextlib.contextmanager
def compilations():
    """A list that collects one entry per XLA backend compilation while the block runs."""
    seen = []

    def listen(event, duration, **kwargs):
        if event == COMPILE_EVENT:
            seen.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


@pytest.fixture(scope="module")
def tiny_llama():
    cfg = llama.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return llama.Llama(cfg, rngs=nnx.Rngs(0))


TOKENS = jnp.array([[5, 9, 33, 7, 12, 40], [17, 3, 22, 1, 2, 50]], jnp.int32)


def test_the_counter_sees_compilations():
    x, y, z = jnp.arange(7.0), jnp.ones(7), jnp.ones(3)
    f = jax.jit(lambda x: x * 3 + 1)
    with compilations() as seen:
        f(x)
        f(y)  # the same shape: the cached program
        f(z)  # another shape: a second program
    assert len(seen) == 2 and f._cache_size() == 2


def test_eager_calls_of_every_submodel_share_one_program(tiny_llama):
    model = tiny_llama
    full = model(TOKENS)
    programs = eager._run._cache_size()
    with compilations() as seen:
        outs = [model(TOKENS, **kw) for kw in VARIANTS]
    assert len(seen) == 0 and eager._run._cache_size() == programs
    np.testing.assert_array_equal(outs[-1], full)  # exit_layer=4 is the full model
    np.testing.assert_allclose(outs[0], model(TOKENS, sub=SubModel.of(depth=3)))


def test_a_jitted_function_of_filled_submodels_compiles_once(tiny_llama):
    """A sub-model passed into the caller's own ``jax.jit`` is part of its argument structure (a
    ``None`` field is structure): fill it against ``model.limits`` first, and one program serves all."""
    model = tiny_llama
    limits = model.limits
    assert jax.tree.structure(SubModel.of(depth=3)) != jax.tree.structure(SubModel.of(heads=2))
    assert jax.tree.structure(SubModel.of(depth=3).filled(limits)) == jax.tree.structure(SubModel().filled(limits))
    graphdef, state = nnx.split(model)
    f = jax.jit(lambda state, tokens, sub: nnx.merge(graphdef, state)(tokens, sub=sub))
    f(state, TOKENS, SubModel().filled(limits))
    with compilations() as seen:
        for kw in VARIANTS:
            sub = kw.get("sub") or SubModel.of(depth=kw["exit_layer"])
            out = f(state, TOKENS, sub.filled(limits))
            np.testing.assert_allclose(out, model(TOKENS, **kw), atol=1e-5, rtol=1e-5)
    assert len(seen) == 0 and f._cache_size() == 1


def test_decoding_every_submodel_compiles_once(tiny_llama):
    model = tiny_llama
    prompt = np.asarray(TOKENS)
    decoding.generate(model, prompt, max_new_tokens=5)
    decoding.speculative_generate(model, prompt, max_new_tokens=5, draft_exit=1)
    decoding.early_exit_generate(model, prompt, max_new_tokens=5, exits=(1, 2), threshold=0.5)
    loops = (plain.decode_loop, speculative.speculate_loop, early_exit.early_exit_loop, common.prefill)
    sizes = [f._cache_size() for f in loops]
    with compilations() as seen:
        for kw in VARIANTS:
            decoding.generate(model, prompt, max_new_tokens=5, **kw)
            sub = kw.get("sub") or SubModel.of(depth=kw["exit_layer"])
            decoding.speculative_generate(model, prompt, max_new_tokens=5, draft_exit=1, sub=sub)
            decoding.early_exit_generate(model, prompt, max_new_tokens=5, exits=(1, 2), threshold=0.5, sub=sub)
    assert len(seen) == 0 and [f._cache_size() for f in loops] == sizes


def test_gpt2_and_encoder_submodels_share_one_program():
    g = gpt2.GPT2(
        gpt2.GPT2Config(
            vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=32
        ),
        rngs=nnx.Rngs(1),
    )
    e = encoder.Encoder(
        encoder.EncoderConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=32,
        ),
        rngs=nnx.Rngs(2),
    )
    g(TOKENS)
    e(TOKENS)
    with compilations() as seen:
        for kw in VARIANTS:
            g(TOKENS, **kw)
            e(TOKENS, sub=kw.get("sub") or SubModel.of(depth=kw["exit_layer"]))
    assert len(seen) == 0
