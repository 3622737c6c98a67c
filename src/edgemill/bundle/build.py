"""``edgemill agent bundle``: one tar that installs the device agent on a machine without network.

Steps: the edgemill wheel (:mod:`.wheel`), the device's wheels by ``pip download``
(:mod:`.pip`), a re-check of the requirement closure with the device's markers, fetching what
pip skipped and dropping what only the build machine needed (:mod:`.resolve`), then the tar:
``<dir>/wheels/``, ``agent.toml``, ``edgemill-agent.service``, ``install.sh``, ``bundle.json``,
``SHA256SUMS``, ``README.txt`` (:mod:`.files`). The tar is written beside the output and
renamed into place, so a failed run leaves no half bundle.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import FileNotFound, OptionError, UserError
from . import files as bundle_files
from .pip import PackageSources, pip_download
from .resolve import read_wheel, resolve, supported_tags
from .target import DeviceTarget
from .wheel import build_edgemill_wheel, sha256_file

Log = Callable[[str], None]

# Extras that belong on a device (the others are the build side: compilers, frameworks, the server).
DEVICE_EXTRAS: dict[str, str] = {
    "s3": "capture upload to S3-compatible stores (boto3)",
    "openvino": "run OpenVINO packages",
    "tvm": "run TVM packages",
    "litert": "run LiteRT packages (a .tflite run as it is, with XNNPACK)",
}
BUNDLE_FORMAT = 1
_MAX_ROUNDS = 4  # pip rounds for requirements only the device's markers select; one or two in practice


class IncompleteBundleError(UserError):
    """The wheels cannot satisfy the requirements on the device."""


@dataclass(frozen=True)
class BundleRequest:
    target: DeviceTarget
    output: Path
    sources: PackageSources = field(default_factory=PackageSources)
    extras: tuple[str, ...] = ()
    force: bool = False
    edgemill_wheel: Path | None = None  # a built wheel to use instead of one written from this install


@dataclass(frozen=True)
class BundleResult:
    path: Path
    manifest: dict[str, Any]
    size_bytes: int
    seconds: float


def check_request(request: BundleRequest) -> None:
    """Refusals that need no work: a bundle in the way, an unknown extra, a missing folder."""
    if request.output.exists() and not request.force:
        raise OptionError("the output exists", value=str(request.output),
                          fix="pass --force to replace it, or another -o")
    if not request.output.parent.is_dir():
        raise FileNotFound("the output's folder does not exist", value=str(request.output.parent),
                           fix="create it, or choose another -o")
    for extra in request.extras:
        if extra not in DEVICE_EXTRAS:
            raise OptionError("not an extra for devices", value=extra,
                              expected=", ".join(f"{k} ({v})" for k, v in DEVICE_EXTRAS.items()),
                              fix="the other extras (compile, server, frameworks) belong on the build machine")
    for folder in [request.sources.wheelhouse, *request.sources.find_links]:
        if folder is not None and "://" not in str(folder) and not Path(folder).is_dir():
            raise FileNotFound("no such wheel folder", value=str(folder), fix="name a folder of .whl files")
    if request.edgemill_wheel is not None and not request.edgemill_wheel.is_file():
        raise FileNotFound("no such wheel", value=str(request.edgemill_wheel),
                           fix="build one (python -m build --wheel) or leave out --edgemill-wheel")


def default_output(target: DeviceTarget) -> Path:
    return Path(f"edgemill-agent-{__version__}-{target.platform}-py{target.python_xy}.tar")


def build_bundle(request: BundleRequest, log: Log) -> BundleResult:
    """Build the bundle ``request`` describes; progress goes to ``log``."""
    check_request(request)
    started = time.monotonic()
    target, sources = request.target, request.sources
    with tempfile.TemporaryDirectory(prefix="edgemill-bundle-") as work:
        wheels = Path(work) / "wheels"
        wheels.mkdir()
        if request.edgemill_wheel is not None:
            own = Path(shutil.copy2(request.edgemill_wheel, wheels))
            log(f"[1/4] edgemill: using {request.edgemill_wheel}")
        else:
            own = build_edgemill_wheel(wheels)
            log(f"[1/4] edgemill: wrote {own.name} from this installation")
        info = read_wheel(own)
        if info.name != "edgemill":
            raise OptionError("--edgemill-wheel is not an edgemill wheel", value=own.name)
        extras = f"[{','.join(sorted(request.extras))}]" if request.extras else ""
        roots = [f"edgemill{extras}=={info.version}", "pip"]
        log(f"[2/4] device wheels for {target.describe()} from {sources.describe()}")
        pip_download([f"{own}{extras}", "pip"], wheels, target, sources, log)
        needed = _complete(roots, wheels, target, sources, log)
        log(f"[3/4] {len(needed)} wheels, {sum((wheels / w).stat().st_size for w in needed) / 1e6:.1f} MB")
        manifest = _manifest(request, str(info.version), roots[0], wheels, needed)
        log(f"[4/4] writing {request.output}")
        _write_tar(request.output, manifest, wheels, needed)
    size = request.output.stat().st_size
    return BundleResult(request.output, manifest, size, time.monotonic() - started)


def _complete(roots: list[str], wheels: Path, target: DeviceTarget, sources: PackageSources, log: Log) -> list[str]:
    """Fetch what the device's markers need beyond pip's choice; drop what they do not. Wheel file names."""
    environment = target.marker_environment()
    for round_ in range(_MAX_ROUNDS):
        resolution = resolve(roots, [read_wheel(p) for p in sorted(wheels.glob("*.whl"))], environment)
        if not resolution.missing:
            break
        wanted = [m.requirement for m in resolution.missing]
        if round_ == _MAX_ROUNDS - 1:
            raise IncompleteBundleError("requirements still unmet after fetching them", value=", ".join(wanted),
                                        fix="add wheels that satisfy them with --find-links DIR")
        log("  the device also needs (pip judged by this machine): "
            + ", ".join(f"{m.requirement} (for {m.needed_by})" for m in resolution.missing))
        pip_download(wanted, wheels, target, sources, log)
    for wheel in resolution.unused:
        log(f"  left out {wheel.filename}: not needed on {target.platform} / Python {target.python_xy}")
        (wheels / wheel.filename).unlink()
    supported = supported_tags(target)
    foreign = [w.filename for w in resolution.needed if not w.tags & supported]
    if foreign:  # pip chose them, so only a wheel handed in by name (--edgemill-wheel) gets here
        raise IncompleteBundleError("wheels that do not install on the device", value=", ".join(foreign),
                                    expected=f"wheels for {target.describe()}")
    return [w.filename for w in resolution.needed]


def _manifest(request: BundleRequest, version: str, requirement: str, wheels: Path, needed: list[str]) -> dict[str, Any]:
    entries = []
    for name in sorted(needed):
        info = read_wheel(wheels / name)
        entries.append({"file": name, "name": str(info.name), "version": str(info.version),
                        "sha256": sha256_file(wheels / name), "size": (wheels / name).stat().st_size})
    target = request.target
    # The id is a hash of what gets installed, so the same wheels give the same environment name on
    # the device (a re-run is a no-op) and a different set a new one (an upgrade).
    bundle_id = hashlib.sha256(json.dumps([requirement, target.python_xy, [e["sha256"] for e in entries]])
                               .encode()).hexdigest()[:12]
    return {
        "format": BUNDLE_FORMAT,
        "id": bundle_id,
        "edgemill_version": version,
        "requirement": requirement,
        "extras": sorted(request.extras),
        "platform": target.platform,
        "arch": target.arch,
        "libc": target.libc,
        "libc_version": target.libc_text,
        "python": target.python_xy,
        "pip_platform_tags": target.pip_platforms(),
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wheels": entries,
    }


def bundle_dir_name(manifest: dict[str, Any]) -> str:
    return f"edgemill-agent-{manifest['edgemill_version']}-{manifest['platform']}-py{manifest['python']}"


def _write_tar(output: Path, manifest: dict[str, Any], wheels: Path, needed: list[str]) -> None:
    top = bundle_dir_name(manifest)
    facts = {
        "BUNDLE_VERSION": manifest["edgemill_version"], "BUNDLE_ID": manifest["id"],
        "BUNDLE_REQUIREMENT": manifest["requirement"], "BUNDLE_PLATFORM": manifest["platform"],
        "BUNDLE_ARCH": manifest["arch"], "BUNDLE_PYTHON": manifest["python"], "BUNDLE_LIBC": manifest["libc"],
        "BUNDLE_LIBC_VERSION": manifest["libc_version"],
    }
    texts = {
        "install.sh": (bundle_files.install_sh(facts), 0o755),
        "agent.toml": (bundle_files.AGENT_TOML, 0o644),
        "edgemill-agent.service": (bundle_files.SERVICE_UNIT, 0o644),
        "bundle.json": (json.dumps(manifest, indent=2) + "\n", 0o644),
        "SHA256SUMS": ("".join(f"{w['sha256']}  wheels/{w['file']}\n" for w in manifest["wheels"]), 0o644),
        "README.txt": (bundle_files.readme({**facts, "BUNDLE_DIR": top}, sorted(needed)), 0o644),
    }
    compressed = output.name.endswith((".tar.gz", ".tgz"))
    mtime = int(time.time())
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".part", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with (tarfile.open(tmp, "w:gz", format=tarfile.PAX_FORMAT) if compressed
              else tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT)) as tar:
            for folder in (top, f"{top}/wheels"):
                tar.addfile(_member(folder, 0, 0o755, mtime, tarfile.DIRTYPE))
            for name, (text, perm) in texts.items():
                data = text.encode()
                tar.addfile(_member(f"{top}/{name}", len(data), perm, mtime), io.BytesIO(data))
            for name in sorted(needed):
                path = wheels / name
                with path.open("rb") as f:
                    tar.addfile(_member(f"{top}/wheels/{name}", path.stat().st_size, 0o644, mtime), f)
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)


def _member(name: str, size: int, mode: int, mtime: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.size, member.mode, member.mtime, member.type = size, mode, mtime, kind
    member.uname = member.gname = "root"
    return member
