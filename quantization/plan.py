"""A quantization plan: fully qualified module name -> WeightQuantConfig, checked against the model."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from quantization.config import PrecisionConfig, Rounding, WeightQuantConfig
from quantization.structure import QuantTarget, embedding_targets, linear_targets


@dataclass(frozen=True)
class PlannedWeight:
    target: QuantTarget
    config: WeightQuantConfig


def _check_names(named: set[str], known: set[str], what: str) -> None:
    unknown = sorted(named - known)
    if unknown:
        raise ValueError(
            f"{what} names modules that are not quantizable layers of this model: "
            f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''} (known e.g. {sorted(known)[:3]})"
        )


def build_plan(model: nn.Module, precision: PrecisionConfig) -> dict[str, PlannedWeight]:
    """Which weight gets which config under `precision`, in model order.

    `precision.layer_bits` must name encoder Linear modules or (when embeddings are quantized) embeddings
    of this model exactly: an unknown name is an error, never a silent partial application.
    """
    if precision.is_fp32:
        return {}
    assert precision.weights is not None
    linears = linear_targets(model)
    embeddings = embedding_targets(model) if precision.embeddings is not None else []
    _check_names(set(precision.layer_bits), {t.name for t in [*linears, *embeddings]}, f"precision {precision.name!r}")
    plan = {}
    for target in linears:
        bits = precision.layer_bits.get(target.name, precision.weights.bits)
        plan[target.name] = PlannedWeight(target, precision.weights.with_bits(bits))
    if precision.embeddings is not None:
        for target in embeddings:
            bits = precision.layer_bits.get(target.name, precision.embeddings.bits)
            if bits == 1:
                raise ValueError(f"precision {precision.name!r}: {target.name} is an embedding; only Linears binarize")
            plan[target.name] = PlannedWeight(target, precision.embeddings.with_bits(bits))
    return plan


def check_full_plan(model: nn.Module, layer_bits: dict[str, int]) -> None:
    """A bit-allocation plan gives bits to exactly the model's encoder Linear layers: none unknown, none left out."""
    known = {t.name for t in linear_targets(model)}
    _check_names(set(layer_bits), known, "the plan")
    missing = sorted(known - set(layer_bits))
    if missing:
        raise ValueError(
            f"the plan leaves out {len(missing)} encoder Linear layers of this model, "
            f"e.g. {missing[:3]}: a plan must cover every one"
        )


def needs_calibration(plan: dict[str, PlannedWeight]) -> list[str]:
    """The planned modules whose rounding (GPTQ) or binarization (PTQ1.61's mask and scales) needs the inputs they
    see on calibration data."""
    return [name for name, planned in plan.items() if _needs_inputs(planned.config)]


def _needs_inputs(config: WeightQuantConfig) -> bool:
    if config.binarized:
        return config.binarization is not None and config.binarization.needs_inputs
    return config.rounding is not Rounding.NEAREST
