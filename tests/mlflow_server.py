"""A real ``mlflow server`` on 127.0.0.1 for tests, started and stopped by PID.

Use the fixture (``from mlflow_server import mlflow_server  # noqa: F401`` in a test module, or
``pytest_plugins``) or the context manager directly::

    with running_mlflow_server(tmp_path) as srv:
        Tracker(srv.uri, "exp") ...

The server runs in its own session (process group); stopping it terminates the whole group, so
no uvicorn/gunicorn worker or job runner outlives the test. Artifacts are proxied by the server
(``--artifacts-destination``), so clients upload through the HTTP URI, as on a real server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 with nothing listening (free at the time of the call)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class MlflowServer:
    uri: str
    port: int
    pid: int
    backend_store_uri: str
    artifacts_destination: Path
    log_file: Path

    def rest(self, endpoint: str, body: dict | None = None, timeout: float = 10.0) -> dict:
        """Call the REST API: ``rest("runs/search", {...})`` POSTs JSON; without body: GET.

        ``endpoint`` is relative to ``/api/2.0/mlflow/`` unless it starts with ``/``.
        """
        url = endpoint if endpoint.startswith("/") else f"/api/2.0/mlflow/{endpoint}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.uri + url,
            data=data,
            method="POST" if data is not None else "GET",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else {}

    def get_bytes(self, path: str, timeout: float = 10.0) -> bytes:
        with urllib.request.urlopen(self.uri + path, timeout=timeout) as resp:
            return resp.read()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def server_command(port: int, backend_store_uri: str, artifacts_destination: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        HOST,
        "--port",
        str(port),
        "--backend-store-uri",
        backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts_destination),
        "--workers",
        "1",
    ]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group led by ``proc`` (started with ``start_new_session=True``),
    then SIGKILL whatever is left; returns when no member of the group remains."""
    pgid = proc.pid  # session leader: its PID is the group ID
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(pgid):
                return
            time.sleep(0.1)
    proc.wait(timeout=5)
    if _group_alive(pgid):  # pragma: no cover
        raise RuntimeError(f"processes of group {pgid} survived SIGKILL")


@contextlib.contextmanager
def running_mlflow_server(
    workdir: Path,
    backend_store_uri: str | None = None,
    artifacts_destination: Path | None = None,
    start_timeout_s: float = 90.0,
):
    """Start ``mlflow server`` on a free 127.0.0.1 port, wait for ``/health``, yield an
    :class:`MlflowServer`, and stop the whole process group afterwards."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    backend_store_uri = backend_store_uri or f"sqlite:///{workdir / 'srv.db'}"
    artifacts_destination = Path(artifacts_destination or workdir / "artifacts")
    port = free_port()
    log_file = workdir / "mlflow-server.log"
    cmd = server_command(port, backend_store_uri, artifacts_destination)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    # The server's background job runner (huey consumers, for GenAI scorers) is not needed here.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    srv = MlflowServer(
        uri=f"http://{HOST}:{port}",
        port=port,
        pid=proc.pid,
        backend_store_uri=backend_store_uri,
        artifacts_destination=artifacts_destination,
        log_file=log_file,
    )
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {proc.returncode}:\n{srv.log_tail()}"
                )
            try:
                if srv.get_bytes("/health", timeout=2).strip() == b"OK":
                    break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server not healthy after {start_timeout_s:.0f} s:\n{srv.log_tail()}"
                )
            time.sleep(0.25)
        yield srv
    finally:
        stop_process_group(proc)


@pytest.fixture
def mlflow_server(tmp_path_factory):
    """A running ``mlflow server`` (SQLite backend, proxied artifacts) in a fresh folder."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as srv:
        yield srv
