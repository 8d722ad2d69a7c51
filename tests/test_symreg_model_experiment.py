"""experiments.symbolicgpt: flags -> Config, results.json shape, generated test protocol."""

import numpy as np
import pytest

from experiments import symbolicgpt as sg


def test_flags_make_a_validated_config():
    command, cfg = sg.parse_args(["train", "--setting", "2var", "--steps", "7", "--methods", "symbolicgpt,mlp"])
    assert command == "train" and cfg.setting == ("2var",) and cfg.steps == 7 and cfg.max_vars == 2
    assert cfg.methods == ("symbolicgpt", "mlp") and cfg.current == "2var"
    command, cfg = sg.parse_args([])
    assert command == "all" and cfg.workdir == "runs/symbolicgpt" and cfg.setting == ("1var", "3var")
    assert cfg.protocol == ("ours", "thesis") and not cfg.conditional
    with pytest.raises(ValueError, match="several settings"):
        _ = cfg.current
    one = sg.for_setting(cfg, "general2")
    assert one.current == "general2" and one.max_vars == 9 and one.workdir == "runs/symbolicgpt/general2"
    assert sg.model_dir(one).endswith("runs/symbolicgpt/general/model")  # general2 uses general's model
    _, quick = sg.parse_args(["--quick", "--n-test", "2", "--fit-points", "60", "--test-points", "none"])
    assert quick.preset == "tiny" and quick.n_test == 2 and quick.fit_points == 60 and quick.test_points is None
    with pytest.raises(ValueError, match="setting"):
        sg.Config(setting="4var")
    with pytest.raises(ValueError, match="protocol"):
        sg.Config(protocol=("ours", "paper"))
    with pytest.raises(ValueError, match="methods"):
        sg.Config(methods=("symbolicgpt", "eureqa"))
    with pytest.raises(ValueError, match="fit_points"):
        sg.Config(fit_points=1)


def test_method_names_per_protocol_and_conditional():
    from experiments.symbolicgpt.evaluate import method_names

    cfg = sg.Config(setting="1var", methods=("symbolicgpt", "operon"))
    assert method_names(cfg) == ["symbolicgpt", "symbolicgpt-thesis", "operon"]
    cfg = sg.Config(setting="1var", protocol=("thesis",), methods=("symbolicgpt",), conditional=True)
    assert method_names(cfg) == ["symbolicgpt-thesis", "c-symbolicgpt", "c-symbolicgpt-neutral"]


def test_results_json_shape():
    recs = [
        {"test_set": "1var", "method": "symbolicgpt", "log10_mse_n": e, "seconds": s}
        for e, s in [(-12.0, 1.0), (-6.0, 2.0), (-1.0, 3.0), (float("inf"), 4.0)]
    ]
    recs.append({"test_set": "nguyen", "method": "gplearn", "log10_mse_n": -3.0, "seconds": 5.0})
    res = sg.summarize(recs)
    assert res["1var"]["symbolicgpt"] == {
        "frac_below": {"-10": 0.25, "-5": 0.5, "-2": 0.5},
        # natural log: ln 10^-6 = -13.8 < -10, ln 10^-1 = -2.3 < -2
        "frac_below_ln": {"-10": 0.5, "-5": 0.5, "-2": 0.75},
        "median_seconds": 2.5,
        "n": 4,
    }
    assert res["nguyen"]["gplearn"]["frac_below"]["-2"] == 1.0


def test_generated_test_problems_fit_in_train_range_score_in_test_range(tmp_path):
    cfg = sg.Config(setting="1var", workdir=str(tmp_path / "1var"), n_test=3, workers=1, progress=False)
    probs = sg.generated_test_set(cfg, 3)
    assert len(probs) == 3
    for p in probs:
        assert np.all(np.abs(p["X"]) <= 3) and np.all(np.abs(p["X_test"]) >= 3)
        assert np.all(np.isfinite(p["y"])) and p["X"].shape == p["X_test"].shape
        np.testing.assert_allclose(sg.eval_on(p["expr"], p["X_test"]), p["y_test"], rtol=1e-3, atol=1e-3)
    assert (tmp_path / "1var" / "data").is_dir()
    # the bar's protocol: fit on 60 points, scored on 200 fresh held-out ones
    bar = sg.generated_test_set(
        sg.Config(setting="1var", workdir=str(tmp_path / "1var"), fit_points=60, test_points=200), 2
    )
    for p in bar:
        assert p["X"].shape == (60, 1) and p["X_test"].shape == (200, 1) and np.all(np.abs(p["X_test"]) >= 3)
        np.testing.assert_allclose(sg.eval_on(p["expr"], p["X_test"]), p["y_test"], rtol=1e-3, atol=1e-3)


