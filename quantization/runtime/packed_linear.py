"""`PackedLinear`: a quantized Linear whose 2/3/4/8-bit codes stay packed at their own width in memory, multiplied
by our VNNI kernel (`packed_kernels`) with each token's activations rounded to int8 as the artifact says:

    y[t, r] = s_t * s_r * (sum_k xq[t, k] * c[r, k]  -  z_r * sum_k xq[t, k])  +  b[r],  xq = round(x / s_t)

the same formula as `Int8Linear` (the reference), with the integer sums exact. The codes are unpacked in registers
inside the GEMM, never in memory: a layer holds bits/8 bytes per weight, plus 9 bytes per row (scale, zero point,
bias) and the padding of its last row block.
"""

from __future__ import annotations

import torch
from torch import nn

from quantization.qtensor import QuantizedWeight
from quantization.runtime.packed_kernels import packed_kernels


class PackedLinear(nn.Module):
    """A Linear layer on packed low-bit codes (see module docstring). Built from unpacked codes, then `pack`ed."""

    codes: torch.Tensor
    row_scale: torch.Tensor
    row_zero: torch.Tensor
    bias: torch.Tensor

    def __init__(
        self,
        codes: torch.Tensor,
        row_scale: torch.Tensor,
        row_zero: torch.Tensor,
        bias: torch.Tensor | None,
        bits: int,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.bits = bits
        self.register_buffer("codes", codes.contiguous())  # unpacked uint8 until `pack`
        self.register_buffer("row_scale", row_scale.reshape(-1).to(torch.float32).contiguous())
        self.register_buffer("row_zero", row_zero.reshape(-1).to(torch.int32).contiguous())
        zeros = torch.zeros(self.out_features, dtype=torch.float32)
        self.register_buffer("bias", zeros if bias is None else bias.detach().reshape(-1).to(torch.float32).clone())
        self.packed = False

    @classmethod
    def from_quantized(cls, qweight: QuantizedWeight, bias: torch.Tensor | None) -> PackedLinear:
        return cls(qweight.codes, qweight.row_scale(), qweight.row_zero_point(), bias, qweight.bits)

    @classmethod
    def stacked(cls, layers: list[PackedLinear]) -> PackedLinear:
        """One layer computing several that read the same input (rows stacked): exactly their outputs, joined."""
        if any(layer.packed for layer in layers):
            raise ValueError("stack layers before packing them")
        if len({(layer.in_features, layer.bits) for layer in layers}) != 1:
            raise ValueError("stacked layers need one input width and one bit width")
        return cls(
            torch.cat([layer.codes for layer in layers]),
            torch.cat([layer.row_scale for layer in layers]),
            torch.cat([layer.row_zero for layer in layers]),
            torch.cat([layer.bias for layer in layers]),
            layers[0].bits,
        )

    @property
    def runtime_nbytes(self) -> int:
        """Resident bytes of this layer (packed codes once `pack`ed), its tensors held as buffers or, once compiled,
        as parameters (`hold_buffers_as_parameters`)."""
        return sum(t.numel() * t.element_size() for t in (*self.buffers(), *self.parameters()))

    def pack(self) -> None:
        """Replace the unpacked codes by the kernel's packed layout (rows padded to its block) and pad the row
        parameters to match; raises `KernelsUnavailableError` where the kernels cannot run."""
        if self.packed:
            return
        ops = packed_kernels()
        packed = ops.pack_codes(self.codes, self.bits)
        covered = packed.shape[0] * packed.shape[2] * 16
        pad = covered - self.out_features
        self.codes = packed
        self.row_scale = nn.functional.pad(self.row_scale, (0, pad))
        self.row_zero = nn.functional.pad(self.row_zero, (0, pad))
        self.bias = nn.functional.pad(self.bias, (0, pad))
        self.packed = True

    def unpacked_codes(self) -> torch.Tensor:
        """The codes as uint8 [out, in] (a copy, for checks)."""
        if not self.packed:
            return self.codes.clone()
        return packed_kernels().unpack_codes(self.codes, self.bits, self.out_features, self.in_features)

    def _input_rows(self, x: torch.Tensor) -> torch.Tensor:
        """x as the kernels take it: float32 [tokens, in_features]."""
        if not self.packed:
            raise RuntimeError("PackedLinear runs once packed (`pack`)")
        rows = x.reshape(-1, self.in_features)
        return rows if rows.dtype == torch.float32 else rows.to(torch.float32)

    def kernel_weights(self) -> tuple[torch.Tensor, int, int, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The kernels' weight arguments: packed codes, bits, rows, row scales, row zero points, bias."""
        return self.codes, self.bits, self.out_features, self.row_scale, self.row_zero, self.bias

    def forward(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        """`gelu`: GELU (erf) applied to the outputs inside the kernel (one pass over them fewer)."""
        y = torch.ops.qbert_kernels.linear(self._input_rows(x), *self.kernel_weights(), gelu)
        return y.reshape(*x.shape[:-1], self.out_features)

    def add_layer_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
    ) -> torch.Tensor:
        """LayerNorm(self(x) + residual) with `weight`, `bias` and `eps`, the sum and its LayerNorm as the kernel's
        epilogue (`linear_add_layer_norm`): the same values as the two steps."""
        y = torch.ops.qbert_kernels.linear_add_layer_norm(
            self._input_rows(x), *self.kernel_weights(), residual.reshape(-1, self.out_features), weight, bias, eps
        )
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits} (packed kernel)"
