"""Accelerator partitioning (DESIGN.md): assign each node to the target's accelerator or the CPU,
merge the accelerator nodes into as few subgraphs as possible, and say why each CPU node stayed.

Assignment comes from the accelerator's operator table (:mod:`.support`) and its constraints (static
shapes, data types); where the vendor library is installed and the device is present, its own
capability query decides instead (:func:`_openvino_query`). Subgraphs are the connected groups of
accelerator nodes; a group that would need data to leave the accelerator and come back (a cycle
through the CPU) is cut at topological boundaries, so every subgraph runs start to finish on the
device.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from typing import Any

import onnx

from ...targets import Target
from ...tensors import ONNX_ELEM_TO_DTYPE
from .support import Support, support_for

FORMAT = "edgemill.partition/1"


def _tensor_types(model: onnx.ModelProto) -> dict[str, tuple[str, bool]]:
    """tensor name -> (dtype, shape fully static), from shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference gaps only make the table answer more conservative
        inferred = model
    graph = inferred.graph
    types: dict[str, tuple[str, bool]] = {}
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        tt = v.type.tensor_type
        dims = tt.shape.dim if tt.HasField("shape") else []
        static = tt.HasField("shape") and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims)
        types[v.name] = (ONNX_ELEM_TO_DTYPE.get(tt.elem_type, str(tt.elem_type)), static)
    for init in graph.initializer:
        types[init.name] = (ONNX_ELEM_TO_DTYPE.get(init.data_type, str(init.data_type)), True)
    return types


def _cpu_reason(node: onnx.NodeProto, support: Support, types: dict[str, tuple[str, bool]]) -> str | None:
    if node.domain not in ("", "ai.onnx"):
        return f"operator {node.domain}:{node.op_type} is not a standard ONNX operator"
    if node.op_type not in support.ops:
        return f"{node.op_type} is not in the {support.accelerator} operator table"
    for name in [*node.input, *node.output]:
        if not name or name not in types:
            continue
        dtype, static = types[name]
        if dtype not in support.dtypes:
            return f"tensor {name!r} is {dtype}, which {support.accelerator} does not compute"
        if support.static_shapes and not static:
            return (f"tensor {name!r} has a dynamic shape and {support.accelerator} needs static shapes "
                    "(fix the input shapes with --input NAME:SHAPE)")
    return None


def _openvino_query(model: onnx.ModelProto, accelerator: str) -> tuple[dict[str, bool] | None, str]:
    """node name -> runs on the device, from OpenVINO's own query_model, when the device is present."""
    device = {"npu": "NPU", "gpu": "GPU"}.get(accelerator)
    if device is None:
        return None, "no capability query for this accelerator here"
    try:
        import openvino as ov
    except ImportError:
        return None, "openvino is not installed: the operator table decides"
    core = ov.Core()
    if device not in core.available_devices:
        return None, f"OpenVINO {device} device not present on this machine: the operator table decides"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.onnx")
        onnx.save(model, path)
        supported = core.query_model(core.read_model(path), device)
    return {n.name: supported.get(n.name) == device for n in model.graph.node if n.name in supported}, \
        f"OpenVINO query_model on {device}"


def partition(model: onnx.ModelProto, target: Target) -> dict[str, Any] | None:
    """The partition of ``model`` for ``target``, or None when the target has no accelerator."""
    support = support_for(target.accelerators)
    if support is None:
        return None
    nodes = list(model.graph.node)
    names = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(nodes)]
    types = _tensor_types(model)
    queried, query_note = _openvino_query(model, support.accelerator)
    on_accel: list[bool] = []
    reasons: dict[int, str] = {}
    for i, node in enumerate(nodes):
        if queried is not None and names[i] in queried:
            ok = queried[names[i]]
            if not ok:
                reasons[i] = f"{support.accelerator} capability query: not supported"
        else:
            reason = _cpu_reason(node, support, types)
            ok = reason is None
            if reason:
                reasons[i] = reason
        on_accel.append(ok)
    groups = _group(nodes, on_accel)
    subgraphs = []
    for g, members in enumerate(groups):
        ops = Counter(nodes[i].op_type for i in members)
        subgraphs.append({"id": g, "device": support.accelerator, "provider": support.provider,
                          "node_count": len(members), "nodes": [names[i] for i in members],
                          "ops": dict(sorted(ops.items()))})
    cpu = [{"node": names[i], "op": nodes[i].op_type, "reason": reasons[i]} for i in range(len(nodes)) if i in reasons]
    total = len(nodes)
    accelerated = sum(on_accel)
    return {
        "format": FORMAT,
        "target": target.name,
        "accelerator": support.accelerator,
        "provider": support.provider,
        "decided_by": query_note if queried is not None else f"operator table: {support.source}",
        "note": query_note,
        "nodes": total,
        "on_accelerator": accelerated,
        "on_cpu": total - accelerated,
        "subgraphs": subgraphs,
        "cpu_nodes": cpu,
        "summary": (f"{accelerated}/{total} nodes on {support.accelerator} in {len(subgraphs)} subgraph(s), "
                    f"{total - accelerated} on the CPU"),
    }


def _group(nodes: list[onnx.NodeProto], on_accel: list[bool]) -> list[list[int]]:
    """Accelerator nodes in as few subgraphs as possible, none of which needs a CPU round trip."""
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    parent = list(range(len(nodes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    edges = [(producer[x], j) for j, n in enumerate(nodes) for x in n.input if x in producer]
    for a, b in edges:
        if on_accel[a] and on_accel[b]:
            parent[find(a)] = find(b)
    groups: dict[int, list[int]] = {}
    for i in range(len(nodes)):
        if on_accel[i]:
            groups.setdefault(find(i), []).append(i)
    if _acyclic(len(nodes), edges, {i: root for root, members in groups.items() for i in members}):
        return sorted(groups.values(), key=lambda m: m[0])
    # Some group would leave the device and come back: cut into runs of consecutive accelerator nodes in
    # topological order (the graph's node order is topological), which can never form a cycle.
    runs: list[list[int]] = []
    for i in range(len(nodes)):
        if on_accel[i]:
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
    return runs


def _acyclic(count: int, edges: list[tuple[int, int]], group_of: dict[int, int]) -> bool:
    """Whether contracting each group to one vertex leaves a DAG."""
    def vertex(i: int) -> tuple[str, int]:
        return ("g", group_of[i]) if i in group_of else ("n", i)

    succ: dict[tuple[str, int], set[tuple[str, int]]] = {}
    indeg: Counter[tuple[str, int]] = Counter()
    vertices = {vertex(i) for i in range(count)}
    for a, b in edges:
        va, vb = vertex(a), vertex(b)
        if va != vb and vb not in succ.setdefault(va, set()):
            succ[va].add(vb)
            indeg[vb] += 1
    ready = [v for v in vertices if indeg[v] == 0]
    seen = 0
    while ready:
        v = ready.pop()
        seen += 1
        for w in succ.get(v, ()):
            indeg[w] -= 1
            if indeg[w] == 0:
                ready.append(w)
    return seen == len(vertices)
