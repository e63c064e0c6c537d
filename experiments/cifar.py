#!/usr/bin/env python
"""Train a conv net on CIFAR with standard training or RePr; writes a run directory.

Examples:
  python experiments/cifar.py --model convnet --epochs 10 --data-dir ../shared/datasets/cifar10-jpeg.tar.gz
  python experiments/cifar.py --method repr --repr-s1 20 --repr-s2 10 --repr-iterations 3 \\
      --repr-drop 0.3 --epochs 100 --out runs/c3-repr
  python experiments/cifar.py --method repr --repr-criterion taylor --repr-reinit random ...
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repr_jax._xla_flags import enable_cpu_fusion  # noqa: E402

enable_cpu_fusion()  # before JAX starts its backend; REPR_JAX_NO_YNN=1 opts out

from repr_jax.criteria import CRITERIA  # noqa: E402
from repr_jax.data import DataError  # noqa: E402
from repr_jax.experiment import RunConfig, RunError, run  # noqa: E402
from repr_jax.methods import REINITS, ReprConfig  # noqa: E402
from repr_jax.models import MODELS  # noqa: E402
from repr_jax.train import OptimConfig  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train a CIFAR conv net with standard training or RePr (Prakash et al. 2019).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--model", default="convnet", help=f"architecture: {', '.join(MODELS)}")
    g.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    g.add_argument("--data-dir", default=None,
                   help="local CIFAR copy: directory or .tar.gz in any standard layout "
                        "(default: $REPR_JAX_DATA_DIR, else TFDS/official download)")
    g.add_argument("--method", default="standard", help="training method: standard or repr")
    g.add_argument("--epochs", type=int, default=100, help="total training epochs")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--seed", type=int, default=0, help="seed for init, shuffling and augmentation")
    g.add_argument("--out", default=None, help="run directory (default: runs/<model>-<method>-<time>)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (same settings)")
    g.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    g.add_argument("--keep-checkpoints", type=int, default=3, help="latest checkpoints kept (+ the best)")
    g.add_argument("--val-split", type=int, default=0,
                   help="hold out the last N training images and evaluate on them instead of test")
    g.add_argument("--train-limit", type=int, default=None, help="train on a fixed random slice of N images")
    g.add_argument("--test-limit", type=int, default=None, help="evaluate on a fixed random slice of N images")
    g.add_argument("--eval-batch-size", type=int, default=500)

    g = p.add_argument_group("optimiser")
    g.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    g.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 1e-3 for adam; for sgd 0.002 for convnet, whose "
                        "32·32·F-input dense layer diverged at 0.01-0.05, and 0.1 otherwise)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--nesterov", action="store_true")
    g.add_argument("--weight-decay", type=float, default=5e-4, help="L2 on conv/dense kernels")
    g.add_argument("--schedule", default="cosine", choices=["constant", "cosine", "step"])
    g.add_argument("--warmup-epochs", type=int, default=0)
    g.add_argument("--step-epochs", type=int, nargs="*", default=[],
                   help="epochs at which the 'step' schedule multiplies the rate by --step-factor")
    g.add_argument("--step-factor", type=float, default=0.1)

    g = p.add_argument_group("convnet (C^n(F))")
    g.add_argument("--depth", type=int, default=3, help="number of conv layers n")
    g.add_argument("--width", type=int, default=32, help="filters per layer F")
    g.add_argument("--batch-norm", action="store_true", help="BatchNorm after each conv")
    g.add_argument("--convnet-variant", default="paper", choices=["paper", "official"],
                   help="paper: 3x3 convs; official: 5x5 convs each followed by 2x2 max-pool")

    g = p.add_argument_group("RePr (--method repr)")
    g.add_argument("--repr-s1", type=int, default=20, help="full-network epochs per round (S1)")
    g.add_argument("--repr-s2", type=int, default=10, help="sub-network epochs per round (S2)")
    g.add_argument("--repr-iterations", type=int, default=3, help="number of rounds (N)")
    g.add_argument("--repr-drop", type=float, default=0.3, help="fraction p of live filters dropped")
    g.add_argument("--repr-per-layer", action="store_true", help="rank within each layer, not globally")
    g.add_argument("--repr-exclude-first", action="store_true", help="never prune the first conv")
    g.add_argument("--repr-min-keep", type=int, default=1, help="filters every layer keeps")
    g.add_argument("--repr-criterion", default="ortho", choices=list(CRITERIA),
                   help="filter ranking criterion (repr_jax.criteria): " + "; ".join(
                       f"{c.name}: {c.summary}" for c in CRITERIA.values()))
    g.add_argument("--repr-reinit", default="orthogonal", choices=list(REINITS),
                   help="dropped filters come back orthogonal to the rest (the paper's), drawn "
                        "from the layer's initialiser, or zero (left for training to regrow; a "
                        "conv without BatchNorm feeding a ReLU cannot: ReLU'(0) = 0)")
    g.add_argument("--repr-criterion-batches", type=int, default=4,
                   help="batches (of --batch-size training images, fixed per seed) that a "
                        "data-driven criterion scores on")
    g.add_argument("--ortho-loss", type=float, default=0.0,
                   help="weight λ of the orthogonality penalty λ·Σ_layers Σ_f O_f (any method)")
    return p


def default_learning_rate(args: argparse.Namespace) -> float:
    if args.optimizer == "adam":
        return 1e-3
    return 0.002 if args.model == "convnet" else 0.1


def config_from_args(args: argparse.Namespace) -> RunConfig:
    out = args.out or f"runs/{args.model}-{args.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    return RunConfig(
        out=out, model=args.model, dataset=args.dataset, data_dir=args.data_dir,
        method=args.method, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
        optim=OptimConfig(optimizer=args.optimizer, momentum=args.momentum,
                          learning_rate=args.lr if args.lr is not None else default_learning_rate(args),
                          nesterov=args.nesterov, weight_decay=args.weight_decay,
                          schedule=args.schedule, warmup_epochs=args.warmup_epochs,
                          step_epochs=tuple(args.step_epochs), step_factor=args.step_factor),
        repr=ReprConfig(s1=args.repr_s1, s2=args.repr_s2, iterations=args.repr_iterations,
                        drop_fraction=args.repr_drop, per_layer=args.repr_per_layer,
                        exclude_first=args.repr_exclude_first, min_keep=args.repr_min_keep,
                        criterion=args.repr_criterion, reinit=args.repr_reinit,
                        criterion_batches=args.repr_criterion_batches),
        ortho_loss=args.ortho_loss, convnet_depth=args.depth, convnet_width=args.width,
        convnet_batch_norm=args.batch_norm, convnet_variant=args.convnet_variant,
        val_split=args.val_split, train_limit=args.train_limit, test_limit=args.test_limit,
        eval_batch_size=args.eval_batch_size, keep_checkpoints=args.keep_checkpoints,
        resume=args.resume, quiet=args.quiet)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        summary = run(config)
    except (RunError, DataError) as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)  # one line
        return 2
    print(json.dumps(summary, indent=2))
    print(f"run directory: {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
