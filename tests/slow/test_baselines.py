"""Accuracy on the real FP32 baselines (../shared/models); skipped where they are absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from quantization.build import build_artifact, evaluate_artifact, load_checkpoint
from quantization.catalog import load_catalog
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
    cache: dict[tuple[str, str], dict[str, float]] = {}
    checkpoints: dict = {}
    root = tmp_path_factory.mktemp("baseline-artifacts")

    def get(task: str, precision: str) -> dict[str, float]:
        if (task, precision) not in cache:
            entry = CATALOG.task(task)
            if task not in checkpoints:
                checkpoints[task] = load_checkpoint(entry.checkpoint_location(), task)
            out = root / task / precision
            build_artifact(checkpoints[task], entry, CATALOG.precision_for(task, precision), out)
            rows = evaluate_artifact(out, entry, latency_samples=5)
            cache[(task, precision)] = {r["metric"]: r["value"] for r in rows}
        return cache[(task, precision)]

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
