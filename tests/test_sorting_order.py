import json

import numpy as np

from experiments import sorting_order


def test_order_masks():
    m = sorting_order.order_masks(4)
    np.testing.assert_array_equal(m["target"][1], [1, 1, 0, 0])
    np.testing.assert_array_equal(m["reverse"][0], [0, 0, 0, 1])
    np.testing.assert_array_equal(m["reverse"][3], [1, 1, 1, 1])


def test_data_is_balanced_and_deterministic():
    x1, y1 = sorting_order.make_data(1000, 42)
    x2, y2 = sorting_order.make_data(1000, 42)
    np.testing.assert_array_equal(x1, x2)
    assert np.bincount(y1).tolist() == [250] * 4
    np.testing.assert_allclose(x1[y1 == 2].mean(0), [2.0, 0.0], atol=0.1)
    np.testing.assert_allclose(x1[y1 == 1].std(0), [1.0, 1.0], atol=0.12)


def test_small_run_sorts_neurons(tmp_path):
    res = sorting_order.main(["--workdir", str(tmp_path), "--seeds", "1", "--epochs", "4"])
    saved = json.loads((tmp_path / "results.json").read_text())
    for method in ("ordinary", "sortednet"):
        for order in ("target", "reverse"):
            assert len(saved[method][order]) == 10
    # both orders keep all 10 neurons at k=10
    assert saved["sortednet"]["target"][9] == saved["sortednet"]["reverse"][9]
    assert res["sortednet"]["target_avg"] > res["sortednet"]["reverse_avg"] + 15
    assert (tmp_path / "accuracy_vs_k.png").stat().st_size > 10_000
