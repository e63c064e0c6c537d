"""``experiments/derive_datasets.py``: the study's real non-CIFAR-shaped sets — CIFAR as
28×28 grayscale and as 64×64 RGB, sklearn's 8×8 digits — load through ``--dataset npz``
(and ``folder``) with the shapes, labels and pixels the conversions define."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import load_script
from repr_jax.data import load_data


def test_cifar_becomes_gray28_and_rgb64(tiny_cifar_dir, tmp_path):
    script = load_script("experiments/derive_datasets.py")
    assert script.main(["--cifar", str(tiny_cifar_dir), "--out", str(tmp_path), "--sets", "gray28", "rgb64"]) == 0
    cifar = load_data("cifar10", tiny_cifar_dir)
    gray = load_data("npz", tmp_path / "cifar10-gray28.npz")
    rgb = load_data("npz", tmp_path / "cifar10-64.npz")
    assert gray.image_shape == (28, 28, 1) and rgb.image_shape == (64, 64, 3)
    np.testing.assert_array_equal(gray.train_y, cifar.train_y)
    assert gray.class_names == cifar.class_names
    # the reference conversion, written out: ITU-R 601 luma, then PIL's bilinear 32 → 28
    img = cifar.train_x[5].astype(np.int64)
    luma = np.asarray(Image.fromarray(cifar.train_x[5]).convert("L"))
    assert np.abs(luma - (img[..., 0] * 299 + img[..., 1] * 587 + img[..., 2] * 114) / 1000).max() <= 1
    np.testing.assert_array_equal(gray.train_x[5, ..., 0],
                                  np.asarray(Image.fromarray(luma).resize((28, 28), Image.BILINEAR)))
    assert script.main(["--cifar", str(tiny_cifar_dir), "--out", str(tmp_path / "f"), "--sets", "gray28",
                        "--format", "folder"]) == 0
    folder = load_data("folder", tmp_path / "f" / "cifar10-gray28", use_cache=False)
    np.testing.assert_array_equal(np.sort(folder.train_x.reshape(len(folder.train_x), -1), axis=0),
                                  np.sort(gray.train_x.reshape(len(gray.train_x), -1), axis=0))


def test_digits_are_sklearns_split_by_class():
    sklearn = pytest.importorskip("sklearn.datasets")
    script = load_script("experiments/derive_datasets.py")
    d = script.digits()
    raw = sklearn.load_digits()
    assert d.image_shape == (8, 8, 1) and len(d.train_y) + len(d.test_y) == len(raw.target) == 1797
    assert np.bincount(d.test_y).tolist() == [round(0.2 * n) for n in np.bincount(raw.target)]
    assert d.train_x.max() == 255 and set(np.unique(d.train_x)) <= set(range(0, 256, 16)) | {255}
