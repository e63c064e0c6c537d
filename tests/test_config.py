"""Config composition: --set reaches every setting, old flags are its aliases, config files,
and run directories written before the method framework still load and resume."""
from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from hypothesis import given, strategies as st

from conftest import ROOT, interrupted_at_checkpoint, load_script
from repr_jax.config import RunConfig, RunError, apply_overrides, parse_value
from repr_jax.experiment import load_run_state

cli = load_script("experiments/cifar.py")
TIMING = {"images_per_second", "epoch_seconds", "elapsed_seconds"}


def _base(data, out):
    return ["--data-dir", str(data), "--out", str(out), "--quiet", "--width", "8", "--batch-size", "64"]


def _settings(out):
    return {k: v for k, v in json.loads((out / "config.json").read_text())["config"].items() if k != "out"}


def _metrics(out):
    return [{k: v for k, v in json.loads(l).items() if k not in TIMING}
            for l in (out / "metrics.jsonl").read_text().splitlines()]


def test_old_flags_and_set_give_the_same_run(tmp_path, tiny_cifar_dir):
    flags = ["--method", "repr", "--epochs", "2", "--repr-s1", "1", "--repr-s2", "1", "--repr-iterations", "1",
             "--repr-drop", "0.25", "--repr-per-layer", "--lr", "0.02", "--schedule", "step",
             "--step-epochs", "1"]
    sets = ["--method", "repr", "--set", "epochs=2", "--set", "repr.s1=1", "--set", "repr.s2=1",
            "--set", "repr.iterations=1", "--set", "repr.drop_fraction=0.25", "--set", "repr.per_layer=true",
            "--set", "optim.lr=0.02", "--set", "optim.schedule=step", "--set", "optim.step_epochs=1"]
    assert cli.main(_base(tiny_cifar_dir, tmp_path / "flags") + flags) == 0
    assert cli.main(_base(tiny_cifar_dir, tmp_path / "sets") + sets) == 0
    assert _settings(tmp_path / "flags") == _settings(tmp_path / "sets")
    assert _metrics(tmp_path / "flags") == _metrics(tmp_path / "sets")
    saved = _settings(tmp_path / "sets")
    assert saved["method"] == {"name": "repr", "s1": 1, "s2": 1, "iterations": 1, "drop_fraction": 0.25,
                               "per_layer": True, "exclude_first": False, "min_keep": 1, "criterion": "ortho",
                               "reinit": "orthogonal", "criterion_batches": 4, "drop_mode": "zero",
                               "gain": 1.0, "rounding": "nearest", "outgoing_scale": 1.0,
                               "outgoing": "keep", "probe_batches": 8}
    assert "repr" not in saved and saved["optim"]["step_epochs"] == [1]


def test_config_file_then_set(tmp_path, tiny_cifar_dir):
    (tmp_path / "c.json").write_text(json.dumps({"epochs": 7, "method": {"name": "repr", "s1": 2},
                                                 "optim": {"learning_rate": 0.3}, "model": {"width": 6}}))
    args = cli.build_parser("x").parse_args(["--config", str(tmp_path / "c.json"), "--set", "repr.s2=3",
                                             "--width", "5", "--out", "o"])
    config = cli.config_from_args(args)
    assert (config.epochs, config.method.s1, config.method.s2, config.model.width) == (7, 2, 3, 5)
    assert config.optim.learning_rate == 0.3            # set in the file: no per-model default
    # a run's own config.json works as --config: the same settings
    assert cli.main(_base(tiny_cifar_dir, tmp_path / "a") + ["--epochs", "1", "--lr", "0.01"]) == 0
    args = cli.build_parser("x").parse_args(["--config", str(tmp_path / "a" / "config.json"), "--out", "b"])
    assert cli.config_from_args(args).semantic() == RunConfig.from_dict(_settings(tmp_path / "a") | {"out": "a"}).semantic()


