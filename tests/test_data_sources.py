"""Data beyond CIFAR: image folders of any size (grayscale stays one channel), ``.npz``
arrays, TFDS; per-channel statistics from the training split; crop padding proportional
to the image; runs on such data record its shape and class count, resume, evaluate and
export; every bad input is one line."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import load_script
from repr_jax.data import DataError, channel_stats, load_data, synthetic_cifar


def write_folder(root: Path, data, splits=("train", "test")) -> Path:
    """``data`` (a Dataset) as ``<split>/<class>/<i>.png``."""
    for split, x, y in zip(splits, (data.train_x, data.test_x), (data.train_y, data.test_y)):
        for i, (img, label) in enumerate(zip(x, y)):
            folder = root / split / data.class_names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{i}.png")
    return root


def _covering(n_train, n_test, classes, shape, seed=0):
    data = synthetic_cifar(n_train, n_test, classes, seed=seed, image_shape=shape)
    ty, vy = data.train_y.copy(), data.test_y.copy()
    ty[:classes], vy[:classes] = np.arange(classes), np.arange(classes)     # every class in both splits
    import dataclasses
    return dataclasses.replace(data, train_y=ty, test_y=vy, class_names=tuple(f"k{i}" for i in range(classes)))


@pytest.fixture(scope="module")
def gray28(tmp_path_factory):
    data = _covering(96, 40, 3, (28, 28, 1), seed=1)
    return write_folder(tmp_path_factory.mktemp("gray28"), data), data


@pytest.fixture(scope="module")
def rgb64(tmp_path_factory):
    data = _covering(64, 32, 4, (64, 64, 3), seed=2)
    return write_folder(tmp_path_factory.mktemp("rgb64"), data), data


def _in_label_order(data, names):
    """The fixture's arrays in the loader's order: by class, then by file number."""
    def order(x, y):
        idx = np.lexsort((np.arange(len(y)), y))
        return x[idx], y[idx]
    return (*order(data.train_x, data.train_y), *order(data.test_x, data.test_y))


def test_a_grayscale_folder_stays_one_channel_and_round_trips(gray28):
    root, data = gray28
    loaded = load_data("folder", root)
    assert loaded.image_shape == (28, 28, 1) and loaded.class_names == ("k0", "k1", "k2")
    tx, ty, vx, vy = _in_label_order(data, loaded.class_names)
    np.testing.assert_array_equal(loaded.train_x, tx)
    np.testing.assert_array_equal(loaded.train_y, ty)
    np.testing.assert_array_equal(loaded.test_x, vx)
    np.testing.assert_array_equal(loaded.test_y, vy)
    again = load_data("folder", root)                      # from the decode cache: same arrays and stats
    assert "(cached)" in again.source and again.fingerprint == loaded.fingerprint
    assert again.stats() == loaded.stats()


def test_channel_stats_match_numpy(rgb64):
    _, data = rgb64
    x = data.train_x.astype(np.float64) / 255.0
    mean, std = channel_stats(data.train_x, chunk=7)        # chunked sums: the chunk size does not matter
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-9)


def test_image_size_resizes_and_mixed_sizes_are_one_line(tmp_path, rgb64):
    root, _ = rgb64
    small = load_data("folder", root, image_size=(32, 48))
    assert small.image_shape == (32, 48, 3)
    # the reference: PIL's bilinear resize to cover (32, 48) → 48x48, then the centre 32 rows
    img = np.asarray(Image.open(root / "train" / "k0" / "0.png"))
    ref = np.stack([np.asarray(Image.fromarray(img[..., c]).resize((48, 48), Image.BILINEAR)) for c in range(3)], -1)
    np.testing.assert_array_equal(small.train_x[0], ref[8:40])
    odd = tmp_path / "odd"
    write_folder(odd, _covering(6, 3, 3, (20, 20, 3)))
    Image.fromarray(np.zeros((24, 20, 3), np.uint8)).save(odd / "train" / "k1" / "99.png")
    with pytest.raises(DataError, match=r"image .*99.png is 24x20 pixels, .* 20x20; set data.image_size=H,W") as err:
        load_data("folder", odd, use_cache=False)
    assert len(str(err.value).splitlines()) == 1
    assert load_data("folder", odd, image_size=(16, 16), use_cache=False).image_shape == (16, 16, 3)


def test_a_mixed_gray_and_colour_folder_becomes_rgb(tmp_path):
    root = write_folder(tmp_path / "mixed", _covering(6, 3, 3, (8, 8, 1)))
    Image.fromarray(np.full((8, 8, 3), (10, 20, 30), np.uint8)).save(root / "train" / "k2" / "50.png")
    loaded = load_data("folder", root, use_cache=False)
    assert loaded.image_shape == (8, 8, 3)
    gray = np.asarray(Image.open(root / "train" / "k0" / "0.png"))
    np.testing.assert_array_equal(loaded.train_x[0], np.repeat(gray[..., None], 3, -1))


def test_npz_arrays_load_and_bad_files_are_one_line(tmp_path):
    d = _covering(30, 12, 5, (16, 16, 1), seed=3)
    good = tmp_path / "a.npz"
    np.savez(good, x_train=d.train_x[..., 0], y_train=d.train_y, x_test=d.test_x[..., 0], y_test=d.test_y,
             class_names=np.array(list("abcde")))
    loaded = load_data("npz", good)
    np.testing.assert_array_equal(loaded.train_x, d.train_x)
    assert loaded.class_names == tuple("abcde") and loaded.image_shape == (16, 16, 1)
    cases = {
        "object": ({"x_train": np.array([None, 1], object), "y_train": d.train_y, "x_test": d.test_x,
                    "y_test": d.test_y}, "Object arrays cannot be loaded"),
        "missing": ({"x_train": d.train_x}, "has no y_train, x_test, y_test"),
        "float": ({"x_train": d.train_x.astype(np.float32), "y_train": d.train_y, "x_test": d.test_x,
                   "y_test": d.test_y}, "x_train is float32 .* expected uint8"),
        "count": ({"x_train": d.train_x, "y_train": d.train_y[:-1], "x_test": d.test_x, "y_test": d.test_y},
                  "30 images but 29 labels"),
        "range": ({"x_train": d.train_x, "y_train": d.train_y, "x_test": d.test_x, "y_test": d.test_y + 5,
                   "class_names": np.array(list("abcde"))}, "test label .* is outside 0..4"),
    }
    for name, (arrays, message) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(DataError, match=message) as err:
            load_data("npz", path)
        assert len(str(err.value).splitlines()) == 1, name
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not an .npz archive"):
        load_data("npz", tmp_path / "junk.npz")
    with pytest.raises(DataError, match="data.dataset=npz reads --data-dir"):
        load_data("npz", None)
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_data("mnist", good)


class _FakeBuilder:
    """What repr_jax reads of a TFDS builder: info.splits, the label names, as_dataset."""

    def __init__(self, splits: dict, names, prepared=True, data_dir="/tfds"):
        self.splits, self.prepared, self.data_dir = splits, prepared, data_dir
        self.info = types.SimpleNamespace(splits=dict.fromkeys(splits),
                                          features={"label": types.SimpleNamespace(names=list(names))})

    def is_prepared(self):
        return self.prepared

    def as_dataset(self, split, as_supervised, shuffle_files):
        assert as_supervised and not shuffle_files
        return self.splits[split]


def test_tfds_source_through_a_stand_in_module(monkeypatch, tmp_path):
    """Our side of the TFDS path (without TensorFlow): a prepared builder's train/test
    supervised pairs become the arrays; an unprepared one, missing splits and a failing TFDS
    are one line."""
    d = _covering(10, 4, 2, (12, 12, 1), seed=4)
    pairs = {"train": list(zip(d.train_x, d.train_y)), "test": list(zip(d.test_x, d.test_y))}
    builders = {"digits": _FakeBuilder(pairs, ["zero", "one"]), "raw": _FakeBuilder(pairs, "ab", prepared=False),
                "trainonly": _FakeBuilder({"train": pairs["train"]}, "ab")}
    seen = {}

    def builder(name, data_dir=None):
        seen["data_dir"] = data_dir
        if name not in builders:
            raise ValueError(f"Dataset {name} not found.")
        return builders[name]

    fake = types.SimpleNamespace(builder=builder, as_numpy=lambda ds: iter(ds),
                                 folder_dataset=types.SimpleNamespace(ImageFolder=lambda root: builders["digits"]))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    loaded = load_data("tfds:digits", tmp_path)
    assert seen["data_dir"] == str(tmp_path) and loaded.class_names == ("zero", "one")
    np.testing.assert_array_equal(loaded.train_x, d.train_x)
    np.testing.assert_array_equal(loaded.test_y, d.test_y)
    assert load_data("tfds:image_folder", tmp_path).image_shape == (12, 12, 1)
    for name, message in (("raw", "tfds:raw is not prepared in /tfds .no download"),
                          ("trainonly", r"tfds:trainonly has splits \['train'\]; train and test are needed"),
                          ("nothing", "tfds:nothing: Dataset nothing not found.")):
        with pytest.raises(DataError, match=message):
            load_data(f"tfds:{name}", tmp_path)
    with pytest.raises(DataError, match="tfds:image_folder needs --data-dir"):
        load_data("tfds:image_folder", None)


def test_tfds_image_folder_for_real(tmp_path, gray28):
    """TFDS's own ImageFolder over a local folder (skipped where tensorflow-datasets is not
    installed: pip install -e '.[tfds]')."""
    pytest.importorskip("tensorflow_datasets")
    root, data = gray28
    loaded = load_data("tfds:image_folder", root)
    direct = load_data("folder", root)
    assert loaded.class_names == direct.class_names
    # TFDS decodes PNGs as 3-channel by default; the labels and the pixels of each class match
    assert loaded.image_shape[:2] == (28, 28) and len(loaded.train_y) == len(direct.train_y)
    np.testing.assert_array_equal(np.bincount(loaded.train_y), np.bincount(direct.train_y))


def test_preprocessing_follows_the_data():
    from repr_jax.config import RunConfig, DataConfig
    from repr_jax.data.pipeline import Preprocessing, crop_padding
    from repr_jax.run_state import preprocessing
    assert [crop_padding(h, h) for h in (8, 28, 32, 64, 224)] == [1, 4, 4, 8, 28]
    gray = synthetic_cifar(20, 5, 3, image_shape=(28, 28, 1)).with_stats()
    folder = RunConfig(out="x", data=DataConfig(dataset="folder"))
    p = preprocessing(folder, gray)
    assert p == Preprocessing(gray.stats()[0], gray.stats()[1], 4, True) and len(p.mean) == 1
    cifar = synthetic_cifar(20, 5)
    assert preprocessing(RunConfig(out="x"), cifar) == Preprocessing()          # CIFAR's published statistics
    trained = RunConfig(out="x", data=DataConfig(normalization="train", crop_pad=0, flip=False))
    assert preprocessing(trained, cifar) == Preprocessing(*cifar.stats(), 0, False)
    plain = preprocessing(RunConfig(out="x", data=DataConfig(normalization="none")), cifar)
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    np.testing.assert_allclose(np.asarray(plain(images)), images / 255.0, rtol=1e-6)
    # no crop, no flip: augmentation leaves the images as they are
    np.testing.assert_array_equal(np.asarray(Preprocessing(crop_pad=0, flip=False).augment(None, images)), images)


def test_augmentation_pads_in_proportion_and_keeps_one_channel():
    import jax
    from repr_jax.data.pipeline import augment
    x = np.arange(3 * 16 * 16, dtype=np.uint8).reshape(3, 16, 16, 1) % 251 + 1
    out = np.asarray(augment(jax.random.key(3), x, pad=2, flip=False))
    assert out.shape == x.shape
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    for img, src in zip(out, padded):   # every output is some 16x16 window of the zero-padded image
        assert any(np.array_equal(img, src[i:i + 16, j:j + 16]) for i in range(5) for j in range(5))


def test_runs_on_a_folder_record_its_shape_resume_evaluate_and_export(gray28, rgb64, tmp_path, capsys):
    cli = load_script("experiments/cifar.py")
    root, _ = gray28
    out = tmp_path / "gray"
    base = ["--dataset", "folder", "--data-dir", str(root), "--model", "lenet5", "--batch-size", "16", "--quiet"]
    assert cli.main([*base, "--epochs", "1", "--out", str(out)]) == 0
    arch = json.loads((out / "architecture.json").read_text())
    saved = json.loads((out / "config.json").read_text())["config"]["data"]
    assert arch["input_shape"] == [28, 28, 1] and arch["num_classes"] == 3
    assert saved["input_shape"] == [28, 28, 1] and saved["num_classes"] == 3
    assert cli.main([*base, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    from repr_jax.evaluate import main as evaluate_main
    capsys.readouterr()
    assert evaluate_main([str(out)]) == 0 and "on 40 images" in capsys.readouterr().out
    # other data under the same run: refused in one line, nothing changes
    other, _ = rgb64
    before = (out / "config.json").read_text()
    assert cli.main([*base[:3], str(other), *base[4:], "--epochs", "3", "--out", str(out), "--resume"]) == 2
    assert "data.input_shape is (28, 28, 1) but the data has (64, 64, 3)" in capsys.readouterr().err
    assert (out / "config.json").read_text() == before
    # a 64x64 RGB folder trains a structured method and exports with the masked logits
    run64 = tmp_path / "rgb"
    assert cli.main(["--dataset", "folder", "--data-dir", str(other), "--model", "convnet", "--width", "8", "--set",
                     "model.batch_norm=true", "--method", "li-l1", "--set", "li-l1.fraction=0.5", "--set",
                     "li-l1.prune_epoch=1", "--epochs", "2", "--batch-size", "16", "--quiet", "--out", str(run64)]) == 0
    export = json.loads((run64 / "summary.json").read_text())["export"]
    assert export["params_after"] < export["params_before"] and export["max_abs_logit_difference"] < 1e-4
    assert json.loads((run64 / "architecture.json").read_text())["input_shape"] == [64, 64, 3]


def test_bad_data_settings_are_one_line(tmp_path, capsys):
    cli = load_script("experiments/cifar.py")
    for args, message in ((["--dataset", "mnist"], "unknown dataset 'mnist'"),
                          (["--dataset", "folder", "--data-dir", str(tmp_path / "none")], "does not exist"),
                          (["--set", "data.image_size=0,4"], "data.image_size must be H,W or S"),
                          (["--set", "data.normalization=zscore"], "data.normalization must be one of")):
        assert cli.main([*args, "--out", str(tmp_path / "r"), "--epochs", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "r").exists()
    small = _covering(40, 10, 3, (8, 8, 1))              # a model that cannot take the data's size: one line
    np.savez(tmp_path / "d8.npz", x_train=small.train_x, y_train=small.train_y, x_test=small.test_x,
             y_test=small.test_y)
    assert cli.main(["--dataset", "npz", "--data-dir", str(tmp_path / "d8.npz"), "--model", "lenet5",
                     "--batch-size", "8", "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: LeNet-5 needs images of at least 16x16 (two 5x5 VALID convs, two 2x2 pools), got 8x8"
    assert not (tmp_path / "r").exists()


def test_a_grayscale_image_in_a_cifar_folder_is_read_as_rgb(tmp_path):
    """CIFAR's folder layout converts every image to RGB, as before other sources existed."""
    data = _covering(12, 12, 10, (32, 32, 3))
    import dataclasses
    from repr_jax.data import CIFAR10_CLASSES
    root = write_folder(tmp_path / "c", dataclasses.replace(data, class_names=CIFAR10_CLASSES))
    gray = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    Image.fromarray(gray).save(root / "train" / "cat" / "0.png")       # the first image of class 3 (cat)
    loaded = load_data("cifar10", root, use_cache=False)
    assert loaded.image_shape == (32, 32, 3)
    first_cat = int(np.flatnonzero(loaded.train_y == 3)[0])
    np.testing.assert_array_equal(loaded.train_x[first_cat], np.repeat(gray[..., None], 3, -1))
