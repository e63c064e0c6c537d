#!/usr/bin/env python
"""The RePr paper's ranking-criterion ablation on C^3(32), CIFAR-10, from one command.

Runs Standard training and RePr with every criterion of ``repr_jax.criteria`` (orthogonal
re-initialisation), plus the ``ortho`` criterion with random and zero re-initialisation,
on the same schedule and seeds; then scores every criterion on one trained network and
reports its Spearman rank correlation with ``oracle``. Writes into ``--out``:

  runs/<row>-seed<k>/   one ordinary run directory per row and seed (resumable)
  ablation.json         protocol, machine, per-run and per-row results, correlations
  ablation.md           our mean ± std next to the paper's number for each row
  ablation.png          bar chart of the same

``--scale cpu`` (default) is a protocol this 2-core CPU finishes in about 1.5 hours:
10,000 training images, 8 epochs (S1=2, S2=1, N=2), 2 seeds. ``--scale paper`` is the
paper's schedule (S1=20, S2=10, N=3, p=30 %, 100 epochs, full training set, 3 seeds) for
a GPU. Re-running the same command continues: finished runs are reused, unfinished ones
resumed from their checkpoints. ``--population`` trains each row's seeds as one ``--seeds K``
process (vmapped on an accelerator; same run directories; ``repr_jax.population``).

Example:
  python experiments/ablation.py --data-dir ../shared/datasets/cifar10-jpeg.tar.gz --out runs/ablation
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

from repr_jax._xla_flags import enable_cpu_fusion

enable_cpu_fusion()  # before JAX starts its backend; REPR_JAX_NO_YNN=1 opts out

from repr_jax.studies.ablation import (Row, ablation_rows, correlation_with_oracle, summarize,  # noqa: E402
                               write_report)
from repr_jax.cli import DefaultsHelpFormatter, fail  # noqa: E402
from repr_jax.config import DataConfig, ModelConfig, RunConfig, RunError  # noqa: E402
from repr_jax.data import DataError, load_cifar  # noqa: E402
from repr_jax.errors import Diverged  # noqa: E402
from repr_jax.experiment import run  # noqa: E402
from repr_jax.methods import method_config  # noqa: E402
from repr_jax.optim import OptimConfig  # noqa: E402

SCALES = {
    "cpu": dict(train_limit=10_000, epochs=8, s1=2, s2=1, iterations=2, seeds=(0, 1)),
    "paper": dict(train_limit=None, epochs=100, s1=20, s2=10, iterations=3, seeds=(0, 1, 2)),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--data-dir", default=None, help="local CIFAR-10 copy (directory or .tar.gz)")
    p.add_argument("--out", default=None, help="ablation directory (default: runs/ablation-<scale>)")
    p.add_argument("--scale", default="cpu", choices=list(SCALES),
                   help="cpu: 10k images, 8 epochs, S1=2/S2=1/N=2, 2 seeds; "
                        "paper: 50k images, 100 epochs, S1=20/S2=10/N=3, 3 seeds")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the scale's seeds")
    p.add_argument("--rows", nargs="+", default=None,
                   help="run only these rows (default all; see ablation.md for the names)")
    p.add_argument("--epochs", type=int, default=None, help="override the scale's epochs")
    p.add_argument("--s1", type=int, default=None)
    p.add_argument("--s2", type=int, default=None)
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--drop", type=float, default=0.3, help="fraction p dropped per round")
    p.add_argument("--per-layer", action="store_true", help="rank within each layer (default: global, the paper's)")
    p.add_argument("--train-limit", type=int, default=None, help="override the scale's training slice")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on a slice of the test set")
    p.add_argument("--width", type=int, default=32, help="filters per layer F of C^3(F)")
    p.add_argument("--batch-norm", action="store_true",
                   help="BatchNorm after each conv (adds the bn_gamma row; the paper's C^3 has none)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.002, help="SGD peak rate (cosine schedule)")
    p.add_argument("--criterion-batches", type=int, default=4,
                   help="batches a data-driven criterion (and the correlation) scores on")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs in parallel (processes; useful on a GPU, not on a 2-core CPU)")
    p.add_argument("--population", action="store_true",
                   help="each row's seeds as one --seeds K process (vmapped on an accelerator) instead of one run per seed")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the report from the finished runs already in --out")
    p.add_argument("--quiet", action="store_true", help="no per-run lines")
    return p


def run_config(args, row: Row, seed: int, out: Path, scale: dict) -> RunConfig:
    method = method_config("standard")
    if row.method == "repr":
        method = method_config(
            "repr", s1=scale["s1"], s2=scale["s2"], iterations=scale["iterations"],
            drop_fraction=args.drop, per_layer=args.per_layer, criterion=row.criterion or "ortho",
            reinit=row.reinit or "orthogonal", criterion_batches=args.criterion_batches)
    return RunConfig(
        out=str(out / "runs" / f"{row.id}-seed{seed}"), seed=seed, epochs=scale["epochs"],
        batch_size=args.batch_size,
        model=ModelConfig("convnet", width=args.width, batch_norm=args.batch_norm),
        data=DataConfig("cifar10", dir=args.data_dir, train_limit=scale["train_limit"],
                        test_limit=args.test_limit),
        optim=OptimConfig(optimizer="sgd", learning_rate=args.lr, schedule="cosine"),
        method=method, quiet=True, keep_checkpoints=1)


def _existing(config: RunConfig):
    """The finished run's summary (with the devices it trained on), or (None, resume?)."""
    path = Path(config.out)
    if (path / "summary.json").exists():
        summary = json.loads((path / "summary.json").read_text())
        versions = json.loads((path / "config.json").read_text()).get("versions", {})
        return {**summary, "devices": versions.get("devices", [])}, False
    return None, (path / "config.json").exists()


