"""experiments.soft: flags become a validated config; bad values are named; the table prints."""

import pytest

from experiments import soft as exp


def test_flags_to_config():
    cfg = exp.parse_args(["--mesh", "data:2,fsdp:4", "--steps", "7", "--exits", "2,4", "--eval-limit", "5"])
    assert (cfg.mesh, cfg.steps, cfg.exits, cfg.eval_limit, cfg.dtype) == ("data:2,fsdp:4", 7, "2,4", 5, "float32")
    assert exp.parse_args([]).workdir == "runs/soft"


def test_bad_config_named():
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'bfloat16', got 'fp8'"):
        exp.SoftExperiment(dtype="fp8")
    with pytest.raises(ValueError, match="batch_size 10 must be divisible by grad_accum 4"):
        exp.SoftExperiment(batch_size=10, grad_accum=4)
    with pytest.raises(ValueError, match="--model"):
        exp.SoftExperiment(dataset="alpaca:data.json")
    # layer lists and the mesh are checked before any work (the base model's depth is known)
    with pytest.raises(ValueError, match=r"exits: exit 9 is outside the model's depth: allowed 1..8"):
        exp.SoftExperiment(exits="2,9")
    with pytest.raises(ValueError, match=r"extracted: exit 0 is outside the model's depth: allowed 1..4"):
        exp.SoftExperiment(extracted="0", base_layers=4)
    with pytest.raises(ValueError, match="unknown mesh axis 'fsd'"):
        exp.SoftExperiment(mesh="fsd:8")
    with pytest.raises(SystemExit):  # the command line turns it into an argparse error (exit 2)
        exp.parse_args(["--exits", "2,9"])


def test_table():
    res = {
        "exits": [2, 4],
        "sft": {"exact_match": [0.0, 90.0]},
        "soft": {"exact_match": [40.0, 85.0]},
        "pairwise": {"soft_vs_sft_same_exit": [0.4, -0.05]},
        "extracted": {},
    }
    text = exp.table(res)
    assert "   2 |         0.0 |        40.0 |       +0.40" in text
