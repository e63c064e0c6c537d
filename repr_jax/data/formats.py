"""CIFAR's file layouts and image folders of any size, read completely or not at all.

Layouts: the python pickle batches (``cifar-10-batches-py/``, ``cifar-100-python/``), the
binary batches (``cifar-10-batches-bin/``, ``cifar-100-binary/``) and image folders
(``train/<class>/*.jpg|png``, ``test/<class>/…``; any size and 1 or 3 channels for
``data.dataset=folder``, decoded by :mod:`repr_jax.data.sources`), in a directory or a
(compressed) tar.

Integrity rules — each failure is a :class:`DataError` whose one line names the file:
  * an archive is read to its end: after the last member only zero blocks may follow (at
    least one — the end-of-archive marker), and a compressed stream is decompressed to its
    end, so gzip's CRC-32 and length trailer check every byte. (Python's ``tarfile`` takes a
    damaged header mid-archive for the end, which silently dropped most of an archive.)
  * every batch has as many labels as images, labels lie in ``0 … classes−1``, CIFAR's
    images are 32×32×3, and each split has every class (a folder: the training split);
  * counts are checked wherever the source states them: the pickle ``batches.meta``'s
    ``num_cases_per_batch`` (the official files have it), and a source known by its
    SHA-256 (:data:`KNOWN_SOURCES`) or by the official archives' MD5 must give CIFAR's
    50,000 / 10,000 images.

Safety rules — nothing read from a data source can run code or exhaust memory:
  * pickles are read by :class:`CifarUnpickler`, which resolves only the globals a pickled
    numpy array needs (``numpy.ndarray``, ``numpy.dtype``, numpy's array-rebuild functions,
    ``_codecs.encode``); any other global (``os.system``, ``builtins.eval``, a class) is
    refused before it is called;
  * only files a layout can use are read (:func:`wanted`); each may hold at most
    :data:`MAX_FILE_BYTES` and all together :data:`MAX_TOTAL_BYTES` (an image folder
    :data:`MAX_FOLDER_BYTES`) — sizes are checked
    from the tar header or ``stat`` *before* reading, so a member that decompresses to
    gigabytes is refused without being inflated;
  * a directory is walked without following symbolic links; an unreadable entry
    (``--data-dir /proc``) is a :class:`DataError`, not a traceback.
"""
from __future__ import annotations

import codecs
import hashlib
import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from repr_jax.data.sources import (FOLDER_RE, IMAGE_EXTENSIONS, checked_labels, checked_name, folder_arrays,
                                   resize_all)
