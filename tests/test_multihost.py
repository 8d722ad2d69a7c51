"""Two CPU processes on 127.0.0.1 (4 simulated devices each) train like one 8-device process,
and a run killed in both processes resumes to the same parameters."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
STEPS = 6
pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir, out, processes, **kw):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    port = _port()
    procs = []
    for i in range(processes):
        cmd = [sys.executable, WORKER, "--workdir", str(workdir), "--out", str(out), "--steps", str(STEPS)]
        cmd += ["--processes", str(processes), "--process-id", str(i), "--port", str(port)]
        cmd += [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
        log = open(os.path.join(os.path.dirname(str(out)), f"worker{i}.log"), "w+")  # no pipe to fill up
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
    return procs


def _kill(procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)  # a worker blocked in a collective ignores SIGTERM
        p.wait()


def _log(p) -> str:
    p.stdout.seek(0)
    return "".join(line for line in p.stdout.read().splitlines(True) if "[Gloo]" not in line)[-3000:]


def _wait(procs, timeout=150):
    """Wait for every worker; if one fails or time runs out, kill the others (they would wait forever)."""
    deadline = time.time() + timeout
    try:
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            assert not failed, f"worker failed (exit {failed[0].returncode}):\n{_log(failed[0])}"
            assert time.time() < deadline, f"workers still running after {timeout} s"
            time.sleep(0.2)
        for p in procs:
            assert p.returncode == 0, f"worker failed (exit {p.returncode}):\n{_log(p)}"
    finally:
        _kill(procs)


def _load(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _assert_same(a, b):
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5, atol=1e-6)
    keys = [k for k in a if k.startswith("[")]
    assert keys and keys == [k for k in b if k.startswith("[")]
    for k in keys:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process 8-device run."""
    d = tmp_path_factory.mktemp("ref")
    _wait(_start(d / "run", d / "ref.npz", 1))
    ref = _load(d / "ref.npz")
    assert len(ref["losses"]) == STEPS and int(ref["processes"]) == 1
    return ref


def test_two_processes_equal_one(reference, tmp_path):
    _wait(_start(tmp_path / "run", tmp_path / "two.npz", 2))
    two = _load(tmp_path / "two.npz")
    assert int(two["processes"]) == 2 and int(two["resumed_from"]) == -1
    assert np.all(np.isfinite(two["losses"])) and two["losses"][-1] < two["losses"][0]
    _assert_same(two, reference)
    # only process 0 wrote the run's files (one metrics line per step, not two)
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        assert len(f.read().splitlines()) == STEPS


def test_killed_processes_resume(reference, tmp_path):
    ckpt = tmp_path / "run" / "checkpoints"
    procs = _start(tmp_path / "run", tmp_path / "out.npz", 2, sleep=1.5)
    deadline = time.time() + 150
    try:
        while not (ckpt / "2").is_dir() or not any((ckpt / "2").iterdir()):
            assert all(p.poll() is None for p in procs), "a worker ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint at step 2 within 150 s"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        _kill(procs)  # both processes die mid-run (between checkpoints 2 and 6)
    assert not (tmp_path / "out.npz").exists(), "the run finished before it was killed"
    _wait(_start(tmp_path / "run", tmp_path / "out.npz", 2))
    out = _load(tmp_path / "out.npz")
    assert int(out["resumed_from"]) >= 2
    _assert_same(out, reference)
