"""Faults end to end: kill -9 mid-step and mid-save, SIGTERM / SIGINT (preemption), a damaged
newest checkpoint, a restore error that is not damage, a changed configuration, a workdir in use.

The kills run ``python -m experiments.sorting_order`` with tiny flags in a subprocess (this file is
its launcher: ``python tests/test_faults.py KIND STEP NTH -- FLAGS`` SIGKILLs the run, or sends it
SIGTERM, at the NTH time it reaches STEP) and then rerun the same command: results and final
parameters must equal an uninterrupted run's, and the console must show no orbax noise.
"""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from test_train import CFG, ArrayBatches, _assert_same_params, _data, _loss, _run

from experiments import sorting_order
from sortedjax.models.mlp import SortedMLP
from sortedjax.train import CheckpointError, Preempted, TrainConfig, WorkdirLocked, train
from sortedjax.train import lock as workdir_lock

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


@pytest.mark.slow
def test_sigterm_mid_step_then_resume(tmp_path, uninterrupted):
    stopped = _experiment(tmp_path, kill=("term", 4, 2))  # sortednet: SIGTERM while fetching the batch of step 5
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert "SIGTERM received: stopped after step 5" in stopped.stderr, stopped.stderr
    assert "Traceback" not in stopped.stderr, stopped.stderr
    assert sorted(os.listdir(tmp_path / NETS[1] / "checkpoints")) == ["3", "5"]  # the step it was in, saved
    assert not (tmp_path / NETS[1] / workdir_lock.LOCK_FILE).exists()
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


def _data_files(step_dir):
    return [os.path.join(d, f) for d, _, fs in os.walk(step_dir / "state") for f in fs if os.path.basename(d) == "d"]


def _largest_data_file(step_dir):
    return max(_data_files(step_dir), key=os.path.getsize)


def _truncate(path, keep):
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * keep))


def _scramble(path):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[::7] = bytes(b ^ 0xFF for b in data[::7])
        f.seek(0)
        f.write(data)


# each raises another error: a tensorstore read error (OUT_OF_RANGE / FAILED_PRECONDITION inside a
# plain Exception), JSONDecodeError, FileNotFoundError, KeyError of a missing item (runstate.is_damage)
DAMAGE = {
    # every data file: which bytes one file holds (and whether a restore reads its tail) varies by run
    "array data, half written": lambda step: [_truncate(f, 0.5) for f in _data_files(step)],
    "array data, corrupted bytes": lambda step: _scramble(_largest_data_file(step)),
    "array metadata JSON, half written": lambda step: _truncate(step / "state" / "_METADATA", 0.5),
    "array metadata file, missing": lambda step: os.remove(step / "state" / "_METADATA"),
    "step metadata JSON, empty": lambda step: _truncate(step / "meta" / "metadata", 0.0),
    "step metadata directory, missing": lambda step: shutil.rmtree(step / "meta"),
}


def _damage(step_dir, what):
    DAMAGE[what](step_dir)


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


NOT_DAMAGE = {
    "out of host memory": MemoryError(),
    "out of device memory": RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.1GiB"),
    "tensorstore out of resources": ValueError("RESOURCE_EXHAUSTED: Error reading local file: too many open files"),
    "an orbax API misuse": TypeError("restore() got an unexpected keyword argument 'item'"),
    "no permission": PermissionError(13, "Permission denied"),
}


@pytest.mark.parametrize("what", NOT_DAMAGE)
def test_restore_error_that_is_not_damage_leaves_the_checkpoint(tmp_path, ten_steps, what, monkeypatch):
    ten, _, data = ten_steps
    workdir = tmp_path / "run"
    shutil.copytree(ten, workdir)
    restore, error = ocp.CheckpointManager.restore, NOT_DAMAGE[what]

    def failing(self, step, *a, **kw):
        if step == 10:
            raise error
        return restore(self, step, *a, **kw)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", failing)
    with pytest.raises(type(error), match=f"while restoring checkpoint step 10 from {workdir / 'checkpoints'}"):
        _run(workdir, 12, data, checkpoint_every=2)
    assert "the checkpoint was left in place" in "\n".join(error.__notes__)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "8"] and not (workdir / "checkpoints_bad").exists()
    assert not (workdir / workdir_lock.LOCK_FILE).exists()  # released on the way out


