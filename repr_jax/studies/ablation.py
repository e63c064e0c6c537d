"""The criterion ablation's rows, its rank correlation with the oracle, and its report.

Rows follow the RePr paper's comparison of ranking criteria on C^3(32), CIFAR-10 (Prakash
et al. 2019, table of ranking criteria): Standard 72.1, Random 73.4, Activations 74.1, APoZ 74.3, Gradients
74.3, Taylor 74.3, Hessian 74.4, Weights 74.6, Oracle 76.0, Ortho 76.4 (test accuracy,
%). ``l2``, ``bn_gamma`` and the two re-initialisation variants have no paper number.
``experiments/ablation.py`` is the command; this module holds what it computes.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from repr_jax.criteria import CRITERIA, drop_priority, score_filters, scoring_batches
from repr_jax.report import stats as run_stats
from repr_jax.versions import machine

PAPER_TABLE = {"standard": 72.1, "random": 73.4, "activations": 74.1, "apoz": 74.3,
               "gradients": 74.3, "taylor": 74.3, "hessian": 74.4, "weights": 74.6,
               "oracle": 76.0, "ortho": 76.4}


@dataclasses.dataclass(frozen=True)
class Row:
    id: str
    method: str                   # "standard" or "repr"
    criterion: str | None = None
    reinit: str | None = None

    @property
    def label(self) -> str:
        if self.method == "standard":
            return "Standard"
        extra = "" if self.reinit == "orthogonal" else f", {self.reinit} re-init"
        return f"RePr: {self.criterion}{extra}"


def ablation_rows(batch_norm: bool = False, only=None) -> list[Row]:
    """Standard, RePr × every criterion (orthogonal re-init), RePr ortho × random/zero re-init.

    ``bn_gamma`` is included only with BatchNorm. ``only`` keeps the named rows (an unknown
    name raises ``ValueError`` listing the valid ones).
    """
    rows = [Row("standard", "standard")]
    rows += [Row(name, "repr", name, "orthogonal") for name in CRITERIA
             if batch_norm or not CRITERIA[name].needs_batch_norm]
    rows += [Row(f"ortho-{mode}-reinit", "repr", "ortho", mode) for mode in ("random", "zero")]
    if only:
        valid = {r.id for r in rows}
        unknown = [name for name in only if name not in valid]
        if unknown:
            raise ValueError(f"unknown ablation row(s) {', '.join(unknown)}; choose from {', '.join(r.id for r in rows)}")
        rows = [r for r in rows if r.id in only]
    return rows


def correlation_with_oracle(run_dir, data, batches: int) -> dict:
    """Spearman ρ between each criterion's drop order and ``oracle``'s, on one trained net.

    The network is the final checkpoint of ``run_dir`` (the Standard run of the first seed);
    every criterion scores the same ``batches`` of its training images. ρ is reported over
    all live filters at once (the global ranking) and as the mean of per-layer ρ.
    """
    from repr_jax.experiment import load_run_data, load_run_state  # run-directory I/O

    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").exists():
        return {"skipped": f"no finished run in {run_dir}"}
    from repr_jax.run_state import preprocessing
    config, state = load_run_state(run_dir)
    subset = load_run_data(config, data)
    x, y = scoring_batches(subset.train_x, subset.train_y, batches, config.batch_size,
                           seed=config.seed + 1)
    x, y = preprocessing(config, subset)(jnp.asarray(x)), jnp.asarray(y)   # criteria take model-ready inputs
    layers = state.layers
    names = [n for n, c in CRITERIA.items()
             if not c.needs_batch_norm or all(l.bn_path is not None for l in layers)]
    key = jax.random.key(config.seed)
    order = {n: drop_priority(n, score_filters(n, state, layers, key=key, images=x, labels=y))
             for n in names}
    flat = {n: np.concatenate([np.asarray(order[n][l.name]) for l in layers]) for n in names}
    out = {"network": str(run_dir), "filters": int(flat["oracle"].size), "global": {}, "per_layer_mean": {}}
    for n in names:
        out["global"][n] = float(stats.spearmanr(flat[n], flat["oracle"]).statistic)
        per = [stats.spearmanr(np.asarray(order[n][l.name]), np.asarray(order["oracle"][l.name])).statistic
               for l in layers]
        out["per_layer_mean"][n] = float(np.nanmean(per))
    return out


def _stats(values: list[float]) -> dict:
    """:func:`repr_jax.report.stats` in % of the accuracies that exist (NaN mean / std when none)."""
    s = run_stats([100 * x for x in values if x is not None])
    return s if s["n"] else {"mean": float("nan"), "std": float("nan"), "n": 0}


def summarize(rows, seeds, results: dict, protocol: dict, correlation: dict,
              wall_seconds: float) -> dict:
    """``ablation.json``'s content: protocol, machine, rows with per-seed and mean ± std."""
    table = []
    for row in rows:
        runs = {s: results[(row.id, s)] for s in seeds if (row.id, s) in results}
        table.append({
            "row": row.id, "label": row.label, "method": row.method, "criterion": row.criterion,
            "reinit": row.reinit, "paper": PAPER_TABLE.get(row.id if row.reinit in (None, "orthogonal") else ""),
            "final": _stats([r.get("final_test_accuracy") for r in runs.values()]),
            "best": _stats([r.get("best_test_accuracy") for r in runs.values()]),
            "diverged": sum(r.get("status") == "diverged" for r in runs.values()),
            "seeds": {str(s): {"final": r.get("final_test_accuracy"), "best": r.get("best_test_accuracy"),
                               "status": r.get("status", "completed"), "wall_seconds": r["wall_seconds"],
                               "devices": r.get("devices", [])}
                      for s, r in runs.items()},
        })
    trained_on = sorted({d for r in results.values() for d in r.get("devices", [])})
    return {"protocol": protocol, "trained_on": trained_on, "machine": machine(),
            "wall_seconds": wall_seconds, "rows": table, "spearman_vs_oracle": correlation}


