"""Porting Standard and RePr onto the method framework changed no result: three fixed runs
recorded with the code before the port (tests/fixtures/regression) are rerun and compared.
The runs are subprocesses compiled as the CLI compiles (the suite's fast-compile XLA flag off:
it moves float32 round-off, and these compare against recordings)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST_COMPILE, ROOT

FIXTURES = Path(__file__).parent / "fixtures" / "regression"
META = json.loads((FIXTURES / "runs.json").read_text())
TIMING = {"images_per_second", "epoch_seconds", "elapsed_seconds"}
EXACT = os.environ.get("REPR_JAX_EXACT") == "1"   # bit-for-bit (the recording machine)
DIAGNOSTICS = {"max_abs_cos_to_kept", "max_abs_cos_to_own_saved", "max_abs_cos_among_new"}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _close(old, new, key):
    if EXACT and key not in DIAGNOSTICS:
        assert old == new, key
    elif key in DIAGNOSTICS:
        assert new == pytest.approx(old, abs=1e-6), key
    elif key.endswith("accuracy"):
        assert abs(new - old) <= 1.5 / 128, key     # at most one example of 128 flips
    elif isinstance(old, float):
        assert new == pytest.approx(old, rel=1e-4, abs=1e-6), key
    else:
        assert new == old, key


def _compare(old, new):
    if isinstance(old, dict):
        assert set(old) <= set(new), set(old) - set(new)
        for k in old:
            if k in TIMING:
                continue
            if isinstance(old[k], (dict, list)):
                _compare(old[k], new[k])
            else:
                _close(old[k], new[k], k)
    elif isinstance(old, list):
        assert len(old) == len(new)
        for a, b in zip(old, new):
            _compare(a, b) if isinstance(a, (dict, list)) else _close(a, b, "")


@pytest.mark.parametrize("name", list(META["runs"]))
def test_run_matches_the_pre_framework_recording(name, tmp_path, tiny_cifar_dir):
    # the C³ variant recorded as "official" (5×5 + 2×2 pool, He init) is called "pool2" since
    # "official" became the official code's exact model
    args = ["pool2" if a == "official" and prev == "--convnet-variant" else a
            for prev, a in zip([None] + META["runs"][name], META["runs"][name])]
    lr = [] if "--lr" in args else ["--lr", "0.01"]
    out = tmp_path / name
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "").replace(FAST_COMPILE, "").strip()}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "cifar.py"), "--data-dir", str(tiny_cifar_dir),
                           "--out", str(out)] + META["common"] + lr + args,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for file in ("metrics.jsonl", "pruning.jsonl"):
        recorded = FIXTURES / f"{name}.{file}"
        if recorded.exists():
            old, new = _rows(recorded), _rows(out / file)
            assert len(old) == len(new) > 0
            _compare(old, new)
        else:
            assert not (out / file).exists()
    metrics = _rows(out / "metrics.jsonl")
    assert np.isfinite([m["train_loss"] for m in metrics]).all()
