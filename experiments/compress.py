"""Structured pruning end to end: the unpruned model, each method pruned → exported →
fine-tuned, and Scratch-E / Scratch-B of every exported architecture (``repr_jax.studies.compress_study``).

    python experiments/compress.py --scale cpu --data-dir DATA --out DIR           # ResNet-20, 10k images
    python experiments/compress.py --scale gpu-resnet56 --jobs 8 --data-dir DATA --out DIR
    python experiments/compress.py --scale gpu-vgg16 --jobs 8 --data-dir DATA --out DIR

Each run is one ``experiments/cifar.py`` process; a finished run is skipped and an
interrupted one resumed, so the command can be rerun until everything is done. Writes
``compress.json`` and ``compress.md`` (the table) into ``--out``; ``--report-only`` rebuilds
them from the finished runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from repr_jax.cli import DefaultsHelpFormatter, fail
from repr_jax.studies.compress_study import SCALES, collect, markdown, stages
from repr_jax.studies.study_runner import add_study_arguments, code_version, report_header, run_stages
from repr_jax.versions import machine


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--scale", choices=tuple(SCALES), default="cpu",
                   help="cpu: ResNet-20, 10k training / 2k test images, E=3 + F=2 epochs, seeds 0 1; "
                        "gpu-resnet56 / gpu-vgg16: full CIFAR-10, E=160 + F=40, the papers' settings")
    p.add_argument("--data-dir", default=None, help="local CIFAR-10 copy (directory or .tar.gz)")
    p.add_argument("--methods", nargs="+", default=None, help="only these methods")
    add_study_arguments(p, "compress")
    return p


def main(argv=None) -> int:
    import dataclasses
    args = build_parser().parse_args(argv)
    scale = SCALES[args.scale]
    if args.seeds:
        scale = dataclasses.replace(scale, seeds=tuple(args.seeds))
    unknown = sorted(set(args.methods or ()) - set(scale.methods))
    if unknown:
        return fail(ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(scale.methods)}"))
    out = Path(args.out or f"runs/compress-{args.scale}")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if not args.report_only:
        run_stages(stages(scale, out, args.data_dir, args.methods), args.jobs, out / "runs.log")
    report = collect(out, scale, args.methods)
    report.update(scale=args.scale, machine=machine(), study_minutes=(time.time() - started) / 60)
    (out / "compress.json").write_text(json.dumps(report, indent=2) + "\n")
    report["code_version"] = code_version()
    header = report_header(f"Structured pruning — {scale.model}, CIFAR-10 (JPEG copy), scale {args.scale}",
                           report["machine"], report["code_version"])
    (out / "compress.md").write_text(markdown(report, header))
    print((out / "compress.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
