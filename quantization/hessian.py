"""Second-order sensitivity (Q-BERT §3.1, PyHessian): top Hessian eigenvalue by power iteration and the Hessian
trace by Hutchinson's estimator, from Hessian-vector products (double backward through `torch.autograd.grad`).

The algorithms take a loss function and the parameters to differentiate, never a dataset format; per-block
sensitivity discovers the blocks from the model (`structure.encoder_blocks`), so a 6-layer MiniLM and a 12-layer
bert-base are handled alike. Nothing here reads or writes files; results are dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from quantization.structure import encoder_blocks

LossFn = Callable[[], torch.Tensor]  # the loss on one fixed mini-batch, recomputed on each call


@dataclass(frozen=True)
class PowerIterationConfig:
    max_iterations: int = 100
    tolerance: float = 1e-3  # stop when the eigenvalue changes by less than this, relatively
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_iterations < 1 or not 0 < self.tolerance < 1:
            raise ValueError("max_iterations ≥ 1 and 0 < tolerance < 1 are required")


@dataclass(frozen=True)
class HutchinsonConfig:
    max_samples: int = 200
    min_samples: int = 10
    tolerance: float = 0.02  # stop when the standard error of the mean is below this fraction of |mean|
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.min_samples <= self.max_samples or not 0 < self.tolerance < 1:
            raise ValueError("2 ≤ min_samples ≤ max_samples and 0 < tolerance < 1 are required")


@dataclass(frozen=True)
class EigenResult:
    value: float  # may be negative: reported as found (Q-BERT saw negative ones on SQuAD)
    iterations: int
    converged: bool


@dataclass(frozen=True)
class TraceResult:
    value: float
    samples: int
    standard_error: float
    per_parameter: tuple[float, ...]  # the trace of each parameter's own diagonal block, same order as given


@dataclass(frozen=True)
class BlockSensitivity:
    """One encoder block over several mini-batches: Q-BERT's Ω = |mean λ| + std λ, and the mean trace."""

    block: str
    eigenvalues: tuple[float, ...]  # one per mini-batch
    traces: tuple[float, ...]
    weight_traces: dict[str, float] = field(default_factory=dict)  # mean over batches, per weight name
    iterations: tuple[int, ...] = ()  # power iterations per mini-batch
    converged: tuple[bool, ...] = ()

    @property
    def mean(self) -> float:
        return statistics.fmean(self.eigenvalues)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.eigenvalues) if len(self.eigenvalues) > 1 else 0.0

    @property
    def omega(self) -> float:
        return abs(self.mean) + self.std

    @property
    def trace(self) -> float:
        return statistics.fmean(self.traces) if self.traces else math.nan


class HessianVectorProduct:
    """H·v for the Hessian of `loss_fn` with respect to `params`; the gradient graph is built once and reused."""

    def __init__(self, loss_fn: LossFn, params: Sequence[torch.Tensor]) -> None:
        if not params:
            raise ValueError("no parameters to differentiate")
        self.params = list(params)
        with torch.enable_grad():
            self.grads = torch.autograd.grad(loss_fn(), self.params, create_graph=True)

    def __call__(self, vectors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        try:
            products = torch.autograd.grad(self.grads, self.params, grad_outputs=list(vectors), retain_graph=True)
        except RuntimeError as err:
            if "derivative for" in str(err) and "not implemented" in str(err):
                raise RuntimeError(
                    f"{err}. Fused kernels (e.g. SDPA flash attention on CPU) have no double backward: "
                    "load the model with attn_implementation='eager' for Hessian computations"
                ) from err
            raise
        return [p.detach() for p in products]


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b, strict=True)))


