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
# reuse it, across model instances too. "eager": op by op, no compilation; the reference. "openvino": the
# artifact's codes as packed u2/u3/u4/u8 constants in an OpenVINO model run by its CPU plugin
# (`quantization.runtime.openvino_backend`); where it cannot build a model, that model runs eager.
# "packed": the compiled graph with our VNNI kernels multiplying the codes still packed at their own width
# (`quantization.runtime.packed_linear`); where those cannot run (no AVX-512 VNNI, no compiler), "compiled".
# "aot": the packed model compiled ahead of time by AOTInductor (`quantization.runtime.ahead_of_time`) and run from
# C++ with no Python per call; where it cannot be built, "packed".
BACKENDS = ("eager", "compiled", "packed", "openvino", "aot")
COMPILED_BACKENDS = ("compiled", "packed")  # under torch.compile: warmed up (compiled) at load
WARMED_BACKENDS = (*COMPILED_BACKENDS, "aot")  # compiled at load, after it serves on its eager twin
PACKED_KERNEL_BACKENDS = ("packed", "aot")  # our kernels on the codes packed at their width
# The packed backend's attention products (q·kᵀ and p·v; sums, softmax and outputs stay float32): float32 operands
# (the default), or bf16 ones where the CPU has AVX-512 BF16 (faster; not within 0.2 pt of the reference everywhere:
# README). OpenVINO's CPU plugin runs its unquantized ops in bf16 there by default.
ATTENTION_PRECISIONS = ("float32", "bf16", "int16")

SUPPORTED_WEIGHT_BITS = (1, 2, 3, 4, 8)  # 1: binarized, PTQ1.61 (`BinarizationConfig`)
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


class Rounding(StrEnum):
    """How codes are chosen once each group's (scale, zero point) is fixed."""

    NEAREST = "nearest"  # round every weight to its nearest code
    GPTQ = "gptq"  # GPTQ (Frantar et al.): column by column, pushing each error onto the columns not yet rounded,
    # weighted by the inverse Hessian of the layer's inputs on calibration data (needs that data at build time)


SALIENCY_CRITERIA = ("error-bound", "activation")


@dataclass(frozen=True)
class BinarizationConfig:
    """PTQ1.61 (Zhao et al., 2025) for 1-bit weight matrices: a structured mask over input channels keeps the salient
    ones at `salient_bits` (uniform, one scale and zero point per output row); the rest are binarized,

        w[r, c] = column_scale[c] · (row_scale[r] · sign[r, c] + row_mean[r])

    `salient_fraction`: the share of input channels kept (0: no mask, every channel binarized).
    `saliency`: how they are picked from the calibration inputs X (training split): "error-bound" (the channels c
    with the largest ‖X[:, c]‖ · ‖binarization error of column c‖, the terms of the upper bound Σ_c ‖X[:, c]‖·‖w_c −
    ŵ_c‖ of the layer's output error) or "activation" (largest ‖X[:, c]‖, the reference code's criterion).
    `row_mean`: binarize around each row's mean; `column_scales`: the per-input-channel factors. With both off and no
    mask this is plain binarization, sign(w) · mean |w| per row.
    `refinement_passes`: alternating least-squares passes that fit the row scales, row means and column scales to the
    layer's output on the calibration inputs, ‖X(W − Ŵ)ᵀ‖² (0: the closed-form start, which needs no inputs).
    """

    salient_fraction: float = 0.2
    salient_bits: int = 4
    saliency: str = "error-bound"
    row_mean: bool = True
    column_scales: bool = True
    refinement_passes: int = 4

    def __post_init__(self) -> None:
        if not 0 <= self.salient_fraction < 1:
            raise ValueError(f"salient_fraction must be in [0, 1), got {self.salient_fraction}")
        if self.salient_bits not in (2, 3, 4, 8):
            raise ValueError(f"salient_bits must be 2, 3, 4 or 8, got {self.salient_bits}")
        if self.saliency not in SALIENCY_CRITERIA:
            raise ValueError(f"saliency must be one of {SALIENCY_CRITERIA}, got {self.saliency!r}")
        if self.refinement_passes < 0:
            raise ValueError(f"refinement_passes must be ≥ 0, got {self.refinement_passes}")

    @property
    def needs_inputs(self) -> bool:
        """Whether building it needs the layer's calibration inputs (their second moments)."""
        return self.salient_fraction > 0 or self.refinement_passes > 0


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
    rounding: Rounding = Rounding.NEAREST
    version: int = 1
    # how 1-bit matrices are built (PTQ1.61); other widths ignore it, so a mixed plan may give some layers 1 bit
    binarization: BinarizationConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rounding", Rounding(self.rounding))
        if isinstance(self.binarization, dict):
            object.__setattr__(self, "binarization", BinarizationConfig(**self.binarization))
        if self.bits not in SUPPORTED_WEIGHT_BITS:
            raise ValueError(f"bits must be one of {SUPPORTED_WEIGHT_BITS}, got {self.bits}")
        if self.bits == 1 and self.binarization is None:
            raise ValueError("1-bit weights are binarized: give a `binarization` (PTQ1.61) config")
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
            rounding=self.rounding,
            binarization=self.binarization,
        )

    @property
    def binarized(self) -> bool:
        return self.bits == 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["granularity"] = self.granularity.value
        data["range_method"] = self.range_method.value
        data["rounding"] = self.rounding.value
        if self.rounding is Rounding.NEAREST:  # as before the field existed: the inputs hashes stay the same
            del data["rounding"]
        if self.binarization is None:  # likewise
            del data["binarization"]
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


