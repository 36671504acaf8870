"""The V2 (Open Inference) protocol against a live `qbert serve`, through Triton's own client (`tritonclient[http]`):
health, metadata, readiness and inference at two precisions (versions) per task, in JSON and in binary tensors, with
answers equal to the task routes'; bad tensors get 400 in the protocol's error shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.integration.server import RunningServer, running_server

VERSIONS = ("fp32", "w8")
TEXTS = ["a good film", "the movie was very bad", "john smith lives in paris"]


@pytest.fixture(scope="module")
def server(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tiny_artifacts, tmp_path_factory.mktemp("v2") / "serve.log") as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
    yield connection
    connection.close()


def _bytes_input(name: str, values: list[str], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array([v.encode() for v in values], dtype=object), binary_data=binary)
    return tensor


def _texts(result: triton.InferResult, name: str) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy(name).tolist()]


def test_health_server_and_model_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    sst2 = client.get_model_metadata("sst2")
    assert set(VERSIONS) <= set(sst2["versions"])
    assert [(i["name"], i["datatype"], i["shape"]) for i in sst2["inputs"]] == [("text", "BYTES", [-1])]
    assert [o["name"] for o in sst2["outputs"]] == ["label", "score", "scores"]
    assert sst2["outputs"][2]["shape"] == [-1, 2]
    assert sst2["parameters"]["labels"] == ["negative", "positive"]
    assert [i["name"] for i in client.get_model_metadata("qa")["inputs"]] == ["question", "context"]
    assert [o["name"] for o in client.get_model_metadata("ner", "w8")["outputs"]] == ["entities"]
    for version in VERSIONS:
        assert client.is_model_ready("sst2", version)
    assert client.is_model_ready("ner")
    assert not client.is_model_ready("sst2", "w5")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_classification_answers_equal_the_task_route(
    client: triton.InferenceServerClient, server: RunningServer, version: str, binary: bool
) -> None:
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("label", "score", "scores")]
    result = client.infer("sst2", [_bytes_input("text", TEXTS, binary)], model_version=version, outputs=outputs)
    route = httpx.post(f"{server.url}/predict/sst2", params={"precision": version}, json={"texts": TEXTS}).json()
    assert result.get_response()["model_version"] == version
    assert _texts(result, "label") == [r["label"] for r in route["results"]]
    assert result.as_numpy("score").tolist() == pytest.approx([r["score"] for r in route["results"]], abs=1e-6)
    scores = result.as_numpy("scores")
    assert scores.shape == (3, 2)
    expected = [[r["scores"]["negative"], r["scores"]["positive"]] for r in route["results"]]
    assert np.allclose(scores, np.array(expected), atol=1e-6)


@pytest.mark.parametrize("version", VERSIONS)
def test_ner_and_qa_answers_equal_the_task_routes(
    client: triton.InferenceServerClient, server: RunningServer, version: str
) -> None:
    texts = ["John Smith works for Acme Corp in Paris .", "EU rejects German call ."]
    ner = client.infer("ner", [_bytes_input("text", texts, binary=True)], model_version=version)
    route = httpx.post(f"{server.url}/predict/ner", params={"precision": version}, json={"texts": texts}).json()
    assert [json.loads(e) for e in _texts(ner, "entities")] == [r["entities"] for r in route["results"]]

    question, context = "where does john live ?", "john smith lives in paris and works at acme corp ."
    qa = client.infer(
        "qa",
        [_bytes_input("question", [question], False), _bytes_input("context", [context], False)],
        model_version=version,
    )
    answer = httpx.post(
        f"{server.url}/qa", params={"precision": version}, json={"question": question, "context": context}
    ).json()
    assert _texts(qa, "answer") == [answer["answer"]]
    assert qa.as_numpy("start").tolist() == [answer["start"]]
    assert qa.as_numpy("end").tolist() == [answer["end"]]
    assert qa.as_numpy("score").tolist() == pytest.approx([answer["score"]], abs=1e-6)


def test_bad_tensors_get_400_in_the_protocol_error_shape(
    client: triton.InferenceServerClient, server: RunningServer
) -> None:
    wrong_type = triton.InferInput("text", [1], "INT64")
    wrong_type.set_data_from_numpy(np.array([3], dtype=np.int64), binary_data=False)
    with pytest.raises(InferenceServerException, match="must be BYTES") as raised:
        client.infer("sst2", [wrong_type])
    assert raised.value.status() == "400"
    with pytest.raises(InferenceServerException, match="unknown input 'sentence'"):
        client.infer("sst2", [_bytes_input("sentence", ["a film"], False)])
    with pytest.raises(InferenceServerException, match="missing inputs \\['context'\\]"):
        client.infer("qa", [_bytes_input("question", ["who ?"], False)])
    bad_requests = [
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["only one"]}]},  # shape vs data
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}]},  # not [batch, 1]
        {"inputs": []},
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [" "]}]},  # blank text
    ]
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for body in bad_requests:
            response = http.post("/v2/models/sst2/infer", json=body)
            assert response.status_code == 400, (body, response.text)
            assert set(response.json()) == {"error"}
        unknown = http.post("/v2/models/translation/infer", json={"inputs": []})
        assert unknown.status_code == 404
        assert set(unknown.json()) == {"error"}
        assert http.get("/v2/models/sst2/versions/w5").status_code == 404
        assert http.post("/v2/models/sst2/infer", content=b"{not json").status_code == 400


def test_v2_requests_are_counted_as_the_task_routes_are(
    client: triton.InferenceServerClient, server: RunningServer
) -> None:
    def served() -> float:
        wanted = ('task="sst2"', 'precision="w8"', 'outcome="ok"')
        for line in httpx.get(f"{server.url}/metrics").text.splitlines():
            if line.startswith("qbert_requests_total{") and all(label in line for label in wanted):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = served()
    client.infer("sst2", [_bytes_input("text", ["a good film"], False)], model_version="w8")
    assert served() == before + 1
