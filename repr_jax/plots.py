"""Figures written into a run directory.

Drawn on explicit :class:`matplotlib.figure.Figure` objects, each saved by its own canvas:
no pyplot state, and the caller's matplotlib backend is never switched (a notebook's inline
figures keep working)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def dataset_label(dataset: str, source: str = "") -> str:
    """"CIFAR-10", "CIFAR-100", with "(JPEG copy)" for the JPEG-degraded offline copy."""
    name = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(dataset, dataset)
    return f"{name} (JPEG copy)" if "jpeg" in str(source).lower() else name


def plot_curves(metrics: list[dict], path: str | Path, title: str = "", reinit_epochs=()) -> None:
    """Accuracy (train, test) and loss (train, test) per epoch, integer epoch ticks;
    sub-network epochs (phase ``sub``) shaded, re-initialisations (after the listed 1-based
    epochs) marked with dashed lines."""
    fig = Figure(figsize=(11, 4))
    acc, loss = fig.subplots(1, 2)
    epochs = [m["epoch"] for m in metrics]
    for ax, key, scale in ((acc, "accuracy", 100.0), (loss, "loss", 1.0)):
        ax.plot(epochs, [scale * m[f"train_{key}"] for m in metrics], label="train", marker=".")
        ax.plot(epochs, [scale * m[f"test_{key}"] for m in metrics], label="test", marker=".")
        for m in metrics:
            if m.get("phase") == "sub":
                ax.axvspan(m["epoch"] - 0.5, m["epoch"] + 0.5, color="0.85", lw=0)
        for i, e in enumerate(reinit_epochs):
            ax.axvline(e + 0.5, color="C3", ls="--", lw=1, label="re-init" if i == 0 else None)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    acc.set_ylabel("accuracy (%)")
    loss.set_ylabel("loss")
    shaded = any(m.get("phase") == "sub" for m in metrics)
    fig.suptitle(title + ("  (shaded: sub-network epochs)" if shaded else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_pruned_per_layer(drops: list[dict], path: str | Path, ranking: str = "global") -> None:
    """Filters dropped per layer, one bar group per layer and one bar per RePr round."""
    if not drops:
        return
    layers = [row["layer"] for row in drops[0]["layers"]]
    width = 0.8 / len(drops)
    fig = Figure(figsize=(max(6, 0.45 * len(layers) + 2), 4))
    ax = fig.subplots()
    x = np.arange(len(layers))
    for i, drop in enumerate(drops):
        counts = [row["dropped"] for row in drop["layers"]]
        bars = ax.bar(x + i * width, counts, width, label=f"round {drop['round'] + 1} (before epoch {drop['epoch']})")
        if len(layers) <= 40:   # a count on every bar, so that a zero is visible too
            ax.bar_label(bars, fontsize=6, padding=1)
    ax.set_xticks(x + 0.4 - width / 2, layers, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("filters dropped")
    ax.set_title(f"Filters dropped per layer ({ranking} ranking)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
