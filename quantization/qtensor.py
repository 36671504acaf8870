"""`QuantizedWeight`: a 2-D weight as unsigned codes plus per-group scales and zero points."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantization.config import Rounding, WeightQuantConfig
from quantization.gptq import gptq_codes
from quantization.packing import pack_codes, packed_nbytes, unpack_codes
from quantization.primitives import (
    choose_qparams,
    dequantize,
    group_offsets,
    quantize,
    resolve_num_groups,
    rows_of_groups,
)

# Suffixes of the safetensors entries that store one quantized weight.
QDATA, SCALE, ZERO_POINT = "qdata", "scale", "zero_point"


@dataclass
class QuantizedWeight:
    """Codes (uint8, unpacked, shape `shape`), per-group scale (float32) and zero point (uint8).

    Groups are the contiguous row ranges given by `offsets` (see `primitives.group_offsets`).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    offsets: torch.Tensor
    bits: int

    @classmethod
    def from_float(
        cls,
        weight: torch.Tensor,
        config: WeightQuantConfig,
        head_rows: int | None = None,
        input_hessian: torch.Tensor | None = None,
    ) -> QuantizedWeight:
        """`input_hessian` (in × in, 2·XᵀX of calibration inputs) is what GPTQ rounding needs."""
        if weight.dim() != 2:
            raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
        weight = weight.detach().to(torch.float32)
        offsets = group_offsets(weight.shape[0], resolve_num_groups(config, weight.shape[0]), head_rows)
        scale, zero = choose_qparams(weight, offsets, config.bits, config.symmetric, config.range_method)
        row_group = rows_of_groups(offsets)
        if config.rounding is Rounding.GPTQ:
            if input_hessian is None:
                raise ValueError("GPTQ rounding needs the input Hessian of the layer (calibration data)")
            codes = gptq_codes(weight, input_hessian, scale[row_group], zero[row_group], config.bits)
        else:
            codes = quantize(weight, scale[row_group], zero[row_group], config.bits)
        return cls(codes, scale, zero.to(torch.uint8), offsets, config.bits)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.codes.shape[0], self.codes.shape[1])

    def row_scale(self) -> torch.Tensor:
        return self.scale[rows_of_groups(self.offsets)]

    def row_zero_point(self) -> torch.Tensor:
        return self.zero_point[rows_of_groups(self.offsets)]

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.codes, self.row_scale(), self.row_zero_point().to(torch.float32))

    def packed_nbytes(self) -> int:
        """Bytes on disk: packed codes plus a float32 scale and a uint8 zero point per group."""
        groups = self.scale.numel()
        return packed_nbytes(self.codes.numel(), self.bits) + groups * (4 + 1)

    def to_storage(self, name: str) -> dict[str, torch.Tensor]:
        """Tensors to write under `name.{qdata,scale,zero_point}`; the offsets are recomputed on load."""
        return {
            f"{name}.{QDATA}": pack_codes(self.codes, self.bits),
            f"{name}.{SCALE}": self.scale.to(torch.float32).contiguous(),
            f"{name}.{ZERO_POINT}": self.zero_point.to(torch.uint8).contiguous(),
        }

    @classmethod
    def from_storage(
        cls,
        tensors: dict[str, torch.Tensor],
        name: str,
        shape: tuple[int, int],
        bits: int,
        offsets: torch.Tensor,
    ) -> QuantizedWeight:
        codes = unpack_codes(tensors[f"{name}.{QDATA}"], bits, shape)
        scale, zero = tensors[f"{name}.{SCALE}"], tensors[f"{name}.{ZERO_POINT}"]
        groups = len(offsets) - 1
        if scale.shape != (groups,) or zero.shape != (groups,):
            raise ValueError(f"{name}: expected {groups} scales and zero points, got {tuple(scale.shape)}")
        return cls(codes, scale, zero, offsets, bits)
