"""BERT, RoBERTa, DistilBERT and ELECTRA checkpoints of the user's own, by name, through the whole product.

Each family's tiny random sequence classifier goes `qbert add` -> build (fp32, w8, w4g128 and Q-BERT's Hessian plan
mp23, made from the model's own Hessian) -> `qbert serve` -> POST /predict/NAME, and every answer equals the
evaluation path's (`qbert eval`'s) for the same input. A token classifier and a QA model of other families answer
in the NER and QA shapes. Every family's quantized artifacts load on every backend without falling back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from quantization.evaluate import predict
from quantization.runtime import load_model, warm_up
from quantization.tasks import task_from_spec
from tests.architectures import ARCHITECTURES, make_checkpoint
from tests.conftest import REPO_ROOT, TASK_HEADS, write_tiny_data
from tests.integration.adding import add_model
from tests.integration.server import start_server

PRECISIONS = ("fp32", "w8", "w4g128", "mp23-ptq")
NER_LABELS = TASK_HEADS["ner"][1]


@pytest.fixture(scope="module")
def added(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("families")
    data = write_tiny_data(root / "data")
    env = os.environ | {
        "QBERT_USER_CATALOG": str(root / "user-catalog.toml"),
        "QBERT_ARTIFACTS": str(root / "artifacts"),
        "QBERT_PLANS": str(root / "plans"),
    }
    sst2 = ["--eval-data", str(data / "sst2" / "dev.tsv"), "--train-data", str(data / "sst2" / "train.tsv")]
    hessian = ["--hessian-batches", "2", "--hessian-batch-size", "4"]
    for seed, family in enumerate(ARCHITECTURES):
        checkpoint = make_checkpoint(
            root / family, family, "sequence-classification", ["negative", "positive"], seed=seed
        )
        add_model(env, f"{family}-sentiment", "sequence-classification", "--checkpoint", str(checkpoint), *sst2,
             "--precisions", ",".join(PRECISIONS), *hessian)  # fmt: skip
    ner = make_checkpoint(root / "distilbert-ner", "distilbert", "token-classification", NER_LABELS)
    conll = [str(data / "conll2003" / name) for name in ("eng.testa", "eng.train")]
    add_model(env, "distilbert-ner", "token-classification", "--checkpoint", str(ner), "--eval-data", conll[0],
         "--train-data", conll[1])  # fmt: skip
    qa = make_checkpoint(root / "roberta-qa", "roberta", "question-answering")
    squad = str(data / "squad" / "dev-v1.1.json")
    add_model(env, "roberta-qa", "question-answering", "--checkpoint", str(qa), "--eval-data", squad,
         "--precisions", "fp32,w8")  # fmt: skip
    return {"root": root, "env": env}


@pytest.fixture(scope="module")
def served(added: dict, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    names = [f"{family}-sentiment" for family in ARCHITECTURES] + ["distilbert-ner", "roberta-qa"]
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    server = start_server(
        added["root"] / "artifacts",
        log,
        user_catalog=added["env"]["QBERT_USER_CATALOG"],
        plans=added["env"]["QBERT_PLANS"],
        tasks=",".join(names),
    )
    yield server
    server.stop()


def _evaluated(added: dict, name: str, precision: str, item: object) -> object:
    loaded = load_model(added["root"] / "artifacts" / name / precision, "eager")
    (prediction,) = predict(loaded, task_from_spec(name, loaded.task_spec), [item], 1)
    return prediction


@pytest.mark.parametrize("family", ARCHITECTURES)
def test_each_family_answers_as_evaluated_at_every_precision(added: dict, served, family: str) -> None:
    name = f"{family}-sentiment"
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for precision in PRECISIONS:
            response = client.post(f"/predict/{name}", params={"precision": precision}, json={"text": "a good film"})
            assert response.status_code == 200, response.text
            (result,) = response.json()["results"]
            expected = _evaluated(added, name, precision, "a good film")
            assert result["label"] == expected.label, precision
            assert result["scores"] == pytest.approx(expected.scores, abs=1e-6), precision
    plan = (added["root"] / "plans" / name / "mp23.json").read_text()
    assert '"block_bits"' in plan  # Q-BERT's rule chose each block's width from this model's own Hessian


def test_token_classification_and_qa_of_other_families_answer_in_their_shapes(added: dict, served) -> None:
    text = "John Smith lives in Paris"
    question, context = "Where does John live?", "John Smith lives in Paris and works at Acme Corp."
    with httpx.Client(base_url=served.url, timeout=30) as client:
        ner = client.post("/predict/distilbert-ner", json={"text": text})
        qa = client.post("/predict/roberta-qa", json={"question": question, "context": context})
    assert ner.status_code == 200, ner.text
    expected = _evaluated(added, "distilbert-ner", "w8", added_ner_input(text))
    assert [(e["type"], e["start"], e["end"]) for e in ner.json()["entities"]] == [
        (e.type, e.start, e.end) for e in expected.entities
    ]
    assert qa.status_code == 200, qa.text
    answer = qa.json()
    expected_qa = _evaluated(added, "roberta-qa", "w8", added_qa_input(question, context))
    assert (answer["answer"], answer["start"], answer["end"]) == (
        expected_qa.answer,
        expected_qa.start,
        expected_qa.end,
    )
    assert context[answer["start"] : answer["end"]] == answer["answer"]


def test_ner_over_three_windows_finds_entities_in_each_once(added: dict, served) -> None:
    text = "John Smith lives in Paris and works at Acme Corp . " * 20  # about three 64-token windows
    with httpx.Client(base_url=served.url, timeout=30) as client:
        response = client.post("/predict/distilbert-ner", json={"text": text})
    assert response.status_code == 200, response.text
    entities = response.json()["entities"]
    expected = _evaluated(added, "distilbert-ner", "w8", added_ner_input(text))
    assert [(e["type"], e["start"], e["end"]) for e in entities] == [
        (e.type, e.start, e.end) for e in expected.entities
    ]
    spans = sorted((e["start"], e["end"]) for e in entities)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False))  # no repeats
    assert {3 * start // len(text) for start, _ in spans} == {0, 1, 2}  # found in every window's stretch
    assert all(text[e["start"] : e["end"]] == e["text"] for e in entities)


def added_ner_input(text: str) -> object:
    from quantization.tasks.ner import NerInput

    return NerInput.from_text(text)


def added_qa_input(question: str, context: str) -> object:
    from quantization.tasks.qa import QAInput

    return QAInput(question, context)


@pytest.mark.parametrize("family", ARCHITECTURES)
def test_every_backend_runs_each_family(added: dict, family: str) -> None:
    """The packed kernels (under torch.compile, and compiled ahead of time: the default), torch.compile and OpenVINO
    each load the family's Hessian-plan (2/3-bit) artifact (their load-time checks against the reference included)
    and answer as the reference does."""
    name = f"{family}-sentiment"
    task = task_from_spec(name, {"kind": "sequence-classification", "options": {}})
    inputs = ["a good film", "the movie was very bad", "john smith lives in paris"]
    for precision in ("mp23-ptq",):
        artifact = added["root"] / "artifacts" / name / precision
        reference = predict(load_model(artifact, "eager"), task, inputs, 3)
        for backend in ("aot", "packed", "compiled", "openvino"):
            loaded = warm_up(load_model(artifact, backend))
            assert loaded.backend == backend, (precision, backend)
            answers = predict(loaded, task, inputs, 3)
            for got, want in zip(answers, reference, strict=True):
                assert got.scores == pytest.approx(want.scores, abs=2e-3), (precision, backend)


def test_unsupported_families_and_heads_are_refused_with_what_is_supported(added: dict, tmp_path: Path) -> None:
    import json

    checkpoint = make_checkpoint(tmp_path / "gpt", "bert", "sequence-classification", ["a", "b"])
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps(config | {"model_type": "gpt2"}))
    refused = subprocess.run(
        [sys.executable, "-m", "quantization.cli", "add", "gpt", "--kind", "sequence-classification",
         "--checkpoint", str(checkpoint), "--eval-data", str(added["root"] / "data" / "sst2" / "dev.tsv"),
         "--precisions", "fp32"],
        cwd=REPO_ROOT, env=added["env"] | {"QBERT_USER_CATALOG": str(tmp_path / "c.toml")}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "model_type 'gpt2' is not supported; supported: BERT, RoBERTa, XLM-RoBERTa, DistilBERT, ELECTRA" in (
        refused.stderr
    )
    assert not (tmp_path / "c.toml").exists()


@pytest.mark.parametrize("family", ARCHITECTURES)
def test_qat_trains_each_family(added: dict, family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Q8BERT-style QAT (straight-through fake quantizers, distillation from the FP32 model) on each family's blocks,
    as found in the model: a few steps, then the artifact evaluates and runs packed."""
    import dataclasses

    from quantization.build import build_artifact, evaluate_artifact, load_checkpoint
    from quantization.catalog import load_catalog

    monkeypatch.setenv("QBERT_USER_CATALOG", added["env"]["QBERT_USER_CATALOG"])
    catalog = load_catalog()
    name = f"{family}-sentiment"
    entry = dataclasses.replace(catalog.task(name), qat={"steps": 3, "batch_size": 4, "qparams_every": 2})
    precision = dataclasses.replace(
        catalog.precision("w4g128-qat"), qat=entry.qat_recipe(catalog.precision("w4g128-qat").qat)
    )
    checkpoint = load_checkpoint(entry.checkpoint_location(), entry.make_task())
    manifest = build_artifact(checkpoint, entry, precision, tmp_path / "w4g128-qat")
    assert manifest["qat"] is True
    assert manifest["training"]["steps"] == 3
    (row,) = evaluate_artifact(tmp_path / "w4g128-qat", entry, latency_samples=1)
    assert row["metric"] == "accuracy"
    assert load_model(tmp_path / "w4g128-qat", "packed").backend == "packed"
