"""A small, deterministic, multi-domain demo data set in the Amazon 2018 raw layout.

    vqrec demo --out DIR [--seed 0] [--users 4000]

writes, for each of four domains (Arts, Garden, Kitchen, Toys; Toys is meant to be held out
as the "new domain"):

    DIR/<Domain>/<Domain>.csv             item,user,rating,timestamp (no header)
    DIR/<Domain>/meta_<Domain>.json.gz    JSON lines: asin, title, category (list), brand
    DIR/demo_manifest.json                seed, counts, and the latent truth (item topics
                                          and series) for tests and sanity checks

Why the data is learnable and transferable: every item belongs to one of a dozen latent
*topics* shared by all domains (a topic has its own words and brands, e.g. "Frost", "Alpine
Outfitters"), and to a *series* within its domain and topic ("Velora ... No. 1, No. 2, ...").
Users drift between topics on a Markov chain (stay, step to a neighbouring topic on a ring,
rarely jump) and often buy the next item of the series they just bought. Topic words,
brands and series names are in the text, so a text-based sequential model can learn the
pattern in one domain and reuse it in another; popularity alone cannot.

The data is dirty on purpose, like real logs: exact duplicate events, malformed rating lines
(empty, missing user, non-numeric rating or timestamp), a non-JSON metadata line, items with
no text at all, events on items without metadata, users with fewer than 5 events, and HTML
entities in titles. Same seed -> byte-identical files (gzip mtime 0, no file name in header).
"""

from __future__ import annotations

import argparse
import calendar
import gzip
import io
import itertools
import json
import random
import string
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqrec.stages.flags import comma_list

# Latent topics: name -> (words that appear in titles, brands). Shared by all domains.
TOPICS: dict[str, tuple[list[str], list[str]]] = {
    "vintage": (["Retro", "Classic", "Antique", "Heritage", "Timeless"], ["Olde Mill", "Vantage"]),
    "ocean": (["Marine", "Coastal", "Nautical", "Seaside", "Tidal"], ["Bluewater", "Harbor Co"]),
    "forest": (["Woodland", "Pine", "Cedar", "Mossy", "Wildwood"], ["Timberline", "Fernhill"]),
    "space": (["Cosmic", "Galaxy", "Stellar", "Lunar", "Nebula"], ["Orbitron", "Starforge"]),
    "sport": (["Athletic", "Active", "Sprint", "Endurance", "Pro"], ["Velocity", "Peak Form"]),
    "minimal": (["Simple", "Minimal", "Plain", "Essential", "Nordic"], ["Bare Goods", "Linea"]),
    "kids": (["Playful", "Rainbow", "Happy", "Bouncy", "Giggle"], ["Tiny Tots", "Funhouse"]),
    "luxury": (["Premium", "Gilded", "Deluxe", "Elegant", "Royal"], ["Aurum", "Maison Belle"]),
    "tech": (["Smart", "Digital", "Wireless", "Electric", "Connected"], ["Voltix", "Nexa"]),
    "floral": (
        ["Floral", "Blossom", "Botanical", "Herbal", "Petal"],
        ["Bloom &amp; Co", "Verde &amp; Vine"],
    ),
    "winter": (["Frost", "Snowy", "Arctic", "Cozy", "Alpine"], ["Alpine Outfitters", "Polar"]),
    "desert": (["Sandy", "Cactus", "Sunset", "Canyon", "Terracotta"], ["Mesa", "Dune Works"]),
}
TOPIC_NAMES = list(TOPICS)

# Domains: product nouns and a category path root. Toys is the suggested held-out domain.
DOMAINS: dict[str, tuple[str, list[str]]] = {
    "Arts": (
        "Arts, Crafts & Sewing",
        ["Sketchbook", "Paint Set", "Brush Kit", "Canvas Pack", "Marker Set", "Clay Kit"],
    ),
    "Garden": (
        "Patio, Lawn & Garden",
        ["Planter", "Watering Can", "Trowel", "Bird Feeder", "Garden Lantern", "Seed Kit"],
    ),
    "Kitchen": (
        "Home & Kitchen",
        ["Mug", "Kettle", "Skillet", "Cutting Board", "Teapot", "Serving Bowl"],
    ),
    "Toys": (
        "Toys & Games",
        ["Puzzle", "Plush Bear", "Building Set", "Kite", "Board Game", "Race Car"],
    ),
}
HELD_OUT = "Toys"


@dataclass
class DemoConfig:
    """Knobs of the generator; the defaults make a few-second, few-thousand-user data set."""

    seed: int = 0
    users: int = 4000  # in all, split over the domains
    series_per_topic: int = 4  # per domain
    series_len: tuple[int, int] = (3, 7)  # items per series
    seq_len: tuple[int, int] = (5, 30)  # events per regular user
    p_next_in_series: float = 0.55  # buy the next item of the series just bought
    p_stay_topic: float = 0.6  # else: stay in the topic ...
    p_neighbour_topic: float = 0.3  # ... step to a ring neighbour, or jump anywhere
    short_user_share: float = 0.05  # users with 1-4 events (removed by 5-core)
    duplicate_share: float = 0.01  # exact duplicate event lines
    textless_items: int = 3  # per domain: empty title, no category, no brand
    ghost_items: int = 4  # per domain: items with events but no metadata


