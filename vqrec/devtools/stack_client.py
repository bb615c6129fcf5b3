r"""Talk to a running stack over REST: trigger and follow DAG runs, read the MLflow registry.

What an operator (or the local-stack test) does from outside the stack, with the standard
library only: the Airflow 3 public API (``/api/v2``, a JWT from ``/auth/token``) and
MLflow's REST API (``/api/2.0/mlflow``). ``infra/stack.sh trigger`` is this module's CLI.

    python -m vqrec.devtools.stack_client --airflow URL --passwords FILE trigger vqrec_nightly \
        --date YYYY-MM-DD --wait
    python -m vqrec.devtools.stack_client --mlflow URL models
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

TERMINAL_STATES = {"success", "failed"}


class StackError(RuntimeError):
    """A REST call failed or a run did not succeed: the message says which and why."""


def _request(method: str, url: str, body: Any = None, token: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:500]
        raise StackError(f"{method} {url}: HTTP {err.code}: {detail}") from None
    except urllib.error.URLError as err:
        raise StackError(f"{method} {url}: {err.reason} (is the stack up?)") from None
    return json.loads(raw) if raw else None


class AirflowClient:
    """The Airflow 3 public REST API, authenticated as one simple-auth-manager user."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base = base_url.rstrip("/")
        login = {"username": username, "password": password}
        self.token = _request("POST", f"{self.base}/auth/token", login)["access_token"]

    @classmethod
    def from_passwords_file(cls, base_url: str, path: str | Path, user: str = "admin"):
        """Log in with the password the stack generated for ``user``."""
        passwords = json.loads(Path(path).read_text())
        return cls(base_url, user, passwords[user])

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return _request(method, f"{self.base}/api/v2/{path.lstrip('/')}", body, self.token)

    def dag(self, dag_id: str) -> dict[str, Any]:
        return self.call("GET", f"dags/{dag_id}")

    def unpause(self, dag_id: str) -> None:
        self.call("PATCH", f"dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, logical_date: str, conf: dict | None = None) -> str:
        """Start a run for ``logical_date`` (YYYY-MM-DD or ISO time); returns its run id."""
        if len(logical_date) == 10:
            logical_date += "T00:00:00Z"
        body = {"logical_date": logical_date, "conf": conf or {}}
        return self.call("POST", f"dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.call("GET", f"dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}")

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """task id (with map index for mapped tasks) -> the task instance as the API gives
        it (state, queue, hostname, pool, try_number, ...)."""
        quoted = urllib.parse.quote(run_id)
        doc = self.call("GET", f"dags/{dag_id}/dagRuns/{quoted}/taskInstances?limit=100")
        return {
            ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""): ti
            for ti in doc["task_instances"]
        }

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        """task id (with map index for mapped tasks) -> state."""
        return {key: ti["state"] for key, ti in self.task_instances(dag_id, run_id).items()}

    def wait(self, dag_id: str, run_id: str, timeout: float, poll: float = 5.0) -> dict:
        """Poll until the run ends; a failed or timed-out run raises with its task states."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] != last:
                print(f"{dag_id} {run_id}: {run['state']}", flush=True)
                last = run["state"]
            if run["state"] in TERMINAL_STATES:
                break
            if time.monotonic() > deadline:
                states = self.task_states(dag_id, run_id)
                raise StackError(
                    f"{dag_id} {run_id} still {run['state']} after {timeout}s: {states}"
                )
            time.sleep(poll)
        if run["state"] != "success":
            states = self.task_states(dag_id, run_id)
            failed = sorted(k for k, v in states.items() if v not in {"success", "skipped"})
            raise StackError(f"{dag_id} {run_id} {run['state']}; tasks not successful: {failed}")
        return run


def registered_models(mlflow_url: str) -> dict[str, dict[str, str]]:
    """Registered model name -> {alias: version}, read through MLflow's REST API."""
    url = f"{mlflow_url.rstrip('/')}/api/2.0/mlflow/registered-models/search?max_results=1000"
    doc = _request("GET", url)
    return {
        m["name"]: {a["alias"]: a["version"] for a in m.get("aliases", [])}
        for m in doc.get("registered_models", [])
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vqrec.devtools.stack_client", description=__doc__
    )
    parser.add_argument("--airflow", help="Airflow base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--passwords", help="the simple auth manager's passwords JSON file")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--mlflow", help="MLflow base URL, e.g. http://127.0.0.1:5000")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dag", help="show a DAG (fails until it is parsed)").add_argument("dag_id")
    trig = sub.add_parser("trigger", help="unpause and trigger a DAG run")
    trig.add_argument("dag_id")
    trig.add_argument("--date", required=True, help="logical date, YYYY-MM-DD")
    trig.add_argument("--wait", action="store_true", help="wait for the run to end")
    trig.add_argument("--timeout", type=float, default=3600)
    sub.add_parser("models", help="registered models and their aliases (MLflow)")
    args = parser.parse_args(argv)
    try:
        if args.command == "models":
            if not args.mlflow:
                parser.error("models needs --mlflow")
            print(json.dumps(registered_models(args.mlflow), indent=2, sort_keys=True))
            return 0
        if not (args.airflow and args.passwords):
            parser.error(f"{args.command} needs --airflow and --passwords")
        client = AirflowClient.from_passwords_file(args.airflow, args.passwords, args.user)
        if args.command == "dag":
            dag = client.dag(args.dag_id)
            print(f"{dag['dag_id']}: paused={dag['is_paused']}")
            return 0
        client.unpause(args.dag_id)
        run_id = client.trigger(args.dag_id, args.date)
        print(f"triggered {args.dag_id} run {run_id}", flush=True)
        if args.wait:
            client.wait(args.dag_id, run_id, args.timeout)
        return 0
    except (StackError, OSError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
