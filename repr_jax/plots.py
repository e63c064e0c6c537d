"""Figures written into a run directory (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(metrics: list[dict], path: str | Path, title: str = "") -> None:
    """Train/test accuracy per epoch; sub-network (pruned) epochs shaded."""
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = [m["epoch"] for m in metrics]
    ax.plot(epochs, [100 * m["train_accuracy"] for m in metrics], label="train", marker=".")
    ax.plot(epochs, [100 * m["test_accuracy"] for m in metrics], label="test", marker=".")
    for m in metrics:
        if m.get("phase") == "sub":
            ax.axvspan(m["epoch"] - 0.5, m["epoch"] + 0.5, color="0.85", lw=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title + ("  (shaded: sub-network epochs)" if any(m.get("phase") == "sub" for m in metrics) else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pruned_per_layer(drops: list[dict], path: str | Path, ranking: str = "global") -> None:
    """Filters dropped per layer, one bar group per layer and one bar per RePr round."""
    if not drops:
        return
    layers = [row["layer"] for row in drops[0]["layers"]]
    width = 0.8 / len(drops)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(layers) + 2), 4))
    x = np.arange(len(layers))
    for i, drop in enumerate(drops):
        counts = [row["dropped"] for row in drop["layers"]]
        ax.bar(x + i * width, counts, width, label=f"round {drop['round'] + 1} (before epoch {drop['epoch']})")
    ax.set_xticks(x + 0.4 - width / 2, layers, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("filters dropped")
    ax.set_title(f"Filters dropped per layer ({ranking} ranking)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
