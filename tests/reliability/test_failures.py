"""Reliability: clean and encode fail in one line, as real processes, on a real full disk.

A committed lake (clean v1, encode v1 of a small demo) is copied onto a small tmpfs that is
then filled to a few pages, and ``python -m vqrec.cli clean|encode`` writes v2 into it.
Each must exit 1 with exactly one stderr line naming the full disk and where (no Python
traceback, no Java stack: the JVM's stderr goes to its log file under $VQREC_LOG_DIR),
commit nothing, leave CURRENT at v1 and leave no ``.tmp-*`` folder. A ``.gz`` file that is
not gzip ends the same way: one "could not read <file>" line, the Java stack in the log.
Mounting needs root: without it the disk-full tests skip, saying so.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.bad_input import _valid_amazon
from vqrec.cli import main as vqrec
from vqrec.devtools.demo import generate_demo
from vqrec.lake.store import CURRENT

ROOT = Path(__file__).resolve().parents[2]
MAX_TS = "2000000000"
FREE_BYTES = 16 * 1024  # what the filled disk has left: a few pages, less than any table


@pytest.fixture(scope="module")
def committed(spark, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Raw demo data and a lake with clean v1 and encode v1 committed (in-process runs)."""
    root = tmp_path_factory.mktemp("failures")
    raw, lake = root / "raw", root / "lake"
    generate_demo(raw, seed=0, users=120, domains=["Arts", "Toys"])
    clean = ["--raw-root", str(raw), "--lake", str(lake), "--max-ts", MAX_TS]
    assert vqrec(["clean", *clean, "--version", "v1"]) == 0
    assert vqrec(["encode", "--lake", str(lake), "--version", "v1"]) == 0
    return {"raw": raw, "lake": lake}


@pytest.fixture
def full_disk(tmp_path: Path, committed: dict[str, Path]) -> Iterator[Path]:
    """A copy of the committed lake on a tmpfs with only FREE_BYTES left (a real full disk)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    used = sum(p.stat().st_size for p in committed["lake"].rglob("*") if p.is_file())
    size = used + 4 * 1024 * 1024  # room for the copy; the filler takes the rest
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {proc.stderr.strip()}")
    try:
        lake = mount / "lake"
        shutil.copytree(committed["lake"], lake)
        _fill(mount / "filler", FREE_BYTES)
        yield lake
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path: Path, leave: int) -> None:
    """Write zeros until the file system is full, then give ``leave`` bytes back."""
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(chunk)
        except OSError as err:
            assert err.errno == errno.ENOSPC, err
    os.truncate(path, max(0, path.stat().st_size - leave))


def _vqrec(args: list[str], log_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VQREC_LOG_DIR": str(log_dir), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "vqrec.cli", *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=900,
    )  # fmt: skip


def _one_line(proc: subprocess.CompletedProcess[str], prog: str) -> str:
    """The single stderr line of a failed run, checked for stacks of either language."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{prog}: "), proc.stderr
    assert "Traceback" not in proc.stderr and "at org.apache" not in proc.stderr
    return lines[0]


def _nothing_committed(lake: Path, stage: str) -> None:
    assert (lake / stage / CURRENT).read_text().strip() == "v1"
    assert not (lake / stage / "v2").exists()
    assert not list(lake.rglob(".tmp-*")), list(lake.rglob(".tmp-*"))


def _java_stack_logged(log_dir: Path) -> None:
    """The JVM's stderr went to its log file: the stack is there, not on the terminal."""
    logs = list(log_dir.glob("spark-*.log"))
    assert logs, "no JVM log file"
    assert any("\tat " in p.read_text(errors="replace") for p in logs)


def test_clean_on_a_full_disk_fails_in_one_line(
    committed: dict[str, Path], full_disk: Path, tmp_path: Path
):
    clean = ["clean", "--raw-root", str(committed["raw"]), "--lake", str(full_disk)]
    proc = _vqrec([*clean, "--max-ts", MAX_TS, "--version", "v2"], tmp_path / "logs")
    assert proc.returncode == 1, proc.stderr
    line = _one_line(proc, "vqrec clean")
    assert "disk full: no space left on device while writing" in line, line
    assert str(full_disk) in line and "nothing committed" in line, line
    _nothing_committed(full_disk, "clean")


def test_encode_on_a_full_disk_fails_in_one_line(full_disk: Path, tmp_path: Path):
    proc = _vqrec(["encode", "--lake", str(full_disk), "--version", "v2"], tmp_path / "logs")
    assert proc.returncode == 1, proc.stderr
    line = _one_line(proc, "vqrec encode")
    assert "disk full: no space left on device while writing" in line, line
    assert str(full_disk) in line and "nothing committed" in line, line
    _nothing_committed(full_disk, "embeddings")
    assert (full_disk / "clean" / CURRENT).read_text().strip() == "v1"


def test_not_gzip_fails_in_one_line_without_a_java_stack(tmp_path: Path):
    folder = tmp_path / "raw" / "NotGz"
    _valid_amazon(folder)
    (folder / "meta_NotGz.json").unlink()
    (folder / "meta_NotGz.json.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not gzip data")
    lake, logs = tmp_path / "lake", tmp_path / "logs"
    proc = _vqrec(["clean", "--raw", str(folder), "--lake", str(lake), "--version", "v1"], logs)
    assert proc.returncode == 1, proc.stderr
    line = _one_line(proc, "vqrec clean")
    assert "could not read" in line and "meta_NotGz.json.gz" in line, line
    assert str(logs) in line, line  # the line says where the stack went
    _java_stack_logged(logs)
    assert not (lake / "clean" / "v1").exists() and not (lake / "clean" / CURRENT).exists()
    assert not list(lake.rglob(".tmp-*"))


def test_the_jvm_log_folder_keeps_only_the_newest_logs(tmp_path, monkeypatch):
    """Every CLI start of a JVM adds a log; the folder keeps the newest KEEP_JVM_LOGS."""
    from vqrec.spark import failures

    monkeypatch.delenv("SPARK_ENV_LOADED", raising=False)
    monkeypatch.setenv("VQREC_LOG_DIR", str(tmp_path))
    for i in range(6):
        log = tmp_path / f"spark-old-{i}.log"
        log.write_text(str(i))
        os.utime(log, (1_000_000 + i, 1_000_000 + i))
    (tmp_path / "notes.txt").write_text("not a JVM log")
    monkeypatch.setattr(failures, "KEEP_JVM_LOGS", 4)
    new = failures.jvm_log_file("clean")
    new.write_text("new")
    kept = {p.name for p in tmp_path.iterdir()}
    assert kept == {"notes.txt", "spark-old-3.log", "spark-old-4.log", "spark-old-5.log", new.name}
