"""``--set tensorboard=true``: the epoch scalars as TensorBoard events equal ``metrics.jsonl``;
a resumed run purges the epochs after its checkpoint; a missing tensorboardX is one line, exit 2."""
from __future__ import annotations

import builtins
import json
import struct

import pytest

from conftest import interrupted_at_checkpoint, load_script

pytest.importorskip("tensorboardX")
cli = load_script("experiments/cifar.py")
ARGS = ["--model", "convnet", "--depth", "2", "--width", "4", "--batch-size", "64", "--test-limit", "64",
        "--quiet", "--epochs", "2", "--set", "tensorboard=true"]


def _events(directory):
    """Every event of every file in write order: ``[(file index, step, tags → value, purge)]``,
    read from the TFRecord framing (length, crc, payload, crc) with tensorboardX's protobufs."""
    from tensorboardX.proto import event_pb2
    out = []
    for i, path in enumerate(sorted(directory.glob("events.out.tfevents.*"))):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            purge = event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START
            out.append((i, event.step, {v.tag: v.simple_value for v in event.summary.value}, purge))
    return out


def _scalars(events):
    """What TensorBoard shows: per tag and step the last value, a START purging later steps."""
    shown: dict = {}
    for _, step, values, purge in events:
        if purge:
            for tag in shown:
                shown[tag] = {s: v for s, v in shown[tag].items() if s < step}
        for tag, value in values.items():
            shown.setdefault(tag, {})[step] = value
    return shown


def test_scalars_equal_the_metrics_and_a_resume_purges_what_it_repeats(tiny_cifar_dir, tmp_path):
    out = tmp_path / "run"
    with interrupted_at_checkpoint(2, before=True):   # epoch 2 logged, its checkpoint never written
        cli.main([*ARGS, "--data-dir", str(tiny_cifar_dir), "--out", str(out)])
    assert cli.main([*ARGS, "--data-dir", str(tiny_cifar_dir), "--out", str(out), "--resume"]) == 0
    events = _events(out / "tensorboard")
    assert sum(1 for _, step, values, _ in events if step == 2 and "test/accuracy" in values) == 2
    assert any(purge and step == 2 and f == 1 for f, step, _, purge in events)   # the resumed file
    shown = _scalars(events)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for tag, key in (("test/accuracy", "test_accuracy"), ("train/loss", "train_loss"),
                     ("learning_rate", "learning_rate"), ("live_filters", "live_filters")):
        assert shown[tag] == pytest.approx({m["epoch"]: m[key] for m in metrics}, rel=1e-6), tag


def test_without_tensorboardx_the_run_is_refused_in_one_line(tiny_cifar_dir, tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_tensorboardx(name, *a, **kw):
        if name.startswith("tensorboardX"):
            raise ImportError(name)
        return real_import(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_tensorboardx)
    out = tmp_path / "run"
    assert cli.main([*ARGS, "--data-dir", str(tiny_cifar_dir), "--out", str(out)]) == 2
    assert "pip install -e \".[tensorboard]\"" in capsys.readouterr().err and not out.exists()
