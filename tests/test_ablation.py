"""experiments/ablation.py end to end on a tiny data set: report files, resumption, errors."""
from __future__ import annotations

import json

import pytest

from conftest import load_script
from repr_jax.studies.ablation import PAPER_TABLE, ablation_rows

cli = load_script("experiments/ablation.py")

ROWS = ["standard", "ortho", "oracle", "ortho-zero-reinit"]


def _args(data, out, *extra):
    return ["--data-dir", str(data), "--out", str(out), "--train-limit", "256", "--test-limit", "128",
            "--epochs", "3", "--s1", "1", "--s2", "1", "--iterations", "1", "--seeds", "0",
            "--width", "4", "--batch-size", "64", "--lr", "0.01", "--criterion-batches", "2",
            "--quiet", *extra]


def test_ablation_end_to_end_then_report_only(tmp_path, tiny_cifar_dir, capsys):
    out = tmp_path / "abl"
    assert cli.main(_args(tiny_cifar_dir, out, "--rows", *ROWS)) == 0
    report = json.loads((out / "ablation.json").read_text())
    assert [r["row"] for r in report["rows"]] == ROWS
    assert all(r["final"]["n"] == 1 and 0 <= r["final"]["mean"] <= 100 for r in report["rows"])
    assert report["rows"][0]["paper"] == PAPER_TABLE["standard"]
    assert report["rows"][-1]["paper"] is None  # re-init variants have no paper number
    assert report["protocol"]["epochs"] == 3 and report["protocol"]["seeds"] == [0]
    corr = report["spearman_vs_oracle"]
    assert corr["global"]["oracle"] == pytest.approx(1.0)
    assert set(corr["global"]) == {r.criterion for r in ablation_rows() if r.criterion}
    md = (out / "ablation.md").read_text()
    assert "| Standard | 72.1 |" in md and "RePr: ortho, zero re-init" in md
    assert (out / "ablation.png").stat().st_size > 0
    events = [json.loads(l) for l in (out / "runs" / "oracle-seed0" / "pruning.jsonl").read_text().splitlines()]
    assert events[0]["criterion"] == "oracle"

    # Re-running reuses the finished runs: identical numbers, nothing retrained.
    mtime = (out / "runs" / "ortho-seed0" / "summary.json").stat().st_mtime
    assert cli.main(_args(tiny_cifar_dir, out, "--rows", *ROWS, "--report-only")) == 0
    again = json.loads((out / "ablation.json").read_text())
    assert [r["final"] for r in again["rows"]] == [r["final"] for r in report["rows"]]
    assert (out / "runs" / "ortho-seed0" / "summary.json").stat().st_mtime == mtime


def test_bad_rows_exit_2_with_one_line(tmp_path, tiny_cifar_dir, capsys):
    assert cli.main(_args(tiny_cifar_dir, tmp_path / "x", "--rows", "standard", "fisher")) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown ablation row(s) fisher; choose from standard, ortho" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()
    assert "bn_gamma" in {r.id for r in ablation_rows(batch_norm=True)}
    assert "bn_gamma" not in {r.id for r in ablation_rows(batch_norm=False)}


def test_ablation_population_runs_each_rows_seeds_together(tmp_path, tiny_cifar_dir, capsys):
    out = tmp_path / "pop"
    args = [a if a != "3" else "2" for a in _args(tiny_cifar_dir, out, "--rows", "standard", "--population")]
    args[args.index("--seeds") + 1:args.index("--seeds") + 2] = ["0", "1"]
    assert cli.main(args) == 0
    report = json.loads((out / "ablation.json").read_text())
    assert report["rows"][0]["final"]["n"] == 2
    summary = json.loads((out / "runs" / "standard-seed1" / "summary.json").read_text())
    assert summary["population"]["seeds"] == [0, 1]
    at = args.index("--seeds")
    bad = [*args[:at], "--seeds", "0", "2", *args[at + 3:], "--out", str(tmp_path / "bad")]
    assert cli.main(bad) == 2
    assert "--population needs consecutive seeds, got 0 2" in capsys.readouterr().err
