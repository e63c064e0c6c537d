"""CIFAR-10 / CIFAR-100 as uint8 arrays, from local copies or a checked download.

Sources, tried in order by :func:`load_cifar`:

1. ``data_dir`` (or ``$REPR_JAX_DATA_DIR``): a directory or a ``.tar.gz``/``.tgz``/``.tar``
   holding any standard layout — the python pickle batches (``cifar-10-batches-py/``,
   ``cifar-100-python/``), the binary batches (``cifar-10-batches-bin/``,
   ``cifar-100-binary/``) or an image-folder tree (``train/<class>/*.jpg|png``,
   ``test/<class>/…``).
2. A download when no local copy is named: TFDS when TensorFlow is installed (it needs
   TensorFlow to *prepare* CIFAR), otherwise the official python archive, checked against
   its published MD5 and then read by the offline loader of step 1.
3. Otherwise :class:`DataError` with one line saying how to get the data.

Decoded arrays are cached as ``.npz`` in ``$REPR_JAX_CACHE`` (default
``~/.cache/repr_jax``), keyed by the source's path, size and modification time, so a
second run skips decoding 60,000 JPEGs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import re
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
# Official archives (Krizhevsky 2009) and their published MD5 sums.
ARCHIVES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "eb9058c3a382ffc7106e4002c42a8d85"),
}
_IMAGE_EXT = (".jpg", ".jpeg", ".png")
_CACHE_VERSION = 1


class DataError(RuntimeError):
    """The data could not be found or read; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Cifar:
    """A CIFAR split: images uint8 (N, 32, 32, 3) and labels int32 (N,)."""
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: tuple[str, ...]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_validation(self, size: int) -> "Cifar":
        """Hold out the last ``size`` training images as the evaluation set (45k/5k)."""
        if not 0 < size < len(self.train_y):
            raise DataError(f"validation size {size} must be in 1..{len(self.train_y) - 1}")
        return dataclasses.replace(
            self, train_x=self.train_x[:-size], train_y=self.train_y[:-size],
            test_x=self.train_x[-size:], test_y=self.train_y[-size:],
            source=self.source + f" (validation: last {size} train images)")

    def subset(self, train: int | None = None, test: int | None = None,
               seed: int = 0) -> "Cifar":
        """A fixed-seed random slice (class-mixed even when the source is class-sorted)."""
        rng = np.random.default_rng(seed)

        def pick(x, y, n):
            if n is None or n >= len(y):
                return x, y
            idx = np.sort(rng.permutation(len(y))[:n])
            return x[idx], y[idx]

        tx, ty = pick(self.train_x, self.train_y, train)
        vx, vy = pick(self.test_x, self.test_y, test)
        return dataclasses.replace(self, train_x=tx, train_y=ty, test_x=vx, test_y=vy)


