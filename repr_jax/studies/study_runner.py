"""Running a study's ``experiments/cifar.py`` processes: skip finished runs, resume interrupted
ones, several at once, stage by stage (a later stage may read an earlier one's results)."""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CIFAR = Path(__file__).resolve().parents[2] / "experiments" / "cifar.py"


def completed_summary(run_dir: Path) -> dict | None:
    """A run's ``summary.json`` when the run has completed, else None."""
    f = Path(run_dir) / "summary.json"
    if not f.exists():
        return None
    summary = json.loads(f.read_text())
    return summary if summary.get("status") == "completed" else None


def completed(run_dir: Path) -> bool:
    return completed_summary(run_dir) is not None


def run_cli(arguments: list[str], log: Path) -> int:
    """One training process (its output appended to ``log``); 0 at once when the run has
    completed, ``--resume`` when it exists."""
    out = Path(arguments[arguments.index("--out") + 1])
    if completed(out):
        return 0
    resume = ["--resume"] if (out / "config.json").exists() else []
    with open(log, "a") as f:
        return subprocess.call([sys.executable, str(CIFAR), *arguments, *resume, "--quiet"],
                               stdout=f, stderr=subprocess.STDOUT)


def run_stages(stages, jobs: int, log: Path) -> list[str]:
    """Run each stage's argument lists (``stages``: lists of callables returning arguments or
    None for a run that cannot start yet), ``jobs`` processes at a time; returns the run
    directories whose process failed (also printed)."""
    failed = []
    for stage in stages:
        todo = [a for a in (build() for build in stage) if a is not None]
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            codes = list(pool.map(lambda a: run_cli(a, log), todo))
        for a, code in zip(todo, codes):
            if code:
                run = a[a.index("--out") + 1]
                failed.append(run)
                print(f"run {run} exited {code} (see {log})", file=sys.stderr)
    return failed


def code_version() -> str:
    """The checkout's short commit ("unknown" outside git)."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"


def report_header(title: str, machine: dict, commit: str, extra: str = "") -> str:
    """A study report's first lines: its title, the machine and the code version."""
    return (f"# {title}\n\nMachine: {machine['cpu']}, {machine['cores']} cores, JAX {machine.get('jax', '')} "
            f"on {machine['jax_backend']}; code {commit}.{' ' + extra if extra else ''}")


def add_study_arguments(parser, name: str) -> None:
    """The options every study driver shares: ``--out`` (default ``runs/<name>-<scale>``),
    ``--seeds``, ``--jobs``, ``--report-only``."""
    parser.add_argument("--out", default=None, help=f"study directory (default: runs/{name}-<scale>)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="override the scale's seeds")
    parser.add_argument("--jobs", type=int, default=1, help="processes in parallel")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report")


def write_report(out: Path, stem: str, report: dict, scale: str, started: float, title: str, rows: str,
                 markdown) -> None:
    """``out/<stem>.json`` (``report`` with the scale, machine, code version and study minutes)
    and ``out/<stem>.md`` (``markdown(report, header)``, printed too)."""
    import time
    from repr_jax.versions import machine
    m = machine()
    report.update(scale=scale, machine=m, code_version=code_version(), study_minutes=(time.time() - started) / 60)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    header = report_header(f"{title}, scale {scale}", m, report["code_version"], f"Rows and settings: `{rows}`.")
    (out / f"{stem}.md").write_text(markdown(report, header))
    print((out / f"{stem}.md").read_text())


__all__ = ["CIFAR", "add_study_arguments", "write_report", "code_version", "completed", "completed_summary", "report_header", "run_cli", "run_stages"]
