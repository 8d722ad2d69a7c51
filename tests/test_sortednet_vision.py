"""Table 4.2's training rules on one model code, and the vision experiment end to end (tiny)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sortedjax.methods import slimmable
from sortedjax.models import resnet
from sortedjax.submodel import Dim, Pool, SubModel


def tiny():
    model = resnet.cpreresnet20("instance", base=2, width_levels=4)
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.normal(size=(4, 8, 8, 3)), jnp.float32), "y": jnp.asarray([0, 1, 2, 3])}
    return model, batch


def per_width(model, batch):
    f = jax.jit(
        lambda g, s, sub: slimmable.cross_entropy(nnx.merge(g, s)(batch["x"], sub), batch["y"]), static_argnums=0
    )
    g, s = nnx.split(model)
    return {w: float(f(g, s, SubModel.of(width=w))) for w in (1, 2, 3, 4)}


def test_rules_sum_the_right_submodels():
    model, batch = tiny()
    each = per_width(model, batch)
    pool = Pool({"width": Dim(support=(1, 2, 3, 4))})
    g, s = nnx.split(model)

    def rule(method, **kw):
        loss = slimmable.make_loss(method, pool, **kw)
        return jax.jit(lambda s: loss(nnx.merge(g, s), batch, jax.random.PRNGKey(0)))(s)

    ns, _ = rule("ns")
    np.testing.assert_allclose(ns, sum(each.values()), rtol=1e-5)
    plain, _ = rule("plain")
    np.testing.assert_allclose(plain, each[4], rtol=1e-5)
    us, _ = rule("us", n_random=0)  # sandwich: largest + smallest
    np.testing.assert_allclose(us, each[4] + each[1], rtol=1e-5)
    us2, _ = rule("us", n_random=2)
    extra = float(us2) - each[4] - each[1]
    assert any(abs(extra - each[a] - each[b]) < 1e-4 for a in each for b in each)
    one, m = rule("sortednet")
    w = int(m["sub_width"])
    np.testing.assert_allclose(one, each[w], rtol=1e-5)
    assert slimmable.sandwich_passes("ns", pool) == 4 and slimmable.sandwich_passes("us", pool) == 4


def test_bad_rule_raises():
    pool = Pool({"width": Dim(support=(1, 2))})
    with pytest.raises(ValueError, match="unknown training method 'lcs'"):
        slimmable.make_loss("lcs", pool)
    with pytest.raises(ValueError, match="n_random must be >= 0"):
        slimmable.make_loss("us", pool, n_random=-1)


def test_subset_selection_is_pareto_over_threshold():
    from experiments.sortednet_vision.parts import select_subset

    cells = [
        {"depth": 2, "width": 1, "mflops": 1.0, "accuracy": 50.0, "recovery": 55.0},
        {"depth": 3, "width": 2, "mflops": 2.0, "accuracy": 90.0, "recovery": 95.0},
        {"depth": 4, "width": 2, "mflops": 3.0, "accuracy": 89.0, "recovery": 94.0},
        {"depth": 5, "width": 5, "mflops": 4.0, "accuracy": 95.0, "recovery": 99.0},
    ]
    chosen = select_subset(cells, 90.0)
    assert [(c["depth"], c["width"]) for c in chosen] == [(3, 2), (5, 5)]


@pytest.mark.slow
def test_experiment_tiny_end_to_end(tmp_path):
    from experiments import sortednet_vision

    args = ["--workdir", str(tmp_path), "--steps", "4", "--grid-steps", "4", "--batch", "16", "--seeds", "0,1", "--resnet-base", "2",
            "--mbv2-width-mult", "0.1", "--mbv2-last", "16", "--g-accs", "1,2", "--no-progress",
            "--recovery-threshold", "1"]  # fmt: skip
    res = sortednet_vision.main(args)
    grid = res["grid"]
    assert len(grid["cells"]) == 160 and grid["compilations_for_all_submodels"] == 1
    assert {c["depth"] for c in grid["cells"]} == set(range(2, 18))
    assert all(0 <= c["accuracy"] <= 100 for c in grid["cells"])
    mf = {(c["depth"], c["width"]): c["mflops"] for c in grid["cells"]}
    assert mf[(2, 1)] < mf[(17, 1)] < mf[(17, 10)]
    assert res["subset"]["chosen"] and all("retrained_accuracy" in c for c in res["subset"]["chosen"])
    rows = res["table42"]["rows"]
    assert {(r["norm"], r["method"]) for r in rows} == {
        (n, m) for n in ("instance", "batch") for m in slimmable.METHODS
    }
    assert next(r for r in rows if r["method"] == "ns" and r["norm"] == "batch")["bn"] == "batch_private"
    assert res["table42"]["mflops"]["100%"] > res["table42"]["mflops"]["25%"]
    assert [r["updates"] for r in res["gacc"]["rows"]] == [4, 4, 4, 2]
    assert res["time"]["lcs_p_over_sortednet/instance"] > 0
    for f in ("results.json", "fig4_2_accuracy.png", "fig4_2_recovery.png", "fig4_5_subset.png"):
        assert os.path.getsize(tmp_path / f) > 0
    assert json.load(open(tmp_path / "results.json"))["grid"]["baseline_full_accuracy"] >= 0


def test_fit_augments_per_step_and_refuses_unknown():
    """crop changes training (same seed, other params), is reproducible, and 'auto' picks by data set."""
    from experiments import sortednet_vision
    from experiments.sortednet_vision.train import fit
    from sortedjax.data.vision import VisionData

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 10, 16).astype(np.int32)
    data = VisionData(name="toy", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4], num_classes=10)
    pool = Pool({"width": Dim(support=(1, 2, 3, 4))})

    def run(augment):
        model = resnet.cpreresnet20("instance", base=2, width_levels=4)
        r = fit(model, data, "sortednet", pool, steps=2, batch=8, lr=1e-2, seed=0, progress=False, augment=augment)
        return nnx.state(r.model, nnx.Param)

    plain, crop, crop2 = run("none"), run("crop"), run("crop")
    leaves = lambda s: jax.tree.leaves(s)  # noqa: E731
    assert all(np.array_equal(a, b) for a, b in zip(leaves(crop), leaves(crop2)))
    assert not all(np.allclose(a, b) for a, b in zip(leaves(plain), leaves(crop)))
    with pytest.raises(ValueError, match="augment must be one of"):
        run("rotate")
    assert sortednet_vision.Config(data="cifar10").augmentation == "crop_flip"
    assert sortednet_vision.Config().augmentation == "none"
    assert sortednet_vision.Config(augment="crop").augmentation == "crop"
