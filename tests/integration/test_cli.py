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
    args = ["build", "--study", "--precision", "fp32", "--precision", "w2g128", "--precision", "direct-w2"]
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
    on_packed = _qbert(
        env, "eval", str(artifact), "--data", str(tiny_data / "conll2003" / "eng.testa"), "--backend", "packed",
        "--attention-precision", "int16",
    )  # fmt: skip
    assert on_packed.returncode == 0, on_packed.stderr
    assert "ms (packed, int16 attention)" in on_packed.stdout or "ms (compiled" in on_packed.stdout, on_packed.stdout

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


def test_hessian_allocate_and_a_qat_mixed_precision_artifact(env: dict[str, str], tmp_path: Path) -> None:
    """The reproduction pipeline end to end on a tiny model: sensitivity, plans, QAT into a normal artifact."""
    env = env | {"QBERT_PLANS": str(tmp_path / "plans")}
    hessian = _qbert(
        env, "hessian", "--task", "sst2", "--batches", "3", "--batch-size", "4", "--max-length", "32",
        "--trace-samples", "4", "--out", str(tmp_path),
    )  # fmt: skip
    assert hessian.returncode == 0, hessian.stderr
    result = json.loads((tmp_path / "sst2.json").read_text())
    assert [b["block"] for b in result["blocks"]] == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert all(len(b["eigenvalues"]) == 3 and b["weight_traces"] for b in result["blocks"])
    assert "| bert.encoder.layer.1 |" in hessian.stdout
    assert (tmp_path / "sst2.png").stat().st_size > 5_000

    hessian_file = str(tmp_path / "sst2.json")
    for args in (
        ("--name", "mp23", "--rule", "qbert", "--bits", "2,3"),
        ("--name", "mp23-reversed", "--rule", "reversed", "--bits", "2,3"),
        ("--name", "budget", "--rule", "budget", "--bits", "2,3,4,8", "--budget-as", "mp23"),
    ):
        allocated = _qbert(env, "allocate", "--task", "sst2", "--hessian", hessian_file, *args)
        assert allocated.returncode == 0, allocated.stderr
    plans = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "plans" / "sst2").glob("*.json")}
    assert sorted(plans["mp23"]["block_bits"].values()) == [2, 3]
    assert plans["mp23"]["block_bits"] != plans["mp23-reversed"]["block_bits"]
    assert plans["budget"]["packed_bytes"] <= plans["mp23"]["packed_bytes"]
    assert plans["budget"]["second_order_cost"] <= plans["mp23"]["second_order_cost"] + 1e-12

    built = _qbert(env, "quantize", "--task", "sst2", "--precision", "mp23", "--qat-steps", "4")
    assert built.returncode == 0, built.stderr
    manifest = json.loads((Path(env["QBERT_ARTIFACTS"]) / "sst2" / "mp23" / "manifest.json").read_text())
    assert manifest["qat"] is True
    assert manifest["training"]["steps"] == 4
    assert manifest["precision"]["layer_bits"] == plans["mp23"]["layer_bits"]
    assert manifest["evaluation"], "the QAT artifact is evaluated like any other"
    bits = {t.get("module"): t["bits"] for t in manifest["tensors"] if t.get("module") in plans["mp23"]["layer_bits"]}
    assert bits == plans["mp23"]["layer_bits"]

    noisy = _qbert(
        env, "quantize", "--task", "sst2", "--precision", "mp23", "--qat-steps", "4", "--qat-seed", "3",
        "--quant-noise", "0.5,layer", "--no-eval",
    )  # fmt: skip
    assert noisy.returncode == 0, noisy.stderr
    recorded = json.loads((Path(env["QBERT_ARTIFACTS"]) / "sst2" / "mp23-qn-seed3" / "manifest.json").read_text())
    assert recorded["precision"]["name"] == "mp23-qn-seed3"  # its own folder: the catalog's mp23 is untouched
    assert (recorded["precision"]["qat"]["noise_rate"], recorded["precision"]["qat"]["noise_unit"]) == (0.5, "layer")
    assert recorded["precision"]["qat"]["seed"] == 3


def test_a_plan_file_leaving_out_a_layer_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    plan = {"layer_bits": {"bert.encoder.layer.0.attention.self.query": 3}}
    (tmp_path / "partial.json").write_text(json.dumps(plan))
    result = _qbert(
        env, "quantize", "--task", "sst2", "--precision", "w2g128", "--plan", str(tmp_path / "partial.json")
    )
    assert result.returncode != 0
    assert "leaves out 11 encoder Linear layers" in result.stderr
