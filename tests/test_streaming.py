"""The streaming reader (repr_jax.data.streaming) against the in-memory folder reader: the same
labels and arrays, numpy's permutation per (seed, epoch), a bounded read-ahead, one-line
errors; an epoch trained on streamed batches is the in-memory epoch step for step."""
from __future__ import annotations

import threading

import jax
import numpy as np
import optax
import pytest
from PIL import Image

from test_data_sources import _covering, write_folder
from repr_jax.data import DataError, channel_stats, load_data
from repr_jax.models import create_model
from repr_jax.data.pipeline import Preprocessing, epoch_indices
from repr_jax.state import create_train_state
from repr_jax.data.streaming import FolderStream, index_folder, prefetch_to_device, sample_stats
from repr_jax.train import evaluate, evaluate_batches, run_epoch, run_epoch_batches


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    data = _covering(70, 23, 3, (12, 12, 1), seed=4)
    return write_folder(tmp_path_factory.mktemp("stream"), data)


def test_in_order_the_stream_is_the_in_memory_folder(folder):
    memory = load_data("folder", folder, use_cache=False)
    train, test = index_folder(folder, "train"), index_folder(folder, "test")
    assert train.class_names == test.class_names == memory.class_names
    for index, x, y in ((train, memory.train_x, memory.train_y), (test, memory.test_x, memory.test_y)):
        stream = FolderStream(index, 16, shuffle=False, workers=2, prefetch=2)
        batches = list(stream.epoch())
        assert [len(b[1]) for b in batches] == [16] * (len(y) // 16) + ([len(y) % 16] if len(y) % 16 else [])
        np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
        np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
        assert stream.shape == x.shape[1:] == (12, 12, 1)


def test_shuffled_epochs_are_numpy_permutations_without_a_partial_batch(folder):
    index = index_folder(folder)
    stream = FolderStream(index, 16, seed=7, workers=2)
    assert len(stream) == 70 // 16
    images = {e: list(stream.epoch(e)) for e in (0, 1)}
    for e, batches in images.items():
        want = np.random.default_rng([7, e]).permutation(70)[:64]
        np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), index.labels[want])
        np.testing.assert_array_equal(batches[1][0], stream.load(want[16:32])[0])
    assert not np.array_equal(images[0][0][0], images[1][0][0])
    again = list(stream.epoch(1))
    np.testing.assert_array_equal(again[2][0], images[1][2][0])


def test_the_read_ahead_is_bounded(folder):
    started, lock = [0], threading.Lock()

    class Counting(FolderStream):
        def read(self, i):
            with lock:
                started[0] += 1
            return super().read(i)

    stream = Counting(index_folder(folder), 4, shuffle=False, workers=3, prefetch=3)
    started[0] = 0
    for k, _ in enumerate(stream.epoch(), start=1):
        with lock:   # k batches consumed: at most 3 batches' images buffered ahead, 3 threads reading
            assert started[0] <= 4 * k + 3 * 4 + 3, (k, started[0])
    assert started[0] == len(stream.index) == 70
    early = stream.epoch()
    next(early)
    early.close()                 # leaving early stops the readers without error


def test_streamed_epoch_equals_the_in_memory_epoch(folder):
    memory = load_data("folder", folder, use_cache=False)
    model = create_model("convnet", 3, depth=2, width=8)
    state = create_train_state(model, optax.sgd(0.05, momentum=0.9), 0, input_shape=(12, 12, 1))
    layers, key = state.layers, jax.random.key(3)
    prep = Preprocessing((0.5,), (0.25,), 2, True)
    a, ma = run_epoch(state, memory.train_x, memory.train_y, key, batch_size=16, layers=layers, preprocess=prep)
    idx = np.asarray(epoch_indices(key, len(memory.train_y), 16))
    batches = prefetch_to_device((memory.train_x[i], memory.train_y[i]) for i in idx)
    state = create_train_state(model, optax.sgd(0.05, momentum=0.9), 0, input_shape=(12, 12, 1))
    b, mb = run_epoch_batches(state, batches, key, layers=layers, preprocess=prep)
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a.params, b.params)
    assert ma["accuracy"] == mb["accuracy"] and ma["loss"] == pytest.approx(mb["loss"], rel=1e-5)
    test = FolderStream(index_folder(folder, "test"), 10, shuffle=False)
    streamed = evaluate_batches(b, test.epoch(), 10, preprocess=prep)
    whole = evaluate(b, memory.test_x, memory.test_y, 10, preprocess=prep)
    assert streamed["accuracy"] == whole["accuracy"] and streamed["loss"] == pytest.approx(whole["loss"], rel=1e-5)


