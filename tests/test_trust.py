"""What a user must be able to trust about a run directory: ``--step best`` is the best epoch,
one process writes a run at a time (real processes), a command that fails changes nothing,
damaged or edited files are named in one line, a run is evaluated only on its own data, and
Ctrl-C says where it stopped."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, load_script, synthetic_cifar, write_cifar10_pickles
from repr_jax import experiment
from repr_jax.checkpoint import Checkpointer
from repr_jax.evaluate import main as evaluate_main
from repr_jax.report import main as report_main

cli = load_script("experiments/cifar.py")
export_cli = load_script("experiments/export.py")


def _args(data, out, *extra):
    return ["--data-dir", str(data), "--out", str(out), "--quiet", "--width", "4", "--batch-size", "64",
            "--lr", "0.01", *extra]


def _snapshot(run: Path) -> dict:
    """Every file of a run directory with its SHA-256 (what "nothing changed" compares)."""
    return {p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def finished(tiny_cifar_dir, tmp_path_factory):
    """A completed 3-epoch run (kept as is; tests copy it before damaging anything)."""
    out = tmp_path_factory.mktemp("trust") / "run"
    assert cli.main(_args(tiny_cifar_dir, out, "--epochs", "3")) == 0
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / run.name
    shutil.copytree(run, target)
    return target


# ----------------------------------------------------------------------------- --step best
def test_step_best_is_the_earliest_epoch_of_the_best_accuracy(tiny_cifar_dir, tmp_path, monkeypatch, capsys):
    """Test accuracies 30 / 60 / 40 / 60 / 20 % (scripted) with one checkpoint kept: epoch 2 is
    the best (the earlier of a tie, as summary.json says), kept, and what --step best loads."""
    from repr_jax import epoch_loop
    scripted = iter([0.3, 0.6, 0.4, 0.6, 0.2])
    real = epoch_loop.evaluate
    monkeypatch.setattr(epoch_loop, "evaluate", lambda *a, **kw: {**real(*a, **kw), "accuracy": next(scripted)})
    out = tmp_path / "run"
    assert cli.main(_args(tiny_cifar_dir, out, "--epochs", "5", "--keep-checkpoints", "1")) == 0
    monkeypatch.setattr(epoch_loop, "evaluate", real)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_epoch"] == 2
    ckpt = Checkpointer(out / "checkpoints", keep=1)
    assert ckpt.epochs() == [2, 5] and ckpt.best_epoch() == 2
    ckpt.close()
    capsys.readouterr()
    results = {}
    for step in ("best", "2", "latest"):
        assert evaluate_main([str(out), "--step", step, "--json", str(tmp_path / f"{step}.json")]) == 0
        results[step] = json.loads((tmp_path / f"{step}.json").read_text())
    assert results["best"]["epoch"] == 2 and results["latest"]["epoch"] == 5
    assert results["best"] == {**results["2"]}
    _, state = experiment.load_run_state(out, "best")
    assert int(state.step) == results["2"]["step"]
    # checkpoints written before their metrics were stored: ranked by metrics.jsonl
    for metrics in (out / "checkpoints").glob("*/metrics"):
        shutil.rmtree(metrics)
    ckpt = Checkpointer(out / "checkpoints")
    assert ckpt.best_epoch() is None
    ckpt.close()
    assert experiment.load_run_state(out, "best")[1].step == state.step


# ----------------------------------------------------------------------------- one writer
def _spawn(args):
    return subprocess.Popen([sys.executable, str(ROOT / "experiments" / "cifar.py"), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc, timeout=300):
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)


@pytest.mark.slow
def test_one_process_writes_a_run_and_a_dead_holders_lock_is_taken_over(tmp_path, tiny_cifar_dir):
    """A live run's directory refuses a second writer (--resume, --resume --epochs N) in one
    line naming the holder, and is left exactly as it was; SIGKILL leaves a stale lock that
    the next --resume takes over; a run that ends removes its lock."""
    out = tmp_path / "run"
    args = _args(tiny_cifar_dir, out, "--epochs", "40", "--batch-size", "16")
    first = _spawn(args)
    _wait_for(lambda: (out / "metrics.jsonl").exists(), first)
    holder = json.loads((out / ".lock").read_text())
    assert holder["pid"] == first.pid and "cifar.py" in holder["command"]
    for extra in ([], ["--epochs", "60"]):
        second = subprocess.run([sys.executable, str(ROOT / "experiments" / "cifar.py"), *args, "--resume", *extra],
                                cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [second.stderr.strip()]
        assert f"is in use by PID {first.pid} on " in second.stderr
        assert json.loads((out / "config.json").read_text())["config"]["epochs"] == 40
    first.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    assert (out / ".lock").exists()                                 # stale: its holder is gone
    resumed = subprocess.run([sys.executable, str(ROOT / "experiments" / "cifar.py"),
                              *_args(tiny_cifar_dir, out, "--epochs", "40"), "--resume", "--epochs", "2"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode in (0, 2), resumed.stderr          # 2 only if it had passed epoch 2
    assert "in use" not in resumed.stderr
    assert not (out / ".lock").exists()


def test_the_lock_is_held_by_a_session_and_refused_in_process(tmp_path, tiny_cifar_dir, capsys):
    from repr_jax.run_lock import RunLock
    out = tmp_path / "run"
    assert cli.main(_args(tiny_cifar_dir, out, "--epochs", "1")) == 0
    assert not (out / ".lock").exists()
    with RunLock(out):
        before = _snapshot(out)
        assert cli.main(_args(tiny_cifar_dir, out, "--epochs", "2", "--resume")) == 2
        assert f"is in use by PID {os.getpid()}" in _one_line(capsys)
        assert _snapshot(out) == before
    (out / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0, "command": "x"}))
    assert cli.main(_args(tiny_cifar_dir, out, "--epochs", "2", "--resume")) == 2
    assert "another host" in _one_line(capsys)
    (out / ".lock").unlink()
    assert cli.main(_args(tiny_cifar_dir, out, "--epochs", "2", "--resume")) == 0


# ----------------------------------------------------------------------------- failures change nothing
def _empty_checkpoint_files(run: Path) -> None:
    for p in (run / "checkpoints").rglob("*"):
        if p.is_file() and "state" in p.parts and p.stat().st_size > 1000:
            p.write_bytes(b"")


def _damage_first_metrics_row(run: Path) -> None:
    rows = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join([rows[0][:-40] + "\n", *rows[1:]]))


@pytest.mark.parametrize("damage,message", [
    (_empty_checkpoint_files, "no usable checkpoint"),
    (_damage_first_metrics_row, "metrics.jsonl is damaged at line 1"),   # a torn *last* row is repaired
    (lambda run: (run / "metrics.jsonl").unlink(), "metrics.jsonl lacks rows of epochs 1-3"),
    (lambda run: (run / "summary.json").write_text("{\"status\": \"compl"), "summary.json is not a readable summary"),
])
def test_a_resume_that_fails_changes_nothing(finished, tmp_path, capsys, damage, message):
    run = _copy(finished, tmp_path)
    damage(run)
    before = _snapshot(run)
    assert cli.main(["--out", str(run), "--resume", "--epochs", "4", "--quiet"]) == 2
    assert message in _one_line(capsys)
    assert _snapshot(run) == before and not (run / "damaged_checkpoints").exists()


def test_a_deleted_pruning_log_is_named(tiny_cifar_dir, tmp_path, capsys):
    out = tmp_path / "repr"
    args = _args(tiny_cifar_dir, out, "--method", "repr", "--epochs", "3", "--repr-s1", "1", "--repr-s2", "1",
                 "--repr-iterations", "1")
    assert cli.main(args) == 0
    capsys.readouterr()
    (out / "pruning.jsonl").unlink()
    before = _snapshot(out)
    assert cli.main([*args, "--resume", "--epochs", "4"]) == 2
    assert "pruning.jsonl holds 0 events up to epoch 3, the checkpoint recorded 2" in _one_line(capsys)
    assert _snapshot(out) == before


@pytest.mark.parametrize("edit,message", [
    (lambda run: (run / "architecture.json").write_text("{\"model\": \"convnet\", \"conv"), "architecture.json is not"),
    (lambda run: (run / "architecture.json").write_text(json.dumps(
        {**json.loads((run / "architecture.json").read_text()), "name": "resnet7"})), "architecture.json and config.json"),
    (lambda run: (run / "architecture.json").write_text(json.dumps(
        {**json.loads((run / "architecture.json").read_text()), "options": {"width": 9}})), "architecture.json"),
    (lambda run: (run / "summary.json").write_text("{"), "summary.json is not a readable summary"),
])
def test_edited_or_damaged_run_files_are_one_line_for_evaluate_and_export(finished, tmp_path, capsys, edit, message):
    run = _copy(finished, tmp_path)
    edit(run)
    assert evaluate_main([str(run)]) == 2
    assert message in _one_line(capsys)
    assert export_cli.main([str(run), "--out", str(tmp_path / "small")]) == 2
    assert message in _one_line(capsys)


def test_report_names_a_damaged_file(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text()[:-30])
    assert report_main([str(run)]) == 2
    assert "metrics.jsonl is damaged at line 3" in _one_line(capsys)


def test_evaluate_refuses_other_data(finished, tmp_path, capsys):
    other = write_cifar10_pickles(tmp_path / "other", *synthetic_cifar(512, 128, seed=7)).parent
    assert evaluate_main([str(finished), "--data-dir", str(other)]) == 2
    assert "the data differs from the run" in _one_line(capsys)
    moved = write_cifar10_pickles(tmp_path / "moved", *synthetic_cifar(512, 128)).parent   # the same data
    assert evaluate_main([str(finished), "--data-dir", str(moved)]) == 0


# ----------------------------------------------------------------------------- settings from files
@pytest.mark.parametrize("value,message", [
    ({"epochs": "two"}, 'setting epochs must be an integer, got "two"'),
    ({"epochs": None}, "setting epochs must be an integer, got null"),
    ({"epochs": 2.5}, "setting epochs must be an integer, got 2.5"),
    ({"epochs": True}, "setting epochs must be an integer, got true"),
    ({"eval_batch_size": 50.0}, "setting eval_batch_size must be an integer, got 50.0"),
    ({"model": {"depth": "8"}}, 'setting model.depth must be an integer, got "8"'),
    ({"data": {"augment": "yes"}}, 'setting data.augment must be true or false, got "yes"'),
    ({"optim": {"step_epochs": [1, "x"]}}, 'setting optim.step_epochs[1] must be an integer, got "x"'),
    ({"epochs": 10**12}, "--epochs must be in 1..100,000"),
])
def test_settings_files_are_type_checked_and_bounded(tmp_path, tiny_cifar_dir, capsys, value, message):
    config = tmp_path / "settings.json"
    config.write_text(json.dumps(value))
    assert cli.main(_args(tiny_cifar_dir, tmp_path / "x", "--config", str(config))) == 2
    assert message in _one_line(capsys)
    assert not (tmp_path / "x").exists()


def test_an_edited_config_json_is_refused_on_resume_without_change(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["batch_size"] = 50.0
    (run / "config.json").write_text(json.dumps(saved))
    before = _snapshot(run)
    assert cli.main(["--out", str(run), "--resume", "--quiet"]) == 2
    assert "setting batch_size must be an integer, got 50.0" in _one_line(capsys)
    assert _snapshot(run) == before


# ----------------------------------------------------------------------------- Ctrl-C
@pytest.mark.slow
def test_ctrl_c_is_one_line_naming_the_epoch_and_resumes(tmp_path, tiny_cifar_dir):
    out = tmp_path / "run"
    args = _args(tiny_cifar_dir, out, "--epochs", "30", "--batch-size", "16")
    proc = _spawn(args)
    _wait_for(lambda: (out / "metrics.jsonl").exists(), proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    err = proc.stderr.read().strip()
    assert len(err.splitlines()) == 1, err
    match = re.fullmatch(r"error: interrupted (in|at the end of) epoch (\d+) of 30; (the newest checkpoint is of "
                         r"epoch (\d+)|no checkpoint yet); --out (.*) --resume continues", err)
    assert match and match[5] == str(out), err
    assert not (out / ".lock").exists()
    ckpt = Checkpointer(out / "checkpoints")
    assert ckpt.latest_epoch() == (int(match[4]) if match[4] else None)
    ckpt.close()
    assert cli.main([*args, "--resume"]) == 0


def test_a_teacher_or_init_from_without_checkpoints_is_one_line_and_nothing_else(tmp_path, tiny_cifar_dir, capsys):
    """A run that diverged in its first epoch has no checkpoint: naming it as ``init_from`` or
    ``kd.teacher`` exits 2 with one line — no orbax thread tracebacks after it (a real process:
    they were printed at interpreter exit)."""
    source = tmp_path / "diverged"
    assert cli.main(_args(tiny_cifar_dir, source, "--epochs", "2", "--lr", "1e12")) == 3
    capsys.readouterr()
    for setting in ("init_from", "kd.teacher"):
        proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "cifar.py"),
                               *_args(tiny_cifar_dir, tmp_path / setting, "--epochs", "1"), "--set",
                               f"{setting}={source}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr[-3000:]
        assert "has no checkpoint 'latest'" in proc.stderr
