"""experiments.dylora end to end on tiny settings (NLU and --task nlg), flag checks, reuse on rerun."""

import json

import pytest

from experiments import dylora as exp
from experiments import export_peft
from experiments.dylora import report


def test_flag_errors_name_the_allowed_values(capsys):
    with pytest.raises(SystemExit):
        exp.parse_args(["--task", "sst3"])
    err = capsys.readouterr().err
    assert "unknown task 'sst3'" in err and "'sst2'" in err and "'negation'" in err
    with pytest.raises(SystemExit):
        exp.parse_args(["--ranks", "0,2"])
    assert "ranks must be positive" in capsys.readouterr().err
    cfg = exp.parse_args(["--task", "nlg", "--ranks", "1,2,4", "--no-ablations"])
    assert cfg.r_max == 4 and list(exp.variants(cfg)) == ["lora_r1", "lora_r2", "lora_r4", "dylora"]


def test_search_free_and_table():
    agg = {
        "lora_r1": {"mean": {1: 50.0}, "seconds": 10.0},
        "lora_r2": {"mean": {1: 55.0, 2: 70.0}, "seconds": 11.0},
        "dylora": {"mean": {1: 60.0, 2: 72.0}, "seconds": 7.0},
    }
    s = report.search_free(agg, ["lora_r1", "lora_r2"])
    assert s["speedup"] == pytest.approx(3.0) and s["lora_best"] == 70.0 and s["lora_best_rank"] == 2
    assert s["dylora_rank_reaching_lora_best"] == 2 and s["dylora_best_rank"] == 2
    text = report.table(agg, ["lora_r1", "lora_r2", "dylora"], 2, "T")
    assert "LoRA r=1          |      -|   50.0|   50.0" in text and "DyLoRA            |   72.0|   60.0|   72.0" in text


TINY = ["--steps", "3", "--pretrain-steps", "3", "--n-train", "64", "--n-eval", "16", "--batch-size", "8"]


@pytest.mark.slow
def test_nlu_pipeline_tiny(tmp_path, capsys):
    argv = ["--workdir", str(tmp_path), "--ranks", "1,2", "--task", "polarity", *TINY]
    out = exp.run_nlu(exp.parse_args(argv))
    printed = capsys.readouterr().out
    assert "Table 3.2 (polarity, accuracy" in printed and "Table 3.5" in printed and "Table 3.7" in printed
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["runs"]) == {"lora_r1", "lora_r2", "dylora", "dylora_frozen", "dylora_geometric", "dylora_summation"}
    assert list(res["runs"]["lora_r2"]["0"]["scores"]) == ["1", "2"] and list(
        res["runs"]["lora_r1"]["0"]["scores"]
    ) == ["1"]
    assert all(0 <= v <= 100 for v in res["runs"]["dylora"]["0"]["scores"].values())
    assert (tmp_path / "score_vs_rank.png").stat().st_size > 0 and (tmp_path / "ablations.png").stat().st_size > 0
    assert (tmp_path / "base" / "hf" / "tokenizer.json").exists() and out["search_free"]["speedup"] > 0
    again = exp.run_nlu(exp.parse_args(argv))  # finished runs are reused, not retrained
    assert again["runs"] == out["runs"]
    # the trained DyLoRA run exports as a PEFT adapter at rank 1 (its runs are found under the workdir)
    export_peft.main(["--workdir", str(tmp_path / "seed0" / "dylora"), "--rank", "1", "--out", str(tmp_path / "peft")])
    adapter = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert adapter["r"] == 1 and sorted(adapter["target_modules"]) == ["query", "value"]


@pytest.mark.slow
def test_nlg_pipeline_tiny(tmp_path, capsys):
    argv = ["--task", "nlg", "--workdir", str(tmp_path), "--ranks", "1,2", "--max-new-tokens", "4", *TINY]
    exp.main(argv)
    printed = capsys.readouterr().out
    assert "Table 3.6 (nlg, BLEU-4" in printed and "Table 3.6 (nlg, ROUGE-L" in printed
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["runs"]) == {"lora_r1", "lora_r2", "dylora"}
    r = res["runs"]["dylora"]["0"]
    assert list(r["bleu"]) == ["1", "2"] and all(0 <= v <= 100 for v in r["rouge_l"].values())
    assert (tmp_path / "score_vs_rank_bleu.png").exists() and (tmp_path / "score_vs_rank_rouge_l.png").exists()
