"""MLflow tracking: where runs go, how a pipeline run nests its stages, what each stage logs.

A pipeline run (one Airflow DAG run, or one CLI demo run) is one *parent* MLflow run; each
stage (codes, pretrain, finetune-<domain>, evaluate, register) is a *child* run under it.
Airflow runs every task in its own process, so the parent is found again by its
``vqrec.pipeline_run_id`` tag instead of being kept open in memory.

Default store: ``sqlite:///<lake>/mlflow/mlflow.db`` with artifacts in
``<lake>/mlflow/artifacts``; ``$MLFLOW_TRACKING_URI`` (e.g. a real ``mlflow server``)
overrides it. A local store that cannot be written is refused up front
(:class:`TrackingStoreError`), before MLflow's SQLAlchemy store spends ~100 s retrying it.

A trained model's run lists the lake versions it read (clean / embeddings / codes) as MLflow
Datasets (:func:`log_training_datasets`), each with a digest of the version's ``_SUCCESS``.

mlflow is imported inside the functions: the command lines import this module to build
their ``--help`` and must not pay for MLflow there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from vqrec.lake.store import (
    SUCCESS,
    NotInLake,
    find_version,
    lake_root,
    resolve_version,
    validate_name,
)

if TYPE_CHECKING:
    import mlflow
    from mlflow.data.dataset import Dataset
    from mlflow.tracking import MlflowClient

DEFAULT_EXPERIMENT = "vqrec"

# Tags that tie MLflow objects to the pipeline; the registry reuses them for idempotency.
TAG_PIPELINE_RUN = "vqrec.pipeline_run_id"
TAG_LOGICAL_DATE = "vqrec.logical_date"
TAG_STAGE = "vqrec.stage"
TAG_DOMAIN = "vqrec.domain"
TAG_GIT_COMMIT = "vqrec.git_commit"
TAG_DATA_PREFIX = "vqrec.data."

# Config keys whose value must never reach the tracking store (matched per word of the key).
SECRET_WORDS = frozenset(
    {"password", "passwd", "secret", "token", "key", "apikey", "credential", "credentials", "auth"}
)
MAX_PARAM_CHARS = 6000  # MLflow 3's limit on a param value


# ---------------------------------------------------------------------------------------------
# store and experiment


# mlflow.set_tracking_uri() also exports $MLFLOW_TRACKING_URI (MLflow 3, for subprocesses):
# remember what we exported, so that only a URI the *user* set overrides the lake's store.
_EXPORTED: set[str] = set()


def user_tracking_uri() -> str | None:
    """``$MLFLOW_TRACKING_URI`` when the user set it (not an echo of our own setup)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env and env not in _EXPORTED else None


class TrackingStoreError(ValueError):
    """The MLflow store cannot be written (its folder is read-only, not a folder, ...).

    A ValueError: the store is configuration the user gave (``$MLFLOW_TRACKING_URI``,
    ``--lake``), and every command reports bad input as one line and exit status 2.
    """


def tracking_uri(lake: str | os.PathLike[str] | None = None) -> str:
    """The tracking URI: ``$MLFLOW_TRACKING_URI`` if set, else the lake's SQLite store.

    A local store (SQLite file, file store) is checked here, where every stage resolves it:
    see :func:`check_store`.
    """
    env = user_tracking_uri()
    if env:
        return check_store(env)
    db = lake_root(lake) / "mlflow" / "mlflow.db"
    return check_store(f"sqlite:///{db}")


def local_store_path(uri: str) -> Path | None:
    """The file or folder a local store URI names (``sqlite:///path``, ``file:``, a plain
    path); None for a server (``http(s)://``, ``databricks``...) or an in-memory SQLite."""
    if uri.startswith("sqlite:"):
        rest = uri.removeprefix("sqlite:").split("?", 1)[0]
        # sqlite:///rel/path (relative), sqlite:////abs/path; sqlite:// is in memory.
        path = rest[3:] if rest.startswith("///") else ""
        return Path(unquote(path)) if path and path != ":memory:" else None
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    # A plain path (or C:\...) is a local store to MLflow, but "databricks[-uc]" is not.
    if (not parsed.scheme or len(parsed.scheme) == 1) and not uri.startswith("databricks"):
        return Path(uri)
    return None


