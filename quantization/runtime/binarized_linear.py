"""`BinarizedLinear`: a PTQ1.61 Linear layer (`quantization.binarized`) as two quantized Linear layers of the backend.

With S the salient input channels and N the binarized ones, x_N' = x_N · column_scale and b = (sign + 1) / 2:

    y = Lin_S(x_S) + Lin_N(x_N') + (row_mean − row_scale) · Σ_c x_N'[c] + bias
    Lin_S: the salient `salient_bits` codes with their row scales and zero points
    Lin_N: the 1-bit codes b with row scale 2 · row_scale and zero point 0 (it adds the bias)

since row_scale · sign + row_mean = 2 · row_scale · b + (row_mean − row_scale). Both are the backend's own quantized
Linear (`Int8Linear`, `PackedLinear`, OpenVINO's decompression form), each token's two inputs rounded to 8 bits with
scales of their own; the packed backend keeps the 1-bit codes at 1 bit. The offset term sums float32 inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from quantization.binarized import BinarizedWeight
from quantization.primitives import group_offsets
from quantization.qtensor import QuantizedWeight

LinearFactory = Callable[[QuantizedWeight, torch.Tensor | None], nn.Module]


def sign_weight(weight: BinarizedWeight) -> QuantizedWeight:
    """The binarized channels as a uniform 1-bit weight: codes b, row scale 2 · row_scale, zero point 0."""
    rows = weight.shape[0]
    return QuantizedWeight(
        weight.sign_codes,
        2 * weight.rest.row_scale.to(torch.float32),
        torch.zeros(rows, dtype=torch.uint8),
        group_offsets(rows, rows),
        1,
    )


class BinarizedLinear(nn.Module):
    """See the module docstring."""

    salient_index: torch.Tensor
    rest_index: torch.Tensor
    column_scale: torch.Tensor | None
    row_offset: torch.Tensor

    def __init__(self, weight: BinarizedWeight, bias: torch.Tensor | None, linear_factory: LinearFactory) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.bits = 1
        self.register_buffer("salient_index", weight.salient_index.to(torch.int32))
        self.register_buffer("rest_index", weight.rest_index.to(torch.int32))
        self.salient = linear_factory(weight.salient, None) if weight.salient is not None else None
        self.rest = linear_factory(sign_weight(weight), bias)
        column = weight.rest.column_scale
        self.register_buffer("column_scale", None if column is None else column.to(torch.float32).clone())
        mean = weight.rest.row_mean if weight.rest.row_mean is not None else torch.zeros(self.out_features)
        self.register_buffer("row_offset", (mean - weight.rest.row_scale).to(torch.float32))
        # this module's own buffers; its two Linear layers report theirs
        self.runtime_nbytes = sum(b.numel() * b.element_size() for b in self.buffers(recurse=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rest = x.index_select(-1, self.rest_index)
        if self.column_scale is not None:
            rest = rest * self.column_scale
        y = self.rest(rest) + rest.sum(-1, keepdim=True) * self.row_offset
        if self.salient is not None:
            y = y + self.salient(x.index_select(-1, self.salient_index))
        return y

    def extra_repr(self) -> str:
        salient = self.salient_index.numel()
        return f"in_features={self.in_features}, out_features={self.out_features}, salient={salient} (PTQ1.61)"
