"""Derive the real non-CIFAR-shaped test sets of the any-data study from data we have.

* ``cifar10-gray28.npz`` — every CIFAR-10 image (of the copy given) converted to grayscale
  (PIL's ``L``: ITU-R 601-2 luma) and resized to 28×28 (antialiased bilinear, cover + centre
  crop: :func:`repr_jax.data.sources.cover_and_crop`): MNIST's shape with real images.
* ``cifar10-64.npz`` — every image resized to 64×64×3 (the same resize).
* ``digits.npz`` — ``sklearn.datasets.load_digits`` (1,797 real 8×8 handwritten digits, 17
  gray levels scaled ×16 to 0–255), split 80/20 by a fixed-seed permutation within each
  class (needs scikit-learn; skipped with a note otherwise).

``--format folder`` writes ``<name>/train|test/<class>/<i>.png`` trees instead of ``.npz``
(to exercise ``--dataset folder``). Every file is written atomically and its SHA-256
printed, so a study can name exactly what it trained on. Nothing is downloaded.

    python experiments/derive_datasets.py --cifar ../shared/datasets/cifar10-jpeg.tar.gz --out .data/derived
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from repr_jax.data import DataError, Dataset, load_data  # noqa: E402
from repr_jax.data.sources import cover_and_crop  # noqa: E402


def grayscale(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) → (N, H, W, 1) by PIL's ``L`` conversion (L = R·299/1000 +
    G·587/1000 + B·114/1000, rounded)."""
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(img).convert("L")) for img in images])[..., None]


def resize(images: np.ndarray, size: int) -> np.ndarray:
    return np.stack([cover_and_crop(img, (size, size)) for img in images])


def digits(seed: int = 0, test_fraction: float = 0.2):
    """sklearn's 8×8 digits as uint8 (N, 8, 8, 1), split per class by a seeded permutation."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.clip(d.images * 16, 0, 255).astype(np.uint8)[..., None]
    y = d.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[: round(test_fraction * len(idx))]] = True
    return Dataset(x[~test], y[~test], x[test], y[test], tuple(str(c) for c in range(10)), "sklearn digits")


def write_npz(path: Path, data: Dataset) -> str:
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    try:
        np.savez(tmp, x_train=data.train_x, y_train=data.train_y, x_test=data.test_x, y_test=data.test_y,
                 class_names=np.array(data.class_names))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_folder(path: Path, data: Dataset) -> str:
    from PIL import Image
    digest = hashlib.sha256()
    for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        for i, (img, label) in enumerate(zip(x, y)):
            folder = path / split / data.class_names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{i}.png")
            digest.update(img.tobytes() + int(label).to_bytes(4, "little"))
    return digest.hexdigest()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cifar", help="the CIFAR-10 copy (directory or .tar.gz); omit to derive digits only")
    p.add_argument("--out", default=".data/derived", help="directory for the derived sets")
    p.add_argument("--format", choices=("npz", "folder"), default="npz")
    p.add_argument("--sets", nargs="+", default=["gray28", "rgb64", "digits"], choices=("gray28", "rgb64", "digits"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    derived = {}
    if {"gray28", "rgb64"} & set(args.sets):
        if not args.cifar:
            print("error: --cifar is needed for gray28 and rgb64", file=sys.stderr)
            return 2
        try:
            cifar = load_data("cifar10", args.cifar)
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if "gray28" in args.sets:
            derived["cifar10-gray28"] = Dataset(resize(grayscale(cifar.train_x), 28), cifar.train_y,
                                                resize(grayscale(cifar.test_x), 28), cifar.test_y,
                                                cifar.class_names, f"{cifar.source} → gray 28×28")
        if "rgb64" in args.sets:
            derived["cifar10-64"] = Dataset(resize(cifar.train_x, 64), cifar.train_y, resize(cifar.test_x, 64),
                                            cifar.test_y, cifar.class_names, f"{cifar.source} → 64×64")
    if "digits" in args.sets:
        try:
            derived["digits"] = digits()
        except ImportError:
            print("note: scikit-learn is not installed (pip install scikit-learn): digits skipped", file=sys.stderr)
    for name, data in derived.items():
        target = out / (name if args.format == "folder" else f"{name}.npz")
        digest = (write_folder if args.format == "folder" else write_npz)(target, data)
        print(f"{target}: {len(data.train_y)} / {len(data.test_y)} images of {data.image_shape}, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
