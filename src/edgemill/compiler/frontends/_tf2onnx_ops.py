"""TensorFlow ops that tf2onnx does not map but real models use, written as ONNX ops. Importing this
module registers them with tf2onnx's handler table.

* ``Erfc``: Keras 3's exact GELU (``keras.activations.gelu(approximate=False)``) computes
  ``0.5 * x * erfc(-x / sqrt(2))``; ONNX has ``Erf``, and ``erfc(x) = 1 - erf(x)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tf2onnx import utils
from tf2onnx.handler import tf_op


@tf_op("Erfc")
class Erfc:
    @classmethod
    def version_9(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
        dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
        erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
        one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
        node.type = "Sub"
        ctx.replace_inputs(node, [one.output[0], erf.output[0]])
