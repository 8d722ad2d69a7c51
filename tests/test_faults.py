"""Faults end to end: kill -9 mid-step and mid-save, a damaged newest checkpoint, a changed configuration.

The kills run ``python -m experiments.sorting_order`` with tiny flags in a subprocess (this file is
its launcher: ``python tests/test_faults.py KIND STEP NTH -- FLAGS`` SIGKILLs the run at the NTH
time it reaches STEP) and then rerun the same command: results and final parameters must equal an
uninterrupted run's, and the console must show no orbax noise.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from test_train import ArrayBatches, _assert_same_params, _data, _run

from experiments import sorting_order
from sortedjax.train import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 51 training points / batch 16 -> 3 steps per epoch, 9 steps, checkpoints at 3, 6, 9 (last two kept);
# networks trained in order: ordinary, sortednet
FLAGS = ["--seeds", "1", "--epochs", "3", "--samples", "64", "--hidden", "4"]
NETS = ("ordinary_seed0", "sortednet_seed0")


def _experiment(workdir, kill=None):
    """Run the experiment in a fresh process; ``kill=(kind, step, nth)`` SIGKILLs it there."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    env.pop("XLA_FLAGS", None)
    if kill is None:
        cmd = [sys.executable, "-m", "experiments.sorting_order"]
    else:
        cmd = [sys.executable, os.path.abspath(__file__), *map(str, kill), "--"]
    return subprocess.run([*cmd, "--workdir", str(workdir), *FLAGS], cwd=ROOT, env=env, capture_output=True, text=True)


def _final_params(workdir) -> dict[str, np.ndarray]:
    import orbax.checkpoint as ocp

    out = {}
    for net in NETS:
        ckpt = os.path.join(workdir, net, "checkpoints")
        last = max(int(s) for s in os.listdir(ckpt) if s.isdigit())
        state = ocp.StandardCheckpointer().restore(os.path.join(ckpt, str(last), "state"))
        for k, v in _flat(state["params"]).items():
            out[f"{net}/{last}/{k}"] = np.asarray(v)
    return out


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        return {k2: v2 for k, v in tree.items() for k2, v2 in _flat(v, f"{prefix}{k}/").items()}
    return {prefix.rstrip("/"): tree}


def _results(workdir) -> dict:
    res = json.loads((workdir / "results.json").read_text())
    res["config"].pop("workdir")
    return res


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ref")
    run = _experiment(workdir)
    assert run.returncode == 0, run.stderr
    return workdir


def _assert_resumes_like(uninterrupted, workdir):
    run = _experiment(workdir)
    assert run.returncode == 0, run.stderr
    assert _results(workdir) == _results(uninterrupted)
    ref, got = _final_params(uninterrupted), _final_params(workdir)
    assert ref.keys() == got.keys()
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    # the console: progress bars and our own messages only
    for noise in ("Traceback", "WARNING:absl", "orbax-checkpoint-tmp", "temporary directory"):
        assert noise not in run.stderr, run.stderr
    for net in NETS:
        assert not [d for d in os.listdir(workdir / net / "checkpoints") if not d.isdigit()]  # no half-saves left


@pytest.mark.slow
def test_kill_mid_step_then_resume(tmp_path, uninterrupted):
    killed = _experiment(tmp_path, kill=("step", 5, 2))  # the sortednet network, between checkpoints 3 and 6
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "results.json").exists()
    _assert_resumes_like(uninterrupted, tmp_path)


@pytest.mark.slow
def test_kill_mid_save_then_resume(tmp_path, uninterrupted):
    killed = _experiment(tmp_path, kill=("save", 6, 2))  # sortednet's step-6 checkpoint: written, not committed
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert any(d.startswith("6.orbax-checkpoint-tmp") for d in os.listdir(tmp_path / NETS[1] / "checkpoints"))
    _assert_resumes_like(uninterrupted, tmp_path)


def test_experiment_refuses_a_changed_configuration(tmp_path):
    sorting_order.main(["--workdir", str(tmp_path), *FLAGS])
    with pytest.raises(ValueError) as err:
        sorting_order.main(["--workdir", str(tmp_path), *FLAGS, "--learning-rate", "0.02", "--samples", "72"])
    msg = str(err.value)
    assert f"{tmp_path / NETS[0]} holds a run with a different configuration" in msg
    assert "learning_rate: 0.01 (stored) -> 0.02 (now)" in msg  # TrainConfig
    assert "data.arrays.x: 'float32[51,2] " in msg and "-> 'float32[58,2] " in msg  # 72 samples: another data set
    assert "allow_changes=('learning_rate', 'data')" in msg and "restart=True" in msg
    sorting_order.main(["--workdir", str(tmp_path), *FLAGS])  # the stored configuration still resumes


