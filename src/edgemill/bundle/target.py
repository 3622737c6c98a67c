"""The device an install bundle is for: CPU, C library and Python version, as pip and markers see them.

A pure value: it names the wheel platform tags pip may choose (``pip download --platform``) and the
environment markers of the device (pip evaluates markers for the machine it runs on, not for the
target; :mod:`edgemill.bundle.resolve` re-checks them with these).
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass

from ..errors import OptionError

# --platform name -> CPU as Python's platform.machine() names it on that device.
PLATFORMS: dict[str, str] = {
    "linux-aarch64": "aarch64",  # 64-bit ARM: Raspberry Pi OS 64-bit, Jetson, Graviton
    "linux-x86_64": "x86_64",
    "linux-armv7l": "armv7l",  # 32-bit ARM userland (Raspberry Pi OS 32-bit)
}
# The oldest C library each manylinux/musllinux tag family goes down to, and the default we assume a
# device has: glibc 2.28 is Debian 10 / Ubuntu 20.04 (2.31) / RHEL 8 and newer, which covers the wheels
# PyPI publishes today (manylinux_2_28 and older).
LIBC_DEFAULT: dict[str, tuple[int, int]] = {"glibc": (2, 28), "musl": (1, 2)}
_LIBC_OLDEST: dict[str, tuple[int, int]] = {"glibc": (2, 17), "musl": (1, 1)}


@dataclass(frozen=True)
class DeviceTarget:
    """linux-<arch>, a C library at least ``libc_version``, CPython ``python`` (X.Y or X.Y.Z)."""

    platform: str
    python: tuple[int, ...]
    libc: str = "glibc"
    libc_version: tuple[int, int] = (2, 28)

    @property
    def arch(self) -> str:
        return PLATFORMS[self.platform]

    @property
    def python_xy(self) -> str:
        return f"{self.python[0]}.{self.python[1]}"

    @property
    def python_full(self) -> str:
        return ".".join(str(p) for p in (self.python + (0,))[:3])

    @property
    def libc_text(self) -> str:
        return f"{self.libc_version[0]}.{self.libc_version[1]}"

    def describe(self) -> str:
        return f"{self.platform} ({self.libc} >= {self.libc_text}), CPython {self.python_xy}"

    def pip_platforms(self) -> list[str]:
        """Platform tags, most specific first (pip prefers earlier ones when several wheels fit).

        pip does not widen ``manylinux_2_28_X`` to the older glibc tags itself, so every tag the
        device's C library can run is listed. ``linux_<arch>`` comes last: PyPI never serves it, but a
        wheel built on such a device (``pip wheel``) and given with --find-links carries it.
        """
        major, minor = self.libc_version
        arch = self.arch
        if self.libc == "glibc":
            tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 16, -1)]
            tags.append(f"manylinux2014_{arch}")
            if arch == "x86_64":
                tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
        else:
            tags = [f"musllinux_{major}_{m}_{arch}" for m in range(minor, -1, -1)]
        return tags + [f"linux_{arch}"]

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker values of the device, for the requirements wheels declare."""
        return {
            "implementation_name": "cpython",
            "implementation_version": self.python_full,
            "os_name": "posix",
            "platform_machine": self.arch,
            "platform_python_implementation": "CPython",
            "platform_release": "",
            "platform_system": "Linux",
            "platform_version": "",
            "python_full_version": self.python_full,
            "python_version": self.python_xy,
            "sys_platform": "linux",
        }


def parse_target(platform_name: str, python: str | None = None, libc: str = "glibc",
                 libc_version: str | None = None) -> DeviceTarget:
    """Validate the command line's words into a target; a bad one names the value and the choices."""
    if platform_name not in PLATFORMS:
        raise OptionError("unknown --platform", value=platform_name, expected=" or ".join(sorted(PLATFORMS)),
                          fix="name the device's platform; `python3 -c 'import sysconfig; "
                              "print(sysconfig.get_platform())'` on the device prints it")
    if libc not in LIBC_DEFAULT:
        raise OptionError("unknown --libc", value=libc, expected="glibc or musl")
    py = _version(python or f"{sys.version_info[0]}.{sys.version_info[1]}", "--python", parts=(2, 3),
                  fix="write the device's Python version as X.Y, e.g. --python 3.11 (python3 --version on the device)")
    if py[0] != 3 or py < (3, 10):
        raise OptionError("edgemill needs Python 3.10 or newer on the device", value=python, expected=">= 3.10",
                          fix="install a newer Python on the device, or pass its version with --python")
    lv = LIBC_DEFAULT[libc] if libc_version is None else _version(
        libc_version, "--libc-version", parts=(2, 2),
        fix="write the device's C library version as X.Y (ldd --version on the device), e.g. 2.31")
    oldest = _LIBC_OLDEST[libc]
    if lv[0] != oldest[0] or lv < oldest:
        raise OptionError(f"no wheels are built for {libc} {lv[0]}.{lv[1]}", value=libc_version,
                          expected=f"{libc} {oldest[0]}.{oldest[1]} or newer",
                          fix="build wheels on the device itself and pass them with --wheelhouse")
    return DeviceTarget(platform_name, py, libc, (lv[0], lv[1]))


def host_platform() -> str | None:
    """This machine's --platform name, when it is one of ours."""
    if sys.platform != "linux":
        return None
    machine = platform.machine()
    for name, arch in PLATFORMS.items():
        if arch == machine:
            return name
    return None


def _version(text: str, option: str, parts: tuple[int, int], fix: str) -> tuple[int, ...]:
    pieces = text.strip().split(".")
    if not parts[0] <= len(pieces) <= parts[1] or not all(p.isdigit() for p in pieces):
        raise OptionError(f"{option} is not a version", value=text,
                          expected="X.Y" if parts == (2, 2) else "X.Y or X.Y.Z", fix=fix)
    return tuple(int(p) for p in pieces)
