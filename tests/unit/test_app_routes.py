"""The HTTP surface in process: routes, error shapes, readiness and OpenAPI, over `httpx.ASGITransport` with a fake
pool (no worker process, no model), in milliseconds. What needs a real server stays in tests/integration."""

from __future__ import annotations

import asyncio
import gc
import os
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from service.answering import NON_BLANK
from service.app import Service, build_app
from service.metrics import ServiceMetrics
from service.pool import Key
from service.protocol import (
    ArtifactRef,
    BatchDone,
    ItemError,
    ItemResult,
    ModelInfo,
    ModelRefused,
    ModelServing,
    RunBatch,
    WorkerStarted,
)
from service.settings import ServiceSettings

KEYS = [("sst2", "w8"), ("sst2", "w2g128"), ("ner", "w8"), ("qa", "w8")]


def _prediction(task: str, payload: Any) -> Any:
    if task == "sst2":
        return SimpleNamespace(label="positive", score=0.9, scores={"negative": 0.1, "positive": 0.9})
    if task == "ner":
        return SimpleNamespace(entities=[SimpleNamespace(type="PER", text="John", start=0, end=4, score=0.99)])
    question, context = payload
    return SimpleNamespace(answer=context[:5], start=0, end=5, score=0.5)


class FakePool:
    """What `Service` asks of the worker pool, answering at once: every artifact serves except `loading` ones."""

    def __init__(self, settings: ServiceSettings, artifacts: list[ArtifactRef], metrics: ServiceMetrics) -> None:
        self.artifacts = artifacts
        self.loading: set[Key] = set()
        self.failing: dict[Key, ItemResult] = {}
        self.models = {
            (a.task, a.precision): ModelInfo(
                a.task,
                a.precision,
                f"ckpt@{a.precision}",
                8.0,
                1,
                2,
                3,
                0.1,
                (),
                ({"metric": "m", "value": 1.0, "split": "dev", "n": 1},),
                artifact=a.path.name,
            )
            for a in artifacts
        }
        self.refused: dict[Key, str] = {}
        self.replacement_refused: dict[Key, str] = {}
        self.compiles_held = False
        self.started = self.closed = False
        self.submitted: list[tuple[str, str, list[Any]]] = []
        self.registry = metrics.registry
        self.inflight_seen: list[float | None] = []  # `qbert_inflight_inputs` while each submission runs

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    def hold_compiles(self, hold: bool) -> None:
        self.compiles_held = hold

    def serves(self, key: Key) -> bool:
        return key in self.models and key not in self.loading

    served_by_all = serves

    def model_state(self, key: Key) -> str | None:
        return "loading" if key in self.loading else "ready" if key in self.models else None

    def started_workers(self) -> int:
        return 1

    def settled(self) -> bool:
        return not self.loading

    def worker_status(self) -> list[dict[str, Any]]:
        return [{"worker": 0, "pid": 1, "ready": self.settled()}]

    def worker_pids(self) -> dict[int, int | None]:
        return {0: None}

    def add_artifacts(self, refs: list[ArtifactRef]) -> None:
        self.artifacts.extend(refs)

    async def submit(self, task: str, precision: str, payloads: list[Any]) -> list[ItemResult]:
        self.submitted.append((task, precision, payloads))
        self.inflight_seen.append(self.registry.get_sample_value("qbert_inflight_inputs"))
        failing = self.failing.get((task, precision))
        return [failing or ItemResult(value=_prediction(task, payload)) for payload in payloads]


def _service(tmp_path: Path, **settings: Any) -> Service:
    refs = [ArtifactRef(task, precision, tmp_path / task / precision) for task, precision in KEYS]
    config = ServiceSettings(artifacts=tmp_path, **settings)
    return Service(config, refs, ServiceMetrics(), pool_factory=FakePool)


