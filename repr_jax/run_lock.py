"""One writer per run directory: an advisory lock file, ``<run>/.lock``.

A process that trains a run (a new one, ``--resume``, one seed of ``--seeds K``) holds
:class:`RunLock` from before it reads the run's state until it ends. The file holds the
holder's PID, host name, start time and command line as JSON, and the holder keeps an
exclusive :func:`fcntl.flock` on it: the kernel releases that when the process ends in any
way — SIGKILL and a crash included — so a lock file nobody holds is *stale* and the next
process simply takes it over. A second process that finds the lock held stops with a
one-line :class:`~repr_jax.errors.RunError` naming the holder, before it has read or changed
anything in the directory.

A new run's lock is taken inside the hidden directory that is then renamed into place
(:func:`repr_jax.run_dir.create_run_dir`): the run directory never exists unlocked while
its creator runs. Locks across hosts: on a network file system where ``flock`` does not
reach other hosts, a lock file written on another host is never taken over; the message
says to delete it if no process there uses the run.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from repr_jax.errors import RunError

LOCK_NAME = ".lock"


def _holder(path: Path) -> dict:
    """What a lock file says about its holder (empty when unreadable or being written)."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return info if isinstance(info, dict) else {}


def _describe(info: dict) -> str:
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"PID {info.get('pid')} on {info.get('host')} (since {since}: {info.get('command', '?')})"


class RunLock:
    """The exclusive lock of one run directory (see the module docstring)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.directory / LOCK_NAME

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        """Take the lock or raise ``RunError`` naming the holder; a stale lock is taken over."""
        if self._fd is not None:
            return self
        for _ in range(10):   # the file may be replaced under us by a releasing holder: retry
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise RunError(f"cannot lock {self.directory}: {err.strerror or err}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunError(f"{self.directory} is in use by {_describe(_holder(self.path))}; wait for it "
                               "to end or stop it (one process writes a run directory at a time)") from None
            except OSError as err:
                os.close(fd)
                raise RunError(f"cannot lock {self.directory}: {err.strerror or err}") from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:      # released and unlinked between our open and our flock
                os.close(fd)
                continue
            previous = _holder(self.path)
            if previous and previous.get("host") != socket.gethostname():
                os.close(fd)
                raise RunError(f"{self.path} names {_describe(previous)}, another host, whose lock this "
                               "host cannot see; delete the file if no process there uses the run")
            self._fd = fd
            self._write()
            return self
        raise RunError(f"cannot lock {self.directory}: its lock file keeps changing")

    def _write(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join(sys.argv)[:500]}
        data = (json.dumps(info) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def moved_to(self, directory: str | Path) -> None:
        """The locked directory was renamed to ``directory`` (the lock stays held)."""
        self.directory = Path(directory)

    def release(self) -> None:
        """Remove the lock file and let go (safe to call twice)."""
        if self._fd is None:
            return
        try:
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)   # closing releases the flock
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["LOCK_NAME", "RunLock"]
