"""Specialize the graph for inputs bound with ``--input NAME=VALUE`` (a sample rate, a mode flag).

The value replaces the input inside the graph, every node it decides is computed now, and an ``If``
whose condition it decides is replaced by the branch taken. Real models select behaviour this way
(Silero VAD picks its 8 kHz or 16 kHz network with ``If(sr == 16000)``); specialized, they lose the
control flow, so every backend and every pass sees a plain graph, and the branch not taken no longer
constrains shape inference.

The package still takes the input under its name, so an application written against the source model
keeps working; its spec carries the bound value and the runtime refuses any other value with an error
that names it (see ``runtime/validate.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...errors import OptionError
from ...tensors import Scalar, numpy_dtype
from ..checks import check_model
from ..context import CompileContext
from ..graph import clear_inferred_shapes, graph_inputs, subgraphs, value_spec
from ..names import resolve
from . import register

MAX_FOLDED_ELEMENTS = 1 << 16  # what a bound value decides is small (conditions, sizes); weights are not folded


def _applies(ctx: CompileContext) -> bool:
    return any(o.binds_value for o in ctx.options.inputs)


@register("bind_inputs", "specialize the graph for inputs bound with --input NAME=VALUE", order=20, applies=_applies)
def run(model: onnx.ModelProto, ctx: CompileContext, record: dict[str, Any]) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inputs = {v.name: v for v in graph_inputs(model)}
    constants: dict[str, np.ndarray] = {}
    bound: list[str] = []
    for override in ctx.options.inputs:
        if override.value is None:
            continue
        name = resolve(override.name, inputs, ctx.source.details.get("names"))
        if name is None:
            continue  # not a graph input: the frontend froze it (checked by the driver)
        constants[name] = bound_array(name, value_spec(inputs[name]), override.value)
        bound.append(f"{name}={override.text().split('=', 1)[1]}")
    folded, inlined = specialize(model.graph, constants, _opset(model))
    _drop_dead_nodes(model.graph)
    clear_inferred_shapes(model)  # inferred through control flow that is gone
    model = check_model(model, "the model specialized for the bound inputs", ctx.warnings)
    record.update(bound=bound, folded_nodes=folded, inlined_branches=inlined,
                  summary=f"bound {', '.join(bound)}: {folded} node(s) computed, {inlined} branch(es) resolved")
    return model


def bound_array(name: str, spec: Any, value: Scalar) -> np.ndarray:
    """The bound value as an array of the input's dtype and shape; only inputs of one element are bound."""
    shape = spec.shape
    if any(not (isinstance(d, int) and d == 1) for d in shape):
        raise OptionError(f"--input {name}=VALUE binds a single value, but input {name!r} holds many",
                          value=spec.shape_text(),
                          expected="a 0-d input or one of shape [1] (a rate, a count, a mode)",
                          fix=f"give real inputs for {name!r} with --validation DATA.npz; bind only inputs that "
                              "select behaviour (if its size is dynamic, fix it: --input NAME:1=VALUE)")
    dtype = numpy_dtype(spec.dtype)
    array = np.full(tuple(int(d) for d in shape), value, dtype=dtype)
    if dtype.kind in "iu" and float(array.reshape(-1)[0]) != float(value):
        raise OptionError(f"input {name!r} is {spec.dtype}, which cannot hold the bound value", value=value,
                          fix=f"bind a value of type {spec.dtype}")
    return array


def _opset(model: onnx.ModelProto) -> list[onnx.OperatorSetIdProto]:
    return list(model.opset_import)


def specialize(graph: onnx.GraphProto, constants: dict[str, np.ndarray], opset: list[onnx.OperatorSetIdProto]
               ) -> tuple[int, int]:
    """Replace the bound inputs by constants, compute what they decide, inline the branches they choose.
    Returns (nodes computed, branches inlined)."""
    renames = {name: f"{name}__bound" for name in constants}
    _rename_uses(graph, renames)
    known = {renames[name]: array for name, array in constants.items()}
    for name, array in known.items():
        graph.initializer.append(numpy_helper.from_array(array, name))
    tainted = set(known)  # values the binding decides
    static = _static_values(graph)
    folded = inlined = 0
    changed = True
    while changed:
        changed = False
        for index, node in enumerate(list(graph.node)):
            if node.op_type == "If" and node.input[0] in tainted and node.input[0] in static:
                _inline_if(graph, index, bool(np.asarray(static[node.input[0]]).reshape(-1)[0]))
                static = _static_values(graph)
                inlined += 1
                changed = True
                break
            if subgraphs(node) or not any(x in tainted for x in node.input):
                continue
            if not all(x == "" or x in static for x in node.input):
                continue
            outputs = _evaluate(node, static, opset)
            if outputs is None:
                continue
            position = list(graph.node).index(node)
            del graph.node[position]
            for out_name, value in zip(node.output, outputs):
                if out_name:
                    graph.initializer.append(numpy_helper.from_array(value, out_name))
                    static[out_name] = value
                    tainted.add(out_name)
            folded += 1
            changed = True
            break
    return folded, inlined


