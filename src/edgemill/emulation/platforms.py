"""The device platforms edgemill can emulate on a build machine, and how each one's root file system is made.

An emulated device is a Debian root file system of the device's architecture, run with ``chroot`` while
the kernel hands its binaries to ``qemu-user`` (``binfmt_misc``). Debian bookworm is the base because its
``python3`` is 3.11, the Python this project builds and tests with, and because it is what Raspberry Pi OS
64-bit is made from.

Adding a platform is one entry here: the bundle platform name (``edgemill agent bundle --platform``), the
architecture as ``uname -m`` and the target catalog name it, Debian's name for it (``mmdebstrap --arch``)
and the binfmt_misc entry of Debian's ``qemu-user-static`` that runs it. ``linux-armv7l`` (Debian
``armhf``, ``qemu-arm``) is deliberately absent: numpy and onnxruntime publish no 32-bit Arm wheels, so
the agent cannot be installed there from a bundle (docs/devices.md says what to do instead).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import OptionError


@dataclass(frozen=True)
class EmulatedPlatform:
    name: str  # the bundle platform: linux-aarch64
    machine: str  # uname -m inside the device, and the target catalog's arch: aarch64
    debian_arch: str  # mmdebstrap --arch: arm64
    binfmt: str  # the binfmt_misc entry (Debian qemu-user-static): qemu-aarch64
    suite: str = "bookworm"  # Debian release: python3 3.11
    packages: tuple[str, ...] = ("python3", "python3-venv")

    @property
    def recipe(self) -> str:
        """Everything the root file system is made from: its cache folder changes when this does."""
        return f"{self.debian_arch}-{self.suite}-minbase-" + "+".join(self.packages)


PLATFORMS: dict[str, EmulatedPlatform] = {
    "linux-aarch64": EmulatedPlatform("linux-aarch64", "aarch64", "arm64", "qemu-aarch64"),
}


def get_platform(name: str) -> EmulatedPlatform:
    try:
        return PLATFORMS[name]
    except KeyError:
        armv7 = name in ("linux-armv7l", "linux-armv7", "armv7")
        raise OptionError(
            "no emulated device for this platform", value=name, expected="one of " + ", ".join(PLATFORMS),
            fix=("numpy and onnxruntime publish no 32-bit Arm wheels, so the agent does not install there from a "
                 "bundle: see docs/devices.md" if armv7 else "use --platform linux-aarch64"),
        ) from None


def platform_for_arch(arch: str) -> EmulatedPlatform | None:
    """The emulated platform of a target architecture (``aarch64``), or None."""
    return next((p for p in PLATFORMS.values() if p.machine == arch), None)