def test_is_damage_reads_the_cause_of_a_failed_array_read():
    from sortedjax.train.runstate import is_damage

    def wrapped(cause):
        try:
            raise Exception("Encountered error while reading array index: (slice(0, 4, 1),)") from cause
        except Exception as e:
            return e

    assert is_damage(wrapped(ValueError('OUT_OF_RANGE: Error reading "params.w/0.0" in OCDBT database')))
    assert not is_damage(wrapped(ValueError("RESOURCE_EXHAUSTED: Error reading local file")))
    assert not is_damage(wrapped(MemoryError()))
    assert not is_damage(KeyboardInterrupt())


# ------------------------------------------------------------------------------ preemption

# A tiny run through the public API; with GO it prints when it fetches the batch of step 7 and
# waits there until the file GO exists (the test sends SIGTERM meanwhile). It saves its final
# parameters to WORKDIR/final.npz.
SCRIPT = """
import os, sys, time
sys.path[:0] = [{tests!r}, {root!r}]
import numpy as np
from flax import nnx
from test_train import CFG, _data, _loss, _params
from sortedjax.models.mlp import SortedMLP
from sortedjax.train import ArrayBatches, TrainConfig, train

workdir, go = sys.argv[1], (sys.argv[2:] or [None])[0]
data = ArrayBatches(_data(), 16, seed=3)

def batches(step):
    if go and step == 6:
        print("fetching the batch of step 7", flush=True)
        while not os.path.exists(go):
            time.sleep(0.02)
    return data(step)

cfg = TrainConfig(workdir=workdir, steps=10, learning_rate=0.01, checkpoint_every=4, log_every=1, progress=False)
res = train(SortedMLP(CFG, rngs=nnx.Rngs(0)), _loss, batches, cfg)
np.savez(os.path.join(workdir, "final.npz"), **_params(res.model))
print("resumed from", res.resumed_from, flush=True)
"""


def _tiny_run(tmp_path, workdir, *args, wait=True):
    script = tmp_path / "tiny_run.py"
    tests = os.path.dirname(os.path.abspath(__file__))
    script.write_text(SCRIPT.format(tests=tests, root=ROOT))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, str(script), str(workdir), *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_sigterm_saves_the_step_and_a_second_run_is_refused(tmp_path, caplog):
    """SIGTERM mid-run: the step finishes, is checkpointed, the process exits 143 without a
    traceback, and the rerun ends with an uninterrupted run's parameters. While the first run
    holds the workdir, a second one is refused, and the first is unharmed."""
    ref = _tiny_run(tmp_path, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    workdir, go = tmp_path / "run", tmp_path / "go"
    first = _tiny_run(tmp_path, workdir, go, wait=False)
    try:
        assert first.stdout.readline().strip() == "fetching the batch of step 7", first.stderr.read()
        held = json.loads((workdir / workdir_lock.LOCK_FILE).read_text())
        assert held["pid"] == first.pid and held["host"] == socket.gethostname()
        with pytest.raises(WorkdirLocked) as err:
            _run(workdir, 10, ArrayBatches(_data(), 16, seed=3))
        msg = str(err.value)
        assert f"workdir {workdir} is in use by another run: host {socket.gethostname()}, pid {first.pid}" in msg
        assert f"started {held['started']}" in msg
        assert json.loads((workdir / workdir_lock.LOCK_FILE).read_text()) == held  # still the first run's
        first.send_signal(signal.SIGTERM)
        go.touch()
        out, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 128 + signal.SIGTERM, stderr
    assert f"SIGTERM received: stopped after step 7 and saved a checkpoint there in {workdir / 'checkpoints'}" in stderr
    assert "Traceback" not in stderr, stderr
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "7"]
    assert not (workdir / workdir_lock.LOCK_FILE).exists()
    rerun = _tiny_run(tmp_path, workdir)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed from 7" in rerun.stdout
    want, got = np.load(tmp_path / "ref" / "final.npz"), np.load(workdir / "final.npz")
    assert sorted(want) == sorted(got)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_sigint_saves_the_step_it_arrived_in(tmp_path):
    data = ArrayBatches(_data(), 16, seed=3)
    ref = _run(tmp_path / "ref", 8, data, checkpoint_every=100)
    before = signal.getsignal(signal.SIGINT)

    def ctrl_c(step, row):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Preempted) as err:
        train_with_hook(tmp_path / "run", 8, data, ctrl_c)
    assert err.value.step == 4 and err.value.code == 128 + signal.SIGINT  # step 4 was dispatched when step 3's row came
    assert signal.getsignal(signal.SIGINT) is before  # the handler is restored
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["4"]
    part = _run(tmp_path / "run", 8, data, checkpoint_every=100)
    assert part.resumed_from == 4
    _assert_same_params(ref.model, part.model)


