"""Failure behaviour of a run: divergence stops it and keeps the last finite state; bad input
is one line and exit 2 before anything is written or loaded; disk faults and damaged
checkpoints never lose a run; a resumed run sees the same data; a SIGKILL at any point
resumes bit-identically."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, interrupted_at_checkpoint, load_script, synthetic_cifar, write_cifar10_pickles
from repr_jax.checkpoint import Checkpointer
from repr_jax.errors import EXIT_DIVERGED, NonFiniteError
from repr_jax.experiment import load_run_state, state_is_finite

cli = load_script("experiments/cifar.py")
TIMING = {"images_per_second", "epoch_seconds", "elapsed_seconds"}


def _args(data, out, *extra):
    return ["--data-dir", str(data), "--out", str(out), "--quiet", "--width", "4", "--batch-size", "64",
            "--lr", "0.01", *extra]


def _strict_rows(path: Path) -> list[dict]:
    def refuse(name):
        raise ValueError(f"non-JSON constant {name}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def _metrics(out: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in _strict_rows(out / "metrics.jsonl")]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ----------------------------------------------------------------------------- 1. divergence
def test_divergence_stops_with_exit_3_and_keeps_the_last_finite_checkpoint(tmp_path, tiny_cifar_dir, capsys):
    out = tmp_path / "run"      # epoch 1 at lr 0.01, then ×1e9: epoch 2 diverges
    code = cli.main(_args(tiny_cifar_dir, out, "--epochs", "4", "--schedule", "step", "--step-epochs", "1",
                          "--step-factor", "1e9"))
    assert code == EXIT_DIVERGED == 3
    err = _one_line(capsys)
    assert "diverged at epoch 2" in err and "kept the checkpoint of epoch 1" in err
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["diverged_epoch"], summary["last_finite_checkpoint"]) == ("diverged", 2, 1)
    rows = _strict_rows(out / "metrics.jsonl")          # strict JSON: NaN is null plus a flag
    assert rows[1]["train_loss"] is None and "train_loss" in rows[1]["non_finite"]
    assert "non_finite" not in rows[0]
    _, latest = load_run_state(out)                      # the latest kept checkpoint is finite
    _, finite = load_run_state(out, "finite")
    assert int(latest.step) == int(finite.step) == 8 and state_is_finite(latest)
    assert cli.main(_args(tiny_cifar_dir, out, "--epochs", "4", "--schedule", "step", "--step-epochs", "1",
                          "--step-factor", "1e9", "--resume")) == 2
    assert "diverged at epoch 2" in capsys.readouterr().err


def test_a_normal_run_says_completed(tmp_path, tiny_cifar_dir):
    assert cli.main(_args(tiny_cifar_dir, tmp_path / "ok", "--epochs", "1")) == 0
    assert json.loads((tmp_path / "ok" / "summary.json").read_text())["status"] == "completed"


def test_criteria_refuse_non_finite_scores():
    import jax.numpy as jnp
    import optax
    from repr_jax import MethodContext, RePr, ReprConfig, create_model, create_train_state, make_optimizer, OptimConfig
    model = create_model("convnet", depth=2, width=4)
    method = RePr(ReprConfig(s1=1, s2=1, iterations=1, criterion="weights"), MethodContext.for_model(model))
    state = create_train_state(model, make_optimizer(OptimConfig(), optax.constant_schedule(0.1)), 0, method=method)
    state = state.replace(params=jax.tree_util.tree_map(lambda p: p.at[(0,) * p.ndim].set(jnp.nan), state.params))
    _, (event,) = method.before_epoch(state, 1)   # the transition itself stays traceable
    with pytest.raises(NonFiniteError, match="criterion weights scores of conv0 before epoch 2"):
        method.check_event(event)


# ----------------------------------------------------------------------------- 4. settings first
@pytest.mark.parametrize("args,message", [
    (["--lr", "nan"], "--lr must be finite and > 0, got nan"),
    (["--lr", "inf"], "--lr must be finite and > 0, got inf"),
    (["--lr", "-1"], "--lr must be finite and > 0, got -1.0"),
    (["--momentum", "1.5"], "--momentum must be in [0, 1)"),
    (["--weight-decay", "-0.1"], "--weight-decay must be finite and >= 0"),
    (["--test-limit", "0"], "--test-limit must be >= 1, got 0"),
    (["--train-limit", "-5"], "--train-limit must be >= 1, got -5"),
    (["--eval-batch-size", "0"], "--eval-batch-size must be in 1..1,048,576, got 0"),
    (["--eval-batch-size", "-3"], "--eval-batch-size must be in 1..1,048,576, got -3"),
    (["--keep-checkpoints", "-1"], "--keep-checkpoints must be in 1..10,000, got -1"),
    (["--seed", "-1"], "--seed must be in 0..2147483647, got -1"),
    (["--width", "0"], "--depth must be in 1..1000 and --width in 1..65536"),
    (["--method", "repr", "--repr-min-keep", "-1"], "--repr-min-keep must be >= 0, got -1"),
    (["--method", "repr", "--repr-min-keep", "100"], "--repr-min-keep 100 leaves nothing to drop"),
    (["--method", "repr", "--repr-drop", "nan"], "--repr-drop must be in [0, 1), got nan"),
    (["--method", "repr", "--repr-criterion", "bn_gamma"], "needs a BatchNorm after every prunable conv"),
])
def test_bad_settings_fail_before_data_is_read_or_anything_written(tmp_path, capsys, args, message):
    extra = ["--repr-s1", "1", "--repr-s2", "1", "--repr-iterations", "1"] if "repr" in args else []
    code = cli.main(_args(tmp_path / "no-such-data", tmp_path / "x", "--epochs", "2", *extra, *args))
    err = _one_line(capsys)
    assert code == 2 and message in err and "does not exist" not in err   # before the data
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- 5. --out and disk
def test_out_under_a_file_and_a_config_that_is_not_an_object(tmp_path, tiny_cifar_dir, capsys):
    (tmp_path / "file").write_text("x")
    assert cli.main(_args(tiny_cifar_dir, tmp_path / "file" / "run", "--epochs", "1")) == 2
    assert "is a file, not a directory" in _one_line(capsys)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text("[1, 2]")
    assert cli.main(_args(tiny_cifar_dir, tmp_path / "odd", "--epochs", "1", "--resume")) == 2
    assert "is not a repr-jax config" in _one_line(capsys)
    assert cli.main(_args(tiny_cifar_dir, tmp_path / "missing", "--epochs", "1", "--resume")) == 2
    assert "holds no run to resume" in _one_line(capsys)
    assert not (tmp_path / "missing").exists()


def test_disk_full_at_start_leaves_nothing_that_blocks_a_retry(tmp_path, tiny_cifar_dir, capsys, monkeypatch):
    real = Path.write_text

    def full(self, *a, **kw):
        if self.name.startswith("config"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "run"
    assert cli.main(_args(tiny_cifar_dir, out, "--epochs", "1")) == 2
    assert "cannot create run directory" in (err := _one_line(capsys)) and "No space left" in err
    assert not out.exists() and not list(tmp_path.glob(".run.partial*"))
    monkeypatch.setattr(Path, "write_text", real)
    assert cli.main(_args(tiny_cifar_dir, out, "--epochs", "1")) == 0


# What orbax raises when tensorstore runs out of space (seen on a full tmpfs), after its
# threads have printed a dozen tracebacks to file descriptor 2.
TENSORSTORE_FULL = ValueError('RESOURCE_EXHAUSTED: Error writing "params.head.kernel/0.0" in OCDBT database '
                              'at local file "/x/3.orbax-checkpoint-tmp/": Failed writing: "/x/d/7390": '
                              "Failed to write 276653 bytes to file 17: No space left on device "
                              "[os_error_code='28']")


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), TENSORSTORE_FULL],
                         ids=["oserror", "tensorstore"])
def test_disk_full_during_a_checkpoint_is_one_line_and_resumable(tmp_path, tiny_cifar_dir, capfd, monkeypatch,
                                                                 error):
    args = ["--epochs", "3"]
    assert cli.main(_args(tiny_cifar_dir, tmp_path / "full", *args)) == 0
    real = ocp.CheckpointManager.save

    def full(self, step, *a, **kw):
        if step == 2:
            os.write(2, b"Traceback (most recent call last):\nRuntimeError: Event loop is closed\n")
            raise error
        return real(self, step, *a, **kw)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    out = tmp_path / "run"
    capfd.readouterr()
    assert cli.main(_args(tiny_cifar_dir, out, *args)) == 2
    err = _one_line(capfd)
    assert "cannot write the checkpoint of epoch 2" in err and "No space left on device" in err
    assert "--resume continues from epoch 1" in err
    monkeypatch.setattr(ocp.CheckpointManager, "save", real)
    assert cli.main(_args(tiny_cifar_dir, out, *args, "--resume")) == 0
    assert _metrics(out) == _metrics(tmp_path / "full")


# ----------------------------------------------------------------------------- 6. damaged checkpoint
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_cifar_dir, capsys):
    args = ["--epochs", "3"]
    assert cli.main(_args(tiny_cifar_dir, tmp_path / "full", *args)) == 0
    out = tmp_path / "run"
    with interrupted_at_checkpoint(2):
        cli.main(_args(tiny_cifar_dir, out, *args))
    data_files = [p for p in (out / "checkpoints" / "2" / "state").rglob("*") if p.is_file() and p.stat().st_size > 1000]
    data_files[0].write_bytes(b"")                       # one emptied data file
    capsys.readouterr()
    assert cli.main(_args(tiny_cifar_dir, out, *args, "--resume")) == 0
    err = capsys.readouterr().err
    assert "the checkpoint of epoch 2 could not be restored" in err and "resuming from epoch 1" in err
    assert _metrics(out) == _metrics(tmp_path / "full")
    assert (out / "damaged_checkpoints" / "2").is_dir()


# ----------------------------------------------------------------------------- 7. same data
def test_resume_refuses_other_data_but_not_a_moved_copy(tmp_path, tiny_cifar_dir, capsys):
    out = tmp_path / "run"
    with interrupted_at_checkpoint(1):
        cli.main(_args(tiny_cifar_dir, out, "--epochs", "2"))
    other = write_cifar10_pickles(tmp_path / "other", *synthetic_cifar(512, 128, seed=9)).parent
    capsys.readouterr()
    assert cli.main(_args(other, out, "--epochs", "2", "--resume")) == 2
    assert "the data differs from the run" in _one_line(capsys)
    moved = shutil.copytree(tiny_cifar_dir, tmp_path / "moved")
    assert cli.main(_args(moved, out, "--epochs", "2", "--resume")) == 0


# ----------------------------------------------------------------------------- SIGKILL drills
_KILL_DURING_CHECKPOINT = """
import os, signal, sys, threading, time
import repr_jax.checkpoint as ck
target, real = int(os.environ["KILL_CHECKPOINT"]), ck.Checkpointer.save
def save(self, epoch, *args, **kwargs):
    if epoch == target:   # kill as soon as orbax's temporary directory for this epoch appears
        def watch():
            while True:
                if any(p.name.startswith(f"{epoch}.") and "tmp" in p.name for p in self.directory.iterdir()):
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0.0002)
        threading.Thread(target=watch, daemon=True).start()
    return real(self, epoch, *args, **kwargs)
