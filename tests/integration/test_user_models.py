"""Users' own checkpoints served by name: `qbert add` -> build -> `qbert serve` -> POST /predict/NAME over HTTP.

Tiny random BERT classifiers saved as Hugging Face folders: 40 intents, a sentence-pair (NLI) model, a multi-label
model and a regression model. Each served answer must equal what `qbert eval`'s path (the eager reference, in this
process) answers for the same input at the same precision."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest
import torch
import transformers

from quantization.evaluate import predict
from quantization.runtime import load_model
from quantization.tasks import task_from_spec
from tests.conftest import _WORDS, VOCAB
from tests.integration.adding import add_model, run_add
from tests.integration.server import start_server

PRECISIONS = ("fp32", "w8", "w4g128")
NLI = ["entailment", "neutral", "contradiction"]
TOPICS = ["sports", "politics", "science", "music"]


def _checkpoint(directory: Path, labels: list[str], problem_type: str | None = None, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=192,
        max_position_embeddings=64,
        architectures=["BertForSequenceClassification"],
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type=problem_type,
    )
    transformers.BertForSequenceClassification(config).eval().save_pretrained(directory)
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True).save_pretrained(
        directory
    )
    return directory


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 10)))


def _tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.write_text("\n".join("\t".join(row) for row in [header, *rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def user_models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Four tiny models added and built with `qbert add` into their own user catalog and artifacts folder."""
    import os

    root = tmp_path_factory.mktemp("user-models")
    rng = random.Random(0)
    env = os.environ | {"QBERT_USER_CATALOG": str(root / "user-catalog.toml"), "QBERT_ARTIFACTS": str(root / "art")}
    intents = [f"intent_{i}" for i in range(40)]
    specs = {
        "intents": (intents, None, ["utterance", "intent"], lambda: [_sentence(rng), rng.choice(intents)]),
        "nli": (
            NLI,
            None,
            ["premise", "hypothesis", "label"],
            lambda: [_sentence(rng), _sentence(rng), rng.choice(NLI)],
        ),
        "topics": (
            TOPICS,
            "multi_label_classification",
            ["sentence", "label"],
            lambda: [_sentence(rng), ",".join(rng.sample(TOPICS, rng.randint(1, 2)))],
        ),
        "similarity": (["LABEL_0"], None, ["sentence1", "sentence2", "score"], None),
    }
    columns = {
        "intents": ["--text-column", "utterance", "--label-column", "intent"],
        "nli": ["--text-column", "premise", "--pair-column", "hypothesis"],
        "topics": [],
        "similarity": ["--text-column", "sentence1", "--pair-column", "sentence2", "--label-column", "score"],
    }
    for seed, (name, (labels, problem_type, header, row)) in enumerate(specs.items()):
        checkpoint = _checkpoint(root / name, labels, problem_type, seed)
        make = row or (lambda: [_sentence(rng), _sentence(rng), f"{rng.uniform(0, 5):.2f}"])
        files = {
            split: _tsv(root / f"{name}-{split}.tsv", header, [make() for _ in range(n)])
            for split, n in (("dev", 24), ("train", 48))
        }
        # The regression model is added without evaluation data: it is built and served, never evaluated.
        evaluation = ["--eval-data", str(files["dev"])] if name != "similarity" else []
        add_model(
            env, name, "sequence-classification", "--checkpoint", str(checkpoint), *evaluation,
            "--train-data", str(files["train"]), *columns[name],
        )  # fmt: skip
    return {"root": root, "env": env, "names": list(specs)}


