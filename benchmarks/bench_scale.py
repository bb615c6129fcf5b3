"""The cost curve: wall time and peak memory of every stage against data size (not a test).

    python benchmarks/bench_scale.py run [--sizes 200000,2000000,20000000] [--negatives K]
    python benchmarks/bench_scale.py run --domain Games --negatives 1024   # a real domain
    python benchmarks/bench_scale.py run --domain Games --negatives 1024 --rerun-from recommend
    python benchmarks/bench_scale.py report    # table, slopes, docs/scale.png

For each size (events in one synthetic domain, the demo generator scaled: ~17 events a user,
about one item per 100 events, so 20M events are ~1.2M users and ~200k items) the script
generates the raw data under ``var/scale/<events>/raw`` and runs the stages as the CLI runs
them, each in its own process, on a lake of its own:

    clean -> encode (items only) -> codes -> train (one epoch, scratch) -> evaluate (test,
    full ranking) -> register (a local MLflow store) -> recommend (top-10 for every user)

and appends one JSON line per finished (size, stage) to ``benchmarks/results/scale.jsonl``:
wall time, peak memory (the resident set of the stage's whole process tree, Spark's JVM
included, sampled every 0.2 s) and the counts. The stages at the front of the chain that are
recorded and whose output is still on the lake are skipped, so a stopped run resumes where it
was; every stage after the first one that runs runs again. ``report`` fits the slope of
log(time) against log(events) per stage (1.0 = linear) and draws the log-log plot.

``--domain D`` runs the same chain on the real domain D of ../shared/data (read in place, from
its raw files, so ``clean`` does the real cleaning); its records carry ``source`` and are
reported beside the curve, with the batch recommendations' users/s.

``--negatives K`` trains with the sampled softmax (``vqrec finetune --negatives K``) instead of
the full one; its records are the stage ``train K=<K>``, beside the full softmax's ``train``.
Both also show their one epoch alone (``... epoch``), without the stage's fixed costs.

Wall times are whatever the machine gives: the record says how many CPUs it had and the load
average when the stage started, so a figure from a loaded machine says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VQREC_SHARED_DATA", ROOT.parent / "shared" / "data"))
WORK = ROOT / "var" / "scale"
RESULTS = ROOT / "benchmarks" / "results" / "scale.jsonl"
PLOT = ROOT / "docs" / "scale.png"
DOMAIN = "Arts"
EVENTS_PER_USER = 17  # the demo's regular users: 5-30 events, a few short ones
EVENTS_PER_ITEM = 100
# `train` validates its epoch on this fixed sample of valid rows (--valid-rows): every valid
# row costs a full ranking, users x items like `evaluate`, which at 20M events would make the
# stage hours of validation around a minutes-long epoch. Records without ``valid_rows``
# validated on every valid row; their `train ... epoch` rows (the epoch alone) compare.
VALID_ROWS = 10_000
STAGES = ("clean", "encode", "codes", "train", "evaluate", "register", "recommend")


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip()


def _tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants (0 for those already gone)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run ``cmd``; its wall time and the peak RSS of its process tree (sampled every 0.2 s)."""
    peak = 0
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        proc = psutil.Process(child.pid)
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _tree_rss(proc))
                stop.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = child.wait()
        stop.set()
        sampler.join()
    wall = time.perf_counter() - t0
    if rc:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"{' '.join(cmd[2:4])} failed (rc {rc}); log {log}:\n" + "\n".join(tail))
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(peak / 2**20), "load_at_start": load}


def generate(events: int, raw: Path) -> dict:
    """The demo generator at ``events`` events in one domain; returns its manifest entry."""
    from vqrec.devtools.demo import DemoConfig, generate_demo

    done = raw / "demo_manifest.json"
    if done.exists():
        return json.loads(done.read_text())["domains"][DOMAIN]
    # items = 12 topics x series_per_topic x ~5 items a series
    series = max(4, round(events / EVENTS_PER_ITEM / 60))
    config = DemoConfig(series_per_topic=series)
    manifest = generate_demo(raw, seed=0, users=events // EVENTS_PER_USER, domains=[DOMAIN],
                             config=config)  # fmt: skip
    return manifest["domains"][DOMAIN]