def train_with_hook(workdir, steps, data, on_step):
    kw = dict(learning_rate=0.01, checkpoint_every=100, log_every=1, progress=False)
    cfg = TrainConfig(workdir=str(workdir), steps=steps, **kw)
    return train(SortedMLP(CFG, rngs=nnx.Rngs(0)), _loss, data, cfg, on_step=on_step)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_every_process_at_one_step(tmp_path):
    """Two CPU processes (tests/multihost_worker.py): SIGTERM reaches process 1 only; JAX's
    preemption sync point makes both finish the same step, save it collectively and exit 143."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    worker, workdir = os.path.join(ROOT, "tests", "multihost_worker.py"), tmp_path / "run"
    procs = []
    for i in range(2):
        cmd = [sys.executable, worker, "--workdir", str(workdir), "--out", str(tmp_path / "out.npz"), "--steps", "12"]
        cmd += ["--processes", "2", "--process-id", str(i), "--port", str(port), "--sleep", "0.7"]
        log = open(tmp_path / f"worker{i}.log", "w+")
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
    try:
        deadline = time.time() + 300
        while not (workdir / "checkpoints" / "2").is_dir():
            assert all(p.poll() is None for p in procs) and time.time() < deadline, "workers stopped or hang"
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=150) for p in procs]
    finally:
        for p in procs:
            p.kill()
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [128 + signal.SIGTERM] * 2, logs
    last = max(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
    assert 2 < last < 12
    for log in logs:
        assert f"SIGTERM received: stopped after step {last} and saved a checkpoint there" in log, log
    assert not (workdir / workdir_lock.LOCK_FILE).exists()


# --------------------------------------------------------------------------- workdir lock


def _gone_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_lock_of_a_gone_process_is_taken_over(tmp_path, caplog):
    pid = _gone_pid()
    stale = {"host": socket.gethostname(), "pid": pid, "started": "2020-01-01 00:00:00 +0000", "token": "old"}
    (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(stale))
    with caplog.at_level(logging.WARNING):
        res = _run(tmp_path, 2, ArrayBatches(_data(), 16))
    assert res.step == 2
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        f"taking over the lock {tmp_path / workdir_lock.LOCK_FILE} of a run that is gone (process {pid} no "
        f"longer runs on {socket.gethostname()})" in m
        for m in warned
    ), warned
    assert not (tmp_path / workdir_lock.LOCK_FILE).exists()
    assert [f for f in os.listdir(tmp_path) if "lock" in f] == []


def test_lock_of_another_host_is_refused_until_its_heartbeat_is_stale(tmp_path, caplog):
    path = tmp_path / workdir_lock.LOCK_FILE
    other = {"host": "tpu-vm-w-0", "pid": 4242, "started": "2025-05-01 10:00:00 +0000", "token": "theirs"}
    path.write_text(json.dumps(other))
    with pytest.raises(WorkdirLocked, match="host tpu-vm-w-0, pid 4242, started 2025-05-01 10:00:00"):
        workdir_lock.acquire(str(tmp_path))
    assert json.loads(path.read_text()) == other
    old = time.time() - workdir_lock.STALE_S - 60  # its VM was preempted: nothing touches the lock any more
    os.utime(path, (old, old))
    with caplog.at_level(logging.WARNING):
        with workdir_lock.workdir_lock(str(tmp_path)) as me:
            assert json.loads(path.read_text()) == me and me["pid"] == os.getpid()
            with pytest.raises(WorkdirLocked, match=f"pid {os.getpid()}"):  # also within one process
                workdir_lock.acquire(str(tmp_path))
    assert any("its heartbeat is" in r.getMessage() and "tpu-vm-w-0" in r.getMessage() for r in caplog.records)
    assert not path.exists()


# ------------------------------------------------------------------- launcher for the kills


def _install_kill(kind: str, at: int, nth: int) -> None:
    seen = [0]
    sig = signal.SIGTERM if kind == "term" else signal.SIGKILL

    def maybe_kill(step):
        if step == at:
            seen[0] += 1
            if seen[0] == nth:
                os.kill(os.getpid(), sig)

    if kind in ("step", "term"):  # while fetching the batch of step `at` (the one after it): mid-training
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
        raise ValueError(f"unknown kill kind {kind!r}; allowed: step, save, term")


if __name__ == "__main__":
    import runpy

    kind, at, nth, sep, *flags = sys.argv[1:]
    assert sep == "--", sys.argv
    _install_kill(kind, int(at), int(nth))
    sys.argv = ["sorting_order", *flags]
    runpy.run_module("experiments.sorting_order", run_name="__main__")
