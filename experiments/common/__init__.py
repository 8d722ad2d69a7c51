"""What every experiment shares: :mod:`~experiments.common.flags` (config dataclass -> argparse),
:mod:`~experiments.common.results` (results files, run-once), :mod:`~experiments.common.requires`
(optional dependencies checked before any work)."""

if __name__ == "__main__":
    raise SystemExit("experiments.common is part of python -m experiments.<name>, not a command of its own")