ACTIVATION_RANGES = ("dynamic", "ema")
NOISE_UNITS = ("block", "layer")
# "checkpoint": QAT starts from the FP32 weights; "gptq": from the values GPTQ rounds them to on the calibration inputs
# (so that its first forward pass computes the GPTQ model), the training then moves them
QAT_STARTS = ("checkpoint", "gptq")


@dataclass(frozen=True)
class QATConfig:
    """Quantization-aware fine-tuning (Q8BERT / Q-BERT): fake-quantized weights with a straight-through estimator.

    `activation_ranges`: "dynamic" simulates what the runtime does (each token's own 8-bit scale); "ema" is
    Q8BERT's simulation (one range per Linear input, an exponential moving average of max |x| in training).
    `distill_weight`: the share of the loss that is KL divergence to the FP32 model's outputs (0: task loss only).
    `hidden_distill_weight`: a further term, this weight times the mean squared error between the student's and the
    FP32 model's hidden states after every block (on real tokens), as TernaryBERT and BinaryBERT distil (0: none).
    `qparams_every`: steps between re-choosing each weight group's (scale, zero point); the search is costly.
    `noise_rate` < 1: Quant-Noise (Fan et al., 2020): each training forward pass quantizes only this share of the
    weights, chosen at random per `noise_unit` ("block": `noise_block` consecutive weights of a row; "layer": a whole
    weight matrix), the rest staying full precision, much as dropout drops units. Evaluation and packing quantize
    every weight. 1 is plain QAT.
    `start`: "checkpoint" trains from the FP32 weights; "gptq" from the values GPTQ rounding gives them on 128
    calibration sequences of the training split (the PTQ artifact's weights), so training begins where PTQ ends.
    """

    steps: int = 600
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_fraction: float = 0.1
    weight_decay: float = 0.0
    max_length: int = 128
    max_examples: int | None = None  # a seeded random subset of the training split
    distill_weight: float = 0.5
    hidden_distill_weight: float = 0.0
    activation_ranges: str = "dynamic"
    ema_decay: float = 0.9
    qparams_every: int = 10
    seed: int = 0
    noise_rate: float = 1.0
    noise_unit: str = "block"
    noise_block: int = 8
    start: str = "checkpoint"

    def __post_init__(self) -> None:
        if self.start not in QAT_STARTS:
            raise ValueError(f"start must be one of {QAT_STARTS}, got {self.start!r}")
        if self.steps < 1 or self.batch_size < 1 or self.max_length < 8 or self.qparams_every < 1:
            raise ValueError("steps, batch_size, qparams_every ≥ 1 and max_length ≥ 8 are required")
        if not self.learning_rate > 0 or not 0 <= self.warmup_fraction < 1 or self.weight_decay < 0:
            raise ValueError("learning_rate > 0, 0 ≤ warmup_fraction < 1 and weight_decay ≥ 0 are required")
        if not 0 <= self.distill_weight <= 1 or not 0 < self.ema_decay < 1 or self.hidden_distill_weight < 0:
            raise ValueError("0 ≤ distill_weight ≤ 1, hidden_distill_weight ≥ 0 and 0 < ema_decay < 1 are required")
        if self.activation_ranges not in ACTIVATION_RANGES:
            raise ValueError(f"activation_ranges must be one of {ACTIVATION_RANGES}, got {self.activation_ranges!r}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"max_examples must be ≥ 1, got {self.max_examples}")
        if not 0 < self.noise_rate <= 1 or self.noise_unit not in NOISE_UNITS or self.noise_block < 1:
            raise ValueError(
                f"Quant-Noise needs 0 < noise_rate ≤ 1, noise_unit one of {NOISE_UNITS} and noise_block ≥ 1; got "
                f"{self.noise_rate}, {self.noise_unit!r}, {self.noise_block}"
            )

    @property
    def quant_noise(self) -> bool:
        return self.noise_rate < 1


@dataclass(frozen=True)
class PreprocessingConfig:
    """PTQ1.61's quantization preprocessing ("restorative LoRA"): the model is quantized once, low-rank corrections
    B·A (`rank`) are trained on top of the frozen quantized weights to restore the FP32 model's outputs
    (distillation, on the training split), and the merged weights Ŵ + B·A, whose distribution now sits near the
    quantization grid, are what the precision then quantizes. `steps` at `learning_rate`, the task's QAT batches."""

    rank: int = 16
    steps: int = 300
    learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        if self.rank < 1 or self.steps < 1 or not self.learning_rate > 0:
            raise ValueError(f"preprocessing needs rank ≥ 1, steps ≥ 1, learning_rate > 0; got {self}")


@dataclass(frozen=True)
class PrecisionConfig:
    """A named recipe: how encoder weights, embeddings and activations are quantized.

    `weights is None` means the FP32 baseline. `layer_bits` overrides the bit width of single
    encoder Linear modules or embeddings by fully qualified name (mixed precision plans); it is checked
    strictly against the model when the plan is built. `qat`: quantization-aware fine-tuning before packing.
    """

    name: str
    weights: WeightQuantConfig | None = None
    embeddings: WeightQuantConfig | None = None
    activations: ActivationQuantConfig | None = None
    layer_bits: dict[str, int] = field(default_factory=dict)
    qat: QATConfig | None = None
    preprocessing: PreprocessingConfig | None = None

    def __post_init__(self) -> None:
        if not _PRECISION_NAME.match(self.name):
            raise ValueError(f"precision name must match {_PRECISION_NAME.pattern}, got {self.name!r}")
        if self.weights is None and (self.embeddings or self.activations or self.layer_bits or self.qat):
            raise ValueError(f"precision {self.name!r}: embeddings/activations/layer_bits/qat need weights")
        if self.weights is None and self.preprocessing is not None:
            raise ValueError(f"precision {self.name!r}: preprocessing needs quantized weights")
        if self.qat is not None and self.preprocessing is not None:
            raise ValueError(f"precision {self.name!r}: preprocessing is for post-training quantization, not QAT")
        if self.weights is not None and self.activations is None:
            raise ValueError(f"precision {self.name!r}: quantized weights run with 8-bit activations")
        if self.embeddings is not None and self.embeddings.rounding is not Rounding.NEAREST:
            raise ValueError(
                f"precision {self.name!r}: embeddings are rounded to nearest (GPTQ needs a Linear's inputs)"
            )
        for module, bits in self.layer_bits.items():
            if bits not in SUPPORTED_WEIGHT_BITS:
                raise ValueError(f"layer_bits[{module!r}] = {bits} is not one of {SUPPORTED_WEIGHT_BITS}")
            if bits == 1 and (self.weights is None or self.weights.binarization is None):
                raise ValueError(f"layer_bits[{module!r}] = 1 needs the weights' `binarization` (PTQ1.61) config")
        if self.embeddings is not None and self.embeddings.bits == 1:
            raise ValueError(f"precision {self.name!r}: embeddings are not binarized (PTQ1.61 is for Linear weights)")

    @property
    def is_fp32(self) -> bool:
        return self.weights is None
