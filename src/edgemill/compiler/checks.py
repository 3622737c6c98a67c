"""Model validity: the ONNX checker and strict shape inference, with one-line errors."""

from __future__ import annotations

import onnx

from ..errors import ModelCheckError, first_line


def check_model(model: onnx.ModelProto, label: str, warnings: list[str] | None = None) -> onnx.ModelProto:
    """Run the ONNX checker and shape inference; return the model with inferred shapes."""
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelCheckError(
            f"{label} fails the ONNX checker", value=first_line(exc),
            fix="re-export the model from its framework; `python -c \"import onnx; onnx.checker.check_model('MODEL')\"` "
                "shows the full report",
        ) from None
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError) as exc:
        strict_error = first_line(exc)
    # Strict inference also fails on gaps in onnx's own inference (e.g. a function body whose default
    # attribute it does not fill in). Accept what lenient inference accepts: the accuracy check that
    # follows runs the model, so a genuinely broken graph is still refused there.
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=False)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError):
        raise ModelCheckError(
            f"{label} fails ONNX shape inference", value=strict_error,
            fix="check the input shapes (fix them with --input NAME:SHAPE) or re-export the model",
        ) from None
    if warnings is not None:
        warnings.append(f"strict shape inference failed ({strict_error}); lenient inference was used")
    return inferred
