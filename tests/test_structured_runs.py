"""Structured methods end to end through the CLI: prune → fine-tune → export in the run
directory (logits equal, checkpoint restores), starting from a trained run (init_from),
Scratch training of the exported architecture (model.channels), the sensitivity analysis
and the compression study's table."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_script
from repr_jax.compress import load_exported
from repr_jax.experiment import load_run_state

cli = load_script("experiments/cifar.py")
TINY = ["--model", "convnet", "--depth", "2", "--width", "8", "--batch-norm", "--batch-size", "64",
        "--test-limit", "64", "--quiet"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_cifar_dir):
    out = tmp_path_factory.mktemp("structured") / "base"
    assert cli.main([*TINY, "--epochs", "2", "--data-dir", str(tiny_cifar_dir), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("method,sets", [
    ("li-l1", ["li-l1.strategy=greedy", "li-l1.ratios=conv0=0.25"]),
    ("slimming", ["slimming.prune_epoch=1", "slimming.fraction=0.4"]),
    ("trimming", ["trimming.rounds=2", "trimming.retrain_epochs=1", "trimming.fraction=0.25",
                  "trimming.finetune_lr=0.01"]),
    ("channel-pruning", ["channel-pruning.images=64"]),
])
def test_method_prunes_finetunes_and_exports(method, sets, base_run, tiny_cifar_dir, tmp_path):
    out = tmp_path / method
    start = [] if method == "slimming" else ["--set", f"init_from={base_run}"]
    code = cli.main([*TINY, "--method", method, "--epochs", "2", "--data-dir", str(tiny_cifar_dir),
                     "--out", str(out), *start, *[a for s in sets for a in ("--set", s)]])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    report = json.loads((out / "export" / "export.json").read_text())
    assert summary["export"]["params_after"] == report["params_after"] < report["params_before"]
    assert report["flops_after"] < report["flops_before"] and report["max_abs_logit_difference"] < 1e-4
    assert report["inference_images_per_second_after"] > 0
    events = [json.loads(line) for line in (out / "pruning.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["prune"] * (2 if method == "trimming" else 1)
    _, state = load_run_state(out)      # the exported checkpoint restores and computes the masked model
    model, variables, arch = load_exported(out / "export")
    assert {k: arch["channels"].get(k, 8) for k in report["channels"]} == report["channels"]
    from repr_jax.compress.export import logits
    from repr_jax.masks import apply_masks
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 32, 32, 3)), jnp.float32)
    big = logits(json.loads((out / "architecture.json").read_text()),
                 {"params": apply_masks(state.params, state.masks), "batch_stats": state.batch_stats}, x)
    np.testing.assert_allclose(model.apply(variables, x, train=False), big, atol=1e-4)
    if method != "slimming":   # init_from: the prune scored the trained base network
        _, base = load_run_state(base_run)
        first = next(iter(events[0]["layers"]))
        assert events[0]["layers"][first]["live"] < 8
        if method == "li-l1":
            from repr_jax.methods.li_l1 import l1_scores
            k = base.params["conv0"]["kernel"]
            assert events[0]["layers"]["conv0"]["score_max"] == pytest.approx(float(jnp.max(l1_scores(k))), rel=1e-5)


def test_scratch_training_of_an_exported_architecture(base_run, tiny_cifar_dir, tmp_path):
    out = tmp_path / "scratch"
    assert cli.main([*TINY, "--epochs", "1", "--data-dir", str(tiny_cifar_dir), "--out", str(out),
                     "--set", "model.channels=conv0=3,conv1=5"]) == 0
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["channels"] == {"conv0": 3, "conv1": 5}
    _, state = load_run_state(out)
    assert state.params["conv1"]["kernel"].shape == (3, 3, 3, 5)


@pytest.mark.parametrize("argv,message", [
    (["--set", "model.channels=conv0"], "not NAME=WIDTH"),
    (["--set", "model.channels=conv9=3"], "cannot resize"),
    (["--method", "li-l1", "--set", "init_from=/no/such/run"], "no repr-jax run there"),
    (["--method", "li-l1", "--set", "li-l1.preset=resnet56-b"], "is for --model resnet56"),
    (["--method", "li-l1", "--set", "li-l1.ratios=conv7=0.5"], "matches no prunable layer"),
    (["--method", "trimming", "--set", "trimming.rounds=2"], "retrain_epochs >= 1"),
    (["--method", "slimming", "--set", "slimming.prune_epoch=3"], "--epochs must be at least 4"),
])
def test_bad_structured_settings_exit_2_before_anything_is_written(argv, message, tmp_path, capsys, tiny_cifar_dir):
    out = tmp_path / "run"
    assert cli.main([*TINY, "--epochs", "3", "--data-dir", str(tiny_cifar_dir), "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_sensitivity_curves_and_picks(base_run, tmp_path):
    from repr_jax.studies.sensitivity import analyse, pick_ratios
    curves = {"unpruned": 0.80, "a": [0.80, 0.795, 0.70, 0.80], "b": [0.70, 0.60, 0.5, 0.4]}
    assert pick_ratios(curves, (0.1, 0.2, 0.3, 0.4), max_drop=0.01) == {"a": 0.2, "b": 0.0}
    report = analyse(base_run, tmp_path / "sens", ratios=(0.5, 0.875))
    assert set(report["curves"]) == {"conv0", "conv1"} and (tmp_path / "sens" / "sensitivity.png").exists()
    # reference: prune conv1's 7 smallest-L1 filters by hand and evaluate
    from repr_jax.experiment import load_run_data
    from repr_jax.masks import drop_filters, live_filters
    from repr_jax.run_dir import read_config
    from repr_jax.train import evaluate
    config, state = load_run_state(base_run)
    data = load_run_data(read_config(base_run))
    k = np.abs(np.asarray(state.params["conv1"]["kernel"])).sum(axis=(0, 1, 2))
    live = dict(live_filters(state.masks, state.layers))
    keep = np.zeros(8, np.float32)
    keep[np.argmax(k)] = 1
    live["conv1"] = jnp.asarray(keep)
    acc = evaluate(drop_filters(state, state.layers, live), jnp.asarray(data.test_x), jnp.asarray(data.test_y))["accuracy"]
    assert report["curves"]["conv1"][1] == pytest.approx(acc)


def test_compress_study_table_from_run_directories(tmp_path):
    from repr_jax.studies.compress_study import SCALES, collect, markdown, scratch_arguments
    scale = SCALES["cpu"]
    for name, acc in [("base", 0.8), ("li-l1", 0.75), ("li-l1-scratch-e", 0.7)]:
        for seed, delta in zip(scale.seeds, (0.0, 0.02)):
            d = tmp_path / f"{name}-seed{seed}"
            d.mkdir()
            (d / "summary.json").write_text(json.dumps({"status": "completed", "final_test_accuracy": acc + delta,
                                                        "best_test_accuracy": acc + delta + 0.01, "epochs": 3,
                                                        "wall_seconds": 60.0}))
            if name == "li-l1":
                (d / "export").mkdir()
                (d / "export" / "export.json").write_text(json.dumps({
                    "params_before": 100, "params_after": 60, "flops_before": 1000, "flops_after": 400,
                    "flops_ratio": 2.5, "inference_speedup": 1.8, "max_abs_logit_difference": 1e-6,
                    "channels": {"conv0": 16, "stage1_block0/conv1": 8, "stage1_block0/conv2": 16}}))
                (d / "export" / "architecture.json").write_text(json.dumps({
                    "name": "resnet20", "num_classes": 10, "options": {}, "channels": {"stage1_block0/conv1": 8}}))
    report = collect(tmp_path, scale, ["li-l1"])
    rows = {r["row"]: r for r in report["rows"]}
    assert rows["unpruned"]["final_error"]["mean"] == pytest.approx(19.0)
    assert rows["li-l1"]["final_error"]["std"] == pytest.approx(np.std([25.0, 23.0], ddof=1))
    assert rows["li-l1"]["flops_reduction"] == pytest.approx(0.6) and "li-l1-scratch-b" not in rows
    assert "| li-l1 | 2 | 24.00 ± 1.41 |" in markdown(report, "# t")
    b = scratch_arguments(scale, "li-l1", "b", 0, tmp_path, None)
    assert b[b.index("--epochs") + 1] == str(round(3 * 2.5)) and "model.channels=stage1_block0/conv1=8" in b
    from repr_jax.cli import build_parser, config_from_args   # a ResNet accepts the spec
    config = config_from_args(build_parser("").parse_args(b))
    assert config.architecture()["channels"] == {"stage1_block0/conv1": 8}
    from repr_jax.experiment import build_model
    build_model(config).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_methods_that_export_one_architecture_share_its_scratch_runs(tmp_path):
    from repr_jax.studies.compress_study import SCALES, collect, markdown, scratch_arguments, scratch_twin
    scale = SCALES["cpu"]
    widths = {"li-l1": 8, "trimming": 8, "slimming": 4}     # trimming = li-l1's architecture
    for name, acc in [("base", 0.8), *((m, 0.7) for m in widths), ("li-l1-scratch-e", 0.6),
                      ("slimming-scratch-e", 0.5)]:
        for seed in scale.seeds:
            d = tmp_path / f"{name}-seed{seed}"
            d.mkdir()
            (d / "summary.json").write_text(json.dumps({"status": "completed", "final_test_accuracy": acc + seed / 100,
                                                        "best_test_accuracy": acc, "epochs": 3, "wall_seconds": 6.0}))
            if name in widths:
                (d / "export").mkdir()
                (d / "export" / "export.json").write_text(json.dumps({
                    "params_before": 100, "params_after": 60, "flops_before": 1000, "flops_after": 400,
                    "flops_ratio": 2.5, "inference_speedup": 1.5, "max_abs_logit_difference": 0.0}))
                (d / "export" / "architecture.json").write_text(json.dumps({
                    "name": "resnet20", "channels": {"stage1_block0/conv1": widths[name]}}))
    methods = ["li-l1", "slimming", "trimming"]
    assert [scratch_twin(tmp_path, methods, m, 0) for m in methods] == [None, None, "li-l1"]
    assert scratch_twin(tmp_path, ["trimming", "li-l1"], "trimming", 0) is None      # the first one trains
    for m in methods:
        args = scratch_arguments(scale, m, "e", 0, tmp_path, None, methods)
        assert (args is None) == (m == "trimming")
    assert scratch_arguments(scale, "trimming", "e", 0, tmp_path, None) is not None   # no list: no sharing
    report = collect(tmp_path, scale, methods)
    rows = {r["row"]: r for r in report["rows"]}
    assert rows["trimming-scratch-e"]["same_architecture_as"] == ["li-l1-scratch-e"]
    assert rows["trimming-scratch-e"]["final_error"] == rows["li-l1-scratch-e"]["final_error"]
    assert rows["trimming-scratch-e"]["final_error"]["mean"] == pytest.approx(100 * (1 - 0.605))
    assert "same_architecture_as" not in rows["slimming-scratch-e"] and "same_architecture_as" not in rows["li-l1-scratch-e"]
    assert "| trimming-scratch-e (= li-l1-scratch-e) | 2 |" in markdown(report, "# t")