def check_store(uri: str) -> str:
    """``uri`` if its local store can be written, else :class:`TrackingStoreError`.

    Why up front: against an unwritable SQLite file MLflow's SQLAlchemy store retries for
    ~100 s and then ends in a traceback. The check really writes (a probe file in the
    store's folder; the SQLite file itself opened for update), so it also holds for root,
    whom permission bits never stop: a read-only mount, an immutable (``chattr +i``)
    folder, a "folder" that is a file all fail here. A server URI is not checked (the
    server owns its store).
    """
    path = local_store_path(uri)
    if path is None:
        return uri
    is_file = uri.startswith("sqlite:")
    folder = path.parent if is_file else path
    problem = _unwritable(folder, path if is_file else None)
    if problem:
        raise TrackingStoreError(f"MLflow tracking store {uri} cannot be written: {problem}")
    return uri


def _unwritable(folder: Path, db: Path | None) -> str | None:
    """Why ``folder`` (and the SQLite file ``db`` in it, if it exists) cannot be written."""
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # SQLite writes a journal beside its file: the folder itself must take a new file.
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".vqrec-store-probe-"):
            pass
        if db is not None and db.exists():
            with db.open("r+b"):
                pass
    except OSError as exc:
        where = exc.filename or folder
        return f"{exc.strerror or exc} ({where})"
    return None


def artifact_root(lake: str | os.PathLike[str] | None = None) -> Path:
    """The local artifact folder beside the default SQLite store."""
    return lake_root(lake) / "mlflow" / "artifacts"


