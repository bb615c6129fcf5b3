#!/usr/bin/env bash
# A new domain against a nightly, on the demo: wall time of `vqrec_new_domain` (Toys, held
# out of the nightly, on the champion backbone the nightly just registered) over the wall
# time of the `vqrec_nightly` run that produced that backbone. Both through
# `airflow dags test` exactly as infra/main.sh runs the nightly, in a fresh lake and Airflow
# home under var/bench-new-domain/ (the default lake is not touched).
#
#   bash benchmarks/bench_new_domain.sh [DATE]
#
# Prints both wall times and their ratio and writes benchmarks/results/new_domain_demo.json.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$PWD/var/bench-new-domain"
rm -rf "$work"
mkdir -p "$work" benchmarks/results
export VQREC_LAKE="$work/lake" AIRFLOW_HOME="$work/airflow"
# shellcheck source=infra/env.sh
source infra/env.sh
DATE="${1:-2026-11-20}"
bash infra/demo_data.sh
bash infra/airflow_init.sh

t0=$(date +%s.%N)
airflow dags test vqrec_nightly "$DATE" > "$work/nightly.log" 2>&1 || {
  tail -40 "$work/nightly.log"; echo "nightly failed: $work/nightly.log" >&2; exit 1; }
t1=$(date +%s.%N)
conf=$(printf '{"domain": "Toys", "raw_path": "%s/Toys", "lake": "%s", "code_strategy": "%s"}' \
  "$VQREC_RAW_ROOT" "$VQREC_LAKE" "$VQREC_CODE_STRATEGY")
airflow dags test vqrec_new_domain "$DATE" -c "$conf" > "$work/new_domain.log" 2>&1 || {
  tail -40 "$work/new_domain.log"; echo "new domain failed: $work/new_domain.log" >&2; exit 1; }
t2=$(date +%s.%N)

python - "$t0" "$t1" "$t2" "$DATE" <<'PY'
import json, os, subprocess, sys
t0, t1, t2 = map(float, sys.argv[1:4])
nightly, new = t1 - t0, t2 - t1
commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
# The 1-minute load average at the end: the machine is shared, so say how loaded it was.
doc = {"date": sys.argv[4], "nightly_s": round(nightly, 1), "new_domain_s": round(new, 1),
       "ratio": round(new / nightly, 3), "commit": commit,
       "load_1min": round(os.getloadavg()[0], 1)}
print(f"nightly {nightly:.0f} s, new domain (Toys) {new:.0f} s: {new / nightly:.2f}x")
with open("benchmarks/results/new_domain_demo.json", "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
PY