@pytest.mark.parametrize("args,message", [
    (["--set", "repr.s1=3"], "repr.s1 is a setting of method 'repr'; this run's method is 'standard'"),
    (["--set", "optim.learnrate=0.1"], "unknown setting 'optim.learnrate'"),
    (["--set", "epochs=ten"], "bad value for epochs: 'ten'"),
    (["--set", "model.batch_norm=maybe"], "bad value for model.batch_norm"),
    (["--set", "epochs"], "--set expects KEY=VALUE"),
    (["--set", "lasso.l1=2"], "no section 'lasso'"),
    (["--method", "prune-everything"], "unknown method 'prune-everything'; choose from"),
    (["--config", "/nonexistent.json"], "cannot read config file"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path, tiny_cifar_dir, capsys, args, message):
    assert cli.main(_base(tiny_cifar_dir, tmp_path / "x") + args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_repr_flags_without_repr_are_ignored_with_a_warning(tmp_path, tiny_cifar_dir, capsys):
    assert cli.main(_base(tiny_cifar_dir, tmp_path / "s") + ["--epochs", "1", "--repr-s1", "5"]) == 0
    assert "repr.s1 ignored" in capsys.readouterr().err
    assert _settings(tmp_path / "s")["method"] == {"name": "standard"}


@given(st.integers(-10**9, 10**9), st.floats(allow_nan=False, allow_infinity=False),
       st.lists(st.integers(0, 500), max_size=5))
def test_parse_value_round_trips(i, x, items):
    assert parse_value(int, str(i)) == i
    assert parse_value(float, repr(x)) == x
    assert parse_value(tuple[int, ...], ",".join(map(str, items))) == tuple(items)
    assert parse_value(tuple[int, ...], json.dumps(items)) == tuple(items)
    assert parse_value(int | None, "none") is None and parse_value(int | None, str(i)) == i


def test_committed_old_run_configs_load():
    """Every config.json in experiments/results loads; those written before the framework
    (flat layout, ``"method": "repr"``) keep every setting they hold."""
    paths = sorted((ROOT / "experiments" / "results").rglob("config.json"))
    old = [p for p in paths if isinstance(json.loads(p.read_text())["config"]["method"], str)]
    assert len(old) > 20
    for path in paths:
        RunConfig.from_dict(json.loads(path.read_text())["config"]).validate()
    for path in old:
        saved = json.loads(path.read_text())["config"]
        config = RunConfig.from_dict(saved)
        assert config.method.name == saved["method"] and config.model.name == saved["model"]
        assert config.model.width == saved["convnet_width"] and config.data.dir == saved["data_dir"]
        if saved["method"] == "repr":    # the oldest predate the criterion fields: defaults
            fields = dataclasses.asdict(config.method)
            assert {k: fields[k] for k in saved["repr"]} == saved["repr"]
    assert apply_overrides(json.loads(old[0].read_text())["config"], ["seed=5"])["seed"] == 5


def _to_legacy(run_dir):
    """Rewrite a run directory as the code before the method framework wrote it: the old
    config.json layout (without eval_batch_size, standing for a field added later), no
    architecture.json, and checkpoints whose state has a top-level ``snapshot`` (the whole
    params), no ``method_*`` fields and no checksums."""
    c = json.loads((run_dir / "config.json").read_text())
    new = c["config"]
    c["config"] = {
        "out": new["out"], "model": new["model"]["name"], "dataset": new["data"]["dataset"],
        "data_dir": new["data"]["dir"], "method": new["method"]["name"], "epochs": new["epochs"],
        "batch_size": new["batch_size"], "seed": new["seed"], "optim": new["optim"],
        "repr": {k: v for k, v in new["method"].items() if k != "name"}, "ortho_loss": new["ortho_loss"],
        "convnet_depth": new["model"]["depth"], "convnet_width": new["model"]["width"],
        "convnet_batch_norm": new["model"]["batch_norm"], "convnet_variant": new["model"]["variant"],
        "val_split": new["data"]["val_split"], "train_limit": new["data"]["train_limit"],
        "test_limit": new["data"]["test_limit"], "keep_checkpoints": new["keep_checkpoints"],
        "resume": False, "quiet": True}
    (run_dir / "config.json").write_text(json.dumps(c))
    (run_dir / "architecture.json").unlink()
    checkpointer = ocp.StandardCheckpointer()
    for step in (p for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()):
        state = checkpointer.restore(step / "state")
        snapshot = jax.tree_util.tree_map(np.array, state["params"])
        for name, node in state["method_state"]["snapshot"].items():
            snapshot[name]["kernel"] = np.asarray(node["kernel"])
        legacy = {k: v for k, v in state.items() if not k.startswith("method_")}
        legacy["snapshot"] = snapshot
        checkpointer.save((step / "legacy").absolute(), legacy)
        checkpointer.wait_until_finished()
        shutil.rmtree(step / "state")
        (step / "legacy").rename(step / "state")
        extra = json.loads((step / "extra" / "metadata").read_text())
        del extra["checksums"]                             # written since; old checkpoints have none
        (step / "extra" / "metadata").write_text(json.dumps(extra))
    checkpointer.close()


def test_a_pre_framework_run_directory_resumes_identically(tmp_path, tiny_cifar_dir):
    args = ["--method", "repr", "--epochs", "3", "--repr-s1", "1", "--repr-s2", "1", "--repr-iterations", "1",
            "--lr", "0.01", "--eval-batch-size", "500"]
    assert cli.main(_base(tiny_cifar_dir, tmp_path / "full") + args) == 0
    with interrupted_at_checkpoint(2):   # after the sub-network epoch and the re-initialisation
        cli.main(_base(tiny_cifar_dir, tmp_path / "old") + args)
    _to_legacy(tmp_path / "old")
    config, state = load_run_state(tmp_path / "old")          # old layout restores
    assert config.method.name == "repr" and config.eval_batch_size == 500
    assert set(state.method_state) == {"snapshot"}
    assert cli.main(_base(tiny_cifar_dir, tmp_path / "old") + args + ["--resume"]) == 0
    assert _metrics(tmp_path / "old") == _metrics(tmp_path / "full")
    assert (tmp_path / "old" / "architecture.json").exists()


def test_resume_names_what_differs(tmp_path, tiny_cifar_dir, capsys):
    assert cli.main(_base(tiny_cifar_dir, tmp_path / "r") + ["--epochs", "1", "--lr", "0.01"]) == 0
    capsys.readouterr()
    assert cli.main(_base(tiny_cifar_dir, tmp_path / "r") + ["--epochs", "1", "--lr", "0.02", "--resume"]) == 2
    assert "settings differ: optim.learning_rate: saved 0.01, given 0.02" in capsys.readouterr().err
    with pytest.raises(RunError, match="unknown model setting"):
        RunConfig.from_dict({"out": "x", "model": {"name": "convnet", "widht": 3}})
