"""Reliability: the clean stage on a generated corpus of bad raw input (tests/support/bad_input.py).

One real clean run (local Spark, temp lake) over every row-level case, shared by the
assertions below; folder-level cases and unsafe domain names each go through the CLI entry
point. Every generated row has an expected outcome: a quarantine reason, or "valid", and a
valid event must end in the clean interactions or be counted as removed by the k-core.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.support.bad_input import (
    BAD_NAMES_NOT_FOLDERS,
    HUGE_TITLE_CHARS,
    VALID,
    Corpus,
    Row,
    build_corpus,
)
from vqrec.lake.store import CURRENT
from vqrec.spark.clean import TABLES, CleanConfig, main, run_clean
from vqrec.spark.text import DEFAULT_MAX_CHARS

ROOT = Path(__file__).resolve().parents[2]
USER_K = ITEM_K = 5  # the clean stage's defaults


@dataclass
class Cleaned:
    """The committed output of the one clean run over the row-level domains."""

    path: Path
    reports: dict[str, dict[str, Any]]

    def table(self, name: str, domain: str) -> list[dict[str, Any]]:
        return pq.read_table(self.path / name / f"domain={domain}").to_pylist()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("bad-input"))


@pytest.fixture(scope="module")
def cleaned(spark, corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Cleaned:
    lake = tmp_path_factory.mktemp("bad-input-lake")
    config = CleanConfig(raw=[str(p) for p in corpus.domains.values()], lake=str(lake),
                         version="v1", user_k=USER_K, item_k=ITEM_K)  # fmt: skip
    result = run_clean(spark, config)
    return Cleaned(Path(result["path"]), result["reports"])


def _event_files(corpus: Corpus, domain: str) -> set[str]:
    """The ratings/interactions files of a domain (rows that carry an event)."""
    folder = corpus.domains[domain]
    return {p.name for p in folder.iterdir() if not p.name.startswith(("meta_", "items."))}


def _kcore(events: list[tuple[str, str, int]], user_k: int, item_k: int) -> Counter:
    """The iterative k-core, written out plainly: users >= user_k events, then items >=
    item_k, until a round removes nothing (events counted with multiplicity)."""
    alive = Counter(events)
    while True:
        users = Counter()
        for (u, _, _), n in alive.items():
            users[u] += n
        step = Counter({e: n for e, n in alive.items() if users[e[0]] >= user_k})
        items = Counter()
        for (_, i, _), n in step.items():
            items[i] += n
        step = Counter({e: n for e, n in step.items() if items[e[1]] >= item_k})
        if step == alive:
            return alive
        alive = step


def _describe(rows: list[Row], key: tuple[str, int]) -> str:
    match = [r for r in rows if (r.source, r.line) == key]
    return f"{match[0].kind} -> expected {match[0].expected}" if match else "not generated"


def test_corpus_covers_every_case(corpus: Corpus):
    kinds = corpus.kinds()
    required = {
        "truncated_line", "non_csv_line", "non_json_line", "wrong_type", "non_utf8",
        "missing_field", "absurd_timestamp", "empty_text", "huge_title", "duplicate_event",
        "domain_folder_without_files", "meta_without_ratings", "ratings_without_meta",
        "unsafe_domain_name",
    }  # fmt: skip
    assert required <= kinds
    assert {"quoted_newline_field", "missing_optional_trailing_field"} <= kinds
    assert {"csv_header_semicolons", "csv_header_duplicate_names"} <= kinds
    # Every line of every generated file belongs to exactly one expectation (a CSV header
    # to none; a record whose quoted field holds line breaks spans several lines).
    for domain, folder in corpus.domains.items():
        for path in sorted(p for p in folder.iterdir() if p.stat().st_size):
            data = path.read_bytes()
            if path.name.endswith(".gz"):
                data = gzip.decompress(data)
            data = data.replace(b"\r\n", b"\n")
            n_lines = len((data[:-1] if data.endswith(b"\n") else data).split(b"\n"))
            rows = [r for r in corpus.rows if (r.domain, r.source) == (domain, path.name)]
            first = 2 if path.name in ("interactions.csv", "items.csv") else 1
            covered = [r.line + k for r in rows for k in range(r.span)]
            assert covered == list(range(first, n_lines + 1)), path


def test_every_bad_row_is_quarantined_with_its_reason(corpus: Corpus, cleaned: Cleaned):
    for domain in corpus.domains:
        rows = [r for r in corpus.rows if r.domain == domain]
        want = Counter((r.source, r.line, r.expected) for r in rows if r.expected != VALID)
        quarantine = cleaned.table("quarantine", domain)
        got = Counter((q["source"], q["line"], q["reason"]) for q in quarantine)
        wrong = [
            f"{domain} {src}:{line} {what} {reason!r} ({_describe(rows, (src, line))})"
            for what, diff in (("missing", want - got), ("unexpected", got - want))
            for src, line, reason in sorted(diff)
        ]
        assert not wrong, "\n".join(wrong)


def test_no_valid_row_is_lost(corpus: Corpus, cleaned: Cleaned):
    for domain in corpus.domains:
        rows = [r for r in corpus.rows if r.domain == domain]
        valid = [r for r in rows if r.expected == VALID and r.event is not None]
        quarantined = {(q["source"], q["line"]) for q in cleaned.table("quarantine", domain)}
        lost = [r for r in valid if (r.source, r.line) in quarantined]
        assert not lost, f"valid rows quarantined: {lost}"
        # By identity: exactly the k-core of the valid events is kept, the rest is counted.
        events = [r.event for r in valid]
        expected_kept = _kcore(events, USER_K, ITEM_K)
        kept = Counter(
            (r["user_id"], r["item_id"], r["ts"]) for r in cleaned.table("interactions", domain)
        )
        assert kept == expected_kept, domain
        report = cleaned.reports[domain]
        assert report["kcore_removed"]["events"] == len(events) - sum(kept.values()), domain
        # Valid items that kept events use are all in the item table.
        used = {i for _, i, _ in kept}
        assert {r["item_id"] for r in cleaned.table("items", domain)} == used


def test_accounting_invariant_per_domain_and_file(corpus: Corpus, cleaned: Cleaned):
    for domain in corpus.domains:
        report = cleaned.reports[domain]
        rows = [r for r in corpus.rows if r.domain == domain]
        event_files = _event_files(corpus, domain)
        event_rows = [r for r in rows if r.source in event_files]
        kept_events = _kcore([r.event for r in event_rows if r.event], USER_K, ITEM_K)
        assert report["rows_in"] == len(event_rows), domain
        assert report["rows_in"] == (
            report["kept"] + report["quarantined"] + report["kcore_removed"]["events"]
        )
        assert report["invariant_ok"]
        assert report["quarantined"] == sum(r.expected != VALID for r in event_rows)
        by_file = report["by_file"]["interactions"]
        assert set(by_file) == event_files, domain
        for name, got in by_file.items():
            mine = [r for r in event_rows if r.source == name]
            # Kept events belong to the file of their (only) valid row: identity, not counts.
            kept = sum(kept_events[r.event] > 0 for r in mine if r.event)
            want = {
                "rows_in": len(mine),
                "quarantined": sum(r.expected != VALID for r in mine),
                "kept": kept,
                "kcore_removed": sum(r.expected == VALID for r in mine) - kept,
            }
            assert got == want, (domain, name)
            assert got["rows_in"] == got["kept"] + got["quarantined"] + got["kcore_removed"]
        item_rows = [r for r in rows if r.source not in event_files]
        item_files = report["by_file"]["items"]
        assert set(item_files) == {p.name for p in corpus.domains[domain].iterdir()} - event_files
        for name, got in item_files.items():
            mine = [r for r in item_rows if r.source == name]
            want = {"rows_in": len(mine), "quarantined": sum(r.expected != VALID for r in mine)}
            assert got == want, (domain, name)


def test_item_text_contract_on_odd_values(cleaned: Cleaned):
    texts = {r["item_id"]: r["text"] for r in cleaned.table("items", "Mixed")}
    assert texts["i01"] == "Dead Space 2. Games PC. EA"
    assert texts["i02"] == "Manic Panic Goth. Beauty"  # HTML-unescaped, quotes removed
    assert texts["i03"] == "Plain title"  # from the meta file with an odd name
    assert texts["i04"] == "OnlyBrand"  # empty title: the other fields still make a text
    assert texts["i05"] == "1984. Books"  # a numeric title is text, as vqrec.spark.text says
    # The 1 MB title is capped by the text contract, not carried whole, not a crash.
    assert HUGE_TITLE_CHARS > 100 * DEFAULT_MAX_CHARS
    assert len(texts["i06"]) == DEFAULT_MAX_CHARS and texts["i06"].startswith("word word")
    # RFC 4180 CSV: a quoted field holding line breaks is one record, its text kept.
    csv_texts = {r["item_id"]: r["text"] for r in cleaned.table("items", "GenCsv")}
    assert csv_texts["p"].startswith("Foo") and csv_texts["p"].endswith("Bar. Cat. Brand")
    assert csv_texts["q"] == "Kettle, 1.7 l Frost. Kitchen. Acme"
    assert csv_texts["s"] == "Only a title"  # no categories, no brand columns at all
    # Quarantine keeps a bounded, readable copy of every rejected line.
    for domain in cleaned.reports:
        for q in cleaned.table("quarantine", domain):
            assert len(q["raw"]) <= 1000
            if q["reason"] == "bad_encoding":
                assert "\ufffd" in q["raw"]


def test_domain_without_valid_rows_and_empty_files(cleaned: Cleaned):
    report = cleaned.reports["AllBad"]
    assert (report["rows_in"], report["kept"], report["users"]) == (3, 0, 0)
    for table in TABLES:
        assert (cleaned.path / table / "domain=AllBad" / "part-00000.parquet").is_file()
    assert cleaned.table("interactions", "AllBad") == []
    # The 0-byte files are listed with zero rows (the other files' rows are checked above).
    assert report["by_file"]["interactions"]["AllBad_empty.csv"] == {
        "rows_in": 0, "quarantined": 0, "kept": 0, "kcore_removed": 0
    }  # fmt: skip
    assert report["by_file"]["items"]["meta_AllBad_empty.json"] == {"rows_in": 0, "quarantined": 0}


def _files_under(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def test_folder_level_problems_fail_with_a_clear_message(
    spark, corpus: Corpus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    lake = tmp_path / "lake"
    for case in corpus.folder_cases:
        code = main([*case.argv, "--lake", str(lake), "--version", "v1"])
        err = capsys.readouterr().err.strip()
        assert code == case.exit_code, (case.kind, err)
        assert err.startswith("vqrec clean: ") and "\n" not in err, (case.kind, err)
        assert "Traceback" not in err and "\tat " not in err, (case.kind, err)
        for fragment in case.message:
            assert fragment in err, (case.kind, fragment, err)
        # Nothing committed, no temp folder left behind.
        assert not (lake / "clean" / "v1").exists() and not (lake / "clean" / CURRENT).exists()
        assert not list(lake.rglob(".tmp-*"))


def test_unsafe_domain_names_are_refused_before_any_write(
    spark, corpus: Corpus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    lake = tmp_path / "lake"
    before = _files_under(corpus.root) | _files_under(tmp_path)
    # As the command line runs it: exit code 2, one message line, no traceback.
    name, folder = "a b", corpus.bad_name_folders["a b"]
    proc = subprocess.run(
        [sys.executable, "-m", "vqrec.cli", "clean", "--raw", str(folder), "--lake", str(lake)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"invalid domain name (the folder's name) {name!r}" in proc.stderr
    # Folders whose names are not safe, holding valid data: refused for the name alone.
    for name, folder in corpus.bad_name_folders.items():
        assert main(["--raw", str(folder), "--lake", str(lake)]) == 2, name
        err = capsys.readouterr().err
        assert f"invalid domain name (the folder's name) {name!r}" in err and "Traceback" not in err
    # Names that cannot be folders come from --domains, the version and the DAG params.
    good = corpus.domains["Mixed"]
    for name in BAD_NAMES_NOT_FOLDERS:
        if name:  # an empty entry in a comma list is no name at all
            argv = ["--raw", str(good), "--lake", str(lake), "--domains", f"Mixed,{name}"]
            assert main(argv) == 2, name
            assert f"invalid domain name in --domains {name!r}" in capsys.readouterr().err
        assert main(["--raw", str(good), "--lake", str(lake), "--version", name or "-"]) == 2
        assert "vqrec clean: error: invalid version" in capsys.readouterr().err
        with pytest.raises(ValueError, match="invalid domain"):
            run_clean(spark, CleanConfig(raw=[str(good)], lake=str(lake), domains=[name]))
    from vqrec.orchestration.pipeline import plan_new_domain, plan_run

    for name in BAD_NAMES_NOT_FOLDERS:
        params = {"domain": name, "raw_path": str(good), "lake": str(lake)}
        with pytest.raises(ValueError, match="invalid domain"):
            plan_new_domain(params)
        params = {"raw_root": str(good.parent), "domains": [name], "pretrain_domains": ["Mixed"]}
        with pytest.raises(ValueError, match="invalid domain"):
            plan_run({**params, "lake": str(lake)})
    # Nothing was written: not outside the lake, and not inside it either.
    assert not lake.exists()
    assert _files_under(corpus.root) | _files_under(tmp_path) == before
