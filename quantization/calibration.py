"""Calibration statistics from a model's own forward passes: the input Hessian 2·XᵀX of chosen Linear layers
(what GPTQ rounding needs). Batches come in as an iterable; nothing here reads files."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from quantization.feature_tensors import model_inputs
from quantization.gptq import input_hessian_update


def input_hessians(
    model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """2·Σ xxᵀ over the real (non-padding) tokens each named Linear receives, in float64."""
    modules = dict(model.named_modules())
    hessians = {
        name: torch.zeros(modules[name].in_features, modules[name].in_features, dtype=torch.float64) for name in names
    }
    current_mask: list[torch.Tensor] = []

    def hook(name: str):  # noqa: ANN202 — a forward pre-hook
        def record(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0]
            keep = current_mask[0].reshape(-1).bool() if x.dim() == 3 else slice(None)
            input_hessian_update(hessians[name], x.reshape(-1, x.shape[-1])[keep])

        return record

    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in names]
    try:
        with torch.no_grad():
            for batch in batches:
                current_mask[:] = [batch["attention_mask"]]
                model(**model_inputs(batch))
    finally:
        for handle in handles:
            handle.remove()
    return hessians