from repr_jax.errors import DataError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
FULL_COUNTS = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000)}
# Official archives (Krizhevsky 2009) and their published MD5 sums.
ARCHIVES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "eb9058c3a382ffc7106e4002c42a8d85"),
}
# Complete copies known by the SHA-256 of the file (../shared/datasets/README.md).
KNOWN_SOURCES = {
    "f69c465918f15cb789eabb27413402e80cba9a96f46b1cfd65e3ae621860ade8": "cifar10",  # JPEG copy
}
_BLOCK = 512
# The largest file of any CIFAR layout is CIFAR-100's train pickle / train.bin (≈ 154 MB).
MAX_FILE_BYTES = 256 << 20
MAX_TOTAL_BYTES = 1 << 30
MAX_FOLDER_BYTES = 4 << 30   # the encoded images of an in-memory image folder (data.dataset=folder)
MAX_DIRECTORY_ENTRIES = 1_000_000
# The files of the batch layouts (python pickles and binary batches) and their label lists.
LAYOUT_FILES = frozenset([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
                          "train", "test", "meta",
                          *(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin",
                          "batches.meta.txt", "train.bin", "test.bin", "fine_label_names.txt",
                          "coarse_label_names.txt"])


def _reason(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return text or type(err).__name__


# ----------------------------------------------------------------------------- reading
def claimed_dataset(source: Path) -> str | None:
    """The dataset a source file is known to hold completely (by SHA-256 or official MD5)."""
    if not source.is_file():
        return None
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(source, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
    official = {digest: name for name, (_, digest) in ARCHIVES.items()}
    return KNOWN_SOURCES.get(sha.hexdigest()) or official.get(md5.hexdigest())


def _check_archive_end(tar: tarfile.TarFile, source: Path) -> None:
    stream = tar.fileobj
    stream.seek(tar.offset)
    rest = 0
    for chunk in iter(lambda: stream.read(1 << 20), b""):   # to the end: gzip checks its CRC
        if chunk.count(0) != len(chunk):
            raise DataError(f"archive {source} is damaged: a member header at byte {tar.offset} "
                            "is unreadable and data follows it")
        rest += len(chunk)
    if rest < _BLOCK:
        raise DataError(f"archive {source} is truncated: it ends without the end-of-archive marker")


def wanted(name: str, source="the data") -> bool:
    """Whether a file (relative posix path) belongs to a layout: a batch file or an image of
    an image-folder tree. Nothing else in a source is read; a wanted file whose name is not
    valid UTF-8 is refused in one line (:func:`~repr_jax.data.sources.checked_name`)."""
    keep = name.rsplit("/", 1)[-1] in LAYOUT_FILES or (
        FOLDER_RE.search(name) is not None and name.lower().endswith(IMAGE_EXTENSIONS))
    return keep and bool(checked_name(name, source))


class _Budget:
    """The size caps: one file at most :data:`MAX_FILE_BYTES`, all at most :data:`MAX_TOTAL_BYTES`."""

    def __init__(self, source: Path, folder: bool = False):
        self.source, self.total = source, 0
        self.max_total = MAX_FOLDER_BYTES if folder else MAX_TOTAL_BYTES

    def take(self, name: str, size: int, before_reading: bool = False) -> None:
        """Count ``size`` bytes of ``name``; ``before_reading``: only check the file's size."""
        if size > MAX_FILE_BYTES:
            raise DataError(f"{self.source}: {name} holds more than {MAX_FILE_BYTES:,} bytes, more than any "
                            "CIFAR file or image; refused")
        if before_reading:
            return
        self.total += size
        if self.total > self.max_total:
            raise DataError(f"{self.source}: its data files hold more than {self.max_total:,} bytes; "
                            "refused (point --data-dir at the data set itself)")


def _walk(source: Path):
    """Relative posix paths of the regular files under ``source`` (symbolic links not followed)."""
    def refuse(err: OSError):
        raise DataError(f"cannot read {err.filename or source}: {err.strerror or _reason(err)}")

    seen = 0
    for root, dirs, names in os.walk(source, onerror=refuse, followlinks=False):
        seen += len(dirs) + len(names)
        if seen > MAX_DIRECTORY_ENTRIES:
            raise DataError(f"{source} holds more than {MAX_DIRECTORY_ENTRIES:,} entries; point --data-dir "
                            "at the data set itself")
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if not path.is_symlink() and path.is_file():
                yield path.relative_to(source).as_posix(), path


def read_files(source: Path, folder: bool = False) -> dict[str, bytes]:
    """The layout files (:func:`wanted`) of a directory or tar archive: relative posix path ->
    bytes, within the size caps (``folder``: an image folder's, :data:`MAX_FOLDER_BYTES`)."""
    files: dict[str, bytes] = {}
    budget = _Budget(source, folder)
    if source.is_dir():
        for name, path in _walk(source):
            if not wanted(name, source):
                continue
            try:
                budget.take(name, path.stat().st_size, before_reading=True)
                with open(path, "rb") as f:
                    files[name] = f.read(MAX_FILE_BYTES + 1)   # stat may understate (/proc, a growing file)
            except OSError as err:
                raise DataError(f"cannot read {path}: {_reason(err)}") from None
            budget.take(name, len(files[name]))
        return files
    try:
        with open(source, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                if member.isfile() and wanted(name, source):
                    budget.take(name, member.size)
                    files[name] = tar.extractfile(member).read()
            _check_archive_end(tar, source)
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as err:
        raise DataError(f"cannot read archive {source}: damaged or not an archive ({_reason(err)})") from None
    return files


def _find(files: dict[str, bytes], basename: str) -> str | None:
    hits = sorted(k for k in files if k.rsplit("/", 1)[-1] == basename)
    return hits[0] if hits else None


_NUMPY_CORE = "numpy._core" if hasattr(np, "_core") else "numpy.core"   # numpy >= 2 / 1.x
# Every global a pickled numpy array refers to, under numpy 1.x and 2.x names (protocols 0–5).
_ARRAY_GLOBALS = frozenset([("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                            *((f"numpy.{core}.{module}", name) for core in ("core", "_core")
                              for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                                                   ("numeric", "_frombuffer")))])


class UnsafePickle(pickle.UnpicklingError):
    """A pickle names a global other than a numpy array's (it could run code)."""


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, strings, numbers and numpy arrays.

    :meth:`find_class` resolves the globals of :data:`_ARRAY_GLOBALS` and refuses every
    other one *before* anything is called, so a pickle whose ``__reduce__`` names
    ``os.system`` (or any class or function) fails with :class:`UnsafePickle` instead of
    running."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ARRAY_GLOBALS:
            raise UnsafePickle(f"refused global {ascii(module + '.' + name)[1:-1][:120]} (only numpy arrays may "
                               "be unpickled)")
        if module == "_codecs":
            return codecs.encode
        if module.startswith(("numpy.core.", "numpy._core.")):   # this numpy's name for it
            module = f"{_NUMPY_CORE}.{module.rsplit('.', 1)[-1]}"
        return super().find_class(module, name)


def _unpickle(blob: bytes, name: str) -> dict:
    try:
        value = CifarUnpickler(io.BytesIO(blob), encoding="latin1").load()
    except UnsafePickle as err:
        raise DataError(f"unsafe CIFAR pickle {name}: {err}; nothing in it was run") from None
    except Exception as err:  # corrupt pickle of any kind
        raise DataError(f"corrupt CIFAR pickle {name}: {_reason(err)}") from None
    if not isinstance(value, dict):
        raise DataError(f"CIFAR pickle {name} holds a {type(value).__name__}, expected a dict")
    return value


def _batch(blob: bytes, name: str, label_key: str):
    """Images and labels of one pickle batch, with its shape and count checks."""
    batch = _unpickle(blob, name)
    for key in ("data", label_key):
        if key not in batch:
            raise DataError(f"CIFAR pickle {name} has no {key!r} entry")
    try:
        rows = np.asarray(batch["data"])
        labels = np.asarray(batch[label_key])
    except (TypeError, ValueError) as err:
        raise DataError(f"CIFAR pickle {name}: unreadable arrays ({_reason(err)})") from None
    if rows.ndim != 2 or rows.shape[1] != 3072:
        raise DataError(f"CIFAR pickle {name}: 'data' has shape {rows.shape}, expected (N, 3072)")
    return _rows_to_images(rows), checked_labels(labels, len(rows), name)


def _rows_to_images(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows, np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _pickle_layout(files, dataset):
    if dataset == "cifar10":
        first = _find(files, "data_batch_1")
        prefix = first.rsplit("/", 1)[0] + "/" if "/" in first else ""
        names = [f"{prefix}data_batch_{i}" for i in range(1, 6)] + [f"{prefix}test_batch"]
        missing = [n for n in names if n not in files]
        if missing:
            raise DataError(f"incomplete cifar-10-batches-py: {missing[0]} is missing")
        meta = _unpickle(files[f"{prefix}batches.meta"], "batches.meta") if f"{prefix}batches.meta" in files else {}
        batches = [_batch(files[n], n, "labels") for n in names]
        per_batch = meta.get("num_cases_per_batch")
        for n, (x, _) in zip(names, batches):
            if per_batch is not None and len(x) != per_batch:
                raise DataError(f"{n} holds {len(x)} images; batches.meta says {per_batch}")
        names_ = tuple(meta["label_names"]) if "label_names" in meta else CIFAR10_CLASSES
        train, test = batches[:5], batches[5]
    else:
        train_name = _find(files, "train")
        prefix = train_name.rsplit("/", 1)[0] + "/" if "/" in train_name else ""
        if f"{prefix}test" not in files:
            raise DataError("incomplete cifar-100-python: need train and test")
        train = [_batch(files[f"{prefix}train"], f"{prefix}train", "fine_labels")]
        test = _batch(files[f"{prefix}test"], f"{prefix}test", "fine_labels")
        meta = _unpickle(files[f"{prefix}meta"], "meta") if f"{prefix}meta" in files else {}
        names_ = (tuple(meta["fine_label_names"]) if "fine_label_names" in meta
                  else tuple(f"class_{i}" for i in range(100)))
    return (np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train]),
            test[0], test[1], names_)


def _binary_records(blob: bytes, label_bytes: int, name: str):
    record = label_bytes + 3072
    if len(blob) == 0 or len(blob) % record:
        raise DataError(f"corrupt CIFAR binary batch {name}: {len(blob)} bytes "
                        f"is not a multiple of {record}")
    arr = np.frombuffer(blob, np.uint8).reshape(-1, record)
    return _rows_to_images(arr[:, label_bytes:]), arr[:, label_bytes - 1].astype(np.int32)


def _binary_layout(files, dataset):
    if dataset == "cifar10":
        first = _find(files, "data_batch_1.bin")
        prefix = first.rsplit("/", 1)[0] + "/" if "/" in first else ""
        names_train = [f"{prefix}data_batch_{i}.bin" for i in range(1, 6)]
        names_test, label_bytes = [f"{prefix}test_batch.bin"], 1
        meta = files.get(f"{prefix}batches.meta.txt")
    else:
        first = _find(files, "train.bin")
        prefix = first.rsplit("/", 1)[0] + "/" if "/" in first else ""
        names_train, names_test, label_bytes = [f"{prefix}train.bin"], [f"{prefix}test.bin"], 2
        meta = files.get(f"{prefix}fine_label_names.txt")
    missing = [n for n in names_train + names_test if n not in files]
    if missing:
        raise DataError(f"incomplete CIFAR binary layout: missing {missing[0]}")
    train = [_binary_records(files[n], label_bytes, n) for n in names_train]
    tx, ty = np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])
    vx, vy = _binary_records(files[names_test[0]], label_bytes, names_test[0])
    if meta:
        names = tuple(s for s in meta.decode(errors="replace").split() if s)
    else:
        names = CIFAR10_CLASSES if dataset == "cifar10" else tuple(f"class_{i}" for i in range(100))
    return tx, ty, vx, vy, names



