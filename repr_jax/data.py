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

Every source is read completely or refused with one line (:mod:`repr_jax.data_formats`:
archives read to their end, labels and counts checked; pickles can build numpy arrays and
nothing else; file sizes capped). Decoded arrays are cached as ``.npz`` in
``$REPR_JAX_CACHE`` (default ``~/.cache/repr_jax``), keyed by the *content* of the source
(:func:`source_digest`: SHA-256 of an archive's bytes, or of a directory's layout files with
their names), so a second run skips decoding 60,000 JPEGs, a moved copy hits the same
cache, and an edited source — whatever its size and modification time — never does; a
cache that cannot be written is skipped with a warning, and an interrupted write leaves no
temporary file. Each data set carries a *fingerprint* — a SHA-256 of the decoded arrays —
which a resumed run (and ``repr_jax.evaluate``) compares with the one its ``config.json``
recorded: the data's path may change, the data may not.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import urllib.request
from pathlib import Path

import numpy as np

from repr_jax.data_formats import (ARCHIVES, CIFAR10_CLASSES, NUM_CLASSES, DataError, check_splits,
                                   claimed_dataset, parse, read_files)

_CACHE_VERSION = 3   # 2: archives read to the end, labels and counts checked; 3: keyed by content


def fingerprint(*arrays: np.ndarray) -> str:
    """SHA-256 (hex) of the arrays' shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.shape}{a.dtype}".encode())
        digest.update(a.data)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Cifar:
    """A CIFAR split: images uint8 (N, 32, 32, 3) and labels int32 (N,).

    ``fingerprint`` identifies the *source* arrays (before any validation split or slice,
    which the run's settings record); empty when the arrays were built in memory —
    :meth:`source_fingerprint` then computes it.
    """
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: tuple[str, ...]
    source: str
    fingerprint: str = ""
    held_x: np.ndarray | None = None   # held-out training images (never trained on), see hold_out
    held_y: np.ndarray | None = None

    def source_fingerprint(self) -> str:
        return self.fingerprint or fingerprint(self.train_x, self.train_y, self.test_x, self.test_y)

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

    def hold_out(self, size: int) -> "Cifar":
        """Set the last ``size`` training images aside (``held_x/held_y``): not trained on,
        not evaluated each epoch — data-driven criteria and the oracle score on them (the
        official RePr code's 45k/5k split)."""
        if not 0 < size < len(self.train_y):
            raise DataError(f"held-out size {size} must be in 1..{len(self.train_y) - 1}")
        return dataclasses.replace(
            self, train_x=self.train_x[:-size], train_y=self.train_y[:-size],
            held_x=self.train_x[-size:], held_y=self.train_y[-size:],
            source=self.source + f" (held out: last {size} train images)")

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


# ----------------------------------------------------------------------------- caching
def cache_dir() -> Path:
    return Path(os.environ.get("REPR_JAX_CACHE", Path.home() / ".cache" / "repr_jax"))


def source_digest(source: Path, files: dict[str, bytes] | None = None) -> str:
    """SHA-256 (hex) of what ``source`` holds: an archive's bytes, or a directory's layout
    files (:func:`repr_jax.data_formats.read_files`, or ``files`` already read) with their
    relative names. Equal digests mean equal data, wherever it lies."""
    digest = hashlib.sha256()
    if source.is_dir():
        for name, blob in sorted((files if files is not None else read_files(source)).items()):
            digest.update(f"{name}\0{len(blob)}\0".encode())
            digest.update(blob)
    else:
        try:
            with open(source, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as err:
            raise DataError(f"cannot read {source}: {err.strerror or err}") from None
    return digest.hexdigest()


def _read_cache(cache: Path, source: Path, digest: str) -> Cifar | None:
    try:
        with np.load(cache, allow_pickle=False) as z:
            arrays = [z[k] for k in ("train_x", "train_y", "test_x", "test_y")]
            names, fp = tuple(str(c) for c in z["class_names"]), str(z["fingerprint"])
            cached_source = str(z["source_digest"]) if "source_digest" in z else ""
    except Exception:  # unreadable or damaged cache (npz members are CRC-checked): rebuild
        return None
    if cached_source != digest or fingerprint(*arrays) != fp:
        return None
    return Cifar(*arrays, names, f"{source} (cached)", fp)


def _remove_orphans(directory: Path) -> None:
    """Delete temporary cache files whose writing process no longer exists."""
    for tmp in directory.glob("*.tmp*.npz"):
        pid = tmp.suffixes[-2][len(".tmp"):] if len(tmp.suffixes) >= 2 else ""
        if pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # exists, owned by someone else
        return True
    return True


def _write_cache(cache: Path, data: Cifar, digest: str) -> None:
    tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(cache.parent)
        np.savez(tmp, train_x=data.train_x, train_y=data.train_y, test_x=data.test_x,
                 test_y=data.test_y, class_names=np.array(data.class_names),
                 fingerprint=np.array(data.fingerprint), source_digest=np.array(digest))
        os.replace(tmp, cache)
    except OSError as err:   # read-only or full cache: carry on without it
        print(f"warning: decode cache not written ({cache.parent}: {err.strerror or err}); "
              "set REPR_JAX_CACHE to a writable directory", file=sys.stderr)
    finally:   # also after Ctrl-C: no temporary file is left behind
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _load_local(source: Path, dataset: str, use_cache: bool) -> Cifar:
    if not source.exists():
        raise DataError(f"data path {source} does not exist")
    files = read_files(source) if source.is_dir() else None      # a directory is hashed as it is read
    digest = source_digest(source, files) if use_cache else ""
    cache = cache_dir() / f"{dataset}-v{_CACHE_VERSION}-{digest[:32]}.npz"
    if use_cache and cache.exists():
        cached = _read_cache(cache, source, digest)
        if cached is not None:
            return cached
    tx, ty, vx, vy, names = parse(files if files is not None else read_files(source), dataset, source)
    check_splits(tx, ty, vx, vy, names, dataset, source, complete=claimed_dataset(source) == dataset)
    data = Cifar(tx, ty, vx, vy, tuple(names), str(source), fingerprint(tx, ty, vx, vy))
    if use_cache:
        _write_cache(cache, data, digest)
    return data


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
    tx, ty, vx, vy = tr["image"], tr["label"].astype(np.int32), te["image"], te["label"].astype(np.int32)
    check_splits(tx, ty, vx, vy, names, dataset, Path(f"tfds:{dataset}"), complete=True)
    return Cifar(tx, ty, vx, vy, names, f"tfds:{dataset}", fingerprint(tx, ty, vx, vy))


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


__all__ = ["ARCHIVES", "CIFAR10_CLASSES", "NUM_CLASSES", "Cifar", "DataError", "cache_dir",
           "download_archive", "fingerprint", "load_cifar", "source_digest", "synthetic_cifar"]
