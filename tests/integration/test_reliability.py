"""Bad input, overload, deadlines, dead workers, tampered artifacts and API keys, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantization.loadgen.loadtest import LoadPlan
from quantization.loadgen.soak import run_soak
from tests.integration.server import RunningServer, launch_server, start_server

logger = logging.getLogger(__name__)
LONG_CONTEXT = "john smith lives in paris . he works at acme corp . " * 1900  # ~99k characters
MEDIUM_CONTEXT = "john smith lives in paris . he works at acme corp . " * 60
KEY = "test-key"
FUZZ_EXAMPLES = 1100


def _error_shape(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) >= {"error", "detail"}, body
    assert isinstance(body["error"], str)
    assert isinstance(body["detail"], str)
    return body


@pytest.fixture(scope="module")
def server(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tiny_artifacts, tmp_path_factory.mktemp("plain") / "serve.log")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def tight(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Small limits: a short deadline, a short queue, small forward passes, a token limit, a body limit, an API key."""
    running = start_server(
        tiny_artifacts,
        tmp_path_factory.mktemp("tight") / "serve.log",
        request_timeout_s="0.25",
        max_queue="4",
        max_batch_size="2",
        max_batch_tokens="64",  # one QA window per forward pass: a long context takes many, past the deadline
        max_tokens="32",
        max_body_bytes="200000",
        api_key=KEY,
    )
    yield running
    running.stop()


# ----- bad input ---------------------------------------------------------------------------------


def test_api_key_guards_predict_routes_but_not_ops_by_default(tight: RunningServer) -> None:
    with httpx.Client(base_url=tight.url, timeout=30) as client:
        missing = client.post("/predict/sst2", json={"text": "good"})
        assert missing.status_code == 401
        assert _error_shape(missing)["error"] == "unauthorized"
        wrong = client.post("/predict/sst2", json={"text": "good"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = client.post("/predict/sst2", json={"text": "good"}, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
        assert client.post("/predict/sst2", json={"text": "good"}, headers={"X-API-Key": KEY}).status_code == 200
        assert client.get("/models").status_code == 401
        for route in ("/healthz", "/readyz", "/metrics"):
            assert client.get(route).status_code == 200, route


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"text": "good " * 40}, 422, "invalid_input"),  # over QBERT_MAX_TOKENS=32
        ({"texts": ["good"] * 65}, 422, "invalid_input"),  # over QBERT_MAX_TEXTS=64
        ({"text": "x" * 10_001}, 422, "invalid_input"),  # over QBERT_MAX_TEXT_CHARS
        ({"text": "good", "extra": 1}, 422, "invalid_input"),
        ({"text": ["good"]}, 422, "invalid_input"),
        ({"text": "a" * 250_000}, 413, "payload_too_large"),  # over QBERT_MAX_BODY_BYTES=200000
    ],
)
def test_bad_sst2_input_is_a_4xx(tight: RunningServer, body: dict, status: int, error: str) -> None:
    with httpx.Client(base_url=tight.url, timeout=30, headers={"X-API-Key": KEY}) as client:
        response = client.post("/predict/sst2", json=body)
    assert response.status_code == status, response.text
    assert _error_shape(response)["error"] == error


@pytest.mark.parametrize(
    "content",
    [b'{"text": "\xff\xfe bad utf-8"}', b"", b"null", b"[]", b'{"text": "unterminated', b"\x00\x01\x02"],
)
def test_undecodable_bodies_are_a_400_or_422(tight: RunningServer, content: bytes) -> None:
    with httpx.Client(base_url=tight.url, timeout=30, headers={"X-API-Key": KEY}) as client:
        response = client.post("/predict/sst2", content=content, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422), response.text  # 400: not UTF-8 at all
    assert _error_shape(response)["error"] in {"invalid_json", "invalid_input"}


# ----- time and overload -------------------------------------------------------------------------


def test_a_request_past_its_deadline_is_a_504(tight: RunningServer) -> None:
    with httpx.Client(base_url=tight.url, timeout=30, headers={"X-API-Key": KEY}) as client:
        started = time.monotonic()
        response = client.post("/qa", json={"question": "where does john live ?", "context": LONG_CONTEXT})
        elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert _error_shape(response)["error"] == "deadline_exceeded"
    assert elapsed < 5


async def _flood(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60, headers={"X-API-Key": KEY}) as client:
        body = {"question": "where does john live ?", "context": MEDIUM_CONTEXT}
        return await asyncio.gather(*(client.post("/qa", json=body) for _ in range(n)))