@pytest.fixture(scope="module")
def served(user_models: dict, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    server = start_server(
        user_models["root"] / "art",
        log,
        user_catalog=user_models["env"]["QBERT_USER_CATALOG"],
        tasks="intents,nli,topics,similarity",
    )
    yield server
    server.stop()


def _reference(user_models: dict, name: str, precision: str, item) -> object:  # noqa: ANN001
    """What `qbert eval` computes for `item`: the artifact on the eager backend, through the task's own code."""
    loaded = load_model(user_models["root"] / "art" / name / precision, "eager")
    task = task_from_spec(name, loaded.task_spec)
    (prediction,) = predict(loaded, task, [item], 1)
    return prediction


@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_model_answers_as_its_evaluation_does(user_models: dict, served, precision: str) -> None:
    inputs = {
        "intents": ("where does john live ?", None),
        "nli": ("john lives in paris .", "john works in paris ."),
        "topics": ("the film was very good", None),
        "similarity": ("a good movie", "a great film"),
    }
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for name, (text, pair) in inputs.items():
            body = {"text": text} | ({"text_pair": pair} if pair else {})
            response = client.post(f"/predict/{name}", params={"precision": precision}, json=body)
            assert response.status_code == 200, response.text
            answer = response.json()
            assert (answer["task"], answer["precision"]) == (name, precision)
            (result,) = answer["results"]
            expected = _reference(user_models, name, precision, (text, pair) if pair else text)
            assert result["label"] == expected.label
            assert result["score"] == pytest.approx(expected.score, abs=1e-6)
            assert result["scores"] == pytest.approx(expected.scores, abs=1e-6)
            assert result["truncated"] is False


def test_documented_shapes_per_problem_type(served) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as client:
        intents = client.post("/predict/intents", json={"texts": ["a good film", "who plays ?"]}).json()["results"]
        assert len(intents) == 2
        assert all(len(r["scores"]) == 40 and r["label"].startswith("intent_") and r["labels"] is None for r in intents)
        (topics,) = client.post("/predict/topics", json={"text": "the film was good"}).json()["results"]
        assert set(topics["scores"]) == set(TOPICS)
        assert topics["labels"] == [
            t for t in sorted(TOPICS, key=lambda t: -topics["scores"][t]) if topics["scores"][t] >= 0.5
        ]
        (similarity,) = client.post("/predict/similarity", json={"text": "a film", "text_pair": "a movie"}).json()[
            "results"
        ]
        assert similarity["label"] is None
        assert similarity["scores"] == {}
        assert isinstance(similarity["score"], float)
        pairs = client.post("/predict/nli", json={"texts": ["a film", "a movie"], "text_pairs": ["x", "y"]})
        assert pairs.status_code == 200
        assert all(r["label"] in NLI for r in pairs.json()["results"])


def test_bad_requests_get_4xx_in_the_error_shape(served) -> None:
    long_text = " ".join(["film"] * 200)  # past the 64-token window
    with httpx.Client(base_url=served.url, timeout=30) as client:
        single_with_pair = client.post("/predict/intents", json={"text": "a film", "text_pair": "a movie"})
        pair_without = client.post("/predict/nli", json={"text": "a film"})
        unknown = client.post("/predict/translation", json={"text": "a film"})
        truncated = client.post("/predict/intents", json={"text": long_text})
        refused = client.post("/predict/intents", json={"text": long_text, "truncation": "error"})
    assert single_with_pair.status_code == 422
    assert "text_pair" in single_with_pair.json()["detail"]
    assert single_with_pair.json()["error"] == "invalid_input"
    assert pair_without.status_code == 422
    assert "a pair model reads two texts" in pair_without.json()["detail"]
    assert unknown.status_code == 404
    assert unknown.json()["available"] == ["intents", "nli", "similarity", "topics"]
    assert truncated.status_code == 200
    assert truncated.json()["results"][0]["truncated"] is True
    assert refused.status_code == 422
    assert "at most" in refused.json()["detail"]


def test_models_lists_every_precision_with_its_accuracy(served) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as client:
        models = client.get("/models").json()["models"]
    metrics = {(m["task"], m["precision"]): {row["metric"] for row in m["accuracy"]} for m in models}
    assert set(metrics) == {(name, p) for name in ("intents", "nli", "topics", "similarity") for p in PRECISIONS}
    assert metrics[("intents", "w8")] == {"accuracy"}
    assert metrics[("topics", "w4g128")] == {"micro_f1", "subset_accuracy"}
    assert metrics[("similarity", "fp32")] == set()  # added without evaluation data


def test_add_refuses_bad_checkpoints_and_data_and_writes_nothing(
    user_models: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = user_models["env"] | {"QBERT_USER_CATALOG": str(tmp_path / "catalog.toml")}
    good = user_models["root"] / "nli"
    dev = user_models["root"] / "nli-dev.tsv"
    pair = ["--pair-column", "hypothesis", "--text-column", "premise", "--precisions", "fp32,w8"]
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((good / "config.json").read_text())
    masked = tmp_path / "masked-lm"
    masked.mkdir()
    (masked / "config.json").write_text(
        (good / "config.json").read_text().replace("ForSequenceClassification", "ForMaskedLM")
    )
    for name in ("model.safetensors", "vocab.txt", "tokenizer.json"):
        (masked / name).write_bytes((good / name).read_bytes())
    wrong_labels = _tsv(tmp_path / "wrong.tsv", ["premise", "hypothesis", "label"], [["a", "b", "maybe"]])
    cases = {
        "no-weights": (["--checkpoint", str(no_weights), "--eval-data", str(dev), *pair], "no weights"),
        "masked": (
            ["--checkpoint", str(masked), "--eval-data", str(dev), *pair],
            "has no SequenceClassification head; supported: BERT, RoBERTa",
        ),
        "labels": (["--checkpoint", str(good), "--eval-data", str(wrong_labels), *pair], "'maybe' is neither one of"),
        "gptq": (["--checkpoint", str(good), "--eval-data", str(dev), "--precisions", "w4g128"], "give --train-data"),
        "sst2": (["--checkpoint", str(good), "--eval-data", str(dev), *pair], "taken by a catalog model"),
    }
    hub = ["--checkpoint", "nobody-here/no-such-model", "--eval-data", str(dev), "--precisions", "fp32"]
    cases["hub"] = (hub, "not a local folder, and the hub could not give it")  # offline here: the hub is unreachable
    env |= {"HF_HUB_OFFLINE": "1"}
    for name, (options, message) in cases.items():
        caplog.clear()
        assert run_add(env, name, "sequence-classification", *options) == 2, name
        assert message in caplog.text, (name, caplog.text)
    assert not (tmp_path / "catalog.toml").exists()


def test_each_model_has_its_own_documented_route(served) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as client:
        schema = client.get("/openapi.json").json()
    paths, components = schema["paths"], schema["components"]["schemas"]

    def body_of(path: str) -> str:
        return paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]

    assert body_of("/predict/intents") == "ClassifyRequest"
    assert body_of("/predict/topics") == "ClassifyRequest"
    assert body_of("/predict/nli") == body_of("/predict/similarity") == "PairClassifyRequest"
    assert "text_pair" not in components["ClassifyRequest"]["properties"]
    assert {"text_pair", "text_pairs", "truncation"} <= set(components["PairClassifyRequest"]["properties"])
    assert components["PairClassifyRequest"]["properties"]["text_pair"]["maxLength"] == 10_000
    answer = paths["/predict/intents"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["$ref"].endswith("/ClassifyResponse")
    assert "/predict/{name}" not in paths
