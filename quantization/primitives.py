"""Pure quantization functions: group layout, choosing (scale, zero point), quantize, dequantize.

Every quantized tensor is stored the same way: unsigned integer codes in [0, 2**bits - 1] and, per
group of output rows, a float32 scale and an integer zero point, with

    w_hat = scale[g] * (code - zero_point[g])

Symmetric quantization only changes how (scale, zero point) are chosen (the zero point is then
fixed at 2**(bits-1)), so one runtime serves both. No module state, no I/O.
"""

from __future__ import annotations

import torch

from quantization.config import Granularity, RangeMethod, WeightQuantConfig

# Clipping ratios tried by the MSE range search (1.0 = plain min/max).
_MSE_CLIP_RATIOS = torch.linspace(1.0, 0.3, 36)
_MIN_SCALE = 1e-12


def _even_split(total: int, parts: int) -> list[int]:
    """Sizes of `parts` contiguous chunks covering `total`, differing by at most one."""
    base, extra = divmod(total, parts)
    return [base + 1 if i < extra else base for i in range(parts)]


def group_offsets(rows: int, num_groups: int, head_rows: int | None = None) -> torch.Tensor:
    """Row offsets (length num_groups + 1) of contiguous output-row groups.

    With `head_rows` (rows per attention head), groups never straddle two heads: the groups are
    spread over the heads as evenly as possible (e.g. 128 groups over 12 heads of 32 rows gives
    eight heads 11 groups and four heads 10), then each head's rows are split evenly.
    """
    if not 1 <= num_groups <= rows:
        raise ValueError(f"num_groups must be in [1, {rows}], got {num_groups}")
    if head_rows is None or num_groups == 1:
        sizes = _even_split(rows, num_groups)
    else:
        if rows % head_rows:
            raise ValueError(f"{rows} rows do not split into heads of {head_rows}")
        heads = rows // head_rows
        if num_groups < heads:
            # Fewer groups than heads: whole heads per group, so no group splits a head.
            head_counts = _even_split(heads, num_groups)
            sizes = [count * head_rows for count in head_counts]
        else:
            sizes = []
            for groups_in_head in _even_split(num_groups, heads):
                sizes.extend(_even_split(head_rows, groups_in_head))
    offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor(sizes, dtype=torch.int64), 0)
    return offsets


def resolve_num_groups(config: WeightQuantConfig, rows: int) -> int:
    """The number of groups a `rows`-row matrix gets under `config`."""
    if config.granularity is Granularity.PER_TENSOR:
        return 1
    if config.granularity is Granularity.PER_CHANNEL:
        return rows
    return min(config.num_groups, rows)


def rows_of_groups(offsets: torch.Tensor) -> torch.Tensor:
    """The group index of every row, from group offsets."""
    sizes = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(len(sizes)), sizes)


def _group_reduce(per_row: torch.Tensor, row_group: torch.Tensor, num_groups: int, how: str) -> torch.Tensor:
    out = torch.zeros(num_groups, dtype=per_row.dtype)
    if how == "sum":
        return out.index_add_(0, row_group, per_row)
    return out.scatter_reduce_(0, row_group, per_row, reduce=how, include_self=False)


def _qparams_from_range(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    qmax = 2**bits - 1
    if symmetric:
        half = 2 ** (bits - 1)
        scale = (torch.maximum(hi.abs(), lo.abs()) / (half - 1)).clamp_min(_MIN_SCALE)
        return scale, torch.full_like(scale, half)
    # The range always contains 0 so that zero (padding, pruned weights) is exact.
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    scale = ((hi - lo) / qmax).clamp_min(_MIN_SCALE)
    zero_point = torch.round(-lo / scale).clamp(0, qmax)
    return scale, zero_point


def quantize(w: torch.Tensor, row_scale: torch.Tensor, row_zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes in [0, 2**bits - 1] (uint8) for a 2-D `w` with one (scale, zero point) per row."""
    q = torch.round(w / row_scale[:, None]) + row_zero[:, None]
    return q.clamp_(0, 2**bits - 1).to(torch.uint8)


def dequantize(codes: torch.Tensor, row_scale: torch.Tensor, row_zero: torch.Tensor) -> torch.Tensor:
    """FP32 values of uint8 codes with one (scale, zero point) per row."""
    return (codes.to(torch.float32) - row_zero[:, None]) * row_scale[:, None]


def _row_sq_error(w: torch.Tensor, row_scale: torch.Tensor, row_zero: torch.Tensor, bits: int) -> torch.Tensor:
    w_hat = dequantize(quantize(w, row_scale, row_zero, bits), row_scale, row_zero)
    return (w - w_hat).pow_(2).sum(1)


def choose_qparams(
    w: torch.Tensor, offsets: torch.Tensor, bits: int, symmetric: bool, range_method: RangeMethod
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group (scale float32, zero point float32 holding integers) for a 2-D weight."""
    w = w.detach().to(torch.float32)
    num_groups = len(offsets) - 1
    row_group = rows_of_groups(offsets)
    lo = _group_reduce(w.amin(1), row_group, num_groups, "amin")
    hi = _group_reduce(w.amax(1), row_group, num_groups, "amax")
    scale, zero = _qparams_from_range(lo, hi, bits, symmetric)
    if range_method is RangeMethod.MINMAX:
        return scale, zero
    best_err = torch.full((num_groups,), float("inf"))
    for ratio in _MSE_CLIP_RATIOS.tolist():
        cand_scale, cand_zero = _qparams_from_range(lo * ratio, hi * ratio, bits, symmetric)
        row_err = _row_sq_error(w, cand_scale[row_group], cand_zero[row_group], bits)
        err = _group_reduce(row_err, row_group, num_groups, "sum")
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        scale = torch.where(better, cand_scale, scale)
        zero = torch.where(better, cand_zero, zero)
    return scale, zero


ACTIVATION_LEVELS = 127.0  # symmetric int8 activations: codes in [-127, 127]


def token_scales(x: torch.Tensor) -> torch.Tensor:
    """Dynamic per-token activation scales (one per row of the last dimension), as the int8 runtime uses them."""
    return x.abs().amax(-1, keepdim=True).clamp_min(1e-8) / ACTIVATION_LEVELS


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal to quantization noise ratio in dB (torchao's `compute_error`)."""
    noise = (reference - approx).norm()
    if noise == 0:
        return float("inf")
    return float(20 * torch.log10(reference.norm() / noise))
