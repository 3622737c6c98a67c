"""Fix input shapes the user gave with ``--input NAME:SHAPE[:DTYPE]``, then re-infer shapes.

Static shapes let onnxruntime plan memory once and let later passes (quantization, TVM) specialize.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import onnx

from ...errors import OptionError
from ..checks import check_model
from ..context import CompileContext
from ..graph import clear_inferred_shapes, graph_inputs, value_spec
from ..names import resolve
from . import register


def _applies(ctx: CompileContext) -> bool:
    return any(o.fixes_shape for o in ctx.options.inputs)


@register("static_shapes", "fix input shapes given with --input", order=10, applies=_applies)
def run(model: onnx.ModelProto, ctx: CompileContext, record: dict[str, Any]) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inputs = {v.name: v for v in graph_inputs(model)}
    changed = []
    for override in ctx.options.inputs:
        if override.shape is None:
            continue  # only a value (NAME=VALUE): the model's own shape stays
        resolved = resolve(override.name, inputs, ctx.source.details.get("names"))
        if resolved is not None:
            override = replace(override, name=resolved)  # TensorFlow's "image:0" is input "image"
        if override.name not in inputs:
            raise OptionError("--input names an input the model does not have", value=override.name,
                              expected="one of " + ", ".join(repr(n) for n in inputs),
                              fix="use `edgemill compile --explain` or Netron to see the input names")
        value = inputs[override.name]
        spec = value_spec(value)
        if override.dtype is not None and override.dtype != spec.dtype:
            raise OptionError(f"--input gives input {override.name!r} a different dtype", value=override.dtype,
                              expected=spec.dtype, fix=f"write --input {override.name}:SHAPE:{spec.dtype} or leave DTYPE out")
        rank_known = value.type.tensor_type.HasField("shape")
        if rank_known and len(override.shape) != len(spec.shape):
            raise OptionError(f"--input gives input {override.name!r} a different rank", value=list(override.shape),
                              expected=(f"{len(spec.shape)} dimensions {spec.shape_text()}" if spec.shape
                                        else "a 0-d (scalar) input"),
                              fix=(f"write --input {override.name}:scalar" if not spec.shape
                                   else "give one size per dimension"))
        for axis, (new, old) in enumerate(zip(override.shape, spec.shape)):
            if isinstance(old, int) and old >= 0 and isinstance(new, int) and new >= 0 and new != old:
                raise OptionError(f"--input changes a fixed dimension of {override.name!r}", value=new,
                                  expected=f"{old} at axis {axis} (the model fixes it)",
                                  fix=f"keep axis {axis} at {old}")
        dims = value.type.tensor_type.shape.dim
        while len(dims) < len(override.shape):
            dims.add()
        for d, new in zip(dims, override.shape):
            if isinstance(new, int) and new >= 0:
                d.dim_value = new
            elif isinstance(new, str):
                d.dim_param = new
            else:
                d.Clear()
        if not override.shape:
            value.type.tensor_type.shape.SetInParent()  # a known 0-d shape, not an unknown rank
        changed.append(f"{override.name}{list(override.shape)}")
    clear_inferred_shapes(model)  # inferred for the old input shapes
    model = check_model(model, "the model with fixed input shapes", ctx.warnings)
    record["summary"] = "fixed " + ", ".join(changed)
    return model

