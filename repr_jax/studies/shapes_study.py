"""The any-data study: the methods on data that is not CIFAR's 32×32×3, real images only.

Data (``experiments/derive_datasets.py``): ``gray28`` — CIFAR-10 (JPEG copy) in grayscale at
28×28 (MNIST's shape, harder images); ``rgb64`` — CIFAR-10 at 64×64×3; ``digits`` —
``sklearn.datasets.load_digits`` (1,438 / 359 real 8×8 handwritten digits).

Per seed s:
  ``han-<m>-base-seed<s>``   Standard training of LeNet-300-100 / LeNet-5 on gray28;
  ``han-<m>-seed<s>``        ``han`` from it (``init_from``): one prune per quality value, one
                             retraining epoch after each → per-layer kept fraction vs Han et al.
                             Table 1, CSR bytes, dead hidden units;
  ``drop-<data>-<row>-seed<s>`` LeNet-300-100 with no regulariser / Dropout 0.5 / DropConnect 0.5
                             on its hidden layers (Wan et al. 2013), on digits (and gray28 at
                             the gpu scale: per-example masks of its 784×300 layer run ~100
                             images/s on a 2-core CPU);
  ``<model>-<row>-seed<s>``  ResNet-18 and MobileNetV2 on rgb64 (a slice: CPU scale): Standard,
                             ``li-l1`` (Li et al.'s rule), ``li-l1`` with ``prune_groups``, and
                             ``slimming``, each exported (parameters, FLOPs, measured speed-up);
                             MobileNetV2 with one seed and two rows at the CPU scale (its
                             depthwise convs train at ~2 images/s on XLA:CPU).
Stage 1 runs everything that needs no other run; stage 2 the Han runs.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from repr_jax.report import stats
from repr_jax.studies.study_runner import completed_summary

HAN_TABLE_1 = {   # Han et al. 2015, Table 2 and 3: weights kept per layer (%), total compression
    "lenet300": ({"fc1": 8, "fc2": 9, "head": 26}, 12),
    "lenet5": ({"conv1": 66, "conv2": 12, "fc1": 8, "head": 19}, 12),
}
ANCHORS = ["Han et al. 2015 (MNIST): LeNet-300-100 12× fewer weights (1.64 → 1.59 % error), LeNet-5 12× "
           "(0.80 → 0.77 %)",
           "Wan et al. 2013 (MNIST, their full setup: a CNN, augmentation, 5-network vote): DropConnect 0.21 % vs "
           "Dropout 0.27 % error; on 2-layer fully connected MNIST nets DropConnect <= Dropout < no-drop as the "
           "layers widen (their Fig. 2a)",
           "Li et al. 2017: filter pruning shrinks ImageNet ResNet-34 by 7.6–10.8 % parameters, 15.5–24.2 % FLOPs"]
DROP_ROWS = {"none": (), "dropout": ("model.dropout=0.5",), "dropconnect": ("model.dropconnect=0.5",)}
STRUCTURED_ROWS = {
    "standard": (),
    "li-l1": ("--method", "li-l1", "--set", "li-l1.fraction=0.5", "--set", "li-l1.prune_epoch=1"),
    "li-l1-groups": ("--method", "li-l1", "--set", "li-l1.fraction=0.5", "--set", "li-l1.prune_epoch=1",
                     "--set", "li-l1.prune_groups=true"),
    "slimming": ("--method", "slimming", "--set", "slimming.fraction=0.5", "--set", "slimming.prune_epoch=1"),
}


@dataclasses.dataclass(frozen=True)
class Scale:
    seeds: tuple[int, ...]
    han_epochs: int
    han_quality: tuple[float, ...]
    drop_epochs: dict
    structured: dict          # model → (train images, test images, epochs)
    structured_rows: dict     # model → rows
    structured_seeds: dict = dataclasses.field(default_factory=dict)   # model → seeds (default: seeds)


SCALES = {
    "cpu": Scale(seeds=(0, 1), han_epochs=6, han_quality=(0.6, 1.0, 1.4, 1.8),
                 drop_epochs={"digits": 40},   # per-example DropConnect on gray28's 784×300: ~100 img/s here
                 structured={"resnet18": (512, 500, 2), "mobilenetv2": (128, 100, 2)},
                 structured_rows={"resnet18": tuple(STRUCTURED_ROWS), "mobilenetv2": ("li-l1-groups", "slimming")},
                 # MobileNetV2's depthwise convs train at ~2 images/s on XLA:CPU here (ResNet-18: 6),
                 # and the export times 2 × 11 × 2 passes of 64 images: one seed at this scale
                 structured_seeds={"mobilenetv2": (0,)}),
    "gpu": Scale(seeds=(0, 1, 2), han_epochs=60, han_quality=(0.6, 1.0, 1.4, 1.8),
                 drop_epochs={"digits": 200, "gray28": 100},
                 structured={"resnet18": (50_000, 10_000, 60), "mobilenetv2": (50_000, 10_000, 60)},
                 structured_rows={"resnet18": tuple(STRUCTURED_ROWS), "mobilenetv2": tuple(STRUCTURED_ROWS)}),
}


def _sets(entries) -> list[str]:
    return [a for e in entries for a in ("--set", e)]


def stages(scale: Scale, out: Path, data: dict) -> list:
    """``[[callable → arguments], [...]]``; ``data``: ``{"gray28"|"rgb64"|"digits": .npz path}``."""
    def at(name, s, source, *arguments):
        return lambda: ["--seed", str(s), "--out", str(out / f"{name}-seed{s}"), "--dataset", "npz",
                        "--data-dir", str(data[source]), *arguments]

    first, second = [], []
    for source, epochs in scale.drop_epochs.items():
        flip = ("data.flip=false",) if source == "digits" else ()
        for row, sets in DROP_ROWS.items():
            first += [at(f"drop-{source}-{row}", s, source, "--model", "lenet300", "--epochs", str(epochs),
                         *_sets((*sets, *flip))) for s in scale.seeds]
    for model in HAN_TABLE_1:
        first += [at(f"han-{model}-base", s, "gray28", "--model", model, "--epochs", str(scale.han_epochs))
                  for s in scale.seeds]
        han = ("han.quality=" + ",".join(map(str, scale.han_quality)), "han.retrain_epochs=1")
        second += [at(f"han-{model}", s, "gray28", "--model", model, "--method", "han",
                      "--epochs", str(len(scale.han_quality)),
                      *_sets((*han, f"init_from={out / f'han-{model}-base-seed{s}'}"))) for s in scale.seeds]
    for model, (train, test, epochs) in scale.structured.items():
        for row in scale.structured_rows[model]:
            first += [at(f"{model}-{row}", s, "rgb64", "--model", model, "--epochs", str(epochs), "--batch-size", "64",
                         "--train-limit", str(train), "--test-limit", str(test), *STRUCTURED_ROWS[row])
                      for s in scale.structured_seeds.get(model, scale.seeds)]
    return [first, second]


# ----------------------------------------------------------------------------- report
def _stats(values):
    s = stats([v for v in values if v is not None])
    return s if s["n"] else None


def _pm(s, unit: str = "", digits: int = 2) -> str:
    return "–" if s is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}{unit} (n={s['n']})"


def _accuracy(done) -> dict:
    return {"final": _stats([100 * r["final_test_accuracy"] for r in done]),
            "best": _stats([100 * r["best_test_accuracy"] for r in done])}


def _han(out: Path, model: str, seeds) -> dict | None:
    runs = [out / f"han-{model}-seed{s}" for s in seeds if completed_summary(out / f"han-{model}-seed{s}")]
    if not runs:
        return None
    layers: dict = {}
    totals, dead = [], {}
    for run in runs:
        storage = json.loads((run / "storage.json").read_text())
        totals.append(storage["total"])
        for layer in storage["layers"]:
            layers.setdefault(layer["name"], []).append(100 * layer["nonzero"] / layer["params"])
        for line in (run / "pruning.jsonl").read_text().splitlines():
            for name, v in json.loads(line)["layers"].items():
                if "dead_units" in v or "dead_filters" in v:
                    count = v.get("dead_units", v.get("dead_filters", 0))
                    dead.setdefault(name, [0] * len(runs))[runs.index(run)] += count
    base = [r for s in seeds if (r := completed_summary(out / f"han-{model}-base-seed{s}"))]
    return {"kept": {n: _stats(v) for n, v in layers.items()},
            "compression": _stats([t["param_ratio"] for t in totals]),
            "byte_ratio": _stats([t["byte_ratio"] for t in totals]),
            "csr_bytes": _stats([t["csr_bytes"] for t in totals]),
            "dense_bytes": _stats([t["dense_bytes"] for t in totals]),
            "dead": {n: _stats(v) for n, v in dead.items()},
            "base": _accuracy(base), "pruned": _accuracy([completed_summary(r) for r in runs])}


def collect(out: Path, scale: Scale) -> dict:
    seeds = scale.seeds
    drop = {}
    for source in scale.drop_epochs:
        for row in DROP_ROWS:
            done = [r for s in seeds if (r := completed_summary(out / f"drop-{source}-{row}-seed{s}"))]
            if done:
                drop.setdefault(source, []).append({"row": row, "n": len(done), "epochs": done[0]["epochs"],
                                                    **_accuracy(done)})
    structured = {}
    for model, rows in scale.structured_rows.items():
        for row in rows:
            done = [r for s in scale.structured_seeds.get(model, seeds)
                    if (r := completed_summary(out / f"{model}-{row}-seed{s}"))]
            if not done:
                continue
            entry = {"row": row, "n": len(done), "epochs": done[0]["epochs"], **_accuracy(done)}
            exports = [r["export"] for r in done if "export" in r]
            if exports:
                entry.update({k: _stats([e[k] for e in exports]) for k in ("params_before", "params_after",
                                                                            "flops_before", "flops_after")})
                entry["speedup"] = _stats([e.get("inference_speedup") for e in exports])
                entry["logit_difference"] = max(e["max_abs_logit_difference"] for e in exports)
            structured.setdefault(model, []).append(entry)
    return {"seeds": list(seeds), "han": {m: _han(out, m, seeds) for m in HAN_TABLE_1}, "drop": drop,
            "structured": structured, "structured_data": {m: dict(zip(("train", "test", "epochs"), v))
                                                          for m, v in scale.structured.items()},
            "anchors": ANCHORS}


def markdown(report: dict, header: str) -> str:
    lines = [header, "", "Accuracy = test accuracy (%) of the final epoch, mean ± std over seeds (best epoch second)."]
    for model, (paper, ratio) in HAN_TABLE_1.items():
        h = report["han"].get(model)
        if not h:
            continue
        lines += ["", f"## Han et al. on {model} (gray28: CIFAR-10 in grayscale at 28×28)", "",
                  f"Unpruned: {_pm(h['base']['final'])}; after pruning and retraining: {_pm(h['pruned']['final'])}.",
                  "", "| layer | weights kept (%) | Han et al. Table 1 (MNIST) | dead filters / units removed |",
                  "| --- | --- | --- | --- |"]
        for name, kept in h["kept"].items():
            dead = _pm(h["dead"].get(name), "", 1)
            lines.append(f"| {name} | {_pm(kept, '', 1)} | {paper.get(name, '–')} | {dead} |")
        lines += ["", f"Compression (weights): {_pm(h['compression'], '×')} vs the paper's {ratio}×; CSR "
                  f"{_pm(h['csr_bytes'], ' bytes', 0)} vs {_pm(h['dense_bytes'], ' bytes', 0)} dense "
                  f"({_pm(h['byte_ratio'], '×')})."]
    for source, rows in report["drop"].items():
        lines += ["", f"## DropConnect vs Dropout, LeNet-300-100 on {source}", "",
                  "| row | epochs | final accuracy | best accuracy |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['row']} | {r['epochs']} | {_pm(r['final'])} | {_pm(r['best'])} |" for r in rows]
    for model, rows in report["structured"].items():
        d = report["structured_data"][model]
        lines += ["", f"## {model} on rgb64 (CIFAR-10 at 64×64; {d['train']} training / {d['test']} test images, "
                  f"{d['epochs']} epochs: a CPU-scale slice)", "",
                  "| row | final accuracy | parameters | FLOPs (multiply–adds) | measured speed-up | max \\|Δ logit\\| |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            if "params_after" in r:
                size = (f"{r['params_before']['mean'] / 1e6:.2f} M → {r['params_after']['mean'] / 1e6:.2f} M",
                        f"{r['flops_before']['mean'] / 1e6:.0f} M → {r['flops_after']['mean'] / 1e6:.0f} M",
                        _pm(r["speedup"], "×"), f"{r['logit_difference']:.1e}")
            else:
                size = ("unpruned", "unpruned", "–", "–")
            lines.append(f"| {r['row']} | {_pm(r['final'])} | {' | '.join(size)} |")
    lines += ["", "Anchors (the papers' full-length runs):", ""] + [f"- {a}" for a in report["anchors"]]
    return "\n".join(lines) + "\n"


__all__ = ["ANCHORS", "DROP_ROWS", "HAN_TABLE_1", "SCALES", "STRUCTURED_ROWS", "Scale", "collect", "markdown", "stages"]