def _asin(rng: random.Random) -> str:
    return "B0" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=8))


def _user_id(rng: random.Random) -> str:
    return "A" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=13))


def _series_name(rng: random.Random, taken: set[str]) -> str:
    """A pronounceable made-up word ("Velora"), unique within the data set."""
    while True:
        sylls = ["".join((rng.choice("bdfgklmnprstvz"), rng.choice("aeiou"))) for _ in range(3)]
        name = ("".join(sylls) + rng.choice(["", "n", "r", "x"])).capitalize()
        if name not in taken:
            taken.add(name)
            return name


def _items(rng: random.Random, domain: str, cfg: DemoConfig, taken: set[str]) -> list[dict]:
    """The catalogue of one domain: items grouped in series, series grouped in topics."""
    root, nouns = DOMAINS[domain]
    items = []
    for topic in TOPIC_NAMES:
        words, brands = TOPICS[topic]
        for _ in range(cfg.series_per_topic):
            series = _series_name(rng, taken)
            noun = rng.choice(nouns)
            brand = rng.choice(brands)
            for number in range(1, rng.randint(*cfg.series_len) + 1):
                adjectives = " ".join(rng.sample(words, 2))
                items.append(
                    {
                        "asin": _asin(rng),
                        "title": f"{brand} {series} {adjectives} {noun} No. {number}",
                        "category": [root, noun + "s", words[0] + " Collection"],
                        "brand": brand,
                        "topic": topic,
                        "series": series,
                        "number": number,
                    }
                )
    return items


def _next_topic(rng: random.Random, topic: int, cfg: DemoConfig) -> int:
    u = rng.random()
    if u < cfg.p_stay_topic:
        return topic
    if u < cfg.p_stay_topic + cfg.p_neighbour_topic:
        return (topic + rng.choice((-1, 1))) % len(TOPIC_NAMES)
    return rng.randrange(len(TOPIC_NAMES))


def _sequence(
    rng: random.Random,
    length: int,
    by_topic: list[list[int]],
    cum_weights: list[list[float]],
    next_in_series: dict[int, int],
    cfg: DemoConfig,
) -> list[int]:
    """One user's item indices: a topic Markov chain with series continuation."""
    topic = rng.randrange(len(TOPIC_NAMES))
    seq: list[int] = []
    while len(seq) < length:
        last = seq[-1] if seq else None
        if last is not None and last in next_in_series and rng.random() < cfg.p_next_in_series:
            seq.append(next_in_series[last])
            continue
        if last is not None:
            topic = _next_topic(rng, topic, cfg)
        item = rng.choices(by_topic[topic], cum_weights=cum_weights[topic])[0]
        if item != last:
            seq.append(item)
    return seq