def test_overload_gets_429_with_retry_after_and_nothing_hangs(tight: RunningServer) -> None:
    started = time.monotonic()
    responses = asyncio.run(asyncio.wait_for(_flood(tight.url, 48), timeout=60))
    statuses = Counter(r.status_code for r in responses)
    logger.info("48 concurrent QA requests, queue of 4: %s in %.2f s", dict(statuses), time.monotonic() - started)
    assert set(statuses) <= {200, 429, 504}, statuses
    assert statuses[429] >= 1, statuses
    for response in responses:
        if response.status_code == 429:
            assert response.headers["Retry-After"] == "1"
            assert _error_shape(response)["error"] == "overloaded"
    assert time.monotonic() - started < 60
    # Still serving: the worker may be finishing a batch whose requests gave up, which can cost the next
    # request its 0.25 s deadline, but the service must answer again within a few seconds.
    recovered_by = time.monotonic() + 10
    with httpx.Client(base_url=tight.url, timeout=30, headers={"X-API-Key": KEY}) as client:
        while (status := client.post("/predict/sst2", json={"text": "good"}).status_code) != 200:
            assert status in (429, 504), status
            assert time.monotonic() < recovered_by, "no 200 within 10 s of the flood"
            time.sleep(0.2)


# ----- fuzzing -----------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_text = st.text(max_size=200)  # any code point, lone surrogates and control characters included
_value = _text | st.integers() | st.none() | st.lists(_text, max_size=5) | _json
# Per route: well-formed bodies with arbitrary text (they reach the tokenizers and the models),
# bodies with the right keys and wrong values, and arbitrary JSON.
_bodies = {
    "/predict/sst2": st.fixed_dictionaries({"text": _text})
    | st.fixed_dictionaries({"texts": st.lists(_text, max_size=70)})
    | st.fixed_dictionaries({}, optional={"text": _value, "texts": _value}),
    "/predict/ner": st.fixed_dictionaries({"text": _text}) | st.fixed_dictionaries({}, optional={"text": _value}),
    "/qa": st.fixed_dictionaries({"question": _text, "context": _text | st.text(max_size=3000)})
    | st.fixed_dictionaries({}, optional={"question": _value, "context": _value}),
    "/predict/zzz": _json,
}
_request = st.tuples(
    st.sampled_from(list(_bodies)).flatmap(lambda route: st.tuples(st.just(route), _bodies[route] | _json)),
    st.none() | st.sampled_from(["fp32", "w8", "w2g128"]) | st.text("abcdefgw0123456789-_%", max_size=10),
    st.integers(0, 9).map(lambda n: n == 0),  # one body in ten is raw bytes
    st.binary(max_size=64),
)


@pytest.fixture(scope="module")
def fuzz_log() -> Counter:
    return Counter()


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(request=_request)
def test_fuzzed_requests_never_get_a_5xx(server: RunningServer, fuzz_log: Counter, request: tuple) -> None:
    (route, body), precision, raw, junk = request
    content = junk if raw else json.dumps(body).encode()
    params = {"precision": precision} if precision is not None else {}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post(route, params=params, content=content, headers={"content-type": "application/json"})
    fuzz_log[response.status_code] += 1
    assert response.status_code < 500, (route, body, response.text)
    if response.status_code >= 400:
        _error_shape(response)


def test_fuzzing_sent_enough_requests(fuzz_log: Counter) -> None:
    logger.info("fuzzed requests by status: %s (total %d)", dict(sorted(fuzz_log.items())), sum(fuzz_log.values()))
    assert sum(fuzz_log.values()) >= 1000, fuzz_log
    assert not [status for status in fuzz_log if status >= 500]
    assert fuzz_log[200] > 100  # the generator reached the models, not only the validators


# ----- memory ------------------------------------------------------------------------------------


def test_short_soak_keeps_memory_flat(server: RunningServer) -> None:
    plan = LoadPlan(server.url, (("sst2", "w8"), ("ner", "w2g128"), ("qa", "fp32")), concurrency=4, duration_s=2.0)
    payloads = {
        "sst2": ["a good movie", "a terrible film !"],
        "ner": ["John Smith lives in Paris ."],
        "qa": [("where does john live ?", MEDIUM_CONTEXT)],
    }
    result = run_soak(plan, payloads, duration_s=14.0, sample_every_s=2.0)
    assert set(result["statuses"]) == {"200"}, result["statuses"]
    assert len(result["samples"]) >= 6
    assert {"api", "worker0"} <= set(result["growth_mb"])
    assert all(growth < 25.0 for growth in result["growth_mb"].values()), result["growth_mb"]


# ----- dead workers and shutdown -----------------------------------------------------------------


async def _steady_load(url: str, seconds: float) -> list[tuple[int, str]]:
    """Four clients sending QA requests (~0.1 s of work each) for `seconds`; (status, error code) of each."""
    out: list[tuple[int, str]] = []
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def loop() -> None:
            while time.monotonic() < stop:
                r = await client.post("/qa", json={"question": "where does john live ?", "context": MEDIUM_CONTEXT * 8})
                out.append((r.status_code, r.json().get("error", "") if r.status_code != 200 else ""))

        await asyncio.gather(*(loop() for _ in range(4)))
    return out


