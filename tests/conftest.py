"""Shared fixtures: a real local SparkSession, the shared real-data folder, temp lakes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The trained toy world (trained_world), the lake_store fixture and the coded demo lake
# (coded_demo_lake), for every test module.
pytest_plugins = ["tests.support.world", "tests.support.demo_lake"]

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VQREC_SHARED_DATA", ROOT.parent / "shared" / "data"))

# One thread per process: the machine has 2 cores and tests may run beside Spark workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

FULL = os.environ.get("VQREC_FULL") == "1"


def shared_domain(name: str) -> Path:
    """The raw+reference folder of a real domain, or skip the test when it is absent."""
    path = SHARED_DATA / name
    if not (path / "raw").is_dir():
        pytest.skip(f"real data not present at {path}")
    return path


@pytest.fixture(scope="session")
def spark():
    """A real local[2] SparkSession shared by the whole test session."""
    from vqrec.spark.common import spark_session

    session = spark_session("vqrec-tests", master="local[2]")
    yield session
    session.stop()


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    path = tmp_path / "lake"
    path.mkdir()
    return path
