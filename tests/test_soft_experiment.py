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


def _examples():
    from sortedjax.data.instruct.loaders import Example

    return [Example("colour of the sky?", "blue"), Example("colour of grass?", "green", answers=("green", "lime"))]


def test_table_5_2_rows_and_format():
    """Rows from tiny hand-made runs: ms/token over generated tokens (up to and including the stop
    token), speedup, exact match, pairwise against autoregressive, rejection ratio, mean exit."""
    import numpy as np

    from experiments.soft import table52 as t52

    stop, pad = 2, 0
    ar_tok = np.array([[5, 2, 0], [6, 7, 2]])  # 2 + 3 generated tokens
    np.testing.assert_array_equal(t52.generated(ar_tok, (stop,)), [[1, 1, 0], [1, 1, 1]])
    runs = [
        t52.Run("autoregressive", 0.010, ar_tok, ["blue", "green"]),
        t52.Run(
            "speculative",
            0.008,
            ar_tok.copy(),
            ["blue", "green"],
            draft_exit=2,
            stats={"rejection_ratio": 0.25, "acceptance_rate": 0.75, "tokens_per_verify": 2.5},
        ),
        t52.Run(
            "dynamic",
            0.004,
            np.array([[5, 2, pad], [9, 2, pad]]),  # 4 generated tokens; the second answer is wrong
            ["blue", "red"],
            exit_layers=np.array([[8, 2, 0], [8, 4, 8]]),  # the 8 after the stop is not counted
            thresholds=(0.95, 0.9),
        ),
    ]
    rows = t52.rows(runs, _examples(), (stop,))
    ar, sp, dyn = rows
    assert ar["ms_per_token"] == pytest.approx(2.0) and ar["speedup"] == pytest.approx(1.0)
    assert (ar["exact_match"], ar["pairwise_vs_autoregressive"], ar["num_tokens"]) == (100.0, 0.0, 5)
    assert sp["ms_per_token"] == pytest.approx(1.6) and sp["speedup"] == pytest.approx(1.25)
    assert sp["identical_to_autoregressive"] and sp["rejection_ratio"] == 0.25 and sp["mean_exit_layer"] is None
    assert dyn["ms_per_token"] == pytest.approx(1.0) and dyn["speedup"] == pytest.approx(2.0)
    assert dyn["exact_match"] == 50.0 and not dyn["identical_to_autoregressive"]
    # one tie (both right) and one loss (wrong vs right) over both orders: (0 - 2) / 4
    assert dyn["pairwise_vs_autoregressive"] == pytest.approx(-0.5)
    assert dyn["mean_exit_layer"] == pytest.approx(22 / 4) and dyn["mean_exit_layer_after_first"] == pytest.approx(3.0)
    assert dyn["rejection_ratio"] is None and dyn["thresholds"] == [0.95, 0.9]
    with pytest.raises(ValueError, match="first run must be the autoregressive one"):
        t52.rows(runs[1:], _examples(), (stop,))

    setup = {"num_prompts": 2, "batch_size": 2, "max_new_tokens": 3, "num_draft": 4, "repeats": 5}
    text = t52.format_table({"soft": rows}, setup)
    assert "(2 prompts in batches of 2, 3 new tokens, greedy, 4 drafted tokens per verification" in text
    lines = text.splitlines()
    assert lines[3] == "soft  | autoregressive           |    2.000 |   1.00x | 100.0 |  +0.00 |         - |         -"
    assert lines[4] == "soft  | speculative, draft 2     |    1.600 |   1.25x | 100.0 |  +0.00 |      0.25 |         -"
    assert lines[5] == "soft  | dynamic                  |    1.000 |   2.00x |  50.0 |  -0.50 |         - |      5.50"


def test_table_5_2_measure_checks_speculative(monkeypatch):
    """measure() decodes every mode in the eval batches, sums the speculative statistics over
    batches, and raises when greedy self-speculation does not reproduce autoregressive decoding."""
    import types

    import numpy as np

    from experiments.soft import table52 as t52
    from sortedjax import decoding
    from sortedjax.data import instruct as idata

    ex = _examples() * 3  # 6 prompts in batches of 4: the second batch is filled up with 2 of them
    tok = idata.task_tokenizer([e.prompt + " " + e.output for e in ex])
    cfg = types.SimpleNamespace(max_len=64, eval_batch_size=4, max_new_tokens=3)
    ctx = types.SimpleNamespace(cfg=cfg, tok=tok, eval_ex=ex, num_layers=4, exits=(2, 3, 4), inner=(2, 3))
    blue, eos = tok.convert_tokens_to_ids("blue"), tok.eos_token_id
    calls = []

    def fake(ids, **kw):
        calls.append(ids.shape)
        assert kw["stop_tokens"] == (eos,) and kw["max_new_tokens"] == 3
        return np.tile([blue, eos, 0], (len(ids), 1)).astype(np.int32)

    monkeypatch.setattr(decoding, "generate", lambda m, ids, **kw: fake(ids, **kw))
    stats = {"drafted": 8, "acceptance_rate": 0.75}  # per batch: 2 row verifications of 4 drafts
    monkeypatch.setattr(decoding, "speculative_generate", lambda m, ids, **kw: (fake(ids, **kw), dict(stats)))
    monkeypatch.setattr(
        decoding, "early_exit_generate", lambda m, ids, **kw: (fake(ids, **kw), np.tile([4, 2, 0], (len(ids), 1)))
    )
    runs = t52.measure(ctx, object(), "tiny", repeats=2)
    assert [r.label for r in runs] == ["autoregressive", "speculative, draft 2", "speculative, draft 3", "dynamic"]
    assert len(calls) == 4 * 2 * 3 and {s[0] for s in calls} == {4}  # modes x batches x (warm-up + 2 timed)
    assert runs[0].tokens.shape == (6, 3) and runs[0].outputs == ["blue"] * 6
    # 2 batches: 16 drafted, 12 accepted, 4 row verifications -> (12 + 4) / 4 tokens each
    assert runs[1].stats == {"rejection_ratio": 0.25, "acceptance_rate": 0.75, "tokens_per_verify": 4.0, "drafted": 16}
    assert runs[3].thresholds == pytest.approx(decoding.thesis_thresholds((2, 3), 4))
    rows = t52.rows(runs, ex, (eos,))
    assert [r["exact_match"] for r in rows] == pytest.approx([50.0] * 4)
    assert rows[3]["mean_exit_layer"] == pytest.approx(3.0)

    def wrong(m, ids, **kw):
        out = fake(ids, **kw)
        out[1, 0] = eos
        return out, dict(stats)

    monkeypatch.setattr(decoding, "speculative_generate", wrong)
    with pytest.raises(
        RuntimeError, match="tiny: greedy self-speculative decoding with draft exit 2 differs .* in 2 of 6"
    ):
        t52.measure(ctx, object(), "tiny", repeats=1)
