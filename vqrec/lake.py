"""The lake: versioned, atomically committed stage outputs.

Every stage writes ``<lake>/<stage>/<version>/`` through :func:`staged_version`. A reader
only ever sees complete versions: the stage writes into a hidden temp folder, writes
``_SUCCESS`` last, renames the folder into place and then points ``CURRENT`` at it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_LAKE = "var/lake"
SUCCESS = "_SUCCESS"
CURRENT = "CURRENT"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class LakeError(RuntimeError):
    """A stage output is missing, incomplete or badly named."""


def validate_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is safe as a single path component, else raise ValueError.

    Domain names and versions come from Airflow params and CLI flags: they must never
    escape the lake (no ``/``, no ``..``, no leading dot).
    """
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(
            f"invalid {what} {name!r}: use 1-128 characters from [A-Za-z0-9._-], "
            "starting with a letter or digit, without '..'"
        )
    return name


def lake_root(lake: str | os.PathLike[str] | None = None) -> Path:
    """The lake root: the argument, else $VQREC_LAKE, else ./var/lake."""
    return Path(lake or os.environ.get("VQREC_LAKE") or DEFAULT_LAKE).resolve()


def default_version() -> str:
    """A sortable UTC timestamp, used when the caller names no version."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def sweep_temp(stage_dir: Path) -> None:
    """Remove temp folders left by killed runs of a stage."""
    if stage_dir.is_dir():
        for p in stage_dir.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _staged_folder(
    parent: Path, name: str, metadata: dict[str, Any] | None, fields: dict[str, Any]
) -> Iterator[Path]:
    """Yield ``parent/.tmp-<name>-*``; on success write ``_SUCCESS`` last, then rename it to
    ``parent/<name>`` (replacing an existing one whole); on failure remove it."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    meta = metadata if metadata is not None else {}
    try:
        yield tmp
        meta.update({**fields, "committed_at": time.time()})
        (tmp / SUCCESS).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        final = parent / name
        if final.exists():
            trash = parent / f".tmp-old-{name}-{uuid.uuid4().hex[:8]}"
            os.rename(final, trash)
            os.rename(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_version(
    lake: str | os.PathLike[str] | None,
    stage: str,
    version: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Iterator[Path]:
    """Yield a temp folder to write a stage's output into; commit it on success.

    ``metadata`` (a dict the body may still mutate) is written into ``_SUCCESS``.
    Re-running with an existing version replaces that version as a whole.
    """
    stage_dir = lake_root(lake) / validate_name(stage, "stage")
    version = validate_name(version or default_version(), "version")
    fields = {"stage": stage, "version": version}
    with _staged_folder(stage_dir, version, metadata, fields) as tmp:
        yield tmp
    _write_atomic(stage_dir / CURRENT, version + "\n")


@contextlib.contextmanager
def staged_part(
    lake: str | os.PathLike[str] | None,
    stage: str,
    version: str,
    part: str,
    metadata: dict[str, Any] | None = None,
) -> Iterator[Path]:
    """Yield a temp folder for one part of a committed version; commit it on success.

    A part is a sub-folder such as ``domains/Games``: the per-domain fine-tunes of one
    models version run in parallel, and each commits only its own part (its own
    ``_SUCCESS`` written last, then one rename), so none can lose another's output.
    Re-running replaces the part as a whole.
    """
    base = resolve_version(lake, stage, version)
    pieces = [validate_name(piece, "part") for piece in part.split("/")]
    fields = {"stage": stage, "version": version, "part": part}
    with _staged_folder(base.joinpath(*pieces[:-1]), pieces[-1], metadata, fields) as tmp:
        yield tmp


def resolve_part(
    lake: str | os.PathLike[str] | None, stage: str, version: str | None, part: str
) -> Path:
    """The folder of a committed part of a committed version (see :func:`staged_part`)."""
    path = resolve_version(lake, stage, version).joinpath(*part.split("/"))
    if not (path / SUCCESS).exists():
        raise LakeError(f"{path} is not a committed part of {stage!r} (no {SUCCESS})")
    return path


def resolve_version(
    lake: str | os.PathLike[str] | None, stage: str, version: str | None = None
) -> Path:
    """The folder of a committed version of ``stage`` (``CURRENT`` when version is None)."""
    root = lake_root(lake)
    stage_dir = root / validate_name(stage, "stage")
    if version is None:
        pointer = stage_dir / CURRENT
        if not pointer.exists():
            raise LakeError(f"no committed version of stage {stage!r} under {root}")
        version = pointer.read_text().strip()
    path = stage_dir / validate_name(version, "version")
    if not (path / SUCCESS).exists():
        raise LakeError(f"{path} is not a committed version of {stage!r} (no {SUCCESS})")
    return path


def read_success(path: Path) -> dict[str, Any]:
    """The metadata written into a committed version's ``_SUCCESS``."""
    return json.loads((Path(path) / SUCCESS).read_text())
