"""Small helpers over ONNX graphs: input/output specs, serialization."""

from __future__ import annotations

import onnx

from ..errors import ModelFormatError
from ..tensors import ONNX_ELEM_TO_DTYPE, Dim, TensorSpec


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: graph inputs that are not initializers (old IR versions list weights as inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def value_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    if value.type.WhichOneof("value") != "tensor_type":
        raise ModelFormatError(
            f"graph value {value.name!r} is not a tensor", value=value.type.WhichOneof("value"),
            expected="dense tensor inputs and outputs", fix="export the model with tensor inputs and outputs",
        )
    tt = value.type.tensor_type
    dtype = ONNX_ELEM_TO_DTYPE.get(tt.elem_type)
    if dtype is None:
        raise ModelFormatError(
            f"graph value {value.name!r} has an element type NumPy cannot represent",
            value=onnx.TensorProto.DataType.Name(tt.elem_type), fix="cast it to a standard type in the model",
        )
    dims: list[Dim] = []
    if tt.HasField("shape"):
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(-1)
    return TensorSpec(name=value.name, dtype=dtype, shape=tuple(dims))


def input_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [value_spec(v) for v in graph_inputs(model)]


def output_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [value_spec(v) for v in model.graph.output]


def to_bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)
