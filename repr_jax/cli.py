"""Command-line plumbing shared by the entry points in ``experiments/`` and ``benchmarks/``.

The training CLI composes a :class:`~repr_jax.config.RunConfig` from, in order: a JSON
settings file (``--config``), ``--method NAME``, a protocol preset (``--protocol``,
:mod:`repr_jax.protocols`), the named flags (each an alias of one
``--set`` key, kept so that every earlier command still runs), and ``--set KEY=VALUE``
(repeatable; the last word). Bad input exits with code 2 and one line (:func:`fail`).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# flag → (--set key, help). Defaults are read from the config dataclasses for --help.
ALIASES = {
    "--model": ("model.name", "architecture: a zoo name, or your own Linen model as FILE.py:FACTORY or "
                          "package.module:FACTORY — FACTORY(num_classes, channels=None) returns the module "
                          "(the file is imported: only your own code; docs/cli.md)"),
    "--dataset": ("data.dataset", "cifar10, cifar100, folder (an image folder of any size and 1 or 3 channels: "
                                  "train/<class>/<image>, test/<class>/<image>), npz (a file with x_train, y_train, "
                                  "x_test, y_test) or tfds:NAME (prepared in --data-dir; tfds:image_folder reads a "
                                  "folder); --set data.image_size=H,W resizes (docs/cli.md 'Data')"),
    "--data-dir": ("data.dir", "where the data is (default: $REPR_JAX_DATA_DIR, else a TFDS/official CIFAR "
                               "download): a CIFAR copy (directory or .tar.gz in any standard layout), an image "
                               "folder (or tar), an .npz file, or a TFDS data directory"),
    "--epochs": ("epochs", "total training epochs"),
    "--batch-size": ("batch_size", "training batch size (the last partial batch of an epoch is dropped)"),
    "--seed": ("seed", "seed for init, shuffling, augmentation and the method's randomness"),
    "--keep-checkpoints": ("keep_checkpoints", "latest checkpoints kept (+ the best; at least 2 per seed with --seeds)"),
    "--checkpoint-every": ("checkpoint_every", "also checkpoint after every N-th batch of each epoch; --resume "
                                               "continues at the next batch (0: at epoch ends only)"),
    "--seeds": ("seeds", "train K seeds (--seed … --seed+K-1) in one process — one vmapped program, or on a CPU "
                         "one after another (--set seeds_layout=auto|vmap|loop); each is an ordinary run "
                         "directory <out>-seed<s> (docs/cli.md 'Seeds and devices')"),
    "--devices": ("devices", "split each batch over this many local devices (data parallel over a jax.sharding "
                             "Mesh; 0: all of them; the global batch stays --batch-size)"),
    "--val-split": ("data.val_split", "hold out the last N training images and evaluate on them instead of test"),
    "--train-limit": ("data.train_limit", "train on a fixed random slice of N images"),
    "--test-limit": ("data.test_limit", "evaluate on a fixed random slice of N images"),
    "--eval-batch-size": ("eval_batch_size", "evaluation batch size"),
    "--optimizer": ("optim.optimizer", "sgd (momentum) or adam (AdamW)"),
    "--lr": ("optim.learning_rate", "peak learning rate (default: 1e-3 for adam; for sgd 0.002 for convnet, "
                                    "whose 32·32·F-input dense layer diverged at 0.01-0.05, and 0.1 otherwise)"),
    "--momentum": ("optim.momentum", "SGD momentum"),
    "--weight-decay": ("optim.weight_decay", "L2 on conv/dense kernels (decoupled for adam)"),
    "--schedule": ("optim.schedule", "learning-rate schedule: constant, cosine, step or exponential (--set optim.decay_steps, optim.decay_rate, optim.staircase)"),
    "--warmup-epochs": ("optim.warmup_epochs", "linear warm-up epochs"),
    "--step-epochs": ("optim.step_epochs", "epochs at which the 'step' schedule multiplies the rate by --step-factor"),
    "--step-factor": ("optim.step_factor", "factor of the 'step' schedule"),
    "--depth": ("model.depth", "convnet: number of conv layers n"),
    "--width": ("model.width", "convnet: filters per layer F"),
    "--convnet-variant": ("model.variant", "convnet: paper (3x3 convs), official (the official code: 5x5 conv+bias, 3x3/2 SAME max-pool, truncated-normal 0.04 init) or pool2 (5x5, 2x2 max-pool, He init)"),
    "--ortho-loss": ("ortho_loss", "weight λ of the orthogonality penalty λ·Σ_layers Σ_f O_f (any method)"),
    "--repr-s1": ("repr.s1", "full-network epochs per round (S1)"),
    "--repr-s2": ("repr.s2", "sub-network epochs per round (S2)"),
    "--repr-iterations": ("repr.iterations", "number of rounds (N)"),
    "--repr-drop": ("repr.drop_fraction", "fraction p of live filters dropped"),
    "--repr-min-keep": ("repr.min_keep", "filters every layer keeps"),
    "--repr-criterion": ("repr.criterion", "filter ranking criterion (repr_jax.criteria)"),
    "--repr-reinit": ("repr.reinit", "orthogonal: dropped filters come back orthogonal to the rest (the paper's); official: the official code's QR of the current kernel; random: drawn "
                                     "from the layer's initialiser, or zero (left for training to regrow; a "
                                     "conv without BatchNorm feeding a ReLU cannot: ReLU'(0) = 0)"),
    "--repr-criterion-batches": ("repr.criterion_batches", "batches (of --batch-size training images, fixed per "
                                                           "seed) that a data-driven criterion scores on"),
}
SWITCHES = {  # store_true flags → key set to true
    "--nesterov": ("optim.nesterov", "Nesterov momentum"),
    "--batch-norm": ("model.batch_norm", "convnet: BatchNorm after each conv"),
    "--repr-per-layer": ("repr.per_layer", "rank within each layer, not globally"),
    "--repr-exclude-first": ("repr.exclude_first", "never prune the first conv"),
}


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` after a flag's help, except where there is no default (None, False)
    or the help text already names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def fail(err: BaseException, code: int = 2) -> int:
    """Print ``error: <one line>`` to stderr and return ``code`` (the CLI's exit status)."""
    print("error: " + one_line(err), file=sys.stderr)
    return code


def _defaults() -> dict:
    from repr_jax.config import RunConfig, flatten
    d = flatten(RunConfig(out="").to_dict())
    from repr_jax.methods.base import get_method
    for name in ("repr",):
        d.update({f"{name}.{k}": v for k, v in flatten(get_method(name).config_class().to_dict()).items()})
    return d


def build_parser(description: str) -> argparse.ArgumentParser:
    from repr_jax.config import settings_help
    from repr_jax.criteria import CRITERIA
    from repr_jax.methods.base import get_method, method_names
    from repr_jax.protocols import PROTOCOLS
    defaults = _defaults()
    methods = "; ".join(f"{n}: {get_method(n).summary}" for n in method_names())
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every setting, as --set KEY=VALUE (type, default: meaning); a method's settings "
               "are prefixed by its name:\n" + settings_help())
    g = p.add_argument_group("run")
    g.add_argument("--method", default=None, help=f"training method (default standard): {methods}")
    g.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS),
                   help="start from every setting of the paper's, the official code's or the PyTorch "
                        "reimplementation's runs (repr_jax.protocols; docs/methods.md 'Protocols'); flags and "
                        "--set apply on top")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set any setting, e.g. --set repr.s1=20 --set optim.lr=0.01 (repeatable; "
                        "applied last; the keys are listed below)")
    g.add_argument("--config", default=None, metavar="FILE.json",
                   help="settings file: the nested layout of a run's config.json (or that file)")
    g.add_argument("--out", default=None, help="run directory (default: runs/<model>-<method>-<time>)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (same settings)")
    g.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    g.add_argument("--trust-model", action="store_true",
                   help="import the model code (FILE.py:FACTORY) a run directory names on --resume, or a teacher's "
                        "/ init_from run's, without naming it again with --model")
    mp = p.add_argument_group("processes (one run over several processes/hosts, data parallel; with --devices 0; "
                              "docs/cli.md 'Seeds and devices')")
    mp.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                    help="process 0's address, the same in every process (jax.distributed)")
    mp.add_argument("--num-processes", type=int, default=None, metavar="N", help="processes in the run")
    mp.add_argument("--process-id", type=int, default=None, metavar="I",
                    help="this process's index, 0..N-1 (0 writes the run directory)")
    groups = {"": g, "optim": p.add_argument_group("optimiser (aliases of --set optim.*)"),
              "model": p.add_argument_group("model (aliases of --set model.*)"),
              "data": p.add_argument_group("data (aliases of --set data.*)"),
              "repr": p.add_argument_group("RePr, --method repr (aliases of --set repr.*)")}
    for flag, (key, text) in ALIASES.items():
        group = groups.get(key.split(".")[0] if "." in key else "", g)
        extra = ""
        if flag == "--repr-criterion":
            extra = ": " + "; ".join(f"{c.name}: {c.summary}" for c in CRITERIA.values())
        default = defaults.get(key)
        kwargs = {"nargs": "*"} if flag == "--step-epochs" else {}
        group.add_argument(flag, dest=key, default=None, metavar=key.split(".")[-1].upper(), **kwargs,
                           help=f"{text}{extra} [--set {key}" + ("]" if "(default" in text else f"; default {default}]"))
    for flag, (key, text) in SWITCHES.items():
        group = groups.get(key.split(".")[0], g)
        group.add_argument(flag, dest=key, action="store_const", const="true", default=None,
                           help=f"{text} [--set {key}=true]")
    return p


