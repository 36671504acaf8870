"""Which calls may skip Dynamo's guard check (`within_warm_up`), and the gate that keeps a skipping call from
overlapping any other compiled call (the stance is process-wide)."""

from __future__ import annotations

import threading

import pytest
import torch
import transformers
from torch import nn

from quantization.architectures import longest_sequence
from quantization.runtime.guard_skipping import GuardCheckGate, hold_buffers_as_parameters, within_warm_up


def inputs(batch: int = 2, seq: int = 9) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 50, (batch, seq))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def test_a_call_like_the_warm_up_may_skip_guards() -> None:
    shortest, longest, padded = inputs(1, 2), inputs(3, 128), inputs()
    padded["attention_mask"][0, 4:] = 0  # values are not guarded
    with torch.inference_mode():
        assert within_warm_up(shortest, 128)
        assert within_warm_up(longest, 128)
        assert within_warm_up(padded, 128)


@pytest.mark.parametrize(
    "change",
    [
        "one token",
        "past the position table",
        "no token types",
        "another input",
        "int32",
        "a column view",
        "another length",
        "one row",
    ],
)
def test_a_call_unlike_the_warm_up_checks_guards(change: str) -> None:
    batch = inputs()
    if change == "one token":
        batch = inputs(2, 1)
    elif change == "past the position table":
        batch = inputs(2, 129)
    elif change == "no token types":
        del batch["token_type_ids"]
    elif change == "another input":
        batch["position_ids"] = torch.arange(9).expand(2, 9)
    elif change == "int32":
        batch["input_ids"] = batch["input_ids"].int()
    elif change == "a column view":
        batch["attention_mask"] = torch.ones(9, 2, dtype=torch.long).t()
    elif change == "another length":
        batch["token_type_ids"] = torch.zeros(2, 8, dtype=torch.long)
    elif change == "one row":
        batch = {name: tensor[0] for name, tensor in batch.items()}
    with torch.inference_mode():
        assert not within_warm_up(batch, 128)


def test_outside_inference_mode_or_with_grad_guards_are_checked() -> None:
    batch = inputs()
    with torch.no_grad():
        assert not within_warm_up(batch, 128)
    assert not within_warm_up(batch, 128)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not within_warm_up(batch, 128)


def test_longest_sequence_counts_the_positions_a_family_skips() -> None:
    assert longest_sequence(transformers.BertConfig(max_position_embeddings=512)) == 512
    roberta = transformers.RobertaConfig(max_position_embeddings=514, pad_token_id=1)
    assert longest_sequence(roberta) == 512  # positions start at padding_idx + 1


def test_a_skipping_call_runs_alone() -> None:
    gate = GuardCheckGate()
    assert gate.try_skipping()
    assert not gate.try_skipping()  # a second skipping call checks guards instead
    gate.end_skipping()
    with gate.checking():
        assert not gate.try_skipping()  # a checking call (a warm-up compiling) is running
        with gate.checking():  # checking calls overlap each other
            pass
    assert gate.try_skipping()
    gate.end_skipping()


def test_a_checking_call_waits_for_the_skipping_one() -> None:
    gate = GuardCheckGate()
    assert gate.try_skipping()
    entered = threading.Event()

    def check() -> None:
        with gate.checking():
            entered.set()

    thread = threading.Thread(target=check)
    thread.start()
    assert not entered.wait(0.2)  # held while the skipping call runs
    gate.end_skipping()
    assert entered.wait(5)
    thread.join(5)


def test_inputs_made_in_inference_mode_check_guards() -> None:
    """Their dispatch keys differ from the warm-up's: torch would recompile for them, not run a warm graph."""
    with torch.inference_mode():
        assert not within_warm_up(inputs(), 128)


def test_buffers_become_frozen_parameters_of_the_same_tensors() -> None:
    """Every buffer, nested ones too, is re-registered as a parameter without a gradient that shares the buffer's
    memory, and the module computes what it computed."""
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).eval()
    model[0].register_buffer("codes", torch.arange(12, dtype=torch.uint8).reshape(3, 4), persistent=False)
    buffers = dict(model.named_buffers())
    before = model(torch.ones(2, 4))
    hold_buffers_as_parameters(model)
    assert not dict(model.named_buffers())
    parameters = dict(model.named_parameters())
    for name, buffer in buffers.items():
        assert isinstance(parameters[name], nn.Parameter)
        assert not parameters[name].requires_grad
        assert parameters[name].data_ptr() == buffer.data_ptr()
        assert parameters[name].dtype == buffer.dtype
    assert torch.equal(model(torch.ones(2, 4)), before)
