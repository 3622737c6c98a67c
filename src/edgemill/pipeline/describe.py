"""A package's pipeline in words: what a client sends, each pre-processing step, the model, each
post-processing step (``edgemill inspect`` prints these lines)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _shape(spec: Mapping[str, Any]) -> str:
    return f"{spec['dtype']}[{', '.join(str(d) for d in spec['shape'])}]"


def _numbers(values: list[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def pre_steps(spec: Mapping[str, Any], geometry: Mapping[str, Any], model_input: Mapping[str, Any]) -> list[str]:
    h, w = spec["frame"]
    steps = ["cast to float32"]
    if spec["color"] != spec["model_color"]:
        steps.append(f"{spec['color']} -> {spec['model_color']}")
    mh, mw = geometry.get("model_height", h), geometry.get("model_width", w)
    if (h, w) != (mh, mw):
        if spec["fit"] == "letterbox":
            nh, nw = round(h * geometry["scale_y"]), round(w * geometry["scale_x"])
            steps.append(f"resize {h}x{w} -> {nh}x{nw} {spec['resize']}, letterbox to {mh}x{mw} with border {spec['pad']:g}")
        else:
            steps.append(f"resize {h}x{w} -> {mh}x{mw} {spec['resize']}")
    if spec["scale"] != 1 or spec["mean"] or spec["std"]:
        part = f"x*{spec['scale']:.6g}"
        if spec["mean"]:
            part = f"({part} - mean {_numbers(spec['mean'])})"
        if spec["std"]:
            part += f" / std {_numbers(spec['std'])}"
        steps.append(part)
    return steps


def lines(manifest: Mapping[str, Any]) -> list[str]:
    pipeline = manifest.get("pipeline")
    if not pipeline:
        return []
    model_in = {s["name"]: s for s in pipeline["model"]["inputs"]}
    out: list[str] = []
    pre_by_input = {p["input"]: p for p in pipeline.get("preprocess", [])}
    for spec in manifest["inputs"]:
        pre = pre_by_input.get(spec["name"])
        what = f" ({pre['spec']['layout']} {pre['spec']['color']} frames, raw pixels)" if pre else ""
        out.append(f"send      {spec['name']}: {_shape(spec)}{what}")
    for p in pipeline.get("preprocess", []):
        target = model_in[p["model_input"]]
        out.append(f"pre       {p['input']}: " + ", ".join(pre_steps(p["spec"], p.get("geometry", {}), target))
                   + f" -> {target['name']} {_shape(target)}")
    model_out = ", ".join(f"{s['name']} {_shape(s)}" for s in pipeline["model"]["outputs"])
    out.append(f"model     {', '.join(model_in)} -> {model_out}  ({manifest['backend']}/{manifest['precision']})")
    post = pipeline.get("postprocess")
    if post:
        spec = post.get("spec", {})
        detect = spec.get("detect")
        if detect:
            steps = [f"decode {detect['layout']} heads", f"keep score > {detect['confidence']:g}",
                     f"NMS {'per class' if detect['per_class'] else 'class-agnostic'} IoU {detect['iou']:g}",
                     f"at most {detect['max_detections']}", f"{detect['coordinates']} boxes in the original frame"]
        else:
            steps = (["softmax"] if spec.get("softmax") else []) + ([f"top-{spec['topk']}"] if spec.get("topk") else [])
        passthrough = f"; passed through: {', '.join(post['passthrough'])}" if post.get("passthrough") else ""
        out.append(f"post      {', '.join(post['inputs'])}: {', '.join(steps) or 'as is'} -> "
                   f"{', '.join(post['outputs'])}{passthrough}")
    if pipeline.get("labels"):
        out.append(f"labels    {len(pipeline['labels'])} class names ({pipeline['labels'][0]!r}, ...): "
                   f"{pipeline['labels_from']} -> {pipeline['labels_to']}")
    out.append("runs as    " + ("one graph: the steps are merged into the model (one session)" if pipeline.get("fused")
                              else "separate graphs around the model (pre and post on onnxruntime)"))
    return out
