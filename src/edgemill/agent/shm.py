"""POSIX shared memory regions named by clients: map, bounds-check, read or write, unmap.

Opened through /dev/shm directly rather than multiprocessing.shared_memory, whose resource tracker
would unlink a segment the *client* owns when the agent exits (Python < 3.13).
"""

from __future__ import annotations

import mmap
import os
import re
import stat
from contextlib import contextmanager
from collections.abc import Iterator

from ..errors import SharedMemoryError

SHM_DIR = "/dev/shm"
_NAME = re.compile(r"/?[A-Za-z0-9._-]{1,250}")


@contextmanager
def mapped(name: str, offset: int, size: int, writable: bool = False) -> Iterator[memoryview]:
    """A memoryview of ``size`` bytes at ``offset`` in the shared-memory object ``name``."""
    if not _NAME.fullmatch(name) or name.lstrip("/") in (".", ".."):
        raise SharedMemoryError("bad shared-memory name", value=name,
                                fix="pass the shm_open name, e.g. '/frames' (letters, digits, . _ -)")
    path = os.path.join(SHM_DIR, name.lstrip("/"))
    try:
        fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SharedMemoryError("shared-memory segment does not exist", value=name,
                                fix="create it (shm_open / multiprocessing.shared_memory) before the call "
                                    "and keep it open until the reply") from None
    except PermissionError:
        raise SharedMemoryError("shared-memory segment is not accessible to the agent", value=name,
                                fix="create it with permissions the agent's user can read (and write for outputs)") from None
    except OSError as exc:  # a folder (EISDIR), a symbolic link (ELOOP), ...
        raise SharedMemoryError(f"cannot open that shared-memory segment ({exc.strerror})", value=name,
                                fix="pass the name of a segment created with shm_open") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # /dev/shm also holds folders and, on some hosts, other files
            raise SharedMemoryError("not a shared-memory segment", value=name,
                                    fix="pass the name of a segment created with shm_open")
        total = info.st_size
        if offset < 0 or size < 0 or offset + size > total:
            raise SharedMemoryError(f"shared-memory region [{offset}, {offset + size}) lies beyond the segment",
                                    value=f"{name} ({total} bytes)",
                                    fix="make the segment larger or correct offset/size")
        if size == 0:
            yield memoryview(b"")
            return
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        view_map = mmap.mmap(fd, size + (offset - start), offset=start,
                             access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
    finally:
        os.close(fd)
    view = memoryview(view_map)
    region = view[offset - start:]
    try:
        yield region
    finally:
        region.release()
        view.release()
        view_map.close()