def _call(service: Service, requests: Callable[[httpx.AsyncClient], Any]) -> Any:
    """Run `requests` against the app, its lifespan started and stopped around them."""
    app = build_app(service)

    async def scenario() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await requests(client)

    return asyncio.run(scenario())


def test_predict_routes_answer_in_their_shapes_and_name_the_model(tmp_path: Path) -> None:
    service = _service(tmp_path)

    async def requests(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await client.post("/predict/sst2", json={"text": "good"}),
            await client.post("/predict/sst2?precision=w2g128", json={"texts": ["good", "bad"]}),
            await client.post("/predict/ner", json={"text": "John lives here"}, headers={"X-Precision": "w8"}),
            await client.post("/predict/ner", json={"texts": ["John", "John"]}),
            await client.post("/qa", json={"question": "who?", "context": "John lives here"}),
        ]

    sst2, sst2_bulk, ner, ner_bulk, qa = _call(service, requests)
    assert sst2.status_code == 200, sst2.text
    assert sst2.json() == {
        "task": "sst2",
        "precision": "w8",
        "model": "ckpt@w8",
        "results": [{"label": "positive", "score": 0.9, "scores": {"negative": 0.1, "positive": 0.9}}],
    }
    assert sst2_bulk.json()["precision"] == "w2g128"
    assert len(sst2_bulk.json()["results"]) == 2
    assert ner.json()["entities"] == [{"type": "PER", "text": "John", "start": 0, "end": 4, "score": 0.99}]
    assert [len(r["entities"]) for r in ner_bulk.json()["results"]] == [1, 1]
    assert qa.json() == {
        "task": "qa",
        "precision": "w8",
        "model": "ckpt@w8",
        "answer": "John ",
        "start": 0,
        "end": 5,
        "score": 0.5,
    }
    assert service.pool.submitted[-1] == ("qa", "w8", [("who?", "John lives here")])
    assert service.pool.started
    assert service.pool.closed  # the lifespan stops what it started


def test_inputs_in_flight_are_counted_while_they_run_whatever_the_outcome(tmp_path: Path) -> None:
    service = _service(tmp_path)
    pool = service.pool
    assert isinstance(pool, FakePool)
    pool.failing[("ner", "w8")] = ItemResult(error=ItemError.INFERENCE_FAILED, detail="boom")

    async def requests(client: httpx.AsyncClient) -> list[int]:
        return [
            (await client.post("/predict/sst2", json={"texts": ["good", "bad", "fine"]})).status_code,
            (await client.post("/predict/ner", json={"text": "John"})).status_code,
        ]

    assert _call(service, requests) == [200, 500]
    assert pool.inflight_seen == [3.0, 1.0]
    assert service.metrics.registry.get_sample_value("qbert_inflight_inputs") == 0.0


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code"),
    [
        ("post", "/predict/sst2?precision=w3", {"text": "a"}, {}, 404, "unknown_precision"),
        ("post", "/predict/sst2", {"text": "a"}, {"X-Precision": "w3"}, 404, "unknown_precision"),
        ("post", "/predict/sst2", {"text": "   "}, {}, 422, "invalid_input"),
        ("post", "/predict/sst2", {"text": "a", "texts": ["b"]}, {}, 422, "invalid_input"),
        ("post", "/predict/sst2", {"texts": []}, {}, 422, "invalid_input"),
        ("post", "/predict/sst2", {"text": 3}, {}, 422, "invalid_input"),
        ("post", "/predict/ner", b"{not json", {}, 422, "invalid_json"),
        ("post", "/qa", {"question": "q"}, {}, 422, "invalid_input"),
        ("post", "/predict/xnli", {"text": "a"}, {}, 404, "unknown_task"),
        ("get", "/nowhere", None, {}, 404, "not_found"),
        ("post", "/predict/sst2", {"text": "x" * 3000}, {}, 413, "payload_too_large"),
    ],
)
def test_every_error_has_one_shape_and_its_status(
    tmp_path: Path, method: str, path: str, body: Any, headers: dict, status: int, code: str
) -> None:
    service = _service(tmp_path, max_body_bytes=2048)

    async def requests(client: httpx.AsyncClient) -> httpx.Response:
        if isinstance(body, bytes):
            return await client.request(method, path, content=body, headers=headers)
        return await client.request(method, path, json=body, headers=headers)

    response = _call(service, requests)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert isinstance(response.json()["detail"], str)


