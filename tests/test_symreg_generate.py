import numpy as np
import pytest

from symreg import generate
from symreg.benchmark_equations import load_benchmark_equations, sample_benchmark
from symreg.tokenizer import SkeletonTokenizer


def test_generate_dataset_ranges_and_points():
    report = {}
    train = generate.generate_dataset(20, n_vars=1, seed=3, report=report)
    assert len(train) == 20 and sum(report.values()) > 0
    assert set(report) <= {
        "nonfinite_y",
        "too_large_y",
        "no_variables",
        "complex_or_infinite_expr",
        "skeleton_too_long",
        "skeleton_not_in_vocab",
    }
    tok = SkeletonTokenizer()
    for inst in train:
        assert inst["X"].shape == (30, 1) and inst["X"].dtype == np.float32 and inst["y"].shape == (30,)
        assert np.all(np.abs(inst["X"]) <= 3) and np.all(np.isfinite(inst["y"]))
        assert np.all(np.abs(inst["y"]) <= 1e4) and tok.is_valid(inst["skeleton"])
    test = generate.generate_dataset(5, n_vars=2, seed=3, split="test")
    for inst in test:
        assert inst["X"].shape == (200, 2)
        assert np.all((np.abs(inst["X"]) >= 3) & (np.abs(inst["X"]) <= 5))
    wide = generate.generate_dataset(30, n_vars=(1, 9), seed=0)
    assert all(20 <= len(i["y"]) <= 250 and i["X"].shape[1] == i["n_vars"] for i in wide)
    assert len({i["n_vars"] for i in wide}) >= 5
    # deterministic, and independent of where generation starts (sharding)
    again = generate.generate_dataset(5, n_vars=1, seed=3, start=15)
    assert [i["expr"] for i in again] == [i["expr"] for i in train[15:]]
    np.testing.assert_array_equal(again[0]["y"], train[15]["y"])


def test_write_and_load_round_trip(tmp_path):
    cfg = generate.DatasetConfig(n_vars=(1, 3), n_points=(5, 9))
    m = generate.write_dataset(
        str(tmp_path), 7, seed=1, split="valid", cfg=cfg, shard_size=3, workers=1, progress=False
    )
    assert [s["n"] for s in m["shards"]] == [3, 3, 1]
    loaded = generate.load_dataset(str(tmp_path))
    mem = generate.generate_dataset(7, seed=1, split="valid", cfg=cfg)
    assert len(loaded) == 7
    for a, b in zip(loaded, mem):
        assert a["skeleton"] == b["skeleton"] and a["expr"] == b["expr"] and a["n_vars"] == b["n_vars"]
        np.testing.assert_array_equal(a["X"], b["X"])
        np.testing.assert_array_equal(a["y"], b["y"])


def test_cli_and_bad_config(tmp_path):
    generate.main(["--vars", "1", "--n", "4", "--seed", "0", "--out", str(tmp_path), "--workers", "1"])
    assert len(generate.load_dataset(str(tmp_path))) == 4
    with pytest.raises(ValueError, match="n_vars must be in 1..9"):
        generate.DatasetConfig(n_vars=(1, 12))
    with pytest.raises(ValueError, match="split must be one of"):
        generate.generate_dataset(1, split="dev")


def test_benchmark_equations():
    eqs = load_benchmark_equations()
    assert len(eqs) == 132
    n7 = load_benchmark_equations(["Nguyen-7"])[0]
    assert n7.ranges == ((0.0, 2.0),) and n7.n_points == 20
    inst = sample_benchmark(n7, seed=0)
    assert inst["X"].shape == (20, 1) and np.all((inst["X"] >= 0) & (inst["X"] <= 2))
    x = inst["X"][:, 0].astype(np.float64)
    np.testing.assert_allclose(inst["y"], np.log(x + 1) + np.log(x**2 + 1), rtol=1e-5)
    assert inst["skeleton"] == "log(C+x1)+log(C+x1**2)"
    for eq in eqs:
        y = sample_benchmark(eq, n_points=8, seed=1)["y"]
        assert y.shape == (8,) and np.all(np.isfinite(y)), eq.name
