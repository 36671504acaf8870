"""Calling a warmed-up compiled model without Dynamo's full guard check, where that is provably the same call.

Before each compiled call Dynamo checks a model's guards (about 4,000 for bert-base: every parameter's type and
shape, each module's flags, the inputs' shapes) to choose among its compiled variants; that costs a fraction of a
millisecond a call, several per cent of a short sequence's forward. torch's `skip_guard_eval_unsafe` stance checks
only the guards that have told cached variants apart (plus every input tensor's dtype, device, rank and static
sizes) and trusts the rest. It is exact only where (1) the model was warmed up on every variant it will run and
(2) what the skipped guards check cannot differ from the warm-up: `within_warm_up` holds the inputs and the
global state to that.

The stance is process-wide in torch, and a compiled call restores the previous flag when it returns, so a call
that skips guards must never overlap another compiled call (a warm-up compiling in the loader thread, say): the
skipping call would make the other skip its guards too. `GuardCheckGate` keeps them apart. One gate exists per
process (`GUARD_CHECK_GATE`) because the stance it protects is one per process.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from quantization.architectures import INPUT_NAMES

# The inputs every caller passes: the warm-up's, and the only ones that skip guards.
WARM_UP_INPUT_NAMES = frozenset(INPUT_NAMES)
SHORTEST_WARM_SEQUENCE = 2  # Dynamo specializes lengths 0 and 1; the compiled graphs assume at least 2


class GuardCheckGate:
    """Calls that skip guard checks run alone; calls that check them may overlap each other.

    A skipping call never waits: where another compiled call is running it checks guards instead (`try_skipping`
    is False). A checking call waits for a skipping one to return, which takes one forward pass."""

    def __init__(self) -> None:
        self._state = threading.Condition()
        self._checking = 0
        self._skipping = False

    def try_skipping(self) -> bool:
        with self._state:
            if self._skipping or self._checking:
                return False
            self._skipping = True
            return True

    def end_skipping(self) -> None:
        with self._state:
            self._skipping = False
            self._state.notify_all()

    @contextmanager
    def checking(self) -> Iterator[None]:
        with self._state:
            self._state.wait_for(lambda: not self._skipping)
            self._checking += 1
        try:
            yield
        finally:
            with self._state:
                self._checking -= 1


GUARD_CHECK_GATE = GuardCheckGate()


def within_warm_up(inputs: Mapping[str, object], longest_sequence: int) -> bool:
    """Whether a call with `inputs` can skip guards: the warm-up's inputs and global state, at a length the graphs
    were compiled for.

    The guards this stands in for, and that the stance skips: the keyword names (a dict guard), the three inputs'
    equal lengths and row-major strides, the sequence range (2 to the position embeddings' limit: past it the
    graph would index past its position table), and the global state (inference mode, no grad, no autocast).
    Tensors made inside inference mode carry other dispatch keys than the warm-up's: torch would recompile for
    them, so they check guards (and compile) as before."""
    if inputs.keys() != WARM_UP_INPUT_NAMES:
        return False
    if not torch.is_inference_mode_enabled() or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
        return False
    ids = inputs["input_ids"]
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        return False
    if ids.shape[0] < 1 or not SHORTEST_WARM_SEQUENCE <= ids.shape[1] <= longest_sequence:
        return False
    return all(
        isinstance(tensor, torch.Tensor)
        and tensor.shape == ids.shape
        and tensor.dtype == torch.int64
        and tensor.device.type == "cpu"
        and tensor.is_contiguous()
        and not tensor.is_inference()  # made outside inference mode, as the warm-up's are (another dispatch key)
        for tensor in inputs.values()
    )


def hold_buffers_as_parameters(model: nn.Module) -> None:
    """Re-register every buffer of `model` as a parameter that takes no gradient: the same tensor (no copy), so the
    same forward, but Dynamo no longer checks its shape and strides on each guard-skipping call. For models that are
    only run, never trained or saved: the buffers' non-persistence is not kept."""
    for module in model.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            delattr(module, name)
            module.register_parameter(name, nn.Parameter(buffer, requires_grad=False))


@functools.cache
def stance_can_skip_guards() -> bool:
    """Whether this torch's `set_stance` has the stance (torch 2.6 added it); without it every call checks guards."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance is not None and "skip_guard_eval_unsafe" in inspect.signature(set_stance).parameters


def call_skipping_guards(compiled: Callable[..., Any], inputs: Mapping[str, torch.Tensor]) -> Any:
    """`compiled(**inputs)` checking only the guards that tell its variants apart. The caller holds the gate's
    skipping turn (`GuardCheckGate.try_skipping`), so no other compiled call sees the stance."""
    with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
        return compiled(**inputs)
