"""Start a real `edgemill agent` process on 127.0.0.1 for a test, and stop it (gracefully or by SIGKILL)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class AgentProcess:
    """``with AgentProcess(config_path) as agent: agent.address`` — the agent's stderr is kept for asserts."""

    def __init__(self, config: Path | None = None, *args: str, env: dict[str, str] | None = None) -> None:
        self.command = [sys.executable, "-m", "edgemill", "agent"] + (["--config", str(config)] if config else []) + list(args)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.addresses: list[str] = []
        self.stderr_lines: list[str] = []
        self.start_timeout_s = START_TIMEOUT_S

    def start(self) -> AgentProcess:
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=self.env)
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        line_box: list[str] = []
        reader = threading.Thread(target=lambda: line_box.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(self.start_timeout_s)
        line = line_box[0] if line_box else ""
        if "serving on" not in line:
            self.kill()
            raise RuntimeError(f"agent did not start within {self.start_timeout_s:g} s: {line!r}\n" + self.stderr())
        self.addresses = line.split("serving on", 1)[1].strip().split(", ")
        return self

    def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    @property
    def address(self) -> str:
        return next(a for a in self.addresses if not a.startswith(("unix:", "http")))

    @property
    def unix(self) -> str:
        return next(a for a in self.addresses if a.startswith("unix:"))

    @property
    def metrics_url(self) -> str:
        return next(a for a in self.addresses if a.startswith("http"))

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(20)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def stop_all(agents: Iterable[AgentProcess]) -> None:
    """Stop every agent, carrying on past one that fails to stop (a test's cleanup must reach them all)."""
    for agent in agents:
        try:
            agent.__exit__(None, None, None)
        except Exception:  # noqa: BLE001 - stop the others regardless
            pass


def fleet_agent(tmp: Path, name: str, server_url: str, token: str, public_key: Path, heartbeat_s: float = 0.5,
                long_poll_s: float = 2, **sections: dict[str, Any]) -> AgentProcess:
    """An agent of fleet "cams" that registers with ``token`` and heartbeats to ``server_url`` (its home
    is ``tmp / name``); ``sections`` add or replace config sections (e.g. ``capture={...}``)."""
    home = tmp / name
    home.mkdir()
    (home / "token").write_text(token + "\n")
    config = write_config(home / "agent.toml", {
        "device": {"name": name, "fleet": "cams"},
        "listen": {"address": f"127.0.0.1:{free_port()}", "metrics_address": ""},
        "models": {"directory": "models", "trusted_keys": [str(public_key)]},
        "server": {"url": server_url, "token_file": "token", "heartbeat_interval_s": heartbeat_s,
                   "long_poll_s": long_poll_s, "request_timeout_s": 10, "max_backoff_s": 2},
        **sections,
    })
    return AgentProcess(config)
