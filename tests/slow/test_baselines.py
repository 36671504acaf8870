"""Accuracy on the real FP32 baselines (../shared/models); skipped where they are absent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from quantization.build import build_artifact, evaluate_artifact, load_checkpoint
from quantization.catalog import load_catalog
from service.settings import ServiceSettings
from tests.conftest import SHARED_DATA, SHARED_MODELS

pytestmark = pytest.mark.skipif(
    not (SHARED_MODELS / "minilm-l6-sst2" / "model.safetensors").exists() or not SHARED_DATA.is_dir(),
    reason=f"FP32 baselines not found under {SHARED_MODELS}",
)
CATALOG = load_catalog()
BASELINE_METRIC = {"sst2": "accuracy", "ner": "entity_f1", "qa": "f1"}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory):
    """Evaluate each (task, precision) once, lazily."""
    torch.set_num_threads(2)
    cache: dict[tuple[str, str, str, str], dict[str, float]] = {}
    checkpoints: dict = {}
    root = tmp_path_factory.mktemp("baseline-artifacts")

    def get(task: str, precision: str, backend: str = "eager", attention: str = "float32") -> dict[str, float]:
        entry = CATALOG.task(task)
        out = root / task / precision
        if not (out / "manifest.json").exists():
            if task not in checkpoints:
                checkpoints[task] = load_checkpoint(entry.checkpoint_location(), task)
            build_artifact(checkpoints[task], entry, CATALOG.precision_for(task, precision), out)
        if (task, precision, backend, attention) not in cache:
            rows = evaluate_artifact(out, entry, latency_samples=5, backend=backend, attention_precision=attention)
            assert rows[0]["backend"] == backend, f"{task} {precision} fell back from {backend} to {rows[0]['backend']}"
            cache[(task, precision, backend, attention)] = {r["metric"]: r["value"] for r in rows}
        return cache[(task, precision, backend, attention)]

    return get


def _reported(task: str) -> dict:
    folder = Path(CATALOG.task(task).checkpoint_location())
    return json.loads((folder / "RESULTS.json").read_text())


@pytest.mark.parametrize("task", ["sst2", "ner", "qa"])
def test_fp32_reproduces_the_reported_baseline(results, task: str) -> None:
    reported = _reported(task)
    ours = results(task, "fp32")
    for metric in ours:
        key = {"entity_f1": "entity_f1"}.get(metric, metric)
        assert abs(ours[metric] - reported[key]) <= 0.003, (metric, ours[metric], reported[key])


# SQuAD at 4 bits needed GPTQ rounding to stay within 2 pt (round-to-nearest lost 3.7 F1).


@pytest.mark.parametrize(
    ("task", "precision", "max_drop"),
    [
        ("sst2", "w8", 0.005),
        ("ner", "w8", 0.005),
        ("qa", "w8", 0.005),
        ("sst2", "w4g128", 0.02),
        ("ner", "w4g128", 0.02),
        ("qa", "w4g128", 0.02),
    ],
)
def test_post_training_precision_stays_close_to_fp32(results, task: str, precision: str, max_drop: float) -> None:
    metric = BASELINE_METRIC[task]
    drop = results(task, "fp32")[metric] - results(task, precision)[metric]
    assert drop <= max_drop, f"{task} {precision}: {metric} dropped {drop * 100:.2f} pt"


@pytest.mark.parametrize("bits", [4, 2])
def test_groupwise_beats_direct_quantization(results, bits: int) -> None:
    grouped = results("sst2", f"w{bits}g128")["accuracy"]
    direct = results("sst2", f"direct-w{bits}")["accuracy"]
    assert grouped > direct + 0.05, (grouped, direct)


# The runtime issue's accuracy goal: the default backend's metric (aot: the packed kernels compiled ahead of time;
# the packed backend under torch.compile was measured so until it became the default) within 0.2 pt of the
# reference (eager) path's, at every served precision on SST-2 and CoNLL-03 and at w8, w4g128 and w2g128 on SQuAD.
# mp23 is measured on its stand-in (mp23-ptq: the same Hessian 2/3-bit plan, the layers' widths and kernels
# identical; QAT would only change the codes' values and take minutes per task).
BACKEND_CASES = [
    *[(task, p) for task in ("sst2", "ner") for p in ("fp32", "w8", "w4g128", "w3g128", "w2g128", "mp23-ptq")],
    *[("qa", p) for p in ("w8", "w4g128", "w2g128")],
]


@pytest.fixture(scope="module")
def backend_figures(tmp_path_factory: pytest.TempPathFactory):
    """Every measured pair, written as JSON beside the run's temporary folders (the figures behind the README's
    accuracy statement: `pytest tests/slow -k default_backend`, then read
    `<basetemp>/default-backend-accuracy.json`)."""
    figures: list[dict] = []
    yield figures
    out = tmp_path_factory.getbasetemp() / "default-backend-accuracy.json"
    out.write_text(json.dumps(figures, indent=1))


@pytest.mark.parametrize(("task", "precision"), BACKEND_CASES)
def test_the_default_backend_keeps_the_reference_accuracy(
    results, backend_figures: list, task: str, precision: str
) -> None:
    from quantization.runtime.packed_kernels import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"packed kernels unavailable here: {reason}")
    metric = BASELINE_METRIC[task]
    reference = results(task, precision)[metric]
    backend = ServiceSettings.model_fields["backend"].default
    # the service's default, or what QBERT_ATTENTION_PRECISION asks (to measure an opt-in precision the same way)
    attention = os.environ.get("QBERT_ATTENTION_PRECISION", ServiceSettings.model_fields["attention_precision"].default)
    ours = results(task, precision, backend, attention)[metric]
    backend_figures.append(
        {
            "task": task,
            "precision": precision,
            "metric": metric,
            "eager": reference,
            "backend": backend,
            "attention_precision": attention,
            backend: ours,
        }
    )
    assert abs(ours - reference) <= 0.002, (
        f"{task} {precision}: {metric} {backend} ({attention} attention) {ours:.4f} vs eager {reference:.4f}"
    )
