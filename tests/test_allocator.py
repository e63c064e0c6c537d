"""The CLI's allocator switch (repr_jax._allocator): the program re-executes itself once, in
the same process, with the tcmalloc library preloaded — or not at all when there is none or
``REPR_JAX_NO_TCMALLOC=1``; ``summary.json`` names the allocator."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PROGRAM = """
import os, sys
print("start", os.getpid(), os.environ.get("LD_PRELOAD", ""), flush=True)
from repr_jax._allocator import allocator_in_use, use_tcmalloc
use_tcmalloc()
print("end", os.getpid(), allocator_in_use(), sys.argv[1:], flush=True)
"""


def _a_harmless_library(tmp_path: Path) -> Path:
    """A copy of this process's libm under a tcmalloc name: preloading it changes nothing."""
    maps = Path("/proc/self/maps").read_text().splitlines()
    libm = next((line.split()[-1] for line in maps if "/libm.so" in line or "/libm-" in line), None)
    if libm is None:
        pytest.skip("no libm mapped in this process")
    fake = tmp_path / "libtcmalloc_stand_in.so"
    shutil.copy(libm, fake)
    return fake


def _run(tmp_path, **env):
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "REPR_JAX_TCMALLOC_TRIED")}
    out = subprocess.run([sys.executable, str(script), "--flag", "x y"], capture_output=True, text=True, cwd=ROOT,
                         env={**base, "PYTHONPATH": str(ROOT), **env}, timeout=120)
    assert out.returncode == 0, out.stderr
    return [line.split(" ", 2) for line in out.stdout.splitlines()]


@pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD re-execution is Linux's")
def test_the_program_reexecutes_once_in_place_with_tcmalloc_preloaded(tmp_path):
    fake = _a_harmless_library(tmp_path)
    lines = _run(tmp_path, REPR_JAX_TCMALLOC=str(fake))
    assert [line[0] for line in lines] == ["start", "start", "end"]
    assert lines[0][1] == lines[1][1] == lines[2][1]                      # same process: exec, not a child
    assert lines[0][2] == "" and lines[1][2] == str(fake)
    assert lines[2][2] == "tcmalloc ['--flag', 'x y']"                    # arguments kept
    for off in ({"REPR_JAX_NO_TCMALLOC": "1", "REPR_JAX_TCMALLOC": str(fake)},
                {"REPR_JAX_TCMALLOC": str(tmp_path / "missing.so")}):
        lines = _run(tmp_path, **off)
        assert [line[0] for line in lines] == ["start", "end"] and lines[1][2].startswith("system")


def test_allocator_in_use_reads_ld_preload(monkeypatch):
    from repr_jax._allocator import allocator_in_use
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libtcmalloc_minimal.so.4")
    assert allocator_in_use() == "tcmalloc"
    monkeypatch.setenv("LD_PRELOAD", "")
    assert allocator_in_use() == "system"
