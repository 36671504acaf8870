"""PTQ1.61's choices for one weight matrix (Zhao et al., 2025): which input channels stay salient, the signs, and
the scales of the binarized rest. Pure functions of a weight and its layer's input second moments; no model, no I/O.
How the result is stored and multiplied lives in `quantization.binarized` and the runtime.

The binarized channels N of a weight W (out × in) become

    Ŵ[r, c] = column_scale[c] · (row_scale[r] · sign[r, c] + row_mean[r]),   c ∈ N

the row and column factors standing for the paper's block-wise scaling factors (its row and column "rotation"
vectors times the per-row scale). The paper fits them by gradient descent on each transformer block's output; here
they are fitted to each layer's output on the calibration inputs X, ‖X_N (W_N − Ŵ_N)ᵀ‖², by alternating least
squares: with the column factors fixed the row parameters are a 2 × 2 linear system per row, with the row parameters
fixed the column factors are one n × n system. Every pass lowers the objective, which a test checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantization.config import BinarizationConfig

_DAMPING = 0.01  # of the mean diagonal, as GPTQ adds it: channels never seen in calibration keep the systems solvable


@dataclass
class BinarizedRest:
    """The binarized channels' values: signs ±1 as int8 (out × n) and the float32 factors of the module docstring
    (`row_mean` None where the config binarizes around zero, `column_scale` None where it has no column factors)."""

    signs: torch.Tensor
    row_scale: torch.Tensor
    row_mean: torch.Tensor | None
    column_scale: torch.Tensor | None

    def dequantize(self) -> torch.Tensor:
        rows = self.signs.to(torch.float64) * self.row_scale.to(torch.float64)[:, None]
        if self.row_mean is not None:
            rows = rows + self.row_mean.to(torch.float64)[:, None]
        if self.column_scale is not None:
            rows = rows * self.column_scale.to(torch.float64)[None, :]
        return rows


def damped(hessian: torch.Tensor) -> torch.Tensor:
    """H (2·XᵀX, float64) with dead channels given a unit diagonal and `_DAMPING` of the mean diagonal added."""
    h = hessian.to(torch.float64).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    h += _DAMPING * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=torch.float64)
    return h


def _start(weight: torch.Tensor, config: BinarizationConfig) -> BinarizedRest:
    """The closed form: signs around each row's mean (or zero), row scale the mean distance from it (the L2-optimal
    scale of a sign matrix), no column factors yet."""
    w = weight.to(torch.float64)
    mean = w.mean(1) if config.row_mean else torch.zeros(w.shape[0], dtype=torch.float64)
    centred = w - mean[:, None]
    signs = torch.where(centred >= 0, 1, -1).to(torch.int8)
    scale = centred.abs().mean(1)
    return BinarizedRest(
        signs,
        scale.to(torch.float32),
        mean.to(torch.float32) if config.row_mean else None,
        torch.ones(w.shape[1]) if config.column_scales else None,
    )


def output_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """Σ_r (w_r − ŵ_r) H (w_r − ŵ_r)ᵀ: twice the squared error of the layer's output over the calibration inputs."""
    diff = weight.to(torch.float64) - approx.to(torch.float64)
    return float(((diff @ hessian.to(torch.float64)) * diff).sum())


def _fit_rows(w: torch.Tensor, rest: BinarizedRest, h: torch.Tensor) -> None:
    """Least-squares row scale (and row mean) for fixed signs and column factors, every row at once."""
    column = torch.ones(w.shape[1], dtype=torch.float64)
    if rest.column_scale is not None:
        column = rest.column_scale.to(torch.float64)
    u = rest.signs.to(torch.float64) * column  # out × n: the scale's basis per row
    hu = u @ h
    uu, uw = (hu * u).sum(1), (hu * w).sum(1)
    if rest.row_mean is None:
        rest.row_scale = (uw / uu.clamp_min(1e-30)).to(torch.float32)
        return
    hv = h @ column
    uv, vv, vw = u @ hv, column @ hv, w @ hv
    det = uu * vv - uv * uv
    ok = det.abs() > 1e-12 * (uu * vv).clamp_min(1e-30)
    scale = torch.where(ok, (uw * vv - uv * vw) / torch.where(ok, det, 1.0), uw / uu.clamp_min(1e-30))
    mean = torch.where(ok, (uu * vw - uv * uw) / torch.where(ok, det, 1.0), 0.0)
    rest.row_scale, rest.row_mean = scale.to(torch.float32), mean.to(torch.float32)


