"""A classifier's post-processing: softmax and/or top-k over one scores output, as an ONNX graph the package
carries, and the same in NumPy. The scores output is read as ``N x C`` (a ``N x 1 x 1 x C`` head is
flattened); every other model output passes through unchanged. Quantized (uint8/int8) scores take
top-k as they are (the order is the dequantized one); ties keep the lower class first, as NumPy's stable
sort does.

Outputs: ``probabilities`` (softmax alone), or ``scores`` (``N x K`` float32, descending) and ``classes``
(``N x K`` int64) with top-k; class names are added by the runtime from the manifest's labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import OptionError
from ..tensors import TensorSpec
from ._onnx import dim, stage_model
from .spec import Postprocess

OPSET = 17
_SCORE_TYPES = {"float32": "FLOAT", "float16": "FLOAT16", "float64": "DOUBLE", "uint8": "UINT8", "int8": "INT8"}


def scores_output(post: Postprocess, outputs: list[TensorSpec]) -> TensorSpec:
    """The output the steps apply to, checked to be a float ``N x C`` (or ``N x 1 x 1 x C``) tensor."""
    names = [o.name for o in outputs]
    if post.output is not None and post.output not in names:
        raise OptionError("--postprocess output= names no model output", value=post.output,
                          expected="one of " + ", ".join(repr(n) for n in names), fix="use one of the model's outputs")
    spec = next(o for o in outputs if o.name == (post.output or names[0]))
    if spec.dtype not in _SCORE_TYPES:
        raise OptionError(f"--postprocess softmax/topk needs class scores, and output {spec.name!r} is {spec.dtype}",
                          value=spec.dtype, fix="pick the scores output with --postprocess output=NAME")
    if post.softmax and not spec.dtype.startswith("float"):
        raise OptionError(f"--postprocess softmax on output {spec.name!r} of quantized {spec.dtype} scores", value="softmax",
                          fix="use topk alone (quantized scores keep their order), or compile a float model")
    if len(spec.shape) < 2 or any(d != 1 for d in spec.shape[1:-1]):
        raise OptionError(f"--postprocess softmax/topk needs an N x C scores output, and {spec.name!r} is "
                          f"{spec.shape_text()}", value=spec.shape_text(),
                          fix="pick the scores output with --postprocess output=NAME, or decode it in the application")
    return spec


def class_count(spec: TensorSpec) -> int:
    classes = spec.shape[-1]
    if not (isinstance(classes, int) and classes > 0):
        raise OptionError(f"the number of classes of output {spec.name!r} is not fixed", value=spec.shape_text(),
                          fix="compile with --input shapes that fix it")
    return classes


def check_fits(post: Postprocess, outputs: list[TensorSpec]) -> TensorSpec:
    spec = scores_output(post, outputs)
    classes = class_count(spec)
    if post.topk is not None and post.topk > classes:
        raise OptionError(f"--postprocess topk={post.topk} asks for more classes than output {spec.name!r} has",
                          value=post.topk, expected=f"at most {classes}", fix=f"pass topk={min(5, classes)}")
    if post.labels and len(post.labels) != classes:
        raise OptionError(f"the labels file has {len(post.labels)} names for {classes} classes", value=len(post.labels),
                          expected=f"{classes} lines, one per class of output {spec.name!r}",
                          fix="use the labels file that came with the model (one line per class, in class order)")
    return spec


def output_specs(post: Postprocess, spec: TensorSpec) -> list[TensorSpec]:
    batch = spec.shape[0]
    if post.topk is None:
        return [TensorSpec("probabilities", "float32", (batch, class_count(spec)))]
    specs = [TensorSpec("scores", "float32", (batch, post.topk)), TensorSpec("classes", "int64", (batch, post.topk))]
    return specs + ([TensorSpec("labels", "str", (batch, post.topk))] if post.labels else [])


def build_graph(post: Postprocess, spec: TensorSpec) -> Any:
    """Input: the scores output (its own name); outputs as :func:`output_specs` says, without ``labels``."""
    from onnx import TensorProto, helper, numpy_helper

    classes = class_count(spec)
    elem = getattr(TensorProto, _SCORE_TYPES[spec.dtype])
    nodes = [helper.make_node("Reshape", [spec.name, "flat_shape"], ["flat"])]
    inits = [numpy_helper.from_array(np.array([-1, classes], np.int64), "flat_shape")]
    x = "flat"
    if spec.dtype != "float32":
        nodes.append(helper.make_node("Cast", [x], ["flat32"], to=TensorProto.FLOAT))
        x = "flat32"
    outs = output_specs(post, spec)
    if post.softmax:
        nodes.append(helper.make_node("Softmax", [x], ["probabilities" if post.topk is None else "soft"], axis=-1))
        x = "probabilities" if post.topk is None else "soft"
    if post.topk is not None:
        inits.append(numpy_helper.from_array(np.array([post.topk], np.int64), "k"))
        nodes.append(helper.make_node("TopK", [x, "k"], ["scores", "classes"], axis=-1, largest=1, sorted=1))
    elif not post.softmax:
        nodes.append(helper.make_node("Identity", [x], ["probabilities"]))
    graph = helper.make_graph(
        nodes, "edgemill_classify", [helper.make_tensor_value_info(spec.name, elem, [dim(d) for d in spec.shape])],
        [helper.make_tensor_value_info(o.name, TensorProto.FLOAT if o.dtype == "float32" else TensorProto.INT64,
                                       [dim(d) for d in o.shape]) for o in outs if o.dtype != "str"], inits)
    return stage_model(graph, OPSET)


def apply_numpy(post: Postprocess, spec: TensorSpec, scores: np.ndarray) -> dict[str, np.ndarray]:
    """The same steps in NumPy, with class names when the spec has labels."""
    x = scores.reshape(-1, class_count(spec)).astype(np.float64)
    if post.softmax:
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        x = e / e.sum(axis=-1, keepdims=True)
    if post.topk is None:
        return {"probabilities": x.astype(np.float32)}
    classes = np.argsort(-x, axis=-1, kind="stable")[:, :post.topk]
    out = {"scores": np.take_along_axis(x, classes, axis=-1).astype(np.float32), "classes": classes.astype(np.int64)}
    if post.labels:
        out["labels"] = np.array(post.labels, dtype=object)[classes]
    return out


def classes_agree(reference: np.ndarray, got_classes: np.ndarray, tolerance: float) -> bool:
    """Whether a top-k class list agrees with the reference's scores (``N x C``, after the same softmax):
    the class at each rank must have the reference's score for that rank, within ``tolerance`` of the row's
    largest score, so two classes the reference cannot tell apart may come in either order."""
    rows = reference.reshape(len(got_classes), -1).astype(np.float64)
    k = got_classes.shape[-1]
    want = -np.sort(-rows, axis=-1)[:, :k]
    got = np.take_along_axis(rows, got_classes.astype(np.int64), axis=-1)
    scale = np.maximum(np.abs(rows).max(axis=-1, keepdims=True), 1e-30)
    unique = all(len(set(row.tolist())) == k for row in got_classes)
    return unique and bool(np.all(np.abs(got - want) <= tolerance * scale))
