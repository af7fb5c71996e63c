"""One sweep per results folder: an advisory lock file naming its owner.

``<results>/.lock`` holds the owner's pid, host, start time and command, and the owner holds an
exclusive ``flock`` on it for as long as it runs. The kernel releases that lock when the owner
dies in any way (SIGKILL included), so a lock left by a dead process is simply taken over; a
second live sweep on the same folder is refused with a message naming the owner, or waits for it
with ``wait=True``. POSIX only (``fcntl``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from . import provenance
from .errors import UserError

LOCK_NAME = ".lock"
WAIT_POLL_SECONDS = 1.0


class FolderInUseError(UserError):
    """Another live process holds the results folder's lock."""


class FolderLock:
    """``with FolderLock(results):`` holds the folder's lock (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike[str], *, wait: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.wait = wait
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or wait for it (``wait``), or raise ``FolderInUseError``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                owner = describe(read_owner(self.path))
                if not self.wait:
                    os.close(fd)
                    raise FolderInUseError(
                        f"results folder {self.folder} is in use by {owner}; wait for it to "
                        "finish, pass --wait to wait for it, or use another --results folder"
                    ) from None
                if not told:
                    print(f"waiting for {owner} to release {self.folder}", file=sys.stderr)
                    told = True
                time.sleep(WAIT_POLL_SECONDS)
        previous = read_owner(self.path)
        if previous and previous.get("pid") != os.getpid():
            print(
                f"note: took over the lock of {describe(previous)}, which is no longer running",
                file=sys.stderr,
            )
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(owner_info()).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the file stays, empty of meaning once unlocked)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def owner_info() -> dict[str, Any]:
    """This process: pid, host, start time, command."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": provenance.now(),
        "command": provenance.command_line(),
    }


def read_owner(path: Path) -> dict[str, Any] | None:
    """The owner written in a lock file, None when empty or unreadable."""
    try:
        data = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe(owner: dict[str, Any] | None) -> str:
    """``pid 123 on host h (started ..., command `...`)``, or a plain phrase when unknown."""
    if not owner:
        return "another process"
    text = f"pid {owner.get('pid')} on host {owner.get('host')}"
    extra = [f"started {owner['started']}"] if owner.get("started") else []
    if owner.get("command"):
        extra.append(f"command `{owner['command']}`")
    return text + (f" ({', '.join(extra)})" if extra else "")
