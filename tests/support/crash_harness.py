"""Kill a real ``vqrec`` process at a chosen point: a test harness, not a mock.

The stage runs as its own process (``python -c HOOK <spec> <vqrec args>``, which calls
``vqrec.cli.main``) in a new session, so its Spark JVM and Python workers share its process
group. A PEP 578 audit hook watches the process's own file operations (or a profile hook
one function call); when the chosen operation is about to happen (the Nth ``os.rename`` of
a staged Parquet part, ``open`` of ``_SUCCESS`` for writing, ``vqrec.mlops.registry.promote``
being called...), the hook writes a marker file and sleeps. The test sees the marker,
checks that the stage is mid-write, and SIGKILLs the whole process group. Nothing in the
stage is replaced or skipped: the hook only decides *when* the real kill lands, so every
crash point is reached on every run instead of by luck of timing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

# Runs in the child before vqrec is imported. A trigger is (event, pattern): an audit event
# ("os.rename", "os.mkdir", "open" for writing, "shutil.rmtree") whose first argument (the
# path; the source of a rename) matches the fnmatch pattern, or ("call", "module:function").
HOOK = r"""
import fnmatch, json, os, sys, threading, time
spec = json.loads(sys.argv[1])
state = {"seen": 0, "paused": False}

def pause(what):
    state["seen"] += 1
    if state["seen"] < spec["nth"] or state["paused"]:
        return
    state["paused"] = True
    tmp = spec["marker"] + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"at": what, "pid": os.getpid()}, fh)
    os.replace(tmp, spec["marker"])
    while True:  # until the test kills the process group
        time.sleep(60)

def writes(args):
    mode, flags = (list(args[1:3]) + [None, None])[:2]
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return bool((flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))

def audit(event, args):
    if state["paused"] or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    for name, pattern in spec["triggers"]:
        if name == event and fnmatch.fnmatch(os.fsdecode(args[0]), pattern):
            if event != "open" or writes(args):
                pause(f"{event} {os.fsdecode(args[0])}")
            return

calls = {tuple(p.split(":")) for name, p in spec["triggers"] if name == "call"}

def profile(frame, event, arg):
    if event == "call" and not state["paused"]:
        if (frame.f_globals.get("__name__"), frame.f_code.co_name) in calls:
            pause("call " + ":".join((frame.f_globals["__name__"], frame.f_code.co_name)))

sys.addaudithook(audit)
if calls:
    sys.setprofile(profile)
    threading.setprofile(profile)
from vqrec.cli import main
sys.exit(main(sys.argv[2:]))
"""


def stage_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a stage process: this venv first, one thread per process."""
    env = dict(os.environ)
    # MLflow exports the tracking URI of whatever store this process used last: the stage
    # must find its lake's own store, as a fresh Airflow task would.
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env.update(
        PYSPARK_PYTHON=sys.executable,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
    )
    env.update(extra or {})
    return env


@dataclass
class Paused:
    """A stage process stopped at its crash point, waiting to be killed."""

    proc: subprocess.Popen
    at: str  # the operation it was about to do
    log: Path


def start_paused(
    argv: list[str],
    triggers: list[tuple[str, str]],
    workdir: Path,
    nth: int = 1,
    env: dict[str, str] | None = None,
    limit_s: float = 600.0,
) -> Paused:
    """Start ``vqrec <argv>`` and return once it is about to do the ``nth`` trigger.

    Fails (with the process's log) if it exits without reaching the crash point. ``limit_s``
    only bounds a hung test; nothing is asserted about time.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    marker = workdir / f"paused-{time.monotonic_ns()}.json"
    log = marker.with_suffix(".log")
    spec = json.dumps({"triggers": triggers, "nth": nth, "marker": str(marker)})
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOOK, spec, *argv],
            cwd=workdir,
            env=stage_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the JVM and workers die with it
        )
    deadline = time.monotonic() + limit_s
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"vqrec {argv[0]} exited ({proc.returncode}) before reaching the crash point "
                f"{triggers} #{nth}:\n{_tail(log)}"
            )
        if time.monotonic() > deadline:
            kill(Paused(proc, "", log))
            raise TimeoutError(f"vqrec {argv[0]} never reached {triggers}:\n{_tail(log)}")
        time.sleep(0.05)
    return Paused(proc, json.loads(marker.read_text())["at"], log)


def kill(paused: Paused) -> int:
    """SIGKILL the stage's whole process group; return once none of it is left running."""
    pgid = paused.proc.pid
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    code = paused.proc.wait()
    for _ in range(600):  # the JVM and Python workers are reaped by init: wait for them
        if not _group_alive(pgid):
            break
        time.sleep(0.05)
    return code


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def run_cli(
    argv: list[str], workdir: Path, env: dict[str, str] | None = None, limit_s: float = 600.0
) -> subprocess.CompletedProcess:
    """``vqrec <argv>`` as a separate process, to completion; fails with its output if rc != 0."""
    workdir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "vqrec.cli", *argv],
        cwd=workdir,
        env=stage_env(env),
        capture_output=True,
        text=True,
        timeout=limit_s,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"vqrec {argv[0]} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
            f"{done.stderr[-5000:]}"
        )
    return done


def epochs_run(log_text: str) -> list[tuple[str, int]]:
    """The (phase, epoch) lines a training process printed, in order (``[train 2] loss ...``)."""
    return [(m[1], int(m[2])) for m in re.finditer(r"^\[(\w+) (\d+)\] loss", log_text, re.M)]


def _tail(path: Path, chars: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-chars:]


def read_log(paused: Paused) -> str:
    return paused.log.read_text(errors="replace")


def file_bytes(folder: Path, pattern: str = "**/*") -> dict[str, Any]:
    """relative path -> bytes of every file under ``folder`` matching ``pattern``."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.glob(pattern))
        if p.is_file()
    }
