"""The weight-level study: Han et al. per-iteration compression and accuracy (with the CSR
storage report), DSD vs Standard vs RePr, DropConnect vs Dropout, and the knowledge
distillation rows (``repr_jax.studies.weight_study``).

    python experiments/weight_level.py --scale cpu --jobs 2 --data-dir DATA --out DIR   # 10k images, 2 seeds
    python experiments/weight_level.py --scale gpu --jobs 8 --data-dir DATA --out DIR   # full length, 3 seeds

Each run is one ``experiments/cifar.py`` process; finished runs are skipped and interrupted
ones resumed. Writes ``weight_level.json`` and ``weight_level.md`` into ``--out``;
``--report-only`` rebuilds them from the finished runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from repr_jax.cli import DefaultsHelpFormatter, fail
from repr_jax.studies.study_runner import add_study_arguments, run_stages, write_report
from repr_jax.studies.weight_study import SCALES, collect, markdown, stages


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--scale", choices=tuple(SCALES), default="cpu",
                   help="cpu: 10k training / 2k test images, a few epochs, seeds 0 1; gpu: full CIFAR-10, "
                        "full-length schedules, seeds 0 1 2")
    p.add_argument("--data-dir", default=None, help="local CIFAR-10 copy (directory or .tar.gz)")
    add_study_arguments(p, "weight-level")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        return fail(ValueError(f"--jobs must be >= 1, got {args.jobs}"))
    scale = SCALES[args.scale]
    if args.seeds:
        scale = dataclasses.replace(scale, seeds=tuple(args.seeds))
    out = Path(args.out or f"runs/weight-level-{args.scale}")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if not args.report_only:
        run_stages(stages(scale, out, args.data_dir), args.jobs, out / "runs.log")
    write_report(out, "weight_level", collect(out, scale), args.scale, started,
                 "Weight-level methods — CIFAR-10 (JPEG copy)", "repr_jax/studies/weight_study.py", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
