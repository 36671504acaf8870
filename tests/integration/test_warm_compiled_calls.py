"""Warmed-up compiled models called without Dynamo's full guard check give exactly what the checked call gives,
each model its own outputs, where several models share transformers' forward (and so Dynamo's cache)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quantization.runtime import CompiledModel, load_model, warm_up
from quantization.runtime import compiling as runtime_compiling
from quantization.runtime import packed_kernels as kernels
from quantization.runtime.guard_skipping import stance_can_skip_guards
from quantization.runtime.torch_internals import original_module
from tests.integration.backends import build_tiny

pytestmark = [
    pytest.mark.skipif(kernels.unavailable_reason() is not None, reason="packed kernels unavailable"),
    pytest.mark.skipif(not stance_can_skip_guards(), reason="this torch's set_stance cannot skip guards"),
]


def batch(rows: int, seq: int, padded: bool = False) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 100, (rows, seq), generator=torch.Generator().manual_seed(rows * 1000 + seq))
    mask = torch.ones_like(ids)
    if padded and rows > 1:
        mask[1, seq // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def test_skipping_guards_is_the_checked_call(
    tmp_path: Path, tiny_checkpoints: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two models of one class and one of another, warmed up one after the other: every shape the service sends
    (batch 1 and more, 2 tokens to the position table's 128, padded rows) skips guards and matches its checked
    call bit for bit; the two same-class models differ (neither ran the other's graph); a longer input checks."""
    skipped = []
    call = runtime_compiling.call_skipping_guards
    monkeypatch.setattr(runtime_compiling, "call_skipping_guards", lambda *a: skipped.append(1) or call(*a))
    models = {
        (task, precision): warm_up(load_model(build_tiny(tmp_path, tiny_checkpoints[task], task, precision), "packed"))
        for task, precision in (("sst2", "w8"), ("sst2", "w4g128"), ("ner", "w8"))
    }
    for loaded in models.values():
        assert isinstance(loaded.model, CompiledModel)
        assert loaded.model.skips_guards
        # held as parameters, whose guards a skipping call leaves out (Dynamo checks every buffer's on each call)
        assert not list(original_module(loaded.model.compiled).buffers())
    shapes = [(1, 2), (1, 37), (2, 8), (3, 128), (4, 19)]
    for rows, seq in shapes:
        inputs = batch(rows, seq, padded=True)  # outside inference mode, as the service makes them
        with torch.inference_mode():
            outputs = {}
            for key, loaded in models.items():
                before = len(skipped)
                fast = loaded.model(**inputs)
                assert len(skipped) == before + 1, (key, rows, seq)
                checked = loaded.model.call_checking_guards(**inputs)
                for name in checked:
                    assert torch.equal(fast[name], checked[name]), (key, rows, seq, name)
                outputs[key] = fast["logits"]
            assert not torch.equal(outputs["sst2", "w8"], outputs["sst2", "w4g128"])
    before = len(skipped)
    with torch.inference_mode(), pytest.raises((IndexError, RuntimeError)):
        models["sst2", "w8"].model(**batch(1, 129))  # past the position table: checked, and refused as eager is
    assert len(skipped) == before
