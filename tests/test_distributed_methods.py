"""Every method across processes: the methods that export at the end (li-l1, JST), ``--seeds
K`` and a streamed folder, each trained by two processes on this machine (``jax.distributed``,
gloo), against one process over two devices with the same global batch — the same program,
partitioned over processes instead of devices. Process 0 alone exports; every process
computes the selections, so they agree by construction (and this checks they equal the
one-process run's)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, free_port, process_env, synthetic_cifar, write_cifar10_pickles

SCRIPT = str(ROOT / "experiments" / "cifar.py")
TINY = ["--model", "convnet", "--width", "8", "--batch-size", "64", "--devices", "0", "--quiet"]
JST = ["--batch-norm", "--epochs", "4", "--set", "data.holdout=256", "--set", "jst.coarse_epochs=1",
       "--set", "jst.search_steps=2", "--set", "jst.subnets=4", "--set", "jst.val_batches=4",
       "--set", "jst.reward_batches=1", "--set", "jst.alpha_steps=2"]


def _two(data, out, *flags, timeout=300):
    port = free_port()
    procs = [subprocess.Popen([sys.executable, SCRIPT, "--data-dir", str(data), "--out", str(out), *TINY, *flags,
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=process_env(), cwd=ROOT)
             for i in range(2)]
    try:
        results = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    return results


def _one(data, out, *flags):
    """One process over two (forced) CPU devices."""
    proc = subprocess.run([sys.executable, SCRIPT, "--data-dir", str(data), "--out", str(out), *TINY, *flags],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=process_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _events(run):
    return [json.loads(line) for line in (run / "pruning.jsonl").read_text().splitlines()]


def _same_training(a, b):
    ra, rb = _rows(a), _rows(b)
    assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb] and ra
    for x, y in zip(ra, rb):
        np.testing.assert_allclose([x["train_loss"], x["test_loss"]], [y["train_loss"], y["test_loss"]], rtol=1e-5)
        assert x["live_filters"] == y["live_filters"]


def _exported(run) -> dict:
    """The exported model's arrays, read back as numpy (``<run>/export/checkpoint``)."""
    import jax
    from repr_jax.compress import load_exported
    _, variables, _ = load_exported(run / "export")
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(variables)}


def _same_export(a, b):
    ja, jb = (json.loads((r / "export" / "export.json").read_text()) for r in (a, b))
    assert ja["channels"] == jb["channels"] and ja["params_after"] == jb["params_after"] < ja["params_before"]
    ea, eb = _exported(a), _exported(b)
    assert ea.keys() == eb.keys() and ea
    for name in ea:
        np.testing.assert_allclose(ea[name], eb[name], rtol=2e-4, atol=2e-5, err_msg=name)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    arrays = synthetic_cifar(512, 128)
    write_cifar10_pickles(root / "data", *arrays)
    for split, x, y in (("train", arrays[0], arrays[1]), ("test", arrays[2], arrays[3])):
        for i, (image, label) in enumerate(zip(x, y)):   # the same images as an extracted folder
            folder = root / "folder" / split / f"c{int(label)}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(image, np.uint8)).save(folder / f"{i:04d}.png")
    return root


