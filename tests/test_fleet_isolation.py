"""The control plane and the device agent share only wire contracts and ``edgemill.captures``: the fleet
imports, builds its app, and accepts and serves a capture with ``edgemill.agent`` unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parents[1]

_CHILD = textwrap.dedent('''
    import sys

    class BlockAgent:
        def find_spec(self, name, path=None, target=None):
            if name == "edgemill.agent" or name.startswith("edgemill.agent."):
                raise ImportError(f"blocked for this test: {name}")
            return None

    sys.meta_path.insert(0, BlockAgent())
    import time
    from pathlib import Path

    import numpy as np
    from fastapi.testclient import TestClient

    from edgemill.captures.record import CaptureRecord
    from edgemill.fleet.app import create_app
    from edgemill.fleet.config import ServerConfig

    folder = Path(sys.argv[1])
    config = ServerConfig(db=f"sqlite:///{folder / 'db.sqlite'}", store=f"file://{folder / 'store'}",
                          api_key_file=folder / "operator.key")
    with TestClient(create_app(config, background=False)) as client:
        client.headers["Authorization"] = f"Bearer {(folder / 'operator.key').read_text().strip()}"
        assert client.post("/api/v1/fleets", json={"name": "cams"}).status_code == 201
        token = client.post("/api/v1/fleets/cams/registration-tokens", json={}).json()["token"]
        reply = client.post("/api/v1/agent/register", json={"token": token, "device": "cam-1", "tags": {}},
                            headers={"Authorization": ""})
        assert reply.status_code == 201, reply.text
        device = {"Authorization": f"Bearer {reply.json()['credential']}"}
        record = CaptureRecord(capture_id="c-1", model="m", model_version="1.0.0", device="cam-1",
                               created_unix=time.time(), inputs={"x": np.ones((1, 2), np.float32)},
                               outputs={"y": np.zeros((1, 1), np.float32)}, auxiliary={}, sampled=False)
        reply = client.put("/api/v1/agent/captures/c-1", params={"model": "m"}, content=record.encode(), headers=device)
        assert reply.status_code == 201, reply.text
        assert [c["capture_id"] for c in client.get("/api/v1/captures").json()] == ["c-1"]
        assert client.get("/api/v1/captures/cam-1/c-1").content == record.encode()
    assert not [m for m in sys.modules if m == "edgemill.agent" or m.startswith("edgemill.agent.")]
    print("isolated ok")
''')


def test_the_fleet_runs_with_the_agent_package_blocked(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert run.returncode == 0 and "isolated ok" in run.stdout, run.stdout[-3000:] + run.stderr[-5000:]
