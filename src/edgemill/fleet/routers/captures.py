"""Captured inputs/outputs that devices uploaded: list, fetch, and label them (one at a time or in bulk)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from ...captures.answers import Answer, check_label
from ...captures.record import CaptureFormatError, CaptureRecord
from ...errors import NotFoundError, PayloadTooLargeError, UserError
from .. import schemas
from ..auth import require_deployer, require_viewer
from ..capture_view import capture_view
from ..db.tables import Capture, Device, Fleet, Model, ModelVersion
from ..scope import scope_of
from ..state import server_state
from ..views import ts
from .common import device_in_scope, fleet_in_scope

router = APIRouter(prefix="/api/v1/captures", tags=["captures"])

MAX_LABEL_FILE_BYTES = 16 * 1024 * 1024
MAX_LABEL_ROWS = 100_000


def capture_out(c: Capture) -> schemas.CaptureOut:
    return schemas.CaptureOut(capture_id=c.capture_id, device=c.device.name, model=c.model_name, size_bytes=c.size_bytes,
                              key=c.store_key, received_at=ts(c.received_at), version=c.model_version,  # type: ignore[arg-type]
                              created_at=ts(c.created_unix), task=c.task, prediction=c.prediction,  # type: ignore[arg-type]
                              label=c.label, labeled_by=c.labeled_by, labeled_at=ts(c.labeled_at),
                              previous_label=c.previous_label)


@router.get("", response_model=list[schemas.CaptureOut])
def list_captures(request: Request, device: str | None = None, model: str | None = None, version: str | None = None,
                  fleet: str | None = None,
                  labeled: bool | None = Query(None, description="true: labeled only; false: not yet labeled"),
                  since: float | None = Query(None, description="predictions made at or after (unix seconds)"),
                  until: float | None = Query(None, description="predictions made before (unix seconds)"),
                  offset: int = Query(0, ge=0, le=10_000_000), limit: int = Query(100, ge=1, le=1000),
                  _: str = Depends(require_viewer)) -> list[schemas.CaptureOut]:
    """Newest first; filter by device, fleet, model, version, label state and prediction time; page with
    offset and limit. Objects lie under captures/DEVICE/MODEL/ in the store."""
    state = server_state(request)
    with state.db.session() as session:
        stmt = (select(Capture).where(scope_of(request).device_filter(Capture.device_id))
                .order_by(Capture.received_at.desc(), Capture.id.desc()).offset(offset).limit(limit))
        if device is not None:
            stmt = stmt.where(Capture.device_id == device_in_scope(request, session, device).id)
        if fleet is not None:
            stmt = stmt.where(Capture.device_id.in_(select(Device.id).where(
                Device.fleet_id == fleet_in_scope(request, session, fleet).id)))
        if model is not None:
            stmt = stmt.where(Capture.model_name == model)
        if version is not None:
            stmt = stmt.where(Capture.model_version == version)
        if labeled is not None:
            stmt = stmt.where(Capture.label.is_not(None) if labeled else Capture.label.is_(None))
        if since is not None:
            stmt = stmt.where(Capture.created_unix >= since)
        if until is not None:
            stmt = stmt.where(Capture.created_unix < until)
        return [capture_out(c) for c in session.scalars(stmt)]


def _find(request: Request, session: Session, device: str, capture_id: str) -> Capture:
    row = session.scalar(select(Capture).where(Capture.device_id == device_in_scope(request, session, device).id,
                                               Capture.capture_id == capture_id))
    if row is None:
        raise NotFoundError("no capture with that id from this device", value=capture_id, field="capture_id",
                            fix=f"list them with GET /api/v1/captures?device={device}")
    return row


@router.get("/{device}/{capture_id}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}, "description": "The .emc record"},
                       404: {"model": schemas.ErrorOut}})
def get_capture(device: str, capture_id: str, request: Request, _: str = Depends(require_viewer)) -> Response:
    state = server_state(request)
    with state.db.session() as session:
        key = _find(request, session, device, capture_id).store_key
    return Response(state.store.get(key), media_type="application/octet-stream")


@router.get("/{device}/{capture_id}/view", response_model=schemas.CaptureViewOut,
            responses={404: {"model": schemas.ErrorOut}, 422: {"model": schemas.ErrorOut}})
def view_capture(device: str, capture_id: str, request: Request, _: str = Depends(require_viewer)) -> schemas.CaptureViewOut:
    """The capture as the dashboard shows it: images, tables, waveforms, the answer, its label."""
    state = server_state(request)
    with state.db.session() as session:
        row = _find(request, session, device, capture_id)
        out, key = capture_out(row), row.store_key
        bgr = _bgr_inputs(session, row)
    try:
        record = CaptureRecord.decode(state.store.get(key))
    except CaptureFormatError as exc:
        raise UserError("the stored capture cannot be read", value=exc.problem, field="capture_id",
                        fix="the object in the store is damaged or was replaced; fetch it raw to inspect it") from None
    return schemas.CaptureViewOut(capture=out, **capture_view(record, bgr))


def _bgr_inputs(session: Session, row: Capture) -> frozenset[str]:
    """Frame inputs that the capture's package declares as BGR (--preprocess color=BGR): drawn as RGB."""
    if not row.model_version:
        return frozenset()
    version = session.scalar(select(ModelVersion).join(Model).where(Model.name == row.model_name,
                                                                    ModelVersion.version == row.model_version))
    pipeline = (version.manifest or {}).get("pipeline") if version is not None else None
    return frozenset(p["input"] for p in (pipeline or {}).get("preprocess", []) if p.get("spec", {}).get("color") == "BGR")


