"""The run directory's files: creation, the resume check, and atomic JSON / JSON-lines writes.

``config.json`` (settings + :func:`repr_jax.versions.machine`), ``architecture.json`` (the
model, enough to rebuild it — also for an exported smaller model), ``metrics.jsonl``,
``pruning.jsonl``, ``summary.json``. Writes go to a temporary file renamed into place, so a
killed run never leaves a half-written file.
"""
from __future__ import annotations

import json
from pathlib import Path

from repr_jax.config import RunConfig, RunError
from repr_jax.versions import machine


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def read_config(run_dir: Path) -> RunConfig:
    """The saved settings of a run directory (any config.json layout repr-jax ever wrote)."""
    path = Path(run_dir) / "config.json"
    try:
        saved = json.loads(path.read_text())["config"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise RunError(f"{path} is not a readable repr-jax config ({err})") from None
    return RunConfig.from_dict(saved)


def read_architecture(run_dir: Path, config: RunConfig | None = None) -> dict:
    """``architecture.json`` of a run directory (derived from its config if it predates the file)."""
    path = Path(run_dir) / "architecture.json"
    if path.exists():
        return json.loads(path.read_text())
    return (config or read_config(run_dir)).architecture()


def _difference(old: RunConfig, new: RunConfig) -> str:
    a, b = old.semantic(), new.semantic()
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: saved {a.get(k)!r}, given {b.get(k)!r}" for k in keys)


def prepare_run_dir(config: RunConfig) -> tuple[Path, bool]:
    """Create or validate the run directory; returns (path, resuming).

    A new run writes ``config.json`` and ``architecture.json``. An existing one is resumed
    only with ``resume=True`` and the same result-changing settings (a setting added to
    repr-jax after the run was written counts at its default).
    """
    out = Path(config.out)
    cfg_path = out / "config.json"
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not cfg_path.exists():
            raise RunError(f"--out {out} is not empty and holds no repr-jax run; choose a new --out")
        old = read_config(out)
        if not config.resume:
            raise RunError(f"--out {out} already holds a run; pass --resume to continue it or choose a new --out")
        diff = _difference(old, config)
        if diff:
            raise RunError(f"--out {out} holds a different run (settings differ: {diff})")
        if (out / "summary.json").exists():
            raise RunError(f"the run in {out} is already complete")
        if not (out / "architecture.json").exists():
            write_json(out / "architecture.json", config.architecture())
        return out, True
    out.mkdir(parents=True, exist_ok=True)
    write_json(cfg_path, {"config": config.to_dict(), "versions": machine()})
    write_json(out / "architecture.json", config.architecture())
    return out, False


__all__ = ["prepare_run_dir", "read_architecture", "read_config", "read_jsonl", "write_json",
           "write_jsonl"]