def test_li_l1_with_seeds_in_two_processes_equals_one_process_and_exports_the_same_model(data):
    """li-l1 (pruned before epoch 1, exported at the end) with ``--seeds 2`` vmapped by two
    processes (the loop layout is the streamed test's): seed 0's run equals the one-process run
    over two devices — the same pruned filters, losses to round-off, an exported model with the
    same channels and weights; seed 1 is its own run with its own export, written by process 0
    only."""
    flags = ("--method", "li-l1", "--epochs", "2")
    results = _two(data / "data", data / "li2", *flags, "--seeds", "2", "--set", "seeds_layout=vmap")
    _one(data / "data", data / "li1", *flags)
    seed0, seed1 = data / "li2-seed0", data / "li2-seed1"
    _same_training(seed0, data / "li1")
    pruned = lambda run: [(e["event"], {k: v["pruned_indices"] for k, v in e["layers"].items()})  # noqa: E731
                          for e in _events(run)]
    assert pruned(seed0) == pruned(data / "li1") and pruned(seed0)[0][0] == "prune"
    _same_export(seed0, data / "li1")
    for run in (seed0, seed1):
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["population"]["seeds"] == [0, 1]
        assert summary["population"]["layout"] == "vmap"
        assert summary["export"]["max_abs_logit_difference"] < 1e-4
    assert pruned(seed1) != pruned(seed0)          # another seed: another network, other filters
    out1 = results[1][0]
    assert json.loads(out1[out1.index("{"):out1.rindex("}") + 1])["runs"]["1"]["written_by"] == "process 0"


def test_jst_in_two_processes_equals_one_process_and_exports_the_same_subnetwork(data):
    """JST's search (REINFORCE over sampled widths, rewards on held-out batches) computed by
    two processes picks the widths one process picks and exports the same sub-network."""
    _two(data / "data", data / "jst2", "--method", "jst", *JST)
    _one(data / "data", data / "jst1", "--method", "jst", *JST)
    _same_training(data / "jst2", data / "jst1")
    searched = lambda run: [(e["event"], e.get("chosen"), e["best_widths"]) for e in _events(run)]  # noqa: E731
    assert searched(data / "jst2") == searched(data / "jst1") and searched(data / "jst1")
    _same_export(data / "jst2", data / "jst1")


def test_a_streamed_folder_in_two_processes_equals_one_process_and_resumes_bit_identically(data):
    """``data.stream=true`` with two processes (and ``--seeds 2``, the seeds one after another):
    each process decodes only its half of every batch (``repr_jax.parallel.process_rows``),
    together the global batch one process reads — seed 0 equals the one-process run; a run of
    one epoch resumed to two equals two straight (all by two processes)."""
    flags = ("--dataset", "folder", "--set", "data.stream=true", "--method", "standard",
             "--set", "optim.schedule=constant")
    folder = data / "folder"
    _two(folder, data / "st2", *flags, "--epochs", "2", "--seeds", "2")
    _one(folder, data / "st1", *flags, "--epochs", "2")
    _same_training(data / "st2-seed0", data / "st1")
    _two(folder, data / "part", *flags, "--epochs", "1")
    _two(folder, data / "part", *flags, "--epochs", "2", "--resume")
    key = lambda rows: [(r["epoch"], r["train_loss"], r["test_loss"], r["test_accuracy"]) for r in rows]  # noqa: E731
    assert key(_rows(data / "part")) == key(_rows(data / "st2-seed0")) != key(_rows(data / "st2-seed1"))


