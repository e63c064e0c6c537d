"""The run directory's files: creation, the resume check, and atomic JSON / JSON-lines writes.

``config.json`` (settings, the data's fingerprint, :func:`repr_jax.versions.machine`),
``architecture.json`` (the model, enough to rebuild it — also for an exported smaller
model), ``metrics.jsonl``, ``pruning.jsonl``, ``summary.json``. Writes go to a temporary
file renamed into place, so a killed run never leaves a half-written file; JSON is strict
(no bare NaN); an OS error becomes a one-line :class:`RunError`. The directory itself is
created with its first two files in one rename.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

from repr_jax.config import RunConfig, as_trained, migrate
from repr_jax.errors import RunError
from repr_jax.run_lock import RunLock
from repr_jax.versions import machine


def torn_tail(path: Path) -> bool:
    """Whether the JSON-lines file ``path`` ends in a line cut short (no newline, not JSON)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return False
    if not text or text.endswith("\n"):
        return False
    try:
        json.loads(text.splitlines()[-1])
    except (ValueError, RecursionError):
        return True
    return False


def read_jsonl(path: Path, torn_tail_ok: bool = False) -> list[dict]:
    """The rows of a JSON-lines file ([] when it does not exist); ``RunError`` naming the file
    and line when it is damaged (truncated, edited into something that is not JSON objects).
    ``torn_tail_ok``: a last line cut short (no newline after it, not JSON) is dropped — what a
    resume does, since it rewrites the file from its checkpoint's epoch on."""
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise RunError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    lines = text.splitlines()
    if torn_tail_ok and torn_tail(path):
        import sys
        print(f"warning: {path}'s last line is cut short; dropped (the resume writes it again)", file=sys.stderr)
        lines = lines[:-1]
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as err:
            raise RunError(f"{path} is damaged at line {number} ({err}); the run's log cannot be trusted") from None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            raise RunError(f"{path} is damaged at line {number}: not a row with an epoch")
        rows.append(row)
    return rows


def read_json(path: Path, what: str = "file") -> dict:
    """A JSON object file of a run directory; ``RunError`` naming it when unreadable."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as err:   # RecursionError: nested beyond Python's stack
        raise RunError(f"{path} is not a readable {what} ({' '.join(str(err).split())})") from None
    if not isinstance(value, dict):
        raise RunError(f"{path} is not a readable {what} (expected a JSON object)")
    return value


def read_summary(run_dir: Path) -> dict:
    """``summary.json`` of a run ({} when the run has none yet)."""
    path = Path(run_dir) / "summary.json"
    return read_json(path, "summary") if path.exists() else {}


def finite_row(row: dict) -> dict:
    """``row`` with non-finite numbers (also inside nested dicts) as ``null``, their keys
    listed under ``"non_finite"``: ``metrics.jsonl`` stays strict JSON."""
    bad: list[str] = []

    def clean(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out[k] = clean(v, f"{prefix}{k}.")
            elif isinstance(v, float) and not math.isfinite(v):
                out[k] = None
                bad.append(prefix + k)
            else:
                out[k] = v
        return out

    cleaned = clean(row)
    if bad:
        cleaned["non_finite"] = bad
    return cleaned


def _write(path: Path, text: str) -> None:
    """Write ``text`` atomically (temporary file renamed into place); ``RunError`` on an
    OS error (disk full, permissions), the old file left as it was."""
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise RunError(f"cannot write {path}: {err.strerror or err}") from None


def write_jsonl(path: Path, rows: list[dict]) -> None:
    _write(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))


def write_json(path: Path, obj) -> None:
    _write(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def read_config(run_dir: Path) -> RunConfig:
    """The saved settings of a run directory (any config.json layout repr-jax ever wrote)."""
    path = Path(run_dir) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as err:   # JSON, UTF-8 or nesting beyond the stack
        raise RunError(f"{path} is not a readable repr-jax config ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise RunError(f"{path} is not a repr-jax config (expected an object with a 'config' object)")
    return RunConfig.from_dict(as_trained(migrate(saved["config"])))


def read_architecture(run_dir: Path, config: RunConfig | None = None) -> dict:
    """``architecture.json`` of a run directory (derived from its config if it predates the file)."""
    path = Path(run_dir) / "architecture.json"
    if path.exists():
        return read_json(path, "architecture")
    return (config or read_config(run_dir)).architecture()


_FROM_DATA = ("data.input_shape", "data.num_classes")   # recorded from the data when a run starts


def _semantics(old: RunConfig, new: RunConfig) -> tuple[dict, dict]:
    """Both settings' :meth:`RunConfig.semantic`; what ``new`` has not yet read from its data
    (``None``) is taken as ``old``'s (the data's fingerprint is compared once it is read)."""
    a, b = old.semantic(), new.semantic()
    for key in _FROM_DATA:
        if b.get(key) is None:
            b[key] = a.get(key)
    return a, b


def _differing(old: RunConfig, new: RunConfig) -> list[str]:
    a, b = _semantics(old, new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _difference(old: RunConfig, new: RunConfig) -> str:
    a, b = _semantics(old, new)
    return ", ".join(f"{k}: saved {a.get(k)!r}, given {b.get(k)!r}" for k in _differing(old, new))


def is_extension(old: RunConfig, new: RunConfig) -> bool:
    """``new`` only trains longer than ``old`` (``--resume --epochs N`` with a larger N)."""
    return _differing(old, new) == ["epochs"] and new.epochs > old.epochs


def record_extension(out: Path, epochs: int) -> None:
    """Write the longer ``epochs`` into a run's ``config.json`` (atomically)."""
    saved = read_json(Path(out) / "config.json", "repr-jax config")
    saved["config"]["epochs"] = int(epochs)
    write_json(Path(out) / "config.json", saved)


