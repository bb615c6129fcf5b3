"""vqrec.devtools.demo: deterministic, dirty, multi-domain raw data with a learnable signal."""

from __future__ import annotations

import gzip
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from vqrec.devtools.demo import DOMAINS, HELD_OUT, generate_demo, main


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    return out, generate_demo(out, seed=0)


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def parse_csv(path: Path) -> tuple[list[tuple[str, str, float, int]], list[str]]:
    """Valid events and the malformed lines of a ratings file."""
    good, bad = [], []
    for line in path.read_text(encoding="utf-8").split("\n")[:-1]:
        parts = line.split(",")
        try:
            item, user, rating, ts = parts
            if not item or not user:
                raise ValueError
            good.append((item, user, float(rating), int(ts)))
        except ValueError:
            bad.append(line)
    return good, bad


def parse_meta(path: Path) -> tuple[dict[str, dict], list[str]]:
    records, broken = {}, []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
                records[record["asin"]] = record
            except json.JSONDecodeError:
                broken.append(line)
    return records, broken


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(demo, tmp_path):
    out, _ = demo
    again = tmp_path / "again"
    generate_demo(again, seed=0)
    assert files(again) == files(out)
    other = tmp_path / "other"
    generate_demo(other, seed=1)
    assert files(other)["Kitchen/Kitchen.csv"] != files(out)["Kitchen/Kitchen.csv"]


def test_layout_is_the_amazon_2018_raw_layout(demo):
    out, manifest = demo
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(DOMAINS)
    assert len(DOMAINS) >= 4 and manifest["held_out_domain"] == HELD_OUT
    total_users = 0
    for domain in DOMAINS:
        assert sorted(p.name for p in (out / domain).iterdir()) == [
            f"{domain}.csv",
            f"meta_{domain}.json.gz",
        ]
        raw = (out / domain / f"meta_{domain}.json.gz").read_bytes()
        assert raw[4:8] == b"\0\0\0\0"  # gzip mtime 0: reproducible bytes
        events, _ = parse_csv(out / domain / f"{domain}.csv")
        assert all(r in {3.0, 4.0, 5.0} for _, _, r, _ in events)
        records, _ = parse_meta(out / domain / f"meta_{domain}.json.gz")
        assert {"asin", "title", "category", "brand"} <= set(next(iter(records.values())))
        total_users += len({u for _, u, _, _ in events})
    assert 2000 <= total_users <= 5000  # "a few thousand users in all"


def test_the_dirt_is_present(demo):
    out, manifest = demo
    for domain in DOMAINS:
        events, bad = parse_csv(out / domain / f"{domain}.csv")
        assert "" in bad  # empty line
        assert any(line.split(",")[1:2] == [""] for line in bad)  # missing user
        assert any(
            len(p := line.split(",")) == 4 and p[1] and not p[2][0].isdigit() for line in bad
        )
        assert any(len(p := line.split(",")) == 4 and not p[3].isdigit() for line in bad)
        lines = Counter((out / domain / f"{domain}.csv").read_text().splitlines())
        assert sum(n - 1 for line, n in lines.items() if line and n > 1) >= 10  # duplicates

        records, broken = parse_meta(out / domain / f"meta_{domain}.json.gz")
        assert len(broken) == 1
        textless = [a for a, r in records.items() if not r["title"] and not r["category"]]
        assert len(textless) == manifest["domains"][domain]["items_without_text"] >= 1
        assert any("&amp;" in r["title"] for r in records.values())  # HTML entities
        items_in_events = {i for i, _, _, _ in events}
        assert (
            len(items_in_events - set(records))
            == manifest["domains"][domain]["items_without_metadata"]
        )
        per_user = Counter(u for _, u, _, _ in events)
        assert sum(1 for n in per_user.values() if n < 5) >= 5  # users that 5-core removes
        lengths = [n for n in per_user.values() if n >= 5]
        assert max(lengths) <= 30 + 4  # 5..30 regular events (+ a few on ghost items)


def sequences(out: Path, domain: str) -> list[list[str]]:
    """Each user's items in time order, from the valid, de-duplicated events with metadata."""
    events, _ = parse_csv(out / domain / f"{domain}.csv")
    records, _ = parse_meta(out / domain / f"meta_{domain}.json.gz")
    by_user = defaultdict(set)
    for item, user, _, ts in events:
        if item in records and records[item]["title"]:
            by_user[user].add((ts, item))
    return [[i for _, i in sorted(v)] for v in by_user.values() if len(v) >= 5]


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_the_latent_sequential_signal_is_strong_and_beats_popularity(demo, domain):
    out, manifest = demo
    topic = manifest["domains"][domain]["item_topic"]
    seqs = sequences(out, domain)

    pairs = [(a, b) for s in seqs for a, b in zip(s, s[1:], strict=False)]
    agreement = sum(topic[a] == topic[b] for a, b in pairs) / len(pairs)
    shares = Counter(topic[i] for s in seqs for i in s)
    chance = sum((n / sum(shares.values())) ** 2 for n in shares.values())
    assert agreement > 0.7 and agreement > 5 * chance, (agreement, chance)

    # A first-order Markov model fitted on all but each user's last step beats popularity
    # on that last step by a wide margin: the signal a sequential recommender can learn.
    transitions: dict[str, Counter] = defaultdict(Counter)
    popularity: Counter = Counter()
    for s in seqs:
        popularity.update(s[:-1])
        for a, b in zip(s[:-2], s[1:-1], strict=False):
            transitions[a][b] += 1
    top_pop = [i for i, _ in popularity.most_common(10)]
    hit_pop = sum(s[-1] in top_pop for s in seqs) / len(seqs)
    hit_markov = sum(
        s[-1] in [i for i, _ in transitions[s[-2]].most_common(10)] for s in seqs
    ) / len(seqs)
    assert hit_markov > 0.5 and hit_markov > 3 * hit_pop, (hit_markov, hit_pop)


def test_cli_writes_the_data_and_rejects_bad_arguments(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "d"), "--seed", "3", "--users", "200"]) == 0
    assert "Toys:" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "d" / "demo_manifest.json").read_text())
    assert manifest["seed"] == 3 and sum(d["users"] for d in manifest["domains"].values()) == 200
    assert main(["--out", str(tmp_path / "e"), "--users", "5"]) == 2
    assert "too small" in capsys.readouterr().err
