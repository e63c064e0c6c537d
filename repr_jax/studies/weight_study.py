"""The weight-level study: four tables, each from run directories under the study folder.

Per seed s:
  ``han-base-seed<s>``  Standard training of the Han model, E epochs;
  ``han-seed<s>``       ``han`` from it (``init_from``): one prune per quality value, R epochs
                        of retraining after each → per-iteration density and accuracy, and the
                        CSR storage report of the last;
  ``dsd-<row>-seed<s>`` ResNet-20, Standard vs DSD vs RePr, the same epochs;
  ``drop-<row>-seed<s>`` C³(32) (pool2 variant) with a 64-unit hidden layer: no drop vs
                        Dropout vs DropConnect, the same epochs;
  ``kd-teacher-seed<s>`` the teacher (ResNet-20, Standard);
  ``kd-<row>-seed<s>``  C³(32) students under ``--protocol paper``: Standard, KD, RePr,
                        KD + RePr (the teacher of the same seed).
Stage 1 runs everything that needs no other run; stage 2 the Han and KD runs that start
from / distil a stage-1 run.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from repr_jax.report import stats
from repr_jax.studies.study_runner import completed_summary

PAPER_KD = {"standard": 72.1, "kd": 74.8, "repr": 76.4, "kd-repr": 83.1}   # RePr paper, Table 6 (C³(32))
ANCHORS = ["Han et al. 2015: LeNet-5 12×, AlexNet 9×, VGG-16 13× fewer parameters, no accuracy loss",
           "DSD paper (as quoted by RePr, Table 7): ResNet-20 CIFAR-10 error 7.8 % (RePr 6.9 %)",
           "Wan et al. 2013, CIFAR-10 (their 3-conv net + 64-unit layer): no-drop 23.5 %, Dropout 19.7 %, "
           "DropConnect 18.7 % error",
           "RePr paper, C³(32) on CIFAR-10: Standard 72.1, KD 74.8, RePr 76.4, KD + RePr 83.1 % accuracy"]


@dataclasses.dataclass(frozen=True)
class Scale:
    seeds: tuple[int, ...]
    common: tuple[str, ...]
    han_model: str
    han_epochs: int
    han_quality: tuple[float, ...]
    han_retrain: int
    dsd_epochs: int
    dsd_sets: tuple[str, ...]
    dsd_repr_sets: tuple[str, ...]
    drop_epochs: int
    teacher_epochs: int
    student_epochs: tuple[str, ...]      # () : the protocol's 100
    student_repr_sets: tuple[str, ...]   # () : the protocol's S1/S2/N


CPU_COMMON = ("--train-limit", "10000", "--test-limit", "2000")
SCALES = {
    "cpu": Scale(seeds=(0, 1), common=CPU_COMMON, han_model="resnet20", han_epochs=3, han_quality=(0.5, 0.8, 1.1),
                 han_retrain=1, dsd_epochs=4,
                 dsd_sets=("dsd.dense_epochs=2", "dsd.sparse_epochs=1", "dsd.sparsity=0.3"),
                 dsd_repr_sets=("repr.s1=1", "repr.s2=1", "repr.iterations=2"), drop_epochs=6, teacher_epochs=5,
                 student_epochs=("--epochs", "12"),
                 student_repr_sets=("repr.s1=3", "repr.s2=2", "repr.iterations=2")),
    "gpu": Scale(seeds=(0, 1, 2), common=(), han_model="vgg16", han_epochs=160, han_quality=(0.5, 0.8, 1.1, 1.4),
                 han_retrain=20, dsd_epochs=160,
                 dsd_sets=("dsd.dense_epochs=80", "dsd.sparse_epochs=40", "dsd.sparsity=0.3"),
                 dsd_repr_sets=("repr.s1=40", "repr.s2=20", "repr.iterations=2"), drop_epochs=100, teacher_epochs=160,
                 student_epochs=(), student_repr_sets=()),
}
DROP_ROWS = {"none": (), "dropout": ("model.dropout=0.5",), "dropconnect": ("model.dropconnect=0.5",)}
DSD_ROWS = ("standard", "dsd", "repr")
KD_ROWS = ("standard", "kd", "repr", "kd-repr")


def _sets(entries) -> list[str]:
    return [a for e in entries for a in ("--set", e)]


def _run(out: Path, name: str, seed: int, scale: Scale, data_dir, *arguments) -> list[str]:
    return ["--seed", str(seed), "--out", str(out / f"{name}-seed{seed}"), *scale.common, *arguments,
            *(["--data-dir", data_dir] if data_dir else [])]


def stages(scale: Scale, out: Path, data_dir) -> list:
    """``[[callable → arguments], [...]]`` (see the module docstring); within a stage the
    cheapest part comes first, every seed of a part together."""
    def at(name, s, *arguments):
        return lambda: _run(out, f"{name}", s, scale, data_dir, *arguments)

    first, second = [], []
    for row, sets in DROP_ROWS.items():
        first += [at(f"drop-{row}", s, "--model", "convnet", "--epochs", str(scale.drop_epochs),
                     *_sets(("model.variant=pool2", "model.hidden=64", *sets))) for s in scale.seeds]
    first += [at("han-base", s, "--model", scale.han_model, "--epochs", str(scale.han_epochs)) for s in scale.seeds]
    first += [at("kd-teacher", s, "--model", "resnet20", "--epochs", str(scale.teacher_epochs)) for s in scale.seeds]
    students = {"standard": [], "repr": ["--method", "repr", *_sets(scale.student_repr_sets)]}
    for row, method in students.items():
        first += [at(f"kd-{row}", s, "--protocol", "paper", *scale.student_epochs, *method) for s in scale.seeds]
    dsd = {"standard": [], "dsd": ["--method", "dsd", *_sets(scale.dsd_sets)],
           "repr": ["--method", "repr", *_sets(scale.dsd_repr_sets)]}
    for row, method in dsd.items():
        first += [at(f"dsd-{row}", s, "--model", "resnet20", "--epochs", str(scale.dsd_epochs), *method)
                  for s in scale.seeds]
    for s in scale.seeds:
        han = ("han.quality=" + ",".join(map(str, scale.han_quality)), f"han.retrain_epochs={scale.han_retrain}",
               f"init_from={out / f'han-base-seed{s}'}")
        second.append(at("han", s, "--model", scale.han_model, "--method", "han",
                         "--epochs", str(len(scale.han_quality) * scale.han_retrain), *_sets(han)))
    for row, method in students.items():
        second += [at(f"kd-kd{'' if row == 'standard' else '-' + row}", s, "--protocol", "paper",
                      *scale.student_epochs, *method,
                      *_sets((f"kd.teacher={out / f'kd-teacher-seed{s}'}", "kd.temperature=4", "kd.alpha=0.9")))
                   for s in scale.seeds]
    return [first, second]


# ----------------------------------------------------------------------------- report
def _stats(values) -> dict | None:
    """:func:`repr_jax.report.stats` of the values that exist; None when there are none."""
    s = stats([v for v in values if v is not None])
    return s if s["n"] else None


def _accuracy_rows(out: Path, scale: Scale, prefix: str, rows) -> list[dict]:
    found = []
    for row in rows:
        done = [r for s in scale.seeds if (r := completed_summary(out / f"{prefix}-{row}-seed{s}"))]
        if done:
            found.append({"row": row, "n": len(done),
                          "final": _stats([100 * r["final_test_accuracy"] for r in done]),
                          "best": _stats([100 * r["best_test_accuracy"] for r in done]),
                          "epochs": done[0]["epochs"]})
    return found


def han_iterations(run: Path) -> list[dict] | None:
    """Per Han iteration: quality, kept fraction of all kernel weights, compression and test
    accuracy at the end of its retraining (None while the run is unfinished)."""
    if completed_summary(run) is None or not (run / "storage.json").exists():
        return None
    sizes = {l["name"]: l["params"] for l in json.loads((run / "storage.json").read_text())["layers"]}
    events = [json.loads(line) for line in (run / "pruning.jsonl").read_text().splitlines()]
    metrics = {m["epoch"]: m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    ends = [e["epoch"] - 1 for e in events[1:]] + [max(metrics)]
    out = []
    for event, end in zip(events, ends):
        kept = sum(event["layers"][n]["density"] * p for n, p in sizes.items()) / sum(sizes.values())
        out.append({"quality": event["quality"], "kept": kept, "compression": 1 / kept,
                    "accuracy": 100 * metrics[end]["test_accuracy"]})
    return out


def collect(out: Path, scale: Scale) -> dict:
    han_runs = [h for s in scale.seeds if (h := han_iterations(out / f"han-seed{s}"))]
    han = [{"iteration": i + 1, "quality": han_runs[0][i]["quality"],
            **{k: _stats([r[i][k] for r in han_runs]) for k in ("compression", "accuracy")}}
           for i in range(len(han_runs[0]))] if han_runs else []
    storage = [json.loads((out / f"han-seed{s}" / "storage.json").read_text())["total"]
               for s in scale.seeds if completed_summary(out / f"han-seed{s}")]
    base = [r for s in scale.seeds if (r := completed_summary(out / f"han-base-seed{s}"))]
    teacher = [r for s in scale.seeds if (r := completed_summary(out / f"kd-teacher-seed{s}"))]
    return {"seeds": list(scale.seeds), "han_model": scale.han_model,
            "han_base": _stats([100 * r["final_test_accuracy"] for r in base]), "han": han,
            "han_storage": {k: _stats([t[k] for t in storage]) for k in ("param_ratio", "byte_ratio", "csr_bytes",
                                                                         "dense_bytes")} if storage else {},
            "dsd": _accuracy_rows(out, scale, "dsd", DSD_ROWS),
            "dropconnect": _accuracy_rows(out, scale, "drop", DROP_ROWS),
            "kd_teacher": _stats([100 * r["final_test_accuracy"] for r in teacher]),
            "kd": _accuracy_rows(out, scale, "kd", KD_ROWS), "anchors": ANCHORS}


def _pm(s, unit: str = "", digits: int = 2) -> str:
    return "–" if s is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}{unit} (n={s['n']})"


def markdown(report: dict, header: str) -> str:
    lines = [header, "", "Accuracy = test accuracy (%) of the final epoch, mean ± std over seeds (best epoch "
             "second).", "", f"## Han et al. 2015 on {report['han_model']}", "",
             f"Unpruned (Standard): {_pm(report['han_base'])}.", "",
             "| iteration | quality q | compression (kernels) | accuracy after retraining |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['iteration']} | {r['quality']} | {_pm(r['compression'], '×')} | {_pm(r['accuracy'])} |"
              for r in report["han"]]
    st = report["han_storage"]
    if st:
        lines += ["", f"CSR storage of the last iteration (8-bit conv / 5-bit dense relative indices): "
                  f"{_pm(st['csr_bytes'], ' bytes', 0)} vs {_pm(st['dense_bytes'], ' bytes', 0)} dense — "
                  f"{_pm(st['byte_ratio'], '×')} smaller; parameters {_pm(st['param_ratio'], '×')} fewer "
                  "(per layer: `han-seed*/storage.md`)."]
    for title, key, extra in (("DSD vs Standard vs RePr (ResNet-20, same epochs)", "dsd", ""),
                              ("DropConnect vs Dropout (C³(32) pool2, 64-unit hidden layer, rate 0.5)", "dropconnect", ""),
                              ("Knowledge distillation, C³(32) students under --protocol paper", "kd",
                               f"Teacher (ResNet-20, Standard): {_pm(report['kd_teacher'])}.")):
        lines += ["", f"## {title}", ""] + ([extra, ""] if extra else [])
        lines += ["| row | epochs | final accuracy | best accuracy |" + (" paper |" if key == "kd" else ""),
                  "| --- | --- | --- | --- |" + (" --- |" if key == "kd" else "")]
        for r in report[key]:
            paper = f" {PAPER_KD[r['row']]} |" if key == "kd" else ""
            lines.append(f"| {r['row']} | {r['epochs']} | {_pm(r['final'])} | {_pm(r['best'])} |{paper}")
    lines += ["", "Anchors (the papers' full-length runs):", ""] + [f"- {a}" for a in report["anchors"]]
    return "\n".join(lines) + "\n"


__all__ = ["ANCHORS", "DROP_ROWS", "DSD_ROWS", "KD_ROWS", "SCALES", "Scale", "collect", "han_iterations",
           "markdown", "stages"]
