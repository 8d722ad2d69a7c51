import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sortedjax import nn, sharding
from sortedjax.methods import objectives
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


def _run(workdir, steps, data, *, model=None, run_config=None, restart=False, allow_changes=(), **kw):
    kw = dict(learning_rate=0.01, checkpoint_every=4, log_every=1, progress=False) | kw
    cfg = TrainConfig(workdir=str(workdir), steps=steps, **kw)
    model = model or SortedMLP(CFG, rngs=nnx.Rngs(0))
    return train(model, _loss, data, cfg, run_config=run_config, restart=restart, allow_changes=allow_changes)


def _assert_same_params(a, b):
    a, b = _params(a), _params(b)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_caller_model_stays_usable(tmp_path):
    """The step donates its parameter buffers; the caller's model must not lose its arrays."""
    model = SortedMLP(CFG, rngs=nnx.Rngs(0))
    before, x = _params(model), _data()["x"][:8]
    y = np.asarray(model(x))
    res = _run(tmp_path, 5, ArrayBatches(_data(), 16), model=model)  # donate=True (the default)
    np.testing.assert_array_equal(np.asarray(model(x)), y)
    for k, v in _params(model).items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert any(not np.array_equal(v, before[k]) for k, v in _params(res.model).items())
    res.model(x)  # the trained model is usable too, and shares no Variables with the caller's
    assert res.model.inp.kernel is not model.inp.kernel


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
    _assert_same_params(ref.model, part.model)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
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
    _assert_same_params(ref.model, part.model)


def test_changed_configuration_is_refused_with_the_differences(tmp_path):
    data = ArrayBatches(_data(), 16, seed=3)
    _run(tmp_path, 4, data, run_config={"task": "a", "width": 16})
    # how a run is shown or saved is not its configuration
    again = _run(tmp_path, 4, data, run_config={"task": "a", "width": 16}, log_every=2, checkpoint_every=3, desc="x")
    assert again.resumed_from == 4
    with pytest.raises(ValueError) as err:
        _run(tmp_path, 6, data, run_config={"task": "b", "width": 16}, learning_rate=0.02, log_every=3, desc="y")
    msg = str(err.value)
    assert f"workdir {tmp_path} holds a run with a different configuration" in msg
    assert "learning_rate: 0.01 (stored) -> 0.02 (now)" in msg
    assert "steps: 4 (stored) -> 6 (now)" in msg
    assert "run_config.task: 'a' (stored) -> 'b' (now)" in msg
    assert "restart=True" in msg and "allow_changes=('learning_rate', 'steps', 'task')" in msg
    assert not any(f in msg for f in ("log_every", "desc", "progress", "checkpoint_every", "width"))
    with pytest.raises(
        ValueError, match=r"data.arrays.x: 'float32\[64,4\] \w+' \(stored\) -> 'float32\[64,4\] \w+' \(now\)"
    ):
        _run(tmp_path, 4, ArrayBatches(_data(seed=1), 16, seed=3), run_config={"task": "a", "width": 16})
    small = SortedMLP(dataclasses.replace(CFG, hidden=8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError) as err:
        _run(tmp_path, 4, data, model=small, run_config={"task": "a", "width": 16})
    msg = str(err.value)
    assert "trainable inp/kernel: float32[4,16] (stored) -> float32[4,8] (now)" in msg
    assert "cannot continue with this model" in msg and "allow_changes" not in msg


def test_allow_changes_continues_the_stored_run(tmp_path):
    data = ArrayBatches(_data(), 16, seed=3)
    ref = _run(tmp_path / "ref", 8, data)
    _run(tmp_path / "run", 4, data)
    with pytest.raises(ValueError, match=r"allow_changes names \['stepz'\]"):
        _run(tmp_path / "run", 8, data, allow_changes=("stepz",))
    longer = _run(tmp_path / "run", 8, data, allow_changes=("steps",))
    assert (longer.resumed_from, longer.step) == (4, 8)
    _assert_same_params(ref.model, longer.model)  # constant schedule: 4 + 4 steps == 8 steps
    record = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert record["train"]["steps"] == 8 and record["changes"] == [{"step": 4, "steps": [4, 8]}]
    assert _run(tmp_path / "run", 8, data).resumed_from == 8  # the new configuration is the stored one now


def test_restart_moves_the_old_run_aside(tmp_path):
    data = ArrayBatches(_data(), 16, seed=3)
    _run(tmp_path, 4, data)
    res = _run(tmp_path, 4, data, learning_rate=0.02, restart=True)
    assert res.resumed_from is None and res.step == 4
    (old,) = (tmp_path / "old").iterdir()
    assert json.loads((old / "run_config.json").read_text())["train"]["learning_rate"] == 0.01
    assert (old / "checkpoints" / "4").is_dir() and (old / "metrics.jsonl").exists()
    assert json.loads((tmp_path / "run_config.json").read_text())["train"]["learning_rate"] == 0.02


class _BNNet(nnx.Module):
    """Linear -> BatchNorm -> Linear, and an RNG stream the loss draws from (its state must not move)."""

    def __init__(self, rngs: nnx.Rngs):
        self.dense = nnx.Linear(
            4, 8, use_bias=False, rngs=rngs
        )  # a bias before BN has gradient 0 (+ noise Adam amplifies)
        self.bn = nn.BatchNorm(8)
        self.head = nnx.Linear(8, 3, rngs=rngs)
        self.rngs = nnx.Rngs(noise=7)

    def __call__(self, x):
        x = x + 0.01 * jax.random.normal(self.rngs.noise(), x.shape)
        return self.head(jax.nn.relu(self.bn(self.dense(x))))


def _bn_loss(model, batch, key):
    del key
    logits = model(batch["x"])
    return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(len(batch["y"])), batch["y"]]), {}