def start_processes_from_args(args: argparse.Namespace) -> None:
    """Join the multi-process run ``--coordinator``/``--num-processes``/``--process-id`` name
    (all three, or none: a run of one process); ``RunError`` with one line otherwise."""
    from repr_jax.errors import RunError
    given = [args.coordinator is not None, args.num_processes is not None, args.process_id is not None]
    if not any(given):
        return
    if not all(given):
        raise RunError("--coordinator, --num-processes and --process-id go together (a multi-process run)")
    if args.out is None:
        raise RunError("a multi-process run needs --out (the same in every process)")
    host, _, port = args.coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise RunError(f"--coordinator must be HOST:PORT, got {args.coordinator!r}")
    if not 1 <= int(port) <= 65535:
        raise RunError(f"--coordinator port must be in 1..65535, got {port}")
    if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
        raise RunError(f"--process-id must be in 0..{args.num_processes - 1} and --num-processes >= 1, got "
                       f"{args.process_id} of {args.num_processes}")
    from repr_jax.parallel import start_processes
    start_processes(args.coordinator, args.num_processes, args.process_id)


def _saved_config(out: Path) -> bool:
    """Whether ``out`` holds a run's readable ``config.json`` (else the run-directory checks
    name the problem)."""
    import json
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(saved, dict) and isinstance(saved.get("config"), dict)


