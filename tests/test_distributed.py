"""A real multi-process run: two processes on this machine joined by ``jax.distributed``
(CPU collectives over gloo) train one run data-parallel. It equals a one-process run over
two devices with the same global batch to round-off; checkpoints written by two processes
restore and resume bit-identically; only process 0 writes the run directory and logs."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, free_port, process_env, synthetic_cifar, write_cifar10_pickles

SCRIPT = str(ROOT / "experiments" / "cifar.py")
SETTINGS = ["--model", "convnet", "--width", "8", "--batch-size", "64", "--method", "repr", "--repr-s1", "1",
            "--repr-s2", "1", "--repr-iterations", "1", "--devices", "0"]


def _launch(data, out, *flags, processes=2, timeout=300):
    """Run experiments/cifar.py as ``processes`` processes of one run; ``[(rc, stdout, stderr)]``."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, SCRIPT, "--data-dir", str(data), "--out", str(out), *SETTINGS, *flags,
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                               "--process-id", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=process_env(), cwd=ROOT)
             for i in range(processes)]
    results = []
    for p in procs:
        try:
            out_, err_ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append((p.returncode, out_, err_))
    return results


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    write_cifar10_pickles(root / "data", *synthetic_cifar(512, 128))
    return root


@pytest.fixture(scope="module")
def two_process_run(data):
    run = data / "two"
    results = _launch(data / "data", run, "--epochs", "2")
    for rc, out, err in results:
        assert rc == 0, err[-2000:]
    return run, results


def test_two_processes_equal_one_process_over_two_devices(data, two_process_run):
    run, _ = two_process_run
    one = data / "one"
    proc = subprocess.run([sys.executable, SCRIPT, "--data-dir", str(data / "data"), "--out", str(one), *SETTINGS,
                           "--epochs", "2", "--quiet"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=process_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = _rows(run), _rows(one)
    assert [r["epoch"] for r in a] == [1, 2] and len(b) == 2
    for x, y in zip(a, b):   # the same global program, partitioned over processes instead of devices
        np.testing.assert_allclose([x["train_loss"], x["test_loss"]], [y["train_loss"], y["test_loss"]], rtol=1e-5)
        assert x["live_filters"] == y["live_filters"] == (24 if x["epoch"] == 1 else x["live_filters"])
    drops = lambda r: [(e["event"], [layer.get("dropped_indices") for layer in e.get("layers", [])])  # noqa: E731
                       for e in map(json.loads, (r / "pruning.jsonl").read_text().splitlines())]
    assert drops(run) == drops(one) and drops(run)[0][0] == "drop" and any(drops(run)[0][1])


def test_only_process_0_writes_the_run_directory_and_logs(two_process_run):
    run, results = two_process_run
    (rc0, out0, _), (rc1, out1, err1) = results
    assert "epoch   1" in out0 and "epoch   2" in out0
    assert "epoch" not in out1 and "warning" not in err1      # no epoch lines, no drop lines
    assert json.loads(out1[out1.index("{\n"):out1.rindex("}") + 1]) == {"status": "completed", "process": 1,
                                                       "run_directory": str(run), "written_by": "process 0"}
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert len(_rows(run)) == 2 and not (run / ".lock").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]


def test_checkpoints_of_two_processes_resume_bit_identically(data):
    """One epoch, then --resume to two (a constant learning rate: the extension changes no
    schedule), against two epochs straight — all under two processes."""
    plain = ("--method", "standard", "--set", "optim.schedule=constant")
    run, part = data / "straight", data / "part"
    for out, epochs, extra in ((run, "2", ()), (part, "1", ()), (part, "2", ("--resume",))):
        for rc, _, err in _launch(data / "data", out, *plain, "--epochs", epochs, *extra):
            assert rc == 0, err[-2000:]
    key = lambda rows: [(r["epoch"], r["train_loss"], r["test_loss"], r["test_accuracy"], r["live_filters"])  # noqa: E731
                        for r in rows]
    assert key(_rows(part)) == key(_rows(run))


def test_bad_process_flags_are_one_line(data, tmp_path):
    base = [sys.executable, SCRIPT, "--data-dir", str(data / "data"), *SETTINGS, "--epochs", "1"]
    cases = [(["--out", str(tmp_path / "a"), "--coordinator", "127.0.0.1:1"],
              "error: --coordinator, --num-processes and --process-id go together (a multi-process run)"),
             (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "0"],
              "error: a multi-process run needs --out (the same in every process)"),
             (["--out", str(tmp_path / "b"), "--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"],
              "error: --coordinator must be HOST:PORT, got 'nohost'"),
             (["--out", str(tmp_path / "c"), "--coordinator", "127.0.0.1:1", "--num-processes", "2",
               "--process-id", "2"], "error: --process-id must be in 0..1 and --num-processes >= 1, got 2 of 2")]
    for flags, message in cases:
        proc = subprocess.run(base + flags, capture_output=True, text=True, timeout=120, env=process_env(), cwd=ROOT)
        assert (proc.returncode, proc.stderr.strip()) == (2, message)
    results = _launch(data / "data", tmp_path / "d", "--epochs", "2", "--devices", "1")
    for rc, _, err in results:
        assert rc == 2 and err.strip().splitlines()[-1] == ("error: a run of 2 processes splits every batch over all "
                                                            "their devices: pass --devices 0 (got --devices 1)")
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- bounded failures
def _start(data, out, process_id, port, *flags, processes=2, **env):
    return subprocess.Popen([sys.executable, SCRIPT, "--data-dir", str(data), "--out", str(out), *SETTINGS, *flags,
                             "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                             "--process-id", str(process_id)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=process_env(**env), cwd=ROOT)


@pytest.mark.parametrize("process_id", [0, 1])   # 1: its coordinator (process 0) is unreachable
def test_a_process_whose_peers_never_come_exits_in_bounded_time_with_one_line(data, tmp_path, process_id):
    import time
    started = time.time()
    proc = _start(data / "data", tmp_path / "alone", process_id, free_port(), "--epochs", "1",
                  REPR_JAX_JOIN_TIMEOUT="8")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and time.time() - started < 90
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "could not join the run" in lines[0] and "within 8 s" in lines[0]
    assert not (tmp_path / "alone").exists()


def test_processes_started_with_different_settings_refuse_in_one_line_instead_of_deadlocking(data, tmp_path):
    port = free_port()
    procs = [_start(data / "data", tmp_path / "mixed", i, port, "--epochs", str(epochs))
             for i, epochs in ((0, 2), (1, 3))]
    results = [p.communicate(timeout=240) for p in procs]
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 2, err[-2000:]
        assert "the processes of this run have different settings (process 1 differ from process 0)" in err
    assert not (tmp_path / "mixed").exists()


def test_processes_that_disagree_on_the_number_of_processes_stop_in_bounded_time(data, tmp_path):
    import time
    port, started = free_port(), time.time()
    procs = [_start(data / "data", tmp_path / "count", i, port, "--epochs", "1", processes=n, REPR_JAX_JOIN_TIMEOUT="8")
             for i, n in ((0, 2), (1, 3))]
    results = [p.communicate(timeout=180) for p in procs]
    assert time.time() - started < 150
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 2, err[-2000:]
        assert len([l for l in err.splitlines() if l.startswith("error:")]) == 1, err[-2000:]
    assert not (tmp_path / "count").exists()


def test_a_port_out_of_range_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path / "p"), "--coordinator", "127.0.0.1:99999",
                           "--num-processes", "2", "--process-id", "0"], capture_output=True, text=True,
                          env=process_env(), cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --coordinator port must be in 1..65535, got 99999"