def _run_one(config: RunConfig, data=None) -> dict:
    summary, resume = _existing(config)
    if summary is None:
        try:
            run(dataclasses.replace(config, resume=resume), data=data)
        except Diverged as err:   # reported in the table, not fatal for the ablation
            print(f"warning: {config.out}: {err}", file=sys.stderr)
        summary, _ = _existing(config)
    return summary


def _init_worker(data_dir):
    global _WORKER_DATA  # each worker decodes (or reads the cache of) the data set once
    _WORKER_DATA = load_cifar("cifar10", data_dir)


def _run_in_worker(config: RunConfig) -> dict:
    return _run_one(config, _WORKER_DATA)


def _run_row(configs: list[RunConfig], data=None) -> list[dict]:
    """One row's seeds (consecutive, in order) as one population; each member's summary."""
    first = configs[0]
    if not any(_existing(c)[0] is None for c in configs):
        return [_existing(c)[0] for c in configs]
    population = dataclasses.replace(first, out=first.out.removesuffix(f"-seed{first.seed}"), seeds=len(configs),
                                     resume=any(Path(c.out, "config.json").exists() for c in configs))
    try:
        run(population, data=data)
    except Diverged as err:   # reported in the table, not fatal for the ablation
        print(f"warning: {population.out}: {err}", file=sys.stderr)
    return [_existing(c)[0] for c in configs]


