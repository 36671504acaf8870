"""A quantization plan: fully qualified module name -> WeightQuantConfig, checked against the model."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from quantization.config import PrecisionConfig, WeightQuantConfig
from quantization.structure import QuantTarget, embedding_targets, linear_targets


@dataclass(frozen=True)
class PlannedWeight:
    target: QuantTarget
    config: WeightQuantConfig


def build_plan(model: nn.Module, precision: PrecisionConfig) -> dict[str, PlannedWeight]:
    """Which weight gets which config under `precision`, in model order.

    `precision.layer_bits` must name encoder Linear modules of this model exactly: an unknown
    name is an error, never a silent partial application.
    """
    if precision.is_fp32:
        return {}
    assert precision.weights is not None
    linears = linear_targets(model)
    known = {t.name for t in linears}
    unknown = sorted(set(precision.layer_bits) - known)
    if unknown:
        raise ValueError(
            f"precision {precision.name!r} names modules that are not encoder Linear layers of this "
            f"model: {unknown[:5]}{' ...' if len(unknown) > 5 else ''} (known e.g. {sorted(known)[:3]})"
        )
    plan = {}
    for target in linears:
        bits = precision.layer_bits.get(target.name, precision.weights.bits)
        plan[target.name] = PlannedWeight(target, precision.weights.with_bits(bits))
    if precision.embeddings is not None:
        for target in embedding_targets(model):
            plan[target.name] = PlannedWeight(target, precision.embeddings)
    return plan