def _answer(row: Capture) -> Answer | None:
    if row.task is None or row.prediction is None:
        return None
    return Answer(row.task, tuple(row.prediction), row.classes)  # type: ignore[arg-type]


def _apply(row: Capture, label: list[float | int] | None, who: str, now: float) -> bool:
    """Set (or, with None, clear) the label; False when it already was that. The value replaced is kept."""
    if row.label == label:
        return False
    row.previous_label, row.label = row.label, label
    row.labeled_by, row.labeled_at = who, now
    return True


@router.put("/{device}/{capture_id}/label", response_model=schemas.CaptureOut,
            responses={404: {"model": schemas.ErrorOut}, 422: {"model": schemas.ErrorOut}})
def put_label(device: str, capture_id: str, body: schemas.LabelIn, request: Request,
              who: str = Depends(require_deployer)) -> schemas.CaptureOut:
    """Say what the right answer was: a class index for a classifier, a number for a regressor (a list,
    one per sample, for a capture of several). Who set it and when are kept, and the value it replaced."""
    state = server_state(request)
    with state.db.session() as session:
        row = _find(request, session, device, capture_id)
        _apply(row, check_label(_answer(row), body.label), who, state.clock())
        session.flush()
        return capture_out(row)


@router.delete("/{device}/{capture_id}/label", response_model=schemas.CaptureOut, responses={404: {"model": schemas.ErrorOut}})
def delete_label(device: str, capture_id: str, request: Request, who: str = Depends(require_deployer)) -> schemas.CaptureOut:
    """Take a label back: the capture counts as unlabeled again (the removed value is kept as the previous)."""
    state = server_state(request)
    with state.db.session() as session:
        row = _find(request, session, device, capture_id)
        _apply(row, None, who, state.clock())
        session.flush()
        return capture_out(row)


@router.post("/labels", response_model=schemas.LabelImportOut,
             responses={413: {"model": schemas.ErrorOut}, 422: {"model": schemas.LabelImportOut}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "text/csv": {"schema": {"type": "string"}}, "application/x-ndjson": {"schema": {"type": "string"}}}}})
