"""Damaged or inconsistent data is refused with one line naming the file, never loaded in part."""
from __future__ import annotations

import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import SHARED_CIFAR, covering_cifar, requires_shared_cifar, write_cifar10_pickles
from repr_jax.data import DataError, load_cifar

ARRAYS = covering_cifar(60, 30, seed=4)      # every class in both splits (checked below)


def _pickles(root: Path, arrays=ARRAYS) -> Path:
    return write_cifar10_pickles(root, *arrays)


def _tar(src: Path, dest: Path, mode: str) -> Path:
    with tarfile.open(dest, mode) as tar:
        tar.add(src, arcname=src.name)
    return dest


def _load(source):
    return load_cifar("cifar10", source, use_cache=False)


def test_fixture_has_every_class():
    assert set(ARRAYS[1]) == set(ARRAYS[3]) == set(range(10))


def test_tar_cut_before_a_member_is_refused(tmp_path):
    """Python's tarfile takes a damaged header for the end of the archive: the loader must not."""
    archive = _tar(_pickles(tmp_path / "src"), tmp_path / "c.tar", "w")
    with tarfile.open(archive) as tar:
        offsets = [m.offset for m in tar.getmembers()]
    blob = archive.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(blob[:offsets[4]])                     # ends right before a member header
    with pytest.raises(DataError, match="truncated: it ends without the end-of-archive marker"):
        _load(cut)
    garbled = bytearray(blob)
    garbled[offsets[4]:offsets[4] + 100] = b"x" * 100       # an unreadable header mid-archive
    (tmp_path / "garbled.tar").write_bytes(bytes(garbled))
    with pytest.raises(DataError, match="is damaged: a member header at byte"):
        _load(tmp_path / "garbled.tar")


