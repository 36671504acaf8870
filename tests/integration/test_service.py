"""The service over real HTTP: `qbert serve` on 127.0.0.1 with tiny artifacts, one spawned worker."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from quantization.evaluate import predict
from quantization.runtime import load_model
from quantization.tasks import get_task
from quantization.tasks.ner import NerInput
from quantization.tasks.qa import QAInput
from tests.integration.server import RunningServer, start_server

METRICS = {
    "qbert_request_duration_seconds": "histogram",
    "qbert_queue_duration_seconds": "histogram",
    "qbert_inference_duration_seconds": "histogram",
    "qbert_batch_size": "histogram",
    "qbert_requests": "counter",
    "qbert_model_weight_bytes": "gauge",
    "qbert_model_bits_per_weight": "gauge",
    "qbert_model_accuracy": "gauge",
    "qbert_worker_resident_bytes": "gauge",
    "qbert_worker_cpu_seconds": "counter",
    "qbert_queue_depth": "gauge",
    "qbert_workers_ready": "gauge",
    "qbert_worker_restarts": "counter",
}
QA_CONTEXT = "john smith lives in paris . he works at acme corp . " * 40  # several 64-token windows


@pytest.fixture(scope="module")
def server(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("server") / "serve.log"
    running = start_server(tiny_artifacts, log, max_wait_ms="30", default_precision="w8")
    yield running
    assert running.stop() in (0, -signal.SIGTERM), log.read_text()  # uvicorn re-raises the signal it handled
    assert "Application shutdown complete" in log.read_text()


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _metrics(client: httpx.Client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def test_not_ready_until_the_worker_has_loaded(server: RunningServer, client: httpx.Client) -> None:
    assert server.before_ready == {"readyz": 503, "predict": 503}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["workers"][0]["ready"] is True
    assert client.get("/healthz").json() == {"status": "ok"}


def test_sst2_single_and_many_texts_in_order(client: httpx.Client) -> None:
    one = client.post("/predict/sst2", json={"text": "a good movie"})
    assert one.status_code == 200, one.text
    body = one.json()
    assert (body["task"], body["precision"]) == ("sst2", "w8")  # the configured default
    assert body["model"].startswith("minilm-l6-sst2@")
    (result,) = body["results"]
    assert set(result["scores"]) == {"negative", "positive"}
    assert result["score"] == pytest.approx(max(result["scores"].values()))
    assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-5)

    texts = ["a good movie", "a terrible film !", "john plays very good", "what a bad movie"]
    many = client.post("/predict/sst2?precision=fp32", json={"texts": texts})
    assert many.status_code == 200, many.text
    assert many.json()["precision"] == "fp32"
    singles = [client.post("/predict/sst2?precision=fp32", json={"text": t}).json()["results"][0] for t in texts]
    for batched, single in zip(many.json()["results"], singles, strict=True):
        assert batched["label"] == single["label"]
        assert batched["score"] == pytest.approx(single["score"], abs=1e-4)


def test_precision_from_header_and_the_query_wins_over_it(client: httpx.Client) -> None:
    by_header = client.post("/predict/sst2", json={"text": "good"}, headers={"X-Precision": "w2g128"})
    assert by_header.json()["precision"] == "w2g128"
    both = client.post("/predict/sst2?precision=w8", json={"text": "good"}, headers={"X-Precision": "fp32"})
    assert both.status_code == 200
    assert both.json()["precision"] == "w8"
    unknown_header = client.post("/predict/sst2?precision=w8", json={"text": "good"}, headers={"X-Precision": "w9"})
    assert unknown_header.json()["precision"] == "w8"


def test_unknown_precision_and_task_are_404_listing_what_exists(client: httpx.Client) -> None:
    response = client.post("/qa?precision=w5", json={"question": "who ?", "context": "john smith"})
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_precision"
    assert sorted(response.json()["available"]) == ["fp32", "w2g128", "w8"]
    response = client.post("/predict/sentiment", json={"text": "x"})
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_task"
    assert sorted(response.json()["available"]) == ["ner", "qa", "sst2"]


def test_ner_entities_have_character_offsets_into_the_input(client: httpx.Client) -> None:
    text = "John Smith lives in Paris. He works at Acme corp!"
    response = client.post("/predict/ner?precision=fp32", json={"text": text})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "ner"
    for entity in body["entities"]:
        assert text[entity["start"] : entity["end"]] == entity["text"]
        assert entity["type"] in {"PER", "ORG", "LOC", "MISC"}
        assert 0.0 <= entity["score"] <= 1.0


def test_ner_many_texts_answer_each_in_order_as_alone(client: httpx.Client) -> None:
    texts = ["John Smith lives in Paris.", "nothing here", "He works at Acme corp in Berlin!"]
    many = client.post("/predict/ner?precision=fp32", json={"texts": texts})
    assert many.status_code == 200, many.text
    body = many.json()
    assert (body["task"], body["precision"]) == ("ner", "fp32")
    assert "entities" not in body
    singles = [client.post("/predict/ner?precision=fp32", json={"text": t}).json()["entities"] for t in texts]
    assert len(body["results"]) == len(texts)
    for text, result, single in zip(texts, body["results"], singles, strict=True):
        assert [(e["type"], e["start"], e["end"]) for e in result["entities"]] == [
            (e["type"], e["start"], e["end"]) for e in single
        ]
        for entity in result["entities"]:
            assert text[entity["start"] : entity["end"]] == entity["text"]


def test_qa_long_context_answer_is_a_span_of_it(client: httpx.Client) -> None:
    response = client.post("/qa", json={"question": "where does john live ?", "context": QA_CONTEXT})
    assert response.status_code == 200, response.text
    body = response.json()
    assert QA_CONTEXT[body["start"] : body["end"]] == body["answer"]
    assert 0.0 <= body["score"] <= 1.0


@pytest.mark.parametrize(
    ("route", "body", "error"),
    [
        ("/predict/sst2", {"text": "   "}, "invalid_input"),
        ("/predict/sst2", {}, "invalid_input"),
        ("/predict/sst2", {"text": "a", "texts": ["b"]}, "invalid_input"),
        ("/predict/sst2", {"texts": []}, "invalid_input"),
        ("/predict/ner", {"text": 3}, "invalid_input"),
        ("/predict/ner", {"text": "a", "texts": ["b"]}, "invalid_input"),
        ("/predict/ner", {"texts": ["John", " "]}, "invalid_input"),
        ("/qa", {"question": "who ?", "context": ""}, "invalid_input"),
        ("/qa", {"question": "", "context": "john"}, "invalid_input"),
    ],
)
def test_bad_input_is_a_422_in_the_error_shape(client: httpx.Client, route: str, body: dict, error: str) -> None:
    response = client.post(route, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == error
    assert response.json()["detail"]


def test_invalid_json_is_a_422(client: httpx.Client) -> None:
    response = client.post("/predict/sst2", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_json"


@pytest.mark.parametrize(
    ("route", "request_model", "response_models", "required"),
    [
        ("/predict/sst2", "SST2Request", ["SST2Response"], []),
        ("/predict/ner", "NERRequest", ["NERResponse", "NERBatchResponse"], []),
        ("/qa", "QARequest", ["QAResponse"], ["question", "context"]),
    ],
)
def test_openapi_documents_each_route_body_precision_and_response(
    client: httpx.Client, route: str, request_model: str, response_models: list[str], required: list[str]
) -> None:
    """The routes read their body and precision themselves; the schema must still say what they accept."""
    spec = client.get("/openapi.json").json()
    operation = spec["paths"][route]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = spec["components"]["schemas"][ref.removeprefix("#/components/schemas/")]
    assert (body["title"], body.get("required", []), body["additionalProperties"]) == (request_model, required, False)
    assert body["examples"]
    parameters = {(p["name"], p["in"]) for p in operation["parameters"]}
    assert parameters == {("precision", "query"), ("X-Precision", "header")}
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    refs = [{"$ref": f"#/components/schemas/{name}"} for name in response_models]
    assert (ok if len(refs) == 1 else ok["anyOf"]) == (refs[0] if len(refs) == 1 else refs)
    assert {"404", "422", "503"} <= set(operation["responses"])


def test_validation_errors_name_the_field(client: httpx.Client) -> None:
    response = client.post("/qa", json={"question": "who ?"})
    assert response.status_code == 422
    assert response.json() == {"error": "invalid_input", "detail": "context: Field required"}


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
def test_api_process_is_a_batch_task_and_its_workers_normal(server: RunningServer, client: httpx.Client) -> None:
    """QBERT_API_SCHEDULING=batch (the default): the API's wakeups must not preempt inference on a shared core."""
    workers = [w["pid"] for w in client.get("/readyz").json()["workers"]]
    assert os.sched_getscheduler(server.process.pid) == os.SCHED_BATCH
    assert [os.sched_getscheduler(pid) for pid in workers] == [os.SCHED_OTHER]  # the one worker


