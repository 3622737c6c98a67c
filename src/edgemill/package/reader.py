"""Read the files of a package, directory or `.emp` tar, without trusting its structure.

A tar member that is a link, a device, an absolute path or a path with ``..`` makes the package
corrupt; so does a truncated tar. Nothing here decides trust: it only yields names and bytes.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import FileNotFound, RefusalReason, VerificationError
from .layout import SUFFIX

MAX_FILES = 10_000
MAX_TOTAL_BYTES = 16 * 1024**3  # refuse absurd packages before hashing them
_CHUNK = 1 << 20


def _corrupt(problem: str, value: object = None, fix: str = "rebuild or re-download the package") -> VerificationError:
    return VerificationError(RefusalReason.CORRUPT_PACKAGE, problem, value=value, fix=fix)


def _check_name(name: str, package: Path) -> str:
    norm = posixpath.normpath(name)
    if name.startswith("/") or norm.startswith("..") or norm in (".", "") or "\\" in name:
        raise _corrupt(f"unsafe path inside package {package}", value=name)
    return norm


class PackageReader:
    """The files of a package: posix paths relative to its root, and their bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def names(self) -> list[str]:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def open(self, name: str) -> BinaryIO:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def sha256(self, name: str) -> str:
        h = hashlib.sha256()
        with self.open(name) as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        return h.hexdigest()

    def digests(self) -> dict[str, str]:
        return {name: self.sha256(name) for name in self.names()}

    def close(self) -> None:
        pass

    def __enter__(self) -> PackageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DirectoryReader(PackageReader):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._sizes: dict[str, int] = {}
        for root, dirs, files in os.walk(path, followlinks=False):
            for d in dirs:
                if os.path.islink(os.path.join(root, d)):
                    raise _corrupt("symbolic link inside package", value=os.path.relpath(os.path.join(root, d), path))
            for f in files:
                full = os.path.join(root, f)
                st = os.lstat(full)
                rel = Path(full).relative_to(path).as_posix()
                if not stat.S_ISREG(st.st_mode):
                    raise _corrupt("a package may hold only regular files", value=rel)
                self._sizes[rel] = st.st_size
                if len(self._sizes) > MAX_FILES:
                    raise _corrupt("package holds too many files", value=len(self._sizes))

    def names(self) -> list[str]:
        return sorted(self._sizes)

    def size(self, name: str) -> int:
        return self._sizes[name]

    def open(self, name: str) -> BinaryIO:
        if name not in self._sizes:
            raise KeyError(name)
        return open(self.path / name, "rb")


class TarReader(PackageReader):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        total_size = path.stat().st_size
        try:
            self._tar = tarfile.open(path, mode="r:")
            members = self._tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise _corrupt(f"not a readable {SUFFIX} package ({exc})", value=str(path)) from None
        self._members: dict[str, tarfile.TarInfo] = {}
        total = 0
        for m in members:
            if m.isdir():
                _check_name(m.name, path)
                continue
            if not m.isfile():
                raise _corrupt("a package may hold only regular files", value=m.name)
            name = _check_name(m.name, path)
            if name in self._members:
                raise _corrupt("duplicate file inside package", value=name)
            if m.offset_data + m.size > total_size:
                raise _corrupt(f"package is truncated inside {name!r}", value=str(path), fix="re-download or rebuild the package")
            total += m.size
            if total > MAX_TOTAL_BYTES or len(self._members) >= MAX_FILES:
                raise _corrupt("package is larger than the limit", value=f"{total} bytes, {len(members)} files")
            self._members[name] = m

    def names(self) -> list[str]:
        return sorted(self._members)

    def size(self, name: str) -> int:
        return self._members[name].size

    def open(self, name: str) -> BinaryIO:
        f = self._tar.extractfile(self._members[name])
        assert f is not None  # regular files always extract
        return f  # type: ignore[return-value]

    def close(self) -> None:
        self._tar.close()


def open_package(path: str | os.PathLike[str]) -> PackageReader:
    """A reader for the package at ``path`` (a directory or an `.emp` file)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFound(
            "package not found", value=str(p), fix=f"give the path of a package directory or {SUFFIX} file"
        )
    if p.is_dir():
        return DirectoryReader(p)
    if not tarfile.is_tarfile(p):
        raise _corrupt(
            f"not an edgemill package (neither a directory nor a {SUFFIX} tar)",
            value=str(p),
            fix="pass the output of `edgemill compile`",
        )
    return TarReader(p)


def iter_files(reader: PackageReader) -> Iterator[tuple[str, bytes]]:
    for name in reader.names():
        yield name, reader.read(name)