def test_orbax_noise_is_dropped_but_real_warnings_stay(caplog):
    from absl import logging as absl_logging

    from sortedjax.train.runstate import quiet_orbax as _quiet_orbax

    _quiet_orbax()
    with caplog.at_level(logging.WARNING):
        absl_logging.warning("Attempted to create temporary directory %s which already exists.", "/w/8.orbax-tmp")
        absl_logging.warning("Waiting for previous save to complete took %f seconds.", 9.0)
        absl_logging.error("Failed to json parse Metadata file")
    assert [r.getMessage() for r in caplog.records] == [
        "Waiting for previous save to complete took 9.000000 seconds.",
        "Failed to json parse Metadata file",
    ]


# --------------------------------------------------------------------- damaged checkpoints


class _Died(Exception):
    pass


@pytest.fixture(scope="module")
def ten_steps(tmp_path_factory):
    """A 12-step run that died after step 10 (checkpoints 8 and 10 kept), and an uninterrupted one."""
    data = ArrayBatches(_data(), 16, seed=3)
    root = tmp_path_factory.mktemp("damaged")

    def dying(step):
        if step == 10:
            raise _Died
        return data(step)

    with pytest.raises(_Died):
        _run(root / "ten", 12, dying, checkpoint_every=2)
    assert sorted(os.listdir(root / "ten" / "checkpoints")) == ["10", "8"]
    return root / "ten", _run(root / "twelve", 12, data).model, data


def _largest_data_file(step_dir):
    files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir / "state") for f in fs if os.path.basename(d) == "d"]
    return max(files, key=os.path.getsize)


DAMAGE = {
    "array data, half written": lambda step: (_largest_data_file(step), 0.5),
    "array metadata JSON, half written": lambda step: (step / "state" / "_METADATA", 0.5),
    "step metadata JSON, empty": lambda step: (step / "meta" / "metadata", 0.0),
}


def _damage(step_dir, what):
    path, keep = DAMAGE[what](step_dir)
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * keep))


@pytest.mark.parametrize("what", DAMAGE)
def test_damaged_newest_checkpoint_falls_back(tmp_path, ten_steps, what, caplog, capfd):
    ten, twelve, data = ten_steps
    workdir = tmp_path / "run"
    shutil.copytree(ten, workdir)
    _damage(workdir / "checkpoints" / "10", what)
    res = _run(workdir, 12, data, checkpoint_every=2)
    assert res.resumed_from == 8 and res.step == 12
    _assert_same_params(twelve, res.model)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"checkpoint step 10 in {workdir / 'checkpoints'} cannot be restored" in m for m in warned), warned
    assert any(f"moved it to {workdir / 'checkpoints_bad' / '10'} and resuming from step 8" in m for m in warned)
    assert (workdir / "checkpoints_bad" / "10").is_dir()
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "12"]  # 10 written again
    assert "Traceback" not in capfd.readouterr().err


def test_no_restorable_checkpoint_says_what_to_delete(tmp_path, ten_steps):
    ten, _, data = ten_steps
    workdir = tmp_path / "run"
    shutil.copytree(ten, workdir)
    for step in ("8", "10"):
        _damage(workdir / "checkpoints" / step, "step metadata JSON, empty")
    with pytest.raises(CheckpointError) as err:
        _run(workdir, 12, data, checkpoint_every=2)
    msg = str(err.value)
    assert f"no checkpoint in {workdir / 'checkpoints'} can be restored" in msg
    assert "step 10: JSONDecodeError" in msg and "step 8: JSONDecodeError" in msg
    assert f"delete {workdir / 'checkpoints'} to start this run over" in msg and "Nothing was changed" in msg
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "8"] and not (workdir / "checkpoints_bad").exists()


# ------------------------------------------------------------------- launcher for the kills


def _install_kill(kind: str, at: int, nth: int) -> None:
    seen = [0]

    def maybe_kill(step):
        if step == at:
            seen[0] += 1
            if seen[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)

    if kind == "step":  # while fetching the batch of step `at`: mid-training, between checkpoints
        from sortedjax.train import ArrayBatches

        call = ArrayBatches.__call__
        ArrayBatches.__call__ = lambda self, step: (maybe_kill(step), call(self, step))[1]
    elif kind == "save":  # the checkpoint of step `at` is written but not yet committed (renamed)
        from orbax.checkpoint._src.path import atomicity

        finalize = atomicity.AtomicRenameTemporaryPath.finalize

        async def killing_finalize(self, *a, **kw):
            if self.get_final().name.isdigit():
                maybe_kill(int(self.get_final().name))
            return await finalize(self, *a, **kw)

        atomicity.AtomicRenameTemporaryPath.finalize = killing_finalize
    else:
        raise ValueError(f"unknown kill kind {kind!r}; allowed: step, save")


if __name__ == "__main__":
    import runpy

    kind, at, nth, sep, *flags = sys.argv[1:]
    assert sep == "--", sys.argv
    _install_kill(kind, int(at), int(nth))
    sys.argv = ["sorting_order", *flags]
    runpy.run_module("experiments.sorting_order", run_name="__main__")
