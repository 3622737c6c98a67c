"""Captures sent to the control plane (``capture.store = "server"``): the agent's own object store, which
uploads through its control-plane sync instead of to a bucket."""

from __future__ import annotations

import re
from typing import Protocol

from ...errors import UserError


class CaptureSink(Protocol):
    """What :class:`ServerStore` uploads through: the agent's control-plane sync (it holds the credential)."""

    def upload_capture(self, capture_id: str, model: str, data: bytes) -> None:
        """PUT the record; raises when it was not stored (the uploader retries with backoff)."""

    def capture_url(self, capture_id: str) -> str:
        """Where the control plane serves that capture."""


_KEY = re.compile(r"(?P<device>[^/]+)/(?P<model>[^/]+)/\d{4}/\d{2}/\d{2}/(?P<id>[^/]+)\.(?P<ext>emc|json)")


class ServerStore:
    """Captures uploaded to the control plane (``capture.store = "server"``), with the device's own
    credential: ``PUT /api/v1/agent/captures/{capture_id}?model=NAME`` with the ``.emc`` bytes.

    The server files each capture by device, model and id, so an upload repeated after a crash leaves
    one capture. JSON summaries (``embed_limit_bytes``) are not sent: the server reads the record
    itself. The device cannot read captures back (``get``/``list``); the server's API can.
    """

    def __init__(self, sink: CaptureSink) -> None:
        self.sink = sink

    @staticmethod
    def _parse(key: str) -> tuple[str, str, str]:
        match = _KEY.fullmatch(key)
        if match is None:
            raise UserError("not a capture object key", value=key,
                            expected="DEVICE/MODEL/YYYY/MM/DD/ID.emc", fix="upload records the capture queue made")
        return match["model"], match["id"], match["ext"]

    def put(self, key: str, data: bytes) -> None:
        model, capture_id, ext = self._parse(key)
        if ext == "emc":
            self.sink.upload_capture(capture_id, model, bytes(data))

    def get(self, key: str) -> bytes:
        raise UserError("captures sent to the control plane cannot be read back from the device", value=key,
                        fix="read them through the server's API or its object store")

    def list(self, prefix: str = "") -> list[str]:
        raise UserError("captures sent to the control plane cannot be listed from the device", value=prefix,
                        fix="list them through the server's API")

    def url(self, key: str) -> str:
        return self.sink.capture_url(self._parse(key)[1])
