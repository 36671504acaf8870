"""Q-BERT quantization: packed low-bit artifacts for BERT-family models, built offline."""

from quantization.config import (
    ActivationQuantConfig,
    Granularity,
    PrecisionConfig,
    RangeMethod,
    WeightQuantConfig,
)

__all__ = [
    "ActivationQuantConfig",
    "Granularity",
    "PrecisionConfig",
    "RangeMethod",
    "WeightQuantConfig",
]
