"""Read the files of a package, directory or `.emp` tar, without trusting its structure.

A tar member that is a link, a device, a fifo, a sparse file, an absolute path or a path with ``..``
makes the package corrupt; so does a truncated tar. A package is a plain (uncompressed) tar and is never
decompressed, so what it unpacks to is bounded by its own size: every member's bytes must lie inside
the file. A compressed file (a decompression bomb, or just the wrong thing) is refused on its first
bytes. Headers are read one at a time and counted, so a tar of millions of tiny members is refused at
``MAX_FILES`` without reading the rest. Nothing here decides trust: it only yields names and bytes.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import FileNotFound, RefusalReason, VerificationError
from .layout import SUFFIX

MAX_FILES = 10_000  # tar members of any kind, directories included
MAX_TOTAL_BYTES = 16 * 1024**3  # refuse absurd packages before hashing them
_CHUNK = 1 << 20
# The first bytes of the compressed formats tarfile (or a careless tool) would expand. None of them can
# begin a tar of ours, whose first bytes are a member's name.
_COMPRESSED = ((re.compile(rb"\x1f\x8b"), "gzip"), (re.compile(rb"BZh[1-9]1AY&SY"), "bzip2"),
               (re.compile(rb"\xfd7zXZ\x00"), "xz"), (re.compile(rb"\x28\xb5\x2f\xfd"), "zstd"))


def _corrupt(problem: str, value: object = None, fix: str = "rebuild or re-download the package",
             expected: str | None = None) -> VerificationError:
    return VerificationError(RefusalReason.CORRUPT_PACKAGE, problem, value=value, expected=expected, fix=fix)


_KINDS = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a character device",
          tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a fifo"}


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
                    raise _corrupt("package holds too many files", value=f"more than {MAX_FILES}",
                                   expected=f"at most {MAX_FILES}")

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
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise _corrupt(f"not a readable {SUFFIX} package ({exc})", value=str(path)) from None
        try:
            self._members = self._index(path, total_size)
        except BaseException:
            self._tar.close()
            raise

    def _index(self, path: Path, total_size: int) -> dict[str, tarfile.TarInfo]:
        """Read the headers one by one (never all of them first), judging each as it comes."""
        found: dict[str, tarfile.TarInfo] = {}
        total = count = 0
        while True:
            try:
                m = self._tar.next()
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise _corrupt(f"not a readable {SUFFIX} package ({exc})", value=str(path)) from None
            if m is None:
                return found
            count += 1
            if count > MAX_FILES:
                raise _corrupt("package holds too many tar members", value=f"more than {MAX_FILES}",
                               expected=f"at most {MAX_FILES} (files and directories)",
                               fix="a package holds a handful of files; rebuild it with `edgemill compile`")
            if m.isdir():
                _check_name(m.name, path)
                continue
            if not m.isfile() or m.issparse():
                kind = "a sparse file" if m.isfile() else _KINDS.get(m.type, f"tar type {m.type!r}")
                raise _corrupt(f"a package may hold only regular files, not {kind}", value=m.name)
            name = _check_name(m.name, path)
            if name in found:
                raise _corrupt("duplicate file inside package", value=name)
            if m.offset_data + m.size > total_size:
                raise _corrupt(f"package is truncated inside {name!r}", value=str(path), fix="re-download or rebuild the package")
            total += m.size
            if total > MAX_TOTAL_BYTES:
                raise _corrupt("package is larger than the limit", value=f"{total} bytes in its first {count} members",
                               expected=f"at most {MAX_TOTAL_BYTES} bytes")
            found[name] = m

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
    with open(p, "rb") as f:
        head = f.read(16)
    compression = next((kind for magic, kind in _COMPRESSED if magic.match(head)), None)
    if compression is not None:
        raise _corrupt(f"a {compression}-compressed file is not a package: a {SUFFIX} is a plain tar and is never "
                       "decompressed (its unpacked size could be unbounded)", value=str(p),
                       expected=f"an uncompressed {SUFFIX} tar", fix="pass the .emp file `edgemill compile` wrote, as it is")
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
