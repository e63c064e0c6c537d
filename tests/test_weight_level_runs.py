"""Weight-level methods end to end through the CLI: ``han`` (prunes per iteration, CSR report
in the run directory and summary), ``dsd`` (its three phases in the logs), DropConnect and
Dropout heads, and knowledge distillation from a teacher run (term logged, teacher never
checkpointed, an interrupted run resumes bit-identically, bad teachers refused)."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from conftest import load_script
from repr_jax.checkpoint import Checkpointer
from repr_jax.compress.csr import csr_decode, csr_encode
from repr_jax.experiment import load_run_state
from repr_jax.masks import apply_masks

cli = load_script("experiments/cifar.py")
TINY = ["--model", "convnet", "--depth", "2", "--width", "4", "--batch-norm", "--batch-size", "64",
        "--test-limit", "64", "--quiet"]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def han_run(tmp_path_factory, tiny_cifar_dir):
    """A tiny han run in the weight study's layout (``<study>/han-seed0``)."""
    out = tmp_path_factory.mktemp("study") / "han-seed0"
    assert cli.main([*TINY, "--method", "han", "--epochs", "3", "--data-dir", str(tiny_cifar_dir),
                     "--out", str(out), "--set", "han.train_epochs=1", "--set", "han.quality=0.6,1.0"]) == 0
    return out


