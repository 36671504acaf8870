"""`BinarizedWeight`: a PTQ1.61 weight matrix as it is stored and counted (the values are chosen in `binarization`).

A weight W (out × in) is split by a one-dimensional mask over its input channels:
- the salient channels S: uniform `salient_bits` codes, one scale and zero point per output row (a `QuantizedWeight`
  of out × |S|);
- the rest N: 1-bit codes b = (sign + 1) / 2, packed eight per byte, with the factors of `binarization.BinarizedRest`
  (row scale, and where used row mean and column scales) stored as float16: rounded to it when chosen, so the stored
  values are the ones every check and backend uses (float32 factors would cost a quarter bit per weight at 384 wide).

Stored under `NAME.mask` (the mask, 1 bit per input channel), `NAME.signs`, `NAME.row_scale`, `NAME.row_mean`,
`NAME.column_scale` and `NAME.salient.{qdata,scale,zero_point}`. `code_bits_per_weight` counts codes and mask
(PTQ1.61's "1.61"); `packed_nbytes` every stored byte, factors included.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from quantization.binarization import BinarizedRest, binarize, compensated_salient, salient_channels
from quantization.config import BinarizationConfig, Granularity, RangeMethod, Rounding, WeightQuantConfig
from quantization.packing import pack_codes, packed_nbytes, unpack_codes
from quantization.primitives import group_offsets
from quantization.qtensor import QuantizedWeight

MASK, SIGNS, ROW_SCALE, ROW_MEAN, COLUMN_SCALE, SALIENT = (
    "mask",
    "signs",
    "row_scale",
    "row_mean",
    "column_scale",
    "salient",
)


FACTOR_DTYPE = torch.float16
FACTOR_BYTES = 2


def _salient_config(binarization: BinarizationConfig) -> WeightQuantConfig:
    """The salient channels: uniform codes, one (scale, zero point) per output row, MSE-clipped ranges."""
    return WeightQuantConfig(
        bits=binarization.salient_bits, granularity=Granularity.PER_CHANNEL, range_method=RangeMethod.MSE
    )


@dataclass
class BinarizedWeight:
    """See the module docstring. `salient_index`: sorted int64 indices of S; `rest`: the binarized channels' values."""

    shape: tuple[int, int]
    salient_index: torch.Tensor
    salient: QuantizedWeight | None
    rest: BinarizedRest

    bits = 1  # the width of the binarized codes (what a plan's `layer_bits` says)

    @classmethod
    def from_float(
        cls, weight: torch.Tensor, config: WeightQuantConfig, input_hessian: torch.Tensor | None = None
    ) -> BinarizedWeight:
        """`input_hessian` (in × in, 2·XᵀX of calibration inputs) picks the mask and fits the scales. With GPTQ
        rounding (`config.rounding`) the salient channels first absorb the binarized ones' error
        (`binarization.compensated_salient`), then are rounded by GPTQ: beyond the paper, our product's rounding."""
        if weight.dim() != 2:
            raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
        binarization = config.binarization
        if binarization is None:
            raise ValueError("a binarized weight needs a `binarization` config")
        weight = weight.detach().to(torch.float32)
        salient = salient_channels(weight, binarization, input_hessian)
        keep = torch.ones(weight.shape[1], dtype=torch.bool)
        keep[salient] = False
        rest_index = keep.nonzero().squeeze(1)
        rest_hessian = None if input_hessian is None else input_hessian[rest_index][:, rest_index]
        rest = _factors_in_float16(binarize(weight[:, rest_index], binarization, rest_hessian))
        salient_weight = None
        if salient.numel():
            salient_values, salient_config, salient_hessian = weight[:, salient], _salient_config(binarization), None
            if config.rounding is Rounding.GPTQ:
                if input_hessian is None:
                    raise ValueError("GPTQ rounding needs the input Hessian of the layer (calibration data)")
                rest_error = weight[:, rest_index].to(torch.float64) - rest.dequantize()
                salient_values = compensated_salient(salient_values, rest_error, input_hessian, salient)
                salient_config = replace(salient_config, rounding=Rounding.GPTQ)
                salient_hessian = input_hessian[salient][:, salient]
            salient_weight = QuantizedWeight.from_float(salient_values, salient_config, input_hessian=salient_hessian)
        return cls((weight.shape[0], weight.shape[1]), salient, salient_weight, rest)

    @property
    def salient_mask(self) -> torch.Tensor:
        mask = torch.zeros(self.shape[1], dtype=torch.bool)
        mask[self.salient_index] = True
        return mask

    @property
    def rest_index(self) -> torch.Tensor:
        return (~self.salient_mask).nonzero().squeeze(1)

    @property
    def sign_codes(self) -> torch.Tensor:
        """The binarized channels' 1-bit codes: 1 for +1, 0 for −1 (uint8, out × |N|)."""
        return (self.rest.signs > 0).to(torch.uint8)

    def dequantize(self) -> torch.Tensor:
        """Ŵ in float64 (the reference the runtime is checked against)."""
        weight = torch.zeros(self.shape, dtype=torch.float64)
        weight[:, self.rest_index] = self.rest.dequantize()
        if self.salient is not None:
            weight[:, self.salient_index] = self.salient.dequantize().to(torch.float64)
        return weight

    def code_bits_per_weight(self) -> float:
        """Bits of codes and mask per weight: 1 per binarized weight, `salient_bits` per salient one, 1 per input
        channel for the mask."""
        rows, inputs = self.shape
        salient = self.salient_index.numel()
        salient_bits = self.salient.bits if self.salient is not None else 0
        return (rows * (inputs - salient) + rows * salient * salient_bits + inputs) / (rows * inputs)

    def mask_bits_per_weight(self) -> float:
        """The mask's share of `code_bits_per_weight`: one bit per input channel, 1 / out per weight."""
        return 1 / self.shape[0]

    def packed_nbytes(self) -> int:
        """Every stored byte: packed mask and sign codes, the salient codes with their row parameters, the factors."""
        rows, inputs = self.shape
        total = packed_nbytes(inputs, 1) + packed_nbytes(rows * (inputs - self.salient_index.numel()), 1)
        total += FACTOR_BYTES * rows  # row scale
        if self.rest.row_mean is not None:
            total += FACTOR_BYTES * rows
        if self.rest.column_scale is not None:
            total += FACTOR_BYTES * self.rest.column_scale.numel()
        if self.salient is not None:
            total += self.salient.packed_nbytes()
        return total

    def to_storage(self, name: str) -> dict[str, torch.Tensor]:
        tensors = {
            f"{name}.{MASK}": pack_codes(self.salient_mask.to(torch.uint8), 1),
            f"{name}.{SIGNS}": pack_codes(self.sign_codes, 1),
            f"{name}.{ROW_SCALE}": self.rest.row_scale.to(FACTOR_DTYPE).contiguous(),
        }
        if self.rest.row_mean is not None:
            tensors[f"{name}.{ROW_MEAN}"] = self.rest.row_mean.to(FACTOR_DTYPE).contiguous()
        if self.rest.column_scale is not None:
            tensors[f"{name}.{COLUMN_SCALE}"] = self.rest.column_scale.to(FACTOR_DTYPE).contiguous()
        if self.salient is not None:
            tensors.update(self.salient.to_storage(f"{name}.{SALIENT}"))
        return tensors

    @classmethod
    def from_storage(
        cls, tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, int], salient_bits: int
    ) -> BinarizedWeight:
        rows, inputs = shape
        mask = unpack_codes(tensors[f"{name}.{MASK}"], 1, (inputs,)).to(torch.bool)
        salient_index = mask.nonzero().squeeze(1)
        rest_count = inputs - salient_index.numel()
        signs = unpack_codes(tensors[f"{name}.{SIGNS}"], 1, (rows, rest_count)).to(torch.int8) * 2 - 1
        row_scale = tensors[f"{name}.{ROW_SCALE}"].to(torch.float32)
        row_mean = _as_float32(tensors.get(f"{name}.{ROW_MEAN}"))
        column_scale = _as_float32(tensors.get(f"{name}.{COLUMN_SCALE}"))
        if row_scale.shape != (rows,) or (row_mean is not None and row_mean.shape != (rows,)):
            raise ValueError(f"{name}: expected {rows} row scales and means, got {tuple(row_scale.shape)}")
        if column_scale is not None and column_scale.shape != (rest_count,):
            raise ValueError(f"{name}: expected {rest_count} column scales, got {tuple(column_scale.shape)}")
        salient = None
        if salient_index.numel():
            salient = QuantizedWeight.from_storage(
                tensors, f"{name}.{SALIENT}", (rows, salient_index.numel()), salient_bits, group_offsets(rows, rows)
            )
        return cls(shape, salient_index, salient, BinarizedRest(signs, row_scale, row_mean, column_scale))

    @staticmethod
    def storage_names(name: str, tensors: dict[str, torch.Tensor]) -> list[str]:
        """The stored tensors of the weight `name` (those present: the optional factors may not be)."""
        prefix = f"{name}."
        return [key for key in tensors if key.startswith(prefix) and key[len(prefix) :].split(".")[0] in _PARTS]


_PARTS = {MASK, SIGNS, ROW_SCALE, ROW_MEAN, COLUMN_SCALE, SALIENT}


def _as_float32(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(torch.float32)


def _factors_in_float16(rest: BinarizedRest) -> BinarizedRest:
    """The factors rounded to the dtype they are stored in (held as float32)."""

    def rounded(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(FACTOR_DTYPE).to(torch.float32)

    return BinarizedRest(
        rest.signs,
        rounded(rest.row_scale),
        None if rest.row_mean is None else rounded(rest.row_mean),
        None if rest.column_scale is None else rounded(rest.column_scale),
    )
