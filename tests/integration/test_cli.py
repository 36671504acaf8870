"""`qbert build`, `eval` and `report` end to end on tiny checkpoints laid out like ../shared."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def env(tiny_checkpoints: dict, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    artifacts = tmp_path_factory.mktemp("artifacts")
    return os.environ | {
        "QBERT_CHECKPOINTS": str(next(iter(tiny_checkpoints.values())).parent),
        "QBERT_DATA": str(tiny_data),
        "QBERT_ARTIFACTS": str(artifacts),
    }


def _qbert(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quantization.cli", "--threads", "1", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_build_eval_and_report(env: dict[str, str], tiny_data: Path, tmp_path: Path) -> None:
    args = ["build", "--precision", "fp32", "--precision", "w2g128", "--precision", "direct-w2"]
    first = _qbert(env, *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("sst2/w2g128: accuracy=") == 1
    assert "qa/fp32: exact_match=" in first.stdout
    second = _qbert(env, *args)  # nothing changed: every artifact is skipped
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("up to date") == 9, second.stdout

    artifact = Path(env["QBERT_ARTIFACTS"]) / "ner" / "w2g128"
    evaluated = _qbert(env, "eval", str(artifact), "--data", str(tiny_data / "conll2003" / "eng.testa"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert "ner w2g128 entity_f1:" in evaluated.stdout
    assert "(n=2)" in evaluated.stdout

    report = _qbert(env, "report", "--out", str(tmp_path))
    assert report.returncode == 0, report.stderr
    rows = json.loads((tmp_path / "results.json").read_text())["results"]
    keys = {
        "task",
        "precision",
        "metric",
        "value",
        "fp32_value",
        "split",
        "n",
        "avg_bits",
        "packed_bytes",
        "fp32_bytes",
        "qat",
    }
    assert all(keys <= set(r) for r in rows)
    assert {(r["task"], r["metric"]) for r in rows} == {
        ("sst2", "accuracy"),
        ("ner", "entity_f1"),
        ("qa", "exact_match"),
        ("qa", "f1"),
    }
    assert len(rows) == 3 * 4
    assert all(0.0 <= r["value"] <= 1.0 for r in rows)
    qa_rows = [r for r in rows if r["task"] == "qa"]
    assert all(r["n"] == 4 for r in qa_rows)  # articles [36, 48) of 40 tiny articles
    assert "| w2g128 |" in (tmp_path / "RESULTS.md").read_text()
    assert (tmp_path / "results.png").stat().st_size > 10_000


def test_a_tampered_artifact_fails_eval_with_a_clear_message(env: dict[str, str]) -> None:
    built = _qbert(env, "build", "--task", "sst2", "--precision", "w8")
    assert built.returncode == 0, built.stderr
    weights = Path(env["QBERT_ARTIFACTS"]) / "sst2" / "w8" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    result = _qbert(env, "eval", str(weights.parent))
    assert result.returncode != 0
    assert "weights.safetensors: sha256" in result.stderr
    assert "tampered" in result.stderr
