"""After a pipeline run: what was registered, how good it is, and where to look."""

from __future__ import annotations

import argparse
import sys

from vqrec.lake.store import lake_root


def registered_models(lake: str) -> list[dict]:
    """Every registered vqrec model with its aliases and the champion's test figures."""
    from mlflow.tracking import MlflowClient

    from vqrec.mlops import tracking

    tracking.setup_tracking(lake)
    client = MlflowClient()
    rows = []
    for rm in client.search_registered_models():
        aliases = dict(rm.aliases or {})
        row = {"name": rm.name, "aliases": aliases, "metrics": {}}
        champion = aliases.get("champion")
        if champion:
            tags = client.get_model_version(rm.name, champion).tags or {}
            row["metrics"] = {
                k.removeprefix("vqrec.metric."): v
                for k, v in tags.items()
                if k.startswith("vqrec.metric.test")
            }
        rows.append(row)
    return sorted(rows, key=lambda r: r["name"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vqrec.mlops.report")
    parser.add_argument("--lake", default=None)
    parser.add_argument("--elapsed", type=float, default=None, help="seconds the run took")
    parser.add_argument("--log", default=None, help="the run's log file")
    args = parser.parse_args(argv)
    lake = str(lake_root(args.lake))
    from vqrec.mlops import tracking

    print("\nvqrec pipeline finished" + (f" in {args.elapsed:.0f} s" if args.elapsed else ""))
    print(f"lake: {lake}")
    if args.log:
        print(f"Airflow log: {args.log}")
    print("\nregistered models (alias -> version, champion's test metrics):")
    for row in registered_models(lake):
        aliases = ", ".join(f"{a}->v{v}" for a, v in sorted(row["aliases"].items()))
        figures = "  ".join(f"{k}={float(v):.4f}" for k, v in sorted(row["metrics"].items()))
        print(f"  {row['name']:<22} {aliases:<28} {figures}")
    uri = tracking.tracking_uri(lake)
    print("\nlook at it in the MLflow UI:")
    print(f"  .venv/bin/mlflow ui --backend-store-uri {uri} --port 5000   # http://127.0.0.1:5000")
    print("load a domain model downstream:")
    print("  mlflow.pyfunc.load_model('models:/vqrec-<domain>@champion')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
