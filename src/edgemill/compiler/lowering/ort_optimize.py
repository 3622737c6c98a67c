"""Graph optimization with onnxruntime's offline optimizer: constant folding, redundant-node and
dead-node removal, operator fusions (Conv+BN, Conv+activation, Gemm+activation, LayerNorm, GELU...).

The optimized graph is saved into the package so the device does no optimization work at load. How
far we go depends on the target: hardware-specific layouts only for this very machine.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import onnx

from ...errors import BackendError
from ...targets import Target, runnable_here
from ..graph import to_bytes


def plan(target: Target, level: str | None = None) -> tuple[str, str]:
    """(level saved into the package, level the runtime applies at load).

    ``level`` is set when the target's default level changed the model's answer and the compile
    stepped down: then the device must not optimize further at load than what passed the gate."""
    if level is not None:
        return level, ("none" if target.name == "host" else level)
    if target.name == "host":
        return "all", "none"  # includes NCHWc layouts for this CPU: nothing left to do at load
    if target.accelerators:
        return "basic", "all"  # keep standard ONNX ops that any execution provider can claim
    return "extended", "all"  # CPU fusions; the device adds its own layout at load


def default_level(target: Target) -> str:
    return plan(target)[0]


def optimize(model: onnx.ModelProto, target: Target, record: dict[str, Any], level: str | None = None
             ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The optimized model and the backend options the runtime must load it with."""
    import onnxruntime as ort

    save_level, load_level = plan(target, level)
    levels = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    before = len(model.graph.node)
    with tempfile.TemporaryDirectory(prefix="edgemill-ort-") as tmp:
        out_path = os.path.join(tmp, "optimized.onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[save_level]
        so.optimized_model_filepath = out_path
        so.intra_op_num_threads = 1
        so.log_severity_level = 4  # failures come back as the exception we report; keep ORT's own lines quiet
        try:
            ort.InferenceSession(to_bytes(model), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError("onnxruntime cannot load the model", value=str(exc).strip().splitlines()[0][:300],
                               fix="check that onnxruntime supports every operator and opset in the model") from None
        optimized = onnx.load(out_path)
    optimized.graph.doc_string = ""
    canonicalize_names(optimized)
    options: dict[str, Any] = {"load_optimization": load_level, "execution_providers": list(target.execution_providers)}
    if save_level == "all":
        options["requires_cpu_features"] = list(target.cpu_features)
    after = len(optimized.graph.node)
    record.update(level=save_level, load_level=load_level, nodes_before=before, nodes_after=after,
                  summary=f"{before} -> {after} nodes (onnxruntime level '{save_level}')")
    if not runnable_here(target):
        record["note"] = f"target {target.name} cannot run here: hardware-specific layouts are left to the device"
    return optimized, options


def canonicalize_names(model: onnx.ModelProto) -> None:
    """Rename what onnxruntime's rewrites named from a process-wide counter (nodes, and the tensors
    and weights they create), so that the same model compiled twice in one process gives the same
    bytes and so the same package id. Graph inputs and outputs keep their names."""
    graph = model.graph
    _sort_nodes_canonically(graph)
    for i, node in enumerate(graph.node):
        node.name = f"{node.op_type}_{i}"
        node.doc_string = ""  # fused nodes carry their source node's (counter-based) name here
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return  # subgraphs may refer to outer tensors by name: leave tensor names alone
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    # Names follow node order (which is deterministic), never the order onnxruntime wrote initializers
    # in, which follows a hash map and varies between runs.
    weights = {init.name for init in graph.initializer} - keep
    renames: dict[str, str] = {}
    for node in graph.node:
        for name in node.input:
            if name in weights and name not in renames:
                renames[name] = f"w{len(renames)}"
        for out in node.output:
            if out not in keep and out not in renames:
                renames[out] = f"t{len(renames)}"
    for name in sorted(weights - set(renames)):
        renames[name] = f"w{len(renames)}"
    for init in graph.initializer:
        init.name = renames.get(init.name, init.name)
    order = {new: i for i, new in enumerate(renames.values())}
    graph.initializer.sort(key=lambda init: order.get(init.name, -1))
    for node in graph.node:
        node.input[:] = [renames.get(x, x) for x in node.input]
        node.output[:] = [renames.get(x, x) for x in node.output]
    for info in graph.value_info:
        info.name = renames.get(info.name, info.name)


def _sort_nodes_canonically(graph: onnx.GraphProto) -> None:
    """A topological order that depends on the graph's structure only. onnxruntime writes parallel
    branches (e.g. YOLO's two heads) in an order that varies between runs."""
    import hashlib

    from onnx import numpy_helper

    from ..graph import all_inputs

    def weight_key(init: onnx.TensorProto) -> str:
        h = hashlib.sha256(numpy_helper.to_array(init).tobytes())
        h.update(repr((list(init.dims), init.data_type)).encode())
        return h.hexdigest()

    weights = {init.name: weight_key(init) for init in graph.initializer}
    inputs = {v.name: i for i, v in enumerate(graph.input)}
    nodes = list(graph.node)
    # A control-flow node also depends on what its subgraphs read from this graph (implicit inputs):
    # placing it before their producer gives a graph onnxruntime refuses to load.
    inputs_of = [all_inputs(node) for node in nodes]
    produced_by = {out: i for i, node in enumerate(nodes) for out in node.output}
    attrs = [b"".join(a.SerializeToString(deterministic=True) for a in node.attribute) for node in nodes]
    placed: dict[int, int] = {}  # old index -> new position
    order: list[int] = []
    waiting = {i: {produced_by[x] for x in inputs_of[i] if x in produced_by} for i in range(len(nodes))}
    ready = {i for i, deps in waiting.items() if not deps}

    def input_key(name: str) -> tuple:  # type: ignore[type-arg]
        if name in produced_by:
            producer = produced_by[name]
            return (0, placed[producer], list(nodes[producer].output).index(name))
        if name in inputs:
            return (1, inputs[name], 0)
        return (2, weights.get(name, name), 0)

    while ready:
        best = min(ready, key=lambda i: ([input_key(x) for x in inputs_of[i]], nodes[i].op_type,
                                         nodes[i].domain, attrs[i]))
        ready.remove(best)
        placed[best] = len(order)
        order.append(best)
        for i, deps in waiting.items():
            if best in deps:
                deps.discard(best)
                if not deps and i not in placed:
                    ready.add(i)
    if len(order) != len(nodes):
        return  # not a DAG as far as we can tell (should not happen): keep onnxruntime's order
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
