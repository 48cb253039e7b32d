"""Reading an input file without trusting it: only regular files, and at most a byte limit.

A path that names a named pipe blocks its reader forever, and one that names (or links to) a device
such as ``/dev/zero`` never ends; an image or caption file is neither. :func:`read_regular_file`
refuses both before reading a byte, and refuses files over a size limit, so that one hostile file
costs a line in a skip log instead of a hung process or all its memory.
"""

from __future__ import annotations

import os
import stat

__all__ = ["DEFAULT_MAX_FILE_BYTES", "FileRefusedError", "read_regular_file"]

#: Larger input files are refused: far above any photograph's size, and a bound on memory per read.
DEFAULT_MAX_FILE_BYTES = 256 * 2**20

_KINDS = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


class FileRefusedError(OSError):
    """An input file that is not read: its ``reason`` says why, in a few words."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a plain file")


def read_regular_file(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file at ``path`` (symbolic links followed), at most ``max_bytes``.

    Raises :class:`FileRefusedError` with reason ``"cannot read file (...)"`` for a file that cannot
    be opened, ``"not a regular file (a named pipe)"`` (or a device, socket, folder) and
    ``"file too large (N bytes > M)"``.
    """
    try:
        before = os.stat(path)  # checked before opening: opening some devices has effects of its own
        if not stat.S_ISREG(before.st_mode):
            raise FileRefusedError(path, f"not a regular file ({_kind(before.st_mode)})")
        # O_NONBLOCK: should the path become a pipe between the check and the open, the open must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
    except FileRefusedError:
        raise
    except OSError as err:
        raise FileRefusedError(path, f"cannot read file ({err.strerror or err})") from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise FileRefusedError(path, f"not a regular file ({_kind(opened.st_mode)})")
        if opened.st_size > max_bytes:
            raise FileRefusedError(path, f"file too large ({opened.st_size} bytes > {max_bytes})")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as handle:
            fd = -1
            # Sized by the file: asking for max_bytes + 1 at once allocates (and page-faults) that
            # much for every file, 3x the cost of the read itself on small photos. A file that grows
            # while it is read is still read to its end, and still bounded.
            data = handle.read(opened.st_size + 1)
            if len(data) > opened.st_size:
                data += handle.read(max_bytes + 1 - len(data))
    except FileRefusedError:
        raise
    except OSError as err:
        raise FileRefusedError(path, f"cannot read file ({err.strerror or err})") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > max_bytes:
        raise FileRefusedError(path, f"file too large (over {max_bytes} bytes)")
    return data
