"""tpu_scripts/: every script's --dry-run prints the gcloud commands it would run, and bad flags fail."""

import os
import shlex
import subprocess

import pytest

DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tpu_scripts")
BASE = ["--name", "pod", "--zone", "us-central2-b", "--project", "proj", "--dry-run"]


def _run(script, *args, ok=True):
    r = subprocess.run(["bash", os.path.join(DIR, script), *args], capture_output=True, text=True, timeout=60)
    assert (r.returncode == 0) == ok, r.stderr
    return [shlex.split(line) for line in r.stdout.splitlines() if line.startswith("gcloud ")], r


def test_create_setup_copy_run_delete():
    (cmd,), _ = _run("create.sh", *BASE, "--type", "v5litepod-16", "--spot")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod"]
    assert {"--accelerator-type=v5litepod-16", "--spot", "--zone=us-central2-b", "--project=proj"} <= set(cmd)
    (cmd,), _ = _run("setup.sh", *BASE, "--repo", "https://example.com/sortedjax.git")
    assert cmd[4:7] == ["ssh", "pod", "--worker=all"]
    remote = next(a for a in cmd if a.startswith("--command="))
    assert "git clone -q -b main https://example.com/sortedjax.git" in remote and "pip install -q -e '.[tpu]'" in remote
    cmds, _ = _run("copy.sh", *BASE)
    assert cmds[0][4] == "scp" and "--worker=all" in cmds[0] and "tar -xzf" in cmds[1][-3]
    (cmd,), _ = _run("run.sh", *BASE, "--", "-m", "experiments.soft", "--distributed", "--workdir", "/mnt/a b")
    remote = next(a for a in cmd if a.startswith("--command="))
    assert "--worker=all" in cmd and ".venv/bin/python -m experiments.soft --distributed --workdir /mnt/a\\ b" in remote
    (cmd,), _ = _run("delete.sh", *BASE)
    assert cmd[4:7] == ["delete", "pod", "--quiet"]


def test_preempt_loop_recreates_sets_up_and_resumes():
    cmds, r = _run(
        "preempt_loop.sh", *BASE, "--type", "v4-32", "--repo", "R", "--", "-m", "experiments.soft", "--distributed"
    )
    verbs = [c[4] for c in cmds]
    assert verbs == ["describe", "delete", "create", "ssh", "ssh"]  # state, recreate, setup, run
    assert "--spot" in cmds[2] and "--accelerator-type=v4-32" in cmds[2]
    assert "experiments.soft --distributed" in cmds[-1][-3]
    assert "recreating" in r.stderr
    cmds, _ = _run("soft_pod.sh", *BASE, "--workdir", "/mnt/runs/soft")
    run = cmds[-1][-3]
    assert "--remat full" in run and "--model meta-llama/Llama-2-13b-hf" in run and "--workdir /mnt/runs/soft" in run


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("create.sh", ["--zone", "z"], "give --name"),
        ("create.sh", ["--name", "p", "--zone", "z", "--type", "big"], "not an accelerator type"),
        ("run.sh", ["--name", "p", "--zone", "z"], "python arguments after --"),
        ("delete.sh", ["--name", "p", "--zone", "z", "--force"], "unknown flag --force"),
        ("preempt_loop.sh", ["--name", "p", "--zone", "z", "--max-retries", "x", "--", "-m", "a"], "non-negative"),
    ],
)
def test_bad_flags_fail(script, args, message):
    _, r = _run(script, *args, "--dry-run", ok=False)
    assert r.returncode == 2 and message in r.stderr