def _fit_columns(w: torch.Tensor, rest: BinarizedRest, h: torch.Tensor) -> None:
    """Least-squares column factors for fixed signs and row parameters: (H ∘ AᵀA) c = diag(Aᵀ W H)."""
    a = rest.signs.to(torch.float64) * rest.row_scale.to(torch.float64)[:, None]
    if rest.row_mean is not None:
        a = a + rest.row_mean.to(torch.float64)[:, None]
    system = h * (a.T @ a)
    rhs = (a * (w @ h)).sum(0)
    system += 1e-9 * torch.diagonal(system).mean() * torch.eye(system.shape[0], dtype=torch.float64)
    rest.column_scale = torch.linalg.solve(system, rhs).to(torch.float32)


def binarize(weight: torch.Tensor, config: BinarizationConfig, hessian: torch.Tensor | None = None) -> BinarizedRest:
    """The binarized form of `weight` (out × n): the closed-form start, then `config.refinement_passes` passes of
    alternating least squares against `hessian` (n × n, 2·XᵀX of the layer's inputs on these channels; damped here)."""
    rest = _start(weight, config)
    if config.refinement_passes == 0:
        return rest
    if hessian is None:
        raise ValueError("refining the binarization scales needs the layer's calibration inputs (its input Hessian)")
    w, h = weight.to(torch.float64), damped(hessian)
    for _ in range(config.refinement_passes):
        _fit_rows(w, rest, h)
        if rest.column_scale is not None:
            _fit_columns(w, rest, h)
    return rest


def salient_channels(weight: torch.Tensor, config: BinarizationConfig, hessian: torch.Tensor | None) -> torch.Tensor:
    """The input channels kept at `config.salient_bits` (sorted int64 indices): PTQ1.61's structured mask.

    `config.salient_fraction` of the channels, rounded; the ones with the largest ‖X[:, c]‖ (‖X[:, c]‖² = H[c, c] / 2),
    times, under "error-bound", the norm of what binarizing column c would get wrong.
    """
    count = round(config.salient_fraction * weight.shape[1])
    if count == 0:
        return torch.zeros(0, dtype=torch.int64)
    if hessian is None:
        raise ValueError("choosing salient channels needs the layer's calibration inputs (its input Hessian)")
    score = torch.diagonal(hessian.to(torch.float64)).clamp_min(0).sqrt()
    if config.saliency == "error-bound":
        start = _start(weight, config)
        score = score * (weight.to(torch.float64) - start.dequantize()).norm(dim=0)
    return torch.sort(torch.topk(score, count).indices).values


def compensated_salient(
    salient_weight: torch.Tensor, rest_error: torch.Tensor, hessian: torch.Tensor, salient: torch.Tensor
) -> torch.Tensor:
    """The salient columns that best absorb the binarized columns' error E (out × |N|, W_N − Ŵ_N): with the rest fixed,
    ‖X(W − Ŵ)ᵀ‖² is least at W_S + E·H_NS·H_SS⁻¹ (H damped), as GPTQ pushes each column's error onto the columns not
    yet rounded. `salient`: the salient indices into `hessian`'s channels (the rest are the others, in order)."""
    h = damped(hessian)
    keep = torch.ones(h.shape[0], dtype=torch.bool)
    keep[salient] = False
    h_ss, h_ns = h[salient][:, salient], h[keep][:, salient]
    shift = torch.linalg.solve(h_ss, (rest_error.to(torch.float64) @ h_ns).T).T
    return (salient_weight.to(torch.float64) + shift).to(torch.float32)
