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
    recs = [
        {"test_set": "1var", "method": "symbolicgpt", "log10_mse_n": e, "seconds": s}
        for e, s in [(-12.0, 1.0), (-6.0, 2.0), (-1.0, 3.0), (float("inf"), 4.0)]
    ]
    recs.append({"test_set": "nguyen", "method": "gplearn", "log10_mse_n": -3.0, "seconds": 5.0})
    res = sg.summarize(recs)
    assert res["1var"]["symbolicgpt"] == {
        "frac_below": {"-10": 0.25, "-5": 0.5, "-2": 0.5},
        "median_seconds": 2.5,
        "n": 4,
    }
    assert res["nguyen"]["gplearn"]["frac_below"]["-2"] == 1.0


def test_generated_test_problems_fit_in_train_range_score_in_test_range(tmp_path):
    cfg = sg.Config(workdir=str(tmp_path), n_test=3, workers=1, progress=False)
    probs = sg.generated_test_set(cfg, 3)
    assert len(probs) == 3
    for p in probs:
        assert np.all(np.abs(p["X"]) <= 3) and np.all(np.abs(p["X_test"]) >= 3)
        assert np.all(np.isfinite(p["y"])) and p["X"].shape == p["X_test"].shape
        np.testing.assert_allclose(sg._eval_on(p["expr"], p["X_test"]), p["y_test"], rtol=1e-3, atol=1e-3)


def test_figures_and_summary_from_records(tmp_path, capsys):
    """The output stage (every figure, incl. the sweeps' performance-over-time plot) runs on real-shaped data."""
    recs = []
    for ts in ("1var", "nguyen"):
        for m, errs in (("symbolicgpt", (-12.0, -6.0, -1.0)), ("gplearn", (-3.0, -1.0, 0.5))):
            recs += [
                {
                    "test_set": ts,
                    "method": m,
                    "problem": f"{ts}-{i}",
                    "true": "x1",
                    "predicted": "x1",
                    "log10_mse_n": e,
                    "seconds": 0.5 + i,
                    "n_points": 30,
                }
                for i, e in enumerate(errs)
            ]
    res = sg.summarize(recs)
    sweeps = {
        "samples": [{"n_samples": n, "median_seconds": 0.01 * n, "frac_below_-5": 0.1 * n} for n in (1, 4)],
        "points": [{"n_points": n, "median_log10_mse_n": -n / 2, "frac_below_-5": 0.1 * n} for n in (5, 10)],
    }
    cfg = sg.Config(workdir=str(tmp_path))
    sg.write_figures(cfg, recs, res, sweeps)
    sg.print_summary(cfg, res)
    for name in ("cumulative_error.png", "time_per_problem.png", "performance_over_time.png", "error_vs_points.png"):
        assert (tmp_path / name).stat().st_size > 5000, name
    out = capsys.readouterr().out
    assert "symbolicgpt frac<-5 0.67 vs gplearn 0.00" in out
