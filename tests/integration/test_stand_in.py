"""A served precision whose recipe trains for minutes (QAT) is answered by its stand-in, built in seconds, from the
moment that one is built; the precision's own artifact then replaces it without a request going unanswered."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT
from tests.integration.server import launch_server

SERVED, STAND_IN = "w2g128-qat", "w2g128"


def _catalog(path: Path) -> Path:
    """The real catalog's precisions and task layouts: SST-2 at w8 and a QAT precision with a stand-in."""
    text = (REPO_ROOT / "models" / "catalog.toml").read_text()
    text = re.sub(r"(?m)^precisions = \[.*\]$", f'precisions = ["w8", "{SERVED}"]', text)
    text = re.sub(r"(?m)^study = \[.*\]$", "study = []", text)
    text = re.sub(r"(?ms)^\[stand_ins\]\n.*?\n\n", f'[stand_ins]\n{SERVED} = "{STAND_IN}"\n\n', text)
    path.write_text(text)
    return path


def test_a_stand_in_answers_until_the_artifact_it_stands_in_for_replaces_it(
    tiny_checkpoints: dict, tiny_data: Path, tmp_path: Path
) -> None:
    running = launch_server(
        tmp_path / "artifacts",
        tmp_path / "serve.log",
        build=True,
        env={
            "QBERT_CATALOG": str(_catalog(tmp_path / "catalog.toml")),
            "QBERT_CHECKPOINTS": str(tiny_checkpoints["sst2"].parent),
            "QBERT_DATA": str(tiny_data),
        },
        workers="1",
        tasks="sst2",
        default_precision="w8",
    )
    answers: list[tuple[str, str]] = []  # (artifact serving per /models, response's model) per request
    training_seen = False
    started = time.monotonic()
    try:
        with httpx.Client(base_url=running.url, timeout=30) as client:
            while time.monotonic() - started < 300:
                try:
                    models = {(m["task"], m["precision"]): m for m in client.get("/models").json()["models"]}
                except httpx.TransportError:
                    assert running.process.poll() is None, running.log.read_text()
                    time.sleep(0.05)
                    continue
                assert set(models) == {("sst2", "w8"), ("sst2", SERVED)}, models  # the stand-in is no model
                entry = models[("sst2", SERVED)]
                if entry["serving"]:
                    response = client.post(f"/predict/sst2?precision={SERVED}", json={"text": "a good movie"})
                    assert response.status_code == 200, response.text  # never a gap while the artifact changes
                    assert response.json()["precision"] == SERVED
                    answers.append((entry["artifact"], response.json()["model"]))
                    progress = entry["progress"]
                    if entry["artifact"] == STAND_IN and progress and progress["unit"] == "QAT steps":
                        training_seen = True
                    if entry["artifact"] == SERVED and entry["state"] == "ready":
                        break
                time.sleep(0.05)
            final = client.get("/models").json()["models"]
            metrics = client.get("/metrics").text
    finally:
        running.stop()
    log = running.log.read_text()
    artifacts = [artifact for artifact, _ in answers]
    assert artifacts, log
    assert (artifacts[0], artifacts[-1]) == (STAND_IN, SERVED), (artifacts, log)
    assert artifacts == sorted(artifacts, key=[STAND_IN, SERVED].index), artifacts  # gives way once, for good
    assert training_seen, "the stand-in was not seen answering while the QAT recipe trained"
    models_answering = [model for artifact, model in answers]
    assert models_answering[0] != models_answering[-1]  # the response names the weights that answered
    served = next(m for m in final if m["precision"] == SERVED)
    assert served["artifact"] == SERVED
    assert [row["metric"] for row in served["accuracy"]] == ["accuracy"]
    assert re.search(rf'^qbert_model_accuracy\{{[^}}]*precision="{SERVED}"', metrics, re.M), metrics
    assert "restarting" not in log, log
