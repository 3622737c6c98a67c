"""``[listen] grpc_io``: which grpcio I/O core the agent's gRPC server runs on, chosen before grpc loads."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import edgemill.runtime as rt
from edgemill.agent import grpc_io
from edgemill.agent.config import config_from_dict
from edgemill.client import AgentClient
from edgemill.errors import ConfigError
from edgemill.package.store import sign_package

from ._agent import AgentProcess, free_port, write_config


def test_iomgr_sets_the_experiments_on_the_measured_grpcio_versions() -> None:
    for version in ("1.80.0", "1.85.4", "1.89.9rc1"):
        environ: dict[str, str] = {}
        decision = grpc_io.choose("iomgr", environ, version, grpc_imported=False)
        assert decision.applied and environ == {"GRPC_EXPERIMENTS": grpc_io.IOMGR_EXPERIMENTS}
        assert version in decision.reason and "iomgr" in decision.reason


@pytest.mark.parametrize(("version", "words"), [("1.79.2", "iomgr already"), ("1.66.0", "iomgr already"),
                                                ("1.90.0", "newer than the versions"), ("", "iomgr already"),
                                                ("garbage", "iomgr already")])
def test_iomgr_leaves_grpcio_alone_where_the_switch_is_unneeded_or_unmeasured(version: str, words: str) -> None:
    environ: dict[str, str] = {}
    decision = grpc_io.choose("iomgr", environ, version, grpc_imported=False)
    assert not decision.applied and environ == {} and words in decision.reason


def test_the_operators_own_setting_and_event_engine_are_kept() -> None:
    environ = {"GRPC_EXPERIMENTS": "-event_engine_dns"}
    decision = grpc_io.choose("iomgr", environ, "1.85.4", grpc_imported=False)
    assert not decision.applied and environ == {"GRPC_EXPERIMENTS": "-event_engine_dns"}
    assert "-event_engine_dns" in decision.reason
    environ = {}
    decision = grpc_io.choose("event-engine", environ, "1.85.4", grpc_imported=False)
    assert not decision.applied and environ == {} and "default" in decision.reason


def test_a_process_that_already_imported_grpc_is_told_so() -> None:
    environ: dict[str, str] = {}
    decision = grpc_io.choose("iomgr", environ, "1.85.4", grpc_imported=True)
    assert not decision.applied and environ == {} and "imported before" in decision.reason


def test_an_unknown_grpc_io_is_refused_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"listen": {"grpc_io": "epoll"}}, tmp_path / "agent.toml", '[listen]\ngrpc_io = "epoll"\n')
    message = caught.value.one_line()
    assert "grpc_io" in message and "iomgr" in message and "event-engine" in message


@pytest.mark.parametrize("setting", ["iomgr", "event-engine"])
def test_the_agent_serves_on_either_io_core_and_says_which(setting: str, packages: dict[str, Path],
                                                           keypair: tuple[Path, Path], tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(packages["mlp"], models / "mlp.emp")
    sign_package(models / "mlp.emp", keypair[0])
    config = write_config(tmp_path / "agent.toml", {
        "listen": {"address": f"127.0.0.1:{free_port()}", "unix_socket": str(tmp_path / "agent.sock"),
                   "metrics_address": "", "grpc_io": setting},
        "models": {"directory": str(models), "trusted_keys": [str(keypair[1])]},
        "capture": {"directory": str(tmp_path / "queue"), "store": f"file://{tmp_path / 'store'}"},
    })
    expected = grpc_io.choose(setting, dict(os.environ), grpc_io.installed_grpcio(), grpc_imported=False)
    model = rt.load(models / "mlp.emp")
    feed = {s.name: np.random.default_rng(0).standard_normal([1, *s.shape[1:]]).astype(s.dtype) for s in model.inputs}
    want = model.run(feed)
    with AgentProcess(config, "--log-level", "info") as agent:
        for target in (agent.address, agent.unix):
            with AgentClient(target, fast_path=False) as client:
                got = client.predict("mlp", feed).outputs
            for name, value in want.items():
                np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-6)
        assert f"gRPC I/O: {expected.reason}" in agent.stderr()


def test_every_wire_dtype_maps_by_dtype_as_by_name() -> None:
    """The dtype-keyed lookup on the Predict path gives what the name gives, byte-swapped dtypes included."""
    from edgemill.agent.grpc.edgemill_v1 import encode_tensor
    from edgemill.agent.v1_types import DTYPE_BY_ENUM, ENUM_BY_DTYPE, enum_of

    for enum, dtype in DTYPE_BY_ENUM.items():
        assert enum_of(dtype) == enum == ENUM_BY_DTYPE[dtype.name]
        if dtype.itemsize > 1:
            swapped = np.arange(6).astype(dtype).reshape(2, 3).astype(dtype.newbyteorder(">"))
            assert enum_of(swapped.dtype) == enum
            tensor = encode_tensor("y", swapped)
            assert tensor.dtype == enum and tensor.raw == np.arange(6).astype(dtype).tobytes()
    assert enum_of(np.dtype("complex64")) is None
