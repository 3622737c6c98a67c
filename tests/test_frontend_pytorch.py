"""The PyTorch frontend: real models trained here, exported three ways, compiled, and run by the runtime."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

import edgemill  # noqa: E402
import edgemill.runtime as rt  # noqa: E402
from edgemill.compiler.frontends import FrontendRequest  # noqa: E402
from edgemill.compiler.frontends import pytorch as frontend  # noqa: E402
from edgemill.errors import ModelFormatError, OptionError  # noqa: E402
from edgemill.tensors import parse_input_override  # noqa: E402

from .conftest import run_cli  # noqa: E402

nn = torch.nn
# torch 2.13 deprecates torch.jit.script/save, which these tests use to make TorchScript files on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits when installed, else a synthetic 10-class problem of the same shape."""
    try:
        from sklearn.datasets import load_digits

        data = load_digits()
        x, y = (data.images / 16.0).astype(np.float32), data.target.astype(np.int64)
    except ImportError:
        rng = np.random.default_rng(0)
        centers = rng.standard_normal((10, 8, 8)).astype(np.float32)
        y = rng.integers(0, 10, 1800)
        x = (centers[y] + 0.5 * rng.standard_normal((1800, 8, 8))).astype(np.float32)
    order = np.random.default_rng(1).permutation(len(x))
    x, y = x[order][:, None], y[order]
    split = int(0.8 * len(x))
    return x[:split], y[:split], x[split:], y[split:]


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


MLP_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn

    def build():
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 10))
        model.load_state_dict(torch.load(__file__.replace(".py", ".weights"), weights_only=True))
        return model
