"""A first start on a fresh machine (issue 20): `qbert serve` from an empty artifacts folder and an empty compile
cache, with a tiny catalog. The service answers before the catalog is built, joins each model as it is ready, and
never restarts a worker or makes a request wait for a build or a compile."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from tests.conftest import CHECKPOINT_NAMES, REPO_ROOT
from tests.integration.server import launch_server

PRECISIONS = ("w8", "fp32", "w2g128")
TASKS = ("sst2", "ner")
ORDER = ("pending", "building", "evaluating", "loading", "compiling", "ready")


def _tiny_catalog(path: Path) -> Path:
    """The real catalog (its precisions and task layouts) with three precisions per task and no study."""
    text = (REPO_ROOT / "models" / "catalog.toml").read_text()
    text = re.sub(r"(?m)^precisions = \[.*\]$", "precisions = " + repr(list(PRECISIONS)).replace("'", '"'), text)
    text = re.sub(r"(?m)^study = \[.*\]$", "study = []", text)
    path.write_text(text)
    return path


def _poll(client: httpx.Client) -> tuple[int, dict[tuple[str, str], dict], list[dict]] | None:
    try:
        ready = client.get("/readyz")
        models = client.get("/models").json()["models"]
    except httpx.TransportError:
        return None
    return ready.status_code, {(m["task"], m["precision"]): m for m in models}, ready.json()["workers"]


def test_a_first_start_answers_before_the_catalog_is_built_and_restarts_nothing(
    tiny_checkpoints: dict, tiny_data: Path, tmp_path: Path
) -> None:
    checkpoints = tiny_checkpoints["sst2"].parent
    assert all(tiny_checkpoints[task] == checkpoints / CHECKPOINT_NAMES[task] for task in TASKS)
    running = launch_server(
        tmp_path / "artifacts",  # empty: everything is built by this start
        tmp_path / "serve.log",
        build=True,
        env={
            "QBERT_CATALOG": str(_tiny_catalog(tmp_path / "catalog.toml")),
            "QBERT_CHECKPOINTS": str(checkpoints),
            "QBERT_DATA": str(tiny_data),
            "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),  # a cold compile cache
        },
        workers="1",
        tasks=",".join(TASKS),
        backend="compiled",
        default_precision="w8",
    )
    seen: dict[tuple[str, str], list[str]] = {}
    first_answer: dict[str, float] = {}
    not_ready: list[httpx.Response] = []
    answered_while_compiling = False
    started = time.monotonic()
    try:
        with httpx.Client(base_url=running.url, timeout=30) as client:
            while time.monotonic() - started < 600:  # cold compiles on a slow CPU take minutes
                polled = _poll(client)
                if polled is None:
                    assert running.process.poll() is None, running.log.read_text()
                    time.sleep(0.05)
                    continue
                status, models, workers = polled
                for key, model in models.items():
                    states = seen.setdefault(key, [])
                    if not states or states[-1] != model["state"]:
                        states.append(model["state"])
                building = [k for k, m in models.items() if m["state"] in ("pending", "building", "evaluating")]
                if building and len(not_ready) < 3:
                    task, precision = building[-1]
                    route = f"/predict/{task}?precision={precision}"
                    response = client.post(route, json={"text": "john lives in paris"})
                    if response.status_code == 503:
                        not_ready.append(response)
                for task in TASKS:
                    if task not in first_answer and models[(task, "w8")]["serving"]:
                        response = client.post(f"/predict/{task}", json={"text": "john lives in paris"})
                        assert response.status_code == 200, response.text
                        first_answer[task] = time.monotonic() - started
                        assert any(m["state"] != "ready" for m in models.values()), "answered only once all were"
                compiling = [k for k, m in models.items() if m["state"] == "compiling"]
                if compiling and not answered_while_compiling:
                    task, precision = compiling[0]
                    response = client.post(f"/predict/{task}?precision={precision}", json={"text": "a good film"})
                    assert response.status_code == 200, response.text  # served eagerly while it compiles
                    answered_while_compiling = True
                if {m["state"] for m in models.values()} == {"ready"} and status == 200:
                    break
                time.sleep(0.1)
            log = running.log.read_text()
            assert {m["state"] for m in models.values()} == {"ready"}, (seen, log)
            assert [w["restarts"] for w in workers] == [0], log
            assert "made no progress" not in log, log
            assert "restarting" not in log, log

            for key, states in seen.items():  # every model moved forward through the states, never back
                assert set(states) <= set(ORDER), (key, states)
                serving = next(i for i, state in enumerate(states) if state in ("compiling", "ready"))
                assert states[:serving] == sorted(states[:serving], key=ORDER.index), (key, states)
                # Once served it stays served; a model of a new class arriving sends compiled ones back to
                # compiling (served eagerly) to re-warm, as their graphs guard on the classes built.
                assert set(states[serving:]) <= {"compiling", "ready"}, (key, states)
            assert any("building" in s or "evaluating" in s for s in seen.values()), seen  # tiny: some are quick
            assert answered_while_compiling, seen
            assert set(first_answer) == set(TASKS), first_answer

            assert not_ready, "no request reached a model still building"
            for response in not_ready:
                body = response.json()
                assert body["error"] == "model_not_ready", body
                assert body["state"] in ("pending", "building", "evaluating"), body
                assert int(response.headers["Retry-After"]) > 0

            final = client.get("/models").json()["models"]
            assert all(m["accuracy"] and m["backend"] == "compiled" for m in final), final
            metrics = client.get("/metrics").text
            accuracy = [line for line in metrics.splitlines() if line.startswith("qbert_model_accuracy{")]
            for task in TASKS:
                for precision in PRECISIONS:
                    labels = (f'task="{task}"', f'precision="{precision}"')
                    assert any(all(label in line for label in labels) for line in accuracy), accuracy
            # The builds ran in their own process: the API process never loaded torch or a model.
            resident = float(re.search(r"^process_resident_memory_bytes (\S+)$", metrics, re.M).group(1))
            assert resident < 400e6, f"API process {resident / 1e6:.0f} MB resident"
            for task in TASKS:
                assert (tmp_path / "artifacts" / task / "w2g128" / "manifest.json").is_file()
    finally:
        running.stop()
