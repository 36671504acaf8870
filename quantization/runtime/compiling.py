"""The compiled backend: a model under torch.compile (Inductor), warmed up at load, eager where compiling fails."""

from __future__ import annotations

import dataclasses
import logging
import typing
from typing import Any

import torch
from torch import nn

from quantization.architectures import longest_sequence
from quantization.config import COMPILED_BACKENDS, WARMED_BACKENDS
from quantization.runtime.ahead_of_time import (
    AheadOfTimeModel,
    AheadOfTimeOptions,
    AheadOfTimeUnavailableError,
    compile_ahead,
)
from quantization.runtime.guard_skipping import (
    GUARD_CHECK_GATE,
    call_skipping_guards,
    hold_buffers_as_parameters,
    stance_can_skip_guards,
    within_warm_up,
)
from quantization.runtime.int8_linear import lower_packed_matmul_to_onednn, onednn_int8_is_usable
from quantization.runtime.loaded import BackendMismatchError, LoadedModel, random_inputs
from quantization.runtime.torch_internals import (
    InternalsChangedError,
    dynamo_frame_counts,
    original_module,
    raise_recompile_limit,
)

logger = logging.getLogger(__name__)

# Every BERT model shares transformers' forward wrapper, so Dynamo keeps all their compiled variants (one
# per architecture and per batch of 1 or more) on that one code object; past its default limit of 8 it
# would run the rest eager. The 18 served models need about 12.
COMPILED_VARIANTS_LIMIT = 64


class CompiledModel(nn.Module):
    """A model under torch.compile, called as the model is. Until `warm_up_compiled` has compiled its variants
    every call checks Dynamo's guards; after it, a call like the warm-up's (`within_warm_up`) checks only those
    that tell the compiled variants apart (`guard_skipping`): the same graphs, less Python per call."""

    def __init__(self, compiled: nn.Module) -> None:
        super().__init__()
        self.compiled = compiled
        self.config = getattr(compiled, "config", None)  # a task model's; a bare block (bench) has none
        # A model without a config never skips guards: no sequence is within 2 ... 0 tokens.
        self.longest_sequence = longest_sequence(self.config) if self.config is not None else 0
        self.skips_guards = False
        self.train(compiled.training)

    def forward(self, *args: Any, **inputs: Any) -> Any:
        if (
            self.skips_guards
            and not args
            and not self.compiled.training
            and within_warm_up(inputs, self.longest_sequence)
            and GUARD_CHECK_GATE.try_skipping()
        ):
            try:
                return call_skipping_guards(self.compiled, inputs)
            finally:
                GUARD_CHECK_GATE.end_skipping()
        return self.call_checking_guards(*args, **inputs)

    def call_checking_guards(self, *args: Any, **inputs: Any) -> Any:
        with GUARD_CHECK_GATE.checking():
            return self.compiled(*args, **inputs)


def compile_model(model: nn.Module) -> CompiledModel:
    """The model under torch.compile with dynamic shapes (batch and sequence vary from call to call).

    The graph's wrapper is generated as C++ (`cpp_wrapper`): the kernel and library calls of a forward then cost no
    Python each (the first compile of an architecture takes longer; later processes load it from Inductor's
    cache). A lower `realize_opcount_threshold` (default 30) has Inductor keep GELU's output instead of computing
    its erf again in each pass of the next layer's per-token quantization: the same numbers, faster.

    The model's buffers become frozen parameters (`hold_buffers_as_parameters`): fewer guards on each warmed-up call.

    Raises `InternalsChangedError` where torch's private APIs it relies on changed (`torch_internals`).
    """
    raise_recompile_limit(COMPILED_VARIANTS_LIMIT)
    hold_buffers_as_parameters(model)
    if onednn_int8_is_usable():
        lower_packed_matmul_to_onednn()
    options: dict[str, Any] = {"cpp_wrapper": True, "realize_opcount_threshold": 8}
    compiled = typing.cast(nn.Module, torch.compile(model, dynamic=True, options=options))
    original_module(compiled)  # checked here, where a failure still means eager: `as_eager` needs it later
    return CompiledModel(compiled)


