"""Day 1 / day 2 on real data: the incremental nightly against a full refresh (not a test).

    python benchmarks/cadence_study.py run [--pretrain-epochs 8] [--targets Scientific,Beauty]
    python benchmarks/cadence_study.py table

The cut: the three domains of ../shared/data (read in place) are cut at one instant T, the
``--day1-share`` quantile (default 0.9) of all their events' timestamps. The timestamps are
synthetic but strictly increasing along each user's published order, so "events up to T"
is every user's prefix, as a log that grows day by day would be. Day 1's snapshot holds the
rating lines with a timestamp <= T and the metadata of the items seen by then (plus items
no event names); day 2's holds everything. Lines whose timestamp does not parse (the raw
files' noise) are in both: the cleaner quarantines them either way.

The runs, each the real ``vqrec_nightly`` DAG through ``airflow dags test`` (spark-submit,
local MLflow store in the lake), with the same hyper-parameters:

* ``day1-refresh``: a fresh lake, day 1's snapshot (the first run is a refresh by itself);
* ``day2-incremental``: a copy of day 1's lake, day 2's snapshot, ``cadence=incremental``;
* ``day2-refresh``: another copy, day 2's snapshot, ``cadence=refresh``.

For each run: the DAG's wall time, each task's wall time (Airflow's metadata DB) and every
target domain's test N@10 and R@10 (the fine-tuned model on day 2's test split). Results go
to ``benchmarks/results/cadence.json``; a finished run is not run again (resume).
The lake copies share day 1's MLflow artifact folder (MLflow stores artifact locations as
absolute paths); run ids differ, so nothing collides.

Pre-training is capped at ``--pretrain-epochs`` for both refreshes (the same cap, so the
comparison is fair); a capped backbone is weaker than a converged one, which the table says.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VQREC_SHARED_DATA", ROOT.parent / "shared" / "data"))
WORK = ROOT / "var" / "cadence"
RESULTS = ROOT / "benchmarks" / "results" / "cadence.json"
DOMAINS = ("Games", "Beauty", "Scientific")
PRETRAIN = ("Games", "Beauty")
DAY1, DAY2 = "2026-12-01", "2026-12-02"
STAGE_ORDER = ("plan", "clean", "encode", "codes", "pretrain", "finetune", "evaluate",
               "register", "recommend")  # fmt: skip
RUNS = {  # name -> (date, cadence, the lake it starts from)
    "day1-refresh": (DAY1, "refresh", None),
    "day2-incremental": (DAY2, "incremental", "day1-refresh"),
    "day2-refresh": (DAY2, "refresh", "day1-refresh"),
}


def _timestamp(row: list[str]) -> int | None:
    try:
        return int(row[3])
    except (IndexError, ValueError):
        return None


def _ratings(domain: str) -> list[list[str]]:
    with open(SHARED / domain / "raw" / f"{domain}.csv", newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def cut_time(share: float) -> int:
    """T: the ``share`` quantile of every parseable timestamp of the three domains."""
    stamps = [t for d in DOMAINS for r in _ratings(d) if (t := _timestamp(r)) is not None]
    return int(np.quantile(np.array(stamps, dtype=np.int64), share))


def write_snapshots(share: float) -> dict:
    """raw/dt=<day1>/ and raw/dt=<day2>/ under WORK; returns the cut's counts."""
    marker = WORK / "raw" / "cut.json"
    if marker.exists():
        return json.loads(marker.read_text())
    t_cut = cut_time(share)
    counts: dict = {"T": t_cut, "day1_share": share, "domains": {}}
    for domain in DOMAINS:
        rows = _ratings(domain)
        day1 = [r for r in rows if (t := _timestamp(r)) is None or t <= t_cut]
        seen1 = {r[0] for r in day1 if r}
        named = {r[0] for r in rows if r}
        meta_lines = gzip.open(SHARED / domain / "raw" / f"meta_{domain}.json.gz", "rt").read()
        meta_lines = meta_lines.splitlines(keepends=True)
        meta1 = [line for line in meta_lines if _meta_day1(line, seen1, named)]
        for date, ratings, meta in ((DAY1, day1, meta1), (DAY2, rows, meta_lines)):
            folder = WORK / "raw" / f"dt={date}" / domain
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / f"{domain}.csv", "w", newline="", encoding="utf-8") as f:
                csv.writer(f, lineterminator="\n").writerows(ratings)
            with gzip.open(folder / f"meta_{domain}.json.gz", "wt", encoding="utf-8") as f:
                f.writelines(meta)
        counts["domains"][domain] = {
            "lines_day1": len(day1), "lines_day2": len(rows),
            "items_day1": len(meta1), "items_day2": len(meta_lines),
        }  # fmt: skip
    marker.write_text(json.dumps(counts, indent=1) + "\n")
    return counts


def _meta_day1(line: str, seen1: set[str], named: set[str]) -> bool:
    """Day 1 has an item's metadata once an event names it, or when no event ever does."""
    try:
        asin = json.loads(line).get("asin")
    except (json.JSONDecodeError, AttributeError):
        return True  # the raw noise: in both snapshots
    return asin in seen1 or asin not in named


def _env(run: str, args: argparse.Namespace) -> dict[str, str]:
    home = WORK / run
    hyper = {
        "pretrain": {"epochs": args.pretrain_epochs},
        "finetune": {},
    }
    return os.environ | {
        "VQREC_LAKE": str(home / "lake"),
        "VQREC_RAW_ROOT": str(WORK / "raw"),
        "VQREC_DOMAINS": ",".join(DOMAINS),
        "VQREC_PRETRAIN_DOMAINS": ",".join(PRETRAIN),
        "VQREC_TARGET_DOMAINS": args.targets,
        "VQREC_CODE_STRATEGY": "domain",
        "VQREC_HYPER": json.dumps(hyper),
        "AIRFLOW_HOME": str(home / "airflow"),
    }


