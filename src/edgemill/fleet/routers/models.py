"""Registry: models, versions (signed package uploads), stages, lineage, package download."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ...errors import PayloadTooLargeError, UserError, VerificationError
from .. import schemas
from ..auth import require_deployer, require_viewer
from ..db.tables import Deployment, DeploymentDevice, Device, DeviceModel, Model, ModelVersion
from ..registry import CheckedPackage, check_package, same_or_conflict
from ..scope import scope_of
from ..state import ServerState, server_state
from ..views import count, ts, version_out
from .common import get_model, get_version

router = APIRouter(prefix="/api/v1/models", tags=["registry"])
log = logging.getLogger("edgemill.server")
PACKAGE_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"}}}, "description": "A signed package (.emp file)."}}


def _model_out(session, model: Model) -> schemas.ModelOut:  # type: ignore[no-untyped-def]
    versions = session.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)
                               .order_by(ModelVersion.created_at, ModelVersion.id)).all()
    production = [v.version for v in versions if v.stage == "production"]
    return schemas.ModelOut(name=model.name, versions=len(versions), latest_version=versions[-1].version if versions else None,
                            production_version=production[-1] if production else None, created_at=ts(model.created_at))  # type: ignore[arg-type]


@router.get("", response_model=list[schemas.ModelOut])
def list_models(request: Request, _: str = Depends(require_viewer)) -> list[schemas.ModelOut]:
    state = server_state(request)
    with state.db.session() as session:
        return [_model_out(session, m) for m in session.scalars(select(Model).order_by(Model.name))]


@router.get("/{name}", response_model=schemas.ModelDetailOut)
def get_model_detail(name: str, request: Request, _: str = Depends(require_viewer)) -> schemas.ModelDetailOut:
    state = server_state(request)
    with state.db.session() as session:
        model = get_model(session, name)
        versions = session.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)
                                   .order_by(ModelVersion.created_at, ModelVersion.id)).all()
        return schemas.ModelDetailOut(**_model_out(session, model).model_dump(),
                                      version_list=[version_out(v) for v in versions])


async def _spool(request: Request, limit_bytes: int) -> tuple[Path, str]:
    """Stream the body to a temporary file, hashing it on the way and refusing it as soon as it
    passes the limit; returns the file and its sha256."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit_bytes:
        raise PayloadTooLargeError("the package is larger than the server accepts", value=f"{int(declared)} bytes",
                                   expected=f"at most {limit_bytes} bytes", field="body",
                                   fix="raise the server's --max-upload-mb, or make the package smaller")
    fd, name = tempfile.mkstemp(prefix="edgemill-upload-", suffix=".emp")
    size = 0
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                digest.update(chunk)
                if size > limit_bytes:
                    raise PayloadTooLargeError("the package is larger than the server accepts", value=f"> {limit_bytes} bytes",
                                               field="body", fix="raise the server's --max-upload-mb, or make the package smaller")
                out.write(chunk)
        if size == 0:
            raise UserError("the upload is empty", field="body",
                            fix="send the package file as the request body (Content-Type: application/octet-stream)")
    except BaseException:
        os.unlink(name)
        raise
    return Path(name), digest.hexdigest()


def _store_version(state: ServerState, checked: CheckedPackage, path: Path, operator: str) -> tuple[ModelVersion, bool]:
    """Store the object, then commit the row; returns (version, created)."""
    with state.db.session() as session:
        model = session.scalar(select(Model).where(Model.name == checked.name))
        if model is not None:
            existing = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                                 ModelVersion.version == checked.version))
            if existing is not None and same_or_conflict(existing.package_id, checked):
                return existing, False
    state.store.put(checked.store_key, path.read_bytes())
    try:
        with state.db.session() as session:
            model = session.scalar(select(Model).where(Model.name == checked.name))
            if model is None:
                model = Model(name=checked.name, created_at=state.clock())
                session.add(model)
                session.flush()
            row = ModelVersion(model_id=model.id, version=checked.version, package_id=checked.package_id,
                               stage="none", manifest=checked.manifest, report=checked.report, signer=checked.signer,
                               size_bytes=checked.size_bytes, sha256=checked.sha256, store_key=checked.store_key,
                               created_at=state.clock(), uploaded_by=operator, baseline=checked.baseline)
            session.add(row)
            session.flush()
            session.refresh(row)
            return row, True
    except IntegrityError:
        # Another request committed the same model or version at the same moment: re-read and judge.
        with state.db.session() as session:
            existing = session.scalar(select(ModelVersion).join(Model).where(
                Model.name == checked.name, ModelVersion.version == checked.version))
        if existing is not None and existing.package_id == checked.package_id:
            return existing, False  # the same package: the object we wrote is the one its row names
        _forget_object(state, checked.store_key)
        if existing is not None:
            same_or_conflict(existing.package_id, checked)  # raises the 409 naming both packages
        raise
    except BaseException:
        _forget_object(state, checked.store_key)
        raise


