"""Image-classification data beyond CIFAR's files: image folders of any size, ``.npz``
arrays and TFDS datasets, as the arrays a :class:`repr_jax.data.Dataset` holds.

Every reader returns ``(train_x, train_y, test_x, test_y, class_names)``: images uint8
``(N, H, W, C)`` with ``C`` = 1 (grayscale) or 3 (RGB), labels int32, or refuses with a
one-line :class:`~repr_jax.errors.DataError` naming the file. :func:`check_arrays` applies
the checks every source shares (:mod:`repr_jax.data.formats` adds CIFAR's counts).

* **Image folder** (``train/<class>/<image>``, ``test/<class>/<image>`` — ``val/`` when
  there is no ``test/``; PNG, JPEG, BMP, WebP): the class names are the sorted folder names
  of both splits together, so a class missing from the test split keeps its label. Every
  image must have the same size unless ``image_size`` is given; then each is resized so
  that it covers ``(H, W)`` (bilinear, antialiased — PIL) and centre-cropped: the
  ImageNet evaluation transform, applied once when the data is loaded. A folder whose
  images are all grayscale (PIL modes ``L``, ``1``, ``LA``) stays 1-channel; a folder with
  any colour image (palette images included) becomes RGB.
* **npz** (``np.load(..., allow_pickle=False)``: nothing in the file can run code): arrays
  ``x_train``, ``y_train``, ``x_test``, ``y_test`` and optionally ``class_names`` (strings);
  images uint8 ``(N, H, W)`` or ``(N, H, W, C)``; each member's size is read from the zip
  directory and capped before it is inflated.
* **TFDS** (``tfds:NAME``): a prepared dataset in ``data_dir`` (no download is attempted),
  or ``tfds:image_folder`` — :class:`tensorflow_datasets.folder_dataset.ImageFolder` over
  ``data_dir`` (``<split>/<class>/<image>``); splits ``train`` and ``test``; the
  ``(image, label)`` supervised keys.
"""
from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np

from repr_jax.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FOLDER_RE = re.compile(r"(?:^|/)(train|test|val)/([^/]+)/([^/]+)$")   # <split>/<class>/<file>
_GRAY_MODES = ("L", "1", "LA")
MAX_NPZ_BYTES = 16 << 30     # what one .npz may inflate to (its zip directory says before reading)
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def parse_image_size(text: str) -> tuple[int, int] | None:
    """``"64"`` → (64, 64), ``"48,64"`` → (48, 64) (height, width), ``""`` → None;
    ``ValueError`` for anything else."""
    if not text:
        return None
    parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
    if len(parts) not in (1, 2) or not all(p.isdigit() and 1 <= int(p) <= 4096 for p in parts):
        raise ValueError(f"data.image_size must be H,W or S (1..4096 pixels), got {text!r}")
    h = int(parts[0])
    return h, int(parts[-1])


def _reason(err: BaseException) -> str:
    """The first line of an error, without the in-memory file object PIL names in it (the
    caller names the file)."""
    text = (str(err).splitlines() or [""])[0] or type(err).__name__
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", text)


def to_array(img, name: str) -> np.ndarray:
    """A PIL image → uint8 ``(H, W)`` (grayscale) or ``(H, W, 3)``."""
    if img.mode in _GRAY_MODES:
        return np.asarray(img.convert("L"))
    if img.mode in ("I", "I;16", "I;16B", "F"):
        raise DataError(f"image {name} has {img.mode} pixels (16-bit or float); store 8-bit images")
    return np.asarray(img.convert("RGB"))


