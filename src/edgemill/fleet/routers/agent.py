"""The device side of the API (Edge Manager's three duties): registration, heartbeat with the desired
state (long poll), package download, capture upload. A device credential reaches only its own records."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ...captures.answers import Answer, answer_of
from ...captures.record import CaptureFormatError, check_capture_id, object_key, read_header, read_outputs
from ...errors import (AuthenticationError, ConflictError, NotFoundError, PayloadTooLargeError,
                       PermissionDeniedError, RateLimitedError, UserError)
from .. import schemas
from ..auth import device_secret, digest, new_secret, require_device
from ..db.tables import Capture, Device, Fleet, RegistrationToken
from ..downloads import DownloadGate
from ..enroll import join_fleet_deployments
from ..desired import desired_state, desired_versions
from ..longpoll import DesiredWatch
from ..state import ServerState, server_state
from ..views import ts
from .common import checked_tags

log = logging.getLogger("edgemill.server")
router = APIRouter(prefix="/api/v1/agent", tags=["agent"])
ERRORS = {401: {"model": schemas.ErrorOut}, 403: {"model": schemas.ErrorOut}, 409: {"model": schemas.ErrorOut}}


@router.post("/register", response_model=schemas.RegisterOut, status_code=201, responses=ERRORS)
def register(body: schemas.RegisterIn, request: Request) -> schemas.RegisterOut:
    """Trade a registration token for this device's own credential (shown once, stored hashed)."""
    state = server_state(request)
    now = state.clock()
    credential = body.credential or new_secret("emd")
    try:
        with state.db.session() as session:
            if body.credential is not None:
                again = _registered_already(session, body)
                if again is not None:
                    return again
            token = session.scalar(select(RegistrationToken).where(RegistrationToken.token_hash == digest(body.token)))
            if token is None or token.expires_at <= now or token.uses_left <= 0:
                why = "unknown" if token is None else ("expired" if token.expires_at <= now else "already used")
                raise AuthenticationError(f"registration token {why}", value=body.token[:8] + "…", field="token",
                                          fix="ask the operator for a fresh token (POST /api/v1/fleets/FLEET/registration-tokens)")
            if session.scalar(select(Device.id).where(Device.name == body.device)) is not None:
                raise ConflictError("a device with that name is already registered", value=body.device, field="device",
                                    fix="give this device another [device] name, or have the operator delete the old "
                                        "record (DELETE /api/v1/devices/NAME) first")
            taken = session.execute(update(RegistrationToken).where(RegistrationToken.id == token.id,
                                                                    RegistrationToken.uses_left > 0)
                                    .values(uses_left=RegistrationToken.uses_left - 1)).rowcount
            if not taken:  # the last use went to a concurrent registration
                raise AuthenticationError("registration token already used", field="token",
                                          fix="ask the operator for a fresh token")
            device = Device(name=body.device, fleet_id=token.fleet_id, tags=checked_tags(body.tags),
                            credential_hash=digest(credential), registered_at=now, last_seq=-1, agent={}, metric_totals={})
            session.add(device)
            session.flush()
            joined = join_fleet_deployments(session, device, now)
            fleet_name = token.fleet.name
    except IntegrityError:
        raise ConflictError("a device with that name is already registered", value=body.device, field="device",
                            fix="give this device another [device] name") from None
    if joined:
        log.info("device %s joined fleet %s and its deployment(s) %s", body.device, fleet_name,
                 ", ".join(map(str, joined)))
    return schemas.RegisterOut(device=body.device, fleet=fleet_name, credential=credential)


def _registered_already(session: Session, body: schemas.RegisterIn) -> schemas.RegisterOut | None:
    """The answer to a registration retried after its answer was lost: same name, same device-chosen
    credential (knowing it already proves to be that device), and a token of the device's fleet, spent
    or not. Anything else goes through the normal checks."""
    row = session.execute(select(Device.credential_hash, Device.fleet_id).where(Device.name == body.device)).first()
    if row is None or not hmac.compare_digest(row[0], digest(body.credential or "")):
        return None
    token_fleet = session.scalar(select(RegistrationToken.fleet_id).where(RegistrationToken.token_hash == digest(body.token)))
    if token_fleet != row[1]:
        return None
    fleet_name = session.scalar(select(Fleet.name).where(Fleet.id == row[1]))
    log.info("device %s registered again with its own credential (a retried registration)", body.device)
    return schemas.RegisterOut(device=body.device, fleet=str(fleet_name), credential=body.credential or "")


def _desired_now(state: ServerState, device_id: int, name: str, seq: int) -> schemas.DesiredStateOut:
    with state.db.session() as session:
        return desired_state(session, device_id, name, seq, state.config.heartbeat_interval_s)


