"""The compiled backend (torch.compile, Inductor; seconds per compile): the numbers eager computes, oneDNN called
directly from compiled graphs, and every task's models staying compiled."""

from pathlib import Path

import pytest
import torch

from quantization.runtime import load_model, onednn_int8_is_usable
from quantization.runtime.torch_internals import dynamo_frame_counts
from tests.conftest import build_tiny_artifact


def test_the_compiled_backend_computes_what_eager_does(tmp_path: Path, tiny_checkpoints: dict) -> None:
    from quantization.runtime import warm_up

    artifact = build_tiny_artifact(tmp_path, tiny_checkpoints["ner"], "ner", "w4g128")
    eager = load_model(artifact)
    compiled = warm_up(load_model(artifact, backend="compiled"))
    assert compiled.backend == "compiled"  # compiled at warm-up, not fallen back to eager
    frames = dynamo_frame_counts()  # asserts the counters exist: a renamed one would read 0 and pass
    compiled_frames = frames["total"]
    for shape in ((1, 5), (3, 17)):  # batch 1 and above, lengths never seen at warm-up
        ids = torch.randint(5, 100, shape)  # made as callers make inputs: outside inference mode
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        with torch.inference_mode():
            torch.testing.assert_close(
                compiled.model(**batch).logits, eager.model(**batch).logits, atol=1e-3, rtol=1e-3
            )
    assert frames["total"] == compiled_frames  # warm-up compiled every graph requests need: none on a request
    with pytest.raises(ValueError, match="backend"):
        load_model(artifact, backend="tensorrt")


def test_compiled_graphs_call_onednn_directly_not_the_python_op(tmp_path: Path, tiny_checkpoints: dict) -> None:
    """The packed matmul runs with no Python per call once compiled (the op's Python body is for eager)."""
    from torch.profiler import profile

    from quantization.runtime import warm_up

    if not onednn_int8_is_usable():
        pytest.skip(
            "oneDNN's int8 GEMM is not exact or not fast on this CPU: the layers multiply int8 values in float32"
        )
    compiled = warm_up(
        load_model(build_tiny_artifact(tmp_path, tiny_checkpoints["sst2"], "sst2", "w8"), backend="compiled")
    )
    eager = load_model(compiled.path)
    ids = torch.randint(5, 100, (2, 9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    for loaded, python_op_calls in ((compiled, 0), (eager, 2 * 4)):  # tiny BERT: 2 layers × (QKV, out, FFN × 2)
        with profile() as trace, torch.inference_mode():
            loaded.model(**batch)
        counts = {event.key: event.count for event in trace.key_averages()}
        assert counts.get("onednn::qlinear_pointwise") == 2 * 4
        assert counts.get("qbert::packed_int8_matmul", 0) == python_op_calls


def test_compiled_models_of_every_task_and_kind_all_stay_compiled(tmp_path: Path, tiny_checkpoints: dict) -> None:
    """Models share one compiled frame (transformers' forward wrapper): 3 tasks × FP32/int8 × batch 1/more
    is 12 variants, over Dynamo's default limit of 8, after which it would silently run eager."""
    from quantization.runtime import warm_up

    loaded = [
        warm_up(
            load_model(
                build_tiny_artifact(tmp_path / task, tiny_checkpoints[task], task, precision), backend="compiled"
            )
        )
        for task in ("sst2", "ner", "qa")
        for precision in ("fp32", "w8")
    ]
    assert [m.backend for m in loaded] == ["compiled"] * 6
