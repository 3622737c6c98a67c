"""Emulated aarch64 devices for the tests (edgemill.emulation): skip with the reason when this machine
cannot emulate, unless EDGEMILL_EMULATION_REQUIRED=1 (CI sets it once it installed what emulation needs),
where that is a failure. The root file system and the prepared device live in the machine's own cache
(~/.cache/edgemill/devices), so only the first run on a machine makes them (about 3 minutes)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgemill.emulation.device import EmulatedDevice
from edgemill.emulation.platforms import PLATFORMS
from edgemill.emulation.prepare import base_rootfs, build_agent_bundle, prepare_device, why_unavailable

from .conftest import MACHINE_DEVICE_CACHE

AARCH64 = PLATFORMS["linux-aarch64"]
REQUIRED_ENV = "EDGEMILL_EMULATION_REQUIRED"


def require_emulation() -> None:
    reason = why_unavailable(AARCH64, to_build=True)
    if reason is None:
        return
    if os.environ.get(REQUIRED_ENV) == "1":
        pytest.fail(f"{REQUIRED_ENV}=1 but this machine cannot emulate aarch64: {reason}")
    pytest.skip(f"no emulated aarch64 device here: {reason}")


@pytest.fixture
def machine_device_cache(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The machine's real device cache for this test (conftest hides it from the others)."""
    monkeypatch.setenv("EDGEMILL_DEVICE_CACHE", str(MACHINE_DEVICE_CACHE))
    return MACHINE_DEVICE_CACHE


@contextmanager
def _real_cache() -> Iterator[None]:
    """The machine's device cache while a session fixture makes or finds a device (and only then: the
    other tests must keep seeing none)."""
    saved = os.environ.get("EDGEMILL_DEVICE_CACHE")
    os.environ["EDGEMILL_DEVICE_CACHE"] = str(MACHINE_DEVICE_CACHE)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("EDGEMILL_DEVICE_CACHE", None)
        else:
            os.environ["EDGEMILL_DEVICE_CACHE"] = saved


@pytest.fixture(scope="session")
def aarch64_rootfs() -> EmulatedDevice:
    """The bare Debian arm64 root file system (never changed: clone it to change it)."""
    require_emulation()
    started = time.monotonic()
    with _real_cache():
        device = base_rootfs(AARCH64, log=lambda m: print(m, flush=True))
    print(f"\naarch64 root file system ready in {time.monotonic() - started:.1f} s", flush=True)
    return device


@pytest.fixture(scope="session")
def aarch64_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's agent bundle for linux-aarch64 (pip reaches the package index for the device's wheels)."""
    require_emulation()
    return build_agent_bundle(AARCH64, tmp_path_factory.mktemp("aarch64-bundle") / "agent.tar", log=lambda m: None)


@pytest.fixture(scope="session")
def aarch64_device(aarch64_rootfs: EmulatedDevice) -> EmulatedDevice:
    """The machine's prepared aarch64 device with this checkout's agent (remade, from a bundle built then,
    when this checkout changed). Tests that compile against it also take ``machine_device_cache``."""
    started = time.monotonic()
    with _real_cache():
        device = prepare_device(AARCH64, log=lambda m: print(m, flush=True))
    print(f"\naarch64 device ready in {time.monotonic() - started:.1f} s", flush=True)
    return device