HELD_HEADER = "X-Edgemill-Held-Ms"  # how long the answer was held in the long poll (load tests subtract it)


@router.post("/heartbeat", response_model=schemas.DesiredStateOut, responses=ERRORS)
async def heartbeat(body: schemas.HeartbeatIn, request: Request,
                    wait_s: float = Query(0, ge=0, le=300, description="Long poll: hold the answer up to this long "
                                          "(capped by the server) unless the desired state changes"),
                    secret: str = Depends(device_secret)) -> Response:
    """Report status, loaded models, metrics and apply failures; get the desired state back. Answers at
    once when the device has something to do, otherwise when the desired state changes or the wait ends."""
    state = server_state(request)
    answered = await state.heartbeats.submit(secret, body)
    wait = min(wait_s, state.config.long_poll_max_s)
    if answered.act or wait <= 0:
        return _answer(answered.desired, 0.0)
    # Held: the waiting happens in the response, after this handler (and with it the request body, the
    # parsed heartbeat and FastAPI's bookkeeping) is gone. 10,000 devices hold 8,000 of these at once;
    # each object a held answer keeps alive is 8,000 more for the garbage collector to walk.
    device_id, name, seq = answered.device_id, body.device, body.seq

    async def reread() -> schemas.DesiredStateOut:
        return await run_in_threadpool(_desired_now, state, device_id, name, seq)

    return HeldAnswer(state.watch, device_id, answered.answered_at, wait, answered.desired, reread)


def _answer(desired: schemas.DesiredStateOut, held_ms: float) -> Response:
    """The heartbeat's answer, serialised once here (returning the model would have FastAPI validate it
    again against the response model on the hot path)."""
    return Response(desired.model_dump_json(), media_type="application/json", headers={HELD_HEADER: f"{held_ms:.1f}"})


class HeldAnswer(Response):
    """A heartbeat's answer that waits, up to ``wait_s``, for the device's desired state to change.

    No task and no polling per request: the watcher sets the event when the device's desired state may
    have changed, with that state read for every device it woke (the answer goes on waiting if its
    generation did not move); one timer sets it at the end. A client that hung up is not looked for:
    its answer goes nowhere when the wait ends."""

    media_type = "application/json"

    def __init__(self, watch: DesiredWatch, device_id: int, answered_at: float, wait_s: float,
                 desired: schemas.DesiredStateOut, reread: Callable[[], Awaitable[schemas.DesiredStateOut]]) -> None:
        super().__init__(status_code=200)
        self._watch, self._device_id, self._answered_at, self._wait_s = watch, device_id, answered_at, wait_s
        self._desired, self._reread = desired, reread

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        held_from = time.monotonic()
        desired = self._desired
        event = self._watch.hold(self._device_id, self._answered_at)
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            event.set()

        timer = asyncio.get_running_loop().call_later(self._wait_s, expire)
        try:
            while True:
                await event.wait()
                event.clear()
                if expired:
                    break
                # Woken by the watcher, which read the new state for every device it woke; or at once
                # by a change that raced this answer, which this answer reads itself.
                fresh = self._watch.fresh(self._device_id)
                now = (fresh.model_copy(update={"device": desired.device, "seq": desired.seq}) if fresh is not None
                       else await self._reread())
                if now.generation != desired.generation:
                    desired = now
                    break
        finally:
            timer.cancel()
            self._watch.release(self._device_id, event)
        await _answer(desired, (time.monotonic() - held_from) * 1000)(scope, receive, send)


@router.get("/packages/{package_id}", response_class=Response, responses={
    200: {"content": {"application/octet-stream": {}}, "description": "The package file"},
    307: {"description": "Redirect to a presigned object-store URL"}, 404: {"model": schemas.ErrorOut},
    429: {"model": schemas.ErrorOut, "description": "Too many downloads at once; retry after Retry-After"}})
def download_package(package_id: str, request: Request, device_id: int = Depends(require_device)) -> Response:
    """A package this device is told to run (and no other)."""
    state = server_state(request)
    with state.db.session() as session:
        versions = [v for v, _, _ in desired_versions(session, device_id).values() if v.package_id == package_id]
        if not versions:
            raise NotFoundError("this device is not told to run that package", value=package_id, field="package_id",
                                fix="download only packages listed in the heartbeat's desired state")
        key, name, size = versions[0].store_key, f"{versions[0].model}-{versions[0].version}.emp", versions[0].size_bytes
    if state.config.presign_downloads:
        url = state.store.presigned_get(key, state.config.presign_expiry_s)
        if url is not None:
            return RedirectResponse(url, status_code=307)
    if state.packages.fits(size):
        return Response(state.packages.get(key, lambda: state.store.get(key)), media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})
    started = state.downloads.try_acquire()
    if started is None:
        raise RateLimitedError("too many package downloads at once", retry_after_s=state.downloads.retry_after_s(),
                               value=state.config.max_concurrent_downloads, field="package_id",
                               fix="retry after the Retry-After seconds (the agent does this itself)")
    local = state.store.local_path(key)
    if local is not None:
        return _SlotFileResponse(local, state.downloads, started, media_type="application/octet-stream", filename=name)
    try:
        return Response(state.store.get(key), media_type="application/octet-stream")
    finally:
        state.downloads.release(started)