def _run_minutes(report: dict) -> float:
    return sum(r["wall_seconds"] for row in report["rows"] for r in row["seeds"].values()) / 60


def _markdown(report: dict) -> str:
    p = report["protocol"]
    dataset = "CIFAR-10 (JPEG copy)" if "jpeg" in p["data_source"].lower() else "CIFAR-10"
    lines = [
        f"# RePr criterion ablation — {p['model']}, {dataset}", "",
        f"Data: `{p['data_source']}`.", "",
        f"Scale `{p['scale']}`: {p['train_limit'] or 'all'} training images, {p['epochs']} epochs, "
        f"S1={p['s1']}, S2={p['s2']}, N={p['iterations']}, p={p['drop_fraction']}, {p['ranking']} "
        f"ranking, SGD lr {p['lr']} cosine, batch {p['batch_size']}, seeds {p['seeds']}. "
        f"Trained on: {', '.join(report.get('trained_on') or ['?'])}; report and correlation "
        f"computed on: {', '.join(report['machine']['devices'])}. "
        f"Training time summed over runs {_run_minutes(report):.0f} min; wall time of this "
        f"invocation {report['wall_seconds'] / 60:.0f} min.", "",
        "| row | paper | final test acc. (mean ± std) | best (mean ± std) | Δ final vs Standard | seeds |",
        "| --- | --- | --- | --- | --- | --- |"]
    base = next((r["final"]["mean"] for r in report["rows"] if r["row"] == "standard"), None)
    for r in report["rows"]:
        f, b = r["final"], r["best"]
        delta = "" if base is None or r["row"] == "standard" or not f["n"] else f"{f['mean'] - base:+.2f}"
        paper = "–" if r["paper"] is None else f"{r['paper']:.1f}"
        lines.append(f"| {r['label']} | {paper} | {f['mean']:.2f} ± {f['std']:.2f} | "
                     f"{b['mean']:.2f} ± {b['std']:.2f} | {delta} | {f['n']}"
                     f"{' (+%d diverged)' % r['diverged'] if r.get('diverged') else ''} |")
    corr = report["spearman_vs_oracle"]
    if "global" in corr:
        lines += ["", f"Spearman rank correlation of each criterion's drop order with `oracle` on "
                  f"one trained network (`{Path(corr['network']).name}`, final epoch; "
                  f"{corr['filters']} filters; paper: ortho ↔ oracle 0.58):", "",
                  "| criterion | ρ (all filters, global) | ρ (mean per layer) |", "| --- | --- | --- |"]
        for n, rho in corr["global"].items():
            if n != "oracle":
                lines.append(f"| {n} | {rho:+.3f} | {corr['per_layer_mean'][n]:+.3f} |")
    elif corr:
        lines += ["", f"Spearman correlation not computed: {corr.get('skipped')}"]
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    rows = [r for r in report["rows"] if r["final"]["n"]]
    fig = Figure(figsize=(max(6, 0.6 * len(rows) + 2), 4))
    ax = fig.subplots()
    x = np.arange(len(rows))
    ax.bar(x, [r["final"]["mean"] for r in rows], yerr=[r["final"]["std"] for r in rows],
           capsize=3, label="ours (final, mean ± std)", color="tab:blue")
    paper = [(i, r["paper"]) for i, r in enumerate(rows) if r["paper"] is not None]
    if paper:
        ax.scatter(*zip(*paper), marker="_", s=300, color="tab:red", zorder=3, label="paper")
    ax.set_xticks(x, [r["row"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    lo = min([r["final"]["mean"] - r["final"]["std"] for r in rows] + [v for _, v in paper])
    ax.set_ylim(max(0, lo - 5), None)
    ax.set_title(f"RePr criteria, {report['protocol']['model']} ({report['protocol']['scale']} scale)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(report: dict, out: Path) -> None:
    """``ablation.json``, ``ablation.md`` and ``ablation.png`` into ``out``."""
    out = Path(out)
    (out / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "ablation.md").write_text(_markdown(report))
    _plot(report, out / "ablation.png")


__all__ = ["PAPER_TABLE", "Row", "ablation_rows", "correlation_with_oracle", "summarize",
           "write_report"]