def test_flipped_bytes_in_a_tar_gz_are_refused(tmp_path):
    archive = _tar(_pickles(tmp_path / "src"), tmp_path / "c.tar.gz", "w:gz")
    blob = bytearray(archive.read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.choice(np.arange(100, len(blob) - 100), 20, replace=False):
        blob[i] ^= 0xFF
    (tmp_path / "bad.tar.gz").write_bytes(bytes(blob))
    with pytest.raises(DataError, match=f"cannot read archive {tmp_path / 'bad.tar.gz'}: damaged"):
        _load(tmp_path / "bad.tar.gz")


@requires_shared_cifar()
def test_flipped_bytes_in_the_real_archive_name_the_archive(tmp_path):
    blob = bytearray(SHARED_CIFAR.read_bytes())
    rng = np.random.default_rng(1)
    for i in rng.choice(np.arange(10_000, len(blob) - 10_000), 400, replace=False):
        blob[i] ^= 0x5A
    bad = tmp_path / "cifar10-jpeg.tar.gz"
    bad.write_bytes(bytes(blob))
    with pytest.raises(DataError) as err:
        _load(bad)
    assert f"archive {bad}" in str(err.value) and ".jpg" not in str(err.value)


@requires_shared_cifar()
def test_a_known_complete_source_must_be_complete(tmp_path, monkeypatch):
    """The JPEG copy is known by its SHA-256 (repr_jax.data.formats.KNOWN_SOURCES): all 60,000."""
    import hashlib

    import repr_jax.data.formats as formats
    archive = _tar(_pickles(tmp_path / "src"), tmp_path / "c.tar.gz", "w:gz")
    monkeypatch.setitem(formats.KNOWN_SOURCES, hashlib.sha256(archive.read_bytes()).hexdigest(), "cifar10")
    with pytest.raises(DataError, match="holds 60 / 30 train / test images, a complete cifar10 has 50000 / 10000"):
        _load(archive)


def _write_batch(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.mark.parametrize("edit,message", [
    (lambda b: {**b, "labels": b["labels"][:-3]}, "data_batch_2: 12 images but 9 labels"),
    (lambda b: {**b, "labels": [-1] + b["labels"][1:]}, "train label -1 is outside 0..9"),
    (lambda b: {**b, "labels": [10] + b["labels"][1:]}, "train label 10 is outside 0..9 (cifar10 has 10 classes)"),
    (lambda b: [b["data"], b["labels"]], "CIFAR pickle data_batch_2 holds a list, expected a dict"),
    (lambda b: {"data": b["data"]}, "CIFAR pickle data_batch_2 has no 'labels' entry"),
    (lambda b: {**b, "data": b["data"][:, :100]}, "data_batch_2: 'data' has shape (12, 100), expected (N, 3072)"),
])
def test_inconsistent_batches_are_refused_naming_the_file(tmp_path, edit, message):
    d = _pickles(tmp_path)
    with open(d / "data_batch_2", "rb") as f:
        batch = pickle.load(f)
    _write_batch(d / "data_batch_2", edit(batch))
    with pytest.raises(DataError) as err:
        _load(d)
    assert message in str(err.value) and len(str(err.value).splitlines()) == 1


def test_official_meta_counts_are_enforced(tmp_path):
    d = _pickles(tmp_path)
    _write_batch(d / "batches.meta", {"label_names": ["c"] * 10, "num_cases_per_batch": 10000})
    with pytest.raises(DataError, match="data_batch_1 holds 12 images; batches.meta says 10000"):
        _load(d)


def test_a_split_missing_a_class_is_refused(tmp_path):
    tx, ty, vx, vy = ARRAYS
    d = write_cifar10_pickles(tmp_path, tx, np.where(ty == 7, 6, ty), vx, vy)
    with pytest.raises(DataError, match="train split has no image of class\\(es\\) 7"):
        _load(d)


def test_unwritable_cache_is_skipped_with_a_warning(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("REPR_JAX_CACHE", str(tmp_path / "file" / "cache"))
    data = load_cifar("cifar10", _pickles(tmp_path / "src"))
    np.testing.assert_array_equal(data.train_x, ARRAYS[0])
    assert "warning: decode cache not written" in capsys.readouterr().err


def test_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("REPR_JAX_CACHE", str(tmp_path / "cache"))
    src = _pickles(tmp_path / "src")
    first = load_cifar("cifar10", src)
    (cache,) = (tmp_path / "cache").glob("*.npz")
    blob = bytearray(cache.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    cache.write_bytes(bytes(blob))
    again = load_cifar("cifar10", src)
    assert "cached" not in again.source and again.fingerprint == first.fingerprint


# ----------------------------------------------------------------------------- fuzzing
_FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _damage(blob: bytes, data) -> bytes:
    if data.draw(st.booleans(), label="truncate"):
        return blob[:data.draw(st.integers(0, len(blob) - 1), label="cut at")]
    out = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        i = data.draw(st.integers(0, len(out) - 1), label="byte")
        out[i] ^= data.draw(st.integers(1, 255), label="xor")
    return bytes(out)


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    src = _pickles(root / "src")
    return {"tar.gz": _tar(src, root / "c.tar.gz", "w:gz").read_bytes(),
            "tar": _tar(src, root / "c.tar", "w").read_bytes(), "src": src}


@_FUZZ
@given(data=st.data())
def test_damaged_tar_gz_gives_the_exact_data_or_one_line(data, archives, tmp_path_factory):
    """gzip's CRC covers every byte: the result is the exact data or a DataError."""
    path = tmp_path_factory.mktemp("gz") / "c.tar.gz"
    path.write_bytes(_damage(archives["tar.gz"], data))
    try:
        loaded = _load(path)
    except DataError as err:
        assert len(str(err).splitlines()) == 1
        return
    for got, want in zip((loaded.train_x, loaded.train_y, loaded.test_x, loaded.test_y), ARRAYS):
        np.testing.assert_array_equal(got, want)


@_FUZZ
@given(data=st.data())
def test_damaged_tar_or_pickle_never_gives_partial_data(data, archives, tmp_path_factory):
    """Without a checksum a flipped pixel can pass unnoticed, but never fewer images."""
    root = tmp_path_factory.mktemp("raw")
    if data.draw(st.booleans(), label="pickle"):
        d = root / "cifar-10-batches-py"
        shutil.copytree(archives["src"], d)
        name = data.draw(st.sampled_from(sorted(os.listdir(d))), label="file")
        (d / name).write_bytes(_damage((d / name).read_bytes(), data))
        source = d
    else:
        source = root / "c.tar"
        source.write_bytes(_damage(archives["tar"], data))
    try:
        loaded = _load(source)
    except DataError as err:
        assert len(str(err).splitlines()) == 1
        return
    assert loaded.train_x.shape == ARRAYS[0].shape and loaded.test_x.shape == ARRAYS[2].shape
    assert len(loaded.train_y) == len(ARRAYS[1]) and len(loaded.test_y) == len(ARRAYS[3])


def test_pickle_of_the_wrong_type_in_memory_is_refused():
    from repr_jax.data.formats import parse
    files = {f"data_batch_{i}": pickle.dumps([1, 2]) for i in range(1, 6)} | {"test_batch": pickle.dumps({})}
    with pytest.raises(DataError, match="data_batch_1 holds a list"):
        parse(files, "cifar10", Path("mem"))


# ----------------------------------------------------------------------------- safety
class _RunsCode:
    """Pickles as a call of ``func(*args)``: what a malicious CIFAR batch holds."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("as_tar", [False, True])
@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "subprocess.call"])
def test_a_pickle_that_runs_code_is_refused_unrun(tmp_path, as_tar, payload):
    import builtins
    import subprocess
    marker = tmp_path / "pwned"
    func, args = {"os.system": (os.system, (f"touch {marker}",)),
                  "builtins.exec": (builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),
                  "subprocess.call": (subprocess.call, (["touch", str(marker)],))}[payload]
    src = _pickles(tmp_path / "src")
    for name in ("data_batch_3", "batches.meta"):
        (src / name).write_bytes(pickle.dumps({"data": _RunsCode(func, *args), "labels": [0],
                                               "label_names": _RunsCode(func, *args)}))
    source = _tar(src, tmp_path / "evil.tar.gz", "w:gz") if as_tar else src
    with pytest.raises(DataError, match="unsafe CIFAR pickle .*refused global") as err:
        _load(source)
    assert len(str(err.value).splitlines()) == 1
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_the_safe_unpickler_reads_numpy_arrays_of_every_protocol(protocol):
    from repr_jax.data.formats import CifarUnpickler
    import io
    value = {"data": np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072), "labels": [3, 4],
             b"batch_label": b"x", "num_cases_per_batch": np.int64(2), "f": np.float32(0.5)}
    blob = pickle.dumps(value, protocol=protocol)
    back = CifarUnpickler(io.BytesIO(blob), encoding="latin1").load()
    np.testing.assert_array_equal(back["data"], value["data"])
    assert back["labels"] == [3, 4] and back["num_cases_per_batch"] == 2 and back["f"] == np.float32(0.5)
    if protocol <= 3 and b"numpy._core" in blob:   # numpy 1.x names, as the official batches spell them
        old = CifarUnpickler(io.BytesIO(blob.replace(b"numpy._core", b"numpy.core")), encoding="latin1").load()
        np.testing.assert_array_equal(old["data"], value["data"])


def test_the_cache_is_keyed_by_content_not_size_and_mtime(tmp_path, monkeypatch):
    """Binary batches always have the same size: a changed label under the old mtime must be
    decoded afresh (and its fingerprint change), a moved identical copy served from cache."""
    monkeypatch.setenv("REPR_JAX_CACHE", str(tmp_path / "cache"))
    tx, ty, vx, vy = ARRAYS
    root = tmp_path / "bin" / "cifar-10-batches-bin"
    root.mkdir(parents=True)

    def batch(x, y):
        return np.concatenate([y.astype(np.uint8)[:, None], x.transpose(0, 3, 1, 2).reshape(len(x), -1)], 1).tobytes()

    for i, (xs, ys) in enumerate(zip(np.array_split(tx, 5), np.array_split(ty, 5)), start=1):
        (root / f"data_batch_{i}.bin").write_bytes(batch(xs, ys))
    (root / "test_batch.bin").write_bytes(batch(vx, vy))
    first = load_cifar("cifar10", root.parent)
    path = root / "data_batch_1.bin"
    stat = path.stat()
    blob = bytearray(path.read_bytes())
    blob[0] = (blob[0] + 1) % 10                                     # first image's label
    path.write_bytes(bytes(blob))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    second = load_cifar("cifar10", root.parent)
    assert "cached" not in second.source and second.fingerprint != first.fingerprint
    assert second.train_y[0] == (ty[0] + 1) % 10
    moved = tmp_path / "moved"
    shutil.copytree(root.parent, moved)
    assert "cached" in load_cifar("cifar10", moved).source


def test_an_interrupted_cache_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    import repr_jax.data.dataset as data_module
    monkeypatch.setenv("REPR_JAX_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    orphan = tmp_path / "cache" / "cifar10-x.tmp999999999.npz"          # of a process long gone
    orphan.write_bytes(b"partial")
    real = np.savez

    def interrupted(path, **arrays):
        real(path, **arrays)
        raise KeyboardInterrupt

    monkeypatch.setattr(data_module.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_cifar("cifar10", _pickles(tmp_path / "src"))
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("cap", ["MAX_FILE_BYTES", "MAX_TOTAL_BYTES"])
def test_oversized_members_are_refused_before_inflating(tmp_path, monkeypatch, cap):
    import repr_jax.data.formats as formats
    archive = _tar(_pickles(tmp_path / "src"), tmp_path / "c.tar.gz", "w:gz")
    sizes = [len(p.read_bytes()) for p in (tmp_path / "src" / "cifar-10-batches-py").iterdir()]
    monkeypatch.setattr(formats, cap, max(sizes) - 1 if cap == "MAX_FILE_BYTES" else sum(sizes) - 1)
    read = []
    real = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: read.append(m.size) or real(self, m))
    with pytest.raises(DataError, match="more than") as err:
        _load(archive)
    assert len(str(err.value).splitlines()) == 1
    assert all(size <= getattr(formats, cap) for size in read)       # the big one was never opened
    with pytest.raises(DataError, match="more than"):
        _load(tmp_path / "src")


def test_unrelated_files_are_never_read(tmp_path, monkeypatch):
    """Only a layout's files are read: a huge file beside the batches, or a symbolic link to
    the file system's root, is skipped."""
    src = _pickles(tmp_path / "src")
    (src / "notes.bin.bak").write_bytes(b"x" * 4096)
    (src / "root").symlink_to("/")
    import repr_jax.data.formats as formats
    monkeypatch.setattr(formats, "MAX_FILE_BYTES", 4000 * 1024)
    np.testing.assert_array_equal(_load(src).train_x, ARRAYS[0])


def test_a_system_directory_is_one_line(tmp_path):
    with pytest.raises(DataError) as err:
        _load(Path("/proc"))
    assert len(str(err.value).splitlines()) == 1