def test_sigterm_stops_a_multi_process_run_and_its_peer_within_bounded_time(data, tmp_path):
    import signal
    import time
    port = free_port()
    run = tmp_path / "term"
    procs = [_start(data / "data", run, i, port, "--epochs", "50", REPR_JAX_HEARTBEAT_TIMEOUT="10") for i in range(2)]
    deadline = time.time() + 240
    while not (run / "config.json").exists() and time.time() < deadline:   # the processes have joined
        time.sleep(0.5)
    assert (run / "config.json").exists()
    time.sleep(3)
    procs[0].send_signal(signal.SIGTERM)
    stopped = time.time()
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert time.time() - stopped < 100
    assert procs[0].returncode == 130                     # process 0: interrupted, as by Ctrl-C
    assert procs[1].returncode == 2, errs[1][-2000:]      # its peer stopped too, not trained to the end
    peer = [l for l in errs[1].splitlines() if l.startswith("error:")]
    assert len(peer) == 1 and "another process of this multi-process run stopped" in peer[0]
    assert "Check failure stack trace" not in errs[1] and "Terminating process" not in errs[1]
    assert not (run / "summary.json").exists()            # not trained to the end


def test_a_peer_killed_with_sigkill_stops_the_other_process_within_bounded_time(data, tmp_path):
    """kill -9 of process 1 mid-run (no handler runs): its training child dies with it
    (before, it trained on alone in its own session), and process 0 — whose collective lost
    its peer — exits 2 with one line in bounded time; the run directory keeps its
    checkpoints for a --resume."""
    import signal
    import time
    port = free_port()
    run = tmp_path / "kill"
    procs = [_start(data / "data", run, i, port, "--epochs", "50", REPR_JAX_HEARTBEAT_TIMEOUT="10") for i in range(2)]
    deadline = time.time() + 240
    rows = lambda: len((run / "metrics.jsonl").read_text().splitlines()) if (run / "metrics.jsonl").exists() else 0
    while rows() < 2 and time.time() < deadline:   # epoch 1 checkpointed, epoch 3 under way
        time.sleep(0.2)
    assert rows() >= 2
    procs[1].send_signal(signal.SIGKILL)          # the command the user started: its training child dies too
    killed = time.time()
    err = procs[0].communicate(timeout=150)[1]
    procs[1].communicate(timeout=30)
    assert time.time() - killed < 120
    assert procs[1].returncode == -signal.SIGKILL
    assert procs[0].returncode == 2, err[-2000:]
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "another process of this multi-process run stopped" in lines[0], err[-2000:]
    assert "Check failure stack trace" not in err and not (run / "summary.json").exists()
    assert any(p.name.isdigit() for p in (run / "checkpoints").iterdir())
