"""`Int8Linear`: a quantized Linear layer on oneDNN's int8 GEMM, and the custom op that runs it.

The stored 2/3/4/8-bit codes are unpacked once at load into an int8 matrix (code c stored as c, or c - 128 for
8-bit codes) with one scale and zero point per output row, taken from the row's group, then packed once into
oneDNN's blocked int8 layout. At run time each token's activations are quantized to 8 bits with their own scale
(dynamic, per token, symmetric), multiplied by oneDNN's int8 GEMM (u8 x s8 -> int32, the activations shifted by 128
with that zero point: VNNI/AMX; on CPUs where it is not exact or not fast, the int8 values in float32: see
`onednn_int8_is_usable`) and rescaled:

    y[t, r] = s_t * s_r * (sum_k xq[t, k] * c[r, k]  -  z_r * sum_k xq[t, k])  + bias[r]

which is exactly x_q @ (s_r * (c - z_r)).T: the weights see no second rounding. Per-token scales make a sequence's
result independent of what else is in its batch, which per-tensor dynamic quantization (fbgemm `linear_dynamic`)
is not. No FP32 copy of a quantized weight is kept.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from quantization.primitives import token_scales
from quantization.qtensor import QuantizedWeight
from quantization.runtime.torch_internals import InternalsChangedError, onednn_qlinear, register_inductor_lowering

logger = logging.getLogger(__name__)
# Activations reach oneDNN as u8 (q + 128, with that zero point): its VNNI/AMX kernels multiply u8 × s8.
ACTIVATION_ZERO_POINT = 128
SLOW_INT8_FACTOR = 4.0  # an int8 GEMM this many times slower than float32 is a reference loop, not a kernel


class Int8Linear(nn.Module):
    """A Linear layer running int8 x int8 -> int32 matmuls, per-row weight and per-token activation scales."""

    # buffers (declared for the type checker: nn.Module's attribute lookup types them as Tensor | Module)
    weight_int8: torch.Tensor
    row_scale: torch.Tensor
    row_zero: torch.Tensor | None
    bias: torch.Tensor | None
    packed_zero_points: torch.Tensor

    def __init__(
        self,
        weight_int8: torch.Tensor,
        row_scale: torch.Tensor,
        row_zero: torch.Tensor | None,
        bias: torch.Tensor | None,
        bits: int,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.bits = bits
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("row_scale", row_scale)
        self.register_buffer("row_zero", row_zero if row_zero is not None and bool(row_zero.any()) else None)
        self.register_buffer("bias", bias)
        self.runtime_nbytes = sum(b.numel() * b.element_size() for b in self.buffers())
        self.packed = False  # weight_int8 is row-major [out, in] until `pack`

    @classmethod
    def from_quantized(cls, qweight: QuantizedWeight, bias: torch.Tensor | None) -> Int8Linear:
        """Takes over `qweight.codes` (freshly unpacked, owned by nobody else) as the int8 weight matrix."""
        shift = 128 if qweight.bits == 8 else 0  # 8-bit codes [0, 255] -> int8 [-128, 127]
        return cls(
            _codes_as_int8(qweight.codes, shift),
            qweight.row_scale().to(torch.float32),
            qweight.row_zero_point().to(torch.int32) - shift,
            None if bias is None else bias.detach().to(torch.float32).clone(),  # a copy: not the file's memory
            qweight.bits,
        )

    @classmethod
    def stacked(cls, layers: list[Int8Linear]) -> Int8Linear:
        """One layer computing several that read the same input (rows stacked): exactly their outputs, joined.

        Each token is quantized once instead of once per layer, and one wide matmul replaces narrow ones.
        """
        if any(layer.packed for layer in layers):
            raise ValueError("stack layers before packing them")
        if len({(layer.in_features, layer.bits) for layer in layers}) != 1:
            raise ValueError("stacked layers need one input width and one bit width")
        zeros = [
            layer.row_zero if layer.row_zero is not None else torch.zeros(layer.out_features, dtype=torch.int32)
            for layer in layers
        ]
        biases = [
            layer.bias if layer.bias is not None else torch.zeros(layer.out_features, dtype=torch.float32)
            for layer in layers
        ]
        return cls(
            torch.cat([layer.weight_int8 for layer in layers]),
            torch.cat([layer.row_scale for layer in layers]),
            torch.cat(zeros),
            torch.cat(biases),
            layers[0].bits,
        )

    def pack(self) -> None:
        """Reorder the weights, once, into oneDNN's blocked int8 layout (replacing the row-major matrix).

        Packed, the products cost less than through a plain matrix reordered on every call. Where oneDNN's
        int8 GEMM is not exact (AVX2-only CPUs), slow or absent, the layer keeps its row-major matrix.
        """
        if self.packed or not onednn_int8_is_usable():
            return
        prepack, _ = onednn_qlinear()
        self.weight_int8 = prepack(self.weight_int8, None)
        self.register_buffer("packed_zero_points", torch.zeros(self.out_features, dtype=torch.int64), persistent=False)
        self.packed = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        token_scale = token_scales(rows)
        xq = torch.round(rows / token_scale)  # integers in [-127, 127], held in float32
        if self.packed:
            xu = (xq + ACTIVATION_ZERO_POINT).to(torch.uint8)
            acc = packed_int8_matmul(xu, self.weight_int8, self.row_scale, self.packed_zero_points)  # times s_r
        else:
            # No usable int8 GEMM here (torch's own int8 matmul on CPU is a reference loop, far slower): the
            # int8 values multiply exactly in float32 and their sums round as float32 sums do.
            acc = torch.mm(xq, self.weight_int8.t().to(torch.float32)).mul_(self.row_scale)
        if self.row_zero is not None:
            acc -= xq.sum(1, keepdim=True) * (self.row_zero * self.row_scale)  # exact: |sum| < 2**24
        y = acc.mul_(token_scale)
        if self.bias is not None:
            y += self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits} (int8 kernel)"


@functools.cache
def onednn_int8_is_usable() -> bool:
    """Whether oneDNN's packed int8 GEMM is exact and fast on this CPU (checked once per process).

    Exact: without VNNI or AMX (AVX2 only) oneDNN multiplies through 16-bit pair sums that saturate; products
    came out wrong by up to a fifth of their size. Fast: for an input type its optimized kernels do not take,
    oneDNN runs its reference loop (`ref_int8`), far slower than float32; seen for s8 activations on AVX-512
    VNNI, which is why activations go in as u8. Where either fails, or torch has no such ops, the layers
    multiply the int8 values in float32.
    """
    try:
        prepack, pointwise = onednn_qlinear()
    except InternalsChangedError as exc:
        logger.warning("no oneDNN int8 GEMM (%s); int8 values multiply in float32", exc)
        return False
    generator = torch.Generator().manual_seed(0)
    weight = torch.randint(-128, 128, (256, 256), dtype=torch.int8, generator=generator)
    xq = torch.randint(-127, 128, (64, 256), dtype=torch.int8, generator=generator)
    xu = (xq.to(torch.int16) + ACTIVATION_ZERO_POINT).to(torch.uint8)
    try:
        packed = prepack(weight, None)
        arguments = _qlinear_arguments(xu, packed, torch.ones(256), torch.zeros(256, dtype=torch.int64))
        ours = pointwise(*arguments)
    except RuntimeError as exc:
        logger.warning("oneDNN cannot run int8 GEMMs (%s); int8 values multiply in float32", exc)
        return False
    exact = xq.double() @ weight.double().t()  # sums of int8 products, exact in float64 (|sum| < 2**53)
    if not torch.equal(ours.double(), exact):
        logger.warning("oneDNN's int8 GEMM is not exact on this CPU (no VNNI/AMX); int8 values multiply in float32")
        return False
    int8_s = _best_of(lambda: pointwise(*arguments))
    xf, wf = xq.float(), weight.float().t()
    float_s = _best_of(lambda: torch.mm(xf, wf))
    if int8_s > SLOW_INT8_FACTOR * float_s:  # a reference loop is far slower, the optimized kernels faster
        logger.warning(
            "oneDNN's int8 GEMM runs %.0f× slower than float32 on this CPU (a reference kernel); "
            "int8 values multiply in float32",
            int8_s / float_s,
        )
        return False
    return True


def _best_of(run: Callable[[], Any], repeats: int = 5) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def _codes_as_int8(codes: torch.Tensor, shift: int) -> torch.Tensor:
    """Unsigned codes as int8, in place (no temporary: load-time peaks fragment the heap for good).

    c - 128 is c XOR 0x80 read as two's complement; codes below 128 are already the same bits.
    """
    codes = codes.contiguous()
    if shift:
        codes.bitwise_xor_(0x80)
    return codes.view(torch.int8)


# oneDNN's int8 GEMM on weights packed by `onednn.qlinear_prepack`, as an opaque op: called directly, Inductor
# would lower it only for weights frozen into one graph per model, and every model would compile on its own.
# Compiled graphs call the oneDNN kernel itself (`lower_packed_matmul_to_onednn`), not this Python body.
@torch.library.custom_op("qbert::packed_int8_matmul", mutates_args=())
def packed_int8_matmul(
    xu: torch.Tensor, packed_weight: torch.Tensor, row_scale: torch.Tensor, zero_points: torch.Tensor
) -> torch.Tensor:
    """s_r · Σ_k (xu[t, k] − 128) · c[r, k] in float32 (the sum is exact: int32 accumulation) for u8 `xu`
    [tokens, in], the activations shifted by `ACTIVATION_ZERO_POINT`.

    `zero_points`: int64 zeros, one per row (oneDNN takes symmetric weights only; passed in, not allocated per call).
    """
    _, pointwise = onednn_qlinear()
    return pointwise(*_qlinear_arguments(xu, packed_weight, row_scale, zero_points))


def _qlinear_arguments(xu: Any, packed_weight: Any, row_scale: Any, zero_points: Any) -> tuple[Any, ...]:
    """`onednn::qlinear_pointwise`'s arguments for `packed_int8_matmul`, in eager and in compiled graphs alike:
    u8 activations with scale 1 and zero point 128 (the caller rescales per token), float32 out, no bias, no post-op."""
    return (
        xu,
        1.0,
        ACTIVATION_ZERO_POINT,
        packed_weight,
        row_scale,
        zero_points,
        None,
        1.0,
        0,
        torch.float32,
        "none",
        [],
        "",
    )


@packed_int8_matmul.register_fake
def _(
    xu: torch.Tensor, packed_weight: torch.Tensor, row_scale: torch.Tensor, zero_points: torch.Tensor
) -> torch.Tensor:
    return xu.new_empty((xu.shape[0], row_scale.shape[0]), dtype=torch.float32)


@functools.cache
def lower_packed_matmul_to_onednn() -> None:
    """Teach Inductor to emit `packed_int8_matmul` as a direct call of oneDNN's kernel (once per process).

    Left to its default, Inductor calls a custom op through the dispatcher into Python, tens of µs a call that
    grow with the state of the interpreter, once per quantized Linear per forward. Raises
    `InternalsChangedError` where Inductor's lowering registry is not what this was written against.
    """

    def lowering_of(onednn_call: Callable[..., Any]) -> Callable[..., Any]:
        def lowering(xu: Any, packed_weight: Any, row_scale: Any, zero_points: Any) -> Any:
            return onednn_call(*_qlinear_arguments(xu, packed_weight, row_scale, zero_points))

        return lowering

    register_inductor_lowering(torch.ops.qbert.packed_int8_matmul.default, lowering_of)