def config_from_args(args: argparse.Namespace):
    """The :class:`~repr_jax.config.RunConfig` the parsed flags describe (``RunError`` if bad)."""
    from repr_jax.config import (RunConfig, apply_overrides, default_learning_rate,
                                 load_config_file)
    from repr_jax.errors import RunError
    explicit: set = set()
    settings_file = args.config
    if settings_file is None and args.resume and args.out and _saved_config(Path(args.out)):
        settings_file = Path(args.out) / "config.json"   # --out RUN --resume: the run's own settings
    base = load_config_file(settings_file) if settings_file else {}
    if settings_file:
        from repr_jax.config import flatten
        base = {k: v for k, v in base.items() if k not in ("out", "resume", "quiet")}
        explicit |= set(flatten(base))
    if args.method is not None:
        base = apply_overrides(base, [f"method={args.method}"])
    method = base.get("method", {}).get("name", "standard")
    if getattr(args, "protocol", None):
        from repr_jax.protocols import protocol_overrides
        base = apply_overrides(base, protocol_overrides(args.protocol, method) + [f"protocol={args.protocol}"],
                               explicit=explicit)
    aliases = []
    ignored = []
    for key in [*ALIASES.values(), *SWITCHES.values()]:
        key = key[0]
        value = getattr(args, key, None)
        if value is None:
            continue
        if key.startswith("repr.") and method != "repr":
            ignored.append(key)
            continue
        aliases.append(f"{key}={','.join(value) if isinstance(value, list) else value}")
    if ignored:
        print(f"warning: {', '.join(ignored)} ignored: they are RePr settings and --method is {method}",
              file=sys.stderr)
    d = apply_overrides(base, aliases + list(args.overrides), explicit=explicit)
    if not {"optim.learning_rate", "optim.lr", "lr"} & explicit:
        d.setdefault("optim", {})["learning_rate"] = default_learning_rate(
            d.get("optim", {}).get("optimizer", "sgd"), d.get("model", {}).get("name", "convnet"))
    model, name = d.get("model", {}).get("name", "convnet"), d["method"]["name"]
    from repr_jax.models.user import canonical, check_trusted, is_reference, trust
    named = next((o.partition("=")[2] for o in reversed(args.overrides) if o.split("=")[0].strip() == "model.name"),
                 getattr(args, "model.name", None))
    trust(named if named and is_reference(named) else None, everything=getattr(args, "trust_model", False))
    if is_reference(str(model)):   # the user's FILE.py:FACTORY, recorded with an absolute path
        d["model"]["name"] = canonical(model)
        try:   # named in a settings file (a run's config.json on --resume) and not on the command line
            check_trusted(d["model"]["name"], settings_file or "the settings", None)
        except ValueError as err:
            raise RunError(str(err)) from None
        model = model.rpartition(":")[2]
    d["out"] = args.out or d.get("out") or f"runs/{model}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    d["resume"], d["quiet"] = args.resume, args.quiet
    return RunConfig.from_dict(d)


__all__ = ["ALIASES", "DefaultsHelpFormatter", "SWITCHES", "build_parser", "config_from_args", "fail", "one_line",
           "start_processes_from_args"]
