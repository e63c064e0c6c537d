"""Run settings: one frozen :class:`RunConfig` of sections, its JSON form, and overrides.

Every setting has a dotted key — ``epochs``, ``seed``, ``model.width``, ``data.train_limit``,
``optim.learning_rate`` (alias ``optim.lr``), ``ortho_loss``, ``kd.teacher`` (knowledge
distillation, :mod:`repr_jax.distill`), and the chosen method's fields
under its name (``repr.s1``; ``method.s1`` works too). :func:`apply_overrides` sets any of
them from ``KEY=VALUE`` strings, parsed by the field's type; the CLI's ``--set`` and
``--config FILE.json`` are built on it, and every older flag is an alias of one key.

``config.json`` stores ``{"config": to_dict(), "versions": …}`` with only the chosen method's
settings (``"method": {"name": "repr", "s1": 20, …}``). :meth:`RunConfig.from_dict` also
reads the layout written before methods had their own configs (flat ``convnet_*`` and
``data_dir`` keys, ``"method": "repr"`` beside a ``"repr"`` section), and a key a later
version added is simply taken at its default — so an old run directory stays usable.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path

from repr_jax.data import DATASETS, NORMALIZATIONS
from repr_jax.data.sources import parse_image_size
from repr_jax.distill import KDConfig
from repr_jax.errors import RunError
from repr_jax.methods.base import MethodConfig, get_method, method_config, method_names
from repr_jax.models import CONVNET_OPTIONS, HEAD_OPTIONS, MODELS, VGG_VARIANTS, architecture
from repr_jax.models.user import is_reference
from repr_jax.shapes import DEFAULT_INPUT_SHAPE
from repr_jax.models.convnet import VARIANTS
from repr_jax.optim import OptimConfig
from repr_jax.protocols import PROTOCOLS

# Settings that do not change the result: a resumed run may differ in these.
# ``seeds``, ``seeds_layout`` and ``devices`` change how the work is laid out, not what is
# computed (results agree to float32 round-off; repr_jax.population, repr_jax.parallel).
SEEDS_LAYOUTS = ("auto", "vmap", "loop")
NON_SEMANTIC = ("out", "resume", "quiet", "keep_checkpoints", "data.dir", "seeds", "seeds_layout", "devices",
                "tensorboard", "checkpoint_every", "data.stream_workers")
KEY_ALIASES = {"optim.lr": "optim.learning_rate", "lr": "optim.learning_rate"}
# Upper bounds: far beyond any real run, low enough that a typo cannot exhaust the machine
# (per-epoch tables, stacked seeds and layer widths are allocated from these).
MAX_EPOCHS = 100_000
MAX_SEED = 2**31 - 1          # every seed of a population fits a signed 32-bit integer
MAX_SEEDS = 4096
MAX_BATCH = 1 << 20
MAX_WIDTH = 1 << 16
MAX_DEPTH = 1000
MAX_KEEP_CHECKPOINTS = 10_000
MAX_STEPS = 1 << 40


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = dataclasses.field(default="convnet", metadata={
        "help": f"architecture: {', '.join(MODELS)}, or your own Linen model as FILE.py:FACTORY or "
                "package.module:FACTORY, FACTORY(num_classes, channels=None) returning the module (the file is "
                "imported: name only your own code)"})
    depth: int = dataclasses.field(default=3, metadata={"help": "convnet: number of conv layers n"})
    width: int = dataclasses.field(default=32, metadata={"help": "convnet: filters per layer F"})
    batch_norm: bool = dataclasses.field(default=False, metadata={"help": "convnet: BatchNorm after each conv"})
    variant: str = dataclasses.field(default="paper", metadata={
        "help": "convnet: paper (3x3 convs), official (the official code: 5x5 conv+bias, 3x3/2 SAME max-pool, "
                "truncated-normal 0.04 init), pool2 (5x5, 2x2 max-pool, He init), vanilla (siahuat0727/RePr's: "
                "the paper graph with biases, PyTorch's default init) or vanilla_pool (its first commit: 2x2 "
                "max-pool after each conv); vgg16: paper (one 512->10 dense head) or li (Li et al. 2017: "
                "512->512 dense + BatchNorm + ReLU -> 10)"})
    channels: str = dataclasses.field(default="", metadata={
        "help": "per-conv widths NAME=WIDTH,… (e.g. an export's architecture.json channels: train a pruned "
                "architecture from scratch); convs not named keep their width"})
    hidden: int = dataclasses.field(default=0, metadata={
        "help": "convnet: a fully connected ReLU layer of this many units before the head (0: none)"})
    dropout: float = dataclasses.field(default=0.0, metadata={
        "help": "convnet: Dropout rate on the hidden layer; lenet300: on both hidden layers"})
    dropconnect: float = dataclasses.field(default=0.0, metadata={
        "help": "convnet: DropConnect rate (1 - keep probability) on the hidden layer, or on the head without "
                "one; lenet300: on both hidden layers"})
    dropconnect_mode: str = dataclasses.field(default="example", metadata={
        "help": "convnet: DropConnect mask per example (the paper's) or per batch"})
    dropconnect_inference: str = dataclasses.field(default="moment", metadata={
        "help": "convnet: DropConnect at test time: moment (Gaussian moment matching, 1000 samples) or mean"})
    dropconnect_bias: bool = dataclasses.field(default=True, metadata={
        "help": "convnet: DropConnect drops the bias too (Wan et al. §2.2; false: the bias is always kept)"})
    logits: str = dataclasses.field(default="", metadata={
        "help": "your own model (FILE.py:FACTORY) returning more than logits: the tuple index (0) or dict key "
                "of the logits (default: the output itself, or its 'logits' entry)"})

    def channel_spec(self) -> dict[str, int]:
        """``model.channels`` parsed: ``{conv name: width}`` (``ValueError`` naming a bad entry)."""
        spec = {}
        for item in filter(None, (t.strip() for t in self.channels.split(","))):
            name, _, value = item.partition("=")
            try:
                spec[name.strip()] = int(value)
            except ValueError:
                raise ValueError(f"model.channels entry {item!r} is not NAME=WIDTH") from None
            if spec[name.strip()] < 1:
                raise ValueError(f"model.channels entry {item!r}: width must be >= 1")
        return spec

    def options(self) -> dict:
        """The builder options this model takes (C^n(F)'s; VGG-16's ``variant`` when it is not the
        default; head options only when they differ from the plain head, so older
        architectures read the same)."""
        if ":" in self.name:   # the user's factory (repr_jax.models.user): only which output is the logits
            return {"logits": self.logits} if self.logits else {}
        if self.name == "vgg16":
            return {} if self.variant == "paper" else {"variant": self.variant}
        if self.name == "lenet300":   # Wan et al.'s regularisers on its hidden layers
            return {k: getattr(self, k) for k in HEAD_OPTIONS if k != "hidden" and getattr(self, k) != HEAD_OPTIONS[k]
                    and (k != "dropconnect_bias" or self.dropconnect)}
        if self.name != "convnet":
            return {}
        return {k: getattr(self, k) for k in CONVNET_OPTIONS
                if (k not in HEAD_OPTIONS or getattr(self, k) != HEAD_OPTIONS[k])
                and (k != "dropconnect_bias" or self.dropconnect)}   # only where DropConnect is on


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = dataclasses.field(default="cifar10", metadata={
        "help": "cifar10, cifar100, folder (an image folder of any size at data.dir: train/<class>/<image>, "
                "test/<class>/<image>), npz (the arrays x_train, y_train, x_test, y_test of the file data.dir) "
                "or tfds:NAME (a TFDS dataset prepared in data.dir; tfds:image_folder reads a folder)"})
    dir: str | None = dataclasses.field(default=None, metadata={
        "help": "where the data is: CIFAR directory or .tar.gz (default: $REPR_JAX_DATA_DIR, else download), "
                "image folder (or tar), .npz file, TFDS data directory"})
    image_size: str = dataclasses.field(default="", metadata={
        "help": "H,W or S: resize every image to cover H x W and crop its centre, once at load (default: "
                "the source's size, which must then be one size)"})
    normalization: str = dataclasses.field(default="auto", metadata={
        "help": "per-channel standardisation: auto (CIFAR's published mean/std for cifar10/cifar100, the "
                "training split's otherwise), train (the training split's), none (x / 255 only), pytorch-cifar "
                "(CIFAR's mean, std 0.2023/0.1994/0.2010: kuangliu/pytorch-cifar, siahuat0727/RePr)"})
    crop_pad: int = dataclasses.field(default=-1, metadata={
        "help": "zero padding of the random crop in pixels; -1: round(min(H, W) / 8), 4 on 32x32 (default -1)"})
    flip: bool = dataclasses.field(default=True, metadata={
        "help": "random horizontal flip when data.augment (off for digits and text)"})
    input_shape: tuple[int, ...] | None = dataclasses.field(default=None, metadata={
        "help": "an image's (H, W, C), recorded from the data when a run starts (a value set here must "
                "match the data)"})
    num_classes: int | None = dataclasses.field(default=None, metadata={
        "help": "the class count, recorded from the data when a run starts (a value set here must match it)"})
    val_split: int = dataclasses.field(default=0, metadata={
        "help": "hold out the last N training images and evaluate on them instead of test"})
    holdout: int = dataclasses.field(default=0, metadata={
        "help": "set the last N training images aside (not trained on); data-driven criteria score on them"})
    augment: bool = dataclasses.field(default=True, metadata={
        "help": "random crop (padding data.crop_pad) + horizontal flip (data.flip) of training images"})
    train_limit: int | None = dataclasses.field(default=None, metadata={"help": "train on a fixed random slice of N images"})
    test_limit: int | None = dataclasses.field(default=None, metadata={"help": "evaluate on a fixed random slice of N images"})
    stream: bool = dataclasses.field(default=False, metadata={
        "help": "feed the training split batch by batch through Grain while the step runs: a folder "
                "(data.dataset=folder, extracted, larger than memory) is decoded from disk every epoch; any other "
                "source is held in host memory instead of on the device (the test split is held in memory)"})
    stream_workers: int = dataclasses.field(default=0, metadata={
        "help": "decoding threads of data.stream (0: min(8, CPUs))"})


def _standard() -> MethodConfig:
    return method_config("standard")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    out: str
    seed: int = 0
    epochs: int = 100
    batch_size: int = 128
    eval_batch_size: int = 500
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    method: MethodConfig = dataclasses.field(default_factory=_standard)
    kd: KDConfig = KDConfig()
    ortho_loss: float = 0.0
    protocol: str = ""   # the preset the settings started from (repr_jax.protocols), "" for none
    keep_checkpoints: int = 3
    checkpoint_every: int = dataclasses.field(default=0, metadata={
        "help": "also checkpoint after every N-th batch of each epoch (state, running sums, the input's "
                "position; the newest kept in <out>/checkpoints_in_epoch): --resume continues at the next "
                "batch, bit-identically (0: at epoch ends only; one run, not --seeds K)"})
    init_from: str = dataclasses.field(default="", metadata={
        "help": "start from the parameters and BatchNorm statistics of this run directory's latest checkpoint "
                "(same architecture; '{seed}' is replaced by the seed), e.g. to prune a trained network"})
    seeds: int = dataclasses.field(default=1, metadata={
        "help": "K > 1: train seeds seed … seed+K-1 in one process (see seeds_layout), run directories <out>-seed<s>"})
    seeds_layout: str = dataclasses.field(default="auto", metadata={
        "help": "how --seeds K runs: vmap (one vmapped program: fills an accelerator), loop (each seed's "
                "own call of the same compiled step, one after another: never slower than K runs), auto "
                "(loop on a CPU, where vmapped convolutions are slow; vmap elsewhere)"})
    devices: int = dataclasses.field(default=1, metadata={
        "help": "local devices the batch is split over (data parallel; 0: all of them)"})
    resume: bool = False
    quiet: bool = False
    tensorboard: bool = dataclasses.field(default=False, metadata={
        "help": "also write each epoch's scalars as TensorBoard events into <out>/tensorboard "
                "(pip install -e '.[tensorboard]')"})

    @property
    def num_classes(self) -> int:
        """The data's class count (``data.num_classes``; before the data has been read:
        CIFAR's, 10 or 100)."""
        if self.data.num_classes is not None:
            return self.data.num_classes
        return 10 if self.data.dataset == "cifar10" else 100

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One image's (H, W, C) (``data.input_shape``; before the data has been read: CIFAR's)."""
        return tuple(self.data.input_shape) if self.data.input_shape else DEFAULT_INPUT_SHAPE

    def with_data_shape(self, input_shape, num_classes: int) -> "RunConfig":
        """These settings with the data's image shape and class count recorded; ``RunError``
        when ``data.input_shape`` or ``data.num_classes`` was set to something else."""
        input_shape = tuple(int(d) for d in input_shape)
        for key, given, actual in (("input_shape", self.data.input_shape, input_shape),
                                   ("num_classes", self.data.num_classes, int(num_classes))):
            if given is not None and (tuple(given) if key == "input_shape" else given) != actual:
                raise RunError(f"data.{key} is {given!r} but the data has {actual!r}")
        return dataclasses.replace(self, data=dataclasses.replace(self.data, input_shape=input_shape,
                                                                  num_classes=int(num_classes)))

    def architecture(self) -> dict:
        """What ``architecture.json`` records: enough to rebuild the model."""
        return architecture(self.model.name, self.num_classes, self.model.channel_spec() or None,
                            input_shape=self.input_shape, **self.model.options())

    def init_from_dir(self) -> str:
        """``init_from`` with ``{seed}`` replaced by this run's seed ("" for none)."""
        return self.init_from.replace("{seed}", str(self.seed))

    def check_new_run(self) -> None:
        """Checks a new run gets beyond :meth:`validate` (a resumed run keeps what it recorded):
        ``--width`` / ``--depth`` / ``--batch-norm`` only for the model that reads them."""
        if self.model.name != "convnet" and (self.model.width, self.model.depth, self.model.batch_norm) != (
                ModelConfig.width, ModelConfig.depth, ModelConfig.batch_norm):
            raise RunError(f"--width, --depth and --batch-norm are options of convnet (C^n(F)), not of "
                           f"{self.model.name}: its layers are fixed (model.channels sets per-conv widths)")

    def validate(self) -> None:
        """Every check that needs no data; ``RunError`` with one line otherwise."""
        checks = [
            (1 <= self.epochs <= MAX_EPOCHS, f"--epochs must be in 1..{MAX_EPOCHS:,}, got {self.epochs}"),
            (1 <= self.batch_size <= MAX_BATCH, f"--batch-size must be in 1..{MAX_BATCH:,}, got {self.batch_size}"),
            (1 <= self.eval_batch_size <= MAX_BATCH,
             f"--eval-batch-size must be in 1..{MAX_BATCH:,}, got {self.eval_batch_size}"),
            (0 <= self.seed <= MAX_SEED, f"--seed must be in 0..{MAX_SEED}, got {self.seed}"),
            (1 <= self.keep_checkpoints <= MAX_KEEP_CHECKPOINTS,
             f"--keep-checkpoints must be in 1..{MAX_KEEP_CHECKPOINTS:,}, got {self.keep_checkpoints}"),
            (1 <= self.seeds <= MAX_SEEDS, f"--seeds must be in 1..{MAX_SEEDS}, got {self.seeds}"),
            (0 <= self.checkpoint_every <= MAX_STEPS,
             f"--checkpoint-every must be in 0..{MAX_STEPS:,} steps, got {self.checkpoint_every}"),
            (not (self.checkpoint_every and self.seeds > 1),
             "--checkpoint-every checkpoints one run inside its epochs; with --seeds K it is not supported "
             "(each seed's epoch checkpoints are kept)"),
            (self.seed + self.seeds - 1 <= MAX_SEED,
             f"--seed {self.seed} with --seeds {self.seeds} reaches seed {self.seed + self.seeds - 1}, above {MAX_SEED}"),
            (self.devices >= 0, f"--devices must be >= 0 (0: every device), got {self.devices}"),
            (self.seeds_layout in SEEDS_LAYOUTS,
             f"seeds_layout must be one of {', '.join(SEEDS_LAYOUTS)}, got {self.seeds_layout!r}"),
            (math.isfinite(self.ortho_loss) and self.ortho_loss >= 0,
             f"--ortho-loss must be finite and >= 0, got {self.ortho_loss}"),
            (self.protocol in ("", *PROTOCOLS), f"unknown protocol {self.protocol!r}; choose from {', '.join(PROTOCOLS)}"),
            (self.model.name in MODELS or is_reference(self.model.name),
             f"unknown model {self.model.name!r}; choose from {', '.join(MODELS)}, or FILE.py:FACTORY / "
             "package.module:FACTORY"),
            (1 <= self.model.depth <= MAX_DEPTH and 1 <= self.model.width <= MAX_WIDTH,
             f"--depth must be in 1..{MAX_DEPTH} and --width in 1..{MAX_WIDTH}, got {self.model.depth} and "
             f"{self.model.width}"),
            (self.model.name in ("convnet", "lenet300") or all(getattr(self.model, k) == v for k, v in
                                                               HEAD_OPTIONS.items() if k != "dropconnect_bias"),
             f"model.{'/'.join(HEAD_OPTIONS)} are options of the convnet head (and lenet300's hidden layers), "
             f"not of {self.model.name}"),
            (0 <= self.model.hidden <= MAX_WIDTH and 0 <= self.model.dropout < 1 and 0 <= self.model.dropconnect < 1,
             f"model.hidden must be in 0..{MAX_WIDTH} and model.dropout, model.dropconnect in [0, 1), got "
             f"{self.model.hidden}, {self.model.dropout}, {self.model.dropconnect}"),
            (not self.model.dropout or self.model.hidden > 0 or self.model.name == "lenet300",
             "model.dropout needs a hidden layer (model.hidden > 0)"),
            (self.model.name != "lenet300" or not self.model.hidden,
             "model.hidden is convnet's (lenet300 has its two hidden layers)"),
            (not self.model.logits or is_reference(self.model.name),
             f"model.logits applies to your own model (--model FILE.py:FACTORY), not {self.model.name}"),
            (self.model.dropconnect_mode in ("example", "batch"),
             f"model.dropconnect_mode must be example or batch, got {self.model.dropconnect_mode!r}"),
            (self.model.dropconnect_inference in ("moment", "mean"),
             f"model.dropconnect_inference must be moment or mean, got {self.model.dropconnect_inference!r}"),
            (self.data.dataset in DATASETS or (self.data.dataset.startswith("tfds:") and len(self.data.dataset) > 5),
             f"unknown dataset {self.data.dataset!r}; choose from {', '.join(DATASETS)} or tfds:NAME"),
            (self.data.normalization in NORMALIZATIONS,
             f"data.normalization must be one of {', '.join(NORMALIZATIONS)}, got {self.data.normalization!r}"),
            (-1 <= self.data.crop_pad <= 1024, f"data.crop_pad must be -1 (auto) or 0..1024, got {self.data.crop_pad}"),
            (self.data.input_shape is None or (len(self.data.input_shape) == 3 and all(
                1 <= d <= 65536 for d in self.data.input_shape)),
             f"data.input_shape must be (H, W, C), got {self.data.input_shape!r}"),
            (self.data.num_classes is None or 1 <= self.data.num_classes <= 1_000_000,
             f"data.num_classes must be in 1..1000000, got {self.data.num_classes}"),
            (self.data.val_split >= 0, f"--val-split must be >= 0, got {self.data.val_split}"),
            (self.data.holdout >= 0, f"data.holdout must be >= 0, got {self.data.holdout}"),
            (self.model.variant in (VGG_VARIANTS if self.model.name == "vgg16" else VARIANTS),
             f"unknown {self.model.name} variant {self.model.variant!r}; choose from "
             f"{', '.join(VGG_VARIANTS if self.model.name == 'vgg16' else VARIANTS)}"),
            (self.model.name in ("convnet", "vgg16") or self.model.variant == "paper",
             f"model.variant is an option of convnet and vgg16, not of {self.model.name}"),
            (self.data.train_limit is None or self.data.train_limit >= 1,
             f"--train-limit must be >= 1, got {self.data.train_limit}"),
            (self.data.test_limit is None or self.data.test_limit >= 1,
             f"--test-limit must be >= 1, got {self.data.test_limit}"),
            (not (self.data.stream and self.data.dataset == "folder")
             or not (self.data.val_split or self.data.holdout or self.data.train_limit),
             "data.stream=true on a folder cannot take --val-split, data.holdout or --train-limit (they slice "
             "the training split in memory)"),
            (not self.data.stream or self.seeds == 1 or self.seeds_layout != "vmap",
             "data.stream=true trains --seeds one after another (seeds_layout=loop or auto), not vmapped: each "
             "seed reads its own order of the training split"),
            (0 <= self.data.stream_workers <= 256,
             f"data.stream_workers must be in 0..256, got {self.data.stream_workers}"),
            (math.isfinite(self.optim.learning_rate) and self.optim.learning_rate > 0,
             f"--lr must be finite and > 0, got {self.optim.learning_rate}"),
            (math.isfinite(self.optim.momentum) and 0 <= self.optim.momentum < 1,
             f"--momentum must be in [0, 1), got {self.optim.momentum}"),
            (math.isfinite(self.optim.weight_decay) and self.optim.weight_decay >= 0,
             f"--weight-decay must be finite and >= 0, got {self.optim.weight_decay}"),
        ]
        for ok, message in checks:
            if not ok:
                raise RunError(message)
        try:
            parse_image_size(self.data.image_size)
            if any(w > MAX_WIDTH for w in self.model.channel_spec().values()):
                raise ValueError(f"model.channels widths must be <= {MAX_WIDTH}, got {self.model.channels!r}")
            self.optim.validate()
            self.kd.validate()
            self.method.validate(self)
        except ValueError as err:
            raise RunError(str(err)) from None

    # ------------------------------------------------------------------ JSON form
    def to_dict(self) -> dict:
        """JSON-shaped settings (tuples as lists), comparable with a saved config.json."""
        out = json.loads(json.dumps({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                     if f.name != "method"}, default=dataclasses.asdict))
        out["method"] = self.method.to_dict()
        return out

    @classmethod
    def from_dict(cls, saved: dict) -> "RunConfig":
        """Inverse of :meth:`to_dict`; reads older layouts too (module docstring). Unknown keys
        are refused with a ``RunError`` naming them."""
        d = migrate(saved)
        try:
            method = dict(d.pop("method", {"name": "standard"}))
            name = method.pop("name", "standard")
            return cls(model=_build(ModelConfig, d.pop("model", {}), "model"),
                       data=_build(DataConfig, d.pop("data", {}), "data"),
                       optim=_build(OptimConfig, d.pop("optim", {}), "optim"),
                       kd=_build(KDConfig, d.pop("kd", {}), "kd"),
                       method=_build(get_method(name).config_class, method, name),
                       **_fields(cls, d, ""))
        except RunError:
            raise
        except (TypeError, ValueError) as err:
            raise RunError(f"config does not match this version of repr-jax: {err}") from None

    def semantic(self) -> dict:
        """The flat ``{key: value}`` settings that change the result (resume compares these)."""
        return {k: v for k, v in flatten(self.to_dict()).items() if k not in NON_SEMANTIC}


