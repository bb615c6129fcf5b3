"""One clear line for every way a Spark entry point can fail, and the JVM's log out of sight.

``vqrec clean`` and ``vqrec encode`` both run their job through :func:`run_job`: a known
failure (bad input, a broken lake, an unreadable file, a full disk) ends as one line on
stderr, ``<prog>: <what went wrong>``, and an exit code; anything else is a bug and keeps
its traceback. Both stages write through ``vqrec.lake.store.staged_version``, so by the time
the line is printed the temp folder is gone and ``CURRENT`` is untouched.

The JVM (spark-submit's launcher, log4j, executor stacks, Python workers' own stderr) writes
to file descriptor 2. :func:`jvm_log_file` names a file under ``$VQREC_LOG_DIR`` (default
``var/logs`` under the working directory, beside the default lake ``var/lake``);
``vqrec.spark.common.spark_session`` starts the JVM with its fd 2 pointing there, so a
failed task's Java stack lands in that file, which the one-line message names.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException

NO_SPACE = "No space left on device"
_READ_FAILED = re.compile(r"while reading file (\S+?)\.?(?:\s|$)")
_WRITING = re.compile(r"writing rows to (\S+?)\.?(?:\s|$)")


# JVM logs kept in the log folder (the newest; about two weeks of nightlies)
KEEP_JVM_LOGS = 50


def jvm_log_file(app_name: str) -> Path | None:
    """A fresh log file for one JVM (``<log dir>/spark-<app>-<UTC time>-<pid>.log``), or
    None when the log folder cannot be made (then the JVM keeps the terminal) or under
    spark-submit (its JVM started first; its output is the submitter's to keep)."""
    if os.environ.get("SPARK_ENV_LOADED"):
        return None
    folder = Path(os.environ.get("VQREC_LOG_DIR", "var/logs"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    _drop_old_logs(folder, KEEP_JVM_LOGS)
    return (folder / f"spark-{app_name}-{stamp}-{os.getpid()}.log").absolute()


def _drop_old_logs(folder: Path, keep: int) -> None:
    """Delete all but the ``keep - 1`` newest JVM logs, making room for one more: a nightly
    starts several JVMs a night, and nothing else ever empties the folder."""
    dated = []
    for log in folder.glob("spark-*.log"):
        try:
            dated.append((log.stat().st_mtime, log))
        except OSError:  # another run's rotation got there first
            continue
    for _, old in sorted(dated, reverse=True)[max(keep - 1, 0) :]:
        try:
            old.unlink(missing_ok=True)
        except OSError:  # not ours to remove (permissions): it stays, the run goes on
            continue


def _java_causes(err: BaseException) -> list[tuple[str, str]]:
    """(simple class name, one-line message) of a Py4JJavaError's Java exception and its
    causes, outermost first; empty when there is none or the JVM is gone."""
    java = getattr(err, "java_exception", None)
    causes: list[tuple[str, str]] = []
    try:
        while java is not None and len(causes) < 20:
            message = java.getMessage() or ""
            causes.append((java.getClass().getSimpleName(), " ".join(message.split())))
            java = java.getCause()
    except Exception:  # a dead JVM: the Python side's first line will do
        return []
    return causes


def spark_error(err: BaseException) -> str:
    """One line that says what Spark could not do, without the Java stack: "could not read
    <file> (EOFException: Unexpected end of input stream)" when a file was unreadable.

    A Py4JJavaError's own first line is only "An error occurred while calling o123.count.":
    the file name is in the Java exception's message (repeated once per failed task when
    adaptive execution aborts several stages), the reason in its innermost cause.
    """
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    causes = _java_causes(err)
    root_name, root_message = causes[-1] if causes else ("", "")
    root = f"{root_name}: {root_message}" if root_message else root_name
    failed = _READ_FAILED.search(" ".join(m for _, m in causes) or text)
    if failed:
        return f"could not read {failed.group(1)}" + (f" ({root})" if len(causes) > 1 else "")
    if not causes:
        return first
    name, message = causes[0]
    line = f"{name}: {message}" if message else name
    return line + (f" (cause: {root})" if len(causes) > 1 else "")


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen and len(seen) < 20:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def disk_full(err: BaseException, where: str | os.PathLike[str] | None = None) -> str | None:
    """ "no space left on device while writing <path>" when ``err`` (Python's OSError ENOSPC,
    pyarrow's, or a Java IOException inside a Spark job, anywhere in its cause chain) is a
    full disk; else None. ``where`` names the place when the error itself names none."""
    for e in _chain(err):
        causes = _java_causes(e) if isinstance(e, Py4JJavaError) else []
        messages = [m for _, m in causes] or [str(e)]
        errno_28 = isinstance(e, OSError) and e.errno == errno.ENOSPC
        if not errno_28 and not any(NO_SPACE in m for m in messages):
            continue
        path = getattr(e, "filename", None)
        if path is None:
            found = _WRITING.search(" ".join(messages))
            path = found.group(1) if found else where
        return f"disk full: no space left on device while writing {path or 'the lake'}"
    return None


def run_job(
    prog: str,
    job: Callable[[], int],
    refused: dict[type[BaseException], int],
    *,
    where: str | os.PathLike[str] | None = None,
    log_file: Path | None = None,
) -> int:
    """Run ``job`` (which returns the exit code); turn a known failure into one stderr line.

    ``refused`` maps the stage's own error types to exit codes (first match wins: list a
    subclass before its base). Checked before them: a full disk (exit 1, named with the path
    being written, or ``where``). After them: a Spark failure (exit 1, "Spark failed" and
    :func:`spark_error`) and any other OSError (exit 1). ``log_file``, the JVM's log, is
    named at the end of a Spark failure's line: that is where its stack went.
    """
    try:
        return job()
    except Exception as err:  # noqa: BLE001 - sorted below; the unknown ones re-raised
        code, line = _describe(err, refused, where)
        if code is None:
            raise
        if log_file is not None and code == 1 and isinstance(err, Py4JJavaError | PySparkException):
            line += f" (Spark log: {log_file})"
        print(f"{prog}: {line}", file=sys.stderr, flush=True)
        return code


def _describe(
    err: Exception, refused: dict[type[BaseException], int], where: str | os.PathLike[str] | None
) -> tuple[int | None, str]:
    full = disk_full(err, where)
    if full:
        return 1, f"error: {full}; nothing committed"
    for kind, code in refused.items():
        if isinstance(err, kind):
            return code, f"error: {err}"
    if isinstance(err, Py4JJavaError | PySparkException):
        return 1, f"Spark failed, nothing committed: {spark_error(err)}"
    if isinstance(err, OSError):
        return 1, f"error: {err}; nothing committed"
    return None, ""
