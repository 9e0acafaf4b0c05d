"""One writer per results folder: a second stabsweep on the same ``--out`` is refused.

Two commands appending to one ``trials.csv`` would interleave their rows. A command takes an
exclusive lock on its folder's ``.lock`` file before it reads or deletes anything there, and
writes its pid, host and start time into it, so the one refused can say who holds it. The
lock is an OS file lock (``flock``): the kernel drops it when the holder exits, however it
exits (``kill -9`` included), so a stale ``.lock`` file never blocks anyone. Within one process
the lock is re-entrant, and :func:`release_all` lets it go when a command ends.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from stabsweep.errors import UserError

LOCK_FILE = ".lock"
_held: dict[Path, int] = {}  # folder -> open file descriptor holding its lock


def hold(folder: Path) -> None:
    """Lock ``folder`` for this process, or raise UserError naming the process that holds it."""
    import fcntl

    folder = folder.resolve()
    if folder in _held:
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _describe(os.read(fd, 4096))
        os.close(fd)
        raise UserError(
            f"{folder}: another stabsweep is writing here ({holder}); wait for it to finish, or give another --out"
        ) from None
    os.ftruncate(fd, 0)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.write(fd, json.dumps(me).encode())
    _held[folder] = fd


def release_all() -> None:
    """Let go of every lock this process holds (the end of a command)."""
    import fcntl

    while _held:
        _, fd = _held.popitem()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _describe(raw: bytes) -> str:
    try:
        holder = json.loads(raw.decode())
        return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "a process that left no details"