def _stats(model):
    return {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.BatchStat))}


def test_batchnorm_statistics_leave_train_as_a_hand_run_step_leaves_them(tmp_path):
    data = ArrayBatches(_data(), 16, seed=3)
    kw = dict(learning_rate=0.01, progress=False, checkpoint_every=100)
    cfg = TrainConfig(workdir=str(tmp_path / "a"), steps=2, **kw)
    init = _stats(_BNNet(nnx.Rngs(0)))
    res = train(_BNNet(nnx.Rngs(0)), _bn_loss, data, cfg)

    hand = _BNNet(nnx.Rngs(0))  # the same two steps, run by hand
    rng_state = jax.tree.map(jnp.copy, nnx.state(hand, nnx.RngState))  # a copy: nnx.state shares the Variables
    tx = make_optimizer(cfg)
    opt = tx.init(nnx.state(hand, nnx.Param))
    for t in range(2):
        nnx.update(hand, rng_state)  # every step starts from the model's RNG state (the key is the step's randomness)
        batch, key = jax.tree.map(jnp.asarray, data(t)), jax.random.fold_in(jax.random.PRNGKey(cfg.seed), t)
        (_, _), grads = nnx.value_and_grad(lambda m: _bn_loss(m, batch, key), has_aux=True)(hand)
        params = nnx.state(hand, nnx.Param)
        updates, opt = tx.update(grads, opt, params)
        nnx.update(hand, optax.apply_updates(params, updates))
    nnx.update(hand, rng_state)

    got, want = _stats(res.model), _stats(hand)
    assert got.keys() == want.keys() == init.keys() == {"bn/count", "bn/mean", "bn/var"}
    assert float(got["bn/count"]) == 2.0
    for k in ("bn/mean", "bn/var"):
        assert not np.allclose(got[k], init[k]), k  # the statistics moved...
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)  # ...as a hand-run step moves them
    for k, v in _params(hand).items():
        np.testing.assert_allclose(_params(res.model)[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    raw = lambda s: [np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
                     for x in jax.tree.leaves(s)]  # noqa: E731 # fmt: skip
    assert all(
        np.array_equal(a, b) for a, b in zip(raw(nnx.state(res.model, nnx.RngState)), raw(rng_state), strict=True)
    )

    # carried into checkpoints: 2 steps, then resumed to 4, equals 4 steps in one go
    four = train(_BNNet(nnx.Rngs(0)), _bn_loss, data, dataclasses.replace(cfg, workdir=str(tmp_path / "b"), steps=4))
    more = train(_BNNet(nnx.Rngs(0)), _bn_loss, data, dataclasses.replace(cfg, steps=4), allow_changes=("steps",))
    assert more.resumed_from == 2
    for k, v in _stats(four.model).items():
        np.testing.assert_array_equal(_stats(more.model)[k], v, err_msg=k)

    # gradient accumulation: each micro-batch sees the statistics the previous one left
    acc = train(
        _BNNet(nnx.Rngs(0)), _bn_loss, data, TrainConfig(workdir=str(tmp_path / "c"), steps=2, grad_accum=2, **kw)
    )
    assert float(_stats(acc.model)["bn/count"]) == 4.0


def test_nan_stops_with_message(tmp_path):
    data = _data()
    data["x"][5, 0] = np.nan
    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        _run(tmp_path, 5, ArrayBatches(data, 64, shuffle=False))


@pytest.mark.slow
def test_eight_device_step_equals_single_device(tmp_path):
    mesh = sharding.make_mesh("data:2,fsdp:4")
    data = ArrayBatches(_data(), 16, seed=1)
    common = dict(steps=5, learning_rate=0.01, progress=False, checkpoint_every=100, grad_accum=2)
    single = train(SortedMLP(CFG, rngs=nnx.Rngs(0)), _loss, data, TrainConfig(workdir=str(tmp_path / "a"), **common))
    model = SortedMLP(CFG, rngs=nnx.Rngs(0))
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, sharding.state_shardings(state, mesh)))  # already laid out on the mesh
    before = _params(model)
    sharded = train(model, _loss, data, TrainConfig(workdir=str(tmp_path / "b"), **common), mesh=mesh)
    for k, v in _params(model).items():  # the caller's sharded model kept its (donated-from) arrays
        np.testing.assert_array_equal(v, before[k], err_msg=k)
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


def test_finetune_recipe_fields_and_overrides():
    cfg = TrainConfig.finetune(workdir="w", steps=300, learning_rate=2e-4, seed=3, desc="d", grad_accum=2)
    assert (cfg.schedule, cfg.optimizer, cfg.warmup_steps, cfg.end_lr_factor) == ("warmup_cosine", "adamw", 30, 0.1)
    assert (cfg.grad_clip_norm, cfg.checkpoint_every, cfg.grad_accum, cfg.seed) == (1.0, 300, 2, 3)
    assert TrainConfig.finetune(workdir="w", steps=2000, learning_rate=1e-3, seed=0, desc="d").warmup_steps == 50
    with pytest.raises(ValueError, match="grad_accum must be >= 1"):
        TrainConfig.finetune(workdir="w", steps=10, learning_rate=1e-3, seed=0, desc="d", grad_accum=0)