@contextlib.contextmanager
def _store_open_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a local SQLite store while MLflow opens it.

    MLflow's first open of a SQLite file creates its schema through alembic migrations;
    two processes doing it at once (parallel fine-tunes on a fresh lake) leave one of them
    in a "expected to match one row" traceback. Opening an existing store under the lock
    costs a few milliseconds; a server or another store kind needs no lock.
    """
    path = local_store_path(uri) if uri.startswith("sqlite:") else None
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.open-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def setup_tracking(
    lake: str | os.PathLike[str] | None = None, experiment: str = DEFAULT_EXPERIMENT
) -> str:
    """Point MLflow (tracking and registry) at the store and make ``experiment`` current.

    The experiment is created with an explicit artifact location under the lake when the
    store is the default local one (so artifacts never land in the working directory);
    against a remote server the server decides. Returns the experiment id.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(lake)
    remote = user_tracking_uri() is not None
    if not remote:
        # Only our own choice is remembered as an echo: a user's URI must keep winning when
        # a task sets tracking up again (set_tracking_uri re-exports the same value).
        _EXPORTED.add(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with _store_open_lock(uri):  # the client opens (and on first use creates) the store
        client = MlflowClient(uri, registry_uri=uri)
        found = client.get_experiment_by_name(experiment)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        experiment_id = found.experiment_id
    else:
        location = None
        if not remote:
            folder = artifact_root(lake) / experiment
            problem = _unwritable(folder, None)
            if problem:
                raise TrackingStoreError(f"MLflow artifact folder {folder}: {problem}")
            location = folder.as_uri()
        try:
            experiment_id = client.create_experiment(experiment, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            # Another task created it between our lookup and create: use theirs.
            experiment_id = client.get_experiment_by_name(experiment).experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


# ---------------------------------------------------------------------------------------------
# params, keys, provenance


def mlflow_key(name: str) -> str:
    """A metric/param/tag key MLflow accepts: ``test_ndcg@10`` -> ``test_ndcg_at_10``.

    MLflow keys allow only ``[/\\w.\\- :]``; the project's metric names use ``@k``.
    """
    key = name.replace("@", "_at_")
    return re.sub(r"[^/\w.\- :]", "_", key)


def is_secret(key: str) -> bool:
    """True when a config key names a secret (any word is password/secret/token/key/...)."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())
    return any(w in SECRET_WORDS for w in words)


def flatten_params(config: Any, prefix: str = "") -> dict[str, str]:
    """Flatten a config (dataclass / mapping / list, nested) into ``a.b.c -> str`` params.

    Keys that look like secrets are dropped, at any depth. Values are truncated to MLflow's
    limit. Lists of scalars stay one value (``[1, 2]``), lists of configs are indexed.
    """
    prefix = prefix.rstrip(".")  # callers may pass "codes." or "codes"
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    out: dict[str, str] = {}
    if isinstance(config, Mapping):
        for key, value in config.items():
            if is_secret(str(key)):
                continue
            name = f"{prefix}.{key}" if prefix else str(key)
            out.update(flatten_params(value, name))
        return out
    if isinstance(config, list | tuple) and any(
        isinstance(v, Mapping) or dataclasses.is_dataclass(v) for v in config
    ):
        for i, value in enumerate(config):
            out.update(flatten_params(value, f"{prefix}.{i}"))
        return out
    if isinstance(config, Path):
        config = str(config)
    text = config if isinstance(config, str) else json.dumps(config, default=str)
    out[mlflow_key(prefix or "value")] = text[:MAX_PARAM_CHARS]
    return out


def git_commit(repo: str | os.PathLike[str] | None = None) -> str | None:
    """``git rev-parse HEAD`` of the project checkout, or None outside a git checkout."""
    cwd = Path(repo) if repo else Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def log_params(config: Any, prefix: str = "") -> dict[str, str]:
    """Log a whole config (flattened, secrets dropped) on the active run; return what was logged.

    A param that is already logged with a different value (a retried task with a changed
    config) is logged as a tag instead of failing the stage: params are immutable in MLflow.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    params = flatten_params(config, prefix)
    run = mlflow.active_run()
    existing = MlflowClient().get_run(run.info.run_id).data.params if run else {}
    fresh = {k: v for k, v in params.items() if k not in existing}
    changed = {k: v for k, v in params.items() if k in existing and existing[k] != v}
    if fresh:
        mlflow.log_params(fresh)
    for key, value in changed.items():
        mlflow.set_tag(f"param_changed.{key}", value)
    return params


# ---------------------------------------------------------------------------------------------
# parent and child runs


def _find_parent(client: MlflowClient, experiment_id: str, pipeline_run_id: str) -> str | None:
    escaped = pipeline_run_id.replace("'", "\\'")
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{TAG_PIPELINE_RUN}` = '{escaped}' and tags.`{TAG_STAGE}` = 'pipeline'"
        ),
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def start_pipeline_run(
    lake: str | os.PathLike[str] | None,
    pipeline_run_id: str,
    logical_date: str | None = None,
    data_versions: Mapping[str, str] | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    tags: Mapping[str, str] | None = None,
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> str:
    """Get or create the parent run of a pipeline run; return its MLflow run id.

    Idempotent: a second call with the same ``pipeline_run_id`` (an Airflow retry, the next
    task of the same DAG run) returns the same parent and only adds tags (and params not
    logged yet). ``run_name`` names a new parent (default ``pipeline-<id>``). The parent
    stays RUNNING until :func:`end_pipeline_run`.
    """
    from mlflow.tracking import MlflowClient

    experiment_id = setup_tracking(lake, experiment)
    client = MlflowClient()
    all_tags = {
        TAG_PIPELINE_RUN: pipeline_run_id,
        TAG_STAGE: "pipeline",
        **({TAG_LOGICAL_DATE: logical_date} if logical_date else {}),
        **{f"{TAG_DATA_PREFIX}{k}": str(v) for k, v in (data_versions or {}).items()},
        **(dict(tags) if tags else {}),
    }
    commit = git_commit()
    if commit:
        all_tags[TAG_GIT_COMMIT] = commit
        all_tags["mlflow.source.git.commit"] = commit
    run_id = _find_parent(client, experiment_id, pipeline_run_id)
    if run_id is None:
        name = run_name or f"pipeline-{pipeline_run_id}"
        run_id = client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id
    else:
        for key, value in all_tags.items():
            client.set_tag(run_id, key, value)
    if params:
        logged = client.get_run(run_id).data.params
        new = {k: v for k, v in flatten_params(params).items() if k not in logged}
        for key, value in new.items():
            client.log_param(run_id, key, value)
    return run_id


def stage_runs(
    lake: str | os.PathLike[str] | None,
    pipeline_run_id: str,
    stage: str,
    experiment: str = DEFAULT_EXPERIMENT,
) -> list[Any]:
    """The child runs of ``stage`` already logged under the pipeline run (a retry's check)."""
    from mlflow.tracking import MlflowClient

    experiment_id = setup_tracking(lake, experiment)
    escaped = pipeline_run_id.replace("'", "\\'")
    return MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_PIPELINE_RUN}` = '{escaped}' and tags.`{TAG_STAGE}` = '{stage}'",
    )


def log_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """Numbers of ``values`` on the active run, keys made MLflow-safe; returns what was logged."""
    import mlflow

    logged = {mlflow_key(k): float(v) for k, v in values.items() if _is_number(v)}
    if logged:
        mlflow.log_metrics(logged)
    return logged


def summarize_pipeline_run(
    lake: str | os.PathLike[str] | None,
    pipeline_run_id: str,
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    experiment: str = DEFAULT_EXPERIMENT,
) -> str | None:
    """The night on its parent run: ``metrics`` and ``tags`` as given, plus each stage
    child's wall time (``wall_s.<stage>``, from its start and end)."""
    from mlflow.tracking import MlflowClient

    experiment_id = setup_tracking(lake, experiment)
    client = MlflowClient()
    run_id = _find_parent(client, experiment_id, pipeline_run_id)
    if run_id is None:
        return None
    children = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
    )
    walls = {}
    for child in children:
        info = child.info
        if info.end_time and info.start_time:
            stage = child.data.tags.get(TAG_STAGE, info.run_name)
            walls[f"wall_s.{stage}"] = (info.end_time - info.start_time) / 1000.0
    values = {mlflow_key(k): float(v) for k, v in {**metrics, **walls}.items() if _is_number(v)}
    for key, value in values.items():
        client.log_metric(run_id, key, value)
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))
    return run_id


