"""What survives a run between processes: its recorded configuration, its checkpoints, and a quiet console.

* :func:`run_record` / :func:`check_run`: ``workdir/run_config.json`` holds what defines a run
  (the computing :class:`TrainConfig` fields, the caller's ``run_config``, the data's
  fingerprint, the state's shapes); a resume with a different one is refused listing each
  difference, unless ``allow_changes`` names it; :func:`start_over` moves an old run aside.
* :func:`restore_newest_valid`: restore walks the steps newest to oldest; a step whose files are
  damaged (:func:`is_damage`: missing or truncated files, bad metadata, a tensorstore read error, a
  shape or structure mismatch) is reported and moved to ``workdir/checkpoints_bad/``
  (:func:`set_aside`); any other error (out of memory, an API error) is raised naming the step, and
  the checkpoint stays; :class:`CheckpointError` says what to delete when none restores.
* :func:`quiet_orbax` / :func:`quiet_failed_reads`: drop the known noise of orbax / tensorstore
  (temporary directories of a killed save, event-loop tracebacks of a failed read).

Preemption (SIGTERM / SIGINT) is :mod:`sortedjax.train.preempt`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from sortedjax.distributed import is_main, sync  # noqa: F401 - the one is_main / sync, used as rs.is_main()
from sortedjax.train.config import TrainConfig

log = logging.getLogger("sortedjax.train")


# ---------------------------------------------------------------------------- console noise

# orbax/absl WARNING lines that report something orbax handles itself. Errors are never dropped.
_ORBAX_NOISE = ("Attempted to create temporary directory",)  # a step directory left by a killed save


class _DropOrbaxNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.WARNING and str(record.msg).startswith(_ORBAX_NOISE))


def quiet_orbax() -> None:
    absl_log = logging.getLogger("absl")
    if not any(isinstance(f, _DropOrbaxNoise) for f in absl_log.filters):
        absl_log.addFilter(_DropOrbaxNoise())


def _is_failed_read_debris(u) -> bool:
    """What a failed tensorstore read leaves behind: callbacks into orbax's closed event loop."""
    if isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed":
        return True
    return getattr(u.object, "__name__", None) == "_read_array_index_and_device_put"


def quiet_failed_reads() -> None:
    """After a damaged checkpoint failed to restore (and was reported), drop the dozens of
    unraisable-exception tracebacks its abandoned reads print later; other unraisables still print."""
    prev = sys.unraisablehook
    if getattr(prev, "_drops_failed_reads", False):
        return

    def hook(u):
        if not _is_failed_read_debris(u):
            prev(u)

    hook._drops_failed_reads = True
    sys.unraisablehook = hook


# ------------------------------------------------------------------- the run's configuration

RUN_FILE = "run_config.json"
# TrainConfig fields that change how a run is shown or saved, not what it computes.
NOT_RUN_FIELDS = ("workdir", "checkpoint_every", "max_to_keep", "log_every", "progress", "donate", "desc")
_ABSENT = "(absent)"


def _json_default(x):
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (set, frozenset)):
        return sorted(x, key=repr)
    return repr(x)


def _jsonable(x):
    return json.loads(json.dumps(x, sort_keys=True, default=_json_default))


def _shapes(tree) -> dict[str, str]:
    out = {}
    for path, a in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = jax.tree_util.keystr(path, simple=True, separator="/").removesuffix("/value")
        out[name] = f"{getattr(a, 'dtype', type(a).__name__)}[{','.join(map(str, np.shape(a)))}]"
    return out


def run_record(cfg: TrainConfig, run_config: dict | None, params, rest, data=None) -> dict:
    """What defines a run: the TrainConfig fields that change what is computed, the caller's
    ``run_config``, the data's ``fingerprint()`` if it has one (:class:`ArrayBatches` does) and the
    shapes of the trainable and other state. Stored as ``workdir/run_config.json``."""
    fingerprint = getattr(data, "fingerprint", None)
    return _jsonable(
        {
            "train": {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in NOT_RUN_FIELDS},
            "run_config": dict(run_config or {}),
            "data": fingerprint() if callable(fingerprint) else None,
            "params": _shapes(params),
            "rest": _shapes(rest),
            "changes": [],
        }
    )


def _diff(old: dict, new: dict) -> tuple[dict[str, tuple], list[str]]:
    """Changed settings ``{name: (stored, now)}`` and changed state shapes (lines)."""
    changed = {}
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    a, b = old.get("train", {}), new["train"]
    for k in sorted(b):  # a field this version added counts as unchanged at its default; a removed one is ignored
        was = a.get(k, _jsonable(defaults.get(k, _ABSENT)))
        if was != b[k]:
            changed[k] = (was, b[k])
    if None not in (old.get("data"), new["data"]) and old["data"] != new["data"]:  # None: data without a fingerprint
        changed["data"] = (old["data"], new["data"])
    a, b = old.get("run_config", {}), new["run_config"]
    for k in sorted(set(a) | set(b)):
        if a.get(k, _ABSENT) != b.get(k, _ABSENT):
            changed[f"run_config.{k}"] = (a.get(k, _ABSENT), b.get(k, _ABSENT))
    shapes = []
    for section, what in (("params", "trainable"), ("rest", "other state")):
        a, b = old.get(section, {}), new[section]
        shapes += [
            f"  {what} {k}: {a.get(k, _ABSENT)} (stored) -> {b.get(k, _ABSENT)} (now)"
            for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)
        ]
    return changed, shapes


