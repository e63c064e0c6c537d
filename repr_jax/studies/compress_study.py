"""The structured-pruning table: each method pruned, exported and fine-tuned, beside the
unpruned model and the same small architectures trained from scratch (Liu et al. 2019,
"Rethinking the Value of Network Pruning").

Per model and seed s, as run directories under the study folder:
  ``base-seed<s>``            Standard training, E epochs — the unpruned row, and the trained
                              network li-l1 / trimming / channel-pruning start from
                              (``--set init_from``);
  ``<method>-seed<s>``        the method: prune at epoch 0 of the trained network (slimming:
                              E epochs of sparsity training from scratch first; jst: coarse
                              training and search from scratch in E epochs, its validation
                              split held out of the training images), fine-tune F epochs,
                              export (``<run>/export/``);
  ``<method>-scratch-e-seed<s>``  the exported architecture (``model.channels``) trained from
                              scratch for E epochs (Scratch-E: the large model's epochs);
  ``<method>-scratch-b-seed<s>``  the same for round(E · FLOPs_large / FLOPs_small) epochs
                              (Scratch-B: the large model's training compute). A method that
                              exported the same architecture as an earlier one for a seed shares
                              that one's scratch runs (same arguments; trained once).
Stages run in that order (a run needs its base, a scratch run its method's export); a
finished run is skipped and an interrupted one resumed, so the command can be rerun.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from repr_jax.report import stats
from repr_jax.studies.study_runner import completed_summary

ANCHORS = [   # printed beside ours (CIFAR-10, the papers' full-length runs)
    "Li et al. 2017, VGG-16-pruned-A: 6.60 % error at −34.2 % FLOPs (baseline 6.75 %)",
    "Li et al. 2017, ResNet-56-pruned-B: 6.94 % error at −27.6 % FLOPs (baseline 6.96 %)",
    "Liu et al. 2017 (Slimming), VGG-16 70 % channels: 6.20 % error at −88.5 % params (baseline 6.34 %)",
    "Fang et al. 2023 (Torch-Pruning / DepGraph), ResNet-56: 93.77 % accuracy at 2.13× FLOP reduction",
]


@dataclasses.dataclass(frozen=True)
class Scale:
    model: str
    epochs: int            # E: training of the large model (and Scratch-E)
    finetune: int          # F: fine-tune epochs after the prune
    finetune_lr: float
    seeds: tuple[int, ...]
    methods: dict          # method → its --set entries
    common: tuple[str, ...] = ()


CPU_COMMON = ("--train-limit", "10000", "--test-limit", "2000", "--batch-size", "128")
SCALES = {
    "cpu": Scale("resnet20", epochs=3, finetune=2, finetune_lr=0.02, seeds=(0, 1), common=CPU_COMMON, methods={
        "li-l1": ("li-l1.fraction=0.5",),
        "slimming": ("slimming.fraction=0.5", "slimming.l1=1e-4"),
        "trimming": ("trimming.fraction=0.25", "trimming.rounds=2", "trimming.retrain_epochs=1"),
        "channel-pruning": ("channel-pruning.fraction=0.5",),
        "jst": ("jst.coarse_epochs=1", "jst.search_steps=2", "jst.subnets=10", "jst.init_threshold=0.5",
                "data.holdout=1024")}),
    "gpu-resnet56": Scale("resnet56", epochs=160, finetune=40, finetune_lr=0.01, seeds=(0, 1), methods={
        "li-l1": ("li-l1.preset=resnet56-b",),
        "slimming": ("slimming.fraction=0.5", "slimming.l1=1e-4"),
        "trimming": ("trimming.fraction=0.125", "trimming.rounds=4", "trimming.retrain_epochs=10"),
        "channel-pruning": ("channel-pruning.fraction=0.5",),
        "jst": ("jst.coarse_epochs=100", "jst.search_steps=60", "jst.subnets=30", "jst.init_threshold=0.5",
                "data.holdout=5000")}),
    "gpu-vgg16": Scale("vgg16", epochs=160, finetune=40, finetune_lr=0.01, seeds=(0, 1), methods={
        "li-l1": ("li-l1.preset=vgg16-a",),
        "slimming": ("slimming.fraction=0.7", "slimming.l1=1e-4"),
        "trimming": ("trimming.fraction=0.125", "trimming.rounds=4", "trimming.retrain_epochs=10"),
        "channel-pruning": ("channel-pruning.fraction=0.5",),
        "jst": ("jst.coarse_epochs=100", "jst.search_steps=60", "jst.subnets=30", "jst.init_threshold=0.5",
                "data.holdout=5000")}),
}
FROM_SCRATCH = ("slimming", "jst")   # methods that train the large model themselves (E + F epochs)


def _sets(entries) -> list[str]:
    return [a for e in entries for a in ("--set", e)]


def base_arguments(scale: Scale, seed: int, out: Path, data_dir) -> list[str]:
    return ["--model", scale.model, "--epochs", str(scale.epochs), "--seed", str(seed),
            "--out", str(out / f"base-seed{seed}"), *scale.common, *(["--data-dir", data_dir] if data_dir else [])]


def method_arguments(scale: Scale, method: str, seed: int, out: Path, data_dir) -> list[str]:
    sets = list(scale.methods[method]) + [f"{method}.finetune_lr={scale.finetune_lr}"]
    if method == "slimming":   # its own sparsity training from scratch, then the prune
        epochs, sets = scale.epochs + scale.finetune, sets + [f"{method}.prune_epoch={scale.epochs}"]
    elif method == "jst":      # coarse training + search take the E epochs, then F of fine-tuning
        epochs = scale.epochs + scale.finetune
    else:
        epochs, sets = scale.finetune, sets + [f"init_from={out / f'base-seed{seed}'}"]
    return ["--model", scale.model, "--method", method, "--epochs", str(epochs), "--seed", str(seed),
            "--out", str(out / f"{method}-seed{seed}"), *scale.common, *_sets(sets),
            *(["--data-dir", data_dir] if data_dir else [])]


def exported_channels(out: Path, method: str, seed: int) -> dict | None:
    """The widths of the resizable convs in ``method``'s exported architecture for ``seed``
    (None until the export exists)."""
    path = out / f"{method}-seed{seed}" / "export" / "architecture.json"
    return json.loads(path.read_text())["channels"] if path.exists() else None


def scratch_twin(out: Path, methods, method: str, seed: int) -> str | None:
    """The first method before ``method`` in ``methods`` that exported the same architecture
    for ``seed`` (li-l1, trimming and channel-pruning do at a uniform fraction): its scratch
    runs have the same arguments, so they are ``method``'s too. None when there is none."""
    methods = list(methods)
    channels = exported_channels(out, method, seed)
    if channels is None or method not in methods:
        return None
    return next((m for m in methods[:methods.index(method)] if exported_channels(out, m, seed) == channels), None)


