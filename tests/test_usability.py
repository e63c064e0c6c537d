"""What a new user meets: RePr's per-drop console lines and warnings, the progress bar only on
a terminal, resuming from the saved settings and extending a run, evaluating a checkpoint,
and the run's figures (loss panel, re-init marks, dataset label, visible zero bars)."""
from __future__ import annotations

import json
import sys

import matplotlib.figure
import pytest

from conftest import load_script
from repr_jax import epoch_loop
from repr_jax.checkpoint import Checkpointer
from repr_jax.config import RunConfig
from repr_jax.evaluate import main as evaluate_main
from repr_jax.methods.repr_records import describe_record
from repr_jax.plots import dataset_label, plot_curves, plot_pruned_per_layer

cli = load_script("experiments/cifar.py")
TINY = ["--model", "convnet", "--depth", "2", "--width", "4", "--batch-size", "64", "--test-limit", "64"]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _drop(dropped, filters=4, complement_ok=True):
    layers = [{"layer": f"conv{i}", "filters": filters, "live_before": filters, "dropped": d,
               "live_after": filters - d} for i, d in enumerate(dropped)]
    drop = {"event": "drop", "epoch": 2, "round": 0, "criterion": "ortho", "dropped": sum(dropped),
            "live_before": filters * len(dropped), "layers": layers}
    reinit = {"event": "reinit", "epoch": 3, "round": 0, "reinit": "orthogonal", "revived": sum(dropped),
              "layers": [{"layer": r["layer"], "revived": r["dropped"], "complement_ok": complement_ok}
                         for r in layers]}
    return drop, reinit


def test_drop_and_reinit_lines_name_every_layer_and_warn_when_one_is_emptied():
    drop, reinit = _drop([3, 1])
    lines = describe_record(drop, "global")
    assert lines[0] == ("drop round 1 (before epoch 2, global ranking by ortho): 4 of 8 live filters — "
                        "conv0 3/4, conv1 1/4")
    assert lines[1].startswith("warning: drop round 1 leaves conv0 with 1 of 4 filters") and len(lines) == 2
    assert describe_record(_drop([2, 2])[0], "global")[1:] == []          # exactly half: no warning
    (line,) = describe_record(reinit, "global")
    assert line.endswith("conv0 3, conv1 1; the null space had room in every layer")
    assert "too small in conv0, conv1" in describe_record(_drop([3, 1], complement_ok=False)[1], "global")[0]


def test_structured_prune_lines():
    from repr_jax.methods import MethodContext, method_config
    from repr_jax.methods.li_l1 import LiL1
    from repr_jax.models import architecture, create_model
    options = dict(depth=2, width=4, batch_norm=True)
    method = LiL1(method_config("li-l1", fraction=0.5),
                  MethodContext.for_model(create_model("convnet", **options), architecture=architecture("convnet", **options)))
    record = {"event": "prune", "epoch": 1, "round": 1, "pruned": 3, "live": 5,
              "layers": {"conv0": {"live": 2, "pruned": 2}, "conv1": {"live": 3, "pruned": 1}}}
    assert method.describe(record) == ["li-l1 prune round 1 (before epoch 1): 3 filters pruned, 5 live — "
                                       "conv0 2, conv1 1"]
    nearly_empty = dict(record, layers={"conv0": {"live": 1, "pruned": 3}, "conv1": {"live": 4, "pruned": 0}})
    assert method.describe(nearly_empty)[-1] == ("warning: li-l1 leaves conv0 with 1 of 4 filters "
                                                 "(min_keep=1 is the floor)")
    resnet = LiL1(method_config("li-l1", fraction=0.5),
                  MethodContext.for_model(create_model("resnet8"), architecture=architecture("resnet8")))
    lines = resnet.describe(dict(record, layers={"stage1_block0/conv1": {"live": 8, "pruned": 8}}))
    assert lines[1].startswith("not pruned (tied to a residual sum") and "conv0" in lines[1] \
        and "stage1_block0/conv2" in lines[1] and "stage1_block0/conv1" not in lines[1]


