"""``pip download`` of the device's wheels, with pip's progress passed on and its failures explained.

Where wheels come from is pip's business (its configuration, a mirror given with --index-url, local
folders given with --find-links); :class:`PackageSources` only adds the command line's choices. A
wheelhouse is different: it promises "this folder and nothing else", so pip's own configuration
(index URLs, find-links from pip.conf or PIP_* variables) is switched off for it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingDependencyError, UserError
from .target import DeviceTarget

Log = Callable[[str], None]


class NoWheelError(UserError):
    """No wheel of a required package exists for the device's platform and Python in the sources."""


class RegistryUnreachableError(UserError):
    """The package index (or a mirror) could not be reached."""


class PipFailedError(UserError):
    """pip download failed for another reason; its own error lines are quoted."""


@dataclass(frozen=True)
class PackageSources:
    """Where pip looks: an exclusive local wheelhouse, or the index (pip's, or --index-url) plus folders."""

    wheelhouse: Path | None = None
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()

    def pip_args(self) -> list[str]:
        args: list[str] = []
        if self.wheelhouse is not None:
            args += ["--no-index", "--find-links", str(self.wheelhouse)]
        if self.index_url:
            args += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            args += ["--extra-index-url", url]
        for link in self.find_links:
            args += ["--find-links", link]
        return args

    def describe(self) -> str:
        if self.wheelhouse is not None:
            where = f"the wheelhouse {self.wheelhouse} only"
        else:
            where = self.index_url or "pip's configured index"
            where += "".join(f", {u}" for u in self.extra_index_urls)
        return where + "".join(f", {link}" for link in self.find_links)


def pip_download(requirements: Sequence[str], dest: Path, target: DeviceTarget, sources: PackageSources,
                 log: Log, *, timeout_s: float = 3600.0) -> None:
    """Download ``requirements`` and their dependencies as wheels for ``target`` into ``dest``."""
    command = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--implementation", "cp",
               "--python-version", target.python_full, "--dest", str(dest), "--progress-bar", "off",
               # A dead index should be reported in seconds, not after pip's default 5 retries x 15 s.
               "--retries", "2", "--timeout", "30", "--no-input", "--disable-pip-version-check"]
    for tag in target.pip_platforms():
        command += ["--platform", tag]
    command += sources.pip_args() + list(requirements)
    env = dict(os.environ)
    if sources.wheelhouse is not None:
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
    tail: deque[str] = deque(maxlen=400)
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                   bufsize=1)
    except OSError as exc:  # pragma: no cover - sys.executable always exists
        raise PipFailedError("could not start pip", value=str(exc)) from exc
    assert process.stdout is not None
    try:
        for line in process.stdout:
            line = line.rstrip()
            tail.append(line)
            if line.strip():
                log(f"  pip: {line.strip()}")
        code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise RegistryUnreachableError(f"pip download did not finish in {timeout_s:.0f} s", value=sources.describe(),
                                       fix="check the connection to the package index, or use --wheelhouse") from None
    finally:
        process.stdout.close()
    if code != 0:
        raise explain_failure(list(tail), target, sources)


_UNREACHABLE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Name or service not known|"
    r"Temporary failure in name resolution|Network is unreachable|Connection refused|ConnectTimeoutError|"
    r"ReadTimeoutError|ProxyError|SSLError|Max retries exceeded|Could not fetch URL|HTTP error 5\d\d")
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
_VERSIONS = re.compile(r"Could not find a version that satisfies the requirement (\S+).*\(from versions: ([^)]*)\)")


def explain_failure(lines: Sequence[str], target: DeviceTarget, sources: PackageSources) -> UserError:
    """One error that names the package, the platform and the fix, from the last lines of pip's output."""
    text = "\n".join(lines)
    if "No module named pip" in text:
        return MissingDependencyError("pip is not installed in the Python running edgemill", value=sys.executable,
                                      fix=f"{sys.executable} -m ensurepip --upgrade")
    unreachable = next((line.strip() for line in lines if _UNREACHABLE.search(line)), None)
    match = _NO_MATCH.search(text)
    package = match.group(1) if match else None
    if unreachable and sources.wheelhouse is None:
        looking = f" while looking for {package}" if package else ""
        return RegistryUnreachableError(f"the package index could not be reached{looking}",
                                        value=_unreachable_summary(unreachable),
                                        fix="check the network or proxy (pip's own settings apply), pass a reachable "
                                            "mirror with --index-url URL, or prepare the wheels on a connected machine "
                                            "and build from them with --wheelhouse DIR")
    if package:
        seen = _VERSIONS.search(text)
        versions = seen.group(2).strip() if seen else "none"
        python_note = next((line.strip() for line in lines if "require a different python version" in line), "")
        problem = (f"no wheel of {package} for {target.describe()} in {sources.describe()} "
                   f"(versions seen for this platform: {versions})")
        if python_note:
            problem += f"; pip: {_clip(python_note)}"
        piwheels = ("; or the Raspberry Pi wheels of piwheels.org: --extra-index-url https://www.piwheels.org/simple"
                    if target.arch == "armv7l" else "")
        return NoWheelError(problem, fix=(
            f"put a wheel of {package} built for {target.platform} in a folder and add --find-links DIR (for example "
            f"from `pip wheel '{package}'` on such a device){piwheels}; or try another --python, or a newer "
            f"--libc-version if the device's C library is newer than {target.libc} {target.libc_text}"))
    errors = [line.strip() for line in lines if line.strip().startswith("ERROR:")]
    return PipFailedError("pip download failed", value=_clip(" / ".join(errors[-3:]) or (lines[-1] if lines else "")),
                          fix="read pip's output above; rerun with the same options once the cause is fixed")


def _unreachable_summary(line: str) -> str:
    """'pypi.org: Name or service not known' out of urllib3's long retry warning."""
    host = re.search(r"host='([^']+)'", line)
    reason = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", line) or re.search(r"(\w+Error)", line)
    if host is None:
        return _clip(line)
    return f"{host.group(1)}: {reason.group(1).strip() if reason else 'unreachable'}"


def _clip(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
