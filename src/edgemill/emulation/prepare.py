"""Make, cache and find emulated devices.

Two layers, cached under ``$EDGEMILL_DEVICE_CACHE`` (default ``~/.cache/edgemill/devices``), one folder per
platform and root file system recipe:

* ``rootfs/``: Debian minbase with Python, made once by ``mmdebstrap`` (about 2.5 minutes, 330 MB) and never
  changed afterwards.
* ``device/``: a copy of it with the agent installed by the offline bundle of *this* edgemill installation
  (``install.sh`` run with no network), remade when the edgemill version changes. This is what
  ``edgemill compile -t aarch64`` judges candidates on (:mod:`edgemill.emulation.gate`).

Emulation needs Linux, root (``chroot``, mount namespaces), ``binfmt_misc`` with Debian's qemu-user-static
entry for the platform, and ``mmdebstrap`` to make the root file system: :func:`why_unavailable` names
what is missing and the command that adds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from hashlib import sha256
from pathlib import Path

from .. import __version__
from ..errors import UserError
from .device import AGENT_PYTHON, EmulatedDevice
from .platforms import EmulatedPlatform

Log = Callable[[str], None]
BINFMT = Path("/proc/sys/fs/binfmt_misc")
DEVICE_MARK = ".edgemill-device.json"  # in device/: what was installed, from which bundle
ROOTFS_MARK = ".edgemill-rootfs.json"  # in rootfs/: written last, so a half-made one is never used


class EmulationUnavailable(UserError):
    """This machine cannot run an emulated device (the message says what is missing and how to add it)."""


def cache_root() -> Path:
    configured = os.environ.get("EDGEMILL_DEVICE_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgemill" / "devices"


def platform_dir(platform: EmulatedPlatform) -> Path:
    digest = sha256(platform.recipe.encode()).hexdigest()[:10]
    return cache_root() / f"{platform.name}-{platform.suite}-{digest}"


def why_unavailable(platform: EmulatedPlatform, *, to_build: bool = False) -> str | None:
    """None when this machine can run (``to_build``: and make) an emulated ``platform`` device; else what is
    missing, with the fix."""
    if not sys.platform.startswith("linux"):
        return f"emulated devices need Linux (binfmt_misc, chroot); this is {sys.platform}"
    if os.geteuid() != 0:
        return "emulated devices need root (chroot and mount namespaces): run as root"
    for tool, package in (("unshare", "util-linux"), ("chroot", "coreutils")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: apt install {package}"
    if not (BINFMT / "status").exists():
        return ("binfmt_misc is not mounted: mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc "
                "(then apt install qemu-user-static binfmt-support)")
    entry = BINFMT / platform.binfmt
    if not entry.exists():
        return (f"no binfmt_misc entry {platform.binfmt}: apt install qemu-user-static binfmt-support, then "
                f"update-binfmts --enable {platform.binfmt}")
    text = entry.read_text(errors="replace")
    if not text.startswith("enabled"):
        return f"the binfmt_misc entry {platform.binfmt} is disabled: update-binfmts --enable {platform.binfmt}"
    flags = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("flags:")), "")
    if "F" not in flags:  # without F the interpreter is looked up inside the chroot, where it is not
        return (f"the binfmt_misc entry {platform.binfmt} lacks the F flag (flags: {flags or 'none'}), so it cannot "
                "run inside a chroot: install Debian's qemu-user-static, whose entries have it")
    if to_build and shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (it makes the device's root file system): apt install mmdebstrap"
    return None


def require(platform: EmulatedPlatform, *, to_build: bool = False) -> None:
    reason = why_unavailable(platform, to_build=to_build)
    if reason is not None:
        raise EmulationUnavailable(f"cannot emulate a {platform.name} device here", value=reason,
                                   fix="see docs/devices.md, 'Emulated devices'")


def mounts_below(folder: Path) -> list[str]:
    """Mount points at or under ``folder`` in this mount namespace (deepest first)."""
    prefix = str(folder.resolve())
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[4].replace("\\040", " ") for line in lines if len(line.split()) > 4]
    return sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), key=len, reverse=True)


def remove_tree(folder: Path) -> None:
    """Delete a root file system folder. Anything still mounted inside it (what a killed mmdebstrap left:
    /proc, /sys, /dev/pts) is unmounted first, and the delete is refused if that fails: removing files
    through a mount would reach the host's own."""
    if not folder.exists():
        return
    for point in mounts_below(folder):
        subprocess.run(["umount", "--lazy", point], capture_output=True)
    left = mounts_below(folder)
    if left:
        raise EmulationUnavailable("a file system is still mounted inside a device folder, so it was not deleted",
                                   value=left[0], fix=f"umount -R {left[0]}, then retry")
    shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One maker at a time per platform (parallel test workers, two compiles)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def base_rootfs(platform: EmulatedPlatform, log: Log = print) -> EmulatedDevice:
    """The cached root file system of ``platform``, made with mmdebstrap when there is none."""
    folder = platform_dir(platform)
    rootfs = folder / "rootfs"
    if (rootfs / ROOTFS_MARK).exists():
        return EmulatedDevice(rootfs, platform)
    require(platform, to_build=True)
    with _locked(folder):
        if (rootfs / ROOTFS_MARK).exists():  # another process made it while we waited
            return EmulatedDevice(rootfs, platform)
        remove_tree(rootfs)
        for left in folder.glob("rootfs.making-*"):  # what an interrupted maker left
            remove_tree(left)
        making = folder / f"rootfs.making-{os.getpid()}"
        log(f"making the {platform.name} root file system with mmdebstrap (Debian {platform.suite} "
            f"{platform.debian_arch}, about 2.5 minutes, once per machine) in {rootfs}")
        started = time.monotonic()
        # In a mount namespace of its own: the /proc, /sys and /dev/pts it mounts inside the new root vanish
        # with it, even when it is killed.
        command = ["unshare", "--mount", "--", "mmdebstrap", f"--arch={platform.debian_arch}", "--variant=minbase",
                   f"--include={','.join(platform.packages)}", platform.suite, str(making)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            remove_tree(making)
            raise EmulationUnavailable("mmdebstrap could not make the device's root file system",
                                       value=(done.stderr or done.stdout).strip()[-1500:],
                                       fix="check that Debian's mirror is reachable (apt update works), then retry")
        device = EmulatedDevice(making, platform)
        machine = device.run(["uname", "-m"], timeout=120).stdout.strip()
        if machine != platform.machine:
            remove_tree(making)
            raise EmulationUnavailable("the emulated device does not run as its architecture",
                                       value=f"uname -m inside: {machine!r}", expected=platform.machine,
                                       fix=f"check the binfmt_misc entry {platform.binfmt} (update-binfmts --display)")
        (making / ROOTFS_MARK).write_text(json.dumps(
            {"recipe": platform.recipe, "made_unix": time.time(), "seconds": round(time.monotonic() - started, 1)}))
        making.rename(rootfs)
        log(f"made {rootfs} in {time.monotonic() - started:.0f} s")
    return EmulatedDevice(rootfs, platform)


def install_bundle(device: EmulatedDevice, bundle: Path, *, env: dict[str, str] | None = None,
                   timeout: float = 900) -> str:
    """Unpack ``bundle`` inside ``device`` and run its install.sh with no network (a network namespace
    with no interface up: anything that tried to fetch would fail). Returns install.sh's output."""
    inbox = device.path("/tmp/edgemill-bundle")
    shutil.rmtree(inbox, ignore_errors=True)
    inbox.mkdir(parents=True)
    with tarfile.open(bundle) as tar:
        _extract_plain(tar, inbox)
    folders = [p for p in inbox.iterdir() if (p / "install.sh").is_file()]
    if len(folders) != 1:
        raise EmulationUnavailable("not an agent bundle (no single folder with install.sh)", value=str(bundle),
                                   fix="build one with edgemill agent bundle --platform " + device.platform.name)
    try:
        done = device.run(["sh", f"/tmp/edgemill-bundle/{folders[0].name}/install.sh"], network=False,
                          env={"EDGEMILL_SYSTEMD": "no", **(env or {})}, timeout=timeout)
    finally:
        shutil.rmtree(inbox, ignore_errors=True)
    return done.stdout + done.stderr


def _extract_plain(tar: tarfile.TarFile, folder: Path) -> None:
    """Extract regular files and folders below ``folder`` only (what tarfile's "data" filter allows, also on
    Python 3.11 before 3.11.4, which lacks it)."""
    for member in tar.getmembers():
        parts = Path(member.name).parts
        if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
            raise EmulationUnavailable("the bundle has an entry outside plain files and folders", value=member.name,
                                       fix="build the bundle again with edgemill agent bundle")
    if hasattr(tarfile, "data_filter"):
        tar.extractall(folder, filter="data")
    else:
        tar.extractall(folder)  # noqa: S202 - every member was checked above


def build_agent_bundle(platform: EmulatedPlatform, output: Path, log: Log = print) -> Path:
    """This installation's agent bundle for ``platform`` (reaches the package index for the device's wheels)."""
    from ..bundle.build import BundleRequest, build_bundle
    from ..bundle.target import parse_target

    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return build_bundle(BundleRequest(parse_target(platform.name, python), output, force=True), log).path


def installation_digest() -> str:
    """A digest of this edgemill installation's files: a prepared device whose agent was built from other
    files (another version, or a changed checkout) is stale."""
    package = Path(__file__).resolve().parents[1]
    digest = sha256(__version__.encode())
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def device_status(platform: EmulatedPlatform) -> tuple[EmulatedDevice | None, str | None]:
    """(the prepared device of ``platform`` with this edgemill installation's agent, None) when this machine
    has one and can run it; else (None, why not, with the fix)."""
    reason = why_unavailable(platform)
    if reason is not None:
        return None, reason
    device = EmulatedDevice(platform_dir(platform) / "device", platform)
    prepare = f"run `edgemill emulator prepare --platform {platform.name}`"
    mark = device_info(device)
    if not mark:
        return None, f"no prepared {platform.name} device in {platform_dir(platform)}: {prepare} to judge on its kernels"
    if mark.get("installation") != installation_digest():
        return None, (f"the prepared {platform.name} device's agent (edgemill {mark.get('edgemill_version')}) is not this "
                      f"installation's: {prepare} again")
    return device, None


def device_info(device: EmulatedDevice) -> dict[str, object]:
    """What ``prepare_device`` recorded about the device (empty: not a prepared device)."""
    try:
        return dict(json.loads((device.root / DEVICE_MARK).read_text()))
    except (OSError, ValueError):
        return {}


def prepare_device(platform: EmulatedPlatform, *, bundle: Path | None = None, refresh: bool = False,
                   log: Log = print) -> EmulatedDevice:
    """The cached device of ``platform`` with the agent installed from ``bundle`` (default: a bundle of this
    installation, built now), made when missing, stale (another edgemill version) or ``refresh``."""
    bundle_built_here = bundle is None
    reuse = bundle_built_here and not refresh
    current = device_status(platform)[0] if reuse else None
    if current is not None:
        return current
    base = base_rootfs(platform, log)
    folder = platform_dir(platform)
    with _locked(folder):
        current = device_status(platform)[0] if reuse else None  # made by another process while we waited
        if current is not None:
            return current
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="edgemill-device-bundle-") as work:
            if bundle is None:
                log(f"building this installation's agent bundle for {platform.name}")
                steps_only: Log = lambda line: None if line.lstrip().startswith("pip:") else log(line)  # noqa: E731
                bundle = build_agent_bundle(platform, Path(work) / "agent.tar", steps_only)
            for left in folder.glob("device.making-*"):
                remove_tree(left)
            making = folder / f"device.making-{os.getpid()}"
            device = base.clone(making)
            log("installing the agent inside the emulated device, offline (about 30 s)")
            try:
                install_bundle(device, bundle)
                version = device.run([AGENT_PYTHON, "-c",
                                      "import edgemill, onnxruntime, numpy; print(edgemill.__version__, "
                                      "onnxruntime.__version__, numpy.__version__)"], timeout=300).stdout.split()
            except BaseException:
                device.remove()
                raise
        (making / DEVICE_MARK).write_text(json.dumps({
            "platform": platform.name, "edgemill_version": version[0], "onnxruntime": version[1],
            "installation": installation_digest() if bundle_built_here else None,
            "numpy": version[2], "made_unix": time.time(), "seconds": round(time.monotonic() - started, 1)}))
        final = folder / "device"
        if final.exists():
            old = folder / f"device.old-{os.getpid()}"
            final.rename(old)
            remove_tree(old)
        making.rename(final)
        log(f"the emulated {platform.name} device is ready: {final}")
    return EmulatedDevice(final, platform)
