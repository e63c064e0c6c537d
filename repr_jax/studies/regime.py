"""The regime study's extra sections (issue 40): the calibration of the paper preset's model,
RePr's re-introductions measured, and the filters dropped per layer under both readings of
the orthogonality metric — over the rows :func:`repr_jax.studies.study.collect` gathered.

* **Calibration** — each C³ variant's Standard run beside the paper's Fig. 1 readings
  (:data:`FIG1`: train ≈ 0.80 at epoch 20 and ≈ 0.92 at 100, test ≈ 0.73 from epoch ~18
  on; the thesis: C³(32) "achieves test accuracy of 73%"). The distance of a variant to Fig. 1
  is :func:`fig1_distance`, the mean absolute difference over those three readings, in points;
  the variant with the smallest distance becomes the paper preset's model.
* **Re-introductions** — per RePr row and round: the probe's accuracy right before and right
  after the drop and the re-initialisation (the fixed-sample measurement of
  :mod:`repr_jax.methods.reintroduce`), and the test accuracy of the epoch before the drop,
  of the last sub-network epoch and of the first full-network epoch after it.
* **Per-layer drops** — per RePr row, round and layer: filters dropped by the ranking that
  ran (mean over seeds) and what the other reading of the metric would have dropped
  (``dropped_by`` in ``pruning.jsonl``): Eq. 3's O_f (``ortho``) vs the official code's
  signed whole-matrix mean (``ortho_official``); the thesis says RePr "prunes more filters
  from deeper layers".
"""
from __future__ import annotations

import numpy as np

# Fig. 1 of Prakash et al. 2019 (C³(32), Standard), read off the figure: (curve, epoch, accuracy)
FIG1 = (("train_accuracy", 20, 0.80), ("train_accuracy", 100, 0.92), ("test_accuracy", 20, 0.73),
        ("test_accuracy", 100, 0.73))


def _at(curve: list[dict], key: str, epoch: int):
    return curve[epoch - 1][key] if len(curve) >= epoch and curve[epoch - 1].get(key) is not None else None


def fig1_distance(curve: list[dict]) -> float | None:
    """Mean |ours − Fig. 1| in points over :data:`FIG1`'s readings (None if a run is shorter)."""
    diffs = [_at(curve, key, epoch) for key, epoch, _ in FIG1]
    if any(d is None for d in diffs):
        return None
    return float(np.mean([100 * abs(d - ref) for d, (_, _, ref) in zip(diffs, FIG1)]))


