import json

import pytest

from quantization.loadgen.loadtest import LoadPlan, request_bodies


def test_one_input_per_body_by_default() -> None:
    bodies = [json.loads(b) for b in request_bodies("ner", ["a", "b"])]
    assert bodies == [{"text": "a"}, {"text": "b"}]
    assert [json.loads(b) for b in request_bodies("qa", [("q", "c")])] == [{"question": "q", "context": "c"}]


def test_bulk_bodies_carry_texts_per_request_and_cover_the_payloads() -> None:
    payloads = [f"t{i}" for i in range(7)]
    bodies = [json.loads(b)["texts"] for b in request_bodies("sst2", payloads, 3)]
    assert all(len(texts) == 3 for texts in bodies)
    assert [t for texts in bodies for t in texts] == payloads[:6]
    # Fewer payloads than one request: cycled to fill it.
    assert [json.loads(b) for b in request_bodies("ner", ["x", "y"], 5)] == [{"texts": ["x", "y", "x", "y", "x"]}]


def test_bulk_requests_only_for_the_multi_text_routes() -> None:
    with pytest.raises(ValueError, match="one input per request"):
        request_bodies("qa", [("q", "c")], 2)
    with pytest.raises(ValueError, match="one input per request"):
        LoadPlan("http://x", (("sst2", "w8"), ("qa", "w8")), 4, requests=10, texts_per_request=2)
    with pytest.raises(ValueError, match=">= 1"):
        LoadPlan("http://x", (("sst2", "w8"),), 4, requests=10, texts_per_request=0)
    assert LoadPlan("http://x", (("qa", "w8"),), 4, requests=10).texts_per_request == 1
