"""In-memory data as a pure function of the step, and a cheap fingerprint of it for run records."""

from __future__ import annotations

import zlib

import numpy as np


def array_fingerprint(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """``{name: "dtype[shape] crc32"}``: a cheap identity of in-memory data (GB/s), for run records."""
    out = {}
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        raw = repr(a.tolist()).encode() if a.dtype.hasobject else a.reshape(-1).view(np.uint8)
        out[k] = f"{a.dtype}[{','.join(map(str, a.shape))}] {zlib.crc32(raw):08x}"
    return out


class ArrayBatches:
    """Epoch-shuffled mini-batches of in-memory arrays, as a pure function of the step.

    ``batches(step)`` returns batch ``step`` of the infinite sequence of epochs; epoch ``e``
    uses permutation ``seed + e``. Incomplete final batches are dropped.
    """

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int = 0, shuffle: bool = True):
        sizes = {k: len(v) for k, v in arrays.items()}
        if not arrays or len(set(sizes.values())) != 1:
            raise ValueError(f"arrays must be non-empty and share their first dimension, got {sizes}")
        self.n = next(iter(sizes.values()))
        if not 1 <= batch_size <= self.n:
            raise ValueError(f"batch_size must be in 1..{self.n} (dataset size), got {batch_size}")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.steps_per_epoch = self.n // batch_size
        self._perm_epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            self._perm = (
                np.random.default_rng(self.seed + epoch).permutation(self.n) if self.shuffle else np.arange(self.n)
            )
            self._perm_epoch = epoch
        return self._perm

    def fingerprint(self) -> dict:
        """What defines the batch sequence (recorded with a run, so a changed data set is noticed)."""
        return {
            "arrays": array_fingerprint(self.arrays),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
        }

    takes_rows = True  # sortedjax.sharding.host_batch may ask for one process's rows only

    def __call__(self, step: int, rows: slice | None = None) -> dict[str, np.ndarray]:
        """Batch ``step``; ``rows``: only those rows of it (one host's share of a multi-host batch)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        idx = self._permutation(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        if rows is not None:
            lo, hi, stride = rows.indices(self.batch_size)
            if stride != 1 or hi <= lo:
                raise ValueError(f"rows must be a non-empty contiguous slice of 0..{self.batch_size}, got {rows}")
            idx = idx[lo:hi]
        return {k: v[idx] for k, v in self.arrays.items()}
