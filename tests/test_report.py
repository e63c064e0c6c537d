"""``python -m repr_jax.report``: grouping by settings minus the seed, mean ± std and Welch's
t-test against numpy references, the markdown / json / png it writes, and its errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from repr_jax import report as rep


def _run(root, name, seed, final, best, *, lr=0.1, method="standard", status="completed", init_from="",
         epochs=3):
    d = root / f"{name}-seed{seed}"
    d.mkdir(parents=True)
    config = {"out": str(d), "seed": seed, "seeds": 1, "epochs": epochs, "quiet": True, "init_from": init_from,
              "optim": {"learning_rate": lr, "step_epochs": [2]}, "method": {"name": method}}
    (d / "config.json").write_text(json.dumps({"config": config, "data_fingerprint": "x"}))
    curve = np.linspace(0.2, final, epochs)
    (d / "metrics.jsonl").write_text("".join(json.dumps(
        {"epoch": e + 1, "phase": "sub" if e == 1 else "full", "test_accuracy": float(curve[e]),
         "train_loss": 2.0 - e * 0.1}) + "\n" for e in range(epochs)))
    if status:
        (d / "summary.json").write_text(json.dumps(
            {"status": status, "final_test_accuracy": final, "best_test_accuracy": best, "epochs": epochs,
             "wall_seconds": 60.0 * (seed + 1)}))
    return d


def test_groups_means_and_welch_against_numpy(tmp_path):
    a_final, b_final = [0.50, 0.54, 0.52], [0.45, 0.47]
    dirs = [_run(tmp_path, "repr", s, f, f + 0.01, method="repr", init_from=f"runs/base-seed{s}")
            for s, f in enumerate(a_final)]
    dirs += [_run(tmp_path, "standard", s, f, f + 0.02) for s, f in enumerate(b_final)]
    dirs.append(_run(tmp_path, "standard", 7, 0.9, 0.9, status=None))          # not finished: listed only
    result = rep.report(dirs, tmp_path / "out", ("repr", "standard"))
    rows = {r["label"]: r for r in result["rows"]}
    assert set(rows) == {"repr", "standard"}     # init_from naming the seed does not split the group
    a = 100 * np.array(a_final)
    assert rows["repr"]["final"]["mean"] == pytest.approx(a.mean())
    assert rows["repr"]["final"]["std"] == pytest.approx(a.std(ddof=1))
    assert rows["repr"]["best"]["mean"] == pytest.approx(a.mean() + 1)
    assert rows["standard"]["seeds"] == [0, 1] and rows["standard"]["incomplete"] == [str(tmp_path / "standard-seed7")]
    assert rows["repr"]["wall_minutes"]["mean"] == pytest.approx(2.0)
    b = 100 * np.array(b_final)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    c = result["comparison"]
    assert c["t"] == pytest.approx(t) and c["p"] == pytest.approx(2 * sps.t.sf(abs(t), dof))
    assert c["delta"] == pytest.approx(a.mean() - b.mean())
    text = (tmp_path / "out" / "report.md").read_text()
    assert f"| repr | 3 | {a.mean():.2f} ± {a.std(ddof=1):.2f} |" in text
    assert "Not completed (left out)" in text and "Welch's t" in text
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["label"] for r in saved["rows"]] == ["repr", "standard"]
    assert (tmp_path / "out" / "curves.png").stat().st_size > 10_000


def test_equal_settings_share_a_group_and_different_ones_are_told_apart(tmp_path):
    dirs = [_run(tmp_path, "x", 0, 0.5, 0.5, lr=0.1), _run(tmp_path, "x", 1, 0.6, 0.6, lr=0.1),
            _run(tmp_path / "other", "x", 0, 0.4, 0.4, lr=0.05),     # same name, other settings
            _run(tmp_path, "y", 0, 0.7, 0.7, lr=0.2), _run(tmp_path / "z", "z", 0, 0.7, 0.7, lr=0.2)]
    groups = rep.group_runs([rep.load_run(d) for d in dirs])
    assert [(g["label"], len(g["runs"])) for g in groups] == [
        ("x [optim.learning_rate=0.1]", 2), ("x [optim.learning_rate=0.05]", 1), ("y = z", 2)]
    by_name = rep.group_runs([rep.load_run(d) for d in dirs], by="name")
    assert [(g["label"], len(g["runs"])) for g in by_name] == [("x", 3), ("y", 1), ("z", 1)]


def test_cli_prints_the_table_and_refuses_bad_input(tmp_path, capsys):
    for s in (0, 1):
        _run(tmp_path / "study", "standard", s, 0.5 + s / 10, 0.6)
    assert rep.main([str(tmp_path / "study"), "--title", "Study"]) == 0   # a folder of runs
    out = capsys.readouterr().out
    assert out.startswith("# Study") and "| standard | 2 | 55.00 ± 7.07 |" in out
    (tmp_path / "empty").mkdir()
    assert rep.main([str(tmp_path / "empty")]) == 2
    assert "no run directory" in capsys.readouterr().err
    assert rep.main([str(tmp_path / "study"), "--compare", "standard", "nope"]) == 2
    assert "no group named nope" in capsys.readouterr().err


def test_the_ablation_table_from_its_committed_run_directories():
    """The report tool over ``experiments/results/ablation-paper-h100/runs`` (summaries written
    before ``status`` existed) gives every row of the study's own table."""
    from pathlib import Path
    study = Path(__file__).resolve().parents[1] / "experiments" / "results" / "ablation-paper-h100"
    saved = json.loads((study / "ablation.json").read_text())
    rows = {r["label"]: r for r in rep.report(sorted((study / "runs").iterdir()))["rows"]}
    assert len(rows) == len(saved["rows"])
    for row in saved["rows"]:
        ours = rows[row["row"]]
        assert ours["final"]["n"] == row["final"]["n"]
        assert ours["final"]["mean"] == pytest.approx(row["final"]["mean"]) and \
            ours["final"]["std"] == pytest.approx(row["final"]["std"])
        assert ours["best"]["mean"] == pytest.approx(row["best"]["mean"])