_LEGACY_FLAT = {"dataset": "data.dataset", "data_dir": "data.dir", "val_split": "data.val_split",
                "train_limit": "data.train_limit", "test_limit": "data.test_limit",
                "convnet_depth": "model.depth", "convnet_width": "model.width",
                "convnet_batch_norm": "model.batch_norm", "convnet_variant": "model.variant"}


def migrate(saved: dict) -> dict:
    """A config dict of any earlier layout in today's nested layout (a copy)."""
    if not isinstance(saved, dict):
        raise RunError(f"a config must be a JSON object, got {type(saved).__name__}")
    d = json.loads(json.dumps(saved))
    if isinstance(d.get("model"), str):
        d["model"] = {"name": d["model"]}
    for old, new in _LEGACY_FLAT.items():
        if old in d:
            section, key = new.split(".")
            d.setdefault(section, {})[key] = d.pop(old)
    legacy_repr = d.pop("repr", None)
    if isinstance(d.get("method"), str):
        name = d.pop("method")
        d["method"] = {"name": name, **(legacy_repr or {} if name == "repr" else {})}
    return d


def _fields(cls, values: dict, prefix: str) -> dict:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        where = f"{prefix} " if prefix else ""
        raise ValueError(f"unknown {where}setting(s) {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    sections = ("model", "data", "optim", "kd", "method")
    return {k: v if k in sections and not prefix else checked_value(hints[k], v, f"{prefix}.{k}" if prefix else k)
            for k, v in values.items()}


def checked_value(tp, value, key: str):
    """``value`` (from JSON: a ``--config`` file or a run's ``config.json``) as a value of the
    field type ``tp``, or ``RunError`` naming ``key``: ints are not floats or booleans, strings
    are not numbers, ``X | None`` admits null, a float field takes an integer."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}.get(tp)
    if ok is True:
        return float(value) if tp is float else value
    if ok is None and _is_tuple(tp) and isinstance(value, (list, tuple)):
        return tuple(checked_value(typing.get_args(tp)[0], item, f"{key}[{i}]") for i, item in enumerate(value))
    if ok is None and not _is_tuple(tp):
        return value
    name = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, "a list")
    raise RunError(f"setting {key} must be {name}, got {json.dumps(value)[:80]}")


def _build(cls, values: dict, prefix: str):
    if not isinstance(values, dict):
        raise ValueError(f"{prefix} must be an object, got {values!r}")
    return cls(**_fields(cls, values, prefix))


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (the method section under ``method.``)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ----------------------------------------------------------------------------- overrides
def _is_tuple(tp) -> bool:
    return typing.get_origin(tp) is tuple


def parse_value(tp, text: str):
    """``text`` as a value of type ``tp`` (int, float, bool, str, ``X | None``, ``tuple[int, ...]``)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if text.strip().lower() in ("none", "null"):
            return None
        return parse_value(next(a for a in args if a is not type(None)), text)
    if tp is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if tp is int:
        return int(text)
    if tp is float:
        return float(text)
    if _is_tuple(tp):
        items = json.loads(text) if text.strip().startswith("[") else [t for t in text.split(",") if t.strip()]
        return tuple(parse_value(args[0], str(item)) for item in items)
    return text


def _section_class(d: dict, section: str):
    if section == "method":
        return get_method(d.get("method", {}).get("name", "standard")).config_class
    return {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "kd": KDConfig}[section]


def apply_overrides(config: dict, overrides, *, explicit: set | None = None) -> dict:
    """``config`` (the :meth:`RunConfig.to_dict` layout, may be partial) with each
    ``KEY=VALUE`` of ``overrides`` applied in order; ``RunError`` names a bad key or value.
    Keys set are added to ``explicit`` when given."""
    d = migrate(config)
    d.setdefault("method", {"name": "standard"})
    for item in overrides:
        if "=" not in item:
            raise RunError(f"--set expects KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        key = KEY_ALIASES.get(key.strip(), key.strip())
        if key == "method":
            try:
                d["method"] = {"name": get_method(text.strip()).name}
            except ValueError as err:
                raise RunError(str(err)) from None
            continue
        section, _, field = key.rpartition(".")
        current = d["method"].get("name", "standard")
        if section and section not in ("model", "data", "optim", "kd", "method"):
            if section not in method_names():
                raise RunError(f"unknown setting {key!r}: no section {section!r} (sections: model, data, "
                               f"optim, kd, method or a method name: {', '.join(method_names())})")
            if section != current:
                raise RunError(f"{key} is a setting of method {section!r}; this run's method is "
                               f"{current!r} (set --method {section} first)")
            section = "method"
        cls = _section_class(d, section) if section else RunConfig
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.name != "method" or section]
        if field not in names or (not section and field in ("model", "data", "optim", "kd", "method")):
            raise RunError(f"unknown setting {key!r}; {section or 'run'} settings are: "
                           f"{', '.join(n for n in names if section or n not in ('model', 'data', 'optim', 'kd'))}")
        try:
            value = parse_value(hints[field], text)
        except (ValueError, StopIteration, json.JSONDecodeError):
            raise RunError(f"bad value for {key}: {text!r} (expected {getattr(hints[field], '__name__', hints[field])})") from None
        target = d.setdefault(section, {}) if section else d
        target[field] = value
        if explicit is not None:
            explicit.add(key)
    return d


def as_trained(run_config: dict) -> dict:
    """A run's saved settings (a ``config.json``'s ``"config"``, migrated) with the settings
    added since it was written set to what it was trained with, where that differs from
    today's default: ``data.input_shape`` (32, 32, 3) and ``data.num_classes`` CIFAR's for
    runs written before they were recorded, ``optim.adam_step_count`` is ``shared`` for Adam runs written before it
    existed (they used optax's one step count), ``model.dropconnect_bias`` false for
    DropConnect runs, ``channel-pruning.normalize`` false and ``slimming.fill_quota`` true for
    runs of those methods written before these existed."""
    d = json.loads(json.dumps(run_config))
    data = d.setdefault("data", {})
    if isinstance(data, dict) and "input_shape" not in data:   # every run before it was recorded: CIFAR's
        data["input_shape"] = list(DEFAULT_INPUT_SHAPE)
        data.setdefault("num_classes", 100 if data.get("dataset") == "cifar100" else 10)
    model = d.setdefault("model", {})
    if isinstance(model, dict) and model.get("dropconnect") and "dropconnect_bias" not in model:
        model["dropconnect_bias"] = False    # DropConnect kept the bias before the option existed
    optim = d.setdefault("optim", {})
    if optim.get("optimizer") == "adam" and "adam_step_count" not in optim:
        optim["adam_step_count"] = "shared"
    method = d.get("method", {})
    legacy = {"channel-pruning": ("normalize", False),   # before He et al.'s ‖W_i‖_F = 1 was imposed
              "slimming": ("fill_quota", True)}          # before the threshold was the paper's
    if isinstance(method, dict) and method.get("name") in legacy:
        key, value = legacy[method["name"]]
        method.setdefault(key, value)
    return d


def load_config_file(path: str | Path) -> dict:
    """A JSON settings file (this layout, or a run's ``config.json``) as a config dict."""
    try:
        loaded = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as err:
        raise RunError(f"cannot read config file {path}: {type(err).__name__}: {' '.join(str(err).split())[:200]}") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("config"), dict):
        return as_trained(migrate(loaded["config"]))
    return migrate(loaded)


