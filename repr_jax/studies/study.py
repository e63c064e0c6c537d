"""The RePr protocol study: rows of runs under the paper's and the official protocol, and
the report (mean ± std over seeds of the final and best test accuracy, Welch's t-test of
each row against Standard of the same group, Fig. 1-style curves, filters dropped per layer).

A row is a group (the protocol it runs under), a name and the command-line arguments of
``experiments/cifar.py`` on top of the group's base arguments; every (row, seed) is one run
directory ``<group>-<row>-seed<k>`` under ``<out>/runs/``. :func:`study_rows` lists the rows
of a scale: ``gpu`` is the full study of the reproduction issue, ``cpu`` its CPU-scale
version (10k training images, official protocol shortened), ``regime`` the study of RePr in
the regimes where it is claimed to work (all of CIFAR-10): the PyTorch reimplementation's
protocol (``--protocol reimpl``), the calibration of the paper preset's model (Standard on
every pooled C³ variant) and the calibrated paper regime.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from repr_jax.studies.ablation import PAPER_TABLE
from repr_jax.report import fmt, stats, welch
from repr_jax.run_dir import read_jsonl, read_summary

# The paper's / thesis's test accuracies (%): C³(32) ranking table, ResNet-20 (error 8.4 → 6.9).
# siahuat0727/RePr's README, without augmentation, lr 0.003: best-epoch test accuracy.
PAPER_NUMBERS = {"paper": PAPER_TABLE, "official": {"standard": 72.1, "repr-official": 76.4},
                 "cpu-official": {}, "earlier": {}, "resnet20": {"standard": 91.6, "ortho": 93.1},
                 "reimpl": {"standard": 64.86, "ortho": 69.05}, "calibration": {},
                 "paper-cal": {"standard": 72.1, "ortho": 76.4}}


@dataclasses.dataclass(frozen=True)
class StudyRow:
    group: str                  # paper, official, earlier, resnet20, cpu-official
    name: str                   # standard, ortho, …
    args: tuple[str, ...]       # experiments/cifar.py arguments on top of the group's base
    seeds: tuple[int, ...]
    note: str = ""

    def run_name(self, seed: int) -> str:
        return f"{self.group}-{self.name}-seed{seed}"


REPR = ("--method", "repr")
GROUP_BASE = {
    "paper": ("--protocol", "paper"),
    "official": ("--protocol", "official"),
    # the regime of the committed ablation: augmentation, cosine lr 0.002, momentum 0.9, wd 5e-4
    "earlier": ("--model", "convnet", "--epochs", "100"),
    # thesis Table: 150 epochs, S1=20, S2=10, N=3, p=30 %; the rest is our choice (He et al. 2016)
    "resnet20": ("--model", "resnet20", "--epochs", "150", "--lr", "0.1", "--schedule", "step",
                 "--step-epochs", "75", "112", "--weight-decay", "1e-4", "--set", "data.holdout=5000"),
    "cpu-official": ("--protocol", "official", "--train-limit", "10000", "--test-limit", "5000",
                     "--epochs", "12"),
    "reimpl": ("--protocol", "reimpl"),
    "calibration": ("--protocol", "paper"),
    "paper-cal": ("--protocol", "paper"),
}
CALIBRATED = ("official", "pool2", "vanilla_pool", "vanilla")   # C³ variants calibrated (Standard)
CPU_REPR = ("--set", "repr.s1=3", "--set", "repr.s2=2", "--set", "repr.iterations=2")


def study_rows(scale: str) -> list[StudyRow]:
    """The rows of the ``gpu`` (full), ``cpu`` or ``regime`` study."""
    if scale == "regime":
        s3, zero = (0, 1, 2), ("--set", "repr.outgoing=zero")
        return [StudyRow("reimpl", "standard", (), s3),
                StudyRow("reimpl", "ortho", REPR, s3, "its code without --zero_init: outgoing weights kept"),
                StudyRow("reimpl", "ortho-zero", REPR + zero, s3, "--zero_init: outgoing weights zeroed"),
                *[StudyRow("calibration", v, ("--set", f"model.variant={v}"), (0,), "Standard, paper optimiser")
                  for v in CALIBRATED],
                StudyRow("paper-cal", "standard", (), s3),
                StudyRow("paper-cal", "ortho", REPR, s3)]
    if scale == "cpu":
        s3 = (0, 1, 2)
        repr_ = REPR + CPU_REPR
        return [StudyRow("cpu-official", "standard", (), s3),
                StudyRow("cpu-official", "repr-official", repr_, s3, "official metric, QR re-init, freeze"),
                StudyRow("cpu-official", "repr-ortho", repr_ + ("--set", "repr.criterion=ortho"), s3,
                         "paper metric O_f"),
                StudyRow("cpu-official", "repr-taylor", repr_ + ("--set", "repr.criterion=taylor",
                                                                 "--set", "repr.criterion_batches=78"), s3,
                         "Taylor on the 5k held-out images"),
                StudyRow("cpu-official", "repr-random", repr_ + ("--set", "repr.criterion=random"), s3)]
    if scale != "gpu":
        raise ValueError(f"unknown scale {scale!r}; choose cpu, gpu or regime")
    s3, s5 = (0, 1, 2), (0, 1, 2, 3, 4)
    crit = lambda c: REPR + ("--set", f"repr.criterion={c}")
    rows = [StudyRow("paper", "standard", (), s5), StudyRow("paper", "ortho", REPR, s5)]
    rows += [StudyRow("paper", name, args, s3) for name, args in (
        ("ortho_official", crit("ortho_official")),
        ("ortho-per-layer", REPR + ("--repr-per-layer",)),
        ("ortho-exclude-first", REPR + ("--repr-exclude-first",)),
        ("weights", crit("weights")), ("taylor", crit("taylor")), ("oracle", crit("oracle")),
        ("random", crit("random")),
        ("ortho-random-reinit", REPR + ("--repr-reinit", "random")),
        ("ortho-zero-reinit", REPR + ("--repr-reinit", "zero")),
        ("ortho-outgoing-keep", REPR + ("--set", "repr.outgoing=keep")))]
    rows += [StudyRow("official", "standard", (), s3), StudyRow("official", "repr-official", REPR, s3)]
    rows += [StudyRow("earlier", "standard", (), s3),
             StudyRow("earlier", "ortho-per-layer", REPR + ("--repr-per-layer",), s3)]
    rows += [StudyRow("resnet20", "standard", (), s3), StudyRow("resnet20", "ortho", REPR, s3)]
    return rows


def run_arguments(row: StudyRow, seed: int, out: Path, data_dir: str | None) -> list[str]:
    """The full ``experiments/cifar.py`` argument list of one run."""
    args = [*GROUP_BASE[row.group], *row.args, "--seed", str(seed), "--out", str(out / "runs" / row.run_name(seed)),
            "--quiet"]
    return args + (["--data-dir", data_dir] if data_dir else [])


def population_arguments(row: StudyRow, out: Path, data_dir: str | None) -> list[str] | None:
    """Every seed of ``row`` as one ``--seeds K`` process (same run directories as
    :func:`run_arguments`), or None when its seeds are not consecutive."""
    seeds = sorted(row.seeds)
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        return None
    args = run_arguments(row, seeds[0], out, data_dir)
    at = args.index("--out")
    args[at + 1] = str(out / "runs" / row.run_name(seeds[0])).removesuffix(f"-seed{seeds[0]}")
    return args + ["--seeds", str(len(seeds))]


# ----------------------------------------------------------------------------- report
def collect(out: Path, rows: list[StudyRow]) -> dict:
    """Per row: the finished seeds' final/best test accuracy (%), their metrics and drops."""
    report = {"rows": []}
    for row in rows:
        finals, bests, curves, drops, events, missing = [], [], [], [], [], []
        for seed in row.seeds:
            run = out / "runs" / row.run_name(seed)
            summary = read_summary(run)
            if summary.get("status") != "completed":
                missing.append(seed)
                continue
            finals.append(100 * summary["final_test_accuracy"])
            bests.append(100 * summary["best_test_accuracy"])
            curves.append(read_jsonl(run / "metrics.jsonl"))
            events.append(read_jsonl(run / "pruning.jsonl"))
            drops.append([e for e in events[-1] if e["event"] == "drop"])
        report["rows"].append({"group": row.group, "row": row.name, "note": row.note, "args": list(row.args),
                               "final": stats(finals), "best": stats(bests), "missing_seeds": missing,
                               "_curves": curves, "_drops": drops, "_events": events})
    for r in report["rows"]:
        base = next((b for b in report["rows"] if b["group"] == r["group"] and b["row"] == "standard"), None)
        if base is not None and r is not base and r["final"]["n"] and base["final"]["n"]:
            r["vs_standard"] = {"delta": r["final"]["mean"] - base["final"]["mean"],
                                **welch(r["final"]["values"], base["final"]["values"])}
    return report


