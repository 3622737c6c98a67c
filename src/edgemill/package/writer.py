"""Write a package atomically: everything goes to a temporary path beside the target, then one rename.

A crash or an error never leaves a half-written package under the requested name. The tar form is
deterministic (sorted members, zeroed times and owners), so equal contents give equal bytes.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .layout import SUFFIX


def is_tar_path(path: Path) -> bool:
    return path.suffix == SUFFIX


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tar_bytes_to(files: Mapping[str, bytes], fileobj: io.BufferedIOBase) -> None:
    with tarfile.open(fileobj=fileobj, mode="w:", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))


def write_package(files: Mapping[str, bytes], out: Path) -> Path:
    """Write ``files`` (posix path -> bytes) as a package at ``out``: a `.emp` tar if ``out`` ends in
    `.emp`, else a directory. Replaces an existing package at ``out`` only once the new one is whole."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    if is_tar_path(out):
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
        try:
            with os.fdopen(fd, "wb") as f:
                tar_bytes_to(files, f)  # type: ignore[arg-type]
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    else:
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
        try:
            for name, data in files.items():
                target = tmp_dir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            os.chmod(tmp_dir, 0o755)
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
                old.rmdir()
                os.replace(out, old)
                os.replace(tmp_dir, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp_dir, out)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
    _fsync_dir(parent)
    return out


def write_file_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write one file through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
