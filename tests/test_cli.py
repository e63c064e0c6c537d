"""The experiments/cifar.py CLI: end-to-end run directory, bad input → exit 2, no overwrite."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED_CIFAR, load_script, requires_shared_cifar

cli = load_script("experiments/cifar.py")

RUN_FILES = {"config.json", "architecture.json", "metrics.jsonl", "summary.json", "curves.png", "checkpoints"}


def _fast(data_dir, out, *extra):
    return ["--data-dir", str(data_dir), "--out", str(out), "--quiet", "--width", "8",
            "--batch-size", "64", "--lr", "0.01", *extra]


@requires_shared_cifar()
def test_end_to_end_on_a_slice_of_the_jpeg_copy(tmp_path):
    out = tmp_path / "run"
    code = cli.main(_fast(SHARED_CIFAR, out, "--epochs", "1", "--train-limit", "512", "--test-limit", "256"))
    assert code == 0
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    for key in ("final_test_accuracy", "best_test_accuracy", "epochs", "wall_seconds", "method",
                "model", "dataset"):
        assert key in summary
    assert summary["train_images"] == 512 and summary["test_images"] == 256
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["seed"] == 0 and config["versions"]["jax"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_repr_run_writes_pruning_log_and_plot(tmp_path, tiny_cifar_dir):
    out = tmp_path / "repr"
    code = cli.main(_fast(tiny_cifar_dir, out, "--method", "repr", "--epochs", "5", "--repr-s1", "1",
                          "--repr-s2", "1", "--repr-iterations", "2", "--repr-drop", "0.3"))
    assert code == 0
    assert (out / "pruned_per_layer.png").exists()
    events = [json.loads(l) for l in (out / "pruning.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["drop", "reinit", "drop", "reinit"]
    assert [e["epoch"] for e in events] == [2, 2, 4, 4]  # 1-based: sub-network epochs 2 and 4
    total = 8 * 3
    assert events[0]["dropped"] == round(0.3 * total)  # global: round(p · live filters)
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in metrics] == ["full", "sub", "full", "sub", "full"]
    assert [m["live_filters"] for m in metrics] == [24, 17, 24, 17, 24]  # during each epoch
    summary = json.loads((out / "summary.json").read_text())
    assert summary["drops"] == 2 and summary["train_step_compilations_this_process"] >= 1


def test_repr_criterion_and_reinit_are_recorded(tmp_path, tiny_cifar_dir):
    out = tmp_path / "taylor"
    code = cli.main(_fast(tiny_cifar_dir, out, "--method", "repr", "--epochs", "3", "--repr-s1", "1",
                          "--repr-s2", "1", "--repr-iterations", "1", "--repr-criterion", "taylor",
                          "--repr-reinit", "random", "--repr-criterion-batches", "2"))
    assert code == 0
    config = json.loads((out / "config.json").read_text())["config"]["method"]
    assert (config["name"], config["criterion"], config["reinit"], config["criterion_batches"]) == (
        "repr", "taylor", "random", 2)
    drop, reinit = [json.loads(l) for l in (out / "pruning.jsonl").read_text().splitlines()]
    assert (drop["criterion"], drop["drop_first"], reinit["reinit"]) == ("taylor", "low", "random")


@pytest.mark.parametrize("args,message", [
    (["--method", "repr", "--epochs", "3", "--repr-s1", "1", "--repr-s2", "1", "--repr-iterations", "1",
      "--repr-criterion", "bn_gamma"], "needs a BatchNorm after every prunable conv"),
    (["--method", "repr", "--epochs", "3", "--repr-s1", "1", "--repr-s2", "1", "--repr-iterations", "1",
      "--repr-criterion", "oracle", "--repr-criterion-batches", "50"], "criterion data needs 50×64"),
    (["--model", "resnet7"], "unknown model"),
    (["--epochs", "-3"], "--epochs must be in 1..100,000, got -3"),
    (["--epochs", "1000000000"], "--epochs must be in 1..100,000"),
    (["--seed", "99999999999999999999"], "--seed must be in 0..2147483647"),
    (["--seeds", "3", "--seed", str(2**31 - 2)], "reaches seed 2147483648"),
    (["--method", "repr", "--epochs", "5"], "needs at least"),
    (["--method", "prune-everything"], "unknown method"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path, tiny_cifar_dir, capsys, args, message):
    code = cli.main(_fast(tiny_cifar_dir, tmp_path / "x", *args))
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_corrupt_data_exits_2(tmp_path, capsys):
    bad = tmp_path / "cifar.tar.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    code = cli.main(_fast(bad, tmp_path / "x", "--epochs", "1"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot read archive" in err and len(err.splitlines()) == 1


def test_existing_run_is_never_overwritten(tmp_path, tiny_cifar_dir, capsys):
    out = tmp_path / "run"
    assert cli.main(_fast(tiny_cifar_dir, out, "--epochs", "1")) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert cli.main(_fast(tiny_cifar_dir, out, "--epochs", "1")) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main(_fast(tiny_cifar_dir, out, "--epochs", "1", "--seed", "5", "--resume")) == 2
    assert "holds a different run (settings differ: seed: saved 0, given 5)" in capsys.readouterr().err
    assert cli.main(_fast(tiny_cifar_dir, out, "--epochs", "1", "--resume")) == 2
    assert "already complete" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert before == after
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert cli.main(_fast(tiny_cifar_dir, tmp_path / "other", "--epochs", "1")) == 2
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_help_documents_every_flag_method_and_setting():
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "cifar.py"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--model", "--method", "--repr-s1", "--repr-s2", "--repr-iterations", "--repr-drop",
                 "--ortho-loss", "--resume", "--data-dir", "--quiet", "--repr-criterion",
                 "--repr-reinit", "--repr-criterion-batches", "taylor", "oracle", "zero", "--set",
                 "--config", "--batch-size", "--eval-batch-size", "--momentum", "--optimizer",
                 "--schedule", "--warmup-epochs", "--step-factor", "--nesterov", "--dataset"):
        assert flag in out
    assert "repr: RePr" in out and "standard: plain training" in out           # methods listed
    for key in ("repr.s1 (int, default 20)", "optim.learning_rate (float", "model.width (int, default 32)",
                "data.train_limit", "ortho_loss (float"):                       # every --set key
        assert key in out
    assert "[--set repr.s1; default 20]" in " ".join(out.split())                # flags are aliases
    for entry in " ".join(out.split()).split(" --")[1:]:                         # one default each
        assert not ("(default:" in entry and "; default" in entry), entry
    assert "data.dir (str | None):" in out and "[--set data.dir]" in " ".join(out.split())
    study = subprocess.run([sys.executable, str(ROOT / "experiments" / "weight_level.py"), "--help"],
                           capture_output=True, text=True, check=True).stdout
    assert "(default: None)" not in study and "(default: 1)" in study and study.count("(default: runs/") == 1