def test_models_lists_sizes_and_accuracy(client: httpx.Client) -> None:
    body = client.get("/models").json()
    assert body["default_precision"] == "w8"
    rows = {(m["task"], m["precision"]): m for m in body["models"]}
    assert set(rows) == {(t, p) for t in ("sst2", "ner", "qa") for p in ("fp32", "w8", "w2g128")}
    for (task, precision), row in rows.items():
        assert row["status"] == "loaded"
        assert row["bits_per_weight"] == {"fp32": 32.0, "w8": 8.0, "w2g128": 2.0}[precision]
        assert row["accuracy"], (task, precision)
        assert all(0.0 <= a["value"] <= 1.0 and a["n"] > 0 for a in row["accuracy"])
    assert rows[("qa", "w2g128")]["packed_bytes"] < rows[("qa", "w8")]["packed_bytes"]
    assert rows[("qa", "w8")]["runtime_bytes"] < rows[("qa", "fp32")]["runtime_bytes"]


async def _concurrent_sst2(url: str, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        responses = await asyncio.gather(
            *(client.post("/predict/sst2?precision=w2g128", json={"text": f"movie {i}"}) for i in range(n))
        )
    return [r.status_code for r in responses]


def test_concurrent_requests_coalesce_into_batches(server: RunningServer, client: httpx.Client) -> None:
    before = _metrics(client)["qbert_batch_size"]
    statuses = asyncio.run(_concurrent_sst2(server.url, 24))
    assert statuses == [200] * 24
    after = _metrics(client)["qbert_batch_size"]

    def count_and_sum(family) -> tuple[float, float]:
        samples = {
            s.name: s.value for s in family.samples if s.labels.get("precision") == "w2g128" and "le" not in s.labels
        }
        return samples.get("qbert_batch_size_count", 0.0), samples.get("qbert_batch_size_sum", 0.0)

    (c0, s0), (c1, s1) = count_and_sum(before), count_and_sum(after)
    assert s1 - s0 == 24  # every input went through a batch
    assert c1 - c0 < 24  # ... and fewer batches than inputs: requests were coalesced


def test_loadtest_reports_latency_and_what_serving_costs_in_cpu(server: RunningServer) -> None:
    from quantization.loadgen.loadtest import LoadPlan, built_in_samples, run_load

    plan = LoadPlan(url=server.url, mix=(("sst2", "w8"), ("ner", "fp32")), concurrency=4, requests=40, warmup=4)
    result = asyncio.run(run_load(plan, {task: built_in_samples(task) for task in ("sst2", "ner")}))
    rows = {(r["task"], r["precision"]): r for r in result["rows"]}
    assert set(rows) == {("sst2", "w8"), ("ner", "fp32")}
    assert sum(r["ok"] for r in rows.values()) == 40
    for row in rows.values():
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    # The server's own CPU per answer, read from its /metrics around the run: API process and worker.
    assert result["workers_cpu_s"] > 0
    assert result["api_cpu_s"] > 0
    assert result["service_cpu_ms_per_request"] > result["api_cpu_ms_per_request"] > 0
    assert result["client_cpu_ms_per_request"] > 0


def test_bulk_loadtest_sends_texts_and_counts_inputs(server: RunningServer, client: httpx.Client) -> None:
    from quantization.loadgen.loadtest import LoadPlan, built_in_samples, run_load

    def inputs_batched() -> float:
        family = _metrics(client)["qbert_batch_size"]
        return sum(s.value for s in family.samples if s.name == "qbert_batch_size_sum" and s.labels["task"] == "ner")

    before = inputs_batched()
    plan = LoadPlan(url=server.url, mix=(("ner", "w8"),), concurrency=2, requests=8, texts_per_request=5)
    result = asyncio.run(run_load(plan, {"ner": built_in_samples("ner")}))
    (row,) = result["rows"]
    assert (row["ok"], row["texts_per_request"]) == (8, 5)
    assert row["throughput_ips"] == pytest.approx(5 * row["throughput_rps"], rel=0.01)
    assert inputs_batched() - before == 40  # every request carried 5 texts to the worker
    assert result["service_cpu_ms_per_input"] == pytest.approx(result["service_cpu_ms_per_request"] / 5, rel=0.01)


def test_raw_throughput_times_the_bare_model_on_the_cpus_given(tiny_artifacts: Path) -> None:
    """What `qbert loadtest --compare-raw --raw-cpus` runs: the model in process, pinned, collector left as found."""
    from quantization.loadgen.loadtest import built_in_samples, raw_throughput
    from quantization.system import cpu_affinity

    frozen_before = gc.get_freeze_count()
    cpu = min(os.sched_getaffinity(0))
    with cpu_affinity(frozenset({cpu})):
        row = raw_throughput(tiny_artifacts / "sst2" / "w8", built_in_samples("sst2"), 4, 0.3, "eager")
    assert (row["task"], row["precision"], row["batch"], row["backend"]) == ("sst2", "w8", 4, "eager")
    assert row["throughput_ips"] > 0
    assert row["cpu_ms_per_input"] > 0
    assert gc.get_freeze_count() == frozen_before  # frozen for the timed loop only


def test_metrics_parse_and_every_metric_is_present(client: httpx.Client) -> None:
    client.post("/predict/ner", json={"text": "John lives in Paris"})
    families = _metrics(client)
    for name, kind in METRICS.items():
        assert name in families, name
        assert families[name].type == kind, name
        assert families[name].documentation, name
    accuracy = {
        (s.labels["task"], s.labels["precision"], s.labels["metric"]) for s in families["qbert_model_accuracy"].samples
    }
    assert ("qa", "w8", "f1") in accuracy
    assert ("ner", "fp32", "entity_f1") in accuracy
    kinds = {s.labels["kind"] for s in families["qbert_model_weight_bytes"].samples}
    assert kinds == {"packed", "runtime"}
    ok = [
        s
        for s in families["qbert_requests"].samples
        if s.name == "qbert_requests_total" and s.labels["outcome"] == "ok"
    ]
    assert sum(s.value for s in ok) > 0
    resident = families["qbert_worker_resident_bytes"].samples
    assert resident
    assert resident[0].value > 10_000_000
    (worker_cpu,) = families["qbert_worker_cpu_seconds"].samples
    assert worker_cpu.name == "qbert_worker_cpu_seconds_total"
    assert worker_cpu.value > 0.5  # loading and warming up the models, at least
    assert families["qbert_workers_ready"].samples[0].value == 1
    labels = {key for family in families.values() for s in family.samples for key in s.labels}
    assert labels <= {"task", "precision", "outcome", "kind", "metric", "worker", "le"}


@pytest.mark.parametrize("precision", ["fp32", "w2g128"])
def test_served_answers_equal_evaluated_answers(client: httpx.Client, tiny_artifacts: Path, precision: str) -> None:
    """The service and `qbert eval` share preprocessing and postprocessing: same input, same answer."""
    cases = {
        "sst2": ("/predict/sst2", {"text": "john plays very good"}, "john plays very good"),
        "ner": (
            "/predict/ner",
            {"text": "John Smith lives in Paris ."},
            NerInput.from_text("John Smith lives in Paris ."),
        ),
        "qa": (
            "/qa",
            {"question": "where does john live ?", "context": QA_CONTEXT},
            QAInput("where does john live ?", QA_CONTEXT),
        ),
    }
    for task_name, (route, body, item) in cases.items():
        loaded = load_model(tiny_artifacts / task_name / precision)
        (expected,) = predict(loaded, get_task(task_name), [item], batch_size=1)
        served = client.post(f"{route}?precision={precision}", json=body).json()
        if task_name == "sst2":
            assert served["results"][0]["label"] == expected.label
            assert served["results"][0]["score"] == pytest.approx(expected.score, abs=1e-4)
        elif task_name == "ner":
            assert [(e["type"], e["start"], e["end"]) for e in served["entities"]] == [
                (e.type, e.start, e.end) for e in expected.entities
            ]
        else:
            assert (served["answer"], served["start"], served["end"]) == (expected.answer, expected.start, expected.end)
            assert served["score"] == pytest.approx(expected.score, abs=1e-4)


def test_a_killed_worker_is_restarted_and_readiness_follows(server: RunningServer, client: httpx.Client) -> None:
    pid = client.get("/readyz").json()["workers"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    seen_not_ready, deadline = False, time.monotonic() + 120
    while time.monotonic() < deadline:
        ready = client.get("/readyz")
        seen_not_ready |= ready.status_code == 503
        if ready.status_code == 200 and ready.json()["workers"][0]["pid"] != pid:
            break
        time.sleep(0.05)
    else:
        pytest.fail("worker not restarted within 120 s")
    assert seen_not_ready
    assert ready.json()["workers"][0]["restarts"] == 1
    restarts = _metrics(client)["qbert_worker_restarts"].samples
    assert [s.value for s in restarts if s.name == "qbert_worker_restarts_total"] == [1.0]
    assert client.post("/predict/sst2", json={"text": "good"}).status_code == 200


def test_the_compiled_backend_serves_the_evaluated_answers(tiny_artifacts: Path, tmp_path: Path) -> None:
    """The default backend (torch.compile) compiles before readiness and answers as the eager reference does."""
    running = start_server(tiny_artifacts, tmp_path / "serve.log", backend="compiled", tasks="sst2,qa", precisions="w8")
    try:
        with httpx.Client(base_url=running.url, timeout=30) as client:
            models = client.get("/models").json()["models"]
            assert {m["backend"] for m in models} == {"compiled"}
            texts = ["john plays very good", "a terrible film", "what a bad movie !"]
            served = client.post("/predict/sst2", json={"texts": texts}).json()["results"]
            loaded = load_model(tiny_artifacts / "sst2" / "w8")
            expected = predict(loaded, get_task("sst2"), texts, batch_size=1)
            for got, want in zip(served, expected, strict=True):
                assert got["label"] == want.label
                assert got["score"] == pytest.approx(want.score, abs=1e-3)  # fused kernels round differently
            qa = client.post("/qa", json={"question": "where does john live ?", "context": QA_CONTEXT})
            assert qa.status_code == 200
            (want,) = predict(
                load_model(tiny_artifacts / "qa" / "w8"),
                get_task("qa"),
                [QAInput("where does john live ?", QA_CONTEXT)],
                batch_size=1,
            )
            assert (qa.json()["start"], qa.json()["end"]) == (want.start, want.end)
    finally:
        running.stop()
