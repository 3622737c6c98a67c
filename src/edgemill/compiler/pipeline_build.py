"""The compile side of a package's pipeline (``--preprocess`` / ``--postprocess`` / ``--labels``).

:func:`prepare` checks the spec against the model's inputs and outputs before any candidate is built
(a post-processing that does not fit the outputs fails in the first second) and builds the stage graphs.
The candidates are then judged on pre-processed frames (:meth:`Pipeline.feeds`: the NumPy steps, so the
accuracy gate compares the model with its source framework on the inputs it will really get), and
:func:`check` runs the chosen candidate inside the stage graphs on those frames, against the same
candidate fed by the NumPy pre-processing and followed by the NumPy post-processing: the graphs must
reproduce the NumPy steps. Together: package(frames) = NumPy post(source(NumPy pre(frames))) within
the gate's tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import AccuracyCheckError, OptionError
from ..package.layout import PIPELINE_DIR
from ..pipeline import classify, preprocess
from ..pipeline.spec import PipelineSpec, Postprocess, Preprocess
from ..pipeline.stages import PipelineLayout, PipelineRunner, PostStage, PreStage
from ..tensors import TensorSpec
from .accuracy import compare
from .graph import to_bytes

PRE_FILE = PIPELINE_DIR + "/preprocess_{index}.onnx"
POST_FILE = PIPELINE_DIR + "/postprocess.onnx"


@dataclass(frozen=True)
class _Pre:
    spec: Preprocess
    image: preprocess.ModelImage
    frame: TensorSpec


@dataclass(frozen=True)
class Pipeline:
    spec: PipelineSpec
    layout: PipelineLayout
    files: dict[str, bytes]
    inputs: list[TensorSpec]  # the package's
    outputs: list[TensorSpec]
    pre: tuple[_Pre, ...]
    post_numpy: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]

    def to_model_feed(self, frames: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Package inputs -> model inputs with the NumPy pre-processing."""
        feed = dict(frames)
        for p in self.pre:
            feed[p.image.name] = preprocess.apply_numpy(p.spec, p.image, feed.pop(p.frame.name))
        return feed

    def frames(self, batch: int, seed: int, others: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Seeded frames, smooth like photographs (a coarse random grid, bilinearly enlarged, plus noise):
        pure noise would average out in the resize and give every class the same score."""
        rng = np.random.default_rng(seed)
        feed = {k: v for k, v in others.items() if k not in {p.image.name for p in self.pre}}
        for p in self.pre:
            h, w = p.spec.frame
            c = p.image.channels
            coarse = rng.uniform(0, 255, (batch, c, 6, 8))
            up = preprocess._linear(preprocess._linear(coarse, h, axis=2), w, axis=3)
            x = np.clip(up + rng.normal(0, 12, up.shape), 0, 255)
            x = x.transpose(0, 2, 3, 1) if p.spec.layout == "NHWC" else x
            feed[p.frame.name] = (np.rint(x) if p.spec.dtype == "uint8" else x / 255.0).astype(p.spec.dtype)
        return feed

    def runner(self, run_model: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]) -> PipelineRunner:
        return PipelineRunner(self.layout, self.files, run_model, 1, [o.name for o in self.outputs])


def prepare(spec: PipelineSpec, model_inputs: list[TensorSpec], model_outputs: list[TensorSpec],
            details: Mapping[str, Any]) -> Pipeline:
    """Check ``spec`` against the model and build the stage graphs (no model run yet)."""
    files: dict[str, bytes] = {}
    pres: list[_Pre] = []
    stages: list[PreStage] = []
    inputs = list(model_inputs)
    for index, pre in enumerate(spec.preprocess):
        target = _image_input(pre, model_inputs, [p.image.name for p in pres])
        image = preprocess.ModelImage.of(target, pre.model_layout)
        frame = preprocess.frame_spec(pre, image)
        taken = {s.name for s in inputs if s.name != image.name}
        if frame.name in taken:
            raise OptionError("--preprocess name= is already an input of the model", value=frame.name,
                              fix="pick another name= for the frame input")
        path = PRE_FILE.format(index=index)
        files[path] = to_bytes(preprocess.build_graph(pre, image))
        pres.append(_Pre(pre, image, frame))
        stages.append(PreStage(frame.name, image.name, path, pre.to_dict(),
                               preprocess.placement(pre, image).geometry(pre, image)))
        inputs = [frame if s.name == image.name else s for s in inputs]

    post = spec.postprocess
    outputs = list(model_outputs)
    post_stage: PostStage | None = None
    labels_from = labels_to = None
    post_numpy: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]] = dict
    if post.detect is not None:
        post_stage, outputs, post_numpy, post_file = _detect(spec, pres, stages, model_inputs, model_outputs, details)
        files[POST_FILE] = post_file
        labels_from, labels_to = ("classes", "labels") if post.labels else (None, None)
    elif not post.empty:
        scores = classify.check_fits(post, model_outputs)
        produced = classify.output_specs(post, scores)
        files[POST_FILE] = to_bytes(classify.build_graph(post, scores))
        passthrough = [o for o in model_outputs if o.name != scores.name]
        taken = {o.name for o in passthrough} & {o.name for o in produced}
        if taken:
            raise OptionError("a model output has the name a post-processing output takes", value=min(taken),
                              fix="pick the scores output with --postprocess output=NAME")
        graph_outputs = [o.name for o in produced if o.dtype != "str"]
        post_stage = PostStage(POST_FILE, (scores.name,), tuple(graph_outputs), tuple(o.name for o in passthrough),
                               post.to_dict())
        outputs = produced + passthrough
        if post.labels:
            labels_from, labels_to = "classes", "labels"

        def post_numpy(model_out: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            done = classify.apply_numpy(post, scores, model_out[scores.name])
            return {**done, **{o.name: model_out[o.name] for o in passthrough}}
    elif post.labels:
        raise OptionError("--labels needs a post-processing that returns classes", value=f"{len(post.labels)} labels",
                          fix="add --postprocess topk=5 (a classifier) or --postprocess yolo (a detector)")
    layout = PipelineLayout(tuple(model_inputs), tuple(model_outputs), tuple(stages), post_stage, post.labels,
                            labels_from, labels_to)
    return Pipeline(spec, layout, files, inputs, outputs, tuple(pres), post_numpy)


def numpy_twin(manifest: Any) -> Pipeline:
    """The pipeline a package's manifest describes, rebuilt: its ``to_model_feed`` and ``post_numpy`` are the
    package's steps in NumPy (what an application would write by hand; the benchmarks time them)."""
    layout = PipelineLayout.from_dict(manifest.pipeline)
    spec = PipelineSpec(tuple(Preprocess.from_dict(dict(p.spec)) for p in layout.preprocess),
                        Postprocess.from_dict(layout.postprocess.spec if layout.postprocess else {}, layout.labels))
    return prepare(spec, list(layout.model_inputs), list(layout.model_outputs), manifest.source)


def _image_input(pre: Preprocess, model_inputs: list[TensorSpec], taken: list[str]) -> TensorSpec:
    names = [s.name for s in model_inputs]
    if pre.input is not None:
        if pre.input not in names:
            raise OptionError("--preprocess names an input the model does not have", value=pre.input,
                              expected="one of " + ", ".join(repr(n) for n in names), fix="use one of the model's inputs")
        if pre.input in taken:
            raise OptionError("two --preprocess specs feed the same input", value=pre.input, fix="give each input one")
        return next(s for s in model_inputs if s.name == pre.input)
    images = [s for s in model_inputs if len(s.shape) == 4 and s.name not in taken]
    if len(images) != 1:
        raise OptionError("--preprocess cannot tell which input takes the frames", value=", ".join(names),
                          fix="name it: --preprocess 'INPUT: frame=480x640 ...'")
    return images[0]


def _detect(spec: PipelineSpec, pres: list[_Pre], stages: list[PreStage], model_inputs: list[TensorSpec],
            model_outputs: list[TensorSpec], details: Mapping[str, Any]) -> tuple[PostStage, list[TensorSpec], Any, bytes]:
    from ..pipeline import detect

    post = spec.postprocess
    assert post.detect is not None
    heads = details.get("heads")
    if len(pres) > 1:
        raise OptionError("a detector's boxes map back to one frame, and --preprocess gives several", value=len(pres),
                          fix="pre-process one image input")
    if stages:
        geometry = detect.FrameGeometry(**stages[0].geometry)
    else:  # boxes in the model input's own pixels
        images = [s for s in model_inputs if len(s.shape) == 4]
        if len(images) != 1:
            raise OptionError("a detector's post-processing needs one image input to place its boxes",
                              value=", ".join(s.name for s in model_inputs),
                              fix="add --preprocess 'INPUT: frame=HEIGHTxWIDTH' for the image input")
        image = preprocess.ModelImage.of(images[0], None)
        geometry = detect.FrameGeometry.identity(image.height, image.width)
    spec_ = post.detect
    detect.check_fits(spec_, model_outputs, heads)
    graph = detect.build_graph(spec_, model_outputs, heads, geometry)
    names = [o.name for o in graph.graph.output]
    outputs = detect.output_specs(spec_, model_outputs, heads)
    if post.labels:
        classes = detect.class_count(spec_, model_outputs, heads)
        if len(post.labels) != classes:
            raise OptionError(f"the labels file has {len(post.labels)} names for {classes} classes",
                              value=len(post.labels), expected=f"{classes} lines, one per class",
                              fix="use the labels file that came with the model (one line per class, in class order)")
        outputs.append(TensorSpec("labels", "str", outputs[2].shape))
    used = [o.name for o in graph.graph.input]
    stage = PostStage(POST_FILE, tuple(used), tuple(names), (), post.to_dict())

    def post_numpy(model_out: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = detect.decode_numpy(spec_, {n: model_out[n] for n in used}, heads, geometry)
        if post.labels:
            done["labels"] = np.array(list(post.labels) + [""], dtype=object)[done["classes"]]
        return done

    return stage, outputs, post_numpy, to_bytes(graph)


def check(pipe: Pipeline, run_model: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]],
          frames: list[dict[str, np.ndarray]], tolerance: float) -> dict[str, Any]:
    """Each stage graph against its NumPy steps on the same input: the pre-processing graphs on ``frames``,
    the post-processing graph on the chosen candidate's outputs for the NumPy-pre-processed frames (the
    inputs the accuracy gate judged it on). Raises :class:`AccuracyCheckError` naming what differs.

    An integer model input may differ by one step where NumPy's exact value is a tie (.5): float32 (the
    graph) and float64 (NumPy) round those apart (:func:`preprocess.integer_input_agrees`)."""
    runner = pipe.runner(run_model)
    worst: dict[str, float] = {}
    for frame in frames:
        got_feed, want_feed = runner.preprocess(frame), pipe.to_model_feed(frame)
        for p in pipe.pre:
            name = p.image.name
            if p.image.dtype in ("uint8", "int8"):
                same = preprocess.integer_input_agrees(p.spec, p.image, frame[p.frame.name], got_feed[name])
                error = 0.0 if same else float("inf")
            else:
                error = compare(name, got_feed[name], want_feed[name]).max_relative_error
            worst[f"pre:{name}"] = max(worst.get(f"pre:{name}", 0.0), error)
        model_out = run_model(want_feed)
        got, want = runner.postprocess(model_out), pipe.post_numpy(model_out)
        for spec in pipe.outputs:
            if spec.name not in pipe.layout.postprocess_outputs():
                continue
            error = _difference(spec.name, got, want, model_out, pipe, tolerance)
            worst[spec.name] = max(worst.get(spec.name, 0.0), error)
        for spec in pipe.outputs:  # what the manifest promises (the stages' outputs, whatever fed them)
            value = got[spec.name]
            if value.dtype != (np.dtype(object) if spec.dtype == "str" else np.dtype(spec.dtype)) or \
                    len(value.shape) != len(spec.shape):
                raise AccuracyCheckError(f"the package's pipeline gives output {spec.name!r} as {value.dtype}"
                                         f"{list(value.shape)}", value=spec.name, expected=f"{spec.dtype}{spec.shape_text()}",
                                         fix="report it to us with the model and the --preprocess/--postprocess options")
    bad = {k: v for k, v in worst.items() if v > tolerance}
    if bad:
        name = next(iter(bad))
        raise AccuracyCheckError(f"the package's {'pre' if name.startswith('pre:') else 'post'}-processing graph differs "
                                 f"from the same steps done in NumPy on {name.removeprefix('pre:')!r}",
                                 value=f"{bad[name]:.2e}", expected=f"<= {tolerance:g}",
                                 fix="report it to us with the model and the --preprocess/--postprocess options")
    return {"frames": sum(next(iter(f.values())).shape[0] for f in frames),
            "max_relative_error": {k: float(f"{v:.3g}") for k, v in worst.items()},
            "compared_with": "each stage graph against the same steps in NumPy, on the same input"}


def _difference(name: str, got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray],
                model_out: Mapping[str, np.ndarray], pipe: Pipeline, tolerance: float) -> float:
    """How far one package output is from the NumPy steps' (relative; inf for a mismatch that is not a
    matter of degree). Top-k classes may swap where the scores tie; names must be those of the classes."""
    post = pipe.spec.postprocess
    layout = pipe.layout
    if name == layout.labels_to and layout.labels_from is not None:
        named = np.array(list(layout.labels) + [""], dtype=object)[got[layout.labels_from]]
        return 0.0 if np.array_equal(got[name], named) else float("inf")
    if name == "classes" and post.detect is None and post.topk is not None and layout.postprocess is not None:
        scores_name = layout.postprocess.inputs[0]
        reference = classify.apply_numpy(replace(post, topk=None, labels=()), _spec(pipe, scores_name),
                                         model_out[scores_name])["probabilities"]
        return 0.0 if classify.classes_agree(reference, got[name], max(tolerance, 1e-6)) else float("inf")
    return compare(name, got[name], want[name]).max_relative_error


def _spec(pipe: Pipeline, name: str) -> TensorSpec:
    return next(s for s in pipe.layout.model_outputs if s.name == name)
