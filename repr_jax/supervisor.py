"""One process of a multi-process run, watched: its stops in bounded time say one line.

JAX's coordination service ends a process whose peer stopped (crashed, killed, interrupted)
with a C++ fatal log and a stack dump (``abort()``), and a failed process would wait at the
distributed shutdown barrier for peers that never come. So the CLI runs each process of a
multi-process run (``--coordinator``) as a child of a small supervisor (:func:`supervise`):

* the child's standard output passes through; its standard error is relayed line by line,
  except the coordination service's own logs, and everything after its fatal line;
* SIGINT and SIGTERM sent to the supervisor are forwarded to the child (which stops as on
  Ctrl-C, exit 130, its last checkpoint kept); SIGKILL of the supervisor kills the child too
  (Linux: ``PR_SET_PDEATHSIG``), so its peers stop as for any lost process;
* when the child is ended by the coordination service (its fatal line) or by SIGABRT the
  supervisor did not forward (gloo's collectives abort a process whose peer is gone), the
  supervisor prints one line — another process of the run stopped — and exits 2; ended by
  another signal (SIGKILL from the out-of-memory killer), one line naming it.

The child, when it fails itself, prints its one line and exits at once
(:func:`exit_at_once`), skipping the shutdown barrier. Nothing here runs JAX.
"""
from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys

SUPERVISED = "REPR_JAX_SUPERVISED"      # set in the child's environment
_GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")
_FATAL = re.compile(r"^F\d{4} .*?\] (.*)")


def supervised() -> bool:
    """Whether this process is a supervised child (or needs no supervisor)."""
    return os.environ.get(SUPERVISED) == "1"


def _die_with(parent: int) -> None:
    """In the child before it runs: SIGKILL it when its parent (the supervisor, pid
    ``parent``) dies — ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; without it a ``kill -9`` of the
    command a user started would leave its training process running, unseen, in its own
    session."""
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:   # the parent died before the call: do not start orphaned
        os._exit(1)


def supervise(command: list[str]) -> int:
    """Run ``command`` (this CLI invocation) as a supervised child; its exit code, or 2 with
    one line when JAX's coordination service ended it because another process stopped."""
    # its own session: a Ctrl-C in the terminal reaches the child once, forwarded by us;
    # killed with us (Linux): a kill -9 of this process must not leave the child training on
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, errors="replace",
                             env=dict(os.environ, **{SUPERVISED: "1"}), start_new_session=True,
                             preexec_fn=functools.partial(_die_with, os.getpid())
                             if sys.platform.startswith("linux") else None)

    forwarded = []

    def forward(signum, frame):
        forwarded.append(signum)
        if child.poll() is None:
            child.send_signal(signum)
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    fatal, said = None, False   # said: the child printed its own one-line error already
    try:
        for line in child.stderr:
            if fatal is not None:
                continue
            said = said or line.startswith("error:")
            match = _FATAL.match(line)
            if match:
                fatal = match.group(1).strip()
                continue
            if _GLOG.match(line) and "coordination" in line.lower():
                continue
            sys.stderr.write(line)
            sys.stderr.flush()
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code != 0 and (fatal is not None or (code == -signal.SIGABRT and not forwarded)):
        if said:   # e.g. "another process … stopped" from a collective that lost its peer
            return 2
        if fatal is not None:
            cause = "JAX's coordination service: " + " ".join(fatal.split("absl::Status:")[-1].split())[:160]
        else:
            cause = "ended by SIGABRT, as JAX's collectives end a process whose peer is gone"
        sys.stderr.write(f"error: another process of this multi-process run stopped, so this one stopped too "
                         f"({cause}); the run directory keeps its last checkpoint (--resume continues)\n")
        return 2
    if code < 0 and not forwarded:   # killed from outside (the kernel's out-of-memory killer: SIGKILL)
        sys.stderr.write(f"error: this process of the multi-process run was ended by {signal.Signals(-code).name}"
                         " (out of memory?); the run directory keeps its last checkpoint (--resume continues)\n")
    return code if code >= 0 else 128 - code


_PEER_LOST = re.compile(r"(Connection (closed|reset) by peer|Gloo \w+ failed)", re.IGNORECASE)


def peer_stopped(err: BaseException) -> str | None:
    """The one line for an error of a collective whose peer process is gone (gloo's
    "Connection closed by peer", wherever it surfaced: a train step, a checkpoint write),
    else None."""
    text = " ".join(str(err).split())
    if not _PEER_LOST.search(text):
        return None
    return (f"another process of this multi-process run stopped, so this one stopped too ({text[:160]}); "
            "the run directory keeps its last checkpoint (--resume continues)")


def exit_at_once(code: int, grace: float = 0.0) -> None:
    """End a supervised child now with ``code`` (after ``grace`` seconds, letting peers
    print their own line first), skipping the distributed shutdown barrier its peers may
    never reach."""
    import time
    sys.stdout.flush()
    sys.stderr.flush()
    if grace:
        time.sleep(grace)
    os._exit(code)


__all__ = ["SUPERVISED", "exit_at_once", "peer_stopped", "supervise", "supervised"]