# What a compiled backend's model is called when it runs without its compiled graphs (warming up, or where
# compiling failed): the packed one keeps its packed kernels, so it is not the reference.
EAGER_TWINS = {"compiled": "eager", "packed": "packed-eager", "aot": "packed-eager"}


def as_eager(loaded: LoadedModel) -> LoadedModel:
    """A compiled model's eager twin: the same module and weights, run without its compiled graphs."""
    if loaded.backend not in WARMED_BACKENDS:
        return loaded
    if loaded.backend == "aot":  # before its warm-up, the eager packed model itself
        eager = loaded.model.eager if isinstance(loaded.model, AheadOfTimeModel) else loaded.model
    else:
        eager = original_module(loaded.model.compiled)
    return dataclasses.replace(loaded, model=eager, backend=EAGER_TWINS[loaded.backend])


def warm_up(loaded: LoadedModel) -> LoadedModel:
    """Compile now rather than on a request (`warm_up_compiled`, `compile_ahead`). Where compiling fails (no C++
    compiler, an unsupported op), the model falls back, logged: an aot model to the packed backend, a compiled one
    to eager."""
    if loaded.backend == "aot":
        return _warm_up_ahead_of_time(loaded)
    if loaded.backend not in COMPILED_BACKENDS:
        return loaded
    try:
        compiled_every_frame = warm_up_compiled(loaded.model)
    except Exception:  # Inductor raises many types; serving eager beats not serving
        logger.exception("compiling %s failed; it runs eager", loaded.path)
        return as_eager(loaded)
    if not compiled_every_frame:  # Dynamo gave up on a frame (it logged why): eager
        logger.error("torch.compile did not compile %s; it runs eager", loaded.path)
        return as_eager(loaded)
    return loaded


def _warm_up_ahead_of_time(loaded: LoadedModel) -> LoadedModel:
    """The aot model compiled (or its package loaded from the cache) and checked; where it cannot be, or its check
    fails, the packed backend's model of the same module (checked layer by layer at load), logged."""
    eager = as_eager(loaded).model
    try:
        return dataclasses.replace(loaded, model=compile_ahead(eager, AheadOfTimeOptions.from_environment()))
    except (AheadOfTimeUnavailableError, BackendMismatchError) as exc:
        logger.error("%s cannot run ahead of time (%s); it runs on the packed backend", loaded.path, exc)
    try:
        compiled = compile_model(eager)
    except InternalsChangedError as exc:
        logger.error("cannot compile %s (%s); it runs eager", loaded.path, exc)
        return as_eager(loaded)
    return warm_up(dataclasses.replace(loaded, model=compiled, backend="packed"))


def warm_up_compiled(model: CompiledModel) -> bool:
    """Compile the model's variants, one call at batch 1 and one above (Dynamo specializes 1), with its guards
    checked; True where Dynamo compiled every frame it tried, and from then on calls like these skip the guards
    that do not tell the variants apart. A model warmed up again (its guards changed) checks them meanwhile.

    The inputs are made as callers make theirs, outside inference mode: Dynamo guards on that, and inputs
    made inside it would leave every first request to compile the graphs again.
    """
    if model.config is None:
        raise ValueError("only a task model (one with a config) is warmed up: its inputs are token ids")
    model.skips_guards = False
    vocab_size = model.config.vocab_size
    before = dynamo_frame_counts(after_a_compile=False)
    seen, compiled = before["total"], before["ok"]
    for batch in (1, 2):
        inputs = random_inputs(batch, 8, vocab_size)
        with torch.inference_mode():
            model.call_checking_guards(**inputs)
    frames = dynamo_frame_counts()
    if frames["total"] - seen > frames["ok"] - compiled:
        return False
    model.skips_guards = stance_can_skip_guards()
    return True
