import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sortedjax import objectives, sharding
from sortedjax.models.mlp import MLPConfig, SortedMLP
from sortedjax.submodel import Dim, Pool
from sortedjax.train import ArrayBatches, TrainConfig, make_optimizer, make_train_step, train

CFG = MLPConfig(in_dim=4, hidden=16, out_dim=3, num_blocks=3)
POOL = Pool({"width": Dim.range(1, 16), "depth": Dim.range(1, 3)})


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0).astype(np.int32)
    return {"x": x, "y": y}


def _loss(model, batch, key):
    def loss_of(sub):
        logits = model(batch["x"], sub)
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(len(batch["y"])), batch["y"]]), {}

    return objectives.stochastic(loss_of, POOL, key)


def _params(model):
    return {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_many_submodels_compile_once(tmp_path):
    model = SortedMLP(CFG, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    cfg = TrainConfig(workdir=str(tmp_path), steps=1)
    tx = make_optimizer(cfg)
    step = jax.jit(make_train_step(graphdef, _loss, tx), donate_argnums=(0, 1))
    opt = tx.init(params)
    data = ArrayBatches(_data(), 16)
    seen = set()
    for i in range(20):
        params, opt, m = step(params, opt, (rest,), jax.tree.map(jnp.asarray, data(i)), jax.random.PRNGKey(i))
        seen.add((int(m["sub_width"]), int(m["sub_depth"])))
    assert len(seen) >= 10  # many different sub-models went through the step...
    assert step._cache_size() == 1  # ...with one compilation


def _run(workdir, steps, data, **kw):
    cfg = TrainConfig(
        workdir=str(workdir), steps=steps, learning_rate=0.01, checkpoint_every=4, log_every=1, progress=False, **kw
    )
    return train(SortedMLP(CFG, rngs=nnx.Rngs(0)), _loss, data, cfg)


def test_interrupted_run_resumes_exactly(tmp_path):
    data = ArrayBatches(_data(), 16, seed=3)
    ref = _run(tmp_path / "ref", 11, data)

    def interrupting(step):
        if step == 6:
            raise KeyboardInterrupt
        return data(step)

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "run", 11, interrupting)
    part = _run(tmp_path / "run", 11, data)  # restart in the same workdir
    assert part.resumed_from == 6
    a, b = _params(ref.model), _params(part.model)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 12))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref.history]


def test_hard_kill_resumes_from_last_checkpoint(tmp_path):
    data = ArrayBatches(_data(), 16, seed=3)
    ref = _run(tmp_path / "ref", 10, data)

    class Killed(Exception):
        pass

    def dying(step):
        if step == 6:
            raise Killed
        return data(step)

    with pytest.raises(Killed):
        _run(tmp_path / "run", 10, dying)  # checkpoint at step 4 only
    part = _run(tmp_path / "run", 10, data)
    assert part.resumed_from == 4
    for k, v in _params(ref.model).items():
        np.testing.assert_array_equal(v, _params(part.model)[k])


def test_nan_stops_with_message(tmp_path):
    data = _data()
    data["x"][5, 0] = np.nan
    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        _run(tmp_path, 5, ArrayBatches(data, 64, shuffle=False))


def test_eight_device_step_equals_single_device(tmp_path):
    mesh = sharding.make_mesh("data:2,fsdp:4")
    data = ArrayBatches(_data(), 16, seed=1)
    common = dict(steps=5, learning_rate=0.01, progress=False, checkpoint_every=100, grad_accum=2)
    single = train(SortedMLP(CFG, rngs=nnx.Rngs(0)), _loss, data, TrainConfig(workdir=str(tmp_path / "a"), **common))
    sharded = train(
        SortedMLP(CFG, rngs=nnx.Rngs(0)), _loss, data, TrainConfig(workdir=str(tmp_path / "b"), **common), mesh=mesh
    )
    w = nnx.state(sharded.model, nnx.Param)["blocks"]["layers"]["dense"]["kernel"][...]
    assert len(w.sharding.device_set) == 8 and w.sharding.spec[1] == "fsdp"  # really sharded
    a, b = _params(single.model), _params(sharded.model)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=1e-5, err_msg=k)


def test_config_and_mesh_errors():
    with pytest.raises(ValueError, match="schedule 'poly' unknown"):
        TrainConfig(workdir="x", steps=1, schedule="poly")
    with pytest.raises(ValueError, match="unknown mesh axis 'model'; allowed axes are"):
        sharding.parse_mesh_spec("data:2,model:4")
    with pytest.raises(ValueError, match="needs 16 devices but only 8 exist"):
        sharding.make_mesh("16")
    assert sharding.parse_mesh_spec("8") == {"data": 1, "fsdp": 8, "tensor": 1}
    assert sharding.parse_mesh_spec("data:2,fsdp:4,tensor:1") == {"data": 2, "fsdp": 4, "tensor": 1}
