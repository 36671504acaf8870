"""`qbert bench`: plans, interleaving, ratios and the table (a whole run: tests/integration/test_bench_run.py)."""

from __future__ import annotations

import pytest

from quantization.bench import (
    BenchPlan,
    Row,
    Shape,
    add_ratios,
    interleaved_samples,
)

ISSUE_KEYS = {"model", "runtime", "precision", "batch", "seq", "median_ms", "min_ms", "max_ms", "rss_mb"}


def test_plan_and_shape_are_validated() -> None:
    with pytest.raises(ValueError, match="batch"):
        Shape(0, 128)
    with pytest.raises(ValueError, match="unknown runtimes"):
        BenchPlan(models=("sst2",), shapes=(Shape(1, 8),), runtimes=("torch-fp32", "tvm"))
    with pytest.raises(ValueError, match="unknown runtimes"):
        BenchPlan(models=("sst2",), shapes=(Shape(1, 8),), memory_runtimes=("tvm",))
    with pytest.raises(ValueError, match="reference"):
        BenchPlan(models=("sst2",), shapes=(Shape(1, 8),), runtimes=("ort-int8",))
    with pytest.raises(ValueError, match="backends"):
        BenchPlan(models=("sst2",), shapes=(Shape(1, 8),), backends=("tensorrt",))
    with pytest.raises(ValueError, match="rounds"):
        BenchPlan(models=("sst2",), shapes=(Shape(1, 8),), rounds=0)
    with pytest.raises(ValueError, match="attention precision"):
        BenchPlan(models=("sst2",), shapes=(Shape(1, 8),), attention_precision="fp8")


def test_rounds_interleave_every_candidate() -> None:
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in "ABC"}
    samples = interleaved_samples(calls, rounds=3, seconds=0.0, warmup=1)
    assert {k: len(v) for k, v in samples.items()} == {"A": 3, "B": 3, "C": 3}
    timed = order[3:]  # after one warm-up call each
    assert timed == [name for _ in range(3) for name in "ABC" for _ in range(3)]  # ≥ 3 calls per sample


def _row(runtime: str, median: float, seq: int = 128) -> Row:
    return Row("m", runtime, "x", "", 1, seq, median, median, median, None)


def test_ratios_are_against_the_same_model_and_shape() -> None:
    rows = [
        _row("torch-fp32", 120.0),
        _row("ort-int8", 48.0),
        _row("ov-int8", 30.0),
        _row("qbert", 40.0),
        _row("torch-fp32", 30.0, seq=32),
    ]
    add_ratios(rows)
    assert [r.vs_torch_fp32 for r in rows] == [1.0, 2.5, 4.0, 3.0, 1.0]
    assert [r.vs_ort_int8 for r in rows] == [0.4, 1.0, 1.6, 1.2, None]
    assert [r.vs_ov_int8 for r in rows] == [0.25, 0.625, 1.0, 0.75, None]


def test_bench_cache_is_ignored_by_git() -> None:
    from tests.conftest import REPO_ROOT

    assert "models/cache/" in (REPO_ROOT / ".gitignore").read_text().splitlines()


def test_the_command_line_narrows_the_plan() -> None:
    """`qbert bench --backend/--precision/--runtime/--shape` replace the plan's lists; PyTorch FP32, the reference,
    and ours always run; a shape must read BATCHxSEQ and an unknown runtime is refused by the plan."""
    from quantization.bench import QUICK
    from quantization.cli.benchmark import plan_from_args
    from quantization.cli.main import build_parser

    def plan(*argv: str) -> BenchPlan:
        return plan_from_args(build_parser().parse_args(["--threads", "2", "bench", *argv]))

    narrowed = plan(
        "--quick", "--backend", "aot", "--backend", "packed", "--precision", "w8", "--shape", "1x384",
        "--shape", "8x128", "--runtime", "ov-int8", "--model", "sst2", "--no-memory",
    )  # fmt: skip
    assert narrowed.backends == ("aot", "packed")
    assert narrowed.precisions == ("w8",)
    assert narrowed.shapes == (Shape(1, 384), Shape(8, 128))
    assert narrowed.runtimes == ("torch-fp32", "ov-int8", "qbert")
    assert narrowed.models == ("sst2",)
    assert (narrowed.memory, narrowed.rounds, narrowed.threads) == (False, QUICK.rounds, 2)
    assert plan("--quick") == QUICK
    with pytest.raises(SystemExit):
        plan("--shape", "8by128")
    with pytest.raises(ValueError, match="unknown runtimes"):
        plan("--runtime", "tvm")