def test_a_repr_run_prints_its_drops_and_reinits(tiny_cifar_dir, tmp_path, capsys):
    out = tmp_path / "repr"
    assert cli.main([*TINY, "--method", "repr", "--epochs", "3", "--repr-s1", "1", "--repr-s2", "1",
                     "--repr-iterations", "1", "--data-dir", str(tiny_cifar_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    drop, reinit = _lines(out / "pruning.jsonl")
    assert describe_record(drop, "global")[0] in printed.out
    assert describe_record(reinit, "global")[0] in printed.out
    assert "it/s" not in printed.err and "img/s]" not in printed.err     # no bar: stderr is not a terminal


def test_progress_bar_counts_images_and_only_on_a_terminal(monkeypatch):
    config = RunConfig(out="x", epochs=5, batch_size=32)
    assert epoch_loop.progress_bar(config, 0, "full", 10) is None     # pytest's stderr: not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = epoch_loop.progress_bar(config, 0, "full", 10)
    try:
        assert bar.total == 320 and bar.unit == "img" and bar.smoothing == 0.0
    finally:
        bar.close()
    import dataclasses
    assert epoch_loop.progress_bar(dataclasses.replace(config, quiet=True), 0, "full", 10) is None


def test_resume_from_saved_settings_extend_and_evaluate(tiny_cifar_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = Checkpointer.save

    def save_then_die(self, epoch, *a, **kw):
        real(self, epoch, *a, **kw)
        if epoch == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    assert cli.main([*TINY, "--epochs", "2", "--lr", "0.01", "--quiet", "--data-dir", str(tiny_cifar_dir),
                     "--out", str(out)]) == 130                    # Ctrl-C: one line, exit 130
    assert capsys.readouterr().err.strip() == (f"error: interrupted at the end of epoch 1 of 2; the newest checkpoint is of "
                                               f"epoch 1; --out {out} --resume continues")
    monkeypatch.setattr(Checkpointer, "save", real)
    # a different setting is named, saved vs given; nothing is touched
    assert cli.main(["--out", str(out), "--resume", "--quiet", "--lr", "0.5"]) == 2
    assert "optim.learning_rate: saved 0.01, given 0.5" in capsys.readouterr().err
    # --out + --resume alone: the saved settings (data directory included)
    assert cli.main(["--out", str(out), "--resume", "--quiet"]) == 0
    assert f"resuming from epoch 1 ({out})" in capsys.readouterr().err
    assert [m["epoch"] for m in _lines(out / "metrics.jsonl")] == [1, 2]
    assert cli.main(["--out", str(out), "--resume", "--quiet"]) == 2
    assert "--resume --epochs N with a larger N" in capsys.readouterr().err
    # extend the finished run to 3 epochs
    assert cli.main(["--out", str(out), "--resume", "--quiet", "--epochs", "3"]) == 0
    assert "extending" in capsys.readouterr().err
    assert [m["epoch"] for m in _lines(out / "metrics.jsonl")] == [1, 2, 3]
    assert json.loads((out / "config.json").read_text())["config"]["epochs"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["status"] == "completed"
    # evaluate the best checkpoint: the accuracy training measured for that epoch
    target = tmp_path / "eval.json"
    assert evaluate_main([str(out), "--step", "best", "--json", str(target)]) == 0
    result = json.loads(target.read_text())
    assert result["test_accuracy"] == pytest.approx(summary["best_test_accuracy"], abs=1e-9)
    assert result["epoch"] == summary["best_epoch"] and result["test_images"] == 64
    assert "test accuracy" in capsys.readouterr().out
    assert evaluate_main([str(out), "--step", "9"]) == 2
    assert "no checkpoint 9" in capsys.readouterr().err
    assert evaluate_main([str(tmp_path / "nothing")]) == 2


def test_figures_have_a_loss_panel_reinit_marks_and_visible_zero_bars(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **kw: saved.append(fig))
    metrics = [{"epoch": e, "phase": "sub" if e == 2 else "full", "train_accuracy": 0.5, "test_accuracy": 0.4,
                "train_loss": 1.0, "test_loss": 1.2} for e in (1, 2, 3)]
    plot_curves(metrics, tmp_path / "c.png", "convnet repr (CIFAR-10 (JPEG copy))", reinit_epochs=[2])
    acc, loss = saved[0].axes
    assert acc.get_ylabel() == "accuracy (%)" and loss.get_ylabel() == "loss"
    assert [line.get_xdata()[0] for line in acc.lines if line.get_label() == "re-init"] == [2.5]
    assert all(float(t).is_integer() for t in acc.get_xticks())
    drop, _ = _drop([0, 2])
    plot_pruned_per_layer([drop], tmp_path / "p.png")
    texts = [t.get_text() for t in saved[1].axes[0].texts]
    assert texts == ["0", "2"]
    assert dataset_label("cifar10", "../shared/datasets/cifar10-jpeg.tar.gz (cached)") == "CIFAR-10 (JPEG copy)"
    assert dataset_label("cifar100", "tfds") == "CIFAR-100"


def test_help_and_package_import_load_only_what_they_need():
    """``import repr_jax`` starts no JAX; ``cifar.py --help`` loads JAX/Flax for the settings
    list but not the training stack (Orbax, Matplotlib, the runner); every public name resolves."""
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    probe = ("import sys, runpy; sys.argv = ['cifar.py', '--help']\n"
             "try:\n    runpy.run_path(%r, run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('LOADED', *sorted(m for m in ('jax', 'orbax.checkpoint', 'matplotlib', "
             "'repr_jax.experiment') if m in sys.modules))") % str(root / "experiments" / "cifar.py")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "--method" in out and out.strip().splitlines()[-1] == "LOADED jax"
    bare = subprocess.run([sys.executable, "-c", "import sys, repr_jax; print('jax' in sys.modules)"],
                          capture_output=True, text=True, check=True).stdout
    assert bare.strip() == "False"
    import repr_jax
    for name in repr_jax.__all__:
        assert getattr(repr_jax, name) is not None, name
    assert repr_jax.select_drops is __import__("repr_jax.ranking", fromlist=["x"]).select_drops
    with pytest.raises(AttributeError):
        repr_jax.no_such_name
