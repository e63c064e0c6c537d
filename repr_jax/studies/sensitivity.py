"""Sensitivity analysis of Li et al. 2017 (§3.2, Fig. 2b): prune each layer alone, measure.

For every prunable layer (by default those whose filters the export can remove; ResNets:
each block's first conv) and every ratio p in ``ratios`` (10 %, 20 %, …, 90 %), the
⌊F·p⌋… filters with the smallest L1 norm (:func:`repr_jax.methods.li_l1.l1_scores`; keep
⌊F (1 − p)⌋) are removed from a trained network — all other layers intact, no retraining —
and accuracy is measured on the run's held-out images (``data.holdout``: never trained on,
the default when the run has them) or on its test set (Li et al.'s Fig. 2b; choosing
ratios there tunes the pruned model on the data it is later scored on). The report names
the split (``"split"``). One curve per layer. Per-layer ratios are then picked: the
largest p whose accuracy stays within ``max_drop`` of the unpruned accuracy; a layer whose
10 % point already falls further is *sensitive* and skipped (ratio 0). The picks are
written as an ``li-l1.ratios`` value (``--set li-l1.ratios=…``).

All evaluations share one jitted evaluation program (masks are arguments; shapes never
change), so the whole sweep compiles once.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))
SPLITS = ("auto", "heldout", "test")


def sweep(state, layers, eligible, test_x, test_y, *, ratios=RATIOS, batch: int = 500, method=None,
          preprocess=None) -> dict:
    """``{layer: [accuracy at each ratio]}`` with each layer pruned alone (L1, no retraining),
    plus ``"unpruned"``: the accuracy of ``state`` as it is (uint8 images normalised by
    ``preprocess``, a :class:`repr_jax.data.pipeline.Preprocessing`; default CIFAR's)."""
    from repr_jax.masks import drop_filters, live_filters
    from repr_jax.methods.li_l1 import l1_scores
    from repr_jax.methods.structured import keep_highest
    from repr_jax.layers import get_path
    from repr_jax.data.pipeline import Preprocessing
    from repr_jax.train import evaluate
    preprocess = preprocess or Preprocessing()

    def accuracy(s):
        return float(evaluate(s, test_x, test_y, batch, method=method, preprocess=preprocess)["accuracy"])

    live = live_filters(state.masks, layers)
    curves = {"unpruned": accuracy(state)}
    for layer in layers:
        if layer.name not in eligible:
            continue
        scores = l1_scores(get_path(state.params, layer.path + ("kernel",)))
        points = []
        for p in ratios:
            keep = max(int(np.floor(layer.num_filters * (1 - p) + 1e-6)), 1)
            new = dict(live, **{layer.name: keep_highest(scores, live[layer.name], keep)})
            points.append(accuracy(drop_filters(state, layers, new)))
        curves[layer.name] = points
    return curves


def pick_ratios(curves: dict, ratios=RATIOS, max_drop: float = 0.01) -> dict[str, float]:
    """Per layer, the largest ratio whose accuracy is ≥ unpruned − ``max_drop`` (0: sensitive)."""
    base = curves["unpruned"]
    out = {}
    for name, points in curves.items():
        if name == "unpruned":
            continue
        ok = [p for p, acc in zip(ratios, points) if acc >= base - max_drop]
        # the curve is not monotone in general: take the largest ratio before the first failure
        first_bad = next((i for i, acc in enumerate(points) if acc < base - max_drop), len(points))
        out[name] = float(ratios[first_bad - 1]) if first_bad > 0 and ok else 0.0
    return out


def analyse(run_dir, out, *, step: str = "latest", data_dir=None, max_drop: float = 0.01,
            ratios=RATIOS, all_layers: bool = False, test_limit: int | None = None, split: str = "auto") -> dict:
    """Run the sweep on ``run_dir``'s checkpoint, on ``split`` — ``heldout`` (the run's
    ``data.holdout`` images), ``test``, or ``auto`` (held-out when the run has them); write
    ``sensitivity.json`` and ``sensitivity.png`` into ``out``; returns the JSON content."""
    import dataclasses

    from repr_jax.errors import RunError
    from repr_jax.experiment import load_run_data, restore_run
    from repr_jax.methods.structured import model_graph, removable_layers
    from repr_jax.run_dir import check_data, read_config
    from repr_jax.run_state import preprocessing

    config = read_config(run_dir)
    if data_dir is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, dir=str(data_dir)))
    if test_limit is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, test_limit=test_limit))
    _, arch, method, state = restore_run(run_dir, step if step in ("latest", "best") else int(step))
    if split not in SPLITS:
        raise RunError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    data = load_run_data(config)
    check_data(run_dir, data.fingerprint)
    if split == "auto":
        split = "heldout" if data.held_x is not None else "test"
    if split == "heldout" and data.held_x is None:
        raise RunError(f"{run_dir} holds out no training images (data.holdout = 0): use --split test, or train "
                       "with --set data.holdout=N to pick ratios on images the pruned model is not scored on")
    images, labels = (data.held_x, data.held_y) if split == "heldout" else (data.test_x, data.test_y)
    layers = state.layers
    eligible = {l.name for l in layers} if all_layers else set(removable_layers(model_graph(method.context)))
    curves = sweep(state, layers, eligible, jnp.asarray(images), jnp.asarray(labels),
                   ratios=ratios, batch=config.eval_batch_size, method=method,
                   preprocess=preprocessing(config, data))
    picked = pick_ratios(curves, ratios, max_drop)
    report = {"run": str(run_dir), "step": step, "split": split, "images": int(len(labels)),
              "test_images": int(len(data.test_y)), "ratios": list(ratios),
              "max_drop": max_drop, "unpruned_accuracy": curves.pop("unpruned"), "curves": curves,
              "picked": picked, "sensitive": sorted(n for n, r in picked.items() if r == 0.0),
              "li_l1_ratios": ",".join(f"{n}={r:g}" for n, r in picked.items())}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sensitivity.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / "sensitivity.png",
         f"{config.model.name}: each layer pruned alone (L1, no retraining), {split} images")
    return report


def plot(report: dict, path, title: str) -> None:
    """One accuracy-vs-ratio curve per layer (Li et al. 2017, Fig. 2b)."""
    import matplotlib
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"]
    names = list(report["curves"])
    for i, name in enumerate(names):
        ax.plot([100 * r for r in report["ratios"]], [100 * a for a in report["curves"][name]],
                marker="o", ms=3, color=cmap(i / max(len(names) - 1, 1)), label=name)
    ax.axhline(100 * report["unpruned_accuracy"], color="k", ls="--", lw=1, label="unpruned")
    ax.set_xlabel("filters pruned away (%)")
    ax.set_ylabel(f"{'held-out' if report.get('split') == 'heldout' else 'test'} accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=6, ncol=2 if len(names) > 12 else 1, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


__all__ = ["RATIOS", "SPLITS", "analyse", "pick_ratios", "plot", "sweep"]