def markdown(report: dict, header: str) -> str:
    lines = [header, "", "| group | row | seeds | final test acc. (%) | best (%) | Δ final vs Standard | "
             "Welch p | paper |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        vs = r.get("vs_standard", {})
        delta = f"{vs['delta']:+.2f}" if vs else ""
        p = f"{vs['p']:.3f}" if vs.get("p") is not None else ""
        paper = PAPER_NUMBERS.get(r["group"], {}).get(r["row"], "")
        lines.append(f"| {r['group']} | {r['row']} | {r['final']['n']} | {fmt(r['final'])} | {fmt(r['best'])} | "
                     f"{delta} | {p} | {paper} |")
    return "\n".join(lines) + "\n"


def plot_study(report: dict, out: Path) -> list[str]:
    """Per group: Fig. 1-style train/test curves of Standard and the first RePr row (mean over
    seeds, band = min..max, sub-network epochs shaded), and the filters dropped per layer per
    round (mean over seeds) of every RePr row. Returns the files written."""
    from matplotlib.figure import Figure
    written = []
    for group in dict.fromkeys(r["group"] for r in report["rows"]):
        rows = [r for r in report["rows"] if r["group"] == group and r["_curves"]]
        if not rows:
            continue
        fig = Figure(figsize=(11, 4))
        axes = fig.subplots(1, 2, sharey=True)
        shown = [r for r in rows if r["row"] == "standard"] + [r for r in rows if r["row"] != "standard"][:3]
        for r in shown:
            n = min(len(c) for c in r["_curves"])
            epochs = np.arange(1, n + 1)
            for ax, key in zip(axes, ("train_accuracy", "test_accuracy")):
                v = 100 * np.array([[m[key] for m in c[:n]] for c in r["_curves"]])
                line, = ax.plot(epochs, v.mean(0), label=f"{r['row']} (n={len(v)})")
                ax.fill_between(epochs, v.min(0), v.max(0), color=line.get_color(), alpha=0.2)
            if r is next((x for x in shown if x["row"] != "standard"), None):
                for ax in axes:
                    for i, m in enumerate(r["_curves"][0][:n]):
                        if m.get("phase") == "sub":
                            ax.axvspan(i + 0.5, i + 1.5, color="grey", alpha=0.12, lw=0)
        if group in ("paper", "paper-cal", "calibration"):
            from repr_jax.studies.regime import FIG1
            for ax, key in zip(axes, ("train_accuracy", "test_accuracy")):
                pts = [(e, 100 * a) for k, e, a in FIG1 if k == key]
                ax.plot(*zip(*pts), "k*", ms=9, label="Fig. 1 (paper, Standard)")
        for ax, title in zip(axes, ("train", "test")):
            ax.set_title(f"{group}: {title} accuracy (sub-network epochs shaded)")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("accuracy (%)")
        axes[1].legend()
        fig.tight_layout()
        path = out / f"curves-{group}.png"
        fig.savefig(path, dpi=110)
        written.append(path.name)
        repr_rows = [r for r in rows if r["_drops"] and r["_drops"][0]]
        if repr_rows:
            fig = Figure(figsize=(1.5 + 1.2 * len(repr_rows), 3.8))
            ax = fig.subplots()
            layers = [l["layer"] for l in repr_rows[0]["_drops"][0][0]["layers"]]
            rounds = len(repr_rows[0]["_drops"][0])
            width = 0.8 / (len(repr_rows) * rounds)
            for i, r in enumerate(repr_rows):
                for k in range(rounds):
                    counts = np.mean([[l["dropped"] for l in d[k]["layers"]] for d in r["_drops"] if len(d) > k], 0)
                    x = np.arange(len(layers)) + (i * rounds + k) * width
                    ax.bar(x, counts, width, label=f"{r['row']} round {k + 1}")
            ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2, layers)
            ax.set_ylabel("filters dropped (mean over seeds)")
            ax.set_title(f"{group}: filters dropped per layer per round")
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = out / f"dropped-{group}.png"
            fig.savefig(path, dpi=110)
            written.append(path.name)
    return written


def write_report(report: dict, out: Path, header: str) -> None:
    """``study.json`` (without the per-epoch curves), ``study.md`` and the plots."""
    figures = plot_study(report, out)
    clean = {"rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in report["rows"]],
             "figures": figures, **{k: v for k, v in report.items() if k != "rows"}}
    (out / "study.json").write_text(json.dumps(clean, indent=1) + "\n")
    (out / "study.md").write_text(markdown(report, header))


__all__ = ["GROUP_BASE", "PAPER_NUMBERS", "StudyRow", "collect", "markdown", "plot_study", "run_arguments",
           "study_rows", "welch", "write_report"]