def cover_and_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``image`` (uint8 ``(h, w)``, ``(h, w, 1)`` or ``(h, w, 3)``) so that it covers ``size`` = (H, W),
    keeping its aspect ratio (bilinear; PIL antialiases when shrinking), then crop the centre."""
    from PIL import Image
    h, w = image.shape[:2]
    target_h, target_w = size
    if (h, w) == (target_h, target_w):
        return image
    scale = max(target_h / h, target_w / w)
    new_h, new_w = max(target_h, round(h * scale)), max(target_w, round(w * scale))
    one_channel = image.ndim == 3 and image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if one_channel else image)                 # L or RGB
    resized = np.asarray(pil.resize((new_w, new_h), Image.BILINEAR))
    top, left = (new_h - target_h) // 2, (new_w - target_w) // 2
    out = resized[top:top + target_h, left:left + target_w]
    return out[..., None] if one_channel else out


def resize_all(images: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """:func:`cover_and_crop` of every image of a ``(N, H, W, C)`` batch (a copy when resized)."""
    if size is None or images.shape[1:3] == tuple(size):
        return images
    return np.stack([cover_and_crop(img, size) for img in images])


def stack_images(images: list[np.ndarray], names: list[str], image_size) -> np.ndarray:
    """One ``(N, H, W, C)`` uint8 array of decoded images: resized to ``image_size`` if given,
    else all of one size (or a one-line error naming the first that differs); grayscale kept
    as one channel unless some image is in colour."""
    if image_size is not None:
        images = [cover_and_crop(img, image_size) for img in images]
    odd = next((i for i, img in enumerate(images) if img.shape[:2] != images[0].shape[:2]), None)
    if odd is not None:
        (h, w), (h0, w0) = images[odd].shape[:2], images[0].shape[:2]
        raise DataError(f"image {names[odd]} is {h}x{w} pixels, {names[0]} {h0}x{w0}; set data.image_size=H,W "
                        "to resize them all")
    colour = any(img.ndim == 3 for img in images)
    if colour:
        images = [np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img for img in images]
    else:
        images = [img[..., None] for img in images]
    return np.stack(images)


def image_sort_key(name: str):
    """Sort key of an image path: numeric file stems in numeric order, then the rest by name."""
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def folder_arrays(files: dict[str, bytes], image_size=None, class_order: tuple[str, ...] | None = None,
                  expect_shape: tuple | None = None):
    """Decode an image-folder tree (``files``: relative path → bytes) into
    ``(train_x, train_y, test_x, test_y, class_names)``. ``class_order``: the label order
    when the folder names are a subset of it (CIFAR-10's official order); ``expect_shape``:
    every image must have this ``(H, W, C)`` (CIFAR's layouts)."""
    from PIL import Image
    split_files: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}, "val": {}}
    for name in files:
        m = FOLDER_RE.search(name)
        if m and name.lower().endswith(IMAGE_EXTENSIONS):
            split_files[m.group(1)].setdefault(m.group(2), []).append(name)
    evaluation = "test" if split_files["test"] else "val"
    classes = sorted(set(split_files["train"]) | set(split_files[evaluation]))
    if class_order is not None and set(classes) <= set(class_order):
        classes = list(class_order)
    out = []
    for split in ("train", evaluation):
        images, labels, names = [], [], []
        for label, cls in enumerate(classes):
            for name in sorted(split_files[split].get(cls, []), key=image_sort_key):
                try:
                    with Image.open(io.BytesIO(files[name])) as img:
                        array = to_array(img, name)
                except DataError:
                    raise
                except Exception as err:
                    raise DataError(f"cannot decode image {name}: {_reason(err)}") from None
                if expect_shape is not None and image_size is None and array.shape[:2] != tuple(expect_shape[:2]):
                    raise DataError(f"image {name} has shape {array.shape}, expected CIFAR's {tuple(expect_shape)} "
                                    "(an image folder of any size and channels: --dataset folder)")
                images.append(array)
                labels.append(label)
                names.append(name)
        if not images:
            raise DataError(f"image-folder layout has no {split}/<class>/ images")
        x = stack_images(images, names, image_size)
        if expect_shape is not None and x.shape[-1] != expect_shape[-1]:
            x = np.repeat(x, expect_shape[-1], axis=-1)   # a grayscale CIFAR copy read as RGB
        out += [x, np.asarray(labels, np.int32)]
    if out[0].shape[-1] != out[2].shape[-1]:   # one split all grayscale, the other with colour: RGB
        out[0], out[2] = (np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x for x in (out[0], out[2]))
    if out[0].shape[1:] != out[2].shape[1:]:
        raise DataError(f"train images are {out[0].shape[1:]}, {evaluation} images {out[2].shape[1:]} "
                        "(height, width, channels); set data.image_size=H,W to resize both")
    return (*out, tuple(classes))


def read_npz(path: Path):
    """``(train_x, train_y, test_x, test_y, class_names)`` of an ``.npz`` file (module docstring)."""
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read {path}: not an .npz archive ({_reason(err)})") from None
    if inflated > MAX_NPZ_BYTES:
        raise DataError(f"{path} inflates to {inflated:,} bytes, more than {MAX_NPZ_BYTES:,}; refused")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise DataError(f"{path} has no {', '.join(missing)} (an .npz needs {', '.join(NPZ_KEYS)})")
            arrays = [z[k] for k in NPZ_KEYS]
            names = z["class_names"] if "class_names" in z.files else None
    except DataError:
        raise
    except Exception as err:   # damaged member (zip CRC), object arrays (allow_pickle=False), ...
        raise DataError(f"cannot read {path}: {_reason(err)}") from None
    tx, ty, vx, vy = arrays
    for key, x in (("x_train", tx), ("x_test", vx)):
        if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
            raise DataError(f"{path}: {key} is {x.dtype} of shape {x.shape}; expected uint8 (N, H, W) or "
                            "(N, H, W, C) with C = 1 or 3")
    tx, vx = (x[..., None] if x.ndim == 3 else x for x in (tx, vx))
    ty, vy = (checked_labels(y, len(x), f"{path}: {key}")
              for y, x, key in ((ty, tx, "y_train"), (vy, vx, "y_test")))
    if names is not None:
        if names.ndim != 1 or names.dtype.kind != "U":
            raise DataError(f"{path}: class_names must be a 1-D array of strings, got {names.dtype} {names.shape}")
        names = tuple(str(n) for n in names)
    else:
        names = tuple(f"class_{i}" for i in range(int(max(ty.max(initial=0), vy.max(initial=0))) + 1))
    return tx, ty, vx, vy, names


