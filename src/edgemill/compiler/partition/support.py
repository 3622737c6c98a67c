"""Which ONNX operators each accelerator runs: conservative tables, written from each vendor's
published operator-support lists for its onnxruntime execution provider (or SDK), and the
constraints that apply to every operator on it (static shapes, data types).

A table says "this runs on the accelerator"; an operator missing from it stays on the CPU with the
reason named. Where the vendor library is installed here, :mod:`.query` asks it instead.
"""

from __future__ import annotations

from dataclasses import dataclass

_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip", "Abs", "Neg", "Exp",
                "Log", "Sqrt", "Pow", "Max", "Min", "Erf", "Elu", "HardSigmoid", "HardSwish", "PRelu"}
_SHAPE = {"Reshape", "Flatten", "Transpose", "Concat", "Squeeze", "Unsqueeze", "Slice", "Split", "Identity"}
_NN = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization",
       "Gemm", "MatMul", "Softmax", "Resize", "Pad"}
_QUANT = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"}


@dataclass(frozen=True)
class Support:
    accelerator: str
    provider: str  # the onnxruntime execution provider that claims the nodes on the device
    ops: frozenset[str]
    static_shapes: bool  # needs every tensor's shape known at compile time
    dtypes: frozenset[str]  # tensor element types it computes in
    source: str  # where the table comes from


TABLES: dict[str, Support] = {s.accelerator: s for s in (
    Support("tensorrt", "TensorrtExecutionProvider",
            frozenset(_ELEMENTWISE | _SHAPE | _NN | _QUANT | {
                "ReduceMean", "ReduceMax", "ReduceSum", "LayerNormalization", "InstanceNormalization", "Gather",
                "Cast", "Where", "Equal", "Greater", "Less", "TopK", "ArgMax", "Shape", "Expand", "Tile", "Ceil",
                "Floor", "Reciprocal", "Softplus", "LRN", "Einsum", "NonMaxSuppression", "ScatterND", "CumSum",
                "Range", "ConstantOfShape", "Not", "And", "Or", "GridSample", "Trilu", "Mish", "Gelu"}),
            static_shapes=False, dtypes=frozenset({"float32", "float16", "int32", "int64", "int8", "uint8", "bool"}),
            source="TensorRT 10 ONNX parser operator list (onnx-tensorrt docs/operators.md)"),
    Support("cuda", "CUDAExecutionProvider", frozenset(), static_shapes=False, dtypes=frozenset(),
            source="CUDA EP runs nearly every operator; TensorRT is preferred, CUDA takes what TensorRT leaves"),
    Support("npu", "OpenVINOExecutionProvider",
            frozenset(_ELEMENTWISE | _SHAPE | _NN | _QUANT | {"ReduceMean", "LayerNormalization", "Gather", "Cast",
                                                               "MVN", "Softplus", "Gelu", "Mish"}),
            static_shapes=True, dtypes=frozenset({"float32", "float16", "int8", "uint8", "int32", "int64"}),
            source="OpenVINO NPU plugin supported operations (static shapes only)"),
    Support("gpu", "OpenVINOExecutionProvider",
            frozenset(_ELEMENTWISE | _SHAPE | _NN | _QUANT | {"ReduceMean", "ReduceMax", "ReduceSum",
                                                               "LayerNormalization", "Gather", "Cast", "Where",
                                                               "Equal", "Shape", "Expand", "TopK", "ArgMax", "LRN",
                                                               "Softplus", "Gelu", "Mish", "InstanceNormalization"}),
            static_shapes=False, dtypes=frozenset({"float32", "float16", "int8", "uint8", "int32", "int64", "bool"}),
            source="OpenVINO GPU plugin supported operations"),
    Support("htp", "QNNExecutionProvider",
            frozenset(_ELEMENTWISE | _SHAPE | _NN | _QUANT | {"ReduceMean", "ReduceMax", "LayerNormalization",
                                                               "Gather", "Cast", "ArgMax", "Gelu", "DepthToSpace",
                                                               "SpaceToDepth", "InstanceNormalization"}),
            static_shapes=True, dtypes=frozenset({"uint8", "int8", "uint16", "int16", "int32", "float16", "float32"}),
            source="onnxruntime QNN EP operator list (HTP backend; quantized models run best)"),
    Support("ane", "CoreMLExecutionProvider",
            frozenset(_ELEMENTWISE | _SHAPE | _NN | {"ReduceMean", "ReduceSum", "Gather", "Cast", "ArgMax",
                                                     "LayerNormalization", "DepthToSpace", "Gelu"}),
            static_shapes=False, dtypes=frozenset({"float32", "float16", "int32", "int64"}),
            source="onnxruntime CoreML EP (ML Program) operator list"),
    Support("nnapi", "NnapiExecutionProvider",
            frozenset(_ELEMENTWISE | _SHAPE | _NN | _QUANT | {"ReduceMean", "Cast", "DepthToSpace", "LRN"}),
            static_shapes=True, dtypes=frozenset({"float32", "float16", "uint8", "int8", "int32"}),
            source="onnxruntime NNAPI EP operator list (static shapes only)"),
    Support("tidl", "TIDLExecutionProvider",
            frozenset((_ELEMENTWISE - {"Erf", "Log", "Pow", "Sqrt"}) | _SHAPE | (_NN - {"MatMul"}) | _QUANT |
                      {"ReduceMax", "ArgMax", "DepthToSpace"}),
            static_shapes=True, dtypes=frozenset({"float32", "uint8", "int8", "int16", "uint16"}),
            source="TI edgeai-tidl-tools supported operators (static shapes, convolution-centric)"),
    Support("neuron", "NeuronExecutionProvider",
            frozenset(_ELEMENTWISE | _SHAPE | _NN | {"ReduceMean", "ReduceSum", "LayerNormalization", "Gather",
                                                     "Cast", "Gelu", "Where", "Expand"}),
            static_shapes=True, dtypes=frozenset({"float32", "float16", "int32", "int64"}),
            source="AWS Neuron ONNX/XLA operator support (static shapes only)"),
)}


def support_for(accelerators: tuple[str, ...]) -> Support | None:
    """The table of the target's main accelerator: TensorRT before CUDA, else the first listed."""
    for name in ("tensorrt", *accelerators):
        if name in accelerators and name in TABLES and TABLES[name].ops:
            return TABLES[name]
    return None