def _run_row_in_worker(configs: list[RunConfig]) -> list[dict]:
    return _run_row(configs, _WORKER_DATA)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    scale = dict(SCALES[args.scale])
    for key in ("epochs", "s1", "s2", "iterations", "train_limit"):
        if getattr(args, key) is not None:
            scale[key] = getattr(args, key)
    seeds = tuple(args.seeds) if args.seeds else scale["seeds"]
    out = Path(args.out or f"runs/ablation-{args.scale}")
    try:
        rows = ablation_rows(batch_norm=args.batch_norm, only=args.rows)
        if args.jobs < 1:
            raise RunError(f"--jobs must be >= 1, got {args.jobs}")
        configs = [(row, seed, run_config(args, row, seed, out, scale)) for row in rows for seed in seeds]
        for _, _, cfg in configs:
            cfg.validate()
        data = load_cifar("cifar10", args.data_dir)   # fails early, fills the decode cache
    except (RunError, DataError, ValueError) as err:
        return fail(err)
    out.mkdir(parents=True, exist_ok=True)
    protocol = {"scale": args.scale, "model": f"C^3({args.width})", "batch_norm": args.batch_norm,
                "data_source": data.source, **scale, "seeds": list(seeds), "drop_fraction": args.drop, "ranking": "per-layer" if args.per_layer else "global",
                "lr": args.lr, "batch_size": args.batch_size,
                "criterion_batches": args.criterion_batches, "jobs": args.jobs}
    print(f"ablation: {len(configs)} runs ({len(rows)} rows × {len(seeds)} seeds) into {out}", flush=True)

    started = time.perf_counter()
    results = {}
    try:
        if args.report_only:
            for row, seed, cfg in configs:
                summary, _ = _existing(cfg)
                if summary is not None:
                    results[(row.id, seed)] = summary
        elif args.population:
            if list(seeds) != list(range(seeds[0], seeds[0] + len(seeds))):
                raise RunError(f"--population needs consecutive seeds, got {' '.join(map(str, seeds))}")
            by_row = [(row, [cfg for r, _, cfg in configs if r is row]) for row in rows]

            def record(row, summaries):
                for seed, summary in zip(seeds, summaries):
                    results[(row.id, seed)] = summary
                    _progress(row, seed, summary, started, args.quiet)

            if args.jobs == 1:
                for row, cfgs in by_row:
                    record(row, _run_row(cfgs, data))
            else:
                os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
                with futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_worker, initargs=(args.data_dir,)) as pool:
                    pending = {pool.submit(_run_row_in_worker, cfgs): row for row, cfgs in by_row}
                    for fut in futures.as_completed(pending):
                        record(pending[fut], fut.result())
        elif args.jobs == 1:
            for row, seed, cfg in configs:
                results[(row.id, seed)] = _run_one(cfg, data)
                _progress(row, seed, results[(row.id, seed)], started, args.quiet)
        else:
            # Each worker takes only the GPU memory it uses (preallocating a fraction per
            # process ran 13 workers out of memory on an 80 GB H100).
            os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
            ctx = multiprocessing.get_context("spawn")
            with futures.ProcessPoolExecutor(args.jobs, mp_context=ctx, initializer=_init_worker,
                                             initargs=(args.data_dir,)) as pool:
                pending = {pool.submit(_run_in_worker, cfg): (row, seed) for row, seed, cfg in configs}
                for fut in futures.as_completed(pending):
                    row, seed = pending[fut]
                    results[(row.id, seed)] = fut.result()
                    _progress(row, seed, results[(row.id, seed)], started, args.quiet)
    except (RunError, DataError) as err:
        return fail(err)

    correlation = correlation_with_oracle(out / "runs" / f"standard-seed{seeds[0]}", data,
                                          args.criterion_batches)
    report = summarize(rows, seeds, results, protocol, correlation,
                       wall_seconds=time.perf_counter() - started)
    write_report(report, out)
    print((out / "ablation.md").read_text())
    return 0


def _progress(row: Row, seed: int, summary: dict, started: float, quiet: bool) -> None:
    if not quiet and summary.get("status") == "diverged":
        print(f"[{time.perf_counter() - started:7.0f} s] {row.id:>24s} seed {seed}: diverged at epoch "
              f"{summary['diverged_epoch']}", flush=True)
    elif not quiet:
        print(f"[{time.perf_counter() - started:7.0f} s] {row.id:>24s} seed {seed}: final "
              f"{100 * summary['final_test_accuracy']:.2f} % (best {100 * summary['best_test_accuracy']:.2f} %)",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())

