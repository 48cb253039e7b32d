"""One build at a time in an output folder: an exclusive lock on ``OUT_DIR/.cn-annotate.lock``.

Two builds writing into one folder would both take the same inputs and the same shard numbers. The
lock is an ``flock`` on a file inside the folder, held for the whole build: it is released by the
kernel when the process ends, however it ends, so a killed build never leaves a stale lock. The
file holds the process id of the build that holds it, for the message the second build prints. It
is never deleted (deleting a lock file lets a third process lock a new file while the second still
holds the old one). Locks are advisory and need a local filesystem (on NFS, ``flock`` is emulated
with byte-range locks where the server supports them).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from controlnet.dataset.config import BuildError
from controlnet.dataset.layout import LOCK_FILE

__all__ = ["OutputLock"]


class OutputLock:
    """``with OutputLock(output):`` holds the folder's lock (creating the folder if need be), or
    raises :class:`BuildError` naming the process that holds it."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.fd: int | None = None

    def __enter__(self) -> OutputLock:
        path = self.output / LOCK_FILE
        try:
            self.output.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise BuildError(f"cannot write to {self.output} ({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise BuildError(f"{self.output} is in use by a build ({who}); wait for it to end, or choose another output folder") from None
        except OSError as err:  # a filesystem without locks
            os.close(fd)
            raise BuildError(f"cannot lock {path} ({err.strerror or err}); build on a local filesystem") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the lock holds without the process id; only the message of a second build loses it
        self.fd = fd
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the lock
            self.fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