def run_one(name: str, args: argparse.Namespace) -> dict:
    """One nightly through ``airflow dags test``; its wall time and figures."""
    date, cadence, start_from = RUNS[name]
    home = WORK / name
    if home.exists():  # an unfinished earlier try: start it again from its starting lake
        shutil.rmtree(home)
    home.mkdir(parents=True)
    if start_from:
        shutil.copytree(WORK / start_from / "lake", home / "lake", symlinks=True)
    env = _env(name, args)
    shell = f"source infra/env.sh && bash infra/airflow_init.sh > {home}/airflow_init.log 2>&1"
    subprocess.run(["bash", "-c", shell], cwd=ROOT, env=env, check=True)
    conf = json.dumps({"cadence": cadence})
    log = home / "nightly.log"
    t0 = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.run(
            ["bash", "-c", f"source infra/env.sh && airflow dags test vqrec_nightly {date} "
             f"-c '{conf}'"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        ).returncode  # fmt: skip
    wall = time.perf_counter() - t0
    if rc:
        raise SystemExit(f"{name} failed (rc {rc}); log {log}")
    return {"date": date, "cadence": cadence, "wall_s": round(wall, 1)} | figures(home, date)


def figures(home: Path, date: str) -> dict:
    """Per target domain: test N@10 / R@10 of the night's fine-tuned model; stage times."""
    from vqrec.orchestration.pipeline import version_for

    version = version_for(f"{date}T00:00:00+00:00", "")
    models = home / "lake" / "models" / version
    out: dict = {"domains": {}, "stages_s": {}}
    for metrics in sorted(models.glob("domains/*/metrics.json")):
        m = json.loads(metrics.read_text())
        train = [h for h in m["history"] if h["phase"] == "train"]
        out["domains"][metrics.parent.name] = {
            "test_ndcg@10": m["test"]["ndcg@10"], "test_recall@10": m["test"]["recall@10"],
            "epochs": len(train), "best_epoch": m["best_epoch"],
        }  # fmt: skip
    out["stages_s"] = stage_seconds(home)
    return out


def stage_seconds(home: Path) -> dict[str, float]:
    """Each task's seconds in the run's Airflow metadata DB (a mapped task's maps summed:
    ``airflow dags test`` runs them one after another)."""
    db = sqlite3.connect(home / "airflow" / "airflow.db")
    try:
        rows = db.execute(
            "SELECT task_id, SUM(duration) FROM task_instance "
            "WHERE dag_id = 'vqrec_nightly' GROUP BY task_id"
        ).fetchall()
    finally:
        db.close()
    return {task: round(seconds, 1) for task, seconds in rows if seconds is not None}


def _results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def run(args: argparse.Namespace) -> None:
    results = _results()
    results["cut"] = write_snapshots(args.day1_share)
    results["settings"] = {"pretrain_epochs_cap": args.pretrain_epochs, "targets": args.targets,
                           "pretrain_domains": list(PRETRAIN), "cpus": os.cpu_count()}  # fmt: skip
    runs = results.setdefault("runs", {})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for name in RUNS:
        if name in runs:  # finished: its figures again from its lake, where it still is
            if (WORK / name / "lake").exists():
                runs[name] |= figures(WORK / name, runs[name]["date"])
                RESULTS.write_text(json.dumps(results, indent=1) + "\n")
            continue
        print(f"{name} ...", flush=True)
        runs[name] = run_one(name, args)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{name}: {runs[name]['wall_s']:.0f} s", json.dumps(runs[name]["domains"]),
              flush=True)  # fmt: skip
    table()


def table() -> None:
    runs = _results().get("runs", {})
    inc, ref = runs.get("day2-incremental"), runs.get("day2-refresh")
    print(f"{'run':<18}{'wall_s':>9}  test N@10 per domain")
    for name, r in runs.items():
        cells = "  ".join(f"{d} {v['test_ndcg@10']:.4f}" for d, v in r["domains"].items())
        print(f"{name:<18}{r['wall_s']:>9.0f}  {cells}")
    stages = [t for t in STAGE_ORDER if any(t in r.get("stages_s", {}) for r in runs.values())]
    if stages:
        print(f"\n{'task seconds':<18}" + "".join(f"{name:>18}" for name in runs))
        for task in stages:
            cells = [r.get("stages_s", {}).get(task) for r in runs.values()]
            print(f"{task:<18}" + "".join(f"{c:>18.1f}" if c is not None else f"{'':>18}"
                                          for c in cells))  # fmt: skip
    if inc and ref:
        print(f"day 2, incremental / refresh wall time: {inc['wall_s'] / ref['wall_s']:.2f}")
        for d, v in ref["domains"].items():
            if d in inc["domains"]:
                rel = inc["domains"][d]["test_ndcg@10"] / v["test_ndcg@10"] - 1
                print(f"  {d}: incremental N@10 {rel:+.1%} against the refresh")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run", "table"])
    parser.add_argument(
        "--pretrain-epochs",
        type=int,
        default=8,
        help="the cap on both refreshes' pre-training (default: %(default)s)",
    )
    parser.add_argument(
        "--targets",
        default="Scientific,Beauty",
        help="comma-separated target domains (default: %(default)s)",
    )
    parser.add_argument(
        "--day1-share",
        type=float,
        default=0.9,
        help="the events before the cut, a quantile (default: %(default)s)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    if args.command == "run":
        run(args)
    else:
        table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