def test_a_model_still_loading_gets_503_with_retry_after_and_its_state(tmp_path: Path) -> None:
    service = _service(tmp_path)
    service.pool.loading.add(("sst2", "w8"))

    async def requests(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        return (
            await client.post("/predict/sst2", json={"text": "good"}),
            await client.get("/readyz"),
            await client.get("/models"),
        )

    predict, ready, models = _call(service, requests)
    assert predict.status_code == 503
    assert predict.json()["error"] == "model_not_ready"
    assert predict.json()["state"] == "loading"
    assert int(predict.headers["Retry-After"]) > 0
    assert ready.status_code == 503
    assert "sst2/w8 (loading)" in ready.json()["detail"]
    entry = next(m for m in models.json()["models"] if (m["task"], m["precision"]) == ("sst2", "w8"))
    assert (entry["serving"], entry["state"], entry["status"]) == (False, "loading", "loading")


def test_an_input_a_worker_refuses_maps_to_its_error_code(tmp_path: Path) -> None:
    service = _service(tmp_path)
    service.pool.failing[("sst2", "w8")] = ItemResult(error=ItemError.INVALID_INPUT, detail="text is 600 tokens")
    service.pool.failing[("ner", "w8")] = ItemResult(error=ItemError.INFERENCE_FAILED, detail="boom")

    async def requests(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        return (
            await client.post("/predict/sst2", json={"texts": ["a", "b"]}),
            await client.post("/predict/ner", json={"text": "a"}),
        )

    too_long, failed = _call(service, requests)
    assert (too_long.status_code, too_long.json()["error"]) == (422, "invalid_input")
    assert too_long.json()["detail"] == "texts[0]: text is 600 tokens"
    assert (failed.status_code, failed.json()["error"]) == (500, "inference_failed")


def test_the_api_key_guards_predict_routes_and_models_but_not_health(tmp_path: Path) -> None:
    service = _service(tmp_path, api_key="s3cret")

    async def requests(client: httpx.AsyncClient) -> list[int]:
        good = {"Authorization": "Bearer s3cret"}
        return [
            (await client.post("/predict/sst2", json={"text": "a"})).status_code,
            (await client.post("/predict/sst2", json={"text": "a"}, headers={"X-API-Key": "nope"})).status_code,
            (await client.post("/predict/sst2", json={"text": "a"}, headers=good)).status_code,
            (await client.get("/models")).status_code,
            (await client.get("/models", headers=good)).status_code,
            (await client.get("/healthz")).status_code,
            (await client.get("/readyz")).status_code,
        ]

    assert _call(service, requests) == [401, 401, 200, 401, 200, 200, 200]


def test_models_readiness_and_metrics_describe_what_serves(tmp_path: Path) -> None:
    service = _service(tmp_path)
    service.pool.replacement_refused[("sst2", "w2g128")] = "weights.safetensors: sha256 mismatch"

    async def requests(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        await client.post("/predict/sst2", json={"text": "a"})
        return await client.get("/models"), await client.get("/readyz"), await client.get("/metrics")

    models, ready, metrics = _call(service, requests)
    assert ready.status_code == 200
    assert ready.json()["models"] == {"ready": 4, "serving": 4, "total": 4}
    entries = models.json()["models"]
    assert [(m["task"], m["precision"], m["state"], m["artifact"]) for m in entries] == [
        (task, precision, "ready", precision) for task, precision in KEYS
    ]
    assert entries[0]["accuracy"] == [{"metric": "m", "value": 1.0, "split": "dev", "n": 1}]
    assert [m["reason"] for m in entries] == [
        None,
        "its own artifact was refused (weights.safetensors: sha256 mismatch); the stand-in answers",
        None,
        None,
    ]
    assert 'qbert_requests_total{outcome="ok",precision="w8",task="sst2"} 1.0' in metrics.text


def test_the_openapi_document_lists_the_routes_with_their_request_bodies(tmp_path: Path) -> None:
    async def requests(client: httpx.AsyncClient) -> dict:
        return (await client.get("/openapi.json")).json()

    document = _call(_service(tmp_path), requests)
    assert {"/predict/sst2", "/predict/ner", "/qa", "/models", "/healthz", "/readyz", "/metrics"} <= set(
        document["paths"]
    )
    for path in ("/predict/sst2", "/predict/ner", "/qa"):
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"], path
        assert "422" in document["paths"][path]["post"]["responses"], path
    assert "/predict/{task}" not in document["paths"]


def test_building_and_running_the_app_changes_nothing_in_the_process(tmp_path: Path) -> None:
    """Scheduling policy and the frozen collector are the entry point's (`qbert serve`), not the factory's."""
    frozen, policy = gc.get_freeze_count(), os.sched_getscheduler(0)

    async def requests(client: httpx.AsyncClient) -> int:
        return (await client.get("/healthz")).status_code

    assert _call(_service(tmp_path), requests) == 200
    assert gc.get_freeze_count() == frozen
    assert os.sched_getscheduler(0) == policy


class AnsweringInbox:
    """A worker's inbox that answers each batch at once, as a worker that loaded the model would."""

    def __init__(self, pool: Any, index: int) -> None:
        self.pool, self.index, self.batches = pool, index, 0

    def send(self, message: Any) -> None:
        if isinstance(message, RunBatch):
            self.batches += 1
            results = tuple(ItemResult(value=_prediction(message.task, p)) for p in message.payloads)
            done = BatchDone(message.batch_id, results, 0.001)
            asyncio.get_running_loop().call_soon(self.pool._on_message, self.index, 0, done)


def test_a_model_one_worker_refused_is_answered_by_the_worker_that_loaded_it(tmp_path: Path) -> None:
    """Two workers disagree on a model (one refused its artifact): requests go to the one that serves it, and
    none gets a 500. The real pool routes here; only the worker processes are played by the test."""
    settings = ServiceSettings(workers=2, max_wait_ms=0, artifacts=tmp_path, tasks=["sst2"])
    service = Service(settings, [ArtifactRef("sst2", "w8", tmp_path / "sst2" / "w8")], ServiceMetrics())
    pool = service.pool
    inboxes = [AnsweringInbox(pool, index) for index in (0, 1)]
    info = ModelInfo("sst2", "w8", "ckpt@w8", 8.0, 1, 2, 3, 0.1, ("negative", "positive"), (), artifact="w8")
    for index, inbox in enumerate(inboxes):
        pool._slots[index].inbox = inbox
        pool._on_message(index, 0, WorkerStarted(index, 1000 + index))
    pool._on_message(0, 0, ModelRefused(0, "sst2", "w8", "weights.safetensors: sha256 mismatch"))
    pool._on_message(1, 0, ModelServing(1, info))

    async def scenario() -> tuple[list[int], dict]:
        pool._loop = asyncio.get_running_loop()
        dispatcher = asyncio.create_task(pool._dispatch_forever())
        try:
            transport = httpx.ASGITransport(app=build_app(service))  # no lifespan: no worker process is spawned
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                statuses = [
                    r.status_code
                    for r in await asyncio.gather(
                        *(client.post("/predict/sst2", json={"text": f"t{i}"}) for i in range(8))
                    )
                ]
                models = (await client.get("/models")).json()
        finally:
            dispatcher.cancel()
        return statuses, models

    statuses, models = asyncio.run(scenario())
    assert statuses == [200] * 8
    assert (inboxes[0].batches, inboxes[1].batches > 0) == (0, True)
    assert [(m["state"], m["serving"]) for m in models["models"]] == [("ready", True)]


def test_the_published_schema_states_what_the_service_enforces(tmp_path: Path) -> None:
    """A body the OpenAPI schema allows is one the service takes, and the reverse: exactly one of text/texts, no
    null, non-blank strings within the configured lengths and counts; /metrics is text; 405 names what is allowed."""
    service = _service(tmp_path, max_texts=3, max_text_chars=50, max_context_chars=80)

    async def requests(client: httpx.AsyncClient) -> tuple[dict, list[int], httpx.Response]:
        bodies = [{}, {"text": None}, {"text": None, "texts": ["a"]}, {"texts": ["a"] * 4}, {"text": "x" * 51}]
        # blank to Python (U+001E) or to JSON Schema's ECMAScript regex (U+FEFF) alike
        bodies += [{"text": "\x1e"}, {"texts": ["a", "\ufeff "]}]
        statuses = [(await client.post("/predict/sst2", json=body)).status_code for body in bodies]
        statuses.append((await client.post("/predict/sst2", json={"texts": ["a", "b", "c"]})).status_code)
        return (await client.get("/openapi.json")).json(), statuses, await client.get("/predict/sst2")

    document, statuses, wrong_method = _call(service, requests)
    assert statuses == [422] * 7 + [200]
    schemas = document["components"]["schemas"]
    for name in ("SST2Request", "NERRequest"):
        assert schemas[name]["oneOf"] == [{"required": ["text"]}, {"required": ["texts"]}]
        text, texts = schemas[name]["properties"]["text"], schemas[name]["properties"]["texts"]
        assert (text["type"], text["minLength"], text["maxLength"], text["pattern"]) == ("string", 1, 50, NON_BLANK)
        assert (texts["minItems"], texts["maxItems"], texts["items"]["maxLength"]) == (1, 3, 50)
        assert [bool(re.search(NON_BLANK, t)) for t in ("\x1e", "\ufeff ", "\u3000a")] == [False, False, True]
    question, context = (schemas["QARequest"]["properties"][p] for p in ("question", "context"))
    assert (question["minLength"], question["maxLength"], context["maxLength"]) == (1, 50, 80)
    assert list(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"


def test_models_report_each_models_recent_latency_once_it_has_answered(tmp_path: Path) -> None:
    service = _service(tmp_path)

    async def requests(client: httpx.AsyncClient) -> tuple[dict, dict]:
        before = (await client.get("/models")).json()
        for _ in range(3):
            await client.post("/predict/sst2?precision=w8", json={"text": "good"})
        await client.post("/predict/sst2?precision=w8", json={"text": " "})  # refused: not a latency figure
        return before, (await client.get("/models")).json()

    before, after = _call(service, requests)
    assert all(m["latency"] is None for m in before["models"])
    latency = {(m["task"], m["precision"]): m["latency"] for m in after["models"]}
    assert latency[("sst2", "w8")]["requests"] == 3
    assert 0 < latency[("sst2", "w8")]["p50_ms"] <= latency[("sst2", "w8")]["p95_ms"]
    assert latency[("sst2", "w2g128")] is None


def test_the_playground_page_is_served_whole_and_fetches_nothing_from_outside(tmp_path: Path) -> None:
    service = _service(tmp_path, api_key="k")

    async def requests(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [await client.get("/"), await client.get("/playground"), await client.get("/models")]

    root, page, models = _call(service, requests)
    assert (root.status_code, page.status_code, models.status_code) == (200, 200, 401)  # the page asks for the key
    assert root.text == page.text
    assert root.headers["content-type"].startswith("text/html")
    assert re.search(r"(src|href)\s*=\s*\"(https?:)?//|@import|url\(", page.text) is None
    for control in ("model", "api-key", "text", "question", "context"):
        assert f'<label for="{control}"' in page.text
