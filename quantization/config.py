"""Quantization configs: small frozen dataclasses, validated on construction.

Configs hold data only. How values are chosen lives in `primitives`, how bits are laid out in
`packing`, and which module gets which config in `plan`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

# How a built model executes. "compiled": torch.compile (Inductor, dynamic shapes) fuses each Linear's
# per-token quantization and int8 epilogue, GELU, LayerNorm and the residual adds into C++ kernels around
# the int8 matmuls; the first call at a new kind of shape compiles (seconds, cached on disk), later ones
# reuse it, across model instances too. "eager": op by op, no compilation; the reference.
BACKENDS = ("eager", "compiled")

SUPPORTED_WEIGHT_BITS = (2, 3, 4, 8)
_PRECISION_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")


class Granularity(StrEnum):
    """How many (scale, zero point) pairs a weight matrix gets."""

    PER_TENSOR = "per_tensor"  # one pair for the whole matrix (Q-BERT's DirectQ)
    PER_CHANNEL = "per_channel"  # one pair per output row
    GROUPWISE = "groupwise"  # Q-BERT: one pair per group of consecutive output rows


class RangeMethod(StrEnum):
    """How the quantization range of each group is chosen."""

    MINMAX = "minmax"  # the full [min, max] of the group
    MSE = "mse"  # the clipped range that minimises the group's squared quantization error


@dataclass(frozen=True)
class WeightQuantConfig:
    """Uniform quantization of one weight matrix, with scales per row group.

    `num_groups` only matters for `GROUPWISE`; groups are contiguous blocks of output rows and,
    in attention projections, never straddle two heads (see `primitives.group_offsets`).
    """

    bits: int
    granularity: Granularity = Granularity.GROUPWISE
    num_groups: int = 128
    symmetric: bool = False
    range_method: RangeMethod = RangeMethod.MINMAX
    version: int = 1

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_WEIGHT_BITS:
            raise ValueError(f"bits must be one of {SUPPORTED_WEIGHT_BITS}, got {self.bits}")
        object.__setattr__(self, "granularity", Granularity(self.granularity))
        object.__setattr__(self, "range_method", RangeMethod(self.range_method))
        if self.num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {self.num_groups}")
        if self.symmetric and self.bits < 3:
            # A symmetric 2-bit grid has only {-1, 0, 1}: a wasted code, never what anyone wants.
            raise ValueError("symmetric quantization needs at least 3 bits; use symmetric=False at 2 bits")

    def with_bits(self, bits: int) -> WeightQuantConfig:
        return WeightQuantConfig(
            bits=bits,
            granularity=self.granularity,
            num_groups=self.num_groups,
            symmetric=self.symmetric,
            range_method=self.range_method,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["granularity"] = self.granularity.value
        data["range_method"] = self.range_method.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightQuantConfig:
        return cls(**data)


@dataclass(frozen=True)
class ActivationQuantConfig:
    """Activation quantization at inference.

    Only `dynamic` per-token is implemented: every quantized Linear quantizes each token's input
    to 8 bits (symmetric, its own scale) at run time, so no calibration data is needed and a
    sequence's result does not depend on the rest of its batch.
    """

    bits: int = 8
    mode: str = "dynamic"
    granularity: str = "per_token"

    def __post_init__(self) -> None:
        if self.bits != 8:
            raise ValueError(f"only 8-bit activations are supported, got {self.bits}")
        if self.mode != "dynamic":
            raise ValueError(f"only dynamic activation quantization is supported, got {self.mode!r}")
        if self.granularity != "per_token":
            raise ValueError(f"only per-token activation scales are supported, got {self.granularity!r}")


@dataclass(frozen=True)
class PrecisionConfig:
    """A named recipe: how encoder weights, embeddings and activations are quantized.

    `weights is None` means the FP32 baseline. `layer_bits` overrides the bit width of single
    encoder Linear modules by fully qualified name (mixed precision plans); it is checked strictly
    against the model when the plan is built.
    """

    name: str
    weights: WeightQuantConfig | None = None
    embeddings: WeightQuantConfig | None = None
    activations: ActivationQuantConfig | None = None
    layer_bits: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _PRECISION_NAME.match(self.name):
            raise ValueError(f"precision name must match {_PRECISION_NAME.pattern}, got {self.name!r}")
        if self.weights is None and (self.embeddings or self.activations or self.layer_bits):
            raise ValueError(f"precision {self.name!r}: embeddings/activations/layer_bits need weights")
        if self.weights is not None and self.activations is None:
            raise ValueError(f"precision {self.name!r}: quantized weights run with 8-bit activations")
        for module, bits in self.layer_bits.items():
            if bits not in SUPPORTED_WEIGHT_BITS:
                raise ValueError(f"layer_bits[{module!r}] = {bits} is not one of {SUPPORTED_WEIGHT_BITS}")

    @property
    def is_fp32(self) -> bool:
        return self.weights is None
