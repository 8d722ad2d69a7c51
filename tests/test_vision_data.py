"""Vision data: the offline digits and CIFAR-10 through tfds (mock data, nothing downloaded)."""

import numpy as np
import pytest

from sortedjax.data import vision as vision_data


def test_digits_are_real_upsampled_images():
    d = vision_data.load_digits(size=16, seed=0)
    assert d.x_train.shape[1:] == (16, 16, 3) and d.x_train.dtype == np.float32
    assert len(d.y_train) + len(d.y_test) == 1797
    assert abs(len(d.y_test) - 0.3 * 1797) < 10
    assert set(np.unique(d.y_test)) == set(range(10))  # stratified
    x = d.x_train[0]
    np.testing.assert_array_equal(x[0::2, 0::2], x[1::2, 1::2])  # nearest-neighbour 2x upsampling
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    assert not np.array_equal(d.x_train[0], d.x_train[1])
    d2 = vision_data.load_digits(size=16, seed=1)
    assert not np.array_equal(d.y_test, d2.y_test)


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of 8, got 12"):
        vision_data.load_digits(size=12)
    with pytest.raises(ValueError, match="unknown vision dataset 'mnist'"):
        vision_data.load("mnist")
    with pytest.raises(ValueError, match="limit must be >= 1"):
        vision_data.load_cifar10(limit=0)


def test_cifar10_through_tfds_mock_data():
    import tensorflow_datasets as tfds  # in the test extra: this test must run, not skip

    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        d = vision_data.load("cifar10", limit=5)
        raw = tfds.data_source("cifar10", split="train")
        first = np.asarray(raw[0]["image"])
    assert d.name == "cifar10" and d.x_train.shape == (5, 32, 32, 3) and d.x_test.shape == (5, 32, 32, 3)
    assert d.y_train.dtype == np.int32 and d.y_train.min() >= 0 and d.y_train.max() < 10
    np.testing.assert_allclose(d.x_train[0], vision_data.normalize_cifar(first), rtol=1e-6)


def test_augment_crops_and_flips():
    rng = np.random.default_rng(0)
    x = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1) + 1
    out = vision_data.augment(x, rng, pad=0)
    for a, b in zip(out, x):
        assert np.array_equal(a, b) or np.array_equal(a, b[:, ::-1])
    out = vision_data.augment(x, np.random.default_rng(3), pad=2)
    assert out.shape == x.shape and (out == 0).any()
    for seed in range(5):  # flip=False with no padding: every image unchanged
        assert np.array_equal(vision_data.augment(x, np.random.default_rng(seed), pad=0, flip=False), x)