def scratch_arguments(scale: Scale, method: str, kind: str, seed: int, out: Path, data_dir,
                      methods=None) -> list[str] | None:
    """Scratch-E / Scratch-B of ``method``'s exported architecture (None until it exists, and
    None when an earlier method of ``methods`` exported the same one: :func:`scratch_twin`)."""
    path = out / f"{method}-seed{seed}" / "export" / "export.json"
    if not path.exists() or (methods is not None and scratch_twin(out, methods, method, seed)):
        return None
    report = json.loads(path.read_text())
    epochs = scale.epochs if kind == "e" else scratch_b_epochs(scale.epochs, report["flops_ratio"])
    # the exported architecture's spec: only the convs the model can resize (export.json's
    # "channels" lists every conv, and a ResNet refuses widths for the ones tied to its stream)
    channels = ",".join(f"{k}={v}" for k, v in sorted(exported_channels(out, method, seed).items()))
    return ["--model", scale.model, "--epochs", str(epochs), "--seed", str(seed),
            "--out", str(out / f"{method}-scratch-{kind}-seed{seed}"), *scale.common,
            "--set", f"model.channels={channels}", *(["--data-dir", data_dir] if data_dir else [])]


def stages(scale: Scale, out: Path, data_dir, methods=None) -> list:
    """``[[arguments, …], …]``: stage by stage; a stage's arguments are built when it starts
    (a callable each), because the scratch runs read their method's export."""
    methods = list(methods or scale.methods)
    first = [lambda s=s: base_arguments(scale, s, out, data_dir) for s in scale.seeds]
    first += [lambda m=m, s=s: method_arguments(scale, m, s, out, data_dir)
              for m in FROM_SCRATCH if m in methods for s in scale.seeds]
    second = [lambda m=m, s=s: method_arguments(scale, m, s, out, data_dir)
              for m in methods if m not in FROM_SCRATCH for s in scale.seeds]
    third = [lambda m=m, k=k, s=s: scratch_arguments(scale, m, k, s, out, data_dir, methods)
             for m in methods for k in ("e", "b") for s in scale.seeds]
    return [first, second, third]