def parse(files: dict[str, bytes], dataset: str, source: Path, image_size=None):
    """``(train_x, train_y, test_x, test_y, class names)`` of the layout ``files`` hold:
    CIFAR's layouts for ``cifar10``/``cifar100``, an image folder of any size for ``folder``
    (:func:`repr_jax.data.sources.folder_arrays`); resized to ``image_size`` (H, W) if given."""
    if dataset == "folder":
        if not any(FOLDER_RE.search(k) for k in files):
            raise DataError(f"no image folder in {source} (expected train/<class>/<image> and "
                            "test/<class>/<image>)")
        return folder_arrays(files, image_size)
    if dataset == "cifar10" and _find(files, "data_batch_1"):
        arrays = _pickle_layout(files, dataset)
    elif dataset == "cifar10" and _find(files, "data_batch_1.bin"):
        arrays = _binary_layout(files, dataset)
    elif dataset == "cifar100" and _find(files, "train") and _find(files, "test"):
        arrays = _pickle_layout(files, dataset)
    elif dataset == "cifar100" and _find(files, "train.bin"):
        arrays = _binary_layout(files, dataset)
    elif any(FOLDER_RE.search(k) for k in files):
        return folder_arrays(files, image_size, CIFAR10_CLASSES if dataset == "cifar10" else None, (32, 32, 3))
    else:
        raise DataError(f"no {dataset} layout found in {source} (expected python or binary batches, "
                        "or train/<class>/ and test/<class>/ image folders)")
    tx, ty, vx, vy, names = arrays
    return resize_all(tx, image_size), ty, resize_all(vx, image_size), vy, names


