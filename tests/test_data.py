"""Loader: every layout round-trips a fixture written in the real file format."""
from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_CIFAR, covering_cifar, requires_shared_cifar, write_cifar10_pickles
from repr_jax.data import CIFAR10_CLASSES, DataError, download_archive, load_cifar


def _arrays(n_train=40, n_test=20, classes=10, seed=1):
    return covering_cifar(n_train, n_test, classes, seed)


def _rows(x):
    return x.transpose(0, 3, 1, 2).reshape(len(x), -1)


def _check(data, tx, ty, vx, vy):
    np.testing.assert_array_equal(data.train_x, tx)
    np.testing.assert_array_equal(data.train_y, ty)
    np.testing.assert_array_equal(data.test_x, vx)
    np.testing.assert_array_equal(data.test_y, vy)
    assert data.train_x.dtype == np.uint8 and data.train_y.dtype == np.int32


def _tar(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src, arcname=src.name)
    return dest


@pytest.mark.parametrize("as_tar", [False, True])
def test_cifar10_python_pickles_round_trip(tmp_path, as_tar):
    arrays = _arrays()
    d = write_cifar10_pickles(tmp_path / "src", *arrays)
    source = _tar(d, tmp_path / "c10.tar.gz") if as_tar else d
    data = load_cifar("cifar10", source)
    _check(data, *arrays)
    assert data.class_names == CIFAR10_CLASSES


def test_cifar100_python_pickles_round_trip(tmp_path):
    tx, ty, vx, vy = _arrays(classes=100)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for name, x, y in (("train", tx, ty), ("test", vx, vy)):
        with open(d / name, "wb") as f:
            pickle.dump({"data": _rows(x), "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist()}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    data = load_cifar("cifar100", _tar(d, tmp_path / "c100.tgz"))
    _check(data, tx, ty, vx, vy)
    assert data.num_classes == 100 and data.class_names[7] == "c7"


def test_cifar10_binary_round_trip(tmp_path):
    tx, ty, vx, vy = _arrays()
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    record = lambda x, y: np.concatenate([y[:, None].astype(np.uint8), _rows(x)], 1).tobytes()
    for i, (xs, ys) in enumerate(zip(np.array_split(tx, 5), np.array_split(ty, 5)), start=1):
        (d / f"data_batch_{i}.bin").write_bytes(record(xs, ys))
    (d / "test_batch.bin").write_bytes(record(vx, vy))
    (d / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n")
    _check(load_cifar("cifar10", d), tx, ty, vx, vy)


def test_cifar100_binary_round_trip(tmp_path):
    tx, ty, vx, vy = _arrays(classes=100)
    d = tmp_path / "cifar-100-binary"
    d.mkdir()
    record = lambda x, y: np.concatenate(
        [(y // 5)[:, None].astype(np.uint8), y[:, None].astype(np.uint8), _rows(x)], 1).tobytes()
    (d / "train.bin").write_bytes(record(tx, ty))
    (d / "test.bin").write_bytes(record(vx, vy))
    _check(load_cifar("cifar100", d), tx, ty, vx, vy)


@pytest.mark.parametrize("as_tar", [False, True])
def test_image_folder_png_round_trip(tmp_path, as_tar):
    tx, ty, vx, vy = _arrays(n_train=30, n_test=10)
    root = tmp_path / "cifar10-png"
    expected = {}
    for split, x, y in (("train", tx, ty), ("test", vx, vy)):
        order = np.argsort(y, kind="stable")  # the loader returns class-major, file-numbered order
        counters = {}
        for i in order:
            cls = CIFAR10_CLASSES[y[i]]
            k = counters[cls] = counters.get(cls, -1) + 1
            path = root / split / cls / f"{k:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(path)
        expected[split] = (x[order], y[order])
    source = _tar(root, tmp_path / "png.tar.gz") if as_tar else root
    data = load_cifar("cifar10", source)
    _check(data, *expected["train"], *expected["test"])


def test_cache_is_used_on_second_load(tmp_path, monkeypatch):
    monkeypatch.setenv("REPR_JAX_CACHE", str(tmp_path / "cache"))
    arrays = _arrays()
    d = write_cifar10_pickles(tmp_path / "src", *arrays)
    first = load_cifar("cifar10", d)
    assert "cached" not in first.source
    second = load_cifar("cifar10", d)
    assert "cached" in second.source
    _check(second, *arrays)


def test_corrupt_and_missing_sources_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_cifar("cifar10", tmp_path / "nope")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"this is not a tarball")
    with pytest.raises(DataError, match="cannot read archive"):
        load_cifar("cifar10", bad)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(b"garbage")
    (d / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt CIFAR pickle"):
        load_cifar("cifar10", d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no cifar10 layout"):
        load_cifar("cifar10", empty)


def test_download_checks_md5(tmp_path):
    arrays = _arrays()
    archive = _tar(write_cifar10_pickles(tmp_path / "src", *arrays), tmp_path / "cifar-10-python.tar.gz")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    got = download_archive("cifar10", tmp_path / "dl" / "a.tar.gz", url=archive.as_uri(), md5=md5)
    _check(load_cifar("cifar10", got), *arrays)
    with pytest.raises(DataError, match="MD5 mismatch"):
        download_archive("cifar10", tmp_path / "dl" / "b.tar.gz", url=archive.as_uri(), md5="0" * 32)
    assert not (tmp_path / "dl" / "b.tar.gz").exists()


def test_validation_split_and_subset(tmp_path):
    tx, ty, vx, vy = _arrays(n_train=50)
    data = load_cifar("cifar10", write_cifar10_pickles(tmp_path, tx, ty, vx, vy))
    val = data.split_validation(10)
    np.testing.assert_array_equal(val.test_x, tx[-10:])
    np.testing.assert_array_equal(val.train_y, ty[:-10])
    sub = data.subset(train=20, test=5, seed=3)
    assert len(sub.train_y) == 20 and len(sub.test_y) == 5
    assert len(np.unique(sub.train_x.reshape(20, -1), axis=0)) == 20


@requires_shared_cifar()
def test_shared_jpeg_copy_loads():
    data = load_cifar("cifar10", SHARED_CIFAR)
    assert data.train_x.shape == (50000, 32, 32, 3) and data.test_x.shape == (10000, 32, 32, 3)
    assert data.num_classes == 10 and data.class_names == CIFAR10_CLASSES
    assert np.bincount(data.train_y).tolist() == [5000] * 10
    assert np.bincount(data.test_y).tolist() == [1000] * 10