def test_general2_uses_benchmark_skeletons_with_training_like_constants_and_points(tmp_path):
    from symreg.benchmark_equations import load_benchmark_equations
    from symreg.expressions import parse_skeleton

    cfg = sg.Config(setting="general2", workdir=str(tmp_path / "general2"))
    probs = sg.general2_test_set(cfg, 12)
    assert len(probs) == 12
    names = {e.name for e in load_benchmark_equations()}
    for p in probs:
        assert p["name"].split("-", 1)[1].rsplit("-", 1)[0] in names
        assert 20 <= len(p["y"]) <= 250 and np.all(np.abs(p["X"]) <= 3) and np.all(np.abs(p["X_test"]) >= 3)
        assert np.all(np.isfinite(p["y"])) and np.abs(p["y"]).max() <= 1e4
        np.testing.assert_allclose(sg.eval_on(p["expr"], p["X"]), p["y"], rtol=1e-3, atol=1e-3)
        assert parse_skeleton(p["skeleton"])[0].free_symbols  # a valid skeleton with variables
    assert sg.general2_test_set(cfg, 12)[3]["expr"] == probs[3]["expr"]  # seeded


def test_figures_and_summary_from_records(tmp_path, capsys):
    """The output stage (every figure, incl. the sweeps' performance-over-time plot) runs on real-shaped data."""
    import math

    recs = []
    for ts in ("1var", "nguyen"):
        for m, errs in (
            ("symbolicgpt", (-12.0, -6.0, -1.0)),
            ("gplearn", (-3.0, -1.0, 0.5)),
            ("c-symbolicgpt", (-13.0, -7.0, -2.0)),
        ):
            recs += [
                {
                    "test_set": ts,
                    "method": m,
                    "problem": f"{ts}-{i}",
                    "true": "x1",
                    "predicted": "x1",
                    "log10_mse_n": e,
                    "ln_mse_n": e * math.log(10),
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
    cfg = sg.Config(setting="1var", workdir=str(tmp_path / "1var"))
    (tmp_path / "1var").mkdir()
    sg.write_figures(cfg, recs, res, sweeps)
    sg.print_summary(cfg, res)
    names = ("cumulative_error.png", "cumulative_error_ln.png", "conditional.png", "time_per_problem.png")
    for name in names + ("performance_over_time.png", "error_vs_points.png"):
        assert (tmp_path / "1var" / name).stat().st_size > 5000, name
    out = capsys.readouterr().out
    assert "symbolicgpt frac<-5 0.67 vs gplearn 0.00" in out and "natural log" in out
    import json

    from experiments.symbolicgpt.report import figure_2_2

    with open(tmp_path / "1var" / "records.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    assert figure_2_2(str(tmp_path)) == str(tmp_path / "fig2_2.png")
    assert (tmp_path / "fig2_2.png").stat().st_size > 5000 and (tmp_path / "fig2_2_ln.png").stat().st_size > 5000


def test_thesis_protocol_is_one_sample_one_start_scipy_bfgs_without_normalisation():
    from flax import nnx

    from experiments.symbolicgpt.evaluate import symbolicgpt_method
    from symreg.conditional import ControlledSource
    from symreg.model import ModelConfig, SymbolicGPT

    model = SymbolicGPT(ModelConfig.preset("tiny", vocab_size=60, max_len=8), rngs=nnx.Rngs(0))
    cfg = sg.Config(setting="1var", n_samples=7, n_starts=3)
    thesis = symbolicgpt_method(cfg, model, protocol="thesis")
    assert thesis.n_candidates == 1 and thesis.candidate_source.n_samples == 1 and thesis.n_starts == 1
    fc = thesis.fit_config
    assert (fc.n_starts, fc.backend, fc.scaling, fc.objective) == (1, "scipy", "off", "mse")
    ours = symbolicgpt_method(cfg, model)
    assert ours.n_candidates == 7 and ours.candidate_source.n_samples == 7 and ours.n_starts == 3
    assert isinstance(symbolicgpt_method(cfg, model, control="neutral").candidate_source, ControlledSource)
    with pytest.raises(ValueError, match="protocol"):
        symbolicgpt_method(cfg, model, protocol="paper")
