#!/usr/bin/env bash
# The README's test command: fresh venv from pyproject.toml, then the test suite.
# Real-data tests run at smoke size unless VQREC_FULL=1; extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/setup_venv.sh
export PATH="$PWD/.venv/bin:$PATH" PYSPARK_PYTHON="$PWD/.venv/bin/python"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when nothing was collected: that is a broken suite, not a pass.
if [ "$rc" -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit "$rc"
