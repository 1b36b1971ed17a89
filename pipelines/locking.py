"""One run at a time per output folder: an advisory ``flock`` on ``<folder>/.outcomes.lock``.

``outcomes run`` (and :func:`pipelines.pipeline.run_pipeline`) hold the lock of the processed
folder, and of the reports folder, for the whole run. A second run on the same folders
waits up to ``wait`` seconds for it and otherwise refuses with :class:`RunLocked`, whose
message names the other run's process id, host and start time (written into the lock
file by the run that holds it).

Why ``flock`` and not "create a file if it does not exist": the kernel drops the lock
when its holder dies, however it dies (SIGKILL, power loss of the process, OOM killer), so
a crashed run never leaves a lock behind that someone has to delete by hand. The lock
file itself is never deleted (deleting it would let two runs lock two different files
of the same name); its content is only a description of the current holder, and after a
crash it still names the dead run until the next run overwrites it. The lock is the
``flock``, not the content.

Locks are re-entrant within one thread: ``outcomes run`` takes the lock before it
imports Dagster (so that a refusal is immediate) and ``run_pipeline`` takes it again;
the inner acquisition only counts. Another thread of the same process opens the lock file
again and so waits like another process would (``flock`` locks belong to open files).

Limits: ``flock`` is advisory (it stops other runs of this code, not other programs) and
is not reliable on some network file systems (old NFS); keep the processed folder on a
local disk. Runs launched from the Dagster UI or daemon do not take this lock (see
docs/reliability.md).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".outcomes.lock"
#: exit status of a run refused because another run holds the lock (sysexits.h EX_TEMPFAIL)
EX_TEMPFAIL = 75
POLL_SECONDS = 0.2

_held: dict[str, list] = {}  # resolved lock path -> [fd, depth, thread id] for locks this process holds
_held_guard = threading.Lock()


@dataclass(frozen=True)
class Holder:
    """What the lock file says about the run that holds it."""

    pid: int | None = None
    host: str = ""
    started: str = ""  # ISO 8601, UTC
    command: str = ""

    def describe(self) -> str:
        if self.pid is None:
            return "another run (its details could not be read)"
        where = f" on {self.host}" if self.host and self.host != socket.gethostname() else ""
        started = self.started
        try:
            started = datetime.fromisoformat(self.started).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
        except ValueError:
            pass
        return f"another run (pid {self.pid}{where}, started {started or 'at an unknown time'})"


class RunLocked(RuntimeError):
    """The folder is locked by another run; ``str()`` is a one-line message for the operator."""

    def __init__(self, folder: Path, holder: Holder, waited: float) -> None:
        self.folder, self.holder, self.waited = folder, holder, waited
        waited_text = f"; waited {waited:.0f}s" if waited >= 1 else ""
        super().__init__(f"{folder} is in use by {holder.describe()}{waited_text}; "
                         "try again when it has finished, or pass --wait SECONDS")


def lock_path(folder: str | Path) -> Path:
    return Path(folder) / LOCK_NAME


def read_holder(folder: str | Path) -> Holder:
    """The holder described in ``folder``'s lock file (empty :class:`Holder` if unreadable)."""
    try:
        data = json.loads(lock_path(folder).read_text(encoding="utf-8") or "{}")
        pid = data.get("pid")
        return Holder(pid=int(pid) if pid is not None else None, host=str(data.get("host", "")),
                      started=str(data.get("started", "")), command=str(data.get("command", "")))
    except (OSError, ValueError, TypeError, AttributeError):
        return Holder()


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists on this host (conservative: True when unsure)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


def _holder_now(folder: Path) -> Holder:
    """Read the holder, giving a run that has just taken the lock a moment to describe itself."""
    holder = read_holder(folder)
    for _ in range(10):
        if holder.pid is not None and (holder.host not in ("", socket.gethostname()) or pid_alive(holder.pid)):
            break
        time.sleep(0.05)
        holder = read_holder(folder)
    return holder


def _describe_self(fd: int, command: str | None) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command if command is not None else " ".join(sys.argv)[:500]}
    data = (json.dumps(info) + "\n").encode("utf-8")
    os.pwrite(fd, data, 0)  # write first, then cut: a reader never sees an empty file
    os.ftruncate(fd, len(data))


@contextmanager
def folder_lock(folder: str | Path, wait: float = 0.0, command: str | None = None,
                on_wait=None) -> Iterator[Path]:
    """Hold the run lock of ``folder`` (created if missing) for the ``with`` block.

    ``wait``: seconds to wait for another holder (0: refuse at once). ``on_wait(folder,
    holder)`` is called once if the lock is busy and we are going to wait. Raises
    :class:`RunLocked`; OSError if the lock file cannot be created.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = lock_path(folder)
    key = str(path.resolve())
    me = threading.get_ident()
    with _held_guard:
        reentered = key in _held and _held[key][2] == me
        if reentered:
            _held[key][1] += 1
    if reentered:
        try:
            yield path
        finally:
            with _held_guard:
                _held[key][1] -= 1
        return

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        started = time.monotonic()
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            waited = time.monotonic() - started
            if waited >= wait:
                raise RunLocked(folder, _holder_now(folder), waited)
            if not announced and on_wait is not None:
                on_wait(folder, _holder_now(folder))
            announced = True
            time.sleep(min(POLL_SECONDS, max(wait - waited, 0.01)))
        _describe_self(fd, command)
        with _held_guard:
            _held[key] = [fd, 1, me]
        try:
            yield path
        finally:
            with _held_guard:
                _held.pop(key, None)
            try:
                os.ftruncate(fd, 0)  # the file no longer describes a running run
            except OSError:
                pass
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@contextmanager
def run_lock(*folders: str | Path, wait: float = 0.0, command: str | None = None,
             on_wait=None) -> Iterator[None]:
    """Hold the run locks of several folders (taken in the order given; a folder named twice
    is locked once). The ``wait`` deadline is shared by all of them."""
    deadline = time.monotonic() + wait
    seen: set[Path] = set()
    with ExitStack() as stack:
        for folder in folders:
            resolved = Path(folder).resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            remaining = max(deadline - time.monotonic(), 0.0)
            stack.enter_context(folder_lock(folder, wait=remaining, command=command, on_wait=on_wait))
        yield


def holds_lock(folder: str | Path) -> bool:
    """True if this thread holds the run lock of ``folder``."""
    with _held_guard:
        held = _held.get(str(lock_path(folder).resolve()))
        return held is not None and held[2] == threading.get_ident()