def _blocking_file(out: Path) -> Path | None:
    for parent in [out, *out.parents]:
        if parent.exists():
            return parent if not parent.is_dir() else None
    return None


def check_run_dir(config: RunConfig) -> bool:
    """Whether ``config.out`` is a run to resume (True) or a place for a new one (False);
    ``RunError`` otherwise. Reads only: nothing is written before the data has loaded."""
    out = Path(config.out)
    blocking = _blocking_file(out)
    if blocking is not None:
        raise RunError(f"--out {out}: {blocking} is a file, not a directory")
    if not out.exists() or not any(out.iterdir()):
        if config.resume:
            raise RunError(f"--resume: {out} holds no run to resume")
        return False
    if not (out / "config.json").exists():
        raise RunError(f"--out {out} is not empty and holds no repr-jax run; choose a new --out")
    if (out / "checkpoints").exists() and not (out / "checkpoints").is_dir():
        raise RunError(f"{out / 'checkpoints'} is a file, not the run's checkpoint directory; nothing was changed")
    old = read_config(out)
    if not config.resume:
        raise RunError(f"--out {out} already holds a run; pass --resume to continue it or choose a new --out")
    extend = is_extension(old, config)
    diff = _difference(old, config)
    if diff and not extend:
        raise RunError(f"--out {out} holds a different run (settings differ: {diff})")
    if (out / "summary.json").exists():
        summary = read_summary(out)
        if summary.get("status") == "diverged":
            raise RunError(f"the run in {out} diverged at epoch {summary.get('diverged_epoch')} "
                           "(see its summary.json); start a new run with other settings")
        if not extend:
            raise RunError(f"the run in {out} is already complete (--resume --epochs N with a larger N "
                           "trains it further)")
    return True


# a streamed run stopped at an unreadable image: {"file", "epoch", "others": the data's
# fingerprint with that file's size left out (fingerprint_with(sizes={file: -1}))}
STREAM_STOP = "stream_stop.json"


def check_data(out: Path, data_fingerprint: str, fingerprint_with=None) -> None:
    """A resumed or evaluated run must see the data it was trained on (its path may change).
    A streamed run that stopped at an unreadable image (``stream_stop.json``) also accepts
    the data with only that file changed (repaired): every other file as when it stopped."""
    saved = read_json(Path(out) / "config.json", "repr-jax config").get("data_fingerprint")
    stop = Path(out) / STREAM_STOP
    if saved is not None and saved != data_fingerprint and fingerprint_with is not None and stop.is_file():
        record = read_json(stop, "stream stop record")
        try:
            repaired = fingerprint_with(sizes={str(record["file"]): -1}) == record["others"]
        except (KeyError, TypeError, ValueError, OSError):
            repaired = False
        if repaired:
            print(f"note: {record['file']} changed since the run stopped at it (repaired); the rest of the data "
                  "is the run's", file=sys.stderr)
            return
    if saved is not None and saved != data_fingerprint:
        raise RunError(f"the data differs from the run in {out}: fingerprint {saved[:12]}… saved, "
                       f"{data_fingerprint[:12]}… given (a run may read its data from a new path, "
                       "not other data)")


def create_run_dir(config: RunConfig, data_fingerprint: str, lock: RunLock | None = None) -> Path:
    """Create ``config.out`` with ``config.json`` and ``architecture.json``, atomically: the
    files are written into a hidden sibling directory that is renamed into place, so a
    failure (disk full, no permission) leaves nothing that blocks a retry. ``lock`` (not yet
    held) is taken inside that directory first, so the run appears locked."""
    out = Path(config.out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        if lock is not None:
            lock.moved_to(tmp)
            lock.acquire()
        write_json(tmp / "config.json", {"config": config.to_dict(), "data_fingerprint": data_fingerprint,
                                         "versions": machine()})
        write_json(tmp / "architecture.json", config.architecture())
        os.rename(tmp, out)      # replaces an empty directory, fails on a non-empty one
        if lock is not None:
            lock.moved_to(out)
    except (OSError, RunError) as err:
        if lock is not None:
            lock.release()
            lock.moved_to(out)
        shutil.rmtree(tmp, ignore_errors=True)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).rsplit(": ", 1)[-1]
        raise RunError(f"cannot create run directory {out}: {reason}") from None
    return out


__all__ = ["STREAM_STOP", "check_data", "check_run_dir", "create_run_dir", "read_architecture", "read_config",
           "read_json", "torn_tail", "read_jsonl", "read_summary", "write_json", "write_jsonl"]
