"""A damaged committed version is a one-line error naming the file, never a smaller output.

The issue's cases, with the real stages: a clean version written by the real Spark clean
job on generated demo data, then damaged on disk after its commit:

* one Parquet part deleted: ``vqrec encode`` used to succeed, committing embeddings with
  0 items for that domain and moving CURRENT (only ``codes`` failed, later);
* one Parquet part overwritten with garbage of the same size (so only the checksum can
  tell): ``vqrec encode`` used to end in a 185-line Py4J traceback.

Both must now stop the real ``vqrec encode`` (vqrec.spark.encode:main) before it writes
anything: exit status 2, one line on stderr naming the version and the file, no embeddings
version committed or left half-written, embeddings/CURRENT unchanged.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import vqrec.lake.store as store
from vqrec.devtools.demo import generate_demo
from vqrec.lake.store import CURRENT, resolve_version
from vqrec.spark.clean import main as clean_main
from vqrec.spark.encode import main as encode_main

MAX_TS = "2000000000"  # fixed: the same events on any day
DOMAINS = ["Arts", "Garden"]
PART = "items/domain=Arts/part-00000.parquet"


@pytest.fixture(scope="module")
def committed(spark, tmp_path_factory) -> Path:
    """A lake with clean/v1 (the real clean job) and embeddings/e1 encoded from it (the real
    encode job and MiniLM): the embeddings CURRENT that a failed encode must not move."""
    root = tmp_path_factory.mktemp("damaged")
    raw, lake = root / "raw", root / "lake"
    generate_demo(raw, seed=0, users=120, domains=DOMAINS)
    clean = ["--raw-root", str(raw), "--lake", str(lake), "--max-ts", MAX_TS]
    assert clean_main([*clean, "--version", "v1"]) == 0
    assert encode_main(["--lake", str(lake), "--version", "e1", "--clean-version", "v1"]) == 0
    return lake


@pytest.fixture
def lake(committed, tmp_path, monkeypatch) -> Path:
    """A private copy of the committed lake, read as a new process would (nothing verified)."""
    copy = tmp_path / "lake"
    shutil.copytree(committed, copy)
    monkeypatch.setattr(store, "_VERIFIED", set())
    return copy


def encode_refuses(lake: Path, capsys) -> str:
    """Run the real ``vqrec encode`` on clean/v1; check it refused and wrote nothing; return
    its one error line."""
    capsys.readouterr()
    argv = ["--lake", str(lake), "--version", "e2", "--clean-version", "v1"]
    assert encode_main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, err
    assert "Traceback" not in err and "Py4J" not in err, err
    embeddings = lake / "embeddings"
    assert (embeddings / CURRENT).read_text().strip() == "e1"
    assert sorted(p.name for p in embeddings.iterdir()) == [CURRENT, "e1"]  # no .tmp-e2-*
    return errors[0]


def test_the_intact_version_resolves(lake):
    assert resolve_version(lake, "clean", "v1") == lake / "clean" / "v1"
    assert (lake / "clean" / "v1" / PART).is_file()


def test_a_deleted_parquet_part_stops_encode_naming_the_file(lake, capsys):
    part = lake / "clean" / "v1" / PART
    size = part.stat().st_size
    part.unlink()
    line = encode_refuses(lake, capsys)
    assert line.startswith(f"vqrec encode: error: clean/v1 is damaged: {PART} is missing")
    assert f"{size:,} bytes" in line and " rows)" in line


def test_a_parquet_part_overwritten_with_garbage_stops_encode_naming_the_file(lake, capsys):
    part = lake / "clean" / "v1" / PART
    size = part.stat().st_size
    part.write_bytes((b"\x7fgarbage!" * size)[:size])  # same size: only the checksum tells
    line = encode_refuses(lake, capsys)
    assert line.startswith(f"vqrec encode: error: clean/v1 is damaged: {PART} does not match")
