"""Tables and curves over run directories: ``python -m repr_jax.report RUN_DIR … [--compare A B]``.

Runs are grouped by their settings minus the seed (``config.json`` without ``seed``, ``seeds``,
``out`` and the bookkeeping fields; a path that names the seed, e.g. an ``init_from`` of
``base-seed3``, counts as ``base-seed{seed}``). A group is labelled by its directory name
without the ``-seed<N>`` suffix (made unique with the settings that tell groups apart when
two share a name). Per group: mean ± std over seeds (sample std, ddof = 1) of the final and
the best test accuracy, the epochs and the wall time; ``--compare A B`` adds Welch's t-test
(scipy.stats.ttest_ind, unequal variances) of A's final accuracies against B's. Writes
``report.md``, ``report.json`` and ``curves.png`` (test accuracy and training loss per epoch,
the mean over seeds with a min–max band; epochs a method marks as sub-network phases shaded)
into ``--out`` and prints the table. Runs that did not complete are listed, not averaged.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from repr_jax.config import RunConfig, as_trained, flatten, migrate
from repr_jax.run_dir import read_json, read_jsonl, read_summary

IGNORED = ("out", "seed", "seeds", "resume", "quiet", "keep_checkpoints", "devices", "checkpoint_every")


def stats(values) -> dict:
    """``{"n", "mean", "std", "values"}`` (std with ddof = 1; 0 for one value; ``{"n": 0}`` for none)."""
    v = np.asarray(values, float)
    if v.size == 0:
        return {"n": 0}
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "values": [float(x) for x in v]}


def welch(a, b) -> dict:
    """Welch's t-test (unequal variances) of ``a`` against ``b`` (scipy.stats.ttest_ind); ``{}``
    with fewer than two values on a side."""
    from scipy import stats as sps
    if len(a) < 2 or len(b) < 2:
        return {}
    t, p = sps.ttest_ind(a, b, equal_var=False)
    return {"t": float(t), "p": float(p)} if math.isfinite(t) else {"t": None, "p": None}


def fmt(s: dict, digits: int = 2) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}" if s.get("n") else "–"


def run_settings(config: dict) -> dict:
    """The flattened settings that make a run what it is (see the module docstring)."""
    seed = config.get("seed")
    flat = {k: v for k, v in flatten(config).items() if k not in IGNORED}
    pattern = re.compile(rf"seed{seed}(?!\d)") if seed is not None else None
    return {k: (pattern.sub("seed{seed}", v) if isinstance(v, str) and pattern else
                v if not isinstance(v, list) else tuple(v)) for k, v in flat.items()}


def _with_defaults(config: dict) -> dict:
    """Settings with every key today's repr-jax knows (a setting added after the run was
    written at the value it was trained with, :func:`repr_jax.config.as_trained`), so an old
    and a new run of equal settings group together; as saved when this version cannot read it."""
    try:
        return RunConfig.from_dict(as_trained(migrate(config))).to_dict()
    except ValueError:
        return config


def load_run(run_dir) -> dict:
    """One run directory: its settings, seed, summary and metrics (``ValueError`` if it is
    not a repr-jax run; a damaged file is named)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.exists():
        raise ValueError(f"{run_dir} holds no repr-jax run (no config.json)")
    saved = read_json(path, "repr-jax config")
    config = _with_defaults(saved.get("config", saved))
    return {"dir": str(run_dir), "name": run_dir.name, "seed": config.get("seed"),
            "settings": run_settings(config), "summary": read_summary(run_dir),
            "metrics": read_jsonl(run_dir / "metrics.jsonl")}


def _stem(name: str) -> str:
    return re.sub(r"-seed\d+$", "", name)


