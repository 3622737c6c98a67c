"""The edgemill wheel that goes into a bundle, written from this installation's own files.

Why not ``pip wheel`` of the source tree: building runs setup.py, which generates the gRPC stubs with
grpcio-tools, and an isolated build fetches setuptools and grpcio-tools from an index; a machine that
prepares bundles for offline devices is often offline itself, and a plain ``pip install edgemill`` has
no source tree at all. The imported package directory, in contrast, is complete in both layouts (a
regular install, or an editable checkout where the stubs were generated at install time), so the
wheel is zipped from it plus the distribution's metadata. edgemill is pure Python, so one
``py3-none-any`` wheel serves every device. Entries carry a fixed date: the same tree gives the same
bytes, and so the same sha256 in bundle.json.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import UserError

_FIXED_DATE = (1980, 1, 1, 0, 0, 0)
# Files of an installed distribution that describe the installation, not the wheel.
_INSTALL_ONLY = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "WHEEL"}
_NATIVE = (".so", ".pyd", ".dylib")


class WheelBuildError(UserError):
    """This installation cannot be turned into a wheel for another device."""


def write_wheel(dest: Path, name: str, version: str, tags: list[str], files: Iterable[tuple[str, Path]],
                dist_info: Mapping[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """A wheel of ``files`` (archive name, source path) plus ``dist_info`` (file name, bytes).

    ``tags`` are ``interp-abi-platform`` triples; the WHEEL file lists them and the file name joins
    each part's values with dots, as pip expects. RECORD is computed here.
    """
    parts = [list(dict.fromkeys(t.split("-")[i] for t in tags)) for i in range(3)]
    dist_name = name.replace("-", "_")
    filename = f"{dist_name}-{version}-" + "-".join(".".join(p) for p in parts) + ".whl"
    info_dir = f"{dist_name}-{version}.dist-info"
    wheel_text = "Wheel-Version: 1.0\nGenerator: edgemill-bundle\nRoot-Is-Purelib: " \
                 + ("true" if parts[2] == ["any"] else "false") + "\n" + "".join(f"Tag: {t}\n" for t in tags)
    entries = [(arc, path.read_bytes()) for arc, path in sorted(files)]
    entries += [(f"{info_dir}/{n}", data) for n, data in sorted(dist_info.items()) if n not in _INSTALL_ONLY]
    entries.append((f"{info_dir}/WHEEL", wheel_text.encode()))
    record = "".join(f"{arc},sha256={_b64(hashlib.sha256(data).digest())},{len(data)}\n" for arc, data in entries)
    entries.append((f"{info_dir}/RECORD", (record + f"{info_dir}/RECORD,,\n").encode()))
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / filename
    tmp = target.with_name(target.name + ".part")
    with zipfile.ZipFile(tmp, "w", compression=compression) as archive:
        for arc, data in entries:
            info = zipfile.ZipInfo(arc, date_time=_FIXED_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = compression
            archive.writestr(info, data)
    tmp.replace(target)
    return target


def build_edgemill_wheel(dest: Path) -> Path:
    """``edgemill-<version>-py3-none-any.whl`` from the imported package and its distribution metadata."""
    import edgemill

    package = Path(edgemill.__file__).resolve().parent
    try:
        dist = importlib.metadata.distribution("edgemill")
    except importlib.metadata.PackageNotFoundError as exc:
        raise WheelBuildError("edgemill is imported from a folder that is not installed", value=str(package),
                              fix="pip install -e . in the checkout, or pass a built wheel with --edgemill-wheel") from exc
    if dist.version != edgemill.__version__:
        raise WheelBuildError("the installed metadata does not match the imported code",
                              value=f"metadata {dist.version}, code {edgemill.__version__}",
                              fix="reinstall (pip install -e . in the checkout), or pass --edgemill-wheel")
    stubs = package / "agent" / "_proto" / "edgemill" / "v1" / "agent_pb2.py"
    if not stubs.is_file():
        raise WheelBuildError("the agent's gRPC stubs were never generated", value=str(stubs),
                              fix="reinstall from the checkout (pip install -e .), which generates them")
    files = []
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package)
        if not path.is_file() or "__pycache__" in rel.parts or path.suffix in (".pyc", ".pyo") \
                or any(p.startswith(".") for p in rel.parts):
            continue
        if path.suffix in _NATIVE:
            raise WheelBuildError("edgemill carries a compiled library, so one wheel cannot serve other devices",
                                  value=str(path), fix="pass a wheel built for the device with --edgemill-wheel")
        files.append((f"edgemill/{rel.as_posix()}", path))
    dist_info = {}
    for entry in dist.files or []:
        if len(entry.parts) == 2 and entry.parts[0].endswith(".dist-info") or (
                len(entry.parts) > 2 and entry.parts[0].endswith(".dist-info") and entry.parts[1] == "licenses"):
            dist_info["/".join(entry.parts[1:])] = Path(str(entry.locate())).read_bytes()
    if "METADATA" not in dist_info:
        raise WheelBuildError("the installed edgemill has no METADATA", value=dist.version,
                              fix="reinstall edgemill, or pass a built wheel with --edgemill-wheel")
    return write_wheel(dest, "edgemill", dist.version, ["py3-none-any"], files, dist_info)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