def calibration_table(report: dict, extra: list[tuple[str, list[list[dict]], str]] = ()) -> str:
    """Markdown: one line per calibrated variant (the ``calibration`` group's rows, plus
    ``extra`` = (label, curves, source) lines such as the paper variant's runs of another
    study); columns are Fig. 1's readings and the final/best test accuracy."""
    head = ["| C³ variant | seeds | train @20 | train @100 | test @20 | test @100 | best test (epoch) | "
            "distance to Fig. 1 (points) | source |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            "| Fig. 1 (paper) | | 80 | 92 | 73 | 73 | | 0 | Prakash et al. 2019, Fig. 1; thesis: 73 % |"]
    lines = [(r["row"], r["_curves"], "this study") for r in report["rows"] if r["group"] == "calibration"]
    for label, curves, source in [*lines, *extra]:
        if not curves:
            head.append(f"| {label} | 0 | | | | | | | {source}: not run yet |")
            continue
        cells = []
        for key, epoch, _ in FIG1:
            v = [_at(c, key, epoch) for c in curves]
            cells.append(f"{100 * np.mean(v):.1f}" if all(x is not None for x in v) else "–")
        bests = [max(range(len(c)), key=lambda i: c[i]["test_accuracy"]) for c in curves]
        best = "; ".join(f"{100 * c[i]['test_accuracy']:.2f} ({i + 1})" for c, i in zip(curves, bests))
        dist = [fig1_distance(c) for c in curves]
        d = f"{np.mean(dist):.1f}" if all(x is not None for x in dist) else "–"
        head.append(f"| {label} | {len(curves)} | {' | '.join(cells)} | {best} | {d} | {source} |")
    return "\n".join(head) + "\n"


def _rounds(events: list[dict]) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for e in events:
        out.setdefault(e["round"], {})[e["event"]] = e
    return out


def reintroduction_table(report: dict) -> str:
    """Markdown: per RePr row and round, the probe before → after the drop and the re-init
    (mean over seeds) and the test accuracy around the sub-network phase."""
    lines = ["| group | row | round | seeds | drop: probe acc. before → after | re-init: probe acc. before → after "
             "(loss) | test acc.: before drop → last sub epoch → first full epoch after |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        runs = [(_rounds(ev), curve) for ev, curve in zip(r.get("_events", []), r["_curves"]) if ev]
        if not runs:
            continue
        for k in sorted({k for rounds, _ in runs for k in rounds}):
            have = [(rounds[k], c) for rounds, c in runs if "drop" in rounds.get(k, {})
                    and "reinit" in rounds.get(k, {})]
            if not have:
                continue

            def probe(event, when, key="accuracy"):
                v = [p[event]["probe"][when][key] for p, _ in have if "probe" in p[event]]
                return np.mean(v) if len(v) == len(have) else None

            def pct(x):
                return "–" if x is None else f"{100 * x:.2f}"
            d_before, d_after = probe("drop", "before"), probe("drop", "after")
            i_before, i_after = probe("reinit", "before"), probe("reinit", "after")
            l_before, l_after = probe("reinit", "before", "loss"), probe("reinit", "after", "loss")
            loss = "" if l_before is None else f" ({l_before:.3f} → {l_after:.3f})"
            test = []
            for offset in (-1, 0, 1):   # the epoch before the drop, the re-init epoch, the one after
                vals = [_at(c, "test_accuracy", (p["drop"]["epoch"] - 1) if offset < 0 else
                            p["reinit"]["epoch"] + offset) for p, c in have]
                test.append(pct(np.mean(vals)) if all(v is not None for v in vals) else "–")
            lines.append(f"| {r['group']} | {r['row']} | {k + 1} | {len(have)} | {pct(d_before)} → {pct(d_after)} | "
                         f"{pct(i_before)} → {pct(i_after)}{loss} | {' → '.join(test)} |")
    return "\n".join(lines) + "\n"


def layer_drop_table(report: dict) -> str:
    """Markdown: per RePr row, round and layer, the filters dropped (mean over seeds) by the
    ranking that ran and by the other reading of the orthogonality metric."""
    lines = ["| group | row | round | layer | filters | dropped (ranking used) | ortho (Eq. 3) would drop | "
             "ortho_official would drop |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        drops = [d for d in r["_drops"] if d]
        if not drops:
            continue
        for k in range(max(len(d) for d in drops)):
            per_seed = [d[k] for d in drops if len(d) > k]
            criterion = per_seed[0]["criterion"]
            for i, layer in enumerate(per_seed[0]["layers"]):
                used = np.mean([e["layers"][i]["dropped"] for e in per_seed])
                cells = {}
                for name in ("ortho", "ortho_official"):
                    if name == criterion:
                        cells[name] = f"{used:g}"
                    else:
                        v = [e["layers"][i].get("dropped_by", {}).get(name) for e in per_seed]
                        cells[name] = f"{np.mean(v):g}" if all(x is not None for x in v) else "–"
                lines.append(f"| {r['group']} | {r['row']} | {k + 1} | {layer['layer']} | {layer['filters']} | "
                             f"{used:g} ({criterion}) | {cells['ortho']} | {cells['ortho_official']} |")
    return "\n".join(lines) + "\n"


def plot_layer_drops(report: dict, path) -> bool:
    """Bars of the filters dropped per layer and round under both readings (the first RePr row
    of each group with drops); False when no row has drops."""
    from matplotlib.figure import Figure
    rows = [r for r in report["rows"] if any(r["_drops"])]
    if not rows:
        return False
    fig = Figure(figsize=(4.5 * len(rows), 3.8))
    axes = np.atleast_1d(fig.subplots(1, len(rows), squeeze=False)[0])
    for ax, r in zip(axes, rows):
        drops = [d for d in r["_drops"] if d]
        layers = [l["layer"] for l in drops[0][0]["layers"]]
        rounds = max(len(d) for d in drops)
        width = 0.8 / (2 * rounds)
        for k in range(rounds):
            per_seed = [d[k] for d in drops if len(d) > k]
            crit = per_seed[0]["criterion"]
            other = "ortho_official" if crit != "ortho_official" else "ortho"
            used = np.mean([[l["dropped"] for l in e["layers"]] for e in per_seed], 0)
            alt = np.mean([[l.get("dropped_by", {}).get(other, np.nan) for l in e["layers"]] for e in per_seed], 0)
            x = np.arange(len(layers)) + 2 * k * width
            ax.bar(x, used, width, label=f"{crit}, round {k + 1}")
            ax.bar(x + width, alt, width, hatch="//", alpha=0.6, label=f"{other}, round {k + 1}")
        ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2, layers)
        ax.set_title(f"{r['group']}-{r['row']}: filters dropped per layer")
        ax.set_ylabel("filters (mean over seeds)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def write_regime_sections(report: dict, out, extra_calibration=()) -> None:
    """Append the calibration, re-introduction and per-layer sections to ``out/study.md``
    and draw ``dropped-per-layer.png``."""
    from pathlib import Path
    out = Path(out)
    text = ["", "## Calibration of the paper preset's model (Standard, paper optimiser)", "",
            calibration_table(report, extra_calibration), "## Re-introductions (probe: eval mode on a fixed "
            "sample — the held-out images under the paper protocol, training images under reimpl; test: the test set)", "", reintroduction_table(report),
            "## Filters dropped per layer (both readings of the orthogonality metric)", "", layer_drop_table(report)]
    if plot_layer_drops(report, out / "dropped-per-layer.png"):
        text.append("![filters dropped per layer](dropped-per-layer.png)\n")
    with open(out / "study.md", "a") as f:
        f.write("\n".join(text))


__all__ = ["FIG1", "calibration_table", "fig1_distance", "layer_drop_table", "plot_layer_drops",
           "reintroduction_table", "write_regime_sections"]
