"""The target catalog and host detection."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgemill.errors import UnknownTargetError
from edgemill.targets import CATALOG, Target, detect_host, get_target, runnable_here

from .conftest import run_cli

REQUIRED = {"x86_64-avx2", "x86_64-avx512", "aarch64", "jetson", "intel-npu", "intel-gpu", "qualcomm", "apple",
            "android", "ti-tda4", "inf1", "inf2"}


def test_catalog_covers_the_documented_targets() -> None:
    assert REQUIRED <= set(CATALOG)
    assert get_target("host").name == "host"


def test_targets_are_frozen_values() -> None:
    with pytest.raises(AttributeError):
        CATALOG["aarch64"].arch = "x86_64"  # type: ignore[misc]


def test_host_detection_reads_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse4_2 avx avx2 fma avx512f avx512_vnni junk\n")
    host = detect_host(str(cpuinfo))
    assert {"avx2", "avx512f", "avx512_vnni", "fma"} <= set(host.cpu_features)
    assert "junk" not in host.cpu_features and host.cores and host.cores >= 1


def test_arm_features_line_is_read(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nFeatures : fp asimd asimddp sve\n")
    assert {"asimd", "asimddp", "sve"} <= set(detect_host(str(cpuinfo)).cpu_features)


def test_runnable_here_compares_arch_features_and_accelerators() -> None:
    here = Target("host", "x86_64", "linux", "", cpu_features=("avx2", "fma", "f16c"))
    assert runnable_here(CATALOG["x86_64-avx2"], here)
    assert not runnable_here(CATALOG["x86_64-avx512"], here)
    assert not runnable_here(CATALOG["aarch64"], here)
    assert not runnable_here(CATALOG["intel-gpu"], here)


def test_unknown_target_suggests_a_close_one() -> None:
    with pytest.raises(UnknownTargetError) as err:
        get_target("raspberry")
    assert "aarch64" in str(err.value) and "edgemill targets" in str(err.value)


def test_targets_cli_lists_the_catalog() -> None:
    result = run_cli("targets")
    assert result.code == 0
    for name in REQUIRED | {"host"}:
        assert name in result.out
