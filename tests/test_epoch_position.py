"""Checkpoints inside an epoch (``--checkpoint-every N``, repr_jax.epoch_position): a run
killed between two positions resumes at the next batch and ends bit-identical to the run
trained straight — every array of its last checkpoint, every metrics row and event — also
with another number of reading threads, for data streamed from disk and data in memory, and
with a method whose epoch began with a drop (the drop is not done again)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, interrupted_at_checkpoint, load_script, process_env
from test_data_sources import _covering, write_folder

SCRIPT = str(ROOT / "experiments" / "cifar.py")
STREAMED = ["--dataset", "folder", "--model", "convnet", "--width", "8", "--batch-size", "16", "--quiet",
            "--set", "data.stream=true", "--epochs", "2"]   # 70 images: 4 steps an epoch
# run the CLI, killed by SIGKILL (no handler, no cleanup) right after the position at step argv[1] is written
KILLED_AT = """
import os, runpy, signal, sys
from repr_jax.checkpoint import Checkpointer
real, at = Checkpointer.save, int(sys.argv.pop(1))
def save(self, step, *args, **kwargs):
    real(self, step, *args, **kwargs)
    if step == at and "checkpoints_in_epoch" in str(self.directory):
        os.kill(os.getpid(), signal.SIGKILL)
Checkpointer.save = save
sys.argv.pop(0)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _cli(*args, kill_at=None):
    prefix = [sys.executable, "-c", KILLED_AT, str(kill_at)] if kill_at else [sys.executable]
    return subprocess.run([*prefix, SCRIPT, *args], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=process_env())


def _rows(run, name="metrics.jsonl"):
    path = run / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _checksums(run, epoch):
    """SHA-256 of every array of the run's checkpoint of ``epoch`` (its ``extra``)."""
    return json.loads((run / "checkpoints" / str(epoch) / "extra" / "metadata").read_text())["checksums"]


def _same_run(a, b, epochs):
    key = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "learning_rate", "live_filters")
    assert [[r[k] for k in key] for r in _rows(a)] == [[r[k] for k in key] for r in _rows(b)]
    assert len(_rows(a)) == epochs
    assert _rows(a, "pruning.jsonl") == _rows(b, "pruning.jsonl")
    assert _checksums(a, epochs) == _checksums(b, epochs)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("positions"), _covering(70, 23, 3, (12, 12, 1), seed=4))


