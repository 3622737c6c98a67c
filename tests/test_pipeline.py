"""Pre- and post-processing compiled into the package (edgemill.pipeline): the stage graphs equal their
NumPy steps (and OpenCV's resize), a compiled package takes camera frames and returns class names equal
to NumPy pre-processing + the original model + NumPy top-k, on every backend, and bad specs and bad
frames get one line naming the value and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgemill
import edgemill.runtime as rt
from edgemill.errors import BackendError, InputMismatchError, OptionError
from edgemill.pipeline import classify, preprocess
from edgemill.pipeline.spec import (
    PipelineSpec,
    Postprocess,
    Preprocess,
    parse_postprocess,
    parse_preprocess,
    read_labels,
)
from edgemill.tensors import TensorSpec

from .conftest import run_cli

ort = pytest.importorskip("onnxruntime")

IMAGENET = "scale=1/255 mean=0.485,0.456,0.406 std=0.229,0.224,0.225"


def run_graph(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def smooth_frames(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return np.clip(rng.normal(128, 60, shape), 0, 255).astype(np.uint8)


# --- the pre-processing graph against NumPy and OpenCV ---------------------------------------------


@pytest.mark.parametrize("text, model_shape, dtype", [
    ("frame=48x64 color=BGR " + IMAGENET, (1, 3, 32, 32), "float32"),
    ("frame=40x30 layout=NCHW resize=nearest scale=1/255", (2, 3, 24, 24), "float32"),
    ("frame=30x50 fit=letterbox pad=114 scale=1/255", (1, 3, 32, 32), "float32"),
    ("frame=30x50 fit=letterbox resize=nearest", (1, 32, 32, 3), "float32"),
    ("frame=37x41", (1, 20, 20, 3), "uint8"),  # an integer model input: rounded, clipped
    ("frame=480x640 color=BGR", (1, 224, 224, 3), "uint8"),  # 480/224: many exact .5 values
    ("frame=33x33 dtype=float32 mean=0.5 std=0.25", (1, 1, 16, 16), "float16"),
])
def test_preprocess_graph_equals_its_numpy_steps(text: str, model_shape: tuple[int, ...], dtype: str) -> None:
    pre = parse_preprocess(text)
    image = preprocess.ModelImage.of(TensorSpec("image", dtype, model_shape), None)
    frame = preprocess.frame_spec(pre, image)
    rng = np.random.default_rng(3)
    frames = smooth_frames(rng, frame.shape) if pre.dtype == "uint8" else rng.uniform(0, 1, frame.shape).astype(np.float32)
    got = run_graph(preprocess.build_graph(pre, image), {frame.name: frames})[0]
    want = preprocess.apply_numpy(pre, image, frames)
    assert got.shape == want.shape == model_shape and got.dtype == want.dtype == np.dtype(dtype)
    if dtype == "uint8":  # one step apart only where NumPy's exact value is a .5 tie (float32 vs float64)
        assert preprocess.integer_input_agrees(pre, image, frames, got)
        assert not preprocess.integer_input_agrees(pre, image, frames, np.where(want < 255, want + 1, want - 1))
    else:
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-3 if dtype == "float16" else 1e-5,
                                   atol=1e-2 if dtype == "float16" else 1e-5)


@pytest.mark.parametrize("resize, flag", [("bilinear", "INTER_LINEAR"), ("nearest", "INTER_NEAREST")])
def test_resize_is_opencvs(resize: str, flag: str) -> None:
    """bilinear is cv2.INTER_LINEAR and nearest cv2.INTER_NEAREST (on float pixels, no uint8 rounding)."""
    cv2 = pytest.importorskip("cv2")
    pre = parse_preprocess(f"frame=45x70 resize={resize}")
    image = preprocess.ModelImage.of(TensorSpec("x", "float32", (1, 3, 32, 24)), None)
    frames = np.random.default_rng(1).uniform(0, 255, (1, 45, 70, 3)).astype(np.float32)
    ours = preprocess.apply_numpy(pre, image, frames)[0].transpose(1, 2, 0)
    theirs = cv2.resize(frames[0], (24, 32), interpolation=getattr(cv2, flag))
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_letterbox_places_the_frame_centred_and_says_where() -> None:
    pre = parse_preprocess("frame=30x60 fit=letterbox pad=7")
    image = preprocess.ModelImage.of(TensorSpec("x", "float32", (1, 3, 40, 40)), None)
    place = preprocess.placement(pre, image)
    assert (place.height, place.width, place.top, place.left) == (20, 40, 10, 0)
    out = preprocess.apply_numpy(pre, image, np.full((1, 30, 60, 3), 200, np.uint8))[0]
    assert np.all(out[:, :10] == 7) and np.all(out[:, 30:] == 7) and np.allclose(out[:, 10:30], 200)
    assert place.geometry(pre, image) == {"frame_height": 30, "frame_width": 60, "model_height": 40, "model_width": 40,
                                          "scale_y": 20 / 30, "scale_x": 40 / 60, "pad_top": 10, "pad_left": 0}


# --- the classifier's post-processing --------------------------------------------------------------


@pytest.mark.parametrize("steps", [["softmax"], ["softmax,topk=3"], ["topk", "4"], ["topk=2"]])
def test_classify_graph_equals_its_numpy_steps(steps: list[str]) -> None:
    post = parse_postprocess(steps)
    spec = TensorSpec("logits", "float32", ("N", 1, 1, 10))
    logits = np.random.default_rng(2).normal(0, 3, (5, 1, 1, 10)).astype(np.float32)
    got = run_graph(classify.build_graph(post, spec), {"logits": logits})
    want = classify.apply_numpy(post, spec, logits)
    names = [o.name for o in classify.output_specs(post, spec)]
    for name, value in zip(names, got):
        if want[name].dtype.kind == "f":
            np.testing.assert_allclose(value, want[name], rtol=1e-5, atol=1e-7)
        else:
            assert np.array_equal(value, want[name])


def test_topk_classes_may_swap_only_where_scores_tie() -> None:
    scores = np.array([[0.5, 0.2, 0.2, 0.1]])
    assert classify.classes_agree(scores, np.array([[0, 2, 1]]), 1e-6)  # classes 1 and 2 tie
    assert not classify.classes_agree(scores, np.array([[1, 0, 2]]), 1e-6)
    assert not classify.classes_agree(scores, np.array([[0, 1, 1]]), 1e-6)  # a class twice is wrong


# --- the compiled package --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small NCHW CNN (ONNX, dynamic batch) with 10 classes, and a labels file."""
    folder = tmp_path_factory.mktemp("cls")
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "W"),
               numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "F")]
    nodes = [helper.make_node("Conv", ["image", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "F"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], weights)
    model = folder / "cnn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    labels = folder / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(10)) + "\n", encoding="utf-8")
    return {"model": model, "labels": labels, "folder": folder}


def numpy_top_names(classifier: dict, pre_text: str, frames: np.ndarray, k: int) -> np.ndarray:
    """What an application would do by hand: NumPy pre-processing, the original model, NumPy top-k."""
    pre = parse_preprocess(pre_text)
    image = preprocess.ModelImage.of(TensorSpec("image", "float32", ("N", 3, 32, 32)), None)
    session = ort.InferenceSession(str(classifier["model"]), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": preprocess.apply_numpy(pre, image, frames)})[0]
    names = [f"class {i}" for i in range(10)]
    return np.array(names, dtype=object)[np.argsort(-logits, axis=-1, kind="stable")[:, :k]]


def test_cli_package_takes_frames_and_returns_the_top_names(classifier: dict, tmp_path: Path) -> None:
    pre_text = "frame=48x64 color=BGR " + IMAGENET
    out = tmp_path / "cls.emp"
    result = run_cli("compile", classifier["model"], "-o", out, "--no-measure", "--preprocess", pre_text,
                     "--postprocess", "softmax", "--postprocess", "topk=5", "--labels", classifier["labels"])
    assert result.code == 0, result.err
    model = rt.load(out)
    assert [(s.name, s.dtype, s.shape) for s in model.inputs] == [("image", "uint8", ("N", 48, 64, 3))]
    assert [s.name for s in model.outputs] == ["scores", "classes", "labels"]
    frames = smooth_frames(np.random.default_rng(7), (4, 48, 64, 3))
    got = model.run({"image": frames})
    assert got["labels"].shape == (4, 5) and np.array_equal(got["labels"], numpy_top_names(classifier, pre_text, frames, 5))
    np.testing.assert_allclose(got["scores"].sum(axis=1) <= 1.0 + 1e-6, True)
    report = json.loads(run_cli("inspect", out, "--json").out)["report"]
    assert report["pipeline"]["frames"] >= 1 and max(report["pipeline"]["max_relative_error"].values()) < 1e-4
    shown = run_cli("inspect", out).out
    assert "send      image: uint8[N, 48, 64, 3] (NHWC BGR frames, raw pixels)" in shown
    assert "BGR -> RGB, resize 48x64 -> 32x32 bilinear" in shown and "post      logits: softmax, top-5" in shown
    assert "labels    10 class names" in shown
    assert ("runs as    one graph" in shown) == bool(report["pipeline"]["fused"])  # onnxruntime packages: merged


def test_the_same_pipeline_on_every_backend(classifier: dict, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    spec = PipelineSpec((parse_preprocess("frame=40x40 fit=letterbox " + IMAGENET),), parse_postprocess(["softmax,topk=3"]))
    frames = smooth_frames(np.random.default_rng(9), (2, 40, 40, 3))
    results = {}
    for backend, fuse in (("onnxruntime", True), ("openvino", True), ("openvino", False)):
        compiled = edgemill.compile(classifier["model"], output=tmp_path / f"{backend}-{fuse}.emp", backend=backend,
                                    precision="fp32", measure=False, pipeline=spec, fuse_pipeline=fuse)
        assert compiled.manifest.backend == backend
        assert compiled.manifest.pipeline.get("fused", False) is fuse  # both backends run the merged graph
        results[backend, fuse] = rt.load(compiled.path).run({"image": frames})
    for other in (("openvino", True), ("openvino", False)):
        assert np.array_equal(results["onnxruntime", True]["classes"], results[other]["classes"])
        np.testing.assert_allclose(results["onnxruntime", True]["scores"], results[other]["scores"], rtol=1e-4)


def test_a_pipeline_file_says_the_same_as_the_flags(classifier: dict, tmp_path: Path) -> None:
    (tmp_path / "names.txt").write_text(classifier["labels"].read_text())
    (tmp_path / "pipeline.toml").write_text(
        '[[preprocess]]\nframe = "48x64"\ncolor = "BGR"\nscale = "1/255"\nmean = [0.485, 0.456, 0.406]\n'
        'std = [0.229, 0.224, 0.225]\n\n[postprocess]\nsteps = ["softmax", "topk=5"]\nlabels = "names.txt"\n')
    out = tmp_path / "file.emp"
    result = run_cli("compile", classifier["model"], "-o", out, "--no-measure", "--pipeline", tmp_path / "pipeline.toml")
    assert result.code == 0, result.err
    frames = smooth_frames(np.random.default_rng(8), (2, 48, 64, 3))
    got = rt.load(out).run({"image": frames})["labels"]
    assert np.array_equal(got, numpy_top_names(classifier, "frame=48x64 color=BGR " + IMAGENET, frames, 5))


def test_a_package_without_a_pipeline_keeps_its_manifest_and_id(classifier: dict, tmp_path: Path) -> None:
    compiled = edgemill.compile(classifier["model"], output=tmp_path / "plain.emp", measure=False)
    assert "pipeline" not in compiled.manifest.to_dict() and rt.load(compiled.path).pipeline is None


# --- bad input -------------------------------------------------------------------------------------


def test_frames_of_the_wrong_dtype_or_channels_are_named(classifier: dict, tmp_path: Path) -> None:
    compiled = edgemill.compile(classifier["model"], output=tmp_path / "p.emp", measure=False,
                                pipeline=PipelineSpec((parse_preprocess("frame=48x64"),), Postprocess()))
    model = rt.load(compiled.path)
    with pytest.raises(InputMismatchError) as wrong_dtype:
        model.run({"image": np.zeros((1, 48, 64, 3), np.float32)})
    assert "float32" in str(wrong_dtype.value) and "uint8" in str(wrong_dtype.value)
    with pytest.raises(InputMismatchError) as wrong_channels:
        model.run({"image": np.zeros((1, 48, 64, 4), np.uint8)})
    assert "axis 3 must be 3" in str(wrong_channels.value)


@pytest.mark.parametrize("args, expected", [
    (["--postprocess", "topk=5", "--labels", "{short}"], "the labels file has 9 names for 10 classes"),
    (["--postprocess", "topk=11"], "topk=11 asks for more classes than output 'logits' has"),
    (["--postprocess", "yolo"], "Fix:"),
    (["--postprocess", "sharpen"], "unknown --postprocess step: 'sharpen'"),
    (["--labels", "{labels}"], "--labels names classes, but nothing returns classes"),
    (["--preprocess", "frame=48"], "--preprocess frame= is not HEIGHTxWIDTH: '48'"),
    (["--preprocess", "frame=48x64 colour=BGR"], "unknown pre-processing key: 'colour'"),
    (["--preprocess", "frame=48x64 color=YUV"], "unknown color: 'YUV'"),
    (["--preprocess", "frame=48x64 mean=0.5,0.5"], "--preprocess mean= has 2 values for a 3-channel input"),
    (["--preprocess", "nosuch: frame=48x64"], "--preprocess names an input the model does not have: 'nosuch'"),
])
def test_bad_pipeline_options_are_one_line(classifier: dict, tmp_path: Path, args: list[str], expected: str) -> None:
    short = tmp_path / "short.txt"
    short.write_text("\n".join(f"c{i}" for i in range(9)))
    args = [a.format(short=short, labels=classifier["labels"]) for a in args]
    result = run_cli("compile", classifier["model"], "-o", tmp_path / "x.emp", "--no-measure", *args)
    assert result.code != 0
    lines = [line for line in result.err.splitlines() if "error" in line]
    assert len(lines) == 1 and expected in lines[0] and "Fix:" in lines[0], result.err
    assert "Traceback" not in result.err


def test_a_model_without_image_size_asks_for_one(tmp_path: Path) -> None:
    spec = TensorSpec("x", "float32", ("N", 3, "H", "W"))
    with pytest.raises(OptionError) as err:
        preprocess.ModelImage.of(spec, None)
    assert "--input x:1x3x224x224" in str(err.value)
    assert Preprocess(frame=(2, 2)).channel_values("mean", 3) == (0.0, 0.0, 0.0)


# --- encoded images ------------------------------------------------------------------------------


def encode(pixels: np.ndarray, kind: str) -> bytes:
    from PIL import Image

    buffer = __import__("io").BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    return buffer.getvalue()


def test_a_frame_input_takes_png_and_jpeg_bytes(classifier: dict, tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    spec = PipelineSpec((parse_preprocess("frame=48x64 color=BGR " + IMAGENET),), parse_postprocess(["topk=3"]))
    model = rt.load(edgemill.compile(classifier["model"], output=tmp_path / "img.emp", measure=False, pipeline=spec).path)
    assert model.image_inputs == ["image"]
    rgb = smooth_frames(np.random.default_rng(4), (48, 64, 3))
    raw = model.run({"image": rgb[None, :, :, ::-1].copy()})  # the package declares BGR frames
    from_png = model.run({"image": encode(rgb, "PNG")})  # lossless: the same pixels, decoded as RGB then swapped
    assert np.array_equal(from_png["classes"], raw["classes"]) and np.allclose(from_png["scores"], raw["scores"])
    batch = model.run({"image": np.array([encode(rgb, "PNG"), encode(rgb, "JPEG")], dtype=object)})
    assert batch["classes"].shape == (2, 3) and np.array_equal(batch["classes"][0], raw["classes"][0])
    bigger = model.run({"image": encode(np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1), "PNG")})  # 96x128: resized
    assert bigger["classes"].shape == (1, 3)
    with pytest.raises(InputMismatchError) as unreadable:
        model.run({"image": b"\xff\xd8\xff" + b"\0" * 100})
    assert "input 'image' is not a readable image" in str(unreadable.value) and "Fix:" in str(unreadable.value)


def test_without_pillow_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from edgemill.errors import MissingDependencyError
    from edgemill.pipeline import images

    real_import = builtins.__import__

    def no_pil(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    with pytest.raises(MissingDependencyError) as err:
        images.decode(b"\x89PNG\r\n\x1a\n", "image", {"frame": [4, 4]}, 3)
    assert "pip install 'edgemill[images]'" in str(err.value)


def test_cli_runs_a_package_on_a_photo(classifier: dict, tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    out = tmp_path / "photo.emp"
    assert run_cli("compile", classifier["model"], "-o", out, "--no-measure", "--preprocess", "frame=48x64 " + IMAGENET,
                   "--postprocess", "softmax,topk=3", "--labels", classifier["labels"]).code == 0
    rgb = smooth_frames(np.random.default_rng(5), (48, 64, 3))
    (tmp_path / "photo.png").write_bytes(encode(rgb, "PNG"))
    result = run_cli("run", out, "-i", f"image={tmp_path / 'photo.png'}", "--json")
    assert result.code == 0, result.err
    labels = json.loads(result.out)["outputs"]["labels"]
    assert labels["values"] == numpy_top_names(classifier, "frame=48x64 " + IMAGENET, rgb[None], 3).tolist()
    plain = tmp_path / "plain.emp"
    edgemill.compile(classifier["model"], output=plain, measure=False)
    refused = run_cli("run", plain, "-i", f"image={tmp_path / 'photo.png'}")
    assert refused.code != 0 and "input 'image' does not take image files" in refused.err and "--preprocess" in refused.err


def test_a_stage_graph_that_strays_from_its_numpy_steps_fails_the_compile(classifier: dict, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from edgemill.errors import AccuracyCheckError

    real = preprocess.build_graph

    def off_by_a_bit(pre, image):  # type: ignore[no-untyped-def]
        return real(Preprocess.from_dict({**pre.to_dict(), "scale": pre.scale * 1.01}), image)

    monkeypatch.setattr(preprocess, "build_graph", off_by_a_bit)
    spec = PipelineSpec((parse_preprocess("frame=48x64 scale=1/255"),), Postprocess())
    with pytest.raises(AccuracyCheckError) as err:
        edgemill.compile(classifier["model"], output=tmp_path / "bad.emp", measure=False, pipeline=spec)
    assert "pre-processing graph differs from the same steps done in NumPy on 'image'" in str(err.value)
    assert not (tmp_path / "bad.emp").exists()


def test_run_model_is_the_model_without_its_pipeline(classifier: dict, tmp_path: Path) -> None:
    pre_text = "frame=48x64 " + IMAGENET
    spec = PipelineSpec((parse_preprocess(pre_text),), parse_postprocess(["softmax,topk=3"]))
    model = rt.load(edgemill.compile(classifier["model"], output=tmp_path / "m.emp", measure=False, pipeline=spec,
                                     fuse_pipeline=False).path)
    frames = smooth_frames(np.random.default_rng(1), (1, 48, 64, 3))
    image = preprocess.ModelImage.of(TensorSpec("image", "float32", ("N", 3, 32, 32)), None)
    logits = model.run_model({"image": preprocess.apply_numpy(parse_preprocess(pre_text), image, frames)})["logits"]
    session = ort.InferenceSession(str(classifier["model"]), providers=["CPUExecutionProvider"])
    want = session.run(None, {"image": preprocess.apply_numpy(parse_preprocess(pre_text), image, frames)})[0]
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-6)


def test_an_onnxruntime_package_runs_its_stages_inside_its_model_and_gives_what_separate_stages_give(
        classifier: dict, tmp_path: Path) -> None:
    spec = PipelineSpec((parse_preprocess("frame=48x64 color=BGR " + IMAGENET),),
                        parse_postprocess(["softmax,topk=3"], read_labels(classifier["labels"])))
    fused = edgemill.compile(classifier["model"], output=tmp_path / "fused.emp", measure=False, pipeline=spec,
                             backend="onnxruntime")
    apart = edgemill.compile(classifier["model"], output=tmp_path / "apart.emp", measure=False, pipeline=spec,
                             backend="onnxruntime", fuse_pipeline=False)
    assert fused.manifest.pipeline["fused"] is True and "fused" not in apart.manifest.pipeline
    assert not [f for f in fused.manifest.files if f.startswith("pipeline/")]  # the stages live in the model
    assert [f for f in apart.manifest.files if f.startswith("pipeline/")]
    step = next(s for s in fused.report["steps"] if s["step"] == "pipeline_fuse")
    assert step["fused"] is True and "merged" in step["summary"]
    one, two = rt.load(fused.path), rt.load(apart.path)
    frames = smooth_frames(np.random.default_rng(3), (2, 48, 64, 3))
    got, want = one.run({"image": frames}), two.run({"image": frames})
    assert list(got) == list(want)
    for name in want:
        if want[name].dtype.kind == "f":
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(got[name], want[name])
    with pytest.raises(BackendError) as refused:
        one.run_model({"image": np.zeros((1, 3, 32, 32), np.float32)})
    assert "--no-fuse-pipeline" in refused.value.fix


def test_stages_stay_apart_when_the_model_has_a_tensor_of_a_package_output_name() -> None:
    """A model tensor named like a package output ('scores' here) would clash in one graph: fuse() declines,
    naming it (the compile then keeps the stages apart and records why)."""
    from edgemill.compiler import pipeline_build, pipeline_fuse

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["image", "W"], ["scores"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["scores"], ["g"]), helper.make_node("Flatten", ["g"], ["logits"])]
    graph = helper.make_graph(nodes, "clash", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    spec = PipelineSpec((parse_preprocess("frame=20x24 scale=1/255"),), parse_postprocess(["softmax,topk=2"]))
    pipe = pipeline_build.prepare(spec, [TensorSpec("image", "float32", (1, 3, 16, 16))],
                                  [TensorSpec("logits", "float32", (1, 4))], {})
    assert "scores" in pipe.layout.postprocess.outputs
    merged, why = pipeline_fuse.fuse(model.SerializeToString(), pipe.layout, pipe.files)
    assert merged is None and "'scores'" in why
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    renamed.graph.node[0].output[0] = renamed.graph.node[1].input[0] = "features"
    merged, why = pipeline_fuse.fuse(renamed.SerializeToString(), pipe.layout, pipe.files)
    assert merged is not None and "merged" in why
    session = ort.InferenceSession(merged, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert sorted(o.name for o in session.get_outputs()) == sorted(pipe.layout.fused_outputs())


def test_a_merged_model_is_kept_only_when_it_gives_what_the_separate_stages_give() -> None:
    from edgemill.compiler.pipeline_fuse import difference

    separate = {"scores": np.array([[0.5, 0.25]], np.float32), "classes": np.array([[3, 1]], np.int64),
                "labels": np.array([["cat", "dog"]], dtype=object)}
    assert difference(dict(separate), separate, 1e-4) is None
    assert "1.00e-02" in difference({**separate, "scores": separate["scores"] * 1.01}, separate, 1e-4)
    assert "int32" in difference({**separate, "classes": separate["classes"].astype(np.int32)}, separate, 1e-4)
    assert "1 of 2" in difference({**separate, "classes": np.array([[3, 2]], np.int64)}, separate, 1e-4)
    assert "missing" in difference({k: v for k, v in separate.items() if k != "labels"}, separate, 1e-4)
