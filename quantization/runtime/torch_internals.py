"""Every use of torch's private APIs in the runtime, each behind a capability check (the way torchao gates its
private ops by torch version).

The runtime is tested on `TESTED_TORCH`; on another release a private API may be renamed or take other
arguments. Each function here either works or raises `InternalsChangedError` saying what is missing, and its
callers degrade to the reference path (float32 int8 products, eager execution) with that reason logged: an
upgrade slows the service down, it never stops it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

TESTED_TORCH = (2, 13)


class InternalsChangedError(RuntimeError):
    """A private API of torch is not what the runtime was written against."""


def torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


@functools.cache
def onednn_qlinear() -> tuple[Any, Any]:
    """oneDNN's int8 Linear ops (`onednn::qlinear_prepack`, `onednn::qlinear_pointwise`), as torch registers them
    where it was built with oneDNN."""
    if not torch.backends.mkldnn.is_available():
        raise InternalsChangedError("torch was built without oneDNN")
    try:
        return torch.ops.onednn.qlinear_prepack, torch.ops.onednn.qlinear_pointwise
    except (AttributeError, RuntimeError) as exc:
        raise InternalsChangedError(f"torch {torch.__version__} has no onednn::qlinear ops ({exc})") from exc


def register_inductor_lowering(op: Any, lowering_of: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Have Inductor emit `op` as `lowering_of(call)`, where `call(*args)` emits a direct call of oneDNN's
    `qlinear_pointwise` kernel (no Python per call in compiled graphs)."""
    try:
        from torch._inductor.lowering import fallback_handler, register_lowering

        _, pointwise = onednn_qlinear()
        call = fallback_handler(pointwise.default, add_to_fallback_set=False)
        register_lowering(op, type_promotion_kind=None)(lowering_of(call))
    except InternalsChangedError:
        raise
    except Exception as exc:  # an import, a signature or a registry that changed: all mean the same here
        raise InternalsChangedError(
            f"Inductor's lowering registry changed in torch {torch.__version__} "
            f"(tested on {'.'.join(map(str, TESTED_TORCH))}): {type(exc).__name__}: {exc}"
        ) from exc


def raise_recompile_limit(limit: int) -> None:
    """Let Dynamo keep at least `limit` compiled variants of one code object (transformers' shared forward)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if not hasattr(config, name):
        raise InternalsChangedError(f"torch {torch.__version__}'s Dynamo config has no {name}")
    setattr(config, name, max(getattr(config, name), limit))


def dynamo_frame_counts(after_a_compile: bool = True) -> Mapping[str, int]:
    """Dynamo's running counts of frames it tried (`total`) and compiled (`ok`).

    `after_a_compile`: a compiled call ran in this process, so the counts must be there; raises where they are not
    (a renamed counter would read as zero, and a check that Dynamo compiled what it tried would pass without
    looking). Before any compile they may be absent: zeros."""
    counters = torch._dynamo.utils.counters
    frames = counters.get("frames") if isinstance(counters, Mapping) else None
    if not after_a_compile:
        return {"total": 0, "ok": 0, **(frames or {})}
    if not isinstance(frames, Mapping) or not {"total", "ok"} <= frames.keys():
        raise InternalsChangedError(
            f"torch {torch.__version__}'s Dynamo counters have no frames/total and frames/ok after a compiled call"
        )
    return frames


@functools.cache
def aot_inductor() -> tuple[Callable[..., str], Callable[[str], Any]]:
    """AOTInductor's `aoti_compile_and_package` and `aoti_load_package` (torch 2.6 and later), whose packages'
    weights may be handed over at load (`load_constants(..., user_managed=True)`: torch 2.7 and later)."""
    if torch_version() < (2, 7):
        raise InternalsChangedError(f"torch {torch.__version__} has no AOTInductor packages with weights of ours")
    try:
        from torch._inductor import aoti_compile_and_package, aoti_load_package
    except ImportError as exc:
        raise InternalsChangedError(f"torch {torch.__version__} has no AOTInductor packages ({exc})") from exc
    return aoti_compile_and_package, aoti_load_package


def aot_package_runner(package: Any) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """A loaded AOTInductor package as a function of its flat input tensors to its flat outputs. Its loader's
    `boxed_run` where it has one: the package's `__call__` parses its input and output specs again on every call."""
    loader = getattr(package, "loader", None)
    boxed_run = getattr(loader, "boxed_run", None)
    if callable(boxed_run):
        return boxed_run
    return lambda inputs: list(package(*inputs))


def original_module(compiled: nn.Module) -> nn.Module:
    """The module `torch.compile` wrapped."""
    original = getattr(compiled, "_orig_mod", None)
    if not isinstance(original, nn.Module):
        raise InternalsChangedError(f"torch {torch.__version__}'s compiled modules keep no _orig_mod")
    return original
