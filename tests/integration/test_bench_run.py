"""`qbert bench`: a whole run on a tiny model against real peers (ONNX export, OpenVINO, compiles, fresh processes)."""

from __future__ import annotations

import dataclasses

import pytest

from quantization.bench import (
    BenchPlan,
    Shape,
    bench_markdown,
    format_table,
    headline,
    memory_in_fresh_process,
    prepare_candidates,
    run_bench,
)
from quantization.catalog import load_catalog
from quantization.system import cpu_kernel_flags

ISSUE_KEYS = {"model", "runtime", "precision", "batch", "seq", "median_ms", "min_ms", "max_ms", "rss_mb"}


@pytest.fixture(scope="module")
def tiny_bench(tiny_checkpoints: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[BenchPlan, list, dict]:
    from tests.conftest import write_tiny_data

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QBERT_CHECKPOINTS", str(tiny_checkpoints["sst2"].parent))
        patch.setenv("QBERT_DATA", str(write_tiny_data(tmp_path_factory.mktemp("data"))))  # NNCF calibrates on it
        patch.setenv("QBERT_ARTIFACTS", str(tmp_path_factory.mktemp("no-artifacts")))
        plan = BenchPlan(
            models=("sst2",),
            shapes=(Shape(1, 8), Shape(2, 16)),
            precisions=("w8", "w2g128", "mp23"),
            backends=("eager", "openvino"),
            rounds=2,
            sample_seconds=0.01,
            threads=1,
            memory=False,
        )
        cache = tmp_path_factory.mktemp("bench-cache")
        candidates = prepare_candidates(plan, load_catalog(), cache)
        assert prepare_candidates(plan, load_catalog(), cache) == candidates  # reused, not rebuilt
        return plan, candidates, run_bench(plan, candidates)


def test_a_tiny_run_measures_every_runtime_at_every_shape(tiny_bench: tuple) -> None:
    plan, candidates, result = tiny_bench
    rows = result["rows"]
    assert {(r["runtime"], r["precision"]) for r in rows} == {
        ("torch-fp32", "fp32"),
        ("torch-dynamic-int8", "int8"),
        ("ort-fp32", "fp32"),
        ("ort-int8", "int8"),
        ("ov-fp32", "fp32"),
        ("ov-int8", "int8"),
        ("qbert", "w8"),
        ("qbert", "w2g128"),
        ("qbert", "mp23"),
    }
    assert len(rows) == len(candidates) * len(plan.shapes)
    for row in rows:
        assert set(row) >= ISSUE_KEYS
        assert row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        assert len(row["samples_ms"]) == plan.rounds
        assert row["artifact_bytes"] > 0
        assert row["vs_torch_fp32"] > 0
        assert row["vs_ort_int8"] > 0
        assert row["vs_ov_int8"] > 0
    by = {(r["runtime"], r["precision"], r["seq"]): r for r in rows}
    assert by[("torch-fp32", "fp32", 8)]["vs_torch_fp32"] == 1.0
    # Every runtime computes the same function: FP32 exactly, int8 within quantization error.
    assert by[("ort-fp32", "fp32", 16)]["max_abs_diff"] < 1e-4
    assert by[("ov-fp32", "fp32", 16)]["max_abs_diff"] < 1e-4
    int8 = [("ort-int8", "int8", 16), ("ov-int8", "int8", 16), ("qbert", "w8", 16), ("torch-dynamic-int8", "int8", 16)]
    for key in int8:
        assert by[key]["max_abs_diff"] < 0.1, by[key]
    ours = {(r["backend"], r["precision"]): r for r in rows if r["runtime"] == "qbert" and r["seq"] == 16}
    assert {backend for backend, _ in ours} == {"eager", "openvino"}
    assert ours[("openvino", "w2g128")]["runtime_mb"] < ours[("openvino", "w8")]["runtime_mb"]
    packed = {r["precision"]: r["artifact_bytes"] for r in rows if r["runtime"] == "qbert"}
    assert packed["w2g128"] < packed["mp23"] < packed["w8"]  # the plan's 2/3 bits, the blocks' halves
    table = format_table(result)
    assert "| qbert (eager) | w2g128 |" in table
    assert "| qbert (openvino) | w2g128 |" in table
    assert "× ORT int8" in table
    assert "× OV int8" in table
    (model,) = {r["model"] for r in rows}
    lines = headline(result, model)
    assert len(lines) == len(plan.shapes) * len(plan.backends)  # no memory readings in this run: no RSS line
    assert all("× ONNX Runtime int8" in line and "× OpenVINO INT8" in line for line in lines)
    assert result["cpu"]["flags"] == cpu_kernel_flags()
    assert bench_markdown(result).startswith("## Speed and memory")


def test_memory_and_load_time_come_from_a_fresh_process(tiny_bench: tuple) -> None:
    _, candidates, _ = tiny_bench
    qbert = next(c for c in candidates if c.runtime == "qbert")
    reading = memory_in_fresh_process(dataclasses.replace(qbert), threads=1)
    assert reading["rss_mb"] > 50  # python + torch at least
    assert 0 <= reading["rss_model_mb"] < reading["rss_mb"]
    assert reading["rss_after_run_mb"] >= reading["rss_mb"] - reading["rss_model_mb"]
    own = reading["rss_after_run_mb"] - (reading["rss_mb"] - reading["rss_model_mb"])  # the same readings, in MB
    assert reading["rss_model_after_run_mb"] == pytest.approx(own, abs=0.11)
    assert reading["load_s"] > 0
    assert memory_in_fresh_process(qbert, threads=1, run=False)["rss_after_run_mb"] is None