def stage_commands(
    work: Path, domain: str, raw: Path, negatives: int = 0
) -> dict[str, tuple[list[str], Path]]:
    """Stage -> (the CLI command, the lake folder its success leaves)."""
    lake = work / "lake"
    cli = [sys.executable, "-m", "vqrec.cli"]
    common = ["--lake", str(lake)]
    return {
        "clean": (cli + ["clean", "--raw", str(raw), "--version", "s"] + common,
                  lake / "clean" / "s"),
        "encode": (cli + ["encode", "--clean-version", "s", "--version", "s"] + common,
                   lake / "embeddings" / "s"),
        "codes": (cli + ["codes", "--target-domains", domain, "--pretrain-domains", "",
                         "--strategy", "domain", "--embeddings-version", "s",
                         "--clean-version", "s", "--version", "s"] + common,
                  lake / "codes" / "s"),
        "train": (cli + ["finetune", "--mode", "scratch", "--domain", domain, "--epochs", "1",
                         "--clean-version", "s", "--codes-version", "s", "--version", "s",
                         "--no-progress", "--negatives", str(negatives),
                         "--valid-rows", str(VALID_ROWS)] + common,
                  lake / "models" / "s"),
        "evaluate": (cli + ["evaluate", "--models-version", "s", "--domain", domain,
                            "--split", "test", "--clean-version", "s"] + common, None),
        "register": (cli + ["register", "--version", "s", "--no-backbone",
                            "--domains", domain] + common, None),
        "recommend": (cli + ["recommend", "--clean-version", "s", "--version", "s",
                             "--domains", domain] + common,
                      lake / "recommendations" / "s"),
    }  # fmt: skip


def _records() -> list[dict]:
    if not RESULTS.exists():
        return []
    return [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]


def _train_epoch_s(work: Path, domain: str) -> float | None:
    """The one training epoch's own seconds (without its validation), from metrics.json."""
    metrics = work / "lake" / "models" / "s" / "domains" / domain / "metrics.json"
    if not metrics.exists():
        return None
    history = [h for h in json.loads(metrics.read_text())["history"] if h["phase"] == "train"]
    return round(history[0]["seconds"], 1) if history else None


def _trained_negatives(work: Path, domain: str) -> int:
    """The sampled softmax's K of the model on the lake (0: the full softmax)."""
    config = work / "lake" / "models" / "s" / "domains" / domain / "config.json"
    return json.loads(config.read_text())["train"].get("negatives", 0)


def _check_recommended(work: Path, domain: str) -> None:
    """Refuse a recommend run that skipped the domain (no champion): it measured nothing."""
    from vqrec.lake.store import read_success

    entry = read_success(work / "lake" / "recommendations" / "s")["domains"][domain]
    if "skipped" in entry:
        raise SystemExit(f"recommend skipped {domain}: {entry['skipped']}")


def _cleaned_counts(work: Path, domain: str) -> dict:
    """Users, items and events of a real domain as the clean stage kept them."""
    from vqrec.lake.store import read_success

    summary = read_success(work / "lake" / "clean" / "s")["domains"][domain]
    return {"users": summary["users"], "items": summary["items"], "events": summary["kept"]}


def label(record: dict) -> str:
    """A record's row in the report: its stage, and the sampled softmax's K for training."""
    k = record.get("negatives", 0)
    return f"{record['stage']} K={k}" if k else record["stage"]


