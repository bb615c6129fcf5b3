"""A line per task of an ``airflow dags test`` run, as it starts and ends, read from its log.

``infra/main.sh`` sends Airflow's (long) output to a log file and runs this beside it:

    python -m vqrec.devtools.progress --log LOG --lake LAKE --pid PID

It follows ``LOG`` until process ``PID`` (the ``airflow dags test``) exits and prints, for
every task, when it starts and, when it ends, its wall time and one key figure read from
what the task committed to the lake (rows kept, texts encoded, codes, epochs and valid
NDCG@10, champions). Airflow marks a task's start and end with ``[DAG TEST] starting
task_id=...`` and ``[DAG TEST] end task task_id=...``; a failed task's state is
``new_state=failed``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from vqrec.lake.store import LakeError, pid_alive, read_success, resolve_version

_START = re.compile(r"\[DAG TEST\] starting task_id=(\S+) map_index=(-?\d+)")
_END = re.compile(r"\[DAG TEST\] end task task_id=(\S+) map_index=(-?\d+)")
_FAILED = re.compile(r"new_state=(failed|upstream_failed)")
# What a task says in its own log that beats a figure read from the lake.
_NOTES = {
    re.compile(r"incremental run: no pre-training"): "skipped: incremental, the champion "
    "backbone is kept",
}
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z?\s")


def _seconds(line: str) -> float:
    """The log line's own timestamp (Airflow's UTC ISO prefix), else now."""
    m = _STAMP.match(line)
    return datetime.fromisoformat(m.group(1)).timestamp() if m else time.time()


def _current(lake: Path, stage: str) -> Path | None:
    try:
        return resolve_version(lake, stage)
    except LakeError:
        return None


def _clean(lake: Path) -> str:
    folder = _current(lake, "clean")
    domains = read_success(folder).get("domains", {}) if folder else {}
    kept = sum(d["kept"] for d in domains.values())
    rows = sum(d["rows_in"] for d in domains.values())
    return f"{len(domains)} domains, {kept:,} of {rows:,} rows kept"


def _encode(lake: Path) -> str:
    folder = _current(lake, "embeddings")
    meta = read_success(folder) if folder else {}
    return f"{meta.get('items', 0):,} items: {meta.get('encoded', 0):,} texts encoded, " + (
        f"{meta.get('reused', 0):,} from the cache"
    )


def _codes(lake: Path) -> str:
    folder = _current(lake, "codes")
    if folder is None:
        return ""
    stats = json.loads((folder / "stats.json").read_text())["domains"]
    shares = ", ".join(f"{d} {s['unique_code_share']:.3f}" for d, s in sorted(stats.items()))
    return f"unique-code share {shares}"


def _metrics(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _pretrain(lake: Path) -> str:
    folder = _current(lake, "models")
    metrics = _metrics(folder / "backbone" / "metrics.json") if folder else {}
    if not metrics:
        return ""
    epochs = sum(h.get("phase", "train") == "train" for h in metrics.get("history", []))
    valid = metrics.get("valid", {}).get("ndcg@10", 0.0)
    return f"{epochs} epochs, best valid NDCG@10 {valid:.4f} (epoch {metrics.get('best_epoch')})"


def _finetune(lake: Path, seen: set[str]) -> str:
    """The domains committed since the last finetune line (mapped tasks end one by one)."""
    folder = _current(lake, "models")
    parts = []
    for metrics_file in sorted(folder.glob("domains/*/metrics.json")) if folder else []:
        domain = metrics_file.parent.name
        if domain in seen:
            continue
        seen.add(domain)
        m = _metrics(metrics_file)
        epochs = sum(h.get("phase") == "train" for h in m.get("history", []))
        parts.append(
            f"{domain}: {epochs} epochs, valid NDCG@10 {m['valid'].get('ndcg@10', 0):.4f}, "
            f"test {m['test'].get('ndcg@10', 0):.4f}"
        )
    return "; ".join(parts)


def _recommend(lake: Path) -> str:
    folder = _current(lake, "recommendations")
    domains = read_success(folder).get("domains", {}) if folder else {}
    return ", ".join(
        f"{d} {s['users']:,} users ({s['users_per_s']:,.0f}/s)" if "users" in s else f"{d} skipped"
        for d, s in sorted(domains.items())
    )


def key_figures(lake: Path) -> dict[str, Callable[[], str]]:
    """task_id -> the one-line figure printed when it ends."""
    seen: set[str] = set()
    return {
        "clean": lambda: _clean(lake),
        "encode": lambda: _encode(lake),
        "codes": lambda: _codes(lake),
        "pretrain": lambda: _pretrain(lake),
        "finetune": lambda: _finetune(lake, seen),
        "recommend": lambda: _recommend(lake),
    }


def follow(path: Path, pid: int | None, poll: float = 1.0) -> Iterator[str]:
    """Lines appended to ``path`` until process ``pid`` has exited (then the rest)."""
    while not path.exists():
        if pid is not None and not pid_alive(pid):
            return
        time.sleep(poll)
    with open(path, encoding="utf-8", errors="replace") as f:
        buffer = ""
        while True:
            chunk = f.read()
            if chunk:
                buffer += chunk
                *lines, buffer = buffer.split("\n")
                yield from lines
                continue
            if pid is None or not pid_alive(pid):
                if buffer:
                    yield buffer
                return
            time.sleep(poll)


def report(lines: Iterator[str], lake: Path, out=sys.stdout) -> int:
    """Print a line per task start/end; returns the number of failed tasks."""
    figures = key_figures(lake)
    started: dict[tuple[str, str], float] = {}
    failed = 0
    state_failed = False
    note = ""
    for line in lines:
        if _FAILED.search(line):
            state_failed = True
        note = next((text for pattern, text in _NOTES.items() if pattern.search(line)), note)
        if m := _START.search(line):
            started[m.groups()] = _seconds(line)
            state_failed, note = False, ""
            name = m.group(1) + (f"[{m.group(2)}]" if m.group(2) != "-1" else "")
            print(f"  > {name} ...", file=out, flush=True)
        elif m := _END.search(line):
            seconds = _seconds(line) - started.pop(m.groups(), _seconds(line))
            name = m.group(1) + (f"[{m.group(2)}]" if m.group(2) != "-1" else "")
            if state_failed:
                failed += 1
                print(f"  x {name} FAILED after {seconds:.0f} s", file=out, flush=True)
                continue
            try:
                figure = note or figures.get(m.group(1), lambda: "")()
            except (OSError, KeyError, ValueError, LakeError):
                figure = ""
            print(f"  ok {name} {seconds:.0f} s" + (f": {figure}" if figure else ""),
                  file=out, flush=True)  # fmt: skip
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vqrec.devtools.progress")
    parser.add_argument("--log", required=True, type=Path, help="the airflow dags test log")
    parser.add_argument("--lake", required=True, type=Path)
    parser.add_argument("--pid", type=int, help="follow until this process exits")
    args = parser.parse_args(argv)
    failed = report(follow(args.log, args.pid), args.lake)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
