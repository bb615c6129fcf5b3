"""The lake's atomic versions: readers only ever see complete outputs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from vqrec.lake.manifest import MANIFEST
from vqrec.lake.store import (
    LakeError,
    read_success,
    resolve_version,
    staged_version,
    sweep_temp,
    validate_name,
)


def test_commit_and_resolve(lake):
    with staged_version(lake, "clean", "v1", metadata={"rows": 3}) as out:
        (out / "data.txt").write_text("one")
    path = resolve_version(lake, "clean")
    assert path == lake / "clean" / "v1"
    assert (path / "data.txt").read_text() == "one"
    assert read_success(path)["rows"] == 3
    assert read_success(path)["version"] == "v1"


def test_failed_stage_leaves_previous_version_current(lake):
    with staged_version(lake, "clean", "v1") as out:
        (out / "data.txt").write_text("one")
    with pytest.raises(RuntimeError, match="boom"):
        with staged_version(lake, "clean", "v2") as out:
            (out / "data.txt").write_text("half")
            raise RuntimeError("boom")
    assert resolve_version(lake, "clean").name == "v1"
    assert not (lake / "clean" / "v2").exists()
    assert not list((lake / "clean").glob(".tmp-*"))
    with pytest.raises(LakeError, match=r"no version 'v2' of stage 'clean' .* \(have: v1\)"):
        resolve_version(lake, "clean", "v2")


def test_a_partial_version_commits_without_moving_current(lake):
    with staged_version(lake, "clean", "nightly") as out:
        (out / "data.txt").write_text("all domains")
    with staged_version(lake, "clean", "Toys-backfill", move_current=False) as out:
        (out / "data.txt").write_text("one domain")
    assert resolve_version(lake, "clean").name == "nightly"
    assert (resolve_version(lake, "clean", "Toys-backfill") / "data.txt").read_text() == (
        "one domain"
    )


def test_rerun_replaces_a_version_whole(lake):
    with staged_version(lake, "codes", "v1") as out:
        (out / "a.txt").write_text("first")
    with staged_version(lake, "codes", "v1") as out:
        (out / "b.txt").write_text("second")
    path = resolve_version(lake, "codes", "v1")
    assert sorted(p.name for p in path.iterdir()) == [MANIFEST, "_SUCCESS", "b.txt"]


def test_killed_writer_is_invisible_and_swept(lake, tmp_path):
    """A real process killed mid-write leaves only a temp folder that readers ignore."""
    with staged_version(lake, "clean", "v1") as out:
        (out / "data.txt").write_text("one")
    script = textwrap.dedent(
        f"""
        import os, time
        from vqrec.lake.store import staged_version
        with staged_version({str(lake)!r}, "clean", "v2") as out:
            (out / "data.txt").write_text("half")
            os.kill(os.getpid(), 9)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == -9
    assert list((lake / "clean").glob(".tmp-v2-*")), "the killed writer left its temp folder"
    assert resolve_version(lake, "clean").name == "v1"

    # A live writer (paused mid-write in its own process) keeps its temp folder through
    # another commit of the stage; the killed one's is swept by that commit.
    live = subprocess.Popen([sys.executable, "-c", script.replace("os.kill(os.getpid(), 9)",
                             "time.sleep(600)").replace('"v2"', '"v3"')])  # fmt: skip
    try:
        deadline = time.time() + 60
        while not list((lake / "clean").glob(".tmp-v3-*/data.txt")) and time.time() < deadline:
            time.sleep(0.2)
        with staged_version(lake, "clean", "v4") as out:
            (out / "data.txt").write_text("four")
        assert not list((lake / "clean").glob(".tmp-v2-*")), "killed writer's folder swept"
        assert list((lake / "clean").glob(".tmp-v3-*")), "live writer's folder kept"
        assert sorted(p.name for p in resolve_version(lake, "clean").iterdir()) == [
            MANIFEST, "_SUCCESS", "data.txt"
        ]  # fmt: skip
    finally:
        live.kill()
        live.wait()
    assert sweep_temp(lake / "clean")  # now its writer is gone too
    assert not list((lake / "clean").glob(".tmp-*"))


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/b", ".hidden", "x" * 200, "a b", "é"])
def test_names_are_validated(bad):
    with pytest.raises(ValueError, match="invalid"):
        validate_name(bad)


def test_missing_stage_is_a_clear_error(lake):
    with pytest.raises(LakeError, match="no committed version of stage 'codes'"):
        resolve_version(lake, "codes")


