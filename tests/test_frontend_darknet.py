"""DarkNet frontend: small YOLO/classifier cfgs with random weights, written here in DarkNet's format,
compiled and run, then compared with OpenCV's DarkNet importer on the same input.

OpenCV turns each [yolo]/[region] into a "Region" layer whose output is *decoded* (sigmoid, box
transform, one row per cell and anchor), fed through a "Permute" to NHWC. Our heads are the raw
tensor, so we compare with the layer that feeds OpenCV's Permute; :func:`test_yolo_decoding_matches_opencv`
then checks the decoding documented in the frontend against OpenCV's Region output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgemill
import edgemill.runtime as rt
from edgemill.compiler.frontends import FrontendRequest, all_frontends
from edgemill.errors import ModelFormatError

from .conftest import run_cli

Layer = tuple[str, dict[str, Any]]


def conv(filters: int, size: int = 3, stride: int = 1, bn: bool = True, act: str = "leaky", groups: int = 1) -> Layer:
    opts: dict[str, Any] = {"filters": filters, "size": size, "stride": stride, "pad": 1, "activation": act}
    if bn:
        opts["batch_normalize"] = 1
    if groups != 1:
        opts["groups"] = groups
    return "convolutional", opts


def write_darknet(tmp: Path, name: str, layers: list[Layer], size: int = 64, channels: int = 3, seed: int = 0,
                  header: tuple[int, int, int] = (0, 2, 5)) -> Path:
    """Write NAME.cfg and NAME.weights (random, BN variances positive); return the .cfg path.

    Channel bookkeeping here is deliberately independent of the frontend's."""
    rng = np.random.default_rng(seed)
    text = [f"[net]\nbatch=1\nwidth={size}\nheight={size}\nchannels={channels}\n"]
    chunks: list[np.ndarray] = []
    outs: list[int] = []
    c = channels
    for i, (kind, opts) in enumerate(layers):
        text.append(f"[{kind}]\n" + "".join(f"{k}={v}\n" for k, v in opts.items()))
        if kind == "convolutional":
            n, k = opts["filters"], opts["size"]
            bound = 1.0 / np.sqrt(c // opts.get("groups", 1) * k * k)
            chunks.append(rng.uniform(-0.1, 0.1, n))  # biases
            if opts.get("batch_normalize"):
                chunks += [rng.uniform(0.5, 1.5, n), rng.uniform(-0.1, 0.1, n), rng.uniform(0.5, 1.5, n)]
            chunks.append(rng.uniform(-bound, bound, n * (c // opts.get("groups", 1)) * k * k))
            c = n
        elif kind == "route":
            refs = [int(r) for r in str(opts["layers"]).split(",")]
            c = sum(outs[i + r if r < 0 else r] for r in refs) // opts.get("groups", 1)
        elif kind == "connected":
            n = opts["output"]
            chunks += [rng.uniform(-0.1, 0.1, n), rng.uniform(-1, 1, n * c)]  # input is c x 1 x 1 here
            c = n
        elif kind == "reorg":
            c *= opts["stride"] ** 2
        outs.append(c)
    cfg = tmp / f"{name}.cfg"
    cfg.write_text("\n".join(text))
    major, minor, revision = header
    seen = np.array([1234], np.int64 if major * 10 + minor >= 2 else np.int32)
    body = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    (tmp / f"{name}.weights").write_bytes(np.array(header, np.int32).tobytes() + seen.tobytes() + body.tobytes())
    return cfg


ANCHORS = "10,14,23,27,37,58,81,82,135,169,344,319"


def yolo(mask: str, classes: int = 2, **extra: Any) -> Layer:
    return "yolo", {"mask": mask, "anchors": ANCHORS, "classes": classes, "num": 6, **extra}


# Shaped like yolov3-tiny.cfg: six conv/maxpool stages (the last maxpool is size=2 stride=1), two heads,
# a route back, an upsample and a route that concatenates with an earlier stage.
YOLOV3_TINY: list[Layer] = [
    conv(8), ("maxpool", {"size": 2, "stride": 2}),
    conv(16), ("maxpool", {"size": 2, "stride": 2}),
    conv(32), ("maxpool", {"size": 2, "stride": 2}),
    conv(64), ("maxpool", {"size": 2, "stride": 1}),
    conv(128), conv(32, 1), conv(64), conv(21, 1, bn=False, act="linear"), yolo("3,4,5"),
    ("route", {"layers": -4}), conv(16, 1), ("upsample", {"stride": 2}), ("route", {"layers": "-1,4"}),
    conv(32), conv(21, 1, bn=False, act="linear"), yolo("0,1,2"),
]

# Shaped like yolov4-tiny.cfg's CSP blocks: route groups=2 group_id=1, shortcut, other activations.
YOLOV4_TINY: list[Layer] = [
    conv(16, stride=2), conv(32, stride=2),
    conv(32), ("route", {"layers": -1, "groups": 2, "group_id": 1}), conv(16, act="mish"), conv(16, act="swish"),
    ("route", {"layers": "-1,-2"}), conv(32, 1, act="relu"), ("shortcut", {"from": -6, "activation": "linear"}),
    ("route", {"layers": "-7,-1"}), ("maxpool", {"size": 2, "stride": 2}),
    conv(32, act="logistic"), conv(16, 3, groups=4), conv(21, 1, bn=False, act="linear"),
    yolo("3,4,5", scale_x_y=1.05),
]

# Shaped like yolov2(-voc).cfg: reorg + route into a [region] head.
YOLOV2: list[Layer] = [
    conv(8), ("maxpool", {"size": 2, "stride": 2}), conv(16), ("maxpool", {"size": 2, "stride": 2}),
    conv(16), ("maxpool", {"size": 2, "stride": 2}), conv(32), conv(32),
    ("route", {"layers": -5}), conv(8, 1), ("reorg", {"stride": 2}), ("route", {"layers": "-1,-4"}),
    conv(32), conv(2 * (5 + 3), 1, bn=False, act="linear"),
    ("region", {"anchors": "1.08,1.19,3.42,4.41", "classes": 3, "coords": 4, "num": 2, "softmax": 1}),
]

CLASSIFIER: list[Layer] = [
    conv(8), ("maxpool", {"size": 2, "stride": 2}), conv(16), ("maxpool", {"size": 2, "stride": 2}),
    conv(10, 1, act="linear"), ("avgpool", {}), ("softmax", {"groups": 1}), ("cost", {"type": "sse"}),
]

# Classic darknet reference/extraction tail: global average pool, fully connected, dropout, softmax.
CLASSIFIER_FC: list[Layer] = [
    conv(8, stride=2), ("maxpool", {"size": 2, "stride": 2}), conv(16), ("avgpool", {}),
    ("connected", {"output": 10, "activation": "leaky"}), ("dropout", {"probability": 0.5}),
    ("connected", {"output": 7, "activation": "linear"}), ("softmax", {}),
]


def compile_and_run(cfg: Path, tmp: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    result = edgemill.compile(cfg, output=tmp / f"{cfg.stem}.emp", measure=False)
    model = rt.load(result.path)
    return model.run({"input": x})


def opencv_outputs(cfg: Path, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(raw inputs of OpenCV's Region layers, OpenCV's final outputs) for input x."""
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        pytest.skip("this OpenCV has no DarkNet importer (OpenCV 5 dropped it); install opencv-python-headless<5")
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(cfg.with_suffix(".weights")))
    names = list(net.getLayerNames())
    # Region <- Permute <- the raw head tensor
    raw = [names[p - 2] for p, n in enumerate(names) if net.getLayer(n).type == "Region"]
    net.setInput(x)
    outs = net.forward(raw + list(net.getUnconnectedOutLayersNames()))
    return list(outs[:len(raw)]), list(outs[len(raw):])


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("name, layers, heads", [
    ("yolov3-tiny", YOLOV3_TINY, ["yolo_12", "yolo_19"]),
    ("yolov4-tiny", YOLOV4_TINY, ["yolo_14"]),
    ("yolov2", YOLOV2, ["region_14"]),
])
def test_yolo_heads_match_opencv(tmp_path: Path, name: str, layers: list[Layer], heads: list[str]) -> None:
    cfg = write_darknet(tmp_path, name, layers)
    x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    ours = compile_and_run(cfg, tmp_path, x)
    raw, _ = opencv_outputs(cfg, x)
    assert list(ours) == heads
    for head, theirs in zip(heads, raw):
        assert ours[head].shape == theirs.shape
        assert rel_error(ours[head], theirs) <= 1e-4, head


@pytest.mark.parametrize("layers, classes", [(CLASSIFIER, 10), (CLASSIFIER_FC, 7)])
def test_classifier_matches_opencv(tmp_path: Path, layers: list[Layer], classes: int) -> None:
    cfg = write_darknet(tmp_path, "classifier", layers, size=32)
    x = np.random.default_rng(2).random((1, 3, 32, 32), dtype=np.float32)
    ours = compile_and_run(cfg, tmp_path, x)
    _, (theirs,) = opencv_outputs(cfg, x)
    assert ours["output"].shape == (1, classes, 1, 1)
    np.testing.assert_allclose(ours["output"].sum(), 1.0, rtol=1e-5)
    assert rel_error(ours["output"].reshape(-1), theirs.reshape(-1)) <= 1e-4


def decode_yolo(raw: np.ndarray, head: dict[str, Any], net_w: int, net_h: int) -> np.ndarray:
    """The decoding the frontend's docstring documents: rows (cell-major, then anchor) of x, y, w, h, obj."""
    _, _, gh, gw = raw.shape
    a = len(head["mask"])
    t = raw[0].reshape(a, -1, gh, gw).transpose(2, 3, 0, 1)  # gh, gw, a, 5+C
    sig = 1 / (1 + np.exp(-t))
    s = head["scale_x_y"]
    ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    anchors = np.array([head["anchors"][m] for m in head["mask"]])
    bx = (xs[..., None] + s * sig[..., 0] - (s - 1) / 2) / gw
    by = (ys[..., None] + s * sig[..., 1] - (s - 1) / 2) / gh
    bw = np.exp(t[..., 2]) * anchors[:, 0] / net_w
    bh = np.exp(t[..., 3]) * anchors[:, 1] / net_h
    return np.stack([bx, by, bw, bh, sig[..., 4]], -1).reshape(-1, 5)


def test_yolo_decoding_matches_opencv(tmp_path: Path) -> None:
    cfg = write_darknet(tmp_path, "yolov4-tiny", YOLOV4_TINY)
    x = np.random.default_rng(3).random((1, 3, 64, 64), dtype=np.float32)
    result = edgemill.compile(cfg, output=tmp_path / "m.emp", measure=False)
    (head,) = result.manifest.source["heads"]
    assert head["mask"] == [3, 4, 5] and head["classes"] == 2 and head["scale_x_y"] == 1.05
    ours = rt.load(result.path).run({"input": x})[head["output"]]
    _, (theirs,) = opencv_outputs(cfg, x)
    assert rel_error(decode_yolo(ours, head, 64, 64), theirs[:, :5]) <= 1e-4


def test_either_file_of_the_pair_compiles_and_source_records_both(tmp_path: Path) -> None:
    cfg = write_darknet(tmp_path, "net", CLASSIFIER, size=32, header=(0, 1, 0))  # old header: seen is int32
    # a portable target: onnxruntime's host-only NCHWc rewrite names nodes from a per-process counter
    a = edgemill.compile(cfg, target="host", output=tmp_path / "a.emp", measure=False)
    b = edgemill.compile(cfg.with_suffix(".weights"), target="host", output=tmp_path / "b.emp", measure=False)
    source = a.manifest.source
    assert source["framework"] == "darknet" and source["framework_version"] == "0.1.0" and source["seen"] == 1234
    assert source["weights"] == "net.weights" and source["unused_weight_floats"] == 0
    assert a.manifest.package_id == b.manifest.package_id


def test_detect_takes_a_cfg_with_net_or_a_weights_beside_its_cfg(tmp_path: Path) -> None:
    (darknet,) = [f for f in all_frontends() if f.name == "darknet"]
    cfg = write_darknet(tmp_path, "d", CLASSIFIER, size=32)
    other = tmp_path / "setup.cfg"
    other.write_text("[metadata]\nname = x\n")
    lonely = tmp_path / "lonely.weights"
    lonely.write_bytes(b"\0" * 20)
    assert darknet.detect(cfg) and darknet.detect(cfg.with_suffix(".weights"))
    assert not darknet.detect(other) and not darknet.detect(lonely) and not darknet.detect(tmp_path)


def test_input_override_must_keep_channels(tmp_path: Path) -> None:
    cfg = write_darknet(tmp_path, "c", CLASSIFIER, size=32)
    result = run_cli("compile", cfg, "-o", tmp_path / "c.emp", "--input", "input:1x1x32x32")
    assert result.code == 1 and "channels 3" in result.err and "input:1x3x32x32" in result.err


def test_input_override_rebuilds_for_another_size(tmp_path: Path) -> None:
    cfg = write_darknet(tmp_path, "y", YOLOV3_TINY)
    result = edgemill.compile(cfg, output=tmp_path / "y.emp", measure=False, inputs=["input:1x3x96x96"])
    outs = rt.load(result.path).run({"input": np.zeros((1, 3, 96, 96), np.float32)})
    assert outs["yolo_12"].shape == (1, 21, 12, 12) and outs["yolo_19"].shape == (1, 21, 24, 24)


def test_unknown_layer_names_type_line_and_supported_list(tmp_path: Path) -> None:
    cfg = write_darknet(tmp_path, "odd", [conv(8), ("sam", {"from": -1}), conv(8)])
    result = run_cli("compile", cfg, "-o", tmp_path / "odd.emp")
    assert result.code == 1
    message = (result.out + result.err).strip()
    line = cfg.read_text().splitlines().index("[sam]") + 1
    assert "[sam]" in message and f"line {line} " in message and "[convolutional]" in message and "[yolo]" in message
    assert "Traceback" not in message


def test_truncated_weights_report_expected_and_found(tmp_path: Path) -> None:
    cfg = write_darknet(tmp_path, "cut", [conv(8), conv(4, 1, bn=False)], size=16)
    weights = cfg.with_suffix(".weights")
    data = weights.read_bytes()
    expected = (len(data) - 20) // 4  # 8*4 + 8*27 + 4 + 4*8 = 284
    weights.write_bytes(data[:-40])
    result = run_cli("compile", cfg, "-o", tmp_path / "cut.emp")
    assert result.code == 1
    message = result.out + result.err
    assert f"{expected - 10} floats found" in message and f"expected {expected} floats" in message
    assert "layer 1 [convolutional]" in message


def test_missing_partner_is_named(tmp_path: Path) -> None:
    cfg = write_darknet(tmp_path, "lonely", CLASSIFIER, size=32)
    cfg.with_suffix(".weights").unlink()
    with pytest.raises(ModelFormatError, match=r"\.weights file is missing.*lonely\.weights"):
        from edgemill.compiler.frontends import darknet
        darknet.load(cfg, FrontendRequest())


def test_yolo_ids_repeat_within_one_process(tmp_path: Path) -> None:
    # onnxruntime writes YOLO's parallel heads in a varying order and names rewritten nodes from a
    # process-wide counter; the package id must depend on the model only.
    cfg = write_darknet(tmp_path, "v3", YOLOV3_TINY)
    ids = {edgemill.compile(cfg, target="host", output=tmp_path / f"{i}.emp", measure=False).package_id
           for i in range(4)}
    assert len(ids) == 1