def check_splits(tx, ty, vx, vy, names, dataset: str, source: Path, complete: bool) -> None:
    """CIFAR's checks: its class count, labels in range, every class in both splits, its
    image counts when ``complete``."""
    classes = NUM_CLASSES[dataset]
    if len(names) != classes:
        raise DataError(f"{source}: found {len(names)} class names, {dataset} has {classes}")
    for split, x, y in (("train", tx, ty), ("test", vx, vy)):
        bad = y[(y < 0) | (y >= classes)]
        if bad.size:
            raise DataError(f"{source}: {split} label {int(bad[0])} is outside 0..{classes - 1} "
                            f"({dataset} has {classes} classes)")
        missing = np.setdiff1d(np.arange(classes), y)
        if missing.size:
            raise DataError(f"{source}: {split} split has no image of class(es) "
                            f"{', '.join(map(str, missing[:5].tolist()))}{' …' if missing.size > 5 else ''}")
    if complete and (len(ty), len(vy)) != FULL_COUNTS[dataset]:
        raise DataError(f"{source} holds {len(ty)} / {len(vy)} train / test images, a complete "
                        f"{dataset} has {FULL_COUNTS[dataset][0]} / {FULL_COUNTS[dataset][1]}")


__all__ = ["ARCHIVES", "CIFAR10_CLASSES", "CifarUnpickler", "DataError", "FULL_COUNTS", "KNOWN_SOURCES",
           "LAYOUT_FILES", "MAX_FILE_BYTES", "MAX_FOLDER_BYTES", "MAX_TOTAL_BYTES", "NUM_CLASSES", "check_splits", "claimed_dataset",
           "parse", "read_files", "UnsafePickle", "wanted"]
