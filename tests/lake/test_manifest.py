"""The manifest of a committed version: what it records, and every resolve checking it."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import vqrec.lake.manifest as manifest_module
import vqrec.lake.store as store
from vqrec.lake.manifest import MANIFEST, read_manifest
from vqrec.lake.store import (
    SUCCESS,
    DamagedVersion,
    LakeError,
    adopt_version,
    read_success,
    resolve_part,
    resolve_version,
    staged_part,
    staged_version,
)

PART = "items/domain=Arts/part-00000.parquet"


def commit_clean(lake: Path, version: str = "v1") -> Path:
    """A clean version as the Spark job leaves it: a Parquet part per domain, plus a
    text file, a nested file and a hidden file (every kind must be covered)."""
    with staged_version(lake, "clean", version, metadata={"rows": 1200}) as out:
        folder = out / "items" / "domain=Arts"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"item_idx": pa.array(range(1, 1201), pa.int32())}),
                       folder / "part-00000.parquet")  # fmt: skip
        (out / "config.json").write_text('{"k": 5}')
        (out / "reports").mkdir()
        (out / "reports" / "Arts.json").write_text("{}")
        (folder / ".part-00000.parquet.crc").write_bytes(b"crc!")
    return lake / "clean" / version


def fresh_process_cache(monkeypatch) -> None:
    """As a new process sees it: no folder verified yet (each test starts from nothing)."""
    monkeypatch.setattr(store, "_VERIFIED", set())


def one_line_error(lake: Path, stage: str = "clean", version: str = "v1") -> str:
    with pytest.raises(DamagedVersion) as caught:  # a LakeError that says "there, but bad"
        resolve_version(lake, stage, version)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_manifest_lists_every_file_with_size_checksum_and_rows(lake):
    path = commit_clean(lake)
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["checksum"] == "crc32" and manifest["format"] == 1
    files = manifest["files"]
    assert sorted(files) == [
        "config.json",
        "items/domain=Arts/.part-00000.parquet.crc",
        PART,
        "reports/Arts.json",
    ]  # the marker and the manifest itself are not listed
    for rel, entry in files.items():
        data = (path / rel).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["crc32"] == f"{zlib.crc32(data):08x}"
    assert files[PART]["rows"] == 1200
    assert "rows" not in files["config.json"]
    assert read_manifest(path) == manifest
    assert read_success(path)["rows"] == 1200


def test_an_intact_version_resolves(lake):
    path = commit_clean(lake)
    assert resolve_version(lake, "clean") == path


def test_a_missing_part_names_the_file_and_what_the_manifest_lists(lake, monkeypatch):
    path = commit_clean(lake)
    size = (path / PART).stat().st_size
    (path / PART).unlink()
    fresh_process_cache(monkeypatch)
    message = one_line_error(lake)
    assert message.startswith(f"clean/v1 is damaged: {PART} is missing")
    assert f"(the manifest lists {size:,} bytes, 1,200 rows)" in message
    assert "re-run the stage" in message


def test_a_truncated_file_is_refused_by_its_size(lake, monkeypatch):
    path = commit_clean(lake)
    data = (path / PART).read_bytes()
    (path / PART).write_bytes(data[: len(data) // 2])
    fresh_process_cache(monkeypatch)
    message = one_line_error(lake)
    assert f"clean/v1 is damaged: {PART} has {len(data) // 2:,} bytes" in message


def test_a_flipped_byte_is_refused_by_its_checksum(lake, monkeypatch):
    path = commit_clean(lake)
    data = bytearray((path / PART).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / PART).write_bytes(bytes(data))
    fresh_process_cache(monkeypatch)
    message = one_line_error(lake)
    assert f"clean/v1 is damaged: {PART} does not match its checksum" in message


def test_an_extra_file_is_refused(lake, monkeypatch):
    path = commit_clean(lake)
    (path / "items" / "domain=Arts" / "part-00001.parquet").write_bytes(b"late")
    fresh_process_cache(monkeypatch)
    message = one_line_error(lake)
    assert "items/domain=Arts/part-00001.parquet (4 bytes) is not in the manifest" in message


def test_several_problems_name_the_first_and_count_the_rest(lake, monkeypatch):
    path = commit_clean(lake)
    (path / "config.json").unlink()
    (path / "reports" / "Arts.json").unlink()
    fresh_process_cache(monkeypatch)
    assert "config.json is missing" in one_line_error(lake)
    assert "(and 1 more)" in one_line_error(lake)


def test_a_damaged_manifest_is_refused(lake, monkeypatch):
    path = commit_clean(lake)
    (path / MANIFEST).write_text('{"files": ')
    fresh_process_cache(monkeypatch)
    assert one_line_error(lake).startswith(f"clean/v1 is damaged: {MANIFEST} is unreadable")


def test_a_damaged_success_marker_is_a_lake_error(lake):
    path = commit_clean(lake)
    (path / SUCCESS).write_bytes(b"\x00garbage")
    with pytest.raises(LakeError, match=f"{SUCCESS} is damaged"):
        read_success(path)


def test_a_version_without_a_manifest_is_refused_until_adopted(lake, monkeypatch):
    """Committed before manifests existed: refused with what to do; adopt_version records
    its files as they are (and its parts' files, in manifests of their own)."""
    path = commit_clean(lake)
    with staged_version(lake, "models", "m1") as out:
        (out / "backbone").mkdir()
        (out / "backbone" / "w.bin").write_bytes(b"backbone")
    with staged_part(lake, "models", "m1", "domains/Arts") as out:
        (out / "w.bin").write_bytes(b"arts")
    (path / MANIFEST).unlink()
    (lake / "models" / "m1" / MANIFEST).unlink()
    (lake / "models" / "m1" / "domains" / "Arts" / MANIFEST).unlink()
    fresh_process_cache(monkeypatch)
    message = one_line_error(lake)
    assert message.startswith(f"clean/v1 has no {MANIFEST}")
    assert "re-run the stage that wrote it" in message and "adopt_version" in message

    assert adopt_version(lake, "clean", "v1") == path
    assert sorted(json.loads((path / MANIFEST).read_text())["files"]) == [
        "config.json",
        "items/domain=Arts/.part-00000.parquet.crc",
        PART,
        "reports/Arts.json",
    ]
    adopt_version(lake, "models", "m1")
    assert sorted(read_manifest(lake / "models" / "m1")["files"]) == ["backbone/w.bin"]
    arts = resolve_part(lake, "models", "m1", "domains/Arts")
    assert sorted(read_manifest(arts)["files"]) == ["w.bin"]


def test_a_part_has_its_own_manifest_and_is_checked_with_its_version(lake, monkeypatch):
    with staged_version(lake, "models", "m1") as out:
        (out / "backbone").mkdir()
        (out / "backbone" / "model.safetensors").write_bytes(b"backbone weights")
    with staged_part(lake, "models", "m1", "domains/Arts") as out:
        (out / "model.safetensors").write_bytes(b"arts weights")
    version = lake / "models" / "m1"
    assert sorted(read_manifest(version)["files"]) == ["backbone/model.safetensors"]
    part = version / "domains" / "Arts"
    assert sorted(read_manifest(part)["files"]) == ["model.safetensors"]

    (part / "model.safetensors").write_bytes(b"arts weighs!")  # same size, other bytes
    fresh_process_cache(monkeypatch)
    expected = "models/m1/domains/Arts is damaged: model.safetensors does not match"
    for resolve in (
        lambda: resolve_version(lake, "models", "m1"),  # readers of <version>/domains/<d>
        lambda: resolve_part(lake, "models", "m1", "domains/Arts"),
    ):
        with pytest.raises(LakeError, match=expected):
            resolve()


def test_a_part_being_written_does_not_disturb_readers_of_its_version(lake):
    """A fine-tune commits its part into a committed version while other processes read
    it: the in-flight ``.tmp-*`` folder is no file of the version."""
    with staged_version(lake, "models", "m1") as out:
        (out / "backbone.bin").write_bytes(b"b")
    with staged_part(lake, "models", "m1", "domains/Arts") as out:
        (out / "model.safetensors").write_bytes(b"in flight")
        assert list((lake / "models" / "m1" / "domains").glob(".tmp-Arts-*"))
        assert resolve_version(lake, "models", "m1") == lake / "models" / "m1"
    assert resolve_part(lake, "models", "m1", "domains/Arts").name == "Arts"


def test_an_unreadable_parquet_file_is_never_committed(lake):
    with pytest.raises(LakeError, match=r"cannot commit clean/v1: .*bad\.parquet"):
        with staged_version(lake, "clean", "v1") as out:
            (out / "bad.parquet").write_bytes(b"not parquet at all")
    assert not (lake / "clean" / "v1").exists()
    assert not list((lake / "clean").glob(".tmp-*"))


def test_checksums_are_read_once_per_process_and_commit(lake, monkeypatch):
    """A repeated resolve does not hash again (the cache is keyed by the folder and its
    _SUCCESS), but still compares the listing and sizes; a new commit is hashed again."""
    path = commit_clean(lake)
    hashed: list[str] = []
    real = manifest_module.file_checksum

    def counting_checksum(file: Path) -> str:
        hashed.append(Path(file).name)
        return real(file)

    monkeypatch.setattr(manifest_module, "file_checksum", counting_checksum)
    fresh_process_cache(monkeypatch)
    resolve_version(lake, "clean", "v1")
    assert len(hashed) == 4
    resolve_version(lake, "clean", "v1")
    assert len(hashed) == 4  # cached

    (path / "config.json").unlink()  # the cheap listing check runs on every resolve
    assert "config.json is missing" in one_line_error(lake)

    commit_clean(lake)  # the version re-committed: a new _SUCCESS, so hashed again
    hashed.clear()  # (the commit hashed its files to write the manifest)
    resolve_version(lake, "clean", "v1")
    assert len(hashed) == 4


def test_a_version_replaced_while_it_is_checked_is_checked_again(lake, monkeypatch):
    """Another run commits the same version between our reading its manifest and its files
    (the real commit runs right there): the new version is verified, not called damaged."""
    commit_clean(lake)
    real = store.find_damage
    calls = []

    def replaced_in_between(folder, manifest, marker, rehash=True):
        calls.append(folder)
        if len(calls) == 1:
            with staged_version(lake, "clean", "v1") as out:
                (out / "config.json").write_text('{"k": 10, "another": "run"}')
        return real(folder, manifest, marker, rehash)

    monkeypatch.setattr(store, "find_damage", replaced_in_between)
    fresh_process_cache(monkeypatch)
    path = resolve_version(lake, "clean", "v1")
    assert len(calls) == 2
    assert json.loads((path / "config.json").read_text())["another"] == "run"
