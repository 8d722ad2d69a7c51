"""Memory plans: the abstract (no weights) compile predicts the real step's memory; the search; presets."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sortedjax import sharding as shd
from sortedjax.methods import soft
from sortedjax.models.llama import Llama, LlamaConfig
from sortedjax.planning import memory, plan
from sortedjax.train import TrainConfig, jit_train_step, make_optimizer
from sortedjax.train.step import init_opt_state, split_model

CFG = LlamaConfig(
    vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, remat="full",
)  # fmt: skip
SPEC = plan.StepSpec(mode="soft", batch=16, seq=32, exits=(2, 4), opt_state_dtype=None)


def _real_step(mesh):
    """The step training runs (the same split, shardings and jit as train()), for real arrays, then run."""
    model = Llama(CFG, rngs=nnx.Rngs(0))
    graphdef, params, state, rest = split_model(model)
    tx = make_optimizer(TrainConfig(workdir="", steps=1, optimizer="adamw", grad_clip_norm=1.0))
    loss = soft.make_loss(soft.SoftConfig(mode="soft", exits=(2, 4), num_layers=4))
    rng = np.random.default_rng(0)
    tok = rng.integers(0, 128, (16, 33)).astype(np.int32)
    batch = shd.shard_batch({"inputs": tok[:, :-1], "targets": tok[:, 1:], "mask": np.ones((16, 32), np.float32)}, mesh)
    jstep, sh = jit_train_step(graphdef, loss, tx, params, state, rest, mesh=mesh)  # as train() builds it
    params, state, rest = (
        jax.device_put(params, sh.params),
        jax.device_put(state, sh.state),
        jax.device_put(rest, sh.rest),
    )
    opt = init_opt_state(tx, params, sh)
    args = (params, opt, state, rest, batch, jax.random.PRNGKey(0))
    with shd.use_mesh(mesh):
        compiled = jstep.lower(*args).compile()
        _, _, _, metrics = compiled(*args)
    return memory.device_bytes(compiled), float(metrics["loss"])


@pytest.mark.slow
def test_plan_predicts_the_real_step():
    mesh = shd.make_mesh("data:2,fsdp:4")
    predicted = plan.plan(CFG, mesh, SPEC)
    actual, loss = _real_step(mesh)
    assert np.isfinite(loss)
    assert predicted["per_device_bytes"] == actual.as_dict()
    assert predicted["remat"] == "full" and predicted["micro_batch"] == 16
    assert set(predicted["fits"]) == set(memory.ACCELERATORS) and all(predicted["fits"].values())
    # per device: the 8-way sharded arguments are far smaller than the whole state
    n = plan.num_params(CFG)
    assert predicted["per_device_bytes"]["arguments"] < 3 * 4 * n / 2


@pytest.mark.slow
def test_search_picks_largest_micro_batch_that_fits(monkeypatch):
    mesh = shd.make_mesh("data:1,fsdp:8")
    spec = dataclasses.replace(SPEC, batch=32, seq=64)
    small = plan.plan(CFG, mesh, dataclasses.replace(spec, grad_accum=4))  # micro-batch 8
    big = plan.plan(CFG, mesh, dataclasses.replace(spec, grad_accum=2))  # micro-batch 16
    assert plan.total_bytes(big) > plan.total_bytes(small)
    monkeypatch.setitem(memory.ACCELERATORS, "tiny", (plan.total_bytes(small) + plan.total_bytes(big)) // 2)
    out = plan.search(CFG, mesh, spec, "tiny", policies=("full",))
    assert (out["remat"], out["micro_batch"], out["grad_accum"]) == ("full", 8, 4)
    monkeypatch.setitem(memory.ACCELERATORS, "tiny", plan.total_bytes(small) // 2)
    with pytest.raises(ValueError, match="nothing fits tiny"):
        plan.search(CFG, mesh, spec, "tiny", policies=("full",))


def test_presets_and_bad_input(tmp_path):
    assert round(plan.num_params(plan.model_config("llama2-13b")) / 1e9, 2) == 13.02
    assert plan.model_config("llama3-8b").num_key_value_heads == 8
    (tmp_path / "config.json").write_text('{"vocab_size": 100, "hidden_size": 16, "intermediate_size": 32, '
                                          '"num_hidden_layers": 2, "num_attention_heads": 2}')  # fmt: skip
    assert plan.model_config(str(tmp_path)).hidden_size == 16
    with pytest.raises(ValueError, match="neither a preset"):
        plan.model_config("llama9-1t")
    with pytest.raises(ValueError, match="data-parallel size"):
        plan.micro_batches(12, shd.make_mesh("data:1,fsdp:8"))
    with pytest.raises(ValueError, match="accelerator 'TPU-v9' unknown"):
        memory.check_accelerator("TPU-v9")
    with pytest.raises(ValueError, match="mode"):
        plan.StepSpec(mode="dpo")


def test_float32_optimizer_state_for_bfloat16_params():
    tx = make_optimizer(TrainConfig(workdir="", steps=1, optimizer="adamw", opt_state_dtype="float32"))
    params = {"w": jnp.ones((4,), jnp.bfloat16)}
    state = tx.init(params)
    assert {x.dtype for x in jax.tree.leaves(state) if x.ndim} == {jnp.dtype("float32")}
    updates, _ = tx.update({"w": jnp.full((4,), 0.5, jnp.bfloat16)}, state, params)
    assert updates["w"].dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="opt_state_dtype"):
        TrainConfig(workdir="", steps=1, opt_state_dtype="float16")


@pytest.mark.slow
def test_plan_command_writes_json(tmp_path, capsys):
    import json

    from experiments import plan as plan_exp

    (tmp_path / "config.json").write_text(json.dumps(CFG.to_hf()))
    out = tmp_path / "plan.json"
    argv = ["--model", str(tmp_path), "--mesh", "8", "--seq", "32", "--batch", "8", "--dtype", "float32"]
    plan_exp.main(argv + ["--remat", "full", "--exits", "2,4", "--out", str(out)])
    res = json.loads(out.read_text())
    assert {"per_device_bytes", "fits", "remat", "micro_batch"} <= set(res)
    assert res["remat"] == "full" and res["micro_batch"] == 8 and res["fits"]["TPU-v5e"] is True
    assert res["compare"]["soft_over_sft"] > 0
    printed = capsys.readouterr().out
    assert "soft over sft per device" in printed and "TPU-v4" in printed
    with pytest.raises(SystemExit):  # a bad flag is an argparse error naming it
        plan_exp.main(argv + ["--policies", "lots"])
