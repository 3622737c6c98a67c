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


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a control-flow node (If, Loop, Scan) carries in its attributes."""
    out: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            out.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            out.extend(attr.graphs)
    return out


def has_control_flow(model: onnx.ModelProto) -> bool:
    return any(subgraphs(node) for node in model.graph.node)


def outer_references(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph uses without defining them: tensors of the enclosing graphs it reads implicitly."""
    defined = {v.name for v in graph.input} | {i.name for i in graph.initializer} | {""}
    used: set[str] = set()
    for node in graph.node:
        used.update(x for x in node.input if x not in defined)
        for sub in subgraphs(node):
            used.update(x for x in outer_references(sub) if x not in defined)
        defined.update(node.output)
    used.update(v.name for v in graph.output if v.name not in defined)
    return used


def all_inputs(node: onnx.NodeProto) -> list[str]:
    """A node's explicit inputs and, for control flow, what its subgraphs read from the outer scope."""
    names = list(node.input)
    for sub in subgraphs(node):
        names.extend(sorted(outer_references(sub) - set(names)))
    return names


def rename_io(model: onnx.ModelProto, names: dict[str, str]) -> None:
    """Rename graph inputs/outputs, and every reference to them (in subgraphs too), in place."""
    if not names:
        return
    g = model.graph
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.name in names:
            v.name = names[v.name]

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            node.input[:] = [names.get(x, x) for x in node.input]
            node.output[:] = [names.get(x, x) for x in node.output]
            for sub in subgraphs(node):
                walk(sub)

    walk(g)


def ensure_default_opset(model: onnx.ModelProto, version: int = 15) -> None:
    """A model of ai.onnx.ml operators only may import no standard opset; nodes we add (Identity,
    Reshape) need one."""
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("", version))


def drop_initializer_inputs(model: onnx.ModelProto) -> int:
    """Old models (IR version 3) list every weight as a graph input too. Nobody feeds them, and after
    onnxruntime's optimizer folds such a weight away its input is left dangling, so the optimized graph
    demands inputs no caller has. Keep the weights as initializers only (IR 4 and later allow it)."""
    weights = {init.name for init in model.graph.initializer}
    keep = [v for v in model.graph.input if v.name not in weights]
    dropped = len(model.graph.input) - len(keep)
    if dropped:
        del model.graph.input[:]
        model.graph.input.extend(keep)
        model.ir_version = max(model.ir_version, 4)
    return dropped


def clear_inferred_shapes(model: onnx.ModelProto) -> None:
    """Forget inferred intermediate shapes and the non-static dims of the outputs, after a rewrite made them
    stale (new input shapes, a resolved branch); shape inference derives them again."""
    del model.graph.value_info[:]
    for out in model.graph.output:
        for d in out.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.Clear()