async def import_labels(request: Request, who: str = Depends(require_deployer)) -> Any:
    """Label many captures at once from CSV (a header row naming ``capture_id`` and ``label``, and
    ``device`` where ids repeat across devices; several labels of one capture separated by spaces) or
    JSON lines (``{"device": ..., "capture_id": ..., "label": ...}``). Every row is checked first: if any is
    wrong, nothing is applied and the reply (422) says what is wrong with each row."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_LABEL_FILE_BYTES:
            raise PayloadTooLargeError("the label file is larger than the server accepts",
                                       value=f"> {MAX_LABEL_FILE_BYTES} bytes", field="body",
                                       fix=f"split it into files of at most {MAX_LABEL_ROWS:,} rows")
    rows = parse_label_file(bytes(body), request.headers.get("content-type", ""))
    from fastapi.concurrency import run_in_threadpool

    report = await run_in_threadpool(_import, request, rows, who)
    if report.fleets and len(report.fleets) == 1:
        request.state.audit_fleet = report.fleets[0]
    return JSONResponse(report.model_dump(), status_code=200 if report.applied else 422)


ParsedRow = tuple[int, str | None, str | None, Any, str | None]  # line, device, capture id, label, parse error


def parse_label_file(data: bytes, content_type: str) -> list[ParsedRow]:
    """The rows of a CSV or JSON-lines label file; a row that cannot be read carries its error."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError("the label file is not UTF-8 text", value=f"byte {exc.start}", field="body",
                        fix="save the file as UTF-8 CSV or JSON lines") from None
    if not text.strip():
        raise UserError("the label file is empty", field="body", fix="send rows of capture_id,label (CSV) or JSON lines")
    jsonl = "json" in content_type or (not "csv" in content_type and text.lstrip().startswith("{"))
    rows = _parse_jsonl(text) if jsonl else _parse_csv(text)
    if len(rows) > MAX_LABEL_ROWS:
        raise UserError("the label file has too many rows", value=len(rows), field="body",
                        expected=f"at most {MAX_LABEL_ROWS:,}", fix="split it into several files")
    return rows


def _parse_jsonl(text: str) -> list[ParsedRow]:
    rows: list[ParsedRow] = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            rows.append((line_no, None, None, None, f"not JSON: {exc.msg} at column {exc.colno}"))
            continue
        if not isinstance(item, dict) or "capture_id" not in item or "label" not in item:
            rows.append((line_no, None, None, None, 'expected {"capture_id": ..., "label": ...} (and "device")'))
            continue
        device = item.get("device")
        rows.append((line_no, str(device) if device is not None else None, str(item["capture_id"]), item["label"], None))
    return rows


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _parse_csv(text: str) -> list[ParsedRow]:
    """The rows of a CSV label file; a file the csv module cannot read at all (a bare carriage return
    inside a field, say) is one 422 naming the line."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return _csv_rows(reader)
    except csv.Error as exc:
        raise UserError("the CSV label file cannot be read", value=f"line {reader.line_num}: {exc}", field="body",
                        fix="save it as plain CSV (one row per line, fields with line breaks or quotes in double "
                            "quotes), or send JSON lines") from None


def _csv_rows(reader: Any) -> list[ParsedRow]:
    header = [h.strip().lower() for h in next(reader, [])]
    if "capture_id" not in header or "label" not in header:
        raise UserError("the CSV label file needs a header row naming capture_id and label", value=",".join(header)[:200],
                        field="body", fix="start the file with: device,capture_id,label (device may be left out)")
    at = {name: header.index(name) for name in ("device", "capture_id", "label") if name in header}
    rows: list[ParsedRow] = []
    for line_no, cells in enumerate(reader, 2):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) < len(header):
            rows.append((line_no, None, None, None, f"{len(cells)} columns, the header has {len(header)}"))
            continue
        device = cells[at["device"]].strip() or None if "device" in at else None
        capture_id = cells[at["capture_id"]].strip()
        try:
            parts = [_number(p) for p in cells[at["label"]].split()]
        except ValueError:
            rows.append((line_no, device, capture_id, None, f"label {cells[at['label']]!r} is not a number"))
            continue
        if not parts:
            rows.append((line_no, device, capture_id, None, "the label is empty"))
            continue
        rows.append((line_no, device, capture_id, parts[0] if len(parts) == 1 else parts, None))
    return rows


def _resolve(found: dict[str, list[Capture]], devices: dict[str, int], seen: set[int], device: str | None,
             capture_id: str, label: Any) -> tuple[Capture | None, list[float | int] | None, str | None]:
    """One row's capture and checked label, or what is wrong with the row."""
    candidates = found.get(capture_id, [])
    if device is not None:
        if device not in devices:
            return None, None, f"no device named {device!r}"
        candidates = [c for c in candidates if c.device_id == devices[device]]
    if not candidates:
        return None, None, f"no capture {capture_id!r}" + (f" from device {device!r}" if device else "")
    if len(candidates) > 1:
        return None, None, f"capture id {capture_id!r} exists on several devices: add a device column"
    target = candidates[0]
    if target.id in seen:
        return target, None, f"capture {capture_id!r} is labeled twice in this file"
    try:
        return target, check_label(_answer(target), label), None
    except UserError as exc:
        return target, None, exc.one_line()


