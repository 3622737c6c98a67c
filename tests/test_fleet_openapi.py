"""The OpenAPI document is the control plane's contract: it is committed (tests/golden/openapi.json)
and compared here, so any change to the API shows in review. Then schemathesis fuzzes every
operation with generated (valid and invalid) requests: no answer may be a 5xx, and every answer must
match the documented schema.

Regenerate the golden file after an intended change with
``EDGEMILL_UPDATE_GOLDEN=1 python -m pytest tests/test_fleet_openapi.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from edgemill.fleet.app import create_app  # noqa: E402
from edgemill.fleet.config import ServerConfig  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "openapi.json"


def _app(tmp: Path, trusted_key: Path):  # type: ignore[no-untyped-def]
    config = ServerConfig(db=f"sqlite:///{tmp / 'db.sqlite'}", store=f"file://{tmp / 'store'}",
                          trusted_keys=(trusted_key,), api_key_file=tmp / "operator.key", max_upload_mb=1,
                          max_capture_mb=1, long_poll_max_s=0.2)
    return create_app(config, background=False)


def test_the_openapi_document_matches_the_committed_contract(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    document = _app(tmp_path, keypair[1]).openapi()
    text = json.dumps(document, indent=1, sort_keys=True) + "\n"
    if os.environ.get("EDGEMILL_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert GOLDEN.exists(), "no committed OpenAPI document: run with EDGEMILL_UPDATE_GOLDEN=1"
    assert json.loads(GOLDEN.read_text()) == json.loads(text), (
        "the API changed: review the difference, then run with EDGEMILL_UPDATE_GOLDEN=1 to commit it")
    paths = document["paths"]
    for path in ("/api/v1/models/{name}/versions", "/api/v1/agent/heartbeat", "/api/v1/deployments", "/healthz", "/metrics"):
        assert path in paths
    assert not any(p.startswith("/dashboard") for p in paths)


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory: pytest.TempPathFactory, keypair: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("fuzz")
    app = _app(tmp, keypair[1])
    key = (tmp / "operator.key").read_text().strip()
    with TestClient(app) as client:  # seed a few records so lookups can also succeed
        h = {"Authorization": f"Bearer {key}"}
        client.post("/api/v1/fleets", json={"name": "cams"}, headers=h)
        token = client.post("/api/v1/fleets/cams/registration-tokens", json={"uses": 1}, headers=h).json()["token"]
        device = client.post("/api/v1/agent/register", json={"token": token, "device": "cam-1"}).json()["credential"]
        client.post("/api/v1/alert-rules", json={"name": "errors", "metric": "error_rate", "threshold": 0.1}, headers=h)
        roles = {role: client.post("/api/v1/operator-keys", json={"name": f"fuzz-{role}", "role": role},
                                   headers=h).json()["key"] for role in ("viewer", "deployer")}
        client.post("/api/v1/fleets", json={"name": "others"}, headers=h)
        roles["admin-of-cams"] = client.post("/api/v1/operator-keys", headers=h, json={
            "name": "fuzz-cams-admin", "role": "admin", "fleets": ["cams"]}).json()["key"]
    app.state.fuzz_keys = {"operator": key, "device": device, **roles}
    return app


def _operations(app):  # type: ignore[no-untyped-def]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.slow
def test_no_request_gets_a_server_error(fuzzed_app) -> None:  # type: ignore[no-untyped-def]
    """Every operation, positive and negative generated cases (schemathesis + hypothesis)."""
    keys = fuzzed_app.state.fuzz_keys
    checks = [schemathesis.checks.not_a_server_error, schemathesis.checks.response_schema_conformance,
              schemathesis.checks.content_type_conformance]
    operations = _operations(fuzzed_app)
    assert len(operations) >= 25
    for operation in operations:
        who = "device" if operation.path.startswith("/api/v1/agent/") else "operator"
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def run(case) -> None:  # type: ignore[no-untyped-def]
                response = case.call(headers={"Authorization": f"Bearer {keys[who]}"})
                case.validate_response(response, checks=checks)

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters)
                assert mode == schemathesis.GenerationMode.NEGATIVE


@pytest.mark.slow
@pytest.mark.parametrize("role", ["viewer", "deployer", "admin-of-cams"])
def test_no_request_with_a_lesser_role_gets_a_server_error(fuzzed_app, role: str) -> None:  # type: ignore[no-untyped-def]
    """Every operator operation with a viewer's and a deployer's key, and an admin's limited to one fleet:
    refusals are the documented 403, never a 5xx or an undocumented answer (the admin key for every fleet
    is the test above)."""
    key = fuzzed_app.state.fuzz_keys[role]
    checks = [schemathesis.checks.not_a_server_error, schemathesis.checks.response_schema_conformance,
              schemathesis.checks.content_type_conformance]
    operations = [o for o in _operations(fuzzed_app) if not o.path.startswith("/api/v1/agent/")]
    assert len(operations) >= 25
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE))
        @settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(headers={"Authorization": f"Bearer {key}"})
            case.validate_response(response, checks=checks)

        run()
