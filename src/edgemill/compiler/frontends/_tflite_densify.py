"""Sparse TFLite weights made dense, so tf2onnx can convert the model.

TFLite stores mostly-zero weights in a sparse format that a ``DENSIFY`` operator expands when the model
first runs (MediaPipe's pose and face detectors ship this way). tf2onnx reads such a buffer as if it
were dense and fails ("cannot reshape array of size 77 into shape (8,1,1,32)"). The dense values are
what the interpreter computes itself: run it once, read every Densify output, store it as a constant
in its place and drop the op. The ONNX path then competes with LiteRT like for any other model; the
gate still compares with the interpreter on the original file.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np


def _densify_ops(model: Any) -> list[Any]:
    from tensorflow.lite.python import schema_py_generated as schema

    densify = schema.BuiltinOperator.DENSIFY
    codes = model.operatorCodes
    return [op for op in model.subgraphs[0].operators
            if max(codes[op.opcodeIndex].builtinCode, codes[op.opcodeIndex].deprecatedBuiltinCode) == densify]


def densified(data: bytes) -> bytes | None:
    """``data`` with every Densify replaced by its dense constant, or None when there is nothing to do or
    TensorFlow's flatbuffer tools are not installed."""
    if importlib.util.find_spec("tensorflow") is None:
        return None
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    ops = _densify_ops(model)
    if not ops:
        return None
    try:
        values = _dense_values(data, [op.outputs[0] for op in ops])
    except Exception:  # noqa: BLE001 - the interpreter's own refusal: the file stays as it is (LiteRT only)
        return None
    graph = model.subgraphs[0]
    for op in ops:
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(values[op.outputs[0]].tobytes(), dtype=np.uint8)
        model.buffers.append(buffer)
        graph.tensors[op.outputs[0]].buffer = len(model.buffers) - 1
        sparse = graph.tensors[op.inputs[0]]  # now read by nothing; tf2onnx would still try to reshape it
        sparse.buffer, sparse.sparsity = 0, None
    graph.operators = [op for op in graph.operators if op not in ops]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _dense_values(data: bytes, indices: list[int]) -> dict[int, np.ndarray]:
    """Run the interpreter once on zeros (the weights do not depend on the input) and read the dense
    tensors the Densify ops produced."""
    from .tflite import _interpreter_class

    cls = _interpreter_class()
    resolver = __import__(cls.__module__, fromlist=["OpResolverType"]).OpResolverType
    # Without XNNPACK: the delegate densifies inside its own kernels and leaves the Densify outputs unwritten.
    interpreter = cls(model_content=data, num_threads=1, experimental_preserve_all_tensors=True,
                      experimental_op_resolver_type=resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    for detail in interpreter.get_input_details():
        shape = [d if d > 0 else 1 for d in detail.get("shape_signature", detail["shape"])]
        interpreter.resize_tensor_input(detail["index"], shape, strict=False)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()
    return {i: np.array(interpreter.get_tensor(i), copy=True) for i in indices}