def _forget_object(state: ServerState, key: str) -> None:
    """Undo the put of an upload whose row was not committed, unless a row names the object (a
    concurrent upload of the same package); when the database cannot say, an orphan object is the
    safe side."""
    try:
        with state.db.session() as session:
            if session.scalar(select(ModelVersion.id).where(ModelVersion.store_key == key).limit(1)) is None:
                state.store.delete(key)
    except Exception:  # noqa: BLE001 - the original error is what the caller must see
        log.warning("could not remove the stored object %s after a failed upload", key)


@router.post("/{name}/versions", response_model=schemas.VersionOut, status_code=201, openapi_extra=PACKAGE_BODY,
             responses={200: {"model": schemas.VersionOut, "description": "The same package was already uploaded"},
                        409: {"model": schemas.ErrorOut}, 413: {"model": schemas.ErrorOut},
                        422: {"model": schemas.ErrorOut, "description": "The package failed verification"}})
async def upload_version(name: str, request: Request, response: Response,
                         operator: str = Depends(require_deployer)) -> schemas.VersionOut:
    """Upload a signed package. The server verifies its signature against its trusted keys and every
    file against the manifest before storing anything; unsigned or tampered packages get 422 with the
    refusal reason."""
    state = server_state(request)
    if re.fullmatch(schemas.NAME_PATTERN, name) is None:
        raise UserError("bad model name", value=name, field="name",
                        fix="use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    path, sha256 = await _spool(request, int(state.config.max_upload_mb * 1024 * 1024))
    try:
        try:
            checked = await run_in_threadpool(check_package, path, sha256, state.trusted_keys, name)
        except VerificationError as exc:
            if exc.value == str(path):  # the spool file's name means nothing to the caller
                exc.value = "the uploaded body"
            exc.field = exc.field or "body"
            raise
        row, created = await run_in_threadpool(_store_version, state, checked, path, operator)
    finally:
        path.unlink(missing_ok=True)
    if not created:
        response.status_code = 200
    return version_out(row)


@router.get("/{name}/versions/{version}", response_model=schemas.VersionOut)
def get_version_detail(name: str, version: str, request: Request, _: str = Depends(require_viewer)) -> schemas.VersionOut:
    state = server_state(request)
    with state.db.session() as session:
        return version_out(get_version(session, name, version))


@router.patch("/{name}/versions/{version}", response_model=schemas.VersionOut)
def set_stage(name: str, version: str, body: schemas.StageIn, request: Request,
              _: str = Depends(require_deployer)) -> schemas.VersionOut:
    """Move a version between stages (staging, production, archived). A stage is the version's on every
    fleet, so it needs a key for every fleet."""
    scope_of(request).require_every_fleet(request, "changing a version's stage")
    state = server_state(request)
    with state.db.session() as session:
        row = get_version(session, name, version)
        row.stage = body.stage
        session.flush()
        return version_out(row)


@router.get("/{name}/versions/{version}/lineage", response_model=schemas.LineageOut)
def lineage(name: str, version: str, request: Request, _: str = Depends(require_viewer)) -> schemas.LineageOut:
    """Source file hash → compile report → package → deployments → devices running it now (a key limited
    to some fleets: its fleets' deployments and devices)."""
    state = server_state(request)
    scope = scope_of(request)
    with state.db.session() as session:
        row = get_version(session, name, version)
        m = row.manifest
        deployments = session.scalars(select(Deployment).where(Deployment.version_id == row.id,
                                                               scope.fleet_filter(Deployment.fleet_id))
                                      .order_by(Deployment.id)).all()
        out_deployments = []
        for d in deployments:
            rows = select(DeploymentDevice).where(DeploymentDevice.deployment_id == d.id)
            out_deployments.append(schemas.LineageDeployment(
                id=d.id, state=d.state, fleet=d.fleet.name, created_at=ts(d.created_at),  # type: ignore[arg-type]
                devices_targeted=count(session, rows),
                devices_updated=count(session, rows.where(DeploymentDevice.state == "updated"))))
        devices = session.scalars(select(DeviceModel).where(DeviceModel.package_id == row.package_id,
                                                            scope.device_filter(DeviceModel.device_id))).all()
        names = sorted(session.scalars(select(Device.name).where(Device.id.in_({d.device_id for d in devices}))).all())
        target = m.get("target", {})
        return schemas.LineageOut(
            model=name, version=version, source=m.get("source", {}),
            compile={**row.report, "target": target.get("name") if isinstance(target, dict) else target,
                     "backend": m.get("backend"), "precision": m.get("precision"), "accuracy": m.get("accuracy", {}),
                     "edgemill_version": m.get("edgemill_version"), "parents": m.get("lineage", [])},
            package={"id": row.package_id, "sha256": row.sha256, "size_bytes": row.size_bytes, "signer": row.signer,
                     "files": sorted(m.get("files", {})), "created": m.get("created"), "stage": row.stage},
            deployments=out_deployments, devices=names)


@router.get("/{name}/versions/{version}/package", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}, "description": "The package file"}})
def download_version(name: str, version: str, request: Request, _: str = Depends(require_viewer)) -> Response:
    state = server_state(request)
    with state.db.session() as session:
        row = get_version(session, name, version)
        key, filename = row.store_key, f"{name}-{version}.emp"
    local = state.store.local_path(key)
    if local is not None:
        return FileResponse(local, media_type="application/octet-stream", filename=filename)
    return Response(state.store.get(key), media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})