def _change_lines(name: str, old, new) -> list[str]:
    """``name: old (stored) -> new (now)``, for dicts only the entries that differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if old.get(k, _ABSENT) != new.get(k, _ABSENT))
        return [line for k in keys for line in _change_lines(f"{name}.{k}", old.get(k, _ABSENT), new.get(k, _ABSENT))]
    return [f"  {name}: {old!r} (stored) -> {new!r} (now)"]


def check_run(cfg: TrainConfig, record: dict, allow_changes: Sequence[str]) -> tuple[dict, dict, bool]:
    """Compare the workdir's stored run with this one: (record to store, allowed changes, whether checked)."""
    path = os.path.join(cfg.workdir, RUN_FILE)
    try:
        with open(path) as f:
            stored = json.load(f)
        if not isinstance(stored, dict) or "train" not in stored:
            raise ValueError("not a sortedjax run record")
    except FileNotFoundError:
        log.warning(
            "%s holds checkpoints but no %s (written before runs recorded their configuration), so the "
            "configuration cannot be checked; recording the current one",
            cfg.workdir,
            RUN_FILE,
        )
        return record, {}, False
    except (OSError, ValueError) as e:
        log.warning("%s is unreadable (%s), so the configuration cannot be checked; recording the current one", path, e)
        return record, {}, False
    changed, shapes = _diff(stored, record)
    known = {f.name for f in dataclasses.fields(TrainConfig)} | {"data"}
    known |= set(record["run_config"]) | set(stored.get("run_config", {}))
    unknown = [n for n in allow_changes if n.removeprefix("run_config.") not in known]
    if unknown:
        raise ValueError(
            f"allow_changes names {unknown}, which are neither TrainConfig fields nor run_config keys; "
            f"known: {sorted(known)}"
        )
    allowed = set(allow_changes)
    refused = {k: v for k, v in changed.items() if k not in allowed and k.removeprefix("run_config.") not in allowed}
    if refused or shapes:
        lines = [line for k, (o, n) in refused.items() for line in _change_lines(k, o, n)]
        if shapes:
            how = "the model's state changed shape, so the stored run cannot continue with this model."
        else:
            names = tuple(k.removeprefix("run_config.") for k in changed)
            how = (
                "to continue the stored run from its last checkpoint with the new values, pass "
                f"train(..., allow_changes={names!r})."
            )
        raise ValueError(
            f"workdir {cfg.workdir} holds a run with a different configuration (recorded in {path}):\n"
            + "\n".join(lines + shapes)
            + f"\nUse another workdir, delete {os.path.join(cfg.workdir, 'checkpoints')}, or pass "
            f"train(..., restart=True) to start over (this moves the old run to {os.path.join(cfg.workdir, 'old')}/); "
            + how
        )
    return {**record, "changes": stored.get("changes", [])}, changed, True


def write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _unique(path: str) -> str:
    out, i = path, 1
    while os.path.exists(out):
        out, i = f"{path}.{i}", i + 1
    return out