# ----------------------------------------------------------------------------- report
def collect(out: Path, scale: Scale, methods=None) -> dict:
    """Rows of the table from the finished runs (missing runs are left out and counted)."""
    methods = list(methods or scale.methods)
    names = [("unpruned", "base")] + [(r, r) for m in methods for r in
                                      (m, f"{m}-scratch-e", f"{m}-scratch-b")]
    rows = []
    for label, prefix in names:
        method, _, kind = prefix.partition("-scratch")
        twins = {s: scratch_twin(out, methods, method, s) if kind else None for s in scale.seeds}
        # a seed without its own scratch run reads its twin's (the same arguments: one run)
        runs = {s: completed_summary(out / f"{prefix}-seed{s}") or
                (completed_summary(out / f"{twins[s]}-scratch{kind}-seed{s}") if twins[s] else None)
                for s in scale.seeds}
        done = {s: r for s, r in runs.items() if r is not None}
        if not done:
            continue
        export = out / f"{method}-seed{min(done)}" / "export" / "export.json"
        ex = json.loads(export.read_text()) if method != "base" and export.exists() else None
        exports = [json.loads(p.read_text()) for s in done
                   if (p := out / f"{method}-seed{s}" / "export" / "export.json").exists()] if ex else []
        row = {"row": label, "seeds": sorted(done), "missing": sorted(set(runs) - set(done)),
               "final_error": stats([100 * (1 - r["final_test_accuracy"]) for r in done.values()]),
               "best_error": stats([100 * (1 - r["best_test_accuracy"]) for r in done.values()]),
               "epochs": next(iter(done.values()))["epochs"],
               "wall_minutes": float(np.mean([r["wall_seconds"] for r in done.values()]) / 60)}
        same = sorted({f"{twins[s]}-scratch{kind}" for s in done if twins[s]})
        if same:
            row["same_architecture_as"] = same
        if ex:
            row.update(params=float(np.mean([e["params_after"] for e in exports])),
                       flops=float(np.mean([e["flops_after"] for e in exports])),
                       params_reduction=float(np.mean([1 - e["params_after"] / e["params_before"] for e in exports])),
                       flops_reduction=float(np.mean([1 - e["flops_after"] / e["flops_before"] for e in exports])),
                       speedup=float(np.mean([e["inference_speedup"] for e in exports])),
                       max_logit_difference=float(max(e["max_abs_logit_difference"] for e in exports)))
        rows.append(row)
    return {"model": scale.model, "epochs": scale.epochs, "finetune_epochs": scale.finetune,
            "seeds": list(scale.seeds), "methods": {m: list(scale.methods[m]) for m in methods},
            "rows": rows, "anchors": ANCHORS}


def markdown(report: dict, header: str) -> str:
    def pm(s):
        return f"{s['mean']:.2f} ± {s['std']:.2f}"
    lines = [header, "",
             f"Model {report['model']}; large model trained E = {report['epochs']} epochs, pruned, fine-tuned "
             f"F = {report['finetune_epochs']}; seeds {report['seeds']}. Error = 100 − test accuracy (%), "
             "mean ± std over seeds of the final epoch (best epoch as a second column). Params/FLOPs of the "
             "exported model (FLOPs = multiply–adds per image) and their reduction; speed-up = measured "
             "inference images/s of the exported vs the unpruned model, same process and device (timed in "
             "turn; median of per-round ratios).", "",
             "| row | seeds | final error | best error | epochs | params | FLOPs | params −% | FLOPs −% | speed-up |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        size = (f"{r['params'] / 1e6:.3f} M | {r['flops'] / 1e6:.1f} M | {100 * r['params_reduction']:.1f} | "
                f"{100 * r['flops_reduction']:.1f} | {r['speedup']:.2f}×") if "params" in r else "– | – | – | – | –"
        missing = f" (missing {r['missing']})" if r["missing"] else ""
        label = r["row"] + (f" (= {', '.join(r['same_architecture_as'])})" if r.get("same_architecture_as") else "")
        lines.append(f"| {label} | {len(r['seeds'])}{missing} | {pm(r['final_error'])} | {pm(r['best_error'])} | "
                     f"{r['epochs']} | {size} |")
    lines += ["", "Scratch rows train the exported architecture of the seed-matched pruned run (size columns: "
              "that architecture); \"(= m-scratch-e)\": for its seeds the method exported the same architecture as "
              "method m, so the scratch runs are the same runs (same arguments, trained once). Anchors (the papers' numbers, full-length runs):", ""]
    lines += [f"- {a}" for a in report["anchors"]]
    return "\n".join(lines) + "\n"


def scratch_b_epochs(epochs: int, flops_ratio: float) -> int:
    """Scratch-B's epochs: the large model's training compute, E · FLOPs_large / FLOPs_small."""
    return max(epochs, int(round(epochs * flops_ratio))) if math.isfinite(flops_ratio) else epochs


__all__ = ["ANCHORS", "FROM_SCRATCH", "SCALES", "Scale", "base_arguments", "collect", "markdown", "method_arguments",
           "exported_channels", "scratch_arguments", "scratch_b_epochs", "scratch_twin", "stages"]
