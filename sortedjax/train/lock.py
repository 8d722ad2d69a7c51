"""One run per workdir: ``workdir/train.lock`` while :func:`sortedjax.train` runs in it.

The lock is a JSON file (host, pid, start time) created atomically (``O_CREAT | O_EXCL``) by
process 0 of the job; a second run on the workdir raises :class:`WorkdirLocked` naming the run
that holds it. A lock left by a run that is gone is taken over with a warning: on this host when
its pid no longer runs (or now belongs to another process), on another host when its heartbeat
(the file's modification time, touched every ``HEARTBEAT_S`` seconds by a thread of the holder)
is older than ``STALE_S`` seconds, as after a preempted TPU VM whose replacement has another
host name. The lock is removed when training ends, however it ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid

import jax
import numpy as np

from sortedjax.distributed import is_main

log = logging.getLogger("sortedjax.train")

LOCK_FILE = "train.lock"
HEARTBEAT_S = 10.0
STALE_S = 120.0
_held: set[str] = set()  # lock files this process holds (a pid equal to ours in another one is a reused pid)


class WorkdirLocked(RuntimeError):
    """Another run holds the workdir."""


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, as another user
        return True
    return True


def _why_stale(path: str, held: dict) -> str | None:
    """Why the run that wrote ``held`` is gone, or None if it may still run."""
    host, pid = held.get("host"), held.get("pid")
    if host == socket.gethostname() and isinstance(pid, int):
        if pid == os.getpid():
            return None if path in _held else f"its pid {pid} is this process's, which does not hold it"
        if not _alive(pid):
            return f"process {pid} no longer runs on {host}"
        if held.get("pid_start") not in (None, _proc_start(pid)):
            return f"pid {pid} now belongs to another process"
        return None
    try:
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return "it is gone"
    return f"its heartbeat is {age:.0f} s old (host {host})" if age > STALE_S else None


def _read(path: str) -> dict | None:
    for _ in range(20):  # a lock being written by another run: empty for a moment
        try:
            with open(path) as f:
                held = json.load(f)
            return held if isinstance(held, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            time.sleep(0.05)
    return {}


def _take_over(path: str, held: dict, why: str) -> None:
    """Move a stale lock aside, and back if another run took it over first (then it is theirs)."""
    aside = f"{path}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _read(aside) != held:  # another run replaced the stale lock between our read and rename
        with contextlib.suppress(OSError):
            os.link(aside, path)
    else:
        log.warning(
            "taking over the lock %s of a run that is gone (%s): host %s, pid %s, started %s",
            path, why, held.get("host"), held.get("pid"), held.get("started"),
        )  # fmt: skip
    os.unlink(aside)


def _refusal(path: str, held: dict) -> WorkdirLocked:
    workdir = os.path.dirname(path)
    if not held:
        return WorkdirLocked(f"workdir {workdir} is locked by {path}, which is unreadable; delete it if no run uses it")
    return WorkdirLocked(
        f"workdir {workdir} is in use by another run: host {held.get('host')}, pid {held.get('pid')}, "
        f"started {held.get('started')} (lock {path}). Wait for it to finish, use another workdir, or, if that "
        f"run is gone (its machine was lost), delete {path}."
    )


def acquire(workdir: str) -> dict:
    """Create ``workdir/train.lock`` for this process: its contents; :class:`WorkdirLocked` if held."""
    path = os.path.join(workdir, LOCK_FILE)
    pid = os.getpid()
    me = {
        "host": socket.gethostname(),
        "pid": pid,
        "pid_start": _proc_start(pid),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "token": uuid.uuid4().hex,
    }
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read(path)
            if held is None:  # released meanwhile
                continue
            why = _why_stale(path, held) if held else None
            if why is None:
                raise _refusal(path, held) from None
            _take_over(path, held, why)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
            f.flush()
            os.fsync(f.fileno())
        _held.add(path)
        return me
    raise _refusal(path, _read(path) or {})


def release(workdir: str, me: dict) -> None:
    """Remove the lock if it is still this run's."""
    path = os.path.join(workdir, LOCK_FILE)
    _held.discard(path)
    if (_read(path) or {}).get("token") == me["token"]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _heartbeat(path: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        with contextlib.suppress(OSError):
            os.utime(path)


def _agree(refused: WorkdirLocked | None) -> None:
    """Every process learns whether process 0 got the lock (one broadcast when there are several)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        ok = int(multihost_utils.broadcast_one_to_all(np.int32(refused is None)))
        if not ok:
            raise refused or WorkdirLocked("process 0 found the workdir locked by another run (see its log)")
    elif refused is not None:
        raise refused


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Hold ``workdir/train.lock`` (process 0 only) while the block runs."""
    me, refused = None, None
    if is_main():
        try:
            me = acquire(workdir)
        except WorkdirLocked as e:
            refused = e
    stop = threading.Event()
    try:
        _agree(refused)
        if me is not None:
            path = os.path.join(workdir, LOCK_FILE)
            threading.Thread(target=_heartbeat, args=(path, stop), name="sortedjax-lock", daemon=True).start()
        yield me
    finally:
        stop.set()
        if me is not None:
            release(workdir, me)