def _normalized(vectors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    norm = math.sqrt(_dot(vectors, vectors))
    if norm == 0:
        raise ValueError("the Hessian-vector product vanished: the loss is flat in these parameters")
    return [v / norm for v in vectors]


def top_eigenvalue(loss_fn: LossFn, params: Sequence[torch.Tensor], config: PowerIterationConfig) -> EigenResult:
    """The eigenvalue of largest magnitude by power iteration from a seeded random unit vector."""
    return _power_iteration(HessianVectorProduct(loss_fn, params), config)


def _power_iteration(hvp: HessianVectorProduct, config: PowerIterationConfig) -> EigenResult:
    generator = torch.Generator().manual_seed(config.seed)
    v = _normalized([torch.randn(p.shape, generator=generator).to(p) for p in hvp.params])
    eigenvalue = None
    for iteration in range(1, config.max_iterations + 1):
        hv = hvp(v)
        estimate = _dot(hv, v)  # Rayleigh quotient (v is a unit vector)
        if eigenvalue is not None and abs(estimate - eigenvalue) <= config.tolerance * (abs(eigenvalue) + 1e-12):
            return EigenResult(estimate, iteration, True)
        eigenvalue = estimate
        v = _normalized(hv)
    return EigenResult(float(eigenvalue or 0.0), config.max_iterations, False)


def hutchinson_trace(loss_fn: LossFn, params: Sequence[torch.Tensor], config: HutchinsonConfig) -> TraceResult:
    """tr(H) ≈ mean of vᵀHv over Rademacher vectors v; each parameter's vᵢᵀ(Hv)ᵢ estimates its own block's trace."""
    return _hutchinson(HessianVectorProduct(loss_fn, params), config)


def _hutchinson(hvp: HessianVectorProduct, config: HutchinsonConfig) -> TraceResult:
    generator = torch.Generator().manual_seed(config.seed)
    totals: list[float] = []
    per_parameter = [0.0] * len(hvp.params)
    for sample in range(1, config.max_samples + 1):
        v = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p) for p in hvp.params]
        hv = hvp(v)
        parts = [float((a * b).sum()) for a, b in zip(hv, v, strict=True)]
        totals.append(sum(parts))
        per_parameter = [acc + part for acc, part in zip(per_parameter, parts, strict=True)]
        if sample >= config.min_samples:
            mean = statistics.fmean(totals)
            error = statistics.stdev(totals) / math.sqrt(sample)
            if error <= config.tolerance * abs(mean):
                break
    n = len(totals)
    error = statistics.stdev(totals) / math.sqrt(n)
    return TraceResult(statistics.fmean(totals), n, error, tuple(total / n for total in per_parameter))


def block_weights(block: nn.Module) -> dict[str, torch.Tensor]:
    """The weights quantization acts on in a block: every Linear's weight, by local name."""
    return {f"{name}.weight": module.weight for name, module in block.named_modules() if isinstance(module, nn.Linear)}


def block_sensitivities(
    model: nn.Module,
    loss_fns: Sequence[LossFn],
    power: PowerIterationConfig | None = None,
    trace: HutchinsonConfig | None = None,
    on_block: Callable[[BlockSensitivity], None] | None = None,
) -> list[BlockSensitivity]:
    """Per encoder block: top eigenvalue on each mini-batch (and, when `trace` is given, Hutchinson traces).

    `loss_fns`: one per independent mini-batch (Q-BERT uses ≥ 10), each computing the loss of `model` on its
    batch. The model should be in eval mode (no dropout) so that every call sees the same function, with an
    attention implementation that has a double backward (`attn_implementation="eager"`).
    """
    power = power or PowerIterationConfig()
    results = []
    for block in encoder_blocks(model):
        weights = block_weights(block.module)
        params = list(weights.values())
        eigen: list[EigenResult] = []
        traces: list[float] = []
        weight_traces: dict[str, list[float]] = {name: [] for name in weights}
        for batch, loss_fn in enumerate(loss_fns):
            hvp = HessianVectorProduct(loss_fn, params)  # one gradient graph for both estimates
            eigen.append(_power_iteration(hvp, dataclasses.replace(power, seed=power.seed + batch)))
            if trace is not None:
                estimate = _hutchinson(hvp, dataclasses.replace(trace, seed=trace.seed + batch))
                traces.append(estimate.value)
                for name, value in zip(weights, estimate.per_parameter, strict=True):
                    weight_traces[name].append(value)
        sensitivity = BlockSensitivity(
            block=block.name,
            eigenvalues=tuple(e.value for e in eigen),
            traces=tuple(traces),
            weight_traces={name: statistics.fmean(v) for name, v in weight_traces.items() if v},
            iterations=tuple(e.iterations for e in eigen),
            converged=tuple(e.converged for e in eigen),
        )
        results.append(sensitivity)
        if on_block:
            on_block(sensitivity)
    return results