def synthetic_cifar(n_train: int, n_test: int, num_classes: int = 10, seed: int = 0) -> Cifar:
    """A learnable stand-in for CIFAR (tests, benchmarks, notebooks): each class has its own
    mean colour, plus Gaussian noise (σ = 25) per pixel; uint8 images, int32 labels."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 225, (num_classes, 3))

    def make(n):
        y = rng.integers(0, num_classes, n).astype(np.int32)
        noise = rng.normal(0, 25, (n, 32, 32, 3))
        return np.clip(colours[y][:, None, None, :] + noise, 0, 255).astype(np.uint8), y

    (tx, ty), (vx, vy) = make(n_train), make(n_test)
    return Cifar(tx, ty, vx, vy, tuple(f"class_{i}" for i in range(num_classes)),
                 f"synthetic (seed {seed})")


# ----------------------------------------------------------------------------- reading
def _read_files(source: Path) -> dict[str, bytes]:
    """All regular files of a directory or tar archive: relative posix path -> bytes."""
    files: dict[str, bytes] = {}
    if source.is_dir():
        for path in source.rglob("*"):
            if path.is_file():
                files[path.relative_to(source).as_posix()] = path.read_bytes()
        return files
    try:
        with tarfile.open(source, "r:*") as tar:
            for member in tar:
                if member.isfile():
                    handle = tar.extractfile(member)
                    files[member.name.lstrip("./")] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"cannot read archive {source}: {reason}") from None
    return files


def _find(files: dict[str, bytes], basename: str) -> str | None:
    hits = sorted(k for k in files if k.rsplit("/", 1)[-1] == basename)
    return hits[0] if hits else None


def _unpickle(blob: bytes, name: str) -> dict:
    try:
        return pickle.loads(blob, encoding="latin1")
    except Exception as err:  # corrupt pickle of any kind
        raise DataError(f"corrupt CIFAR pickle {name}: {err}") from None


def _rows_to_images(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows, np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _pickle_layout(files, dataset):
    if dataset == "cifar10":
        first = _find(files, "data_batch_1")
        prefix = first.rsplit("/", 1)[0] + "/" if "/" in first else ""
        train = [_unpickle(files[f"{prefix}data_batch_{i}"], f"data_batch_{i}")
                 for i in range(1, 6) if f"{prefix}data_batch_{i}" in files]
        if len(train) != 5 or f"{prefix}test_batch" not in files:
            raise DataError("incomplete cifar-10-batches-py: need data_batch_1..5 and test_batch")
        test = _unpickle(files[f"{prefix}test_batch"], "test_batch")
        meta = files.get(f"{prefix}batches.meta")
        names = tuple(_unpickle(meta, "batches.meta")["label_names"]) if meta else CIFAR10_CLASSES
        key = "labels"
    else:
        train_name = _find(files, "train")
        prefix = train_name.rsplit("/", 1)[0] + "/" if "/" in train_name else ""
        if f"{prefix}test" not in files:
            raise DataError("incomplete cifar-100-python: need train and test")
        train = [_unpickle(files[f"{prefix}train"], "train")]
        test = _unpickle(files[f"{prefix}test"], "test")
        meta = files.get(f"{prefix}meta")
        names = (tuple(_unpickle(meta, "meta")["fine_label_names"]) if meta
                 else tuple(f"class_{i}" for i in range(100)))
        key = "fine_labels"
    try:
        tx = _rows_to_images(np.concatenate([b["data"] for b in train]))
        ty = np.concatenate([np.asarray(b[key]) for b in train]).astype(np.int32)
        vx, vy = _rows_to_images(test["data"]), np.asarray(test[key], np.int32)
    except (KeyError, ValueError) as err:
        raise DataError(f"corrupt CIFAR pickle batches: {err}") from None
    return tx, ty, vx, vy, names


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
        names = tuple(s for s in meta.decode().split() if s)
    else:
        names = CIFAR10_CLASSES if dataset == "cifar10" else tuple(f"class_{i}" for i in range(100))
    return tx, ty, vx, vy, names


_FOLDER_RE = re.compile(r"(?:^|/)(train|test)/([^/]+)/([^/]+)$")


def _sort_key(name: str):
    stem = name.rsplit(".", 1)[0]
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def _folder_layout(files, dataset):
    from PIL import Image
    split_files: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for name in files:
        m = _FOLDER_RE.search(name)
        if m and name.lower().endswith(_IMAGE_EXT):
            split_files[m.group(1)].setdefault(m.group(2), []).append(name)
    classes = sorted(set(split_files["train"]) | set(split_files["test"]))
    if dataset == "cifar10" and set(classes) <= set(CIFAR10_CLASSES):  # official label order
        classes = list(CIFAR10_CLASSES)
    out = []
    for split in ("train", "test"):
        images, labels = [], []
        for label, cls in enumerate(classes):
            for name in sorted(split_files[split].get(cls, []),
                               key=lambda n: _sort_key(n.rsplit("/", 1)[-1])):
                try:
                    img = np.asarray(Image.open(io.BytesIO(files[name])).convert("RGB"))
                except Exception as err:
                    raise DataError(f"cannot decode image {name}: {err}") from None
                if img.shape != (32, 32, 3):
                    raise DataError(f"image {name} has shape {img.shape}, expected (32, 32, 3)")
                images.append(img)
                labels.append(label)
        if not images:
            raise DataError(f"image-folder layout has no {split}/<class>/ images")
        out += [np.stack(images), np.asarray(labels, np.int32)]
    return (*out, tuple(classes))


def _detect_and_parse(files: dict[str, bytes], dataset: str, source: Path):
    if dataset == "cifar10" and _find(files, "data_batch_1"):
        return _pickle_layout(files, dataset)
    if dataset == "cifar10" and _find(files, "data_batch_1.bin"):
        return _binary_layout(files, dataset)
    if dataset == "cifar100" and _find(files, "train") and _find(files, "test"):
        return _pickle_layout(files, dataset)
    if dataset == "cifar100" and _find(files, "train.bin"):
        return _binary_layout(files, dataset)
    if any(_FOLDER_RE.search(k) for k in files):
        return _folder_layout(files, dataset)
    raise DataError(f"no {dataset} layout found in {source} (expected python or binary batches, "
                    "or train/<class>/ and test/<class>/ image folders)")


# ----------------------------------------------------------------------------- caching
def cache_dir() -> Path:
    return Path(os.environ.get("REPR_JAX_CACHE", Path.home() / ".cache" / "repr_jax"))


def _source_key(source: Path, dataset: str) -> str:
    parts = [str(source.resolve()), dataset, str(_CACHE_VERSION)]
    paths = sorted(source.rglob("*")) if source.is_dir() else [source]
    for p in paths:
        if p.is_file():
            st = p.stat()
            parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def _load_local(source: Path, dataset: str, use_cache: bool) -> Cifar:
    if not source.exists():
        raise DataError(f"data path {source} does not exist")
    cache = cache_dir() / f"{dataset}-{_source_key(source, dataset)}.npz"
    if use_cache and cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                return Cifar(z["train_x"], z["train_y"], z["test_x"], z["test_y"],
                             tuple(str(c) for c in z["class_names"]), f"{source} (cached)")
        except Exception:  # unreadable cache: rebuild it below
            pass
    tx, ty, vx, vy, names = _detect_and_parse(_read_files(source), dataset, source)
    if len(names) != NUM_CLASSES[dataset] or ty.max() >= len(names) or vy.max() >= len(names):
        raise DataError(f"{source}: found {len(names)} classes, {dataset} has {NUM_CLASSES[dataset]}")
    if use_cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, train_x=tx, train_y=ty, test_x=vx, test_y=vy, class_names=np.array(names))
        os.replace(tmp, cache)
    return Cifar(tx, ty, vx, vy, tuple(names), str(source))


# ----------------------------------------------------------------------------- download
def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_archive(dataset: str, dest: Path | None = None, url: str | None = None,
                     md5: str | None = None) -> Path:
    """Fetch the official archive (once) and verify its MD5; returns the archive path."""
    default_url, default_md5 = ARCHIVES[dataset]
    url, md5 = url or default_url, md5 or default_md5
    dest = dest or cache_dir() / "downloads" / url.rsplit("/", 1)[-1]
    if dest.exists() and _md5(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DataError(f"download of {url} failed ({err})") from None
    if _md5(tmp) != md5:
        tmp.unlink(missing_ok=True)
        raise DataError(f"download of {url} is corrupt (MD5 mismatch)")
    os.replace(tmp, dest)
    return dest


def _load_tfds(dataset: str) -> Cifar:
    import tensorflow_datasets as tfds  # TensorFlow needed to prepare CIFAR
    splits = tfds.as_numpy(tfds.load(dataset, split=["train", "test"], batch_size=-1))
    (tr, te) = splits
    names = tuple(tfds.builder(dataset).info.features["label"].names)
    return Cifar(tr["image"], tr["label"].astype(np.int32), te["image"],
                 te["label"].astype(np.int32), names, f"tfds:{dataset}")


def load_cifar(dataset: str = "cifar10", data_dir: str | os.PathLike | None = None,
               use_cache: bool = True) -> Cifar:
    """Load CIFAR-10/100 from the first source that works (see module docstring)."""
    if dataset not in NUM_CLASSES:
        raise DataError(f"unknown dataset {dataset!r}; choose from {sorted(NUM_CLASSES)}")
    data_dir = data_dir or os.environ.get("REPR_JAX_DATA_DIR")
    if data_dir:
        return _load_local(Path(data_dir).expanduser(), dataset, use_cache)
    errors = []
    try:
        import tensorflow  # noqa: F401  (only then can TFDS prepare CIFAR)
        return _load_tfds(dataset)
    except ImportError:
        errors.append("TensorFlow / tensorflow-datasets not installed (pip install -e '.[tfds]')")
    except Exception as err:  # TFDS prepare failed (offline, ...)
        errors.append(f"TFDS failed: {err}")
    try:
        return _load_local(download_archive(dataset), dataset, use_cache)
    except DataError as err:
        errors.append(str(err))
    raise DataError(f"no {dataset} data: pass --data-dir (or set REPR_JAX_DATA_DIR) to a local "
                    f"copy, or run with internet access ({'; '.join(errors)})")
