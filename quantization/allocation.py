"""Bit allocation: which encoder layers get which bit width.

Two algorithms, both pure functions of numbers (no model, no files):

- `qbert_block_bits`: Q-BERT's rule. Sort blocks by Ω = |mean λ| + std λ; the more sensitive half gets the
  higher width (2/3 MP, 2/4 MP). `reverse=True` is the control experiment (the least sensitive half gets it).
- `allocate_under_budget`: beyond the paper (HAWQ-V3 style). Choose a width per layer minimising
  Σᵢ (trace(Hᵢ)/nᵢ) · ‖Wᵢ − Q_b(Wᵢ)‖² (the expected second-order loss increase when the quantization error is
  spread evenly over the weights' directions) subject to Σᵢ packed bytesᵢ ≤ budget, solved exactly by dynamic
  programming over sizes in units of their greatest common divisor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce

import torch
from torch import nn

from quantization.binarized import BinarizedWeight
from quantization.config import Rounding, WeightQuantConfig
from quantization.hessian import BlockSensitivity
from quantization.qtensor import QuantizedWeight
from quantization.sensitivity import module_traces
from quantization.structure import linear_targets


def qbert_block_bits(
    sensitivities: Sequence[BlockSensitivity], low: int, high: int, reverse: bool = False
) -> dict[str, int]:
    """Block name -> bits: the more sensitive half (by Ω; the less sensitive with `reverse`) gets `high`.

    With an odd number of blocks the higher width goes to the smaller half (the size stays at most the mix's).
    """
    if low >= high:
        raise ValueError(f"low ({low}) must be below high ({high})")
    ranked = sorted(sensitivities, key=lambda s: s.omega, reverse=not reverse)
    favoured = {s.block for s in ranked[: len(ranked) // 2]}
    return {s.block: high if s.block in favoured else low for s in sensitivities}


def block_bits_to_layer_bits(model: nn.Module, block_bits: Mapping[str, int]) -> dict[str, int]:
    """Every encoder Linear gets its block's width; each of the model's blocks must be named, and only those."""
    targets = [(t.name, t.block) for t in linear_targets(model) if t.block is not None]
    blocks = {block for _, block in targets}
    if set(block_bits) != blocks:
        raise ValueError(f"block bits name {sorted(block_bits)}, the model's blocks are {sorted(blocks)}")
    return {name: block_bits[block] for name, block in targets}


@dataclass(frozen=True)
class LayerOption:
    """One choice for one layer: its width, packed size and sensitivity-weighted quantization error."""

    bits: int
    size_bytes: int
    cost: float

    def __post_init__(self) -> None:
        if self.size_bytes <= 0 or not math.isfinite(self.cost) or self.cost < 0:
            raise ValueError(f"size must be positive and cost finite and ≥ 0, got {self}")


@dataclass(frozen=True)
class Allocation:
    layer_bits: dict[str, int]
    size_bytes: int
    cost: float


def second_order_cost(trace: float, parameters: int, squared_error: float) -> float:
    """HAWQ's Ω for one layer at one width: mean Hessian diagonal times the weights' squared quantization error.

    A negative trace estimate (a layer at a saddle) contributes no cost rather than a reward for more error.
    """
    return max(trace, 0.0) / parameters * squared_error


def layer_options(
    model: nn.Module, config: WeightQuantConfig, bits: Sequence[int], weight_traces: Mapping[str, float]
) -> dict[str, list[LayerOption]]:
    """For every encoder Linear and width: the packed size and second-order cost of quantizing its weight with
    `config` at that width. `weight_traces`: Hessian trace per module name (from `BlockSensitivity`)."""
    if config.rounding is not Rounding.NEAREST:
        raise ValueError("the allocator estimates round-to-nearest error (what QAT trains with); use such a base")
    modules = dict(model.named_modules())
    options: dict[str, list[LayerOption]] = {}
    for target in linear_targets(model):
        if target.name not in weight_traces:
            raise ValueError(f"no Hessian trace for {target.name}: run `qbert hessian` with --trace-samples")
        weight = modules[target.name].weight.detach()
        options[target.name] = []
        for width in bits:
            quantized: QuantizedWeight | BinarizedWeight
            if width == 1:
                # PTQ1.61 picks its mask and fits its scales on calibration inputs; the allocator sees weights only,
                # so it estimates with unit input second moments (each input channel alike, uncorrelated)
                identity = torch.eye(weight.shape[1], dtype=torch.float64)
                quantized = BinarizedWeight.from_float(weight, config.with_bits(1), identity)
            else:
                quantized = QuantizedWeight.from_float(weight, config.with_bits(width), target.head_rows)
            error = float((weight - quantized.dequantize()).pow(2).sum())
            cost = second_order_cost(weight_traces[target.name], weight.numel(), error)
            options[target.name].append(LayerOption(width, quantized.packed_nbytes(), cost))
    return options


def plan_size(options: Mapping[str, Sequence[LayerOption]], layer_bits: Mapping[str, int]) -> tuple[int, float]:
    """Packed bytes and total cost of a given allocation, from the same options the allocator sees."""
    chosen = [next(o for o in options[name] if o.bits == layer_bits[name]) for name in options]
    return sum(o.size_bytes for o in chosen), sum(o.cost for o in chosen)


def allocate_under_budget(options: Mapping[str, Sequence[LayerOption]], budget_bytes: int) -> Allocation:
    """The allocation of least total cost whose total size fits `budget_bytes` (exact; ties go to smaller size)."""
    if not options or any(not choices for choices in options.values()):
        raise ValueError("every layer needs at least one option")
    unit = reduce(math.gcd, (o.size_bytes for choices in options.values() for o in choices))
    capacity = budget_bytes // unit
    smallest = sum(min(o.size_bytes for o in choices) for choices in options.values())
    if smallest > budget_bytes:
        raise ValueError(f"no allocation fits {budget_bytes} bytes: the smallest takes {smallest}")
    # best[s]: least cost of the layers so far at total size exactly s units (inf where unreachable).
    best = torch.full((capacity + 1,), math.inf, dtype=torch.float64)
    best[0] = 0.0
    choices_made = []
    for choices in options.values():
        step = torch.full_like(best, math.inf)
        chosen = torch.full((capacity + 1,), -1, dtype=torch.int16)
        for index, option in enumerate(choices):
            size = option.size_bytes // unit
            if size > capacity:
                continue
            candidate = torch.full_like(best, math.inf)
            candidate[size:] = best[: capacity + 1 - size] + option.cost
            better = candidate < step
            step = torch.where(better, candidate, step)
            chosen = torch.where(better, torch.tensor(index, dtype=torch.int16), chosen)
        best = step
        choices_made.append(chosen)
    end = int(torch.argmin(best))  # first minimum: the smallest size among equal costs
    total_cost = float(best[end])
    layer_bits: dict[str, int] = {}
    size = end
    for name, chosen in zip(reversed(list(options)), reversed(choices_made), strict=True):
        option = options[name][int(chosen[size])]
        layer_bits[name] = option.bits
        size -= option.size_bytes // unit
    assert size == 0
    ordered = {name: layer_bits[name] for name in options}
    return Allocation(ordered, end * unit, total_cost)


ALLOCATION_RULES = ("qbert", "reversed", "budget")


@dataclass(frozen=True)
class AllocationPlan:
    """Widths for every encoder Linear, what they cost, and what decided them (the rule's own numbers)."""

    rule: str
    bits: list[int]
    layer_bits: dict[str, int]
    packed_bytes: int
    second_order_cost: float
    decided_by: dict[str, object]  # qbert/reversed: block_bits and omega; budget: budget_bytes

    def record(self) -> dict[str, object]:
        """As `qbert allocate` writes it (models/plans/TASK/NAME.json)."""
        return {
            "rule": self.rule,
            "bits": self.bits,
            **self.decided_by,
            "packed_bytes": self.packed_bytes,
            "second_order_cost": self.second_order_cost,
            "layer_bits": self.layer_bits,
        }


def allocation_plan(
    model: nn.Module,
    sensitivities: Sequence[BlockSensitivity],
    weights: WeightQuantConfig,
    bits: Sequence[int],
    rule: str,
    budget_bytes: int | None = None,
    budget_layer_bits: Mapping[str, int] | None = None,
) -> AllocationPlan:
    """A plan by `rule`: `layer_bits` for every encoder Linear, its packed size and second-order cost, and what
    decided it.

    - `qbert` / `reversed`: Q-BERT's rule over two widths (`bits` = LOW, HIGH), block by block;
    - `budget`: the cheapest widths under `budget_bytes`, or under the packed size of `budget_layer_bits` (another
      plan, so that two rules are compared at one size).
    """
    if rule not in ALLOCATION_RULES:
        raise ValueError(f"unknown rule {rule!r}; known: {ALLOCATION_RULES}")
    bits = sorted(bits)
    options = layer_options(model, weights, bits, module_traces(sensitivities))
    decided_by: dict[str, object] = {}
    if rule in ("qbert", "reversed"):
        if len(bits) != 2:
            raise ValueError("the Q-BERT rule mixes two widths: --bits LOW,HIGH")
        block_bits = qbert_block_bits(sensitivities, bits[0], bits[1], reverse=rule == "reversed")
        layer_bits = block_bits_to_layer_bits(model, block_bits)
        decided_by = {"block_bits": block_bits, "omega": {s.block: s.omega for s in sensitivities}}
    else:
        if budget_bytes is None and budget_layer_bits is not None:
            budget_bytes, _ = plan_size(options, budget_layer_bits)
        if budget_bytes is None:
            raise ValueError("the budget rule needs a budget: --budget-mb or --budget-as PLAN")
        layer_bits = allocate_under_budget(options, budget_bytes).layer_bits
        decided_by = {"budget_bytes": budget_bytes}
    size, cost = plan_size(options, layer_bits)
    return AllocationPlan(rule, bits, layer_bits, size, cost, decided_by)
