"""The RePr reproduction study under the paper's and the official code's protocols.

    python experiments/protocol_study.py --scale gpu --data-dir DATA --out DIR --jobs 6
    python experiments/protocol_study.py --scale cpu --data-dir DATA --out DIR

Each (row, seed) is one ``experiments/cifar.py`` process (rows: ``repr_jax.studies.study``), or with
``--population`` each row's seeds are one ``--seeds K`` process (vmapped on an accelerator,
one after another on a CPU; same run directories); a run already completed is skipped and an interrupted one resumed, so the
command can be rerun until everything is done. ``--report-only`` writes ``study.json``, ``study.md`` and the
figures from the finished runs.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from repr_jax.cli import DefaultsHelpFormatter, fail
from repr_jax.studies.regime import write_regime_sections
from repr_jax.studies.study import collect, population_arguments, run_arguments, study_rows, write_report
from repr_jax.versions import machine

CIFAR = Path(__file__).resolve().parent / "cifar.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--scale", choices=("cpu", "gpu", "regime"), default="cpu",
                   help="gpu: every row of the reproduction issue at the protocols' full length; "
                        "cpu: 10k training images, official protocol shortened to 12 epochs, 5 rows × 3 seeds; "
                        "regime: all of CIFAR-10 under --protocol reimpl (Standard, RePr with outgoing weights "
                        "kept / zeroed), the calibration of the paper preset's model, the calibrated paper regime")
    p.add_argument("--data-dir", default=None, help="local CIFAR-10 copy (directory or .tar.gz)")
    p.add_argument("--out", default=None, help="study directory (default: runs/protocol-study-<scale>)")
    p.add_argument("--rows", nargs="+", default=None, metavar="GROUP-ROW",
                   help="only these rows, e.g. paper-ortho official-standard")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="override every row's seeds")
    p.add_argument("--jobs", type=int, default=1, help="processes in parallel")
    p.add_argument("--population", action="store_true",
                   help="one --seeds K process per row (its seeds vmapped on an accelerator, one after another on a CPU) "
                        "instead of one per seed")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="BATCHES",
                   help="each run also checkpoints after every BATCHES-th batch of each epoch, so a stopped "
                        "study resumes at the next batch (cifar.py --checkpoint-every; 0: at epoch ends only; not with "
                        "--population)")
    p.add_argument("--report-only", action="store_true", help="train nothing; report the finished runs")
    p.add_argument("--calibration-extra", nargs="+", default=(), metavar="RUN",
                   help="regime scale: finished Standard runs of another study (e.g. the paper variant's) added "
                        "to the calibration table, one line per C³ variant")
    return p


def calibration_lines(runs) -> list[tuple[str, list, str]]:
    """``(variant, [curve per run], source)`` of finished runs, grouped by C³ variant."""
    from repr_jax.run_dir import read_config, read_jsonl, read_summary
    by: dict[str, tuple[list, list]] = {}
    for run in map(Path, runs):
        if read_summary(run).get("status") != "completed":
            continue
        variant = read_config(run).model.variant
        curves, names = by.setdefault(variant, ([], []))
        curves.append(read_jsonl(run / "metrics.jsonl"))
        names.append(f"{run.parent.parent.name}/{run.name}")
    return [(v, curves, ", ".join(names)) for v, (curves, names) in by.items()]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out or f"runs/protocol-study-{args.scale}")
    rows = study_rows(args.scale)
    if args.rows:
        unknown = set(args.rows) - {f"{r.group}-{r.name}" for r in rows}
        if unknown:
            return fail(ValueError(f"unknown row(s) {', '.join(sorted(unknown))}; choose from "
                                   f"{', '.join(f'{r.group}-{r.name}' for r in rows)}"))
        rows = [r for r in rows if f"{r.group}-{r.name}" in args.rows]
    if args.seeds:
        import dataclasses
        rows = [dataclasses.replace(r, seeds=tuple(args.seeds)) for r in rows]
    if args.jobs < 1:
        return fail(ValueError(f"--jobs must be >= 1, got {args.jobs}"))
    if args.checkpoint_every < 0:
        return fail(ValueError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}"))
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        todo, queued = [], set()
        for seed in sorted({s for r in rows for s in r.seeds}):   # seed-major: complete seeds first
            for row in rows:
                run = out / "runs" / row.run_name(seed)
                if seed not in row.seeds or (run / "summary.json").exists():
                    continue
                together = population_arguments(row, out, args.data_dir) if args.population else None
                if together is None:
                    resume = ["--resume"] if (run / "config.json").exists() else []
                    todo.append((row.run_name(seed), run_arguments(row, seed, out, args.data_dir) + resume))
                elif (row.group, row.name) not in queued:   # the row's first unfinished seed
                    queued.add((row.group, row.name))
                    runs = [out / "runs" / row.run_name(s) for s in row.seeds]
                    resume = ["--resume"] if any((r / "config.json").exists() for r in runs) else []
                    todo.append((f"{row.group}-{row.name}-seeds", together + resume))

        within = ["--checkpoint-every", str(args.checkpoint_every)] if args.checkpoint_every else []

        def one(item):
            name, cli = item
            cli = [*cli, *within]
            started = time.time()
            with open(out / "runs" / f"{name}.log", "w") as log:
                rc = subprocess.call([sys.executable, str(CIFAR), *cli], stdout=log, stderr=subprocess.STDOUT)
            print(f"{name}: exit {rc} after {time.time() - started:.0f} s", flush=True)
            return rc

        with ThreadPoolExecutor(args.jobs) as pool:
            codes = list(pool.map(one, todo))
        if any(codes):
            print(f"{sum(c != 0 for c in codes)} of {len(codes)} runs failed (see runs/*.log)", file=sys.stderr)
    m = machine()
    header = (f"# RePr protocol study ({args.scale} scale)\n\nMachine: {m['cpu']}, {m['cores']} cores, JAX "
              f"{m.get('jax')} on {m['jax_backend']} ({', '.join(m['devices'])}). Rows, arguments and "
              f"protocols: `repr_jax/studies/study.py`, `repr_jax/protocols.py`. Welch's t-test of each row's final "
              f"test accuracy against Standard of the same group (scipy.stats.ttest_ind, equal_var=False).")
    report = collect(out, rows)
    write_report(report, out, header)
    if args.scale == "regime":
        write_regime_sections(report, out, calibration_lines(args.calibration_extra))
    print(f"report: {out / 'study.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
