#!/usr/bin/env bash
# Create (or reuse) ./.venv and install the project with its pins.
# torch first, exactly 2.13.0: any other spec pulls a multi-GB CUDA build;
# the constraint file keeps every later install from moving it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml constraints.txt | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  # pip's notes (ignored find-links locations, setuptools' editable-install banner) go to a
  # log, not the terminal; a failure shows its tail.
  log=.venv/install.log
  echo "installing the project into .venv (a few minutes the first time; log: $log)"
  if ! {
    .venv/bin/pip install -q --upgrade pip &&
      .venv/bin/pip install -q "torch==2.13.0" &&
      .venv/bin/pip install -q -e ".[dev]" -c constraints.txt
  } > "$log" 2>&1; then
    tail -40 "$log" >&2
    echo "setup_venv: pip install failed (full log: $log)" >&2
    exit 1
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
.venv/bin/python - <<'PY'
import importlib.metadata as md
a, b = md.version("pyspark"), md.version("pyspark-client")
assert a == b, f"pyspark {a} and pyspark-client {b} must match"
assert md.version("torch").startswith("2.13.0"), md.version("torch")
PY
