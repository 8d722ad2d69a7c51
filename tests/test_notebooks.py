"""Every notebook in notebooks/ runs top to bottom (code cells in order, in one namespace, as a
kernel would run them; no Jupyter needed) and what its last cells compute holds.

Each notebook needs an entry in ``CHECKS``: a function of the notebook's namespace that asserts
something about the values the notebook computed, beyond the notebook's own asserts."""

import json
import pathlib

import numpy as np
import pytest

NOTEBOOK_DIR = pathlib.Path(__file__).parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def load(path):
    nb = json.loads(path.read_text())
    return [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]


def run(path) -> dict:
    scope: dict = {"__name__": "__notebook__"}
    for i, (kind, source) in enumerate(load(path)):
        if kind == "code":
            exec(compile(source, f"{path.name}[cell {i}]", "exec"), scope)
    return scope


def check_sorted(ns):
    acc = ns["acc"]
    assert len(acc) == 16 and ns["traces"] == {"loss": 1, "eval": 1}  # 16 sub-models, one compile each
    assert acc[(32, 4)] > 0.95 and min(acc.values()) > 0.6, acc
    assert ns["small"].cfg.width == 8 and ns["small"].cfg.depth == 2
    assert abs(ns["small_acc"] - acc[(8, 2)]) < 1e-3


def check_dylora(ns):
    by_rank, base = ns["by_rank"], ns["base_loss"]
    assert sorted(by_rank) == list(range(1, 9))
    assert max(by_rank.values()) < base and by_rank[8] < 0.5 * by_rank[1], (base, by_rank)
    files = sorted(p.name for p in ns["adapter_dir"].iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((ns["adapter_dir"] / "adapter_config.json").read_text())["r"] == 4
    np.testing.assert_allclose(ns["reloaded"], ns["ours"], atol=1e-5)
    pytest.importorskip("peft")  # the test extra has it: then the PEFT comparison must have run
    assert ns["peft_max_diff"] is not None and ns["peft_max_diff"] < 1e-4


def check_soft(ns):
    np.testing.assert_array_equal(ns["spec"], ns["greedy"])  # greedy speculative == greedy
    assert ns["spec"].shape == (8, ns["N_NEW"])
    assert 0 < ns["stats"]["acceptance_rate"] <= 1 and ns["stats"]["verifies"] >= 1
    assert all(ns["acc"][e] > 0.9 for e in ns["EXITS"]), ns["acc"]
    assert np.mean(ns["greedy"] == ns["want"]) > 0.9  # the full model continues the sequences
    used = ns["used"]
    assert used.shape == ns["early"].shape and set(np.unique(used)) <= {2, 4, 6}
    assert used[:, 0].tolist() == [6] * 8  # the first token comes from the full-depth prefill
    assert ns["mean_exit"] < 6


def check_symreg(ns):
    reg = ns["reg"]
    assert reg.skeleton_ == "C*sin(C*x1)+C" and reg.mse_n_ < 1e-9
    np.testing.assert_allclose(ns["constants"], [0.5, 1.3, 2.8], rtol=1e-4)
    X_far = ns["X_far"]
    assert ns["search"].score(X_far, ns["target"](X_far)) > 0.999
    assert len(ns["search"].candidates_) == 32 and len(ns["search"].equations_) >= 2


CHECKS = {
    "make_your_model_sorted.ipynb": check_sorted,
    "dylora_to_peft.ipynb": check_dylora,
    "soft_fast_decoding.ipynb": check_soft,
    "symbolicgpt_regressor.ipynb": check_symreg,
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_documented_and_checked(path):
    """Cheap: the notebook parses, opens with markdown, explains each step, every code cell
    compiles, and it has a check here (a new notebook must add one)."""
    cells = load(path)
    assert cells[0][0] == "markdown" and cells[0][1].startswith("# "), "open with a markdown title"
    assert sum(kind == "markdown" for kind, _ in cells) >= 3
    for i, (kind, source) in enumerate(cells):
        if kind == "code":
            compile(source, f"{path.name}[cell {i}]", "exec")
    assert path.name in CHECKS, f"add a check of {path.name}'s results to CHECKS"


def test_one_notebook_per_system():
    assert set(CHECKS) == {p.name for p in NOTEBOOKS}


@pytest.mark.slow  # each trains a small model: 20 s to a minute or two on a 2-core CPU
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path):
    CHECKS[path.name](run(path))
