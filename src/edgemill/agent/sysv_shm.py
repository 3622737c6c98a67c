"""System V shared-memory segments named by id (shmget/shmat), read-only: Edge Manager's handles.

Edge Manager applications put large tensors in a System V segment and send its ``shmid``. The agent
attaches read-only, checks the region against the segment's size (``shmctl IPC_STAT``), copies the
bytes out and detaches before returning, so a client may reuse or remove the segment once the reply
arrives. Linux only (the layout of ``struct shmid_ds`` below is Linux's, 32- and 64-bit).
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from functools import lru_cache
from typing import Any

from ..errors import SharedMemoryError

IPC_STAT = 2
SHM_RDONLY = 0o10000
_INT_MAX = 2**31 - 1


class _IpcPerm(ctypes.Structure):
    # glibc's struct ipc_perm on Linux: 48 bytes on 64-bit, 36 on 32-bit (mode and seq padded alike).
    _fields_ = [("key", ctypes.c_int), ("uid", ctypes.c_uint), ("gid", ctypes.c_uint), ("cuid", ctypes.c_uint),
                ("cgid", ctypes.c_uint), ("mode", ctypes.c_uint), ("seq", ctypes.c_ushort), ("pad", ctypes.c_ushort),
                ("reserved1", ctypes.c_ulong), ("reserved2", ctypes.c_ulong)]


class _ShmidDs(ctypes.Structure):
    # Only the size is read; the room after it takes the times and pids the kernel also writes.
    _fields_ = [("shm_perm", _IpcPerm), ("shm_segsz", ctypes.c_size_t), ("rest", ctypes.c_byte * 256)]


@lru_cache(maxsize=1)
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        raise SharedMemoryError("System V shared-memory handles are supported on Linux only", value=sys.platform,
                                fix="send the tensor as byte_data")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    libc.shmat.restype = ctypes.c_void_p
    libc.shmdt.argtypes = [ctypes.c_void_p]
    libc.shmdt.restype = ctypes.c_int
    libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    libc.shmctl.restype = ctypes.c_int
    return libc


def _failure(segment_id: int, err: int) -> SharedMemoryError:
    if err in (errno.EINVAL, errno.EIDRM):
        return SharedMemoryError("no System V shared-memory segment with that id", value=segment_id,
                                 fix="pass the shmid returned by shmget() and keep the segment until the reply")
    if err == errno.EACCES:
        return SharedMemoryError("the System V shared-memory segment is not readable by the agent", value=segment_id,
                                 fix="create it with a mode that lets the agent's user read it (e.g. 0o604)")
    return SharedMemoryError(f"cannot attach System V shared-memory segment ({os.strerror(err)})", value=segment_id,
                             fix="check the segment with `ipcs -m`")


def segment_size(segment_id: int) -> int:
    """The size in bytes of segment ``segment_id``; :class:`SharedMemoryError` if there is none."""
    if not 0 <= segment_id <= _INT_MAX:
        raise _failure(segment_id, errno.EINVAL)
    libc = _libc()
    info = _ShmidDs()
    if libc.shmctl(segment_id, IPC_STAT, ctypes.byref(info)) != 0:
        raise _failure(segment_id, ctypes.get_errno())
    return int(info.shm_segsz)


def read_segment(segment_id: int, offset: int, size: int) -> bytes:
    """A copy of ``size`` bytes at ``offset`` in segment ``segment_id`` (attached read-only, then detached)."""
    total = segment_size(segment_id)
    if offset < 0 or size < 0 or offset + size > total:
        raise SharedMemoryError(f"shared-memory region [{offset}, {offset + size}) lies beyond the segment",
                                value=f"segment {segment_id} ({total} bytes)",
                                fix="make the segment larger or correct offset/size")
    libc = _libc()
    address = libc.shmat(segment_id, None, SHM_RDONLY)
    if address is None or address == ctypes.c_void_p(-1).value:
        raise _failure(segment_id, ctypes.get_errno())
    try:
        return ctypes.string_at(address + offset, size)
    finally:
        libc.shmdt(ctypes.c_void_p(address))