def _gzip_bytes(text: str) -> bytes:
    """gzip with mtime 0 and no file name: the same text always gives the same bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as fh:
        fh.write(text.encode("utf-8"))
    return buffer.getvalue()


def _domain(rng: random.Random, domain: str, n_users: int, cfg: DemoConfig, taken: set[str]):
    """Generate one domain: (csv text, meta json-lines text, manifest entry)."""
    items = _items(rng, domain, cfg, taken)
    topic_index = {t: i for i, t in enumerate(TOPIC_NAMES)}
    by_topic: list[list[int]] = [[] for _ in TOPIC_NAMES]
    for i, item in enumerate(items):
        by_topic[topic_index[item["topic"]]].append(i)
    # Zipf-like popularity inside each topic, in a random order of the topic's items. Drawn
    # from cumulative weights computed once: ``choices(weights=...)`` accumulates them on
    # every call, which made generating quadratic (events x items) at the cost curve's sizes;
    # the draws (one random() and a bisect each) and so the files are the same.
    cum_weights = []
    for members in by_topic:
        ranks = list(range(1, len(members) + 1))
        rng.shuffle(ranks)
        cum_weights.append(list(itertools.accumulate(1.0 / r**0.8 for r in ranks)))
    next_in_series = {
        i: i + 1 for i in range(len(items) - 1) if items[i + 1]["series"] == items[i]["series"]
    }

    events: list[tuple[str, str, str, int]] = []  # item, user, rating, ts
    t_start = calendar.timegm((2016, 1, 1, 0, 0, 0))  # UTC, whatever the machine's zone
    n_short = 0
    for _ in range(n_users):
        user = _user_id(rng)
        if rng.random() < cfg.short_user_share:
            length = rng.randint(1, 4)
            n_short += 1
        else:
            length = rng.randint(*cfg.seq_len)
        ts = t_start + rng.randrange(0, 2 * 365 * 86400)
        for item in _sequence(rng, length, by_topic, cum_weights, next_in_series, cfg):
            ts += rng.randrange(3600, 20 * 86400)  # strictly increasing per user
            events.append((items[item]["asin"], user, f"{rng.choice([3, 4, 4, 5, 5, 5])}.0", ts))

    # Items with events but no metadata line: enough events to survive 5-core otherwise.
    ghosts = [_asin(rng) for _ in range(cfg.ghost_items)]
    users_seen = sorted({e[1] for e in events})
    for ghost in ghosts:
        for user in rng.sample(users_seen, 6):
            events.append((ghost, user, "5.0", t_start + rng.randrange(0, 3 * 365 * 86400)))

    lines = [f"{i},{u},{r},{t}" for i, u, r, t in events]
    n_dup = max(1, int(len(lines) * cfg.duplicate_share))
    lines += rng.sample(lines, n_dup)  # exact duplicates
    rng.shuffle(lines)
    some = events[0]
    malformed = [
        "",  # empty line
        f"{some[0]},,5.0,{some[3]}",  # missing user
        f"{some[0]},{some[1]},five,{some[3]}",  # non-numeric rating
        f"{some[0]},{some[1]},4.0,yesterday",  # non-numeric timestamp
    ]
    for line in malformed:
        lines.insert(rng.randrange(len(lines)), line)

    # Metadata: real items, a few without any text, one line that is not JSON.
    textless = set(rng.sample(range(len(items)), cfg.textless_items))
    meta_lines = []
    for i, item in enumerate(items):
        if i in textless:
            record = {"asin": item["asin"], "title": "", "category": []}
        else:
            record = {k: item[k] for k in ("asin", "title", "category", "brand")}
        meta_lines.append(json.dumps(record, ensure_ascii=False))
    rng.shuffle(meta_lines)  # file order must not leak the topic/series structure
    meta_lines.insert(rng.randrange(len(meta_lines)), '{"asin": "B0BROKEN01", "title": "Broken')

    entry = {
        "items": len(items),
        "items_without_text": len(textless),
        "items_without_metadata": len(ghosts),
        "users": n_users,
        "users_under_5_events": n_short,
        "events": len(events),
        "duplicate_lines": n_dup,
        "malformed_lines": len(malformed),
        "non_json_meta_lines": 1,
        "item_topic": {item["asin"]: item["topic"] for item in items},
        "item_series": {item["asin"]: [item["series"], item["number"]] for item in items},
    }
    return "\n".join(lines) + "\n", "\n".join(meta_lines) + "\n", entry


def generate_demo(
    out_dir: str | Path,
    seed: int = 0,
    users: int = 4000,
    domains: list[str] | None = None,
    config: DemoConfig | None = None,
) -> dict[str, Any]:
    """Write the demo data set under ``out_dir``; returns the manifest (also written).

    ``users`` are split over the domains in fixed shares (so domain sizes differ, like real
    ones). The same seed and arguments always give byte-identical files.
    """
    cfg = config or DemoConfig()
    cfg.seed, cfg.users = seed, users
    names = list(domains or DOMAINS)
    unknown = [d for d in names if d not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown demo domain(s) {unknown}; choose from {sorted(DOMAINS)}")
    if users < 10 * len(names):
        raise ValueError(f"--users {users} is too small: use at least {10 * len(names)}")
    shares = [1.0 + 0.25 * i for i in range(len(names))]
    counts = [int(users * s / sum(shares)) for s in shares]
    counts[-1] += users - sum(counts)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    taken: set[str] = set()
    manifest: dict[str, Any] = {
        "seed": seed,
        "users": users,
        "held_out_domain": HELD_OUT if HELD_OUT in names else None,
        "topics": TOPIC_NAMES,
        "domains": {},
    }
    for name, n_users in zip(names, counts, strict=True):
        csv_text, meta_text, entry = _domain(rng, name, n_users, cfg, taken)
        folder = out / name
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.csv").write_text(csv_text, encoding="utf-8")
        (folder / f"meta_{name}.json.gz").write_bytes(_gzip_bytes(meta_text))
        manifest["domains"][name] = entry
    (out / "demo_manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """``vqrec demo``: write the demo data set and print a one-line summary per domain."""
    parser = argparse.ArgumentParser(prog="vqrec demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the domains into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--users", type=int, default=4000, help="users in all domains together")
    parser.add_argument(
        "--domains",
        type=comma_list,
        default=(),
        help=f"comma-separated, of {','.join(sorted(DOMAINS))} (default: all)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        manifest = generate_demo(args.out, seed=args.seed, users=args.users, domains=args.domains)
    except (ValueError, OSError) as exc:
        print(f"vqrec demo: error: {exc}", file=sys.stderr)
        return 2
    for name, entry in manifest["domains"].items():
        print(f"{name}: {entry['users']} users, {entry['items']} items, {entry['events']} events")
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s (seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
