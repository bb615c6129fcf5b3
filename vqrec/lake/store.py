"""The lake: versioned, atomically committed stage outputs.

Every stage writes ``<lake>/<stage>/<version>/`` through :func:`staged_version`. A reader
only ever sees complete versions: the stage writes into a hidden temp folder, writes
``_SUCCESS`` last, renames the folder into place (an atomic swap when it replaces an
existing version) and then points ``CURRENT`` at it.

Just before ``_SUCCESS`` the store writes the folder's manifest (vqrec.lake.manifest: every
file's size, CRC-32 and Parquet row count), and :func:`resolve_version` /
:func:`resolve_part`, which every reader goes through, check the version and each part
committed inside it against theirs: a file deleted, truncated, overwritten or added after
the commit is a one-line :class:`LakeError` naming it, never a smaller output.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vqrec.lake.manifest import (
    MANIFEST,
    TEMP_PREFIX,
    find_damage,
    list_files,
    read_manifest,
    write_manifest,
)

DEFAULT_LAKE = "var/lake"
SUCCESS = "_SUCCESS"
CURRENT = "CURRENT"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class LakeError(RuntimeError):
    """A stage output is missing, incomplete or badly named."""


class NotInLake(LakeError):
    """No committed version (or part) of that name: never written, not finished, or swept.
    The one LakeError that means "absent"; :func:`find_version` / :func:`find_part` turn it
    into None for the callers to whom absence is a normal answer."""


class DamagedVersion(LakeError):
    """A committed version or part whose files no longer match its manifest, or that has
    none to check them by. A caller that takes a LakeError for "not there (yet)" should let
    this one through: the output is there, and reading it would give wrong results."""


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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A hidden temp path next to ``path``; when the block succeeds it replaces ``path`` in
    one ``os.replace``, so a reader sees the old file or the new one, never half of one.
    On failure the temp file is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the platform or file system has no such call (the caller falls back
    to two renames). Replacing a committed version must never leave a moment in which its
    name points at nothing: a reader, or a stage killed right then, would find it gone.
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


OWNER = ".owner"  # in a temp folder: "<host> <pid>" of its writer (removed at the commit)
STALE_AFTER_S = 24 * 3600  # a temp folder of another host (or without owner) this old: swept


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _abandoned(tmp: Path) -> bool:
    """No live writer owns ``tmp``: its writer on this host is gone, or it is older than
    :data:`STALE_AFTER_S` (another host's writer, whose process this host cannot see)."""
    try:
        host, pid = (tmp / OWNER).read_text().split()
    except (OSError, ValueError):
        host, pid = "", "0"
    if host == socket.gethostname():
        return not pid_alive(int(pid))
    try:
        return time.time() - tmp.stat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:
        return False


def sweep_temp(stage_dir: Path) -> list[Path]:
    """Remove the temp folders (``.tmp-*``) of killed writers in ``stage_dir``; a folder
    a live writer still owns is left alone. Every commit sweeps its own parent first."""
    removed = []
    if stage_dir.is_dir():
        for p in stage_dir.glob(f"{TEMP_PREFIX}*"):
            if p.is_dir() and _abandoned(p):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


@contextlib.contextmanager
def _staged_folder(
    parent: Path, name: str, metadata: dict[str, Any] | None, fields: dict[str, Any]
) -> Iterator[Path]:
    """Yield ``parent/.tmp-<name>-*``; on success write ``_SUCCESS`` last, then rename it to
    ``parent/<name>`` (replacing an existing one whole); on failure remove it."""
    parent.mkdir(parents=True, exist_ok=True)
    sweep_temp(parent)
    tmp = parent / f"{TEMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    (tmp / OWNER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    meta = metadata if metadata is not None else {}
    started = time.time()
    try:
        yield tmp
        (tmp / OWNER).unlink()
        try:
            write_manifest(tmp, SUCCESS)
        except ValueError as err:
            raise LakeError(f"cannot commit {parent.name}/{name}: {err}") from err
        meta.update({**fields, "started_at": started, "committed_at": time.time()})
        (tmp / SUCCESS).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        final = parent / name
        # Another writer of the same version may commit between our look and our rename
        # (two runs of one date): then look again; the last commit wins, whole.
        for _ in range(_COMMIT_TRIES):
            if _place(tmp, final):
                break
        else:
            raise OSError(f"could not commit {final}: other writers kept replacing it")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_COMMIT_TRIES = 20
_TAKEN = (errno.ENOTEMPTY, errno.EEXIST)  # rename onto a folder another writer just made


def _place(tmp: Path, final: Path) -> bool:
    """One attempt to move the finished ``tmp`` to ``final``; False when another writer
    committed or replaced ``final`` in between (the caller tries again)."""
    if not final.exists():
        try:
            os.rename(tmp, final)
            return True
        except OSError as err:
            if err.errno in _TAKEN:
                return False
            raise
    try:
        swapped = _exchange(tmp, final)
    except FileNotFoundError:  # ``final`` was just moved away by another writer
        return False
    if swapped:
        # One atomic swap: a kill at any point leaves a complete ``final``, old or new;
        # the old one now sits under the hidden temp name, which readers never see.
        shutil.rmtree(tmp, ignore_errors=True)
        return True
    # No atomic swap on this file system: two renames, with a short window in which
    # ``final`` is missing (a kill there leaves the old version in ``.tmp-old-*``).
    trash = final.parent / f"{TEMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(final, trash)
    except FileNotFoundError:
        return False
    try:
        os.rename(tmp, final)
    except OSError as err:
        if err.errno not in _TAKEN:
            raise
        shutil.rmtree(trash, ignore_errors=True)  # another writer's version is in place
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True


@contextlib.contextmanager
def staged_version(
    lake: str | os.PathLike[str] | None,
    stage: str,
    version: str | None = None,
    metadata: dict[str, Any] | None = None,
    move_current: bool = True,
) -> Iterator[Path]:
    """Yield a temp folder to write a stage's output into; commit it on success.

    ``metadata`` (a dict the body may still mutate) is written into ``_SUCCESS``.
    Re-running with an existing version replaces that version as a whole.
    ``CURRENT`` means the latest complete picture of the stage, what a command reads when
    given no version; a version that holds only part of it (a one-domain backfill, a
    models version without a backbone) commits with ``move_current=False``.
    """
    stage_dir = lake_root(lake) / validate_name(stage, "stage")
    version = validate_name(version or default_version(), "version")
    fields = {"stage": stage, "version": version}
    with _staged_folder(stage_dir, version, metadata, fields) as tmp:
        yield tmp
    if move_current:
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
    """The folder of a committed part of a committed version (see :func:`staged_part`);
    verified with its version (see :func:`verify_committed`)."""
    path = resolve_version(lake, stage, version).joinpath(*part.split("/"))
    if not (path / SUCCESS).exists():
        raise NotInLake(f"{path} is not a committed part of {stage!r} (no {SUCCESS})")
    if not (path / MANIFEST).exists():  # a part the version's check took for plain files
        verify_committed(path, f"{stage}/{path.relative_to(lake_root(lake) / stage)}")
    return path


def resolve_version(
    lake: str | os.PathLike[str] | None, stage: str, version: str | None = None
) -> Path:
    """The folder of a committed version of ``stage`` (``CURRENT`` when version is None),
    verified against its manifest, with the parts committed inside it (see
    :func:`verify_committed`)."""
    root = lake_root(lake)
    stage_dir = root / validate_name(stage, "stage")
    if version is None:
        pointer = stage_dir / CURRENT
        if not pointer.exists():
            raise NotInLake(f"no committed version of stage {stage!r} under {root}")
        version = pointer.read_text().strip()
    path = stage_dir / validate_name(version, "version")
    if not path.is_dir():
        have = sorted(p.parent.name for p in stage_dir.glob(f"*/{SUCCESS}"))
        listed = ", ".join(have[-5:]) or "none"  # the last five by name
        raise NotInLake(f"no version {version!r} of stage {stage!r} under {root} (have: {listed})")
    if not (path / SUCCESS).exists():
        raise NotInLake(f"{path} is not a committed version of {stage!r} (no {SUCCESS})")
    verify_committed(path, f"{stage}/{version}")
    return path


def find_version(
    lake: str | os.PathLike[str] | None, stage: str, version: str | None = None
) -> Path | None:
    """:func:`resolve_version`, or None where the version is not in the lake. A version that
    is there but damaged still raises DamagedVersion: reading it as absent would quietly
    change what a caller does (retrain, skip a dataset, promote another model)."""
    try:
        return resolve_version(lake, stage, version)
    except NotInLake:
        return None


def find_part(
    lake: str | os.PathLike[str] | None, stage: str, version: str | None, part: str
) -> Path | None:
    """:func:`resolve_part`, or None where the version or the part is not in the lake (a
    damaged one raises, as in :func:`find_version`)."""
    try:
        return resolve_part(lake, stage, version, part)
    except NotInLake:
        return None


# (folder, inode, mtime in ns of its _SUCCESS) of every folder whose checksums this process
# has verified: a replaced folder has a new _SUCCESS, so a new key.
_VERIFIED: set[tuple[str, int, int]] = set()
_VERIFY_TRIES = 3


def _marker_key(folder: Path) -> tuple[str, int, int] | None:
    try:
        st = (folder / SUCCESS).stat()
    except FileNotFoundError:
        return None
    return (str(folder), st.st_ino, st.st_mtime_ns)


def _damage(folder: Path, label: str, key: tuple[str, int, int] | None) -> str | None:
    """The one-line complaint about a committed ``folder``, or None when it is intact."""
    if key is None:
        return f"{label} lost its {SUCCESS} while it was being read"
    try:
        manifest = read_manifest(folder)
    except ValueError as err:
        return f"{label} is damaged: {err}; re-run the stage that wrote it"
    if manifest is None:
        return (
            f"{label} has no {MANIFEST}: it was committed before the lake kept manifests, so "
            "its files cannot be verified; re-run the stage that wrote it (or, if its files "
            "are known good, record them once with vqrec.lake.store.adopt_version)"
        )
    problem = find_damage(folder, manifest, SUCCESS, rehash=key not in _VERIFIED)
    if problem is not None:
        return f"{label} is damaged: {problem}; re-run the stage that wrote it"
    _VERIFIED.add(key)
    return None


def verify_committed(folder: Path, label: str) -> None:
    """Check a committed version or part, and every part committed inside it, against its
    manifest; a LakeError naming ``label`` (``stage/version[/part]``) and the file if not.

    Every resolve lists the files and compares their sizes (a few stat calls); the
    checksums are read once per process and folder (:data:`_VERIFIED`). Parts are checked
    here too, so a reader that reaches into ``<version>/domains/<d>`` after
    :func:`resolve_version` reads verified files. A folder replaced by a new commit while
    it is checked (its ``_SUCCESS`` changed) is checked again rather than called damaged.
    """
    for _ in range(_VERIFY_TRIES):
        key = _marker_key(folder)
        complaint = _damage(folder, label, key)
        if complaint is None:
            break
        if _marker_key(folder) == key:
            raise (DamagedVersion if key else LakeError)(complaint)
    else:
        raise LakeError(f"{label} was replaced {_VERIFY_TRIES} times while it was verified")
    _, parts = list_files(folder, SUCCESS)
    for part in parts:
        verify_committed(part, f"{label}/{part.relative_to(folder).as_posix()}")


def read_success(path: Path) -> dict[str, Any]:
    """The metadata written into a committed version's ``_SUCCESS``."""
    marker = Path(path) / SUCCESS
    try:
        meta = json.loads(marker.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedVersion(f"{marker} is damaged: not the JSON the store wrote ({err})") from err
    if not isinstance(meta, dict):
        raise DamagedVersion(f"{marker} is damaged: not the JSON object the store wrote")
    return meta


def _is_part_marker(marker: Path) -> bool:
    """Whether ``marker`` is the ``_SUCCESS`` of a part :func:`staged_part` committed (a JSON
    object naming the part), not one Spark left in a table folder (empty)."""
    try:
        meta = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and "part" in meta


def adopt_version(lake: str | os.PathLike[str] | None, stage: str, version: str) -> Path:
    """Record the manifest of a version committed before manifests existed, trusting its
    files as they are now, and return it resolved (verified).

    The one way to keep such a version (a backbone that took hours) instead of re-running
    its stage: :func:`resolve_version` refuses it until then. Its parts (sub-folders whose
    ``_SUCCESS`` names a part) get their own manifests first, deepest first, so the
    version's own manifest leaves them out as it does for parts committed later. A folder
    that has a manifest already keeps it.
    """
    path = lake_root(lake) / validate_name(stage, "stage") / validate_name(version, "version")
    if not (path / SUCCESS).is_file():
        raise LakeError(f"{path} is not a committed version of {stage!r} (no {SUCCESS})")
    markers = sorted(path.rglob(SUCCESS), key=lambda p: len(p.parts), reverse=True)
    for marker in markers:
        folder = marker.parent
        inside_temp = any(p.startswith(TEMP_PREFIX) for p in folder.relative_to(path).parts)
        if folder == path or inside_temp or not _is_part_marker(marker):
            continue
        _adopt_folder(folder)
    _adopt_folder(path)
    return resolve_version(lake, stage, version)


def _adopt_folder(folder: Path) -> None:
    if not (folder / MANIFEST).exists():
        with atomic_path(folder / MANIFEST) as tmp:
            write_manifest(folder, SUCCESS, tmp)