def _static_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and not node.input:
            try:
                values[node.output[0]] = _constant_value(node)
            except (ValueError, TypeError):
                continue
    return values


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    simple = {"value_float": lambda a: np.array(a.f, np.float32), "value_floats": lambda a: np.array(a.floats, np.float32),
              "value_int": lambda a: np.array(a.i, np.int64), "value_ints": lambda a: np.array(a.ints, np.int64)}
    if attr.name in simple:
        return simple[attr.name](attr)
    raise ValueError(attr.name)


def _evaluate(node: onnx.NodeProto, static: dict[str, np.ndarray], opset: list[onnx.OperatorSetIdProto]
              ) -> list[np.ndarray] | None:
    """The node's outputs computed with onnx's reference evaluator, or None when that is not possible or
    not small (a bound value decides conditions and sizes, not weights)."""
    from onnx.reference import ReferenceEvaluator

    feeds = {x: static[x] for x in node.input if x}
    inputs = [helper.make_tensor_value_info(x, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for x, v in feeds.items()]
    outputs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    try:
        results = ReferenceEvaluator(helper.make_model(graph, opset_imports=opset)).run(None, feeds)
    except Exception:  # an operator the evaluator lacks: leave the node to the runtime
        return None
    arrays = [np.asarray(r) for r in results]
    if any(a.size > MAX_FOLDED_ELEMENTS or a.dtype == object for a in arrays):
        return None
    return arrays


def _rename_uses(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Point every use of a name (in this graph and in subgraphs that read it from here) at another."""
    for node in graph.node:
        node.input[:] = [renames.get(x, x) for x in node.input]
        for sub in subgraphs(node):
            local = {v.name for v in sub.input} | {i.name for i in sub.initializer} | {o for n in sub.node for o in n.output}
            _rename_uses(sub, {k: v for k, v in renames.items() if k not in local})
    for out in graph.output:
        if out.name in renames:
            graph.node.append(helper.make_node("Identity", [renames[out.name]], [out.name]))


def _inline_if(graph: onnx.GraphProto, index: int, condition: bool) -> None:
    """Replace the If node at ``index`` by the nodes of the branch ``condition`` selects."""
    node = graph.node[index]
    branch = next(a.g for a in node.attribute if a.name == ("then_branch" if condition else "else_branch"))
    taken = onnx.GraphProto.FromString(branch.SerializeToString())
    outer = _all_names(graph)
    prefix = f"{node.name or 'If'}__taken_"
    clashes = {n for n in _defined_names(taken) if n in outer}
    if clashes:
        _rename_defined(taken, {n: prefix + n for n in clashes})
    new_nodes = list(taken.node)
    for out_value, if_output in zip(taken.output, node.output):
        if if_output:
            new_nodes.append(helper.make_node("Identity", [out_value.name], [if_output]))
    graph.initializer.extend(taken.initializer)
    del graph.node[index]
    for offset, new in enumerate(new_nodes):
        graph.node.insert(index + offset, new)


def _defined_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.initializer} | {v.name for v in graph.input}
    for node in graph.node:
        names.update(o for o in node.output if o)
        for sub in subgraphs(node):
            names |= _defined_names(sub)
    return names


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = _defined_names(graph) | {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
    return names


def _rename_defined(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    for init in graph.initializer:
        init.name = renames.get(init.name, init.name)
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(x, x) for x in node.input]
        node.output[:] = [renames.get(x, x) for x in node.output]
        for sub in subgraphs(node):
            _rename_defined(sub, renames)


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes (and initializers) nothing reads any more: the condition of a resolved If, say."""
    from ..graph import all_inputs

    while True:
        used = {o.name for o in graph.output}
        for node in graph.node:
            used.update(all_inputs(node))
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {o.name for o in graph.output} | {v.name for v in graph.input} | {x for n in graph.node for x in all_inputs(n)}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
