"""Optional dependencies are checked before any work, naming the extra that installs them."""

import sys
import time

import pytest

from experiments import bert_in_bert, sortednet_vision, symbolicgpt
from experiments.common import requires


def test_require_names_the_missing_module_and_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # importlib finds no torch
    assert requires.missing(["torch", "peft"]) == ["torch"]
    with pytest.raises(SystemExit, match=r'x needs torch, which is not installed: pip install -e "\.\[torch\]"'):
        requires.require("torch", "peft", why="x")
    requires.require("peft", why="x")  # installed here: nothing raised
    with pytest.raises(ValueError, match="no extra is known for \\['nosuchmodule'\\]"):
        requires.require("nosuchmodule", why="x")


def test_experiments_fail_at_once_without_their_optional_dependencies(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    monkeypatch.setitem(sys.modules, "pyoperon", None)
    t0 = time.perf_counter()
    with pytest.raises(SystemExit, match=r"bert_in_bert.*torch.*\.\[torch\]"):
        bert_in_bert.main(["--workdir", str(tmp_path / "b")])
    with pytest.raises(SystemExit, match=r"--data cifar10 needs tensorflow_datasets.*\.\[vision\]"):
        sortednet_vision.main(["--workdir", str(tmp_path / "v"), "--data", "cifar10"])
    with pytest.raises(SystemExit, match=r"--methods symbolicgpt,operon needs pyoperon.*\.\[baselines\]"):
        symbolicgpt.main(["evaluate", "--workdir", str(tmp_path / "s"), "--methods", "symbolicgpt,operon"])
    assert time.perf_counter() - t0 < 10  # before any work
    assert not (tmp_path / "b").exists() and not (tmp_path / "v").exists() and not (tmp_path / "s").exists()