def _import(request: Request, rows: list[ParsedRow], who: str) -> schemas.LabelImportOut:
    """The rows checked, then applied when none is wrong. A key limited to some fleets is refused (403)
    a file that names another fleet's device, and finds only its own fleets' captures by id."""
    state, scope = server_state(request), scope_of(request)
    now = state.clock()
    results: list[schemas.LabelRowResult] = []
    with state.db.session() as session:
        named: dict[str, int] = {}  # device -> the first row naming it
        for line, device, _, _, _ in rows:
            if device is not None:
                named.setdefault(device, line)
        devices: dict[str, int] = {}
        for id_, name, fleet in session.execute(select(Device.id, Device.name, Fleet.name)
                                                .join(Fleet, Device.fleet_id == Fleet.id)):
            devices[name] = id_
            if name in named and not scope.allows(fleet):
                scope.check(request, fleet, f"device {name!r} (row {named[name]})")
        ids = [capture_id for _, _, capture_id, _, error in rows if capture_id and error is None]
        found: dict[str, list[Capture]] = {}
        for start in range(0, len(ids), 500):
            for row in session.scalars(select(Capture).where(Capture.capture_id.in_(ids[start:start + 500]),
                                                             scope.device_filter(Capture.device_id))):
                found.setdefault(row.capture_id, []).append(row)
        planned: list[tuple[Capture, list[float | int], schemas.LabelRowResult]] = []
        seen: set[int] = set()
        for line_no, device, capture_id, label, error in rows:
            target, checked, error = (None, None, error) if error else _resolve(found, devices, seen, device,
                                                                                capture_id or "", label)
            result = schemas.LabelRowResult(row=line_no, device=device or (target.device.name if target else None),
                                            capture_id=capture_id, status="error" if error else "labeled", error=error)
            results.append(result)
            if target is not None and checked is not None:
                seen.add(target.id)
                planned.append((target, checked, result))
        errors = sum(1 for r in results if r.status == "error")
        if errors:  # nothing was changed: the rows were only read
            return schemas.LabelImportOut(applied=False, labeled=0, unchanged=0, errors=errors, rows=results)
        for target, checked, result in planned:
            if not _apply(target, checked, who, now):
                result.status = "unchanged"
        fleets = sorted({target.device.fleet.name for target, _, _ in planned})
    labeled = sum(1 for r in results if r.status == "labeled")
    return schemas.LabelImportOut(applied=True, labeled=labeled, unchanged=len(results) - labeled, errors=0, rows=results,
                                  fleets=fleets)