def run_size(events: int, negatives: int, rerun_from: str = "") -> None:
    """Every stage on the synthetic domain of ``events`` events."""
    work = WORK / str(events)
    entry = generate(events, work / "raw")
    counts = {k: entry[k] for k in ("users", "items", "events")}
    run_chain(work, DOMAIN, work / "raw" / DOMAIN, negatives, {"size_events": events},
              lambda: counts, rerun_from)  # fmt: skip


def run_real(domain: str, negatives: int, rerun_from: str = "") -> None:
    """Every stage on a real domain of ../shared/data, read in place from its raw files."""
    raw = SHARED / domain
    if not (raw / "raw").is_dir():
        raise SystemExit(f"no real domain {domain!r} under {SHARED}")
    work = WORK / domain
    run_chain(work, domain, raw, negatives, {"source": domain},
              lambda: _cleaned_counts(work, domain), rerun_from)  # fmt: skip


def run_chain(
    work: Path,
    domain: str,
    raw: Path,
    negatives: int,
    key: dict,
    counts: Callable[[], dict],
    rerun_from: str = "",
) -> None:
    """Run the stages on one domain, skipping the recorded ones at the front of the chain.

    ``key`` identifies the domain's records (its synthetic size, or its real source);
    ``counts`` gives its users, items and events (for a real domain: once cleaned);
    ``rerun_from``: measure that stage and the ones after it again (e.g. on a quieter machine).
    """
    (work / "logs").mkdir(parents=True, exist_ok=True)
    done = {label(r) for r in _records() if all(r.get(k) == v for k, v in key.items())}
    env = os.environ | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
        "PYSPARK_PYTHON": sys.executable,
    }  # fmt: skip
    resumed = True  # skipping the finished stages at the front of the chain
    for stage, (cmd, output) in stage_commands(work, domain, raw, negatives).items():
        planned = label({"stage": stage, "negatives": negatives if stage == "train" else 0})
        on_lake = output is None or output.exists()
        if stage == "train" and on_lake:  # the model on the lake: trained with this K?
            on_lake = _trained_negatives(work, domain) == negatives
        if stage == rerun_from:
            resumed = False
        if resumed and planned in done and on_lake:
            continue
        # From here every stage runs again: its input changed (a registry without a model
        # let `recommend` skip the domain in a few seconds, which is no measurement).
        resumed = False
        if output is not None and output.exists():
            shutil.rmtree(output)
        print(f"{domain} {stage:<9}", end=" ", flush=True)
        record = measure(cmd, env, work / "logs" / f"{stage}.log")
        n = counts()
        record = key | {"size_events": n["events"], "stage": stage} | record | n | {
            "cpus": os.cpu_count(), "commit": _commit(),
        }  # fmt: skip
        if stage == "train":
            record |= {"epoch_s": _train_epoch_s(work, domain), "negatives": negatives,
                       "valid_rows": VALID_ROWS}  # fmt: skip
        if stage == "recommend":
            _check_recommended(work, domain)
            record["users_per_s"] = round(n["users"] / record["wall_s"], 1)
        print(f"{record['wall_s']:>8.1f} s  {record['peak_rss_mb']:>6} MiB", flush=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as f:
            f.write(json.dumps(record) + "\n")


def _latest() -> dict[tuple[int, str], dict]:
    """The last record of each (size, row): a rerun replaces an earlier figure. A training
    record also gives its epoch alone (row ``<label> epoch``, its ``epoch_s``)."""
    latest: dict[tuple[int, str], dict] = {}
    for r in _records():
        if "source" in r:  # a real domain: reported beside the curve, not on it
            continue
        latest[(r["size_events"], label(r))] = r
        if r.get("epoch_s"):
            latest[(r["size_events"], f"{label(r)} epoch")] = r | {"wall_s": r["epoch_s"]}
    return latest


def _rows(latest: dict[tuple[int, str], dict]) -> list[str]:
    """The report's rows: the stages in pipeline order, a stage's variants after it."""
    names = {name for _, name in latest}
    return sorted(names, key=lambda n: (STAGES.index(n.split()[0]), " K=" in n, n))


def slopes(latest: dict[tuple[int, str], dict]) -> dict[str, float]:
    """Per row, the least-squares slope of log(wall time) against log(events)."""
    import numpy as np

    out = {}
    for row in _rows(latest):
        points = sorted((s, r["wall_s"]) for (s, name), r in latest.items() if name == row)
        if len(points) >= 2:
            x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
            out[row] = float(np.polyfit(x, y, 1)[0])
    return out


def report() -> None:
    latest = _latest()
    sizes = sorted({s for s, _ in latest})
    print(f"{'stage':<18}" + "".join(f"{s:>22,}" for s in sizes) + "   slope")
    fitted = slopes(latest)
    for row in _rows(latest):
        cells = []
        for s in sizes:
            r = latest.get((s, row))
            cells.append(f"{r['wall_s']:>9.1f} s {r['peak_rss_mb']:>6} MiB" if r else " " * 22)
        slope = f"{fitted[row]:7.2f}" if row in fitted else ""
        print(f"{row:<18}" + "".join(f"{c:>22}" for c in cells) + slope)
    if sizes:
        first = [latest[k] for k in latest if k[0] == sizes[-1]][0]
        print(
            f"(largest: {first['users']:,} users, {first['items']:,} items; wall time, "
            "peak RSS of the stage's process tree; '... epoch': the training epoch alone)"
        )
    real_report()
    _plot(latest)


def real_report() -> None:
    """The last record of each stage on each real domain (``run --domain``), beside the curve."""
    latest: dict[str, dict[str, dict]] = {}
    for r in _records():
        if "source" in r:
            latest.setdefault(r["source"], {})[label(r)] = r
    for source, rows in sorted(latest.items()):
        any_row = next(iter(rows.values()))
        print(
            f"\nreal domain {source} ({any_row['events']:,} events, {any_row['users']:,} users, "
            f"{any_row['items']:,} items; load at start in brackets)"
        )
        for name in sorted(rows, key=lambda n: (STAGES.index(n.split()[0]), n)):
            r = rows[name]
            extra = f"  epoch {r['epoch_s']:.1f} s" if r.get("epoch_s") else ""
            if r.get("users_per_s"):
                extra = f"  {r['users_per_s']:,.0f} users/s"
            print(
                f"{name:<18}{r['wall_s']:>9.1f} s {r['peak_rss_mb']:>6} MiB  "
                f"[{r['load_at_start']:.1f}]{extra}"
            )


def _plot(latest: dict[tuple[int, str], dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in _rows(latest):
        points = sorted((s, r["wall_s"]) for (s, name), r in latest.items() if name == row)
        if points:
            style = "--" if row.endswith("epoch") else "-"
            ax.plot(*zip(*points, strict=True), style, marker="o", label=row)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("events (one synthetic domain)")
    ax.set_ylabel("wall time (s)")
    ax.set_title("vqrec stages against data size (2-core CPU machine)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)
    print(f"plot: {PLOT.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument(
        "--sizes",
        default="200000,2000000,20000000",
        help="comma-separated event counts (default: %(default)s)",
    )
    parser.add_argument(
        "--negatives",
        type=int,
        default=0,
        help="train with the sampled softmax over K items (0: full softmax)",
    )
    parser.add_argument(
        "--domain",
        default="",
        help="run the stages on this real domain of ../shared/data instead of --sizes",
    )
    parser.add_argument(
        "--rerun-from",
        default="",
        choices=["", *STAGES],
        help="measure this stage and the ones after it again, even where recorded",
    )
    args = parser.parse_args(argv)
    if args.command == "run" and args.domain:
        run_real(args.domain, args.negatives, args.rerun_from)
    elif args.command == "run":
        for events in sorted(int(s) for s in args.sizes.split(",") if s):
            run_size(events, args.negatives, args.rerun_from)
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