def test_killing_a_worker_under_load_fails_only_its_requests_and_it_comes_back(
    tiny_artifacts: Path, tmp_path: Path
) -> None:
    running = start_server(tiny_artifacts, tmp_path / "serve.log", workers="2")
    try:
        with httpx.Client(base_url=running.url, timeout=30) as client:
            victim = client.get("/readyz").json()["workers"][0]["pid"]

            async def scenario() -> tuple[list[tuple[int, str]], float]:
                load = asyncio.create_task(_steady_load(running.url, 6.0))
                await asyncio.sleep(1.0)
                async with httpx.AsyncClient(base_url=running.url, timeout=30) as probe:
                    while not (await probe.get("/readyz")).json()["workers"][0]["busy"]:
                        await asyncio.sleep(0.005)
                    os.kill(victim, signal.SIGKILL)  # mid-request
                    killed_at = time.monotonic()
                    while True:
                        ready = await probe.get("/readyz")
                        if ready.status_code == 200 and ready.json()["workers"][0]["pid"] != victim:
                            break
                        await asyncio.sleep(0.05)
                recovery = time.monotonic() - killed_at
                return await asyncio.wait_for(load, timeout=120), recovery

            responses, recovery = asyncio.run(scenario())
            statuses = Counter(status for status, _ in responses)
            assert set(statuses) <= {200, 503}, statuses
            assert statuses[503] >= 1, statuses  # the killed worker's batch
            assert all(error == "worker_lost" for status, error in responses if status == 503)
            assert statuses[200] > 10
            assert recovery < 60
            logger.info("worker kill under load: %s; ready with a new pid after %.2f s", dict(statuses), recovery)
            assert client.get("/readyz").json()["workers"][0]["restarts"] == 1
    finally:
        running.stop()


def test_graceful_shutdown_finishes_in_flight_requests(tiny_artifacts: Path, tmp_path: Path) -> None:
    running = start_server(tiny_artifacts, tmp_path / "serve.log")

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(base_url=running.url, timeout=60) as client:
            body = {"question": "where does john live ?", "context": LONG_CONTEXT}
            in_flight = [asyncio.create_task(client.post("/qa", json=body)) for _ in range(3)]
            await asyncio.sleep(0.3)
            running.process.send_signal(signal.SIGTERM)
            return [r.status_code for r in await asyncio.gather(*in_flight)]

    assert asyncio.run(scenario()) == [200, 200, 200]
    assert running.process.wait(60) in (0, -signal.SIGTERM)


# ----- tampered artifacts ------------------------------------------------------------------------


def test_a_pool_whose_every_artifact_is_refused_is_not_ready(tiny_artifacts: Path, tmp_path: Path) -> None:
    """Seen in a container: artifacts unreadable by its user were all refused, yet /readyz said 200."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts / "sst2" / "fp32", artifacts / "sst2" / "fp32")
    (artifacts / "sst2" / "fp32" / "vocab.txt").write_text("tampered\n")
    running = launch_server(artifacts, tmp_path / "serve.log")
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    models = client.get("/models").json()["models"]
                except (httpx.TransportError, KeyError, json.JSONDecodeError):
                    models = []
                if models and all(m["status"] == "refused" for m in models):
                    break
                time.sleep(0.1)
            else:
                raise AssertionError(f"the artifact was never refused:\n{running.log.read_text()}")
            ready = client.get("/readyz")
            assert ready.status_code == 503
            body = _error_shape(ready)
            assert body["error"] == "not_ready"
            assert "refused" in body["detail"]
            assert ready.json()["workers"][0]["ready"] is True  # the worker is up; it has nothing to serve
    finally:
        running.stop()


def test_a_tampered_artifact_is_refused_and_the_others_still_serve(tiny_artifacts: Path, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, artifacts)
    weights = artifacts / "sst2" / "w2g128" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    running = start_server(artifacts, tmp_path / "serve.log")
    try:
        with httpx.Client(base_url=running.url, timeout=30) as client:
            assert client.get("/readyz").status_code == 200
            models = {(m["task"], m["precision"]): m for m in client.get("/models").json()["models"]}
            refused = models[("sst2", "w2g128")]
            assert refused["status"] == "refused"
            assert "weights.safetensors" in refused["reason"]
            response = client.post("/predict/sst2?precision=w2g128", json={"text": "good"})
            assert response.status_code == 503
            assert _error_shape(response)["error"] == "model_unavailable"
            assert client.post("/predict/sst2?precision=w8", json={"text": "good"}).status_code == 200
    finally:
        running.stop()