ck.Checkpointer.save = save
import runpy
sys.argv = ["cifar.py"] + sys.argv[1:]
runpy.run_path(os.path.join(os.environ["REPO"], "experiments", "cifar.py"), run_name="__main__")
"""


def _subprocess(args, **env):
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, "REPO": str(ROOT), **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _final_states_equal(a: Path, b: Path) -> None:
    _, x = load_run_state(a)
    _, y = load_run_state(b)
    for p, q in zip(jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y)):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))


@pytest.mark.slow
def test_sigkill_mid_epoch_and_mid_checkpoint_resume_bit_identically(tmp_path, tiny_cifar_dir):
    args = _args(tiny_cifar_dir, None, "--method", "repr", "--epochs", "3", "--repr-s1", "1", "--repr-s2", "1",
                 "--repr-iterations", "1", "--batch-size", "16")
    with_out = lambda out: [a if a != "None" else str(out) for a in map(str, args)]
    assert cli.main(with_out(tmp_path / "full")) == 0

    # two runs at once (the full run above filled the compile cache they read):
    # mid-epoch: SIGKILL as soon as epoch 1's metrics line exists (epoch 2 is being trained);
    # mid-checkpoint: SIGKILL while orbax writes the checkpoint of epoch 2 (after the re-init)
    proc = _subprocess([str(ROOT / "experiments" / "cifar.py"), *with_out(tmp_path / "epoch")])
    in_checkpoint = _subprocess(["-c", _KILL_DURING_CHECKPOINT, *with_out(tmp_path / "ckpt")], KILL_CHECKPOINT="2")
    metrics = tmp_path / "epoch" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1) and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (tmp_path / "epoch" / "summary.json").exists()
    assert in_checkpoint.wait(timeout=300) == -signal.SIGKILL, in_checkpoint.stderr.read()[-2000:]
    assert Checkpointer(tmp_path / "ckpt" / "checkpoints").epochs() == [1]   # epoch 2 never finalised

    resumes = {name: _subprocess([str(ROOT / "experiments" / "cifar.py"), *with_out(tmp_path / name), "--resume"])
               for name in ("epoch", "ckpt")}
    for name, resume in resumes.items():
        assert resume.wait(timeout=300) == 0, resume.stderr.read()[-2000:]
        assert _metrics(tmp_path / name) == _metrics(tmp_path / "full")
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["train_step_compilations_this_process"] == 1     # restored state: no second compile
        assert (tmp_path / name / "pruning.jsonl").read_text() == (tmp_path / "full" / "pruning.jsonl").read_text()
        _final_states_equal(tmp_path / name, tmp_path / "full")