def default_learning_rate(optimizer: str, model: str) -> float:
    """1e-3 for Adam; for SGD 0.002 for C^n(F), whose 32·32·F-input dense layer diverged at
    0.01–0.05 here, 0.01 for the LeNets (Caffe's and Han et al.'s rate; LeNet-5 diverged at
    0.1) and 0.1 for the ResNets, VGG and a user's model."""
    if optimizer == "adam":
        return 1e-3
    return 0.002 if model == "convnet" else 0.01 if model in ("lenet300", "lenet5") else 0.1


def settings_help() -> str:
    """Every ``--set`` key with its type and default, grouped by section (for ``--help``)."""
    lines = []

    def describe(prefix, cls, instance):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in ("model", "data", "optim", "kd", "method", "out", "resume"):
                continue
            tp = hints[f.name]
            name = getattr(tp, "__name__", str(tp).replace("typing.", ""))
            help_ = f.metadata.get("help", "")
            default = "" if "(default" in help_ else f", default {getattr(instance, f.name)!r}"
            lines.append(f"  {prefix}{f.name} ({name}{default})" + (f": {help_}" if help_ else ""))

    describe("", RunConfig, RunConfig(out=""))
    for section, cls in (("model.", ModelConfig), ("data.", DataConfig), ("optim.", OptimConfig), ("kd.", KDConfig)):
        describe(section, cls, cls())
    for name in method_names():
        method = get_method(name)
        lines.append(f"method {name}: {method.summary}")
        describe(f"{name}.", method.config_class, method.config_class())
    return "\n".join(lines)


__all__ = ["DataConfig", "KEY_ALIASES", "MAX_EPOCHS", "MAX_SEED", "ModelConfig", "NON_SEMANTIC", "RunConfig",
           "RunError", "apply_overrides", "as_trained", "checked_value", "default_learning_rate", "flatten", "load_config_file", "migrate",
           "parse_value", "settings_help"]