def test_sample_stats_and_resizing(folder, tmp_path):
    memory = load_data("folder", folder, use_cache=False)
    stream = FolderStream(index_folder(folder), 8)
    np.testing.assert_allclose(sample_stats(stream, images=10_000), channel_stats(memory.train_x), rtol=1e-9)
    big = FolderStream(index_folder(folder), 8, image_size=(20, 24), channels=3)
    x, _ = big.load([0, 1])
    assert x.shape == (2, 20, 24, 3) and big.shape == (20, 24, 3)


def test_bad_folders_are_one_line(folder, tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        index_folder(tmp_path / "missing")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no train/<class>/<image> files"):
        index_folder(tmp_path)
    for i in range(3):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "train" / "a" / f"{i}.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "train" / "a" / "3.png")
    (tmp_path / "train" / "a" / "4.png").write_bytes(b"not a png")
    stream = FolderStream(index_folder(tmp_path), 2, shuffle=False)
    with pytest.raises(DataError, match=r"image train/a/3.png is 9x8 pixels, the folder's first 8x8"):
        stream.load([3])
    with pytest.raises(DataError, match=r"cannot decode image train/a/4.png"):
        list(FolderStream(index_folder(tmp_path), 5, shuffle=False, image_size=(8, 8)).epoch())
    with pytest.raises(DataError, match="fewer than one batch"):
        FolderStream(index_folder(tmp_path), 6)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        FolderStream(index_folder(tmp_path), 2, channels=2)


def test_a_streamed_run_trains_resumes_bit_identically_and_refuses_bad_settings(folder, tmp_path, capsys):
    import json
    from conftest import interrupted_at_checkpoint, load_script
    cli = load_script("experiments/cifar.py")
    base = ["--dataset", "folder", "--data-dir", str(folder), "--model", "convnet", "--width", "8",
            "--batch-size", "16", "--quiet", "--set", "data.stream=true", "--set", "data.stream_workers=2"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert cli.main([*base, "--epochs", "2", "--out", str(whole)]) == 0
    with interrupted_at_checkpoint(1):          # killed after epoch 1's checkpoint
        cli.main([*base, "--epochs", "2", "--out", str(split)])
    assert cli.main([*base, "--epochs", "2", "--out", str(split), "--resume"]) == 0
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (whole, split)]
    assert len(rows[0]) == len(rows[1]) == 2
    for a, b in zip(*rows):
        key = ("train_loss", "test_accuracy", "test_loss")
        assert [a[k] for k in key] == [b[k] for k in key]
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["train_images"] == 70 and "streamed" in summary["data_source"]
    saved = json.loads((whole / "config.json").read_text())["config"]["data"]
    assert saved["stream"] is True and saved["input_shape"] == [12, 12, 1]
    capsys.readouterr()
    for extra, message in ((["--train-limit", "32"], "data.stream=true on a folder cannot take"),
                           (["--seeds", "2", "--set", "seeds_layout=vmap"], "trains --seeds one after another"),
                           (["--set", "data.stream_workers=300"], "data.stream_workers must be in 0..256")):
        assert cli.main([*base, *extra, "--epochs", "1", "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "bad").exists()


def test_streamed_seeds_each_read_their_own_order_and_equal_their_runs_alone(folder, tmp_path):
    """``--seeds 2`` over a streamed folder trains the seeds one after another (loop layout),
    each in the order of its own seed: seed 1 of the population is bit-identical to
    ``--seed 1`` trained alone, and its order is not seed 0's."""
    import json
    from conftest import load_script
    from repr_jax.data.streaming import FolderStream, index_folder
    cli = load_script("experiments/cifar.py")
    base = ["--dataset", "folder", "--data-dir", str(folder), "--model", "convnet", "--width", "8",
            "--batch-size", "16", "--quiet", "--set", "data.stream=true", "--set", "data.stream_workers=2",
            "--epochs", "2"]
    assert cli.main([*base, "--seeds", "2", "--out", str(tmp_path / "pop")]) == 0
    assert cli.main([*base, "--seed", "1", "--out", str(tmp_path / "alone")]) == 0
    rows = lambda d: [{k: r[k] for k in ("train_loss", "test_loss", "test_accuracy")}  # noqa: E731
                      for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
    assert rows(tmp_path / "pop-seed1") == rows(tmp_path / "alone") != rows(tmp_path / "pop-seed0")
    assert json.loads((tmp_path / "pop-seed1" / "summary.json").read_text())["population"]["layout"] == "loop"
    stream = FolderStream(index_folder(folder), 16)
    assert not np.array_equal(stream.order(0, seed=0), stream.order(0, seed=1))
    np.testing.assert_array_equal(stream.order(3), np.random.default_rng([0, 3]).permutation(len(stream.index)))


def test_a_streamed_run_stopped_at_an_unreadable_image_resumes_once_it_is_repaired(folder, tmp_path, capsys,
                                                                                  monkeypatch):
    """An image that becomes unreadable while a streamed run trains stops it in one line naming
    the file and what to do; ``stream_stop.json`` lets ``--resume`` accept the data with that
    file replaced (any readable image, any size) and nothing else changed — another file
    changed too is still other data. A fresh run that stops before its first epoch ends leaves
    no directory, so the same command runs again once the file is fixed."""
    import json
    import shutil
    from conftest import load_script
    from repr_jax.data import streaming
    cli = load_script("experiments/cifar.py")
    data = tmp_path / "data"
    shutil.copytree(folder, data)
    victim = sorted((data / "train").rglob("*.png"))[5]
    name = victim.relative_to(data).as_posix()
    good = victim.read_bytes()
    base = ["--dataset", "folder", "--data-dir", str(data), "--model", "convnet", "--width", "8",
            "--batch-size", "16", "--quiet", "--set", "data.stream=true", "--set", "data.stream_workers=2"]
    real_epoch = streaming.FolderStream.epoch

    def breaking_epoch(self, epoch=0, **kwargs):
        if epoch == 1 and self.shuffle:                    # the file breaks while epoch 1 is read
            victim.write_bytes(good[:40])
        return real_epoch(self, epoch, **kwargs)

    monkeypatch.setattr(streaming.FolderStream, "epoch", breaking_epoch)
    run = tmp_path / "run"
    capsys.readouterr()
    assert cli.main([*base, "--epochs", "3", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    record = json.loads((run / "stream_stop.json").read_text())
    done = len((run / "metrics.jsonl").read_text().splitlines())
    assert record["file"] == name and record["epoch"] == done >= 1
    assert len(err) == 1 and f"cannot decode image {name}" in err[0] and f"--resume continues after epoch {done}" in err[0]
    monkeypatch.setattr(streaming.FolderStream, "epoch", real_epoch)
    other = sorted((data / "train").rglob("*.png"))[9]
    saved_other = other.read_bytes()
    Image.new("L", (12, 12), 7).save(other)                 # a second file changed: other data
    Image.new("L", (12, 12), 200).save(victim)              # the repair: a new image, another size
    assert cli.main([*base, "--epochs", "3", "--out", str(run), "--resume"]) == 2
    assert "the data differs" in capsys.readouterr().err
    other.write_bytes(saved_other)
    assert cli.main([*base, "--epochs", "3", "--out", str(run), "--resume"]) == 0
    assert f"note: {name} changed since the run stopped at it" in capsys.readouterr().err
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    # unreadable from the start: the first epoch stops, no directory is left, the fixed data runs
    victim.write_bytes(good[:40])
    fresh = tmp_path / "fresh"
    assert cli.main([*base, "--epochs", "1", "--out", str(fresh)]) == 2
    assert f"cannot decode image {name}" in capsys.readouterr().err and not fresh.exists()
    victim.write_bytes(good)
    assert cli.main([*base, "--epochs", "1", "--out", str(fresh)]) == 0


def test_streamed_seeds_stopped_at_an_unreadable_image_resume_every_seed_once_it_is_repaired(folder, tmp_path,
                                                                                          capsys, monkeypatch):
    """``--seeds 2`` over a streamed folder whose image breaks in epoch 2: one line saying what
    to do, ``stream_stop.json`` in both seeds' directories (both read the folder), and
    ``--resume`` of the population after the repair trains both to the end."""
    import json
    import shutil
    from conftest import load_script
    from repr_jax.data import streaming
    cli = load_script("experiments/cifar.py")
    data = tmp_path / "data"
    shutil.copytree(folder, data)
    victim = sorted((data / "train").rglob("*.png"))[5]
    name, good = victim.relative_to(data).as_posix(), victim.read_bytes()
    base = ["--dataset", "folder", "--data-dir", str(data), "--model", "convnet", "--width", "8", "--seeds", "2",
            "--batch-size", "16", "--quiet", "--set", "data.stream=true", "--epochs", "2", "--out", str(tmp_path / "p")]
    real_epoch = streaming.FolderStream.epoch

    def breaking_epoch(self, epoch=0, **kwargs):
        if epoch == 1 and self.shuffle:
            victim.write_bytes(good[:40])
        return real_epoch(self, epoch, **kwargs)

    monkeypatch.setattr(streaming.FolderStream, "epoch", breaking_epoch)
    capsys.readouterr()
    assert cli.main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot decode image {name}" in err[0] and "--resume continues after epoch 1" in err[0]
    for seed in (0, 1):
        assert json.loads((tmp_path / f"p-seed{seed}" / "stream_stop.json").read_text())["file"] == name
    monkeypatch.setattr(streaming.FolderStream, "epoch", real_epoch)
    Image.new("L", (12, 12), 200).save(victim)              # the repair: another image of the same name
    assert cli.main([*base, "--resume"]) == 0
    for seed in (0, 1):
        rows = (tmp_path / f"p-seed{seed}" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(r)["epoch"] for r in rows] == [1, 2]


def test_arrays_in_host_memory_stream_as_the_same_folder_does(folder, tmp_path):
    """``data.stream=true`` on an ``.npz`` (any source held in memory): the training split stays
    in host memory and Grain gathers its batches (``ArrayStream``) in the order a streamed
    folder reads — the ``.npz`` of the folder's own arrays trains bit-identically to the
    streamed folder; slicing settings the folder stream refuses apply before streaming."""
    import json
    from conftest import load_script
    from repr_jax.data.streaming import ArrayStream
    cli = load_script("experiments/cifar.py")
    memory = load_data("folder", folder, use_cache=False)
    npz = tmp_path / "same.npz"
    np.savez(npz, x_train=memory.train_x, y_train=memory.train_y, x_test=memory.test_x, y_test=memory.test_y)
    base = ["--model", "convnet", "--width", "8", "--batch-size", "16", "--quiet", "--epochs", "2",
            "--set", "data.stream=true", "--set", "data.stream_workers=2"]
    runs = {name: tmp_path / name for name in ("folder", "npz", "sliced")}
    assert cli.main([*base, "--dataset", "folder", "--data-dir", str(folder), "--out", str(runs["folder"])]) == 0
    assert cli.main([*base, "--dataset", "npz", "--data-dir", str(npz), "--out", str(runs["npz"])]) == 0
    rows = {k: [json.loads(line) for line in (runs[k] / "metrics.jsonl").read_text().splitlines()]
            for k in ("folder", "npz")}
    key = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
    assert [[r[k] for k in key] for r in rows["npz"]] == [[r[k] for k in key] for r in rows["folder"]]
    summary = json.loads((runs["npz"] / "summary.json").read_text())
    assert "streamed from host memory" in summary["data_source"] and summary["train_images"] == 70
    assert cli.main([*base, "--dataset", "npz", "--data-dir", str(npz), "--train-limit", "40",
                     "--out", str(runs["sliced"])]) == 0
    assert json.loads((runs["sliced"] / "summary.json").read_text())["train_images"] == 40
    stream = ArrayStream(memory.train_x, memory.train_y, 16, seed=3, workers=2)
    want = np.random.default_rng([3, 1]).permutation(70)[:64]
    got = list(stream.epoch(1))
    np.testing.assert_array_equal(np.concatenate([x for x, _ in got]), memory.train_x[want])
    np.testing.assert_array_equal(np.concatenate([y for _, y in got]), memory.train_y[want])
    halves = [list(stream.epoch(1, rows=rows)) for rows in (slice(0, 8), slice(8, 16))]   # two processes' rows
    for whole, first, second in zip(got, *halves):
        np.testing.assert_array_equal(np.concatenate([first[0], second[0]]), whole[0])
        np.testing.assert_array_equal(np.concatenate([first[1], second[1]]), whole[1])
    with pytest.raises(ValueError, match="uint8"):
        ArrayStream(memory.train_x.astype(np.float32), memory.train_y, 16)