def test_han_iterates_and_writes_the_csr_report(han_run):
    out = han_run
    events = _lines(out / "pruning.jsonl")
    assert [e["quality"] for e in events] == [0.6, 1.0] and [e["epoch"] for e in events] == [2, 3]
    densities = [e["layers"]["head"]["density"] for e in events]
    assert 1.0 > densities[0] > densities[1]
    assert [m["phase"] for m in _lines(out / "metrics.jsonl")] == ["train", "retrain", "retrain"]
    report = json.loads((out / "storage.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["storage"] == report["total"] and report["total"]["param_ratio"] > 1.5
    _, state = load_run_state(out)
    head = np.asarray(apply_masks(state.params, state.masks)["head"]["kernel"])
    layer = next(l for l in report["layers"] if l["name"] == "head")
    enc = csr_encode(head.T, 5)
    assert layer["csr_bytes"] == enc.nbytes and layer["nonzero"] == np.count_nonzero(head)
    np.testing.assert_array_equal(csr_decode(enc), head.T)
    assert "| head | dense (5-bit)" in (out / "storage.md").read_text()


def test_dsd_runs_its_three_phases(tiny_cifar_dir, tmp_path):
    out = tmp_path / "dsd"
    assert cli.main([*TINY, "--method", "dsd", "--epochs", "3", "--data-dir", str(tiny_cifar_dir),
                     "--out", str(out), "--set", "dsd.sparsity=0.5"]) == 0
    assert [m["phase"] for m in _lines(out / "metrics.jsonl")] == ["dense", "sparse", "redense"]
    events = _lines(out / "pruning.jsonl")
    assert [e["event"] for e in events] == ["sparsify", "redense"]
    assert events[0]["density"]["conv1"] == pytest.approx(0.5, abs=0.01)
    _, state = load_run_state(out)
    assert all(np.asarray(m).all() for m in jax.tree_util.tree_leaves(state.masks))   # dense again


@pytest.mark.parametrize("head", [["model.hidden=16", "model.dropconnect=0.5"],
                                  ["model.hidden=16", "model.dropout=0.5"]])
def test_regularised_heads_train(head, tiny_cifar_dir, tmp_path):
    out = tmp_path / "head"
    args = [*TINY, "--epochs", "1", "--data-dir", str(tiny_cifar_dir), "--out", str(out),
            "--set", "model.variant=pool2"]
    assert cli.main([*args, *[a for s in head for a in ("--set", s)]]) == 0
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["options"]["hidden"] == 16


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_cifar_dir):
    out = tmp_path_factory.mktemp("kd") / "teacher"
    assert cli.main([*TINY, "--width", "8", "--epochs", "1", "--data-dir", str(tiny_cifar_dir), "--out", str(out)]) == 0
    return out


def test_kd_adds_its_term_resumes_bit_identically_and_never_checkpoints_the_teacher(
        teacher, tiny_cifar_dir, tmp_path, monkeypatch):
    args = [*TINY, "--epochs", "2", "--data-dir", str(tiny_cifar_dir), "--set", f"kd.teacher={teacher}",
            "--set", "kd.temperature=3", "--set", "kd.alpha=0.7"]
    full = tmp_path / "full"
    assert cli.main([*args, "--out", str(full)]) == 0
    metrics = _lines(full / "metrics.jsonl")
    assert all("kd" in m["loss_terms"] for m in metrics)
    saved = Checkpointer(full / "checkpoints").manager.item_metadata(2)["state"].tree
    assert "teacher" not in saved

    real = Checkpointer.save

    def save_then_die(self, epoch, *a, **kw):
        real(self, epoch, *a, **kw)
        if epoch == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    cut = tmp_path / "cut"
    assert cli.main([*args, "--out", str(cut)]) == 130      # Ctrl-C after the epoch-1 checkpoint
    monkeypatch.setattr(Checkpointer, "save", real)
    assert cli.main([*args, "--out", str(cut), "--resume"]) == 0
    _, a = load_run_state(full)
    _, b = load_run_state(cut)
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    plain = tmp_path / "plain"      # without the teacher the run differs
    assert cli.main([*TINY, "--epochs", "1", "--data-dir", str(tiny_cifar_dir), "--out", str(plain)]) == 0
    assert "loss_terms" not in _lines(plain / "metrics.jsonl")[0]


def test_kd_refuses_bad_settings_before_writing(teacher, tiny_cifar_dir, tmp_path, capsys):
    out = tmp_path / "bad"
    base = [*TINY, "--epochs", "1", "--data-dir", str(tiny_cifar_dir), "--out", str(out)]
    for sets, message in ((["kd.teacher=" + str(tmp_path / "nowhere")], "no repr-jax run there"),
                          ([f"kd.teacher={teacher}", "kd.alpha=1.5"], "kd.alpha must be in [0, 1]"),
                          ([f"kd.teacher={teacher}", "kd.temperature=0"], "kd.temperature must be"),
                          ([f"kd.teacher={teacher}", "--dataset", "cifar100"], "predicts 10 classes")):
        extra = [a for s in sets for a in (("--set", s) if "=" in s else (s,))]
        code = cli.main([*base, *extra])
        assert code == 2, sets
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_weight_study_arguments_are_valid_runs_and_the_report_reads_han(han_run, tmp_path):
    import shutil

    from repr_jax.cli import build_parser, config_from_args
    from repr_jax.studies.weight_study import SCALES, collect, han_iterations, markdown, stages
    scale = SCALES["cpu"]
    first, second = stages(scale, tmp_path, "DATA")
    assert len(first) == 2 * (1 + 3 + 3 + 1 + 2) and len(second) == 2 * (1 + 2)
    parser = build_parser("")
    configs = {c.out.split("/")[-1]: c for c in (config_from_args(parser.parse_args(b())) for b in first + second)}
    for c in configs.values():
        c.validate()
    assert configs["han-seed1"].init_from.endswith("han-base-seed1") and configs["han-seed1"].method.name == "han"
    assert configs["kd-kd-repr-seed0"].kd.teacher.endswith("kd-teacher-seed0")
    assert configs["kd-kd-repr-seed0"].protocol == "paper" and configs["kd-kd-repr-seed0"].method.name == "repr"
    assert configs["drop-dropconnect-seed0"].model.dropconnect == 0.5
    assert configs["dsd-dsd-seed0"].epochs == configs["dsd-standard-seed0"].epochs == configs["dsd-repr-seed0"].epochs

    run = han_run
    rows = han_iterations(run)
    storage = json.loads((run / "storage.json").read_text())
    sizes = {l["name"]: l["params"] for l in storage["layers"]}
    events = _lines(run / "pruning.jsonl")
    metrics = _lines(run / "metrics.jsonl")
    last = events[-1]["layers"]
    kept = sum(last[n]["density"] * p for n, p in sizes.items()) / sum(sizes.values())
    assert rows[-1]["kept"] == pytest.approx(kept)
    assert [r["accuracy"] for r in rows] == [100 * m["test_accuracy"] for m in metrics[1:]]   # epoch 1: dense
    assert rows[0]["compression"] < rows[-1]["compression"]
    shutil.copytree(run, tmp_path / "han-seed0")
    shutil.copytree(run, tmp_path / "han-seed1")
    report = collect(tmp_path, scale)
    assert report["han"][1]["compression"]["mean"] == pytest.approx(1 / kept) and report["han"][1]["compression"]["n"] == 2
    text = markdown(report, "# t")
    assert "| 2 | 1.0 |" in text and "## DSD vs Standard vs RePr" in text
