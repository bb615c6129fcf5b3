"""The MLflow UI, for real: `mlflow server` over the test store, headless Chromium on it.

Checks that the registered domain model shows its champion alias, that its version page
shows its code strategy and backbone and links its LoggedModel, that the LoggedModel page
shows its test figures, and that a run shows its training-curve plot; screenshots go to
test-artifacts/ (gitignored) for a person to look at.
Chromium is Debian's package, installed here when missing; the test skips cleanly when it
cannot be installed (no root, no package mirror).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.support.world import DOMAIN, build_data, train_model
from vqrec.mlops import registry, serving, tracking

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = pytest.mark.slow  # ~2 min: server start, four pages rendered twice; runs in CI


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "install", "-y", "chromium"], env=env, check=False,
                           capture_output=True, timeout=900)  # fmt: skip
        except subprocess.TimeoutExpired:
            pass
    found = shutil.which("chromium")
    if not found:
        pytest.skip("chromium is not installed and `apt-get install -y chromium` did not work")
    return found


def _render(chromium: str, url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The DOM after React rendered it (or a screenshot): bounded, sandbox-free, offline."""
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--window-size=1400,1000",
        "--virtual-time-budget=15000",
    ]  # fmt: skip
    cmd += [f"--screenshot={screenshot}", url] if screenshot else ["--dump-dom", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_ui_shows_champion_alias_and_run_plots(tmp_path, monkeypatch):
    chromium = _chromium()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    lake = tmp_path / "lake"
    lake.mkdir()
    data = build_data(lake)
    train_model(lake, data, "m1", epochs=20)
    result = registry.register_domain(lake, DOMAIN, "m1", pipeline_run_id="ui-run")
    assert result["promotion"]["promoted"]
    name = registry.domain_model_name(DOMAIN)
    client = MlflowClient(tracking.tracking_uri(lake))
    version = client.get_model_version(name, result["version"])
    run = client.get_run(version.run_id)
    experiment = run.info.experiment_id
    model_id = version.source.removeprefix("models:/")  # the LoggedModel it was made from
    figures = {m.key: m.value for m in client.get_logged_model(model_id).metrics}
    # The UI prints the value in full (0.7279516892494883): its first digits must be there.
    figure = repr(figures["test_ndcg_at_10"])[:5]

    ARTIFACTS.mkdir(exist_ok=True)
    profile = tmp_path / "chromium-profile"
    store = tracking.tracking_uri(lake)
    log = tmp_path / "mlflow-server.log"
    with serving.tracking_server(store, tracking.artifact_root(lake), log_path=log) as url:
        model_page = f"{url}/#/models/{name}"
        dom = _render(chromium, model_page, profile)
        _render(chromium, model_page, profile, ARTIFACTS / "mlflow_ui_model.png")
        plot = "plots/training_curves.png"
        run_page = f"{url}/#/experiments/{experiment}/runs/{run.info.run_id}/artifacts/{plot}"
        run_dom = _render(chromium, run_page, profile)
        _render(chromium, run_page, profile, ARTIFACTS / "mlflow_ui_run_plots.png")
        version_page = f"{url}/#/models/{name}/versions/{version.version}"
        version_dom = _render(chromium, version_page, profile)
        _render(chromium, version_page, profile, ARTIFACTS / "mlflow_ui_model_version.png")
        model_page = f"{url}/#/experiments/{experiment}/models/{model_id}"
        logged_dom = _render(chromium, model_page, profile)
        _render(chromium, model_page, profile, ARTIFACTS / "mlflow_ui_logged_model.png")

    # The registered model page, rendered: its name and the champion alias chip.
    assert name in dom and "champion" in dom and "challenger" in dom
    # The run page: the run's name and the plot, fetched by the UI into an <img>.
    assert f"register-{name}" in run_dom
    assert f'alt="{plot}"' in run_dom
    # The version page: what the model is (tags), and the link to its LoggedModel.
    assert registry.TAG_CODE_STRATEGY in version_dom and registry.TAG_BACKBONE in version_dom
    assert model_id in version_dom
    # The LoggedModel page: its test figures (name and value) and the data they were on.
    assert "test_ndcg_at_10" in logged_dom and figure in logged_dom
    assert "clean/v1" in logged_dom
    shots = ("model", "run_plots", "model_version", "logged_model")
    for png in (f"mlflow_ui_{shot}.png" for shot in shots):
        assert (ARTIFACTS / png).stat().st_size > 20_000  # a rendered page, not a blank one
