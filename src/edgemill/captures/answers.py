"""What a capture's model answered, and whether a label fits it: the ground on which live accuracy rests.

A capture's *answer* is read from its first output, one value per sample (axis 0 is the batch):

* a float ``[N, C]`` output with ``C >= 2`` is a classifier's scores: the answer is the top-1 class index;
* an integer ``[N]`` or ``[N, 1]`` output is a classifier's label: the answer is that class;
* a float ``[N]`` or ``[N, 1]`` output is a regressor's value;
* anything else (a detector's boxes, an image) has no answer that one label could judge.

A label gives the right answer for every sample of the capture, in the same form: a class index for a
classifier, a number for a regressor (a list of them when the capture holds several samples).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import LabelError

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class Answer:
    task: Task
    values: tuple[float | int, ...]  # one per sample: a class index or a value
    classes: int | None = None  # a classifier's number of classes, when its scores show it

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "values": list(self.values), "classes": self.classes}


def answer_of(outputs: Mapping[str, np.ndarray]) -> Answer | None:
    """The model's answer in a capture's outputs, or None where there is none a label could judge."""
    if not outputs:
        return None
    out = np.asarray(next(iter(outputs.values())))
    if out.ndim == 0 or out.shape[0] == 0:
        return None
    rows = out.shape[0]
    per_sample = out.reshape(rows, -1)
    if np.issubdtype(out.dtype, np.floating):
        if out.ndim == 2 and out.shape[1] >= 2:
            return Answer("classification", tuple(int(i) for i in per_sample.argmax(axis=1)), int(out.shape[1]))
        if per_sample.shape[1] == 1:
            return Answer("regression", tuple(float(v) for v in per_sample[:, 0]))
        return None
    if np.issubdtype(out.dtype, np.integer) and per_sample.shape[1] == 1:
        return Answer("classification", tuple(int(v) for v in per_sample[:, 0]))
    return None


def check_label(answer: Answer | None, label: object, field: str = "label") -> list[float | int]:
    """The label as a list with one value per sample of the capture; an error naming the
    offending value and the fix (a :class:`LabelError`) where it cannot judge ``answer``."""
    if answer is None:
        raise LabelError("this capture's outputs have no answer a label can judge", value=label, field=field,
                        fix="label captures of classifiers (scores [N, C] or a class [N]) or regressors (a value [N])")
    values = label if isinstance(label, list) else [label]
    if len(values) != len(answer.values):
        raise LabelError(f"the capture holds {len(answer.values)} sample(s) and the label gives {len(values)}",
                        value=label, field=field, fix=f"give one label per sample ({len(answer.values)})")
    out: list[float | int] = []
    for value in values:
        if answer.task == "classification":
            if isinstance(value, bool) or not isinstance(value, int) and not (isinstance(value, float) and value.is_integer()):
                raise LabelError("a classifier's label is a class index", value=value, field=field,
                                expected="an integer", fix="send the index of the right class, e.g. 3")
            index = int(value)
            if index < 0 or (answer.classes is not None and index >= answer.classes):
                limit = f"0 to {answer.classes - 1}" if answer.classes is not None else "0 or more"
                raise LabelError("the class index is out of range for this model", value=value, field=field,
                                expected=limit, fix=f"send a class index from {limit}")
            out.append(index)
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise LabelError("a regressor's label is a finite number", value=value, field=field,
                                expected="a number", fix="send the true value, e.g. 12.5")
            out.append(float(value))
    return out
