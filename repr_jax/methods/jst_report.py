"""What a ``jst`` run shows and leaves beside its logs (host side): the console line per
search step and selection, ``search.png`` (kept width per layer over the search, rewards
over search steps) and the ``summary.json`` entry, both read from ``pruning.jsonl``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_search(out) -> tuple[list[dict], dict | None]:
    """``(search lines, select line or None)`` of a run directory's ``pruning.jsonl``."""
    path = Path(out) / "pruning.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    rows = [r for r in rows if r.get("method") == "jst"]
    select = next((r for r in rows if r["event"] == "select"), None)
    return [r for r in rows if r["event"] == "search"], select


def describe_record(record: dict) -> list[str]:
    """The console line of a search step (rewards, the chosen widths) or of the selection."""
    if record["event"] == "search":
        r = np.asarray(record["rewards"])
        chosen = ", ".join(f"{n} {int(w[record['chosen']])}" for n, w in record["widths"].items())
        return [f"jst search step {record['round']}: rewards mean {r.mean():.3f}, max {r.max():.3f} "
                f"(best so far {record['best_reward']:.3f}); chosen widths — {chosen}"]
    if record["event"] == "select":
        widths = ", ".join(f"{n} {int(w)}" for n, w in record["best_widths"].items())
        return [f"jst: fine-tuning the best sub-network (reward {record['best_reward']:.3f}, "
                f"{100 * record['params_fraction']:.1f} % of the parameters) — {widths}"]
    return []


def plot_search(steps: list[dict], path) -> None:
    """Left: each layer's width in the step's chosen sub-network (and the mean over the
    sampled ones, dotted); right: reward mean, max and the baseline per search step."""
    import matplotlib
    from matplotlib.figure import Figure

    x = [s["round"] for s in steps]
    layers = list(steps[0]["widths"])
    fig = Figure(figsize=(12, 4.5))
    left, right = fig.subplots(1, 2)
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 1, len(layers)))
    for color, name in zip(colors, layers):
        chosen = [s["widths"][name][s["chosen"]] for s in steps]
        left.plot(x, chosen, color=color, marker=".", label=name)
        left.plot(x, [np.mean(s["widths"][name]) for s in steps], color=color, ls=":", lw=0.8)
    left.set_xlabel("search step")
    left.set_ylabel("filters kept")
    left.set_title("chosen sub-network per step (dotted: mean of the sampled)")
    if len(layers) <= 16:
        left.legend(fontsize=6, ncol=2)
    right.plot(x, [np.mean(s["rewards"]) for s in steps], marker=".", label="mean reward")
    right.plot(x, [np.max(s["rewards"]) for s in steps], marker=".", label="max reward")
    right.plot(x, [s["baseline"] for s in steps], ls="--", label="baseline (before the step)")
    right.set_xlabel("search step")
    right.set_ylabel("R = −(loss + γ·params fraction)")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def search_summary(out) -> dict:
    """The ``summary.json`` entry of a finished run (and ``search.png`` written)."""
    steps, select = read_search(out)
    if not steps:
        return {}
    plot_search(steps, Path(out) / "search.png")
    summary = {"search_steps": len(steps), "reward_mean_per_step": [float(np.mean(s["rewards"])) for s in steps],
               "reward_max_per_step": [float(np.max(s["rewards"])) for s in steps]}
    if select is not None:
        summary.update(best_reward=select["best_reward"], best_widths=select["best_widths"],
                       params_fraction=select["params_fraction"])
    return summary


__all__ = ["plot_search", "read_search", "search_summary"]