def start_over(workdir: str) -> None:
    """``restart=True``: move the run in ``workdir`` (checkpoints, metrics, configuration) to ``workdir/old/<time>``."""
    names = [
        n
        for n in ("checkpoints", "checkpoints_bad", "metrics.jsonl", RUN_FILE)
        if os.path.exists(os.path.join(workdir, n))
    ]
    if not names or not is_main():
        return
    dest = _unique(os.path.join(workdir, "old", time.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(dest)
    for n in names:
        os.replace(os.path.join(workdir, n), os.path.join(dest, n))
    log.warning("restart=True: moved the previous run in %s to %s (delete it once it is not needed)", workdir, dest)


# ------------------------------------------------------------------------- checkpoints


class CheckpointError(RuntimeError):
    """No checkpoint in a workdir can be restored."""


def summary(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:240]}"


# How orbax 0.12 / tensorstore report a damaged step (found by truncating, deleting and corrupting
# each file of a saved step): a missing file or item directory (FileNotFoundError; KeyError
# 'Item "state" was not found in the checkpoint'), bad JSON metadata (json.JSONDecodeError), a
# tensorstore read or decode error (ValueError "OUT_OF_RANGE: ..." for a truncated chunk,
# "FAILED_PRECONDITION: ..." for a corrupt zstd stream or invalid JSON, "DATA_LOSS: ..." for a
# truncated OCDBT manifest, "NOT_FOUND: ..." for a missing one; array reads wrap these in a plain
# Exception "Encountered error while reading array index" raised from the ValueError), and a stored
# tree that does not fit the target (ValueError naming shapes or structures; a missing array
# _METADATA reads back lists where the target has tuples). Anything else (an out-of-memory error,
# tensorstore's RESOURCE_EXHAUSTED / UNAVAILABLE / PERMISSION_DENIED, a TypeError or AttributeError
# of an API misuse, KeyboardInterrupt) says nothing about the files; so neither does, unrecognised,
# an array _METADATA edited by hand into JSON of another shape (AttributeError): it is raised.
_DAMAGE_STATUS = ("OUT_OF_RANGE:", "FAILED_PRECONDITION:", "DATA_LOSS:", "NOT_FOUND:")
_DAMAGE_TEXT = (
    "was not found in the checkpoint",  # KeyError: an item directory is missing
    "is not compatible with the stored shape",
    "tree structures do not match",
    "Structure mismatch",
    "pytree structure error",
)


class _BadStepMetadata(ValueError):
    """The step's own metadata (``meta``) does not describe it."""


def is_damage(e: BaseException) -> bool:
    """Whether a restore error means the step's files are damaged (see the list above).

    The chain of explicit causes is read as long as its exceptions are of the kinds orbax and
    tensorstore use for damage (ValueError, KeyError, OSError, a plain Exception); any other type
    (MemoryError, RuntimeError, TypeError, ...) means the error is not about the files."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, (FileNotFoundError, json.JSONDecodeError, _BadStepMetadata)):
            return True
        if type(e) is not Exception and not isinstance(e, (ValueError, KeyError, OSError)):
            return False
        text = str(e.args[0]) if e.args else ""
        if isinstance(e, (ValueError, KeyError)) and (
            text.startswith(_DAMAGE_STATUS) or any(t in text for t in _DAMAGE_TEXT)
        ):
            return True
        e, seen = e.__cause__, seen + 1
    return False


def _restore_step(mngr, step: int, target: dict):
    restored = mngr.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
    )
    meta = restored.meta
    if not isinstance(meta, dict) or "step" not in meta or "seed" not in meta:
        raise _BadStepMetadata(f"its metadata is {meta!r}, not a sortedjax step record")
    if int(meta["step"]) != step:
        raise _BadStepMetadata(f"its metadata says step {meta['step']}")
    return restored


def restore_newest_valid(mngr, target: dict, ckpt_dir: str):
    """The newest step that restores cleanly: ``(step, restored, [(bad_step, error), ...])``.

    A step whose files are damaged (:func:`is_damage`) is passed over (the caller moves it aside);
    any other error is raised as it is, with a note naming the step, and nothing is moved."""
    bad = []
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            return step, _restore_step(mngr, step, target), bad
        except BaseException as e:
            if not is_damage(e):
                e.add_note(
                    f"while restoring checkpoint step {step} from {ckpt_dir}: this error does not mean the "
                    f"files are damaged, so the checkpoint was left in place; fix the cause and rerun to resume"
                    + "".join(f"\n  (step {s} before it did not restore: {summary(b)})" for s, b in bad)
                )
                if isinstance(e, Exception):
                    log.error("restoring checkpoint step %d from %s failed: %s", step, ckpt_dir, summary(e))
                raise
            bad.append((step, e))
            quiet_failed_reads()
    raise CheckpointError(
        f"no checkpoint in {ckpt_dir} can be restored:\n"
        + "\n".join(f"  step {s}: {summary(e)}" for s, e in bad)
        + f"\nIf these files are damaged (a crash or a full disk while writing), delete {ckpt_dir} to start this "
        f"run over, or pass train(..., restart=True) to move it aside. Nothing was changed on disk."
    )


def set_aside(ckpt_dir: str, step: int, workdir: str) -> str:
    dest = _unique(os.path.join(workdir, "checkpoints_bad", str(step)))
    if is_main():
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.move(os.path.join(ckpt_dir, str(step)), dest)
    return dest


@contextlib.contextmanager
def checkpoint_manager(ckpt_dir: str, cfg: TrainConfig):
    """orbax manager that clears directories of saves cut short by a kill, and always finishes and
    closes (also when training stops with an error)."""
    mngr = ocp.CheckpointManager(
        ckpt_dir,
        options=ocp.CheckpointManagerOptions(max_to_keep=cfg.max_to_keep, create=True, cleanup_tmp_directories=True),
    )
    try:
        yield mngr
    finally:
        try:
            mngr.wait_until_finished()
            mngr.close()
        except Exception as e:  # never hide the exception that ended training
            log.error("closing the checkpoint manager for %s failed: %s", ckpt_dir, summary(e))
