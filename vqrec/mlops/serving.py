"""Run MLflow's own servers as child processes: model REST serving and the tracking UI.

Both are context managers that start the real command line (``mlflow models serve``,
``mlflow server``), wait until it answers (bounded), yield its base URL, and always stop it
(SIGTERM to its process group, SIGKILL after a grace period), so that a failed test or task
never leaves a server behind. Used by the tests, by ``infra/mlflow_server.sh``'s users, and
by anyone who wants a local endpoint for ``models:/vqrec-<domain>@champion``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # The venv's bin first: `mlflow models serve --env-manager local` execs uvicorn/python
    # from PATH, and must find this interpreter's packages.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra or {})
    return env


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def _stop(proc: subprocess.Popen, grace: float = 15.0) -> int | None:
    """SIGTERM the process group, wait ``grace`` seconds, then SIGKILL it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)
    return proc.returncode


@contextlib.contextmanager
def _server(
    cmd: Sequence[str],
    ready_url: str,
    base_url: str,
    timeout: float,
    log_path: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
) -> Iterator[str]:
    log_file = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    # Own process group: uvicorn/gunicorn workers are stopped together with the parent.
    proc = subprocess.Popen(
        list(cmd), stdout=log_file, stderr=subprocess.STDOUT, env=_env(env), start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout
        while _get(ready_url) != 200:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{cmd[0]} {cmd[1]} exited with {proc.returncode} before answering "
                    f"{ready_url}" + (f"; log: {log_path}" if log_path else "")
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{ready_url} did not answer within {timeout:.0f} s"
                    + (f"; log: {log_path}" if log_path else "")
                )
            time.sleep(0.5)
        yield base_url
    finally:
        _stop(proc)
        if log_path:
            log_file.close()


@contextlib.contextmanager
def serve_model(
    model_uri: str,
    tracking_uri: str,
    port: int | None = None,
    timeout: float = 120.0,
    log_path: str | os.PathLike[str] | None = None,
    workers: int = 1,
) -> Iterator[str]:
    """``mlflow models serve -m <model_uri> --env-manager local`` on 127.0.0.1; yields its URL.

    ``tracking_uri`` resolves ``models:/`` URIs (the registry). Ready when ``/ping`` is 200.
    """
    port = port or free_port()
    cmd = [
        str(VENV_BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
        "-h", "127.0.0.1", "-p", str(port), "-w", str(workers),
    ]  # fmt: skip
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri}
    base = f"http://127.0.0.1:{port}"
    with _server(cmd, f"{base}/ping", base, timeout, log_path, env) as url:
        yield url


@contextlib.contextmanager
def tracking_server(
    backend_store_uri: str,
    artifact_root: str | os.PathLike[str],
    port: int | None = None,
    timeout: float = 120.0,
    log_path: str | os.PathLike[str] | None = None,
) -> Iterator[str]:
    """``mlflow server`` (UI + REST) over a store, one worker, on 127.0.0.1; yields its URL.

    ``--default-artifact-root`` with a local path: clients read/write artifacts directly,
    as with the default lake store. Ready when ``/health`` is 200 (~20 s on a small machine).
    """
    port = port or free_port()
    cmd = [
        str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", backend_store_uri,
        "--default-artifact-root", str(artifact_root), "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with _server(cmd, f"{base}/health", base, timeout, log_path, None) as url:
        yield url


def invoke(base_url: str, payload: Mapping[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """POST ``payload`` (``dataframe_records`` / ``dataframe_split``) to ``/invocations``.

    Returns the decoded JSON answer; an HTTP error raises RuntimeError with the server's
    message (MLflow answers bad input with 400 and a JSON error body).
    """
    request = urllib.request.Request(
        f"{base_url}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        raise RuntimeError(f"HTTP {exc.code} from {base_url}/invocations: {body}") from exc