def test_a_streamed_two_process_run_killed_mid_epoch_resumes_bit_identically(data):
    """kill -9 of process 1 while epoch 2 of a streamed two-process run is read and trained,
    with a checkpoint every step (``--checkpoint-every 1``): process 0 exits with one line in
    bounded time, and ``--resume`` of both processes (one reading thread each instead of two)
    continues inside epoch 2 at the batch after the newest position to the same rows as the
    run trained straight."""
    import signal
    import time
    flags = ["--dataset", "folder", "--set", "data.stream=true", "--method", "standard", "--set",
             "optim.schedule=constant", "--epochs", "4", "--width", "32"]   # ~1 s an epoch: room for the kill
    folder, run = data / "folder", data / "killed"
    _two(folder, data / "straight", *flags)
    port = free_port()
    procs = [subprocess.Popen([sys.executable, SCRIPT, "--data-dir", str(folder), "--out", str(run), *TINY, *flags,
                               "--checkpoint-every", "1", "--set", "data.stream_workers=2",
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=process_env(REPR_JAX_HEARTBEAT_TIMEOUT="10"), cwd=ROOT) for i in range(2)]
    deadline = time.time() + 240
    positions = lambda: [p for p in (run / "checkpoints_in_epoch").glob("[0-9]*")]  # noqa: E731
    while not ((run / "metrics.jsonl").exists() and positions()) and time.time() < deadline:   # inside epoch 2
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    err = procs[0].communicate(timeout=150)[1]
    procs[1].communicate(timeout=30)
    assert time.time() - killed < 120 and procs[0].returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "another process of this multi-process run stopped" in lines[0]
    assert len(_rows(run)) < 4 and not (run / "summary.json").exists()
    inside = bool(positions())      # almost always; the epoch may have ended between the poll and the kill
    err0 = _two(folder, run, *flags, "--resume", "--set", "data.stream_workers=1")[0][1]
    assert ("resuming inside epoch" in err0) == inside, err0[-2000:]
    key = lambda rows: [(r["epoch"], r["train_loss"], r["test_loss"], r["test_accuracy"]) for r in rows]  # noqa: E731
    assert key(_rows(run)) == key(_rows(data / "straight"))


class _ShardingOverProcesses:
    """A stand-in for ``NamedSharding(mesh, P("data"))`` over several processes' devices, of
    which this process holds ``spans`` of a batch's rows."""
    is_fully_addressable = False

    def __init__(self, *spans):
        self.spans = spans

    def addressable_devices_indices_map(self, shape):
        return {f"device{i}": (slice(a, b),) for i, (a, b) in enumerate(self.spans)}


def test_process_rows_are_the_span_of_this_processs_devices():
    """Two of four devices on this process, rows 32–63 of a batch of 64 → ``slice(32, 64)``;
    spans that are not side by side are an error; one process, or none: every row."""
    from repr_jax.parallel import batch_sharding, data_mesh, process_rows
    assert process_rows(_ShardingOverProcesses((48, 64), (32, 48)), 64) == slice(32, 64)
    assert process_rows(_ShardingOverProcesses((0, 16)), 64) == slice(0, 16)
    with pytest.raises(ValueError, match="not one contiguous span"):
        process_rows(_ShardingOverProcesses((0, 16), (32, 48)), 64)
    assert process_rows(batch_sharding(data_mesh(0), 8), 8) is None and process_rows(None, 8) is None


def test_a_stream_reads_only_its_rows_of_every_batch(data):
    """``FolderStream.epoch(rows=…)`` decodes just those rows of each batch of the epoch's
    order — what one process of a run reads — and refuses rows of batches of unequal size."""
    from repr_jax.data.streaming import FolderStream, index_folder
    read = []

    class Counting(FolderStream):
        def read(self, i):
            read.append(i)
            return super().read(i)

    stream = Counting(index_folder(data / "folder"), 64, seed=3, workers=2)
    batches = list(stream.epoch(1, rows=slice(32, 64)))
    order = stream.order(1)
    assert sorted(read) == sorted(np.concatenate([order[i + 32:i + 64] for i in range(0, 512, 64)]).tolist())
    np.testing.assert_array_equal(batches[2][1], stream.index.labels[order[128 + 32:128 + 64]])
    assert [len(y) for _, y in batches] == [32] * 8
    ragged = FolderStream(index_folder(data / "folder"), 60, shuffle=False, workers=2)
    with pytest.raises(ValueError, match="batches of one size"):
        ragged.dataset(0, rows=slice(30, 60))   # the last batch holds 32: rows 30–31 only


def test_put_batch_places_a_one_process_batch_as_device_put_does():
    import jax
    from repr_jax.parallel import batch_sharding, data_mesh, put_batch
    sharding = batch_sharding(data_mesh(0), 8)
    x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    placed = put_batch((x, np.arange(8)), sharding, 8)
    np.testing.assert_array_equal(np.asarray(placed[0]), x)
    assert placed[0].shape == (8, 3) and isinstance(placed[1], jax.Array)
