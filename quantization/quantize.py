"""The one entry point that applies a plan: FP32 model in, quantized state out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from quantization.binarized import BinarizedWeight
from quantization.config import PrecisionConfig
from quantization.plan import PlannedWeight, build_plan
from quantization.qtensor import QuantizedWeight


@dataclass
class QuantizedState:
    """Everything an artifact stores: quantized weights by module name, the rest in FP32."""

    quantized: dict[str, QuantizedWeight | BinarizedWeight]
    plan: dict[str, PlannedWeight]
    fp32: dict[str, torch.Tensor] = field(default_factory=dict)


def quantize_model(
    model: nn.Module, precision: PrecisionConfig, input_hessians: Mapping[str, torch.Tensor] | None = None
) -> QuantizedState:
    """Quantize every weight the precision's plan names; keep biases, LayerNorm, pooler and head in FP32.

    `input_hessians`: module name -> 2·XᵀX of its calibration inputs, for weights rounded by GPTQ or binarized.
    The model is not modified. Tied or aliased tensors are stored once per state-dict name.
    """
    plan = build_plan(model, precision)
    modules = dict(model.named_modules())
    hessians = input_hessians or {}
    quantized: dict[str, QuantizedWeight | BinarizedWeight] = {}
    for name, planned in plan.items():
        weight = modules[name].weight
        if planned.config.binarized:
            quantized[name] = BinarizedWeight.from_float(weight, planned.config, hessians.get(name))
        else:
            quantized[name] = QuantizedWeight.from_float(
                weight, planned.config, planned.target.head_rows, hessians.get(name)
            )
    skipped = {f"{name}.weight" for name in quantized}
    fp32 = {
        key: value.detach().to(torch.float32).contiguous()
        for key, value in model.state_dict().items()
        if key not in skipped and value.is_floating_point()
    }
    return QuantizedState(quantized=quantized, plan=plan, fp32=fp32)
