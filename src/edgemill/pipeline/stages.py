"""Run a package's pipeline around its model, on the device: each pre-processing graph on its input, the
model on its backend, the post-processing graph, then class names.

The stage graphs run on onnxruntime (the runtime's own dependency) whatever backend runs the model, so a
package computes the same pre- and post-processing on every backend. What the manifest's ``pipeline``
holds is described in docs/pipeline.md; :class:`PipelineLayout` reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import BackendError
from ..tensors import TensorSpec

Run = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class PreStage:
    input: str  # the package input (a frame)
    model_input: str
    file: str
    spec: dict[str, Any]
    geometry: dict[str, float]


@dataclass(frozen=True)
class PostStage:
    file: str
    inputs: tuple[str, ...]  # model outputs the graph reads
    outputs: tuple[str, ...]  # what the graph produces
    passthrough: tuple[str, ...]  # model outputs returned as they are
    spec: dict[str, Any]


@dataclass(frozen=True)
class PipelineLayout:
    model_inputs: tuple[TensorSpec, ...]
    model_outputs: tuple[TensorSpec, ...]
    preprocess: tuple[PreStage, ...]
    postprocess: PostStage | None
    labels: tuple[str, ...]
    labels_from: str | None  # the int output whose values index ``labels``
    labels_to: str | None  # the str output they become
    fused: bool = False  # the stage graphs are merged into the model file (one session runs them all)

    def to_dict(self) -> dict[str, Any]:
        return ({"fused": True} if self.fused else {}) | {
            "model": {"inputs": [s.to_dict() for s in self.model_inputs],
                      "outputs": [s.to_dict() for s in self.model_outputs]},
            "preprocess": [{"input": p.input, "model_input": p.model_input, "file": p.file, "spec": p.spec,
                            "geometry": p.geometry} for p in self.preprocess],
            "postprocess": None if self.postprocess is None else {
                "file": self.postprocess.file, "inputs": list(self.postprocess.inputs),
                "outputs": list(self.postprocess.outputs), "passthrough": list(self.postprocess.passthrough),
                "spec": self.postprocess.spec},
            "labels": list(self.labels), "labels_from": self.labels_from, "labels_to": self.labels_to,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineLayout:
        post = data.get("postprocess")
        return cls(
            model_inputs=tuple(TensorSpec.from_dict(s) for s in data["model"]["inputs"]),
            model_outputs=tuple(TensorSpec.from_dict(s) for s in data["model"]["outputs"]),
            preprocess=tuple(PreStage(str(p["input"]), str(p["model_input"]), str(p["file"]), dict(p["spec"]),
                                      dict(p.get("geometry", {}))) for p in data.get("preprocess", [])),
            postprocess=None if not post else PostStage(str(post["file"]), tuple(post["inputs"]), tuple(post["outputs"]),
                                                        tuple(post.get("passthrough", [])), dict(post.get("spec", {}))),
            labels=tuple(str(x) for x in data.get("labels", [])),
            labels_from=data.get("labels_from"), labels_to=data.get("labels_to"), fused=bool(data.get("fused", False)),
        )

    def postprocess_outputs(self) -> set[str]:
        """The package outputs the post-processing makes (the graph's and the class names)."""
        made = set(self.postprocess.outputs) if self.postprocess else set()
        return made | ({self.labels_to} if self.labels_to else set())

    @property
    def files(self) -> list[str]:
        """The stage graphs the package carries (none when they are merged into the model)."""
        return [] if self.fused else self.stage_files

    @property
    def stage_files(self) -> list[str]:
        """The stage graphs' names, in order (pre-processing, then post-processing), fused or not."""
        return [p.file for p in self.preprocess] + ([self.postprocess.file] if self.postprocess else [])

    def fused_outputs(self) -> list[str]:
        """What a fused model outputs: the post-processing's outputs and the model outputs passed through."""
        if self.postprocess is None:
            return [s.name for s in self.model_outputs]
        return list(self.postprocess.outputs) + list(self.postprocess.passthrough)


def _session(data: bytes, what: str, threads: int | None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or 1
    so.inter_op_num_threads = 1
    # No spinning: a stage's idle workers would otherwise busy-wait through the model's own run and the
    # next stage (measured: a 224x224 CNN took twice as long behind spinning pre-processing threads).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise BackendError(f"onnxruntime cannot load the package's {what} graph", value=str(exc).splitlines()[0],
                           fix="recompile the package with this edgemill and onnxruntime version") from None
    return getattr(session, "_sess", session)  # the C++ run: names are checked by the runtime already


class PipelineRunner:
    """Wraps the model's own call (model inputs -> model outputs by name) with the stages."""

    def __init__(self, layout: PipelineLayout, files: Mapping[str, bytes], run_model: Run, threads: int | None,
                 output_names: list[str]) -> None:
        self.layout = layout
        self._run_model = run_model
        if layout.fused:  # the model runs the stages itself: only the class names are left to add
            layout = replace(layout, preprocess=(), postprocess=None)
        self._pre = [(p.input, p.model_input, _session(files[p.file], f"pre-processing ({p.input})", threads))
                     for p in layout.preprocess]
        post = layout.postprocess
        self._post = None if post is None else (_session(files[post.file], "post-processing", threads), list(post.inputs),
                                                list(post.outputs), list(post.passthrough))
        self._labels = np.array(list(layout.labels) + [""], dtype=object)  # index -1 (padding) names nothing
        self._output_names = output_names

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.postprocess(self._run_model(self.preprocess(feed)))

    def preprocess(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Package inputs -> model inputs."""
        model_feed = dict(feed)
        for name, model_input, session in self._pre:
            frame = model_feed.pop(name)
            model_feed[model_input] = _call(session, ["model_input"], {name: frame}, "pre-processing")[0]
        return model_feed

    def postprocess(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Model outputs -> package outputs, with class names."""
        if self._post is not None:
            session, inputs, produced, passthrough = self._post
            results = _call(session, produced, {n: outputs[n] for n in inputs}, "post-processing")
            outputs = {**{n: outputs[n] for n in passthrough}, **dict(zip(produced, results))}
        else:
            outputs = dict(outputs)
        layout = self.layout
        if layout.labels_from is not None and layout.labels_to is not None:
            outputs[layout.labels_to] = self._labels[outputs[layout.labels_from]]  # type: ignore[index]
        return {name: outputs[name] for name in self._output_names}


def _call(session: Any, names: list[str], feed: dict[str, np.ndarray], what: str) -> list[np.ndarray]:
    try:
        return session.run(names, feed, None)  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001
        raise BackendError(f"the package's {what} failed", value=str(exc).splitlines()[0][:300],
                           fix="check the input against the shape and dtype `edgemill inspect` shows") from None
