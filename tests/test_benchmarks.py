"""The benchmark harness runs end to end in --quick mode and writes complete JSON."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_harness_writes_every_benchmark(tmp_path):
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
                           "--json", str(out), "--markdown", str(md)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert {"cpu", "cores", "device_kind", "jax"} <= set(results["machine"])
    assert set(results["benchmarks"]) == {"metric", "reinit", "train_step", "repr_overhead", "seeds", "seeds_run",
                                           "export", "streaming", "zoo", "zoo_processes", "zoo_memory"}
    zoo, memory = results["benchmarks"].pop("zoo"), results["benchmarks"].pop("zoo_memory")
    isolated, = results["benchmarks"].pop("zoo_processes")
    assert isolated["model"] == "convnet" and isolated["allocator"]["repr_jax_system"] == "system"
    assert {"repr_jax", "repr_jax_system"} <= set(isolated["images_per_second"])
    assert all(v["min"] > 0 for v in isolated["images_per_second"].values())
    assert [r["model"] for r in zoo] == ["convnet"] and zoo[0]["images_per_second"]["repr_jax"]["median"] > 0
    assert zoo[0]["images_per_second"]["repr_jax"]["min"] <= zoo[0]["images_per_second"]["repr_jax"]["median"]
    assert memory[0]["model"] == "convnet" and 0 < memory[0]["peak_rss_gib"] < 8 and memory[0]["first_step_s"] > 0
    for name, rows in results["benchmarks"].items():
        assert rows, name
        for row in rows:
            assert "repr_jax" in row["impls"] or name in ("repr_overhead", "seeds", "seeds_run", "streaming")
            for impl in row["impls"].values():
                for key in ("median_s", "min_s", "max_s"):
                    assert math.isfinite(impl[key]) and impl[key] > 0, (name, impl)
                assert impl["min_s"] <= impl["median_s"] <= impl["max_s"]
            assert row["ratios"], f"{name} has no ratio"
            assert all(math.isfinite(v) and v > 0 for v in row["ratios"].values())
    overhead = results["benchmarks"]["repr_overhead"][0]
    compiles = overhead["compilations"]
    # each run builds its own optimizer, so compiles its step once; drops/reinits add none
    runs = [k for k in compiles if k.endswith("_new_train_step_compilations")]
    assert runs and all(compiles[k] == 1 for k in runs), compiles
    seeds = results["benchmarks"]["seeds"][0]
    assert seeds["seeds"] == 2 and {"vmapped", "sequential"} <= set(seeds["impls"])
    export = results["benchmarks"]["export"][0]
    assert export["params"]["after"] < export["params"]["before"]
    assert export["params"].get("equal", True)          # Torch-Pruning, when installed, agrees
    whole = results["benchmarks"]["seeds_run"][0]
    assert whole["seeds"] == 2 and set(whole["impls"]) == {"sequential", "population_loop", "population_vmap"}
    stream = results["benchmarks"]["streaming"][0]
    assert set(stream["impls"]) == {"reader", "in_memory", "streamed", "host_memory"}
    assert stream["ratios"]["streamed/in_memory"] > 0 and stream["ratios"]["host_memory/in_memory"] > 0
    assert "repr_jax" in md.read_text()


def test_bad_repeats_exit_2():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--repeats", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--repeats" in proc.stderr
