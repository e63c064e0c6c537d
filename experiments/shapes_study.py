"""The any-data study: Han et al. on LeNet-300-100 / LeNet-5, DropConnect vs Dropout on
LeNet-300-100, li-l1 / slimming on ResNet-18 and MobileNetV2 at 64×64 with export — on real
data of other shapes (``repr_jax.studies.shapes_study``).

    python experiments/derive_datasets.py --cifar ../shared/datasets/cifar10-jpeg.tar.gz --out .data/derived
    python experiments/shapes_study.py --scale cpu --jobs 2 --derived .data/derived --out DIR

``--derived`` holds ``cifar10-gray28.npz``, ``cifar10-64.npz`` and ``digits.npz``. Each run is
one ``experiments/cifar.py`` process; finished runs are skipped and interrupted ones resumed.
Writes ``shapes.json`` and ``shapes.md`` into ``--out``; ``--report-only`` rebuilds them.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from repr_jax.cli import DefaultsHelpFormatter, fail
from repr_jax.studies.shapes_study import SCALES, collect, markdown, stages
from repr_jax.studies.study_runner import add_study_arguments, run_stages, write_report

FILES = {"gray28": "cifar10-gray28.npz", "rgb64": "cifar10-64.npz", "digits": "digits.npz"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter)
    p.add_argument("--scale", choices=tuple(SCALES), default="cpu",
                   help="cpu: seeds 0 1, few epochs, 64x64 models on a slice; gpu: seeds 0 1 2, full length")
    p.add_argument("--derived", default=".data/derived",
                   help="folder of experiments/derive_datasets.py's outputs (" + ", ".join(FILES.values()) + ")")
    add_study_arguments(p, "shapes")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        return fail(ValueError(f"--jobs must be >= 1, got {args.jobs}"))
    data = {k: Path(args.derived) / v for k, v in FILES.items()}
    missing = [str(p) for p in data.values() if not p.is_file()]
    if missing and not args.report_only:
        return fail(ValueError(f"missing {', '.join(missing)}: run experiments/derive_datasets.py first"))
    scale = SCALES[args.scale]
    if args.seeds:
        scale = dataclasses.replace(scale, seeds=tuple(args.seeds))
    out = Path(args.out or f"runs/shapes-{args.scale}")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if not args.report_only:
        run_stages(stages(scale, out, data), args.jobs, out / "runs.log")
    write_report(out, "shapes", collect(out, scale), args.scale, started,
                 "Any data, any model — real data of other shapes", "repr_jax/studies/shapes_study.py", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
