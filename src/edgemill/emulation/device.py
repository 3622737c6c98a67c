"""One emulated device: a foreign-architecture root file system, and commands run inside it.

Each command runs as ``unshare --mount [--net] -- sh -c 'mount proc; exec chroot ROOT env ...'``:
a private mount namespace (the mounts vanish with the command, nothing is left mounted on the host), the
same process id from ``unshare`` to the device program (so a signal sent to the host process reaches the
program itself: ``terminate()`` stops an agent the way systemd would), and with ``network=False`` a
network namespace of its own with no interface up, to prove that nothing is fetched. The kernel runs the
device's binaries through qemu-user (binfmt_misc), so nothing else differs from the device: its Python,
its C library, its wheels and their Arm kernels.

Emulation is slow (qemu translates every instruction): fine for installing, starting, serving and
judging accuracy; timings measured inside say nothing about the device.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .platforms import EmulatedPlatform

DEVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
AGENT_PYTHON = "/opt/edgemill/venv/bin/python"  # where the bundle's install.sh puts the live environment
AGENT_EDGEMILL = "/opt/edgemill/venv/bin/edgemill"  # ... and its command (the systemd unit's ExecStart)

# Run by the host's /bin/sh inside the new mount namespace: $0 is the root, $1 the working folder inside.
# /proc only: the host's /sys describes x86 CPUs, and the Arm build of the cpuinfo library inside
# onnxruntime crashes parsing it (without it, it says it could not read the CPU and goes on; the kernels
# it picks come from the emulated CPU's hwcaps, which qemu provides).
_ENTER = ('root=$0; cwd=$1; shift; '
          'mount -t proc proc "$root/proc" && exec chroot "$root" /usr/bin/env -i -C "$cwd" "$@"')


@dataclass(frozen=True)
class EmulatedDevice:
    root: Path  # the device's / on the host
    platform: EmulatedPlatform

    def path(self, inside: str) -> Path:
        """The host path of a path inside the device (``/etc/edgemill/agent.toml``)."""
        return self.root / inside.lstrip("/")

    def command(self, argv: Sequence[str], *, network: bool = True, env: Mapping[str, str] | None = None,
                cwd: str = "/") -> list[str]:
        """The host command line that runs ``argv`` inside the device (a clean environment: ``PATH``,
        ``HOME`` and ``LANG``, plus ``env``)."""
        settings = {"PATH": DEVICE_PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
        unshare = ["unshare", "--mount"] + ([] if network else ["--net"])
        return [*unshare, "--", "/bin/sh", "-c", _ENTER, str(self.root), cwd,
                *(f"{k}={v}" for k, v in settings.items()), *argv]

    def run(self, argv: Sequence[str], *, network: bool = True, env: Mapping[str, str] | None = None,
            cwd: str = "/", timeout: float = 600, check: bool = True, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the device and wait; ``check`` raises :class:`DeviceCommandError` with its
        output when it fails."""
        done = subprocess.run(self.command(argv, network=network, env=env, cwd=cwd), capture_output=True,
                              text=True, timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise DeviceCommandError(argv, done.returncode, done.stdout, done.stderr)
        return done

    def popen(self, argv: Sequence[str], *, network: bool = True, env: Mapping[str, str] | None = None,
              cwd: str = "/", **kwargs: Any) -> subprocess.Popen[str]:
        """Start ``argv`` inside the device: the returned process *is* the device program (same pid), so
        ``terminate()`` sends it SIGTERM."""
        kwargs.setdefault("text", True)
        return subprocess.Popen(self.command(argv, network=network, env=env, cwd=cwd), **kwargs)

    def clone(self, destination: Path) -> EmulatedDevice:
        """A copy of this device at ``destination`` (a fresh device to change; ~1 s for 500 MB)."""
        if destination.exists():
            raise FileExistsError(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        # cp -a keeps device nodes, owners and hard links; reflinks where the file system has them.
        subprocess.run(["cp", "-a", "--reflink=auto", str(self.root), str(destination)], check=True,
                       capture_output=True)
        return EmulatedDevice(destination, self.platform)

    def remove(self) -> None:
        """Delete this device's files (refused while anything is mounted inside: see prepare.remove_tree)."""
        from .prepare import remove_tree

        remove_tree(self.root)


class DeviceCommandError(RuntimeError):
    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv, self.returncode, self.stdout, self.stderr = list(argv), returncode, stdout, stderr
        tail = (stderr.strip() or stdout.strip())[-2000:]
        super().__init__(f"{' '.join(argv)} failed inside the emulated device (exit {returncode}):\n{tail}")
