"""Image classification data for the SortedNet vision experiments (thesis ch. 4).

* ``"cifar10"``: CIFAR-10 through ``tensorflow-datasets``' ``tfds.data_source("cifar10")``
  (random-access ArrayRecord files, numpy out, no TensorFlow needed; ``tfds.load`` would need
  TensorFlow for its ``tf.data`` pipeline). Needs the prepared dataset in ``data_dir`` (or
  network access for tfds to download it). Images ``32 x 32 x 3``, normalised with the CIFAR-10
  channel means / stds.
* ``"digits"`` (the offline default): scikit-learn's handwritten digits
  (``sklearn.datasets.load_digits``: 1,797 real ``8 x 8`` greyscale scans of the UCI
  optical-recognition set, shipped inside the installed package, so nothing is downloaded).
  Chosen because they are real images with 10 classes like CIFAR-10 and small enough that the
  160-sub-model MobileNetV2 grid trains in minutes on two CPU cores. Each image is upsampled
  to ``16 x 16`` (nearest neighbour, so the two stride-2 stages of the CIFAR MobileNetV2 still
  leave a ``4 x 4`` map) and repeated to 3 channels so the CIFAR models take it unchanged;
  a stratified, seeded 70 / 30 train / test split.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DATASETS = ("digits", "cifar10")
CIFAR_MEAN = np.asarray([0.4914, 0.4822, 0.4465], np.float32)
CIFAR_STD = np.asarray([0.2470, 0.2435, 0.2616], np.float32)


@dataclasses.dataclass(frozen=True)
class VisionData:
    name: str
    x_train: np.ndarray  # N x H x W x 3 float32, normalised
    y_train: np.ndarray  # N int32
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int = 10

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.x_train.shape[1:3])

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self.y_train)} train / {len(self.y_test)} test images of "
            f"{'x'.join(map(str, self.x_train.shape[1:]))}, {self.num_classes} classes"
        )


def _split(x, y, test_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):  # stratified
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[: int(round(test_fraction * len(idx)))]] = True
    return x[~test], y[~test], x[test], y[test]


def load_digits(*, size: int = 16, test_fraction: float = 0.3, seed: int = 0) -> VisionData:
    """scikit-learn's 8x8 digits as ``size x size x 3`` images (``size`` a multiple of 8)."""
    if size < 8 or size % 8:
        raise ValueError(f"digits image size must be a positive multiple of 8, got {size}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = d.images.astype(np.float32) / 16.0  # N x 8 x 8 in [0, 1]
    r = size // 8
    x = np.repeat(np.repeat(x, r, axis=1), r, axis=2)[..., None].repeat(3, axis=-1)
    x = (x - x.mean()) / x.std()
    xtr, ytr, xte, yte = _split(x, d.target.astype(np.int32), test_fraction, seed)
    return VisionData("digits", xtr, ytr, xte, yte)


def _tfds_arrays(name: str, split: str, data_dir: str | None, limit: int | None):
    import tensorflow_datasets as tfds

    src = tfds.data_source(name, split=split, data_dir=data_dir)
    n = len(src) if limit is None else min(limit, len(src))
    if n == 0:
        raise ValueError(f"tfds {name!r} split {split!r} is empty")
    items = [src[i] for i in range(n)]
    x = np.stack([np.asarray(it["image"], np.uint8) for it in items])
    y = np.asarray([int(it["label"]) for it in items], np.int32)
    return x, y


def normalize_cifar(x_uint8: np.ndarray) -> np.ndarray:
    return ((x_uint8.astype(np.float32) / 255.0) - CIFAR_MEAN) / CIFAR_STD


def load_cifar10(*, data_dir: str | None = None, limit: int | None = None) -> VisionData:
    """CIFAR-10 train / test through ``tfds.data_source`` (``limit``: first images of each split)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    xtr, ytr = _tfds_arrays("cifar10", "train", data_dir, limit)
    xte, yte = _tfds_arrays("cifar10", "test", data_dir, limit)
    if xtr.shape[1:] != (32, 32, 3):
        raise ValueError(f"cifar10 images should be 32x32x3, got {xtr.shape[1:]}")
    return VisionData("cifar10", normalize_cifar(xtr), ytr, normalize_cifar(xte), yte)


def load(name: str, *, data_dir: str | None = None, limit: int | None = None, seed: int = 0) -> VisionData:
    if name == "digits":
        return load_digits(seed=seed)
    if name == "cifar10":
        return load_cifar10(data_dir=data_dir, limit=limit)
    raise ValueError(f"unknown vision dataset {name!r}; allowed: {DATASETS}")


def augment(x: np.ndarray, rng: np.random.Generator, pad: int = 4, *, flip: bool = True) -> np.ndarray:
    """The CIFAR augmentation: random crop after ``pad``-pixel zero padding, random horizontal
    flip (``flip=False``: crop only, for images that are not mirror-symmetric such as digits)."""
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy, dx = rng.integers(0, 2 * pad + 1, n), rng.integers(0, 2 * pad + 1, n)
    rows = dy[:, None] + np.arange(h)[None]
    cols = dx[:, None] + np.arange(w)[None]
    out = xp[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if flip:
        mirrored = rng.random(n) < 0.5
        out[mirrored] = out[mirrored, :, ::-1]
    return out