class _SlotFileResponse(FileResponse):
    """A file response that gives its download slot back however the sending ends (a device that
    hangs up mid-download included; a background task would not run then, and the slot would leak)."""

    def __init__(self, path: Path, gate: DownloadGate, started: float, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._gate, self._started = gate, started

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._gate.release(self._started)


@router.put("/captures/{capture_id}", response_model=schemas.CaptureOut, status_code=201, responses={
    200: {"model": schemas.CaptureOut, "description": "Already stored (an upload retried)"}, **ERRORS,
    413: {"model": schemas.ErrorOut}}, openapi_extra={"requestBody": {"required": True, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def put_capture(capture_id: str, request: Request, response: Response,
                      model: str = Query(pattern=schemas.NAME_PATTERN, description="The model the capture belongs to"),
                      device_id: int = Depends(require_device)) -> schemas.CaptureOut:
    """Store one capture record (.emc) under this device's prefix. Idempotent: a retried upload of the
    same capture id overwrites the same object and keeps one row."""
    state = server_state(request)
    limit = int(state.config.max_capture_mb * 1024 * 1024)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise PayloadTooLargeError("the capture is larger than the server accepts", value=f"> {limit} bytes",
                                       field="body", fix="raise the server's --max-capture-mb or capture less data")
    return await run_in_threadpool(_store_capture, state, device_id, capture_id, model, bytes(data), response)


def _capture_answer(data: bytes) -> Answer | None:
    """What the capture's model answered (for live accuracy once it is labeled); None when its outputs
    hold none a label could judge. The checksum was verified with the header."""
    try:
        return answer_of(read_outputs(data))
    except (CaptureFormatError, ValueError):
        return None  # stored and served all the same; it just cannot be scored


MAX_UNIX = 253_402_300_800  # 10000-01-01: time.gmtime's range on every platform we run on


def _store_capture(state: ServerState, device_id: int, capture_id: str, model: str, data: bytes,
                   response: Response) -> schemas.CaptureOut:
    try:
        check_capture_id(capture_id)
    except UserError as exc:
        exc.field = "capture_id"
        raise
    try:
        header = read_header(data)
    except CaptureFormatError as exc:
        raise UserError("the body is not a valid capture record", value=exc.problem, field="body",
                        fix="send the .emc bytes the agent wrote, unchanged") from None
    with state.db.session() as session:
        device = session.get(Device, device_id)
        assert device is not None
        device_name = device.name
    for field, expected in (("capture_id", capture_id), ("model", model), ("device", device_name)):
        if header.get(field) != expected:
            error = PermissionDeniedError if field == "device" else UserError
            raise error(f"the capture's {field} does not match the request", value=header.get(field), field=field,
                        expected=repr(expected), fix="upload each capture under its own id and model, from its own device")
    created = header.get("created_unix")
    if isinstance(created, bool) or not isinstance(created, (int, float)) or not 0 <= created < MAX_UNIX:
        raise UserError("the capture's created_unix is not a time", value=created, field="created_unix",
                        expected="seconds since 1970, before the year 10000",
                        fix="send the .emc bytes the agent wrote, unchanged")
    key = "captures/" + object_key(device_name, model, float(created), capture_id)
    now = state.clock()
    with state.db.session() as session:
        existing = session.scalar(select(Capture).where(Capture.device_id == device_id, Capture.capture_id == capture_id))
    state.store.put(key, data)
    if existing is None:  # a retried upload keeps the row it made: its answer was read then
        answer = _capture_answer(data)
        try:
            with state.db.session() as session:
                session.add(Capture(capture_id=capture_id, device_id=device_id, model_name=model, store_key=key,
                                    size_bytes=len(data), received_at=now, created_unix=float(created),
                                    model_version=str(header.get("model_version") or "")[:128] or None,
                                    task=answer.task if answer else None, classes=answer.classes if answer else None,
                                    prediction=list(answer.values) if answer else None))
        except IntegrityError:
            existing = True  # type: ignore[assignment]  # a concurrent retry of the same upload won
    if existing is not None:
        response.status_code = 200
    return schemas.CaptureOut(capture_id=capture_id, device=device_name, model=model, size_bytes=len(data), key=key,
                              received_at=ts(now))  # type: ignore[arg-type]
