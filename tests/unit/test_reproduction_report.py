"""The reproduction section: Table 1 rows and the acceptance verdicts follow the measured rows."""

from quantization.reproduction import acceptance, reproduction_markdown


def _row(task: str, precision: str, value: float, fp32: float, metric: str | None = None, **extra) -> dict:
    metric = metric or {"sst2": "accuracy", "ner": "entity_f1", "qa": "f1"}[task]
    return {
        "task": task,
        "precision": precision,
        "metric": metric,
        "value": value,
        "fp32_value": fp32,
        "qat": precision.endswith("-qat") or precision.startswith("mp"),
        "avg_bits": extra.get("avg_bits", 2.5),
        "embedding_bits": 8,
        "activation_bits": 8,
        "packed_bytes": extra.get("packed_bytes", 4_000_000),
        "fp32_bytes": 42_467_328,
        "total_packed_bytes": 16_000_000,
        "embedding_packed_bytes": 12_000_000,
    }


def test_verdicts_follow_the_figures() -> None:
    rows = [
        _row("sst2", "w4g128-qat", 0.890, 0.8968),  # -0.68: met
        _row("sst2", "w3g128-qat", 0.870, 0.8968),  # -2.68: missed
        _row("sst2", "mp23", 0.880, 0.8968),
        _row("sst2", "w2g128-qat", 0.870, 0.8968),
        _row("sst2", "mp23-reversed", 0.885, 0.8968),  # beats mp23: missed
        _row("qa", "mp23", 0.60, 0.675, packed_bytes=6_000_000),  # 7.1×: the size target missed
    ]
    lines = "\n".join(acceptance(rows))
    assert "sst2 w4g128-qat: loss ≤ 1.0 pt — met: +0.68 pt loss" in lines
    assert "sst2 w3g128-qat: loss ≤ 2.0 pt — **missed**: +2.68 pt loss" in lines
    assert "sst2: mp23 beats w2g128-qat — met" in lines
    assert "sst2: mp23 beats mp23-reversed — **missed**" in lines
    assert "ner w4g128-qat: loss ≤ 1.0 pt — **not measured**" in lines
    assert "qa: mp23 packed encoder weights ≤ 1/8 of FP32 — **missed**: 7.08× smaller" in lines
    assert "sst2: mp23 packed encoder weights ≤ 1/8 of FP32 — met" in lines


def test_table_lists_every_row_of_the_paper_in_order_and_says_what_is_missing() -> None:
    rows = [_row("sst2", "fp32", 0.8968, 0.8968, avg_bits=32), _row("sst2", "mp23", 0.88, 0.8968)]
    markdown = reproduction_markdown(rows, {"sst2": ("| block | mean λ |", "hessian/sst2.png")})
    table = markdown[markdown.index("### sst2") :]
    assert table.index("Baseline FP32") < table.index("DirectQ 4-bit") < table.index("Q-BERT 2/3 MP (Hessian)")
    assert "| Q-BERT 2/3 MP (Hessian) | mp23 | yes | 2.5 | 8 | 8 | 4.00 | 16.00 | 88.00 (-1.68) |" in table
    assert "| DirectQ 2-bit | direct-w2 | not built |" in table
    assert "![top Hessian eigenvalue per block, sst2](hessian/sst2.png)" in table