def test_find_says_absent_and_raises_on_damage(lake):
    """find_version / find_part: None for what was never committed (or only half), the
    DamagedVersion for what was committed and changed since: never "absent" for damage."""
    from vqrec.lake.store import DamagedVersion, find_part, find_version, staged_part

    assert find_version(lake, "models") is None
    assert find_version(lake, "models", "v1") is None
    with staged_version(lake, "models", "v1") as out:
        (out / "backbone.txt").write_text("b")
    with staged_part(lake, "models", "v1", "domains/A") as out:
        (out / "w.txt").write_text("a")
    (lake / "models" / "v1" / "domains" / "B").mkdir()  # a part never committed
    assert find_version(lake, "models", "v1") == lake / "models" / "v1"
    assert find_part(lake, "models", "v1", "domains/A") == lake / "models" / "v1" / "domains/A"
    assert find_part(lake, "models", "v1", "domains/B") is None
    assert find_part(lake, "models", "v2", "domains/A") is None
    (lake / "models" / "v1" / "domains" / "A" / "w.txt").write_text("changed")
    with pytest.raises(DamagedVersion, match="w.txt"):
        find_part(lake, "models", "v1", "domains/A")


def test_env_lake_root(tmp_path, monkeypatch):
    from vqrec.lake.store import lake_root

    monkeypatch.setenv("VQREC_LAKE", str(tmp_path / "elsewhere"))
    assert lake_root() == tmp_path / "elsewhere"
    assert lake_root(tmp_path) == tmp_path
    assert os.fspath(lake_root(str(tmp_path))) == str(tmp_path)


def test_parts_commit_independently(lake):
    from vqrec.lake.store import resolve_part, staged_part

    with staged_version(lake, "models", "v1") as out:
        (out / "backbone").mkdir()
    with staged_part(lake, "models", "v1", "domains/A") as out:
        (out / "w.txt").write_text("a")
    with pytest.raises(RuntimeError):
        with staged_part(lake, "models", "v1", "domains/B") as out:
            (out / "w.txt").write_text("half")
            raise RuntimeError("killed")
    assert (resolve_part(lake, "models", "v1", "domains/A") / "w.txt").read_text() == "a"
    with pytest.raises(LakeError, match="not a committed part"):
        resolve_part(lake, "models", "v1", "domains/B")
    with pytest.raises(ValueError, match="invalid part"):
        with staged_part(lake, "models", "v1", "domains/../x"):
            pass


def test_many_writers_of_one_version_at_the_same_moment_all_commit(lake):
    """Two runs of one date race for its version: every writer commits (the last one wins,
    whole), none fails on the rename (the race once raised OSError 39 for some)."""
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from vqrec.lake.store import staged_version
        start = float(sys.argv[1])
        for round in range(10):  # ten times, all writers commit at the same moment
            with staged_version({str(lake)!r}, "codes", "v1") as out:
                for i in range(20):
                    (out / f"part-{{i}}.txt").write_text(str(os.getpid()))
                time.sleep(max(0.0, start + 0.5 * round - time.time()))
        """
    )
    start = str(time.time() + 5)
    procs = [subprocess.Popen([sys.executable, "-c", script, start], stderr=subprocess.PIPE)
             for _ in range(24)]  # fmt: skip
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 24, [e for e in errors if e][:1]
    final = resolve_version(lake, "codes", "v1")
    writers = {(final / f"part-{i}.txt").read_text() for i in range(20)}
    assert len(writers) == 1  # one writer's output, whole, never a mix
    assert sorted(p.name for p in final.iterdir()) == sorted(
        [MANIFEST, "_SUCCESS", *(f"part-{i}.txt" for i in range(20))]
    )
    assert not list((lake / "codes").glob(".tmp-*"))


def test_a_writer_that_loses_the_race_for_the_rename_still_commits(lake, monkeypatch):
    """The exact interleaving: between our look (no such version) and our rename, another
    process commits the same version (a real commit, run right there). The rename finds
    the name taken; the commit must look again and replace it whole, not raise."""
    import vqrec.lake.store as store

    other = textwrap.dedent(
        f"""
        from vqrec.lake.store import staged_version
        with staged_version({str(lake)!r}, "codes", "v1") as out:
            (out / "data.txt").write_text("the other writer")
        """
    )
    real_rename = os.rename
    raced = []

    def rename_after_the_other_commits(src, dst, *args, **kwargs):
        if str(dst).endswith("/codes/v1") and not raced:
            raced.append(subprocess.run([sys.executable, "-c", other], check=True))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(store.os, "rename", rename_after_the_other_commits)
    with staged_version(lake, "codes", "v1") as out:
        (out / "data.txt").write_text("ours")
    assert raced, "the other writer committed in the window"
    assert (resolve_version(lake, "codes", "v1") / "data.txt").read_text() == "ours"
    assert not list((lake / "codes").glob(".tmp-*"))
