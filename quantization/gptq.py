"""GPTQ rounding (Frantar et al., 2023) for a fixed quantization grid: pure functions, no model, no data loading.

With each row's (scale, zero point) already chosen, the codes of a Linear weight W (out × in) are chosen column by
column; the rounding error of column j is pushed onto the columns not yet rounded, in proportion to the inverse
Hessian H⁻¹ of the layer's squared output error, H = 2·XᵀX over calibration inputs X (tokens × in). This
minimises ‖XWᵀ − XŴᵀ‖² far better than rounding each weight to nearest when bits are few.
"""

from __future__ import annotations

import torch

from quantization.primitives import dequantize, quantize


def input_hessian_update(hessian: torch.Tensor, inputs: torch.Tensor) -> None:
    """Add 2·XᵀX of `inputs` (…, in) to `hessian` (in × in) in place, in float64."""
    rows = inputs.reshape(-1, inputs.shape[-1]).to(torch.float64)
    hessian.addmm_(rows.T, rows, alpha=2.0)


def gptq_codes(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    row_scale: torch.Tensor,
    row_zero: torch.Tensor,
    bits: int,
    damping: float = 0.01,
    block_size: int = 128,
) -> torch.Tensor:
    """Codes (uint8, like `primitives.quantize`) for `weight` on the grid of (`row_scale`, `row_zero`).

    `damping`: a fraction of the mean diagonal added to H so that it inverts (Frantar et al. use 1 %). Input
    features never seen in calibration (zero diagonal) are rounded to nearest and take no error. Columns are
    processed in blocks of `block_size`: errors propagate inside a block column by column and onto the later
    blocks as one matrix product (the same result as column by column, far faster).
    """
    w = weight.detach().to(torch.float64).clone()
    h = hessian.to(torch.float64).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    h += damping * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=torch.float64)
    # Upper Cholesky factor of H⁻¹: row j holds what column j's error contributes to the later columns.
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    scale, zero = row_scale.to(torch.float64), row_zero.to(torch.float64)
    codes = torch.empty(w.shape, dtype=torch.uint8)
    columns = w.shape[1]
    for first in range(0, columns, block_size):
        last = min(first + block_size, columns)
        errors = torch.empty(w.shape[0], last - first, dtype=torch.float64)
        for j in range(first, last):
            column = w[:, j : j + 1]
            code = quantize(column, scale, zero, bits)
            codes[:, j : j + 1] = code
            error = (column - dequantize(code, scale, zero).to(torch.float64)) / inverse[j, j]
            w[:, j + 1 : last] -= error * inverse[j : j + 1, j + 1 : last]
            errors[:, j - first : j - first + 1] = error
        w[:, last:] -= errors @ inverse[first:last, last:]
    return codes
