"""A finished run's JSON result kept in its directory, so that rerunning an experiment reuses it."""

from __future__ import annotations

import json
import os


def run_once(run_dir: str, compute) -> dict:
    """``compute()``'s JSON result, kept in ``run_dir/result.json`` so that a rerun reuses it."""
    path = os.path.join(run_dir, "result.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    out = compute()
    os.makedirs(run_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    raise SystemExit("experiments.common.results is part of python -m experiments.<name>, not a command of its own")
