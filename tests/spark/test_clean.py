"""The clean stage on tiny hand-written raw folders: reasons, k-core, ids, splits, output."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from vqrec.lake.store import CURRENT, resolve_version
from vqrec.spark.clean import CleanConfig, kcore_mask, main, run_clean
from vqrec.spark.text import build_text

T0 = 1_400_000_000


def write_amazon(folder: Path, events: list[bytes], metas: list[bytes]) -> Path:
    """An Amazon-layout domain folder: <name>.csv and meta_<name>.json.gz."""
    folder.mkdir(parents=True)
    (folder / f"{folder.name}.csv").write_bytes(b"\n".join(events) + b"\n")
    with gzip.open(folder / f"meta_{folder.name}.json.gz", "wb") as f:
        f.write(b"\n".join(metas) + b"\n")
    return folder


def meta(asin: str, title: str, **extra) -> bytes:
    return json.dumps({"asin": asin, "title": title, **extra}).encode()


def ev(item: str, user: str, ts: int, rating: str = "5.0") -> bytes:
    return f"{item},{user},{rating},{ts}".encode()


def read(out: Path, table: str, domain: str) -> list[dict]:
    return pq.read_table(out / table / f"domain={domain}" / "part-00000.parquet").to_pylist()


def dense_events(users: list[str], items: list[str]) -> list[bytes]:
    """Every user buys every item once, at increasing times: survives any small k-core."""
    lines, ts = [], T0
    for u in users:
        for i in items:
            lines.append(ev(i, u, ts))
            ts += 10
    return lines


@pytest.fixture
def noisy(tmp_path: Path) -> tuple[Path, list[tuple[int, str]], list[tuple[int, str]]]:
    """A domain with one raw line per rejection reason; returns expected (line, reason)s."""
    items = ["i1", "i2", "i3"]
    good = dense_events(["u1", "u2", "u3"], items)
    bad_events = [
        (b"i1,u\xff1,5.0,1400000000", "bad_encoding"),
        (b"", "empty_line"),
        (b"garbage line without commas", "unparseable_line"),
        (b"i1,,5.0,1400000000", "missing_field"),
        (b"i1,u1,five,1400000000", "bad_rating"),
        (b"i1,u1,7.5,1400000000", "bad_rating"),
        (b"i1,u1,5.0,not-a-time", "bad_timestamp"),
        (b"i1,u1,5.0,-5", "bad_timestamp"),
        (b"i1,u1,5.0,100", "bad_timestamp"),
        (b"i1,u1,5.0,99999999999", "bad_timestamp"),
        (good[0], "duplicate_event"),
        (ev("nometa", "u1", T0), "unknown_item"),
        (ev("notext", "u1", T0), "item_without_text"),
        (ev("broken", "u2", T0), "unknown_item"),  # its only meta line is not JSON
    ]
    events = good + [line for line, _ in bad_events]
    expected_events = [(len(good) + k + 1, r) for k, (_, r) in enumerate(bad_events)]
    good_meta = [meta(i, f"Title {i}", category=["Cat"], brand="B") for i in items]
    bad_meta = [
        (b'{"asin": "broken", "title": ', "bad_json"),
        (json.dumps({"title": "no asin"}).encode(), "missing_field"),
        (meta("i1", "second copy"), "duplicate_item"),
        (meta("notext", "  ", category=[]), "no_text"),
        (b'{"asin": "i\xff9", "title": "x"}', "bad_encoding"),
    ]
    metas = good_meta + [line for line, _ in bad_meta]
    expected_meta = [(len(good_meta) + k + 1, r) for k, (_, r) in enumerate(bad_meta)]
    folder = write_amazon(tmp_path / "raw" / "Noisy", events, metas)
    return folder, expected_events, expected_meta


def test_every_reason_quarantined_and_invariant(spark, lake, noisy):
    folder, expected_events, expected_meta = noisy
    config = CleanConfig(raw=[str(folder)], lake=str(lake), version="v1", user_k=3, item_k=3)
    result = run_clean(spark, config)
    out = Path(result["path"])
    rows = read(out, "quarantine", "Noisy")
    got = sorted((r["source"], r["line"], r["reason"]) for r in rows)
    want = sorted(
        [("Noisy.csv", line, reason) for line, reason in expected_events]
        + [("meta_Noisy.json.gz", line, reason) for line, reason in expected_meta]
    )
    assert got == want
    assert all(len(r["raw"]) <= 1000 for r in rows)
    # Bad bytes are kept readable (replacement character), never lost.
    assert any("\ufffd" in r["raw"] for r in rows if r["reason"] == "bad_encoding")

    report = result["reports"]["Noisy"]
    assert report["rows_in"] == 9 + len(expected_events)
    assert report["kept"] == 9 and report["users"] == 3 and report["items"] == 3
    assert (
        report["rows_in"]
        == report["kept"] + report["quarantined"] + report["kcore_removed"]["events"]
    )
    assert report["invariant_ok"]
    assert sum(report["quarantined_by_reason"].values()) == len(expected_events)
    assert json.loads((out / "reports" / "Noisy.json").read_text())["kept"] == 9
    # The first meta line of an item wins over later copies.
    texts = {r["item_id"]: r["text"] for r in read(out, "items", "Noisy")}
    assert texts["i1"] == build_text("Title i1", ["Cat"], "B") == "Title i1. Cat. B"


def test_kcore_iterates_until_stable(spark, lake, tmp_path):
    # user_k=3, item_k=2. C has 2 events -> dropped in round 1; then i4 has only D -> dropped;
    # then D has 2 events -> dropped in round 2. A and B with i1..i3 remain.
    plan = {"A": ["i1", "i2", "i3"], "B": ["i1", "i2", "i3"], "C": ["i3", "i4"],
            "D": ["i4", "i1", "i2"]}  # fmt: skip
    events = [ev(i, u, T0 + 10 * k) for u, its in plan.items() for k, i in enumerate(its)]
    metas = [meta(i, f"T{i}") for i in ["i1", "i2", "i3", "i4"]]
    folder = write_amazon(tmp_path / "raw" / "Core", events, metas)
    reports = []
    for driver_rows in (0, 10**9):  # all rounds in Spark, then all on the driver
        config = CleanConfig(
            raw=[str(folder)], lake=str(lake), version=f"d{driver_rows}", user_k=3,
            item_k=2, driver_rows=driver_rows,
        )  # fmt: skip
        result = run_clean(spark, config)
        out = Path(result["path"])
        users = {r["user_id"] for r in read(out, "users", "Core")}
        items = {r["item_id"] for r in read(out, "items", "Core")}
        assert users == {"A", "B"} and items == {"i1", "i2", "i3"}
        reports.append(result["reports"]["Core"])
    assert reports[0]["kcore_removed"] == reports[1]["kcore_removed"]
    assert reports[0]["kcore_removed"] == {"events": 5, "users": 2, "items": 1, "rounds": 2}
    assert reports[0]["invariant_ok"]


def test_kcore_mask_matches_definition():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 40, 600)
    items = rng.integers(0, 60, 600)
    mask, _ = kcore_mask(users, items, 5, 5)
    # Every survivor has k events on both sides, and no removed event could come back.
    assert (np.bincount(users[mask])[users[mask]] >= 5).all()
    assert (np.bincount(items[mask])[items[mask]] >= 5).all()
    again, rounds = kcore_mask(users[mask], items[mask], 5, 5)
    assert again.all() and rounds == 0


def leave_one_out(seq: list[int], max_history: int) -> list[tuple[str, list[int], int]]:
    """The published layout, straight from docs/ARCHITECTURE.md."""
    n = len(seq)
    rows = [("train", seq[max(0, t - max_history) : t], seq[t]) for t in range(1, n - 2)]
    rows.append(("valid", seq[: n - 2][-max_history:], seq[n - 2]))
    rows.append(("test", seq[: n - 1][-max_history:], seq[n - 1]))
    return rows


def test_ids_order_tie_break_and_leave_one_out(spark, lake, tmp_path):
    items = [f"i{k}" for k in range(6)]
    events = dense_events(["ub", "ua", "uc"], items)
    # ua buys "i5" and "i0" again at the same second, written in reverse item order.
    events += [ev("i5", "ua", T0 + 5000), ev("i0", "ua", T0 + 5000)]
    folder = write_amazon(tmp_path / "raw" / "Seq", events, [meta(i, i) for i in items])
    config = CleanConfig(
        raw=[str(folder)], lake=str(lake), version="v1", max_history=2, user_k=3, item_k=3
    )
    out = Path(run_clean(spark, config)["path"])
    users = read(out, "users", "Seq")
    assert [(r["user_idx"], r["user_id"]) for r in users] == [(0, "ua"), (1, "ub"), (2, "uc")]
    item_rows = read(out, "items", "Seq")
    assert [(r["item_idx"], r["item_id"]) for r in item_rows] == [
        (k + 1, f"i{k}") for k in range(6)
    ]
    assert all(r["text_hash"] == hashlib.sha1(r["text"].encode()).hexdigest() for r in item_rows)
    inter = read(out, "interactions", "Seq")
    ua = [r for r in inter if r["user_id"] == "ua"]
    assert [r["pos"] for r in ua] == list(range(8))
    assert [r["item_id"] for r in ua][-2:] == ["i0", "i5"]  # same ts: item_id ascending
    seqs = read(out, "sequences", "Seq")
    for user in users:
        mine = [r for r in inter if r["user_idx"] == user["user_idx"]]
        chrono = [r["item_idx"] for r in sorted(mine, key=lambda r: r["pos"])]
        got = [
            (r["split"], r["history"], r["target"])
            for r in seqs
            if r["user_idx"] == user["user_idx"]
        ]  # noqa: E501
        assert sorted(got) == sorted(leave_one_out(chrono, 2))


def test_generic_layout_with_column_map(spark, lake, tmp_path):
    folder = tmp_path / "raw" / "Gen"
    folder.mkdir(parents=True)
    lines = ["reviewerID,asin,unixReviewTime"]
    for u in ["u1", "u2", "u3"]:
        for k, i in enumerate(["a", "b", "c"]):
            lines.append(f"{u},{i},{T0 + k}")
    lines.append("u1,a")  # too few fields
    (folder / "interactions.csv").write_text("\n".join(lines) + "\n")
    items = [
        {"asin": i, "title": f"T {i}", "categories": ["X", "Y"], "brand": "Z", "description": "d"}
        for i in ["a", "b", "c"]
    ]
    (folder / "items.jsonl").write_text("\n".join(json.dumps(r) for r in items) + "\n")
    config = CleanConfig(
        raw=[str(folder)], lake=str(lake), version="v1", user_k=3, item_k=3,
        column_map={"user_id": "reviewerID", "item_id": "asin", "timestamp": "unixReviewTime"},
    )  # fmt: skip
    result = run_clean(spark, config)
    report = result["reports"]["Gen"]
    assert report["layout"] == "generic"
    assert report["kept"] == 9 and report["quarantined_by_reason"] == {"unparseable_line": 1}
    out = Path(result["path"])
    assert read(out, "quarantine", "Gen")[0]["line"] == 11  # header is line 1
    assert read(out, "items", "Gen")[0]["text"] == "T a. X Y. Z"


def test_generic_parquet_interactions(spark, lake, tmp_path):
    import pyarrow as pa

    folder = tmp_path / "raw" / "Pq"
    folder.mkdir(parents=True)
    users = [u for u in ["u1", "u2", "u3"] for _ in range(3)] + ["u4"]
    item_ids = ["a", "b", "c"] * 3 + [None]
    ts = [T0 + k for k in range(9)] + [T0]
    pq.write_table(
        pa.table({"user_id": users, "item_id": item_ids, "timestamp": ts}),
        folder / "interactions.parquet",
    )
    pq.write_table(pa.table({"item_id": ["a", "b", "c"], "title": ["A", "B", "C"]}),
                   folder / "items.parquet")  # fmt: skip
    config = CleanConfig(raw=[str(folder)], lake=str(lake), version="v1", user_k=3, item_k=3)
    result = run_clean(spark, config)
    q = read(Path(result["path"]), "quarantine", "Pq")
    assert [(r["line"], r["reason"]) for r in q] == [(0, "missing_field")]
    assert '"u4"' in q[0]["raw"]
    assert result["reports"]["Pq"]["kept"] == 9


def file_hashes(version: Path) -> dict[str, str]:
    return {
        str(p.relative_to(version)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(version.rglob("*.parquet"))
    }


def test_rerun_is_byte_identical(spark, lake, noisy):
    folder = noisy[0]
    paths = [
        Path(
            run_clean(
                spark, CleanConfig(raw=[str(folder)], lake=str(lake), version=v, user_k=3, item_k=3)
            )["path"]
        )
        for v in ("a", "b")
    ]
    first, second = (file_hashes(p) for p in paths)
    assert len(first) == 5 and first == second
    assert not list(paths[0].rglob("*.crc"))


def test_failed_run_leaves_current_untouched(spark, lake, noisy, tmp_path):
    folder = noisy[0]
    run_clean(spark, CleanConfig(raw=[str(folder)], lake=str(lake), version="good"))
    broken = tmp_path / "broken" / "Noisy"
    broken.mkdir(parents=True)
    (broken / "Noisy.csv").write_bytes((folder / "Noisy.csv").read_bytes())
    (broken / "meta_Noisy.json.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not gzip data")
    with pytest.raises(Exception):  # noqa: B017 - Spark raises its own exception classes
        run_clean(spark, CleanConfig(raw=[str(broken)], lake=str(lake), version="bad"))
    assert (lake / "clean" / CURRENT).read_text().strip() == "good"
    assert resolve_version(lake, "clean").name == "good"
    assert not (lake / "clean" / "bad").exists()
    assert not list((lake / "clean").glob(".tmp-*"))


def test_cli(spark, lake, noisy, capsys):
    folder = noisy[0]
    code = main(
        ["--raw-root", str(folder.parent), "--lake", str(lake), "--version", "cli", "--user-k", "3"]
    )
    assert code == 0
    assert resolve_version(lake, "clean", "cli").is_dir()
    assert json.loads((lake / "clean" / "cli" / "config.json").read_text())["user_k"] == 3
    bad = folder.parent / "bad name"
    bad.mkdir()
    assert main(["--raw", str(bad), "--lake", str(lake)]) == 2
    assert "invalid domain name" in capsys.readouterr().err


def test_cli_encode_commits_both_stages_in_one_application(spark, lake, noisy, capsys):
    """``--encode`` (the new-domain backfill's one Spark application): the clean version,
    then an embeddings version of the same name over exactly its items, CURRENT left alone
    with --no-move-current."""
    folder = noisy[0]
    argv = ["--raw", str(folder), "--lake", str(lake), "--user-k", "3", "--item-k", "3"]
    assert main([*argv, "--version", "night"]) == 0
    code = main([*argv, "--version", "Noisy-new", "--no-move-current", "--encode"])
    assert code == 0
    assert "3 items, 3 texts encoded, 0 reused from the cache" in capsys.readouterr().out
    items = pq.read_table(lake / "clean" / "Noisy-new" / "items").to_pylist()
    vectors = pq.read_table(lake / "embeddings" / "Noisy-new" / "items").to_pylist()
    assert [r["item_id"] for r in vectors] == [r["item_id"] for r in items]
    assert {len(r["embedding"]) for r in vectors} == {384}
    assert (lake / "clean" / CURRENT).read_text().strip() == "night"
    assert not (lake / "embeddings" / CURRENT).exists()
