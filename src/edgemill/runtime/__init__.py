"""The light runtime: verify a package, load it, run it. Imports neither torch, tensorflow nor onnx.

    import edgemill.runtime as rt
    model = rt.load("model.emp", trusted_keys=["edgemill.pub"], threads=2)
    outputs = model.run({"input": x})
"""

from ..tensors import TensorSpec
from .session import Model, load

__all__ = ["Model", "TensorSpec", "load"]