def _short(value, width: int = 40) -> str:
    text = str(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def group_runs(runs: list[dict], by: str = "settings") -> list[dict]:
    """Runs with equal settings together, in first-seen order: ``[{"label", "settings", "runs"}]``.
    A group's label is its runs' directory names without ``-seed<N>`` (joined with " = " when
    differently named runs have equal settings); groups that would share a label get the
    settings that tell them apart appended (and their seeds, if still alike). ``by="name"``
    groups by the directory name without ``-seed<N>`` instead (a study whose seeds differ in
    a seed-specific setting, e.g. each seed's own exported architecture)."""
    if by not in ("settings", "name"):
        raise ValueError(f"group by 'settings' or 'name', got {by!r}")
    groups: list[dict] = []
    for run in runs:
        key = (_stem(run["name"]) if by == "name" else
               json.dumps(run["settings"], sort_keys=True, default=str))
        group = next((g for g in groups if g["key"] == key), None)
        if group is None:
            groups.append(group := {"key": key, "settings": run["settings"], "runs": [], "stems": []})
        group["runs"].append(run)
        if _stem(run["name"]) not in group["stems"]:
            group["stems"].append(_stem(run["name"]))
    for g in groups:
        g["label"] = " = ".join(g["stems"])
    for g in groups:
        twins = [o for o in groups if o is not g and o["stems"] == g["stems"]]
        if twins:
            diff = sorted(k for k in set(g["settings"]) | {k for o in twins for k in o["settings"]}
                          if any(o["settings"].get(k) != g["settings"].get(k) for o in twins))
            g["suffix"] = " [" + ", ".join(f"{k}={_short(g['settings'].get(k))}" for k in diff[:3]) + "]"
    for g in groups:
        g["label"] += g.pop("suffix", "")
    labels = [g["label"] for g in groups]
    for g in groups:
        if labels.count(g["label"]) > 1:
            g["label"] += f" (seed {', '.join(str(r['seed']) for r in g['runs'])})"
    for g in groups:
        g.pop("key")
        g.pop("stems")
    return groups


def completed(run: dict) -> bool:
    """A finished run: ``status`` completed (summaries written before the field existed: a
    final accuracy and no status)."""
    summary = run["summary"]
    return summary.get("status") == "completed" or ("status" not in summary and "final_test_accuracy" in summary)


def summarize(group: dict) -> dict:
    """A group's row: completed seeds, final / best test accuracy (%), epochs, wall minutes."""
    done = [r for r in group["runs"] if completed(r)]
    return {"label": group["label"], "seeds": sorted(r["seed"] for r in done),
            "incomplete": sorted(r["dir"] for r in group["runs"] if r not in done),
            "final": stats([100 * r["summary"]["final_test_accuracy"] for r in done]),
            "best": stats([100 * r["summary"]["best_test_accuracy"] for r in done]),
            "epochs": sorted({r["summary"]["epochs"] for r in done}),
            "wall_minutes": stats([r["summary"]["wall_seconds"] / 60 for r in done])}


def markdown(rows: list[dict], comparison: dict | None = None, title: str = "Runs") -> str:
    lines = [f"# {title}", "", "Test accuracy (%): mean ± std over seeds of the final epoch, the best epoch as "
             "a second column.", "", "| group | seeds | final test acc. | best test acc. | epochs | wall (min) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['label']} | {len(r['seeds'])} | {fmt(r['final'])} | {fmt(r['best'])} | "
                     f"{', '.join(map(str, r['epochs'])) or '–'} | {fmt(r['wall_minutes'], 1)} |")
    incomplete = [d for r in rows for d in r["incomplete"]]
    if incomplete:
        lines += ["", "Not completed (left out): " + ", ".join(incomplete)]
    if comparison:
        c = comparison
        test = (f"Welch's t = {c['t']:.2f}, p = {c['p']:.3g}" if c.get("t") is not None
                else "Welch's t-test needs two seeds a side")
        lines += ["", f"{c['a']} vs {c['b']}: Δ final = {c['delta']:+.2f} points; {test}."]
    return "\n".join(lines) + "\n"


def compare(rows: list[dict], a: str, b: str) -> dict:
    by = {r["label"]: r for r in rows}
    missing = [x for x in (a, b) if x not in by]
    if missing:
        raise ValueError(f"no group named {', '.join(missing)}; groups: {', '.join(by)}")
    ra, rb = by[a]["final"], by[b]["final"]
    if not ra.get("n") or not rb.get("n"):
        raise ValueError(f"{a if not ra.get('n') else b} has no completed run")
    return {"a": a, "b": b, "delta": ra["mean"] - rb["mean"], **welch(ra["values"], rb["values"])}


def plot_curves(groups: list[dict], path) -> None:
    """Test accuracy and training loss per epoch: the mean over each group's completed seeds,
    a min–max band, sub-network epochs (phase ``sub``) of each group shaded in its colour."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(12, 4.5))
    acc_ax, loss_ax = fig.subplots(1, 2)
    for i, g in enumerate(groups):
        curves = [r["metrics"] for r in g["runs"] if completed(r) and r["metrics"]]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        epochs = [m["epoch"] for m in curves[0][:length]]
        color = f"C{i % 10}"
        for ax, key, scale in ((acc_ax, "test_accuracy", 100.0), (loss_ax, "train_loss", 1.0)):
            values = np.array([[scale * m[key] for m in c[:length]] for c in curves])
            ax.plot(epochs, values.mean(0), color=color, label=f"{_short(g['label'], 48)} ({len(curves)})")
            if len(curves) > 1:
                ax.fill_between(epochs, values.min(0), values.max(0), color=color, alpha=0.2, lw=0)
        for m in curves[0][:length]:
            if m.get("phase") == "sub":
                acc_ax.axvspan(m["epoch"] - 0.5, m["epoch"] + 0.5, color=color, alpha=0.07, lw=0)
    acc_ax.set_ylabel("test accuracy (%)")
    loss_ax.set_ylabel("training loss")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    acc_ax.legend(fontsize=7)
    acc_ax.set_title("mean over seeds, min–max band (shaded: sub-network epochs)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(run_dirs, out=None, compare_groups=None, title: str = "Runs", by: str = "settings") -> dict:
    """Group ``run_dirs`` (:func:`group_runs`), build the table (and the comparison), write
    ``out/`` when given."""
    runs = [load_run(d) for d in run_dirs]
    groups = group_runs(runs, by)
    rows = [summarize(g) for g in groups]
    comparison = compare(rows, *compare_groups) if compare_groups else None
    text = markdown(rows, comparison, title)
    result = {"rows": rows, "comparison": comparison, "markdown": text,
              "groups": [{"label": g["label"], "runs": [r["dir"] for r in g["runs"]],
                          "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in g["settings"].items()}}
                         for g in groups]}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(text)
        (out / "report.json").write_text(json.dumps({k: v for k, v in result.items() if k != "markdown"},
                                                    indent=2) + "\n")
        plot_curves(groups, out / "curves.png")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m repr_jax.report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (a directory holding runs: every run in it)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="Welch's t-test of group A against group B")
    p.add_argument("--out", default=None, help="write report.md, report.json and curves.png here")
    p.add_argument("--title", default="Runs", help="the table's heading")
    p.add_argument("--by", choices=("settings", "name"), default="settings",
                   help="group runs with equal settings minus the seed, or by directory name minus -seed<N>")
    args = p.parse_args(argv)
    dirs = []
    for d in map(Path, args.runs):
        if (d / "config.json").exists() or not d.is_dir():
            dirs.append(d)
        else:
            dirs += sorted(c for c in d.iterdir() if (c / "config.json").exists())
    try:
        if not dirs:
            raise ValueError(f"no run directory among {', '.join(args.runs)}")
        result = report(dirs, args.out, args.compare, args.title, args.by)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result["markdown"], end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["compare", "completed", "fmt", "group_runs", "load_run", "markdown", "plot_curves", "report", "run_settings",
           "stats", "summarize", "welch"]