''')


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 8) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(xt), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[i:i + 64]), yt[i:i + 64]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return digits()


@pytest.fixture(scope="module")
def cnn(data) -> nn.Module:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return train(SmallCNN(), data[0], data[1])


@pytest.fixture(scope="module")
def saved(cnn, tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("torch")
    example = torch.zeros(2, 1, 8, 8)
    torch.jit.save(torch.jit.script(cnn), str(d / "cnn.pt"))
    program = torch.export.export(cnn, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(d / "cnn.pt2"))
    torch.save(cnn.state_dict(), str(d / "weights.pt"))
    return {"torchscript": d / "cnn.pt", "exported": d / "cnn.pt2", "state_dict": d / "weights.pt", "dir": d}


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def assert_same_predictions(ours: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> None:
    assert rel_error(ours, reference) <= 1e-4
    assert np.array_equal(ours.argmax(1), reference.argmax(1))
    assert (ours.argmax(1) == labels).mean() == (reference.argmax(1) == labels).mean() > 0.8


def run_package(path: Path, x: np.ndarray) -> np.ndarray:
    model = rt.load(path)
    (out,) = model.run({model.inputs[0].name: x}).values()
    return out


@pytest.mark.parametrize("kind,inputs", [("torchscript", ["x:Nx1x8x8:float32"]), ("exported", [])])
def test_compiled_cnn_matches_torch_on_held_out_digits(kind, inputs, cnn, saved, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = edgemill.compile(saved[kind], output=tmp_path / "cnn.emp", measure=False, inputs=inputs)
    source = result.manifest.source
    assert source["framework"] == "pytorch" and source["opset"] == frontend.OPSET
    assert source["exporter"] == {"torchscript": "torchscript", "exported": "dynamo"}[kind]
    x_test, y_test = data[2], data[3]
    with torch.no_grad():
        reference = cnn(torch.from_numpy(x_test)).numpy()
    assert_same_predictions(run_package(result.path, x_test), reference, y_test)


@pytest.mark.parametrize("kind,inputs", [("torchscript", ["x:Nx1x8x8"]), ("exported", [])])
def test_dynamic_batch_runs_any_batch_size(kind, inputs, cnn, saved, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = edgemill.compile(saved[kind], output=tmp_path / "cnn.emp", measure=False, inputs=inputs)
    assert isinstance(result.manifest.inputs[0].shape[0], str)
    if kind == "torchscript":
        assert result.manifest.inputs[0].shape[0] == "N"  # the user's symbol is kept
    for batch in (1, 7):
        x = data[2][:batch]
        with torch.no_grad():
            reference = cnn(torch.from_numpy(x)).numpy()
        assert rel_error(run_package(result.path, x), reference) <= 1e-4


def test_static_input_gives_static_package(saved, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = edgemill.compile(saved["torchscript"], output=tmp_path / "cnn.emp", measure=False,
                              inputs=["x:4x1x8x8"])
    assert result.manifest.inputs[0].shape == (4, 1, 8, 8)


def test_python_entry_builds_and_exports_the_module(data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 10))
    train(mlp, data[0], data[1])
    torch.save(mlp.state_dict(), str(tmp_path / "mlp.weights"))
    (tmp_path / "mlp.py").write_text(MLP_SOURCE)
    entry = Path(f"{tmp_path / 'mlp.py'}:build")
    assert frontend.detect(entry)
    request = FrontendRequest(inputs=(parse_input_override("input:Nx1x8x8:float32"),))
    proto, info = frontend.load(entry, request)
    assert info.details["kind"] == "entry" and info.details["exporter"] == "dynamo" and info.file == "mlp.py"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"

    # The same entry through the command line: the package is named after the .py file, beside it.
    result = run_cli("compile", str(entry), "--input", "input:Nx1x8x8:float32", "--no-measure")
    assert result.code == 0, result.err
    package = tmp_path / "mlp-host.emp"
    assert package.is_file()
    x_test, y_test = data[2], data[3]
    ours = rt.load(package).run({"input": x_test})[rt.load(package).outputs[0].name]
    with torch.no_grad():
        reference = mlp(torch.from_numpy(x_test)).numpy()
    assert_same_predictions(ours, reference, y_test)


def test_missing_input_shapes_is_one_line_naming_the_fix(saved) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("compile", saved["torchscript"], "--no-measure", "-o", saved["dir"] / "never.emp")
    assert result.code == 1
    errors = [line for line in result.err.splitlines() if line.startswith("edgemill: ")]
    assert len(errors) == 1 and "Traceback" not in result.err
    message = errors[0]
    assert "does not record input shapes" in message and "--input x:" in message


def test_non_pytorch_file_with_framework_pytorch_is_refused(model_dir, saved) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("compile", model_dir / "mlp.onnx", "--framework", "pytorch", "--no-measure")
    assert result.code == 1 and "not a PyTorch model" in result.err and "Traceback" not in result.err
    result = run_cli("compile", saved["state_dict"], "--framework", "pytorch", "--no-measure")
    assert result.code == 1 and "holds weights but no graph" in result.err and "torch.jit.save" in result.err


def test_unsupported_operator_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    class Cholesky(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.cholesky(x @ x.transpose(-1, -2) + torch.eye(4))

    torch.jit.save(torch.jit.script(Cholesky()), str(tmp_path / "chol.pt"))
    result = run_cli("compile", tmp_path / "chol.pt", "--input", "x:2x4x4", "--no-measure")
    assert result.code == 1 and "Traceback" not in result.err
    assert "cannot map an operator" in result.err and "linalg_cholesky" in result.err


def test_wrong_input_name_and_shape_are_option_errors(saved) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OptionError, match="input shapes"):
        frontend.load(saved["torchscript"], FrontendRequest(inputs=(parse_input_override("image:1x1x8x8"),)))
    with pytest.raises(OptionError, match="does not run on inputs"):
        frontend.load(saved["torchscript"], FrontendRequest(inputs=(parse_input_override("x:1x3x8x8"),)))


def test_dimension_the_model_fixes_cannot_be_dynamic(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "fixed.py").write_text(textwrap.dedent('''
        from torch import nn

        class Fixed(nn.Module):
            def forward(self, x):
                return x.reshape(2, 16) * 2

        def build():
            return Fixed()
    '''))
    request = FrontendRequest(inputs=(parse_input_override("x:Nx4x4"),))
    with pytest.raises(OptionError, match="does not allow axis 0"):
        frontend.load(Path(f"{tmp_path / 'fixed.py'}:build"), request)


def test_detection(saved, model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert frontend.detect(saved["torchscript"]) and frontend.detect(saved["exported"])
    assert not frontend.detect(saved["state_dict"])  # weights only: no graph to compile
    assert not frontend.detect(model_dir / "mlp.onnx")
    assert not frontend.detect(Path(f"{tmp_path / 'absent.py'}:build"))
    with pytest.raises(ModelFormatError, match="no callable"):
        (tmp_path / "empty.py").write_text("")
        frontend.load(Path(f"{tmp_path / 'empty.py'}:build"), FrontendRequest())


def test_detection_does_not_import_torch() -> None:
    code = ("import sys; from pathlib import Path; from edgemill.compiler.frontends import pytorch as f; "
            "f.detect(Path('x.pt')); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
