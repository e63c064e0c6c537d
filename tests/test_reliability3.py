"""Reliability, round three: no code from a run directory, corruption detected, a resume that
never forgets, labels checked before casting, one line wherever a user's file is read, and a
fresh run that fails before its first epoch leaves nothing behind."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from conftest import load_script

cli = load_script("experiments/cifar.py")
export_cli = load_script("experiments/export.py")

MODEL = '''import flax.linen as nn
class Net(nn.Module):
    num_classes: int = 10
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(self.num_classes)(nn.relu(nn.Conv(4, (3, 3))(x)).mean(axis=(1, 2)))
def build(num_classes, channels=None):
    return Net(num_classes)
'''


def _args(data, out, *extra):
    return ["--data-dir", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "64", "--quiet", *extra]


def _digests(run) -> dict:
    return {f: hashlib.sha256(open(f, "rb").read()).hexdigest()
            for f in glob.glob(f"{run}/**", recursive=True) if os.path.isfile(f)}


@pytest.fixture(scope="module")
def user_run(tiny_cifar_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("user_run")
    (root / "mine.py").write_text(MODEL)
    ref = f"{root / 'mine.py'}:build"
    assert cli.main(_args(tiny_cifar_dir, root / "run", "--model", ref)) == 0
    return root, ref


def test_a_run_directory_never_imports_the_code_it_names(user_run, tiny_cifar_dir, tmp_path, capsys):
    root, ref = user_run
    evil = tmp_path / "evil.py"
    marker = tmp_path / "ran"
    evil.write_text(f"open({str(marker)!r}, 'w').write('x')\n" + MODEL)
    copy = tmp_path / "copy"
    shutil.copytree(root / "run", copy)
    arch = json.loads((copy / "architecture.json").read_text())
    arch["name"] = f"{evil}:build"
    (copy / "architecture.json").write_text(json.dumps(arch))
    from repr_jax.evaluate import main as evaluate_main
    capsys.readouterr()
    assert evaluate_main([str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "names Python code as its model" in err and "--model" in err
    assert "\n" not in err and not marker.exists()
    assert export_cli.main([str(copy), "--out", str(tmp_path / "exp")]) == 2 and not marker.exists()
    # the run's own code, named again on the command line, is imported
    assert evaluate_main([str(root / "run"), "--model", ref]) == 0


def test_resume_of_a_user_model_needs_it_named_again(user_run, tiny_cifar_dir, tmp_path, capsys):
    root, ref = user_run
    other = tmp_path / "other.py"        # a reference of its own: nothing trusts it yet in this process
    other.write_text(MODEL)
    run = tmp_path / "run"
    assert cli.main(_args(tiny_cifar_dir, run, "--model", f"{other}:build")) == 0
    (run / "summary.json").unlink()
    before = _digests(run)
    from repr_jax.models import user
    user._TRUSTED.discard(user.canonical(f"{other}:build"))   # a new process: nothing named yet
    capsys.readouterr()
    assert cli.main(["--out", str(run), "--resume", "--data-dir", str(tiny_cifar_dir), "--quiet"]) == 2
    assert "names Python code as its model" in capsys.readouterr().err
    assert _digests(run) == before
    assert cli.main(["--out", str(run), "--resume", "--data-dir", str(tiny_cifar_dir), "--quiet",
                     "--model", f"{other}:build"]) == 0


def _plain_run(data, out):
    assert cli.main(_args(data, out, "--width", "4", "--epochs", "2")) == 0
    return out


def test_a_checkpoint_with_flipped_bytes_is_detected(tiny_cifar_dir, tmp_path, capsys):
    run = _plain_run(tiny_cifar_dir, tmp_path / "run")
    biggest = max(glob.glob(f"{run}/checkpoints/2/state/**/d/*", recursive=True), key=os.path.getsize)
    data = bytearray(open(biggest, "rb").read())
    for i in range(len(data) // 2, len(data) // 2 + 400):
        data[i] ^= 0x5A
    open(biggest, "wb").write(bytes(data))
    from repr_jax.evaluate import main as evaluate_main
    capsys.readouterr()
    assert evaluate_main([str(run)]) == 2
    err = capsys.readouterr().err
    # bytes that still decode fail their checksum; bytes inside a compressed chunk fail to decode
    assert "the checkpoint of epoch 2 is damaged" in err and "kept: [1, 2]" in err
    assert "checksum" in err or "cannot be read" in err, err
    assert evaluate_main([str(run), "--step", "1"]) == 0
    (run / "summary.json").unlink()
    assert cli.main(["--out", str(run), "--resume", "--epochs", "3", "--data-dir", str(tiny_cifar_dir), "--quiet"]) == 0
    assert (run / "damaged_checkpoints" / "2").is_dir()
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]


def test_evaluate_and_export_verify_the_checksums_a_checkpoint_carries(tiny_cifar_dir, tmp_path, capsys):
    """The restore → verify wiring, end to end and deterministic: arrays intact, one recorded
    checksum changed — ``evaluate`` and ``export`` refuse the checkpoint naming the array."""
    run = _plain_run(tiny_cifar_dir, tmp_path / "run")
    meta = run / "checkpoints" / "2" / "extra" / "metadata"
    extra = json.loads(meta.read_text())
    key = sorted(extra["checksums"])[0]
    extra["checksums"][key] = "0" * 64
    meta.write_text(json.dumps(extra))
    from repr_jax.evaluate import main as evaluate_main
    capsys.readouterr()
    assert evaluate_main([str(run)]) == 2
    err = capsys.readouterr().err
    assert "the checkpoint of epoch 2 is damaged" in err and key in err and "does not match the checksum" in err
    assert export_cli.main([str(run), "--out", str(tmp_path / "exp"), "--data-dir", str(tiny_cifar_dir)]) == 2
    err = capsys.readouterr().err
    assert key in err and "does not match the checksum" in err and not (tmp_path / "exp").exists()
    assert evaluate_main([str(run), "--step", "1"]) == 0


def test_checksums_are_sha256_of_dtype_shape_and_bytes_and_name_the_changed_array():
    """The checksum a checkpoint carries (a hashlib reference here) and the check that names
    the one array whose bytes changed — whatever the flipped bytes decode to."""
    import hashlib
    from repr_jax.checkpoint import checksums, verify
    tree = {"params": {"conv0": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}},
            "step": np.int32(7)}
    kernel = tree["params"]["conv0"]["kernel"]
    want = hashlib.sha256(b"<f4(2, 3)" + kernel.tobytes()).hexdigest()
    sums = checksums(tree)
    assert sums["['params']['conv0']['kernel']"] == want and set(sums) == {"['params']['conv0']['kernel']", "['step']"}
    verify(tree, sums, 3)
    flipped = {**tree, "params": {"conv0": {"kernel": kernel.copy()}}}
    flipped["params"]["conv0"]["kernel"].view(np.uint32)[1, 2] ^= 1          # one bit of one float
    with pytest.raises(ValueError, match=r"epoch 3 is damaged: \['params'\]\['conv0'\]\['kernel'\] does not match"):
        verify(flipped, sums, 3)


def test_a_resume_with_history_but_no_checkpoint_refuses_and_changes_nothing(tiny_cifar_dir, tmp_path, capsys):
    run = _plain_run(tiny_cifar_dir, tmp_path / "run")
    (run / "summary.json").unlink()
    shutil.rmtree(run / "checkpoints")
    before = _digests(run)
    capsys.readouterr()
    assert cli.main(["--out", str(run), "--resume", "--data-dir", str(tiny_cifar_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "records 2 trained epoch(s) in metrics.jsonl but holds no checkpoint" in err
    assert _digests(run) == before and not (run / "checkpoints").exists()
    (run / "checkpoints").write_text("not a directory")
    before = _digests(run)
    assert cli.main(["--out", str(run), "--resume", "--data-dir", str(tiny_cifar_dir), "--quiet"]) == 2
    assert "checkpoints is a file, not the run's checkpoint directory" in capsys.readouterr().err
    assert _digests(run) == before


def test_labels_beyond_int32_are_refused_before_any_cast(tmp_path):
    from repr_jax.data import DataError, load_data
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    y = np.arange(40) % 4
    for wrapped in (2**32 + 3, -2**32 + 3):                # each would wrap to class 3
        y[3] = wrapped
        np.savez(path, x_train=rng.integers(0, 255, (40, 8, 8, 3), np.uint8), y_train=y.astype(np.int64),
                 x_test=rng.integers(0, 255, (8, 8, 8, 3), np.uint8), y_test=np.arange(8) % 4)
        with pytest.raises(DataError, match=f"label {wrapped} does not fit a 32-bit class index"):
            load_data("npz", str(path))


@pytest.mark.parametrize("name", ["config.json", "architecture.json", "summary.json", "metrics.jsonl"])
def test_json_nested_beyond_the_stack_is_one_line(tiny_cifar_dir, tmp_path, capsys, name):
    run = tmp_path / "run"
    shutil.copytree(_plain_run(tiny_cifar_dir, tmp_path / "orig"), run)
    (run / name).write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    from repr_jax.evaluate import main as evaluate_main
    from repr_jax.report import main as report_main
    capsys.readouterr()
    code = report_main([str(run)]) if name in ("summary.json", "metrics.jsonl") else evaluate_main([str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and name in err and "\n" not in err


def test_a_file_name_that_is_not_utf8_is_one_line(tmp_path, capsys):
    from PIL import Image
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "f" / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "f" / split / cls / f"{i}.png")
    os.rename(os.fsencode(tmp_path / "f" / "train" / "a" / "0.png"),
              os.fsencode(tmp_path / "f" / "train" / "a") + b"/\xff0.png")
    for extra in ([], ["--set", "data.stream=true"]):
        capsys.readouterr()
        assert cli.main(["--dataset", "folder", "--data-dir", str(tmp_path / "f"), "--out", str(tmp_path / "r"),
                         "--batch-size", "4", "--quiet", *extra]) == 2
        assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'f'}: the file name train/a/\\xff0.png is "
                                                   "not valid UTF-8; rename it")
        assert not (tmp_path / "r").exists()


def test_a_fresh_run_that_fails_before_its_first_epoch_leaves_no_directory(tiny_cifar_dir, tmp_path, capsys,
                                                                         monkeypatch):
    import repr_jax.experiment as experiment

    def out_of_memory(session):
        raise MemoryError
    monkeypatch.setattr(experiment, "train_epochs", out_of_memory)
    capsys.readouterr()
    assert cli.main(_args(tiny_cifar_dir, tmp_path / "run", "--width", "4")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out of memory") and "\n" not in err
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    assert cli.main(_args(tiny_cifar_dir, tmp_path / "run", "--width", "4")) == 0   # the same --out works


def test_a_model_too_large_for_memory_is_refused_before_tracing(tiny_cifar_dir, tmp_path, capsys):
    import time
    started = time.time()
    assert cli.main(_args(tiny_cifar_dir, tmp_path / "run", "--width", "65536")) == 2
    err = capsys.readouterr().err.strip()
    assert "77,982,466,058 parameters need about" in err and "more than the" in err
    assert time.time() - started < 60 and not (tmp_path / "run").exists()


def test_a_factory_with_the_wrong_number_of_classes_is_one_line(tiny_cifar_dir, tmp_path, capsys):
    (tmp_path / "m.py").write_text(MODEL.replace("return Net(num_classes)", "return Net(7)"))
    capsys.readouterr()
    assert cli.main(_args(tiny_cifar_dir, tmp_path / "run", "--model", f"{tmp_path / 'm.py'}:build")) == 2
    assert "the model's logits have 7 classes, the data has 10" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_torn_last_line_of_metrics_is_dropped_by_a_resume(tiny_cifar_dir, tmp_path, capsys):
    run = _plain_run(tiny_cifar_dir, tmp_path / "run")
    (run / "summary.json").unlink()
    text = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(text[:-30])          # epoch 2's line cut short
    capsys.readouterr()
    assert cli.main(["--out", str(run), "--resume", "--epochs", "3", "--data-dir", str(tiny_cifar_dir),
                     "--quiet"]) == 0
    assert "last line is cut short; dropped" in capsys.readouterr().err
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]


def test_a_factory_that_calls_sys_exit_is_a_failure_not_a_success(tiny_cifar_dir, tmp_path, capsys):
    (tmp_path / "m.py").write_text(MODEL.replace("    return Net(num_classes)", "    import sys; sys.exit(0)"))
    capsys.readouterr()
    assert cli.main(_args(tiny_cifar_dir, tmp_path / "run", "--model", f"{tmp_path / 'm.py'}:build")) == 2
    assert "the factory failed: SystemExit" in capsys.readouterr().err


def test_export_refuses_other_data(tiny_cifar_dir, tmp_path, capsys):
    from conftest import synthetic_cifar, write_cifar10_pickles
    run = _plain_run(tiny_cifar_dir, tmp_path / "run")
    write_cifar10_pickles(tmp_path / "other", *synthetic_cifar(512, 128, seed=5))
    capsys.readouterr()
    assert export_cli.main([str(run), "--out", str(tmp_path / "exp"), "--data-dir", str(tmp_path / "other")]) == 2
    assert "the data differs from the run" in capsys.readouterr().err


def test_a_torn_last_event_of_pruning_sets_its_checkpoint_aside(tiny_cifar_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(_args(tiny_cifar_dir, run, "--width", "4", "--epochs", "3", "--method", "repr",
                          "--repr-s1", "1", "--repr-s2", "1", "--repr-iterations", "1")) == 0
    (run / "summary.json").unlink()
    lines = (run / "pruning.jsonl").read_text().splitlines()
    assert [json.loads(l)["event"] for l in lines] == ["drop", "reinit"]      # epoch 2: drop and re-init
    (run / "pruning.jsonl").write_text(lines[0] + "\n" + lines[1][:40])        # the re-init line cut short
    capsys.readouterr()
    assert cli.main(["--out", str(run), "--resume", "--epochs", "3", "--data-dir", str(tiny_cifar_dir),
                     "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "last line is cut short" in err and "pruning.jsonl event was cut short" in err
    assert [json.loads(l)["event"] for l in (run / "pruning.jsonl").read_text().splitlines()] == ["drop", "reinit"]
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]


def test_a_model_returning_a_tuple_needs_model_logits_and_is_refused_before_the_run_exists(
        tiny_cifar_dir, tmp_path, capsys):
    """The CLI's output contract: ``(logits, features)`` without ``model.logits`` is one line and no
    run directory; with ``--set model.logits=0`` the same factory trains."""
    (tmp_path / "m.py").write_text(MODEL.replace(
        "return nn.Dense(self.num_classes)(nn.relu(nn.Conv(4, (3, 3))(x)).mean(axis=(1, 2)))",
        "h = nn.relu(nn.Conv(4, (3, 3))(x)).mean(axis=(1, 2))\n        return nn.Dense(self.num_classes)(h), h"))
    ref = f"{tmp_path / 'm.py'}:build"
    capsys.readouterr()
    assert cli.main(_args(tiny_cifar_dir, tmp_path / "run", "--model", ref)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.logits" in err
    assert not (tmp_path / "run").exists()
    assert cli.main(_args(tiny_cifar_dir, tmp_path / "run", "--model", ref, "--set", "model.logits=0")) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"


def test_width_of_a_fixed_zoo_model_is_refused_not_recorded(tiny_cifar_dir, tmp_path, capsys):
    capsys.readouterr()
    assert cli.main(_args(tiny_cifar_dir, tmp_path / "run", "--model", "resnet8", "--width", "64")) == 2
    assert "options of convnet (C^n(F)), not of resnet8" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