def checked_name(name: str, source) -> str:
    """``name`` (a file's relative path in a data source) if it is valid UTF-8, else a one-line
    :class:`DataError` naming it with its bytes escaped (Python keeps undecodable bytes of a
    file name as surrogates, which no log, fingerprint or JSON file can hold)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = name.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
        raise DataError(f"{source}: the file name {shown} is not valid UTF-8; rename it") from None
    return name


def checked_labels(labels: np.ndarray, count: int, name: str) -> np.ndarray:
    """``labels`` as int32 if they are a 1-D integer array of ``count`` entries; else a
    one-line :class:`DataError` naming ``name``."""
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{name}: labels must be a list of integers, got shape {labels.shape} "
                        f"of {labels.dtype}")
    if len(labels) != count:
        raise DataError(f"{name}: {count} images but {len(labels)} labels")
    limits = np.iinfo(np.int32)
    if labels.size and (labels.min() < limits.min or labels.max() > limits.max):   # before any cast
        bad = labels.min() if labels.min() < limits.min else labels.max()
        raise DataError(f"{name}: label {int(bad)} does not fit a 32-bit class index; a cast would wrap it")
    return labels.astype(np.int32)


def read_tfds(name: str, data_dir: str | None, image_size=None):
    """``(train_x, train_y, test_x, test_y, class_names)`` of the TFDS dataset ``name``
    (prepared in ``data_dir``; ``image_folder``: a folder tree read by TFDS's ImageFolder)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(f"tfds:{name} needs tensorflow-datasets (pip install -e '.[tfds]')") from None
    try:
        if name == "image_folder":
            if not data_dir:
                raise DataError("tfds:image_folder needs --data-dir: the folder holding <split>/<class>/<image>")
            builder = tfds.folder_dataset.ImageFolder(str(data_dir))
        else:
            builder = tfds.builder(name, data_dir=data_dir)
            if not builder.is_prepared():
                raise DataError(f"tfds:{name} is not prepared in {builder.data_dir} (no download is attempted: "
                                "prepare it with `tfds build` where there is internet, then pass --data-dir)")
        splits = set(builder.info.splits)
        if not {"train", "test"} <= splits:
            raise DataError(f"tfds:{name} has splits {sorted(splits)}; train and test are needed")
        classes = tuple(builder.info.features["label"].names)
        out = []
        for split in ("train", "test"):
            images, labels, names = [], [], []
            for i, (img, label) in enumerate(tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True,
                                                                               shuffle_files=False))):
                img = np.asarray(img, np.uint8)
                images.append(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img)
                labels.append(int(label))
                names.append(f"tfds:{name}/{split}[{i}]")
            if not images:
                raise DataError(f"tfds:{name} has no {split} examples")
            out += [stack_images(images, names, image_size), checked_labels(np.asarray(labels), len(labels), f"tfds:{name} {split}")]
    except DataError:
        raise
    except Exception as err:   # a TFDS/TensorFlow failure of any kind: one line
        raise DataError(f"tfds:{name}: {_reason(err)}") from None
    return (*out, classes)


def check_arrays(tx, ty, vx, vy, names, source) -> None:
    """The checks every source shares: uint8 ``(N, H, W, C)`` images with C = 1 or 3 and one
    shape in both splits, one label per image, labels in ``0 … classes−1``, every class in
    the training split."""
    classes = len(names)
    for split, x, y in (("train", tx, ty), ("test", vx, vy)):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise DataError(f"{source}: {split} images are {x.dtype} {x.shape}, expected uint8 (N, H, W, 1 or 3)")
        if len(x) != len(y) or len(y) == 0:
            raise DataError(f"{source}: {split} split has {len(x)} images and {len(y)} labels")
        bad = y[(y < 0) | (y >= classes)]
        if bad.size:
            raise DataError(f"{source}: {split} label {int(bad[0])} is outside 0..{classes - 1} "
                            f"({classes} class names)")
    if tx.shape[1:] != vx.shape[1:]:
        raise DataError(f"{source}: train images are {tx.shape[1:]}, test images {vx.shape[1:]}")
    missing = np.setdiff1d(np.arange(classes), ty)
    if missing.size:
        raise DataError(f"{source}: the train split has no image of class(es) "
                        f"{', '.join(map(str, missing[:5].tolist()))}{' …' if missing.size > 5 else ''}")


__all__ = ["FOLDER_RE", "IMAGE_EXTENSIONS", "MAX_NPZ_BYTES", "NPZ_KEYS", "check_arrays", "checked_labels",
           "checked_name",
           "cover_and_crop", "folder_arrays", "parse_image_size", "read_npz", "read_tfds", "resize_all",
           "stack_images", "to_array"]