def end_pipeline_run(
    lake: str | os.PathLike[str] | None,
    pipeline_run_id: str,
    status: str = "FINISHED",
    experiment: str = DEFAULT_EXPERIMENT,
) -> str | None:
    """Mark the parent run of a pipeline run terminated (FINISHED / FAILED / KILLED)."""
    from mlflow.tracking import MlflowClient

    experiment_id = setup_tracking(lake, experiment)
    client = MlflowClient()
    run_id = _find_parent(client, experiment_id, pipeline_run_id)
    if run_id is not None:
        client.set_terminated(run_id, status=status)
    return run_id


@contextlib.contextmanager
def stage_run(
    lake: str | os.PathLike[str] | None,
    pipeline_run_id: str,
    stage: str,
    domain: str | None = None,
    data_versions: Mapping[str, str] | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    span: tuple[float, float] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """A child run for one stage (``codes``, ``pretrain``, ``finetune-<d>``...) under the parent.

    The parent is created if this is the first stage to log. The child is the active run
    inside the block (``mlflow.log_*`` go to it); it ends FAILED if the block raises.
    ``span`` (start, end; seconds since the epoch): the stage ran before its run is logged
    (the Spark stages, whose jobs log nothing to MLflow), so the run gets the stage's own
    start and end rather than the few milliseconds of logging it.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    parent_id = start_pipeline_run(
        lake, pipeline_run_id, data_versions=data_versions, experiment=experiment
    )
    tags = {TAG_PIPELINE_RUN: pipeline_run_id, TAG_STAGE: stage}
    if domain:
        tags[TAG_DOMAIN] = validate_name(domain, "domain")
    tags.update({f"{TAG_DATA_PREFIX}{k}": str(v) for k, v in (data_versions or {}).items()})
    commit = git_commit()
    if commit:
        tags[TAG_GIT_COMMIT] = commit
        tags["mlflow.source.git.commit"] = commit
    nested = mlflow.active_run() is not None  # a caller's run (e.g. a notebook): ours nests
    if span is None:
        with mlflow.start_run(
            run_name=stage, parent_run_id=parent_id, tags=tags, nested=nested
        ) as run:
            yield run
        return
    client = MlflowClient()
    created = client.create_run(
        setup_tracking(lake, experiment),
        start_time=int(span[0] * 1000),
        tags={**tags, "mlflow.parentRunId": parent_id},
        run_name=stage,
    )
    with mlflow.start_run(run_id=created.info.run_id, nested=nested) as run:
        yield run
    client.set_terminated(created.info.run_id, "FINISHED", end_time=int(span[1] * 1000))


# ---------------------------------------------------------------------------------------------
# metrics from the trainer's metrics.json


def epoch_records(metrics: Mapping[str, Any]) -> list[dict[str, float]]:
    """The per-epoch records of a trainer's metrics.json, flat, each with an ``epoch`` number.

    The trainer writes ``history: [{phase, epoch, loss, seconds, seq_per_s, valid: {ndcg@10:
    ..}}]``; nested dicts are flattened with ``_`` (``valid_ndcg@10``) and records of a phase
    other than ``train`` get the phase as prefix (``permutation_loss``), so that phases whose
    epochs restart at 1 never write the same metric at the same step.
    """
    rows = metrics.get("history") or []
    out = []
    for i, row in enumerate(rows if isinstance(rows, list) else []):
        if not isinstance(row, Mapping):
            continue
        phase = str(row.get("phase") or "train")
        prefix = "" if phase == "train" else f"{phase}_"
        flat: dict[str, float] = {"epoch": float(row.get("epoch", i + 1))}
        for key, value in row.items():
            if key in ("epoch", "phase"):
                continue
            if isinstance(value, Mapping):
                for sub, v in value.items():
                    if _is_number(v):
                        flat[f"{prefix}{key}_{sub}"] = float(v)
            elif _is_number(value):
                flat[f"{prefix}{key}"] = float(value)
        out.append(flat)
    return out


def test_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The test figures of a metrics.json, keys prefixed ``test_`` (``test_ndcg@10``).

    Pre-training reports per domain (``test: {"Games/ndcg@10": ..}``); then the plain key
    (``test_ndcg@10``) is the unweighted mean over domains, so every registered model has
    the figure the promotion gate compares.
    """
    out: dict[str, float] = {}
    nested = metrics.get("test")
    if isinstance(nested, Mapping):
        out.update({f"test_{k}": float(v) for k, v in nested.items() if _is_number(v)})
    per_metric: dict[str, list[float]] = {}
    for key, value in out.items():
        if "/" in key:
            per_metric.setdefault("test_" + key.rsplit("/", 1)[1], []).append(value)
    for key, values in per_metric.items():
        out.setdefault(key, sum(values) / len(values))
    return out


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def log_epoch_metrics(records: list[dict[str, float]], prefix: str = "") -> int:
    """Log per-epoch records on the active run with ``step=epoch``; return the count logged."""
    import mlflow

    count = 0
    for row in records:
        step = int(row.get("epoch", 0))
        values = {mlflow_key(prefix + k): v for k, v in row.items() if k != "epoch"}
        if values:
            mlflow.log_metrics(values, step=step)
            count += len(values)
    return count


def log_model_dir(
    model_dir: str | os.PathLike[str],
    prefix: str = "",
    lake: str | os.PathLike[str] | None = None,
) -> dict[str, float]:
    """Log a trained model folder (config.json, metrics.json) on the active run.

    Params: the whole config; metrics: every epoch (step=epoch) and the test figures;
    artifacts: both JSON files and the training-curve plot; datasets: the lake versions it
    was trained on (:func:`log_training_datasets`). Returns the test metrics (unsanitised
    keys, e.g. ``test_ndcg@10``).
    """
    import mlflow

    from vqrec.mlops.plots import plot_training_curves

    model_dir = Path(model_dir)
    config_path, metrics_path = model_dir / "config.json", model_dir / "metrics.json"
    if config_path.exists():
        log_params(_read_json(config_path), prefix=prefix.rstrip("_."))
        mlflow.log_artifact(str(config_path), artifact_path=f"{prefix}model" if prefix else "model")
        log_training_datasets(model_dir, lake)
    if not metrics_path.exists():
        return {}
    metrics = _read_json(metrics_path)
    records = epoch_records(metrics)
    log_epoch_metrics(records, prefix=prefix)
    tests = test_metrics(metrics)
    if tests:
        mlflow.log_metrics({mlflow_key(prefix + k): v for k, v in tests.items()})
    mlflow.log_artifact(str(metrics_path), artifact_path=f"{prefix}model" if prefix else "model")
    if records:
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / f"{prefix}training_curves.png"
            plot_training_curves(records, png, title=f"{model_dir.name}: training")
            mlflow.log_artifact(str(png), artifact_path="plots")
    return tests


def model_lake(model_dir: str | os.PathLike[str]) -> Path:
    """The lake a model folder belongs to: ``<lake>/models/<V>/backbone`` or
    ``<lake>/models/<V>/domains/<d>`` (the folder contract of :mod:`vqrec.lake.models`)."""
    model_dir = Path(model_dir).resolve()
    version_dir = model_dir.parent if model_dir.name == "backbone" else model_dir.parent.parent
    if version_dir.parent.name != "models":
        raise ValueError(f"{model_dir} is not a model folder under <lake>/models/<version>/")
    return version_dir.parent.parent


def lake_dataset(lake: str | os.PathLike[str] | None, stage: str, version: str) -> Dataset:
    """A committed lake version as an MLflow Dataset: name ``<stage>/<version>``, source the
    version's folder, digest the first 16 hex of the sha256 of its ``_SUCCESS``.

    The version is not read (a MetaDataset): ``_SUCCESS`` is written last and once per
    commit, with the version's own counts and inputs, so its digest changes whenever the
    version is rewritten, even under the same name.
    """
    from mlflow.data import get_dataset_source_from_json
    from mlflow.data.meta_dataset import MetaDataset

    folder = resolve_version(lake, stage, version)
    digest = hashlib.sha256((folder / SUCCESS).read_bytes()).hexdigest()[:16]
    # "local": MLflow's source type for a local path (its class is made at import time).
    source = get_dataset_source_from_json(json.dumps({"uri": str(folder)}), source_type="local")
    return MetaDataset(source, name=f"{stage}/{version}", digest=digest)


def training_datasets(
    model_dir: str | os.PathLike[str], lake: str | os.PathLike[str] | None = None
) -> dict[str, Dataset]:
    """``{stage: Dataset}`` of the clean / embeddings / codes versions a model folder was
    trained on (``lake``: default the lake the folder is in). A version since swept from the
    lake is left out: its name stays in the run's ``vqrec.data.*`` tags. A version that is
    there but damaged raises DamagedVersion: the run must not list less than it read."""
    from vqrec.lake.models import data_versions  # imports torch: only when a model is logged

    lake = lake if lake is not None else model_lake(model_dir)
    out = {}
    for stage, version in data_versions(model_dir).items():
        try:
            out[stage] = lake_dataset(lake, stage, version)
        except (NotInLake, FileNotFoundError):
            continue
    return out


def log_training_datasets(
    model_dir: str | os.PathLike[str], lake: str | os.PathLike[str] | None = None
) -> dict[str, Dataset]:
    """Log :func:`training_datasets` as the active run's inputs, context ``training`` (the
    clean version's valid and test splits chose the epoch and gave the test figures too,
    which the run's metrics say); returns them."""
    import mlflow

    datasets = training_datasets(model_dir, lake)
    if datasets:
        mlflow.log_inputs(
            list(datasets.values()),
            contexts=["training"] * len(datasets),
            tags_list=[{"vqrec.stage": stage} for stage in datasets],
        )
    return datasets


def log_model_metrics(
    model_id: str, values: Mapping[str, Any], dataset: Dataset | None = None
) -> dict[str, float]:
    """The numbers of ``values`` on the LoggedModel ``model_id`` (its page, and the page of
    every registered version made from it, show them), linked to ``dataset`` (the data they
    were measured on). MLflow logs them on the active run too."""
    import mlflow

    logged = {mlflow_key(k): float(v) for k, v in values.items() if _is_number(v)}
    if logged:
        mlflow.log_metrics(logged, model_id=model_id, dataset=dataset)
    return logged


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc


# ---------------------------------------------------------------------------------------------
# codes and data quality


def log_codes(codes_dir: str | os.PathLike[str], domains: list[str] | None = None) -> None:
    """Log a codes version on the active run: quantizers, stats.json, config.json and plots.

    ``domains`` restricts the quantizers and plots to those domains (+ ``pretrain``).
    """
    import mlflow

    from vqrec.mlops.plots import plot_code_usage, plot_collision_histogram

    codes_dir = Path(codes_dir)
    config = codes_dir / "config.json"
    if config.exists():
        log_params(_read_json(config), prefix="codes")
        mlflow.log_artifact(str(config), artifact_path="codes")
    for faiss_file in sorted((codes_dir / "quantizers").glob("*.faiss")):
        if domains is None or faiss_file.stem in {*domains, "pretrain"}:
            mlflow.log_artifact(str(faiss_file), artifact_path="codes/quantizers")
    stats_path = codes_dir / "stats.json"
    if not stats_path.exists():
        return
    mlflow.log_artifact(str(stats_path), artifact_path="codes")
    # stats.json as vqrec.stages.codes writes it: {"domains": {<domain>: code_stats(...)}, ...}
    stats = _read_json(stats_path)
    with tempfile.TemporaryDirectory() as tmp:
        for domain, dstats in stats["domains"].items():
            if domains is not None and domain not in domains:
                continue
            for key, value in dstats.items():
                if _is_number(value):
                    mlflow.log_metric(mlflow_key(f"codes.{domain}.{key}"), float(value))
            entropy = dstats.get("entropy_bits")
            if entropy:
                png = Path(tmp) / f"code_usage_{domain}.png"
                cap = dstats.get("code_cap")
                plot_code_usage(entropy, png, code_cap=cap, title=f"{domain}: code usage")
                mlflow.log_artifact(str(png), artifact_path="plots")
            groups = dstats.get("collision_group_sizes")
            if groups is not None:  # {} (no collisions) gets its plot too
                png = Path(tmp) / f"collisions_{domain}.png"
                plot_collision_histogram(groups, png, title=f"{domain}: items sharing a code")
                mlflow.log_artifact(str(png), artifact_path="plots")


def log_quality_report(clean_dir: str | os.PathLike[str], domain: str) -> dict[str, Any] | None:
    """Log ``reports/<domain>.json`` of a clean version (artifact + numeric top-level metrics)."""
    import mlflow

    path = Path(clean_dir) / "reports" / f"{validate_name(domain, 'domain')}.json"
    if not path.exists():
        return None
    report = _read_json(path)
    mlflow.log_artifact(str(path), artifact_path="data_quality")
    if isinstance(report, Mapping):
        log_metrics({f"data.{domain}.{k}": v for k, v in report.items()})
    return report


# ---------------------------------------------------------------------------------------------
# one call per pipeline stage (what the Airflow tasks call after the stage committed)


def log_codes_run(
    lake: str | os.PathLike[str] | None,
    pipeline_run_id: str,
    codes_version: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> str:
    """Child run ``codes``: config, quantizers, stats.json, usage/collision plots per domain.

    Returns the MLflow run id.
    """
    from vqrec.lake.store import read_success

    codes_dir = resolve_version(lake, "codes", codes_version)
    meta = read_success(codes_dir)
    versions = {"codes": codes_dir.name}
    versions.update({k.removesuffix("_version"): v for k, v in meta.items()
                     if k in ("clean_version", "embeddings_version") and v})  # fmt: skip
    with stage_run(
        lake, pipeline_run_id, "codes", data_versions=versions, experiment=experiment
    ) as run:
        log_codes(codes_dir)
        return run.info.run_id


def log_training_run(
    lake: str | os.PathLike[str] | None,
    pipeline_run_id: str,
    models_version: str | None = None,
    domain: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> str:
    """Child run ``pretrain`` (domain None) or ``finetune-<domain>`` of a committed models version.

    Logs the whole config, every epoch's metrics (step=epoch), the test figures, the
    training-curve plot and, for a domain, the quality report of the clean data it used.
    Returns the MLflow run id.
    """
    from vqrec.lake.models import data_versions  # imports torch: only when a run is logged

    models_dir = resolve_version(lake, "models", models_version)
    model_dir = models_dir / ("backbone" if domain is None else f"domains/{validate_name(domain)}")
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: no config.json (was this stage trained?)")
    versions = {"models": models_dir.name} | data_versions(model_dir)
    stage = "pretrain" if domain is None else f"finetune-{domain}"
    with stage_run(
        lake, pipeline_run_id, stage, domain=domain, data_versions=versions, experiment=experiment
    ) as run:
        log_model_dir(model_dir, lake=lake)
        if domain is not None and versions.get("clean"):
            clean_dir = find_version(lake, "clean", versions["clean"])
            if clean_dir is not None:  # else swept from the lake: the model still logs
                log_quality_report(clean_dir, domain)
        return run.info.run_id
