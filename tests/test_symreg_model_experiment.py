"""experiments.symbolicgpt: flags -> Config, results.json shape, generated test protocol."""

import numpy as np
import pytest

from experiments import symbolicgpt as sg


def test_flags_make_a_validated_config():
    command, cfg = sg.parse_args(["train", "--setting", "2var", "--steps", "7", "--methods", "symbolicgpt,mlp"])
    assert command == "train" and cfg.setting == "2var" and cfg.steps == 7 and cfg.max_vars == 2
    assert cfg.methods == ("symbolicgpt", "mlp")
    command, cfg = sg.parse_args([])
    assert command == "all" and cfg.workdir == "runs/symbolicgpt" and cfg.setting == "1var"
    _, quick = sg.parse_args(["--quick", "--n-test", "2"])
    assert quick.preset == "tiny" and quick.n_test == 2
    with pytest.raises(ValueError, match="setting"):
        sg.Config(setting="4var")
    with pytest.raises(ValueError, match="methods"):
        sg.Config(methods=("symbolicgpt", "eureqa"))


def test_results_json_shape():
    recs = [{"test_set": "1var", "method": "symbolicgpt", "log10_mse_n": e, "seconds": s}
            for e, s in [(-12.0, 1.0), (-6.0, 2.0), (-1.0, 3.0), (float("inf"), 4.0)]]
    recs.append({"test_set": "nguyen", "method": "gplearn", "log10_mse_n": -3.0, "seconds": 5.0})
    res = sg.summarize(recs)
    assert res["1var"]["symbolicgpt"] == {"frac_below": {"-10": 0.25, "-5": 0.5, "-2": 0.5},
                                          "median_seconds": 2.5, "n": 4}
    assert res["nguyen"]["gplearn"]["frac_below"]["-2"] == 1.0


def test_generated_test_problems_fit_in_train_range_score_in_test_range(tmp_path):
    cfg = sg.Config(workdir=str(tmp_path), n_test=3, workers=1, progress=False)
    probs = sg.generated_test_set(cfg, 3)
    assert len(probs) == 3
    for p in probs:
        assert np.all(np.abs(p["X"]) <= 3) and np.all(np.abs(p["X_test"]) >= 3)
        assert np.all(np.isfinite(p["y"])) and p["X"].shape == p["X_test"].shape
        np.testing.assert_allclose(sg._eval_on(p["expr"], p["X_test"]), p["y_test"], rtol=1e-3, atol=1e-3)