def test_a_streamed_run_killed_with_sigkill_resumes_at_the_next_batch_with_other_threads(folder, tmp_path):
    """SIGKILL right after the position at step 6 (epoch 2, batch 2 of 4) is written, with two
    reading threads; the resume with one thread restores the Grain iterator's state, trains
    batches 3-4 of epoch 2 and ends bit-identical to the run never stopped."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    base = [*STREAMED, "--data-dir", str(folder)]
    assert _cli(*base, "--out", str(straight), "--set", "data.stream_workers=2").returncode == 0
    run = _cli(*base, "--out", str(killed), "--set", "data.stream_workers=2", "--checkpoint-every", "1", kill_at=6)
    assert run.returncode == -9, run.stderr[-2000:]
    assert [r["epoch"] for r in _rows(killed)] == [1]
    saved = json.loads((killed / "checkpoints_in_epoch" / "6" / "extra" / "metadata").read_text())
    assert (saved["epoch"], saved["batches"], saved["iterator"]) == (1, 2, {"next_index": 2})
    resumed = _cli(*base, "--out", str(killed), "--set", "data.stream_workers=1", "--checkpoint-every", "1",
                   "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming inside epoch 2 after batch 2" in resumed.stderr
    _same_run(killed, straight, 2)
    assert not (killed / "checkpoints_in_epoch").exists()   # superseded by epoch 2's checkpoint, removed at the end


@pytest.fixture(scope="module")
def repr_runs(tiny_cifar_dir, tmp_path_factory):
    """RePr (drop at the start of epoch 2, re-initialise after it) on 512 in-memory images,
    batch 64 (8 steps an epoch), trained straight; the CLI and its base flags."""
    cli = load_script("experiments/cifar.py")
    base = ["--data-dir", str(tiny_cifar_dir), "--model", "convnet", "--width", "8", "--batch-size", "64",
            "--quiet", "--method", "repr", "--repr-s1", "1", "--repr-s2", "1", "--repr-iterations", "1",
            "--epochs", "3"]
    straight = tmp_path_factory.mktemp("repr") / "straight"
    assert cli.main([*base, "--out", str(straight)]) == 0
    return cli, base, straight


def test_a_run_in_memory_resumed_inside_the_epoch_of_a_drop_does_not_drop_again(repr_runs, tmp_path, capsys):
    """Killed after step 11 (epoch 2, batch 3 of 8, after RePr's drop): the resume restores the
    pruned state and the drop's event from the position, the drop is not recomputed on the
    partly trained network, and the run ends as the straight one (events included)."""
    cli, base, straight = repr_runs
    run = tmp_path / "run"
    with interrupted_at_checkpoint(11, where="checkpoints_in_epoch"):
        cli.main([*base, "--out", str(run), "--checkpoint-every", "1"])
    assert [e["event"] for e in _rows(run, "pruning.jsonl")] == []     # the drop is logged when epoch 2 ends
    capsys.readouterr()
    assert cli.main([*base, "--out", str(run), "--resume", "--checkpoint-every", "4"]) == 0
    assert "resuming inside epoch 2 after batch 3" in capsys.readouterr().err
    _same_run(run, straight, 3)
    assert [e["event"] for e in _rows(run, "pruning.jsonl")] == ["drop", "reinit"]


def test_a_damaged_or_stale_position_restarts_its_epoch_and_changes_nothing_else(repr_runs, tmp_path, capsys):
    """Flipped bytes in a position's arrays: the resume says so in one warning line and trains
    the epoch again from its epoch checkpoint (same result; a resume keeps the run's
    --checkpoint-every); a position of an epoch already checkpointed is ignored."""
    cli, base, straight = repr_runs
    run = tmp_path / "run"
    with interrupted_at_checkpoint(13, where="checkpoints_in_epoch"):
        cli.main([*base, "--out", str(run), "--checkpoint-every", "1"])
    position = run / "checkpoints_in_epoch" / "13"
    kept = tmp_path / "kept"
    shutil.copytree(position, kept)
    blobs = sorted((p for p in (position / "state").rglob("*") if p.is_file() and p.stat().st_size > 400),
                   key=lambda p: -p.stat().st_size)
    data = bytearray(blobs[0].read_bytes())
    data[100:300] = bytes(255 - b for b in data[100:300])
    blobs[0].write_bytes(bytes(data))
    capsys.readouterr()
    with interrupted_at_checkpoint(2):       # stopped again once epoch 2 is checkpointed
        cli.main([*base, "--out", str(run), "--resume"])
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:") and "position" in line]
    assert len(warnings) == 1 and "position saved at step 13 could not be restored" in warnings[0], err
    assert "epoch 2 starts over" in warnings[0] and "resuming from epoch 1" in err
    assert not position.exists()             # the damaged position was cleared when positions resumed
    shutil.copytree(kept, position)          # a position of epoch 2, which is now checkpointed: stale
    assert cli.main([*base, "--out", str(run), "--resume"]) == 0
    assert "resuming from epoch 2" in capsys.readouterr().err
    _same_run(run, straight, 3)


def test_checkpoint_every_is_checked(tiny_cifar_dir, tmp_path, capsys):
    """Bad values: one line, exit 2, nothing created; N not below the epoch's batches: a
    warning that no position will be saved (N counts the batches of each epoch)."""
    cli = load_script("experiments/cifar.py")
    tiny = ["--data-dir", str(tiny_cifar_dir), "--model", "convnet", "--width", "4", "--batch-size", "64",
            "--quiet", "--epochs", "1", "--checkpoint-every", "8"]           # 512 images: 8 batches
    assert cli.main([*tiny, "--out", str(tmp_path / "long")]) == 0
    err = capsys.readouterr().err
    assert "--checkpoint-every 8 is not below the epoch's 8 batches: no position" in err, err
    assert not (tmp_path / "long" / "checkpoints_in_epoch").exists()
    for flags, message in ((["--checkpoint-every", "-1"], "--checkpoint-every must be in 0.."),
                           (["--checkpoint-every", "5", "--seeds", "2"], "with --seeds K it is not supported")):
        assert cli.main(["--out", str(tmp_path / "bad"), "--epochs", "1", *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "bad").exists()
