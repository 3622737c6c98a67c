"""The edgemill.v1 enums in NumPy and plain-word terms, shared by the servicer and the client."""

from __future__ import annotations

import numpy as np

from . import protos
from .wire import dtype_lookup

pb = protos.load("edgemill.v1.agent_pb2")

DTYPE_BY_ENUM: dict[int, np.dtype] = {
    pb.FLOAT32: np.dtype(np.float32), pb.FLOAT16: np.dtype(np.float16), pb.FLOAT64: np.dtype(np.float64),
    pb.INT8: np.dtype(np.int8), pb.INT16: np.dtype(np.int16), pb.INT32: np.dtype(np.int32),
    pb.INT64: np.dtype(np.int64), pb.UINT8: np.dtype(np.uint8), pb.UINT16: np.dtype(np.uint16),
    pb.UINT32: np.dtype(np.uint32), pb.UINT64: np.dtype(np.uint64), pb.BOOL: np.dtype(np.bool_),
}
TEXT = "str"  # the spec dtype of a text tensor: STRING on the wire, an object array of str in NumPy
ENUM_BY_DTYPE: dict[str, int] = {**{d.name: e for e, d in DTYPE_BY_ENUM.items()}, TEXT: pb.STRING}
DTYPE_NAME_BY_ENUM: dict[int, str] = {e: n for n, e in ENUM_BY_DTYPE.items()}
enum_of = dtype_lookup(ENUM_BY_DTYPE)  # the wire enum of a numeric dtype, or None
CAPTURE_STATE: dict[str, int] = {"unknown": pb.UNKNOWN, "queued": pb.QUEUED, "uploading": pb.UPLOADING,
                                 "uploaded": pb.UPLOADED, "failed": pb.FAILED}
STATE_BY_ENUM: dict[int, str] = {e: s for s, e in CAPTURE_STATE.items()}
