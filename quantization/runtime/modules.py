"""The other modules a quantized model is built of: 8-bit embedding tables and BERT self-attention with its
quantized Q, K and V projections stacked into one quantized Linear (`Int8Linear` or `PackedLinear`)."""

from __future__ import annotations

import logging
from typing import Any

import torch
import transformers
from torch import nn
from torch.nn import functional

from quantization.primitives import token_scales
from quantization.qtensor import QuantizedWeight
from quantization.runtime.int8_linear import Int8Linear
from quantization.runtime.packed_linear import PackedLinear
from quantization.runtime.transformers_internals import (
    attention_function,
    is_encoder_self_attention,
    is_exact_gelu_intermediate,
    is_residual_layer_norm_output,
    self_attention_fields,
    stacking_unavailable_reason,
)

logger = logging.getLogger(__name__)

# The attention kernel's `products` argument for each operand type of its two products (kernels/attention.cpp)
ATTENTION_PRODUCT_CODES = {"float32": 0, "bf16": 1, "int16": 2}

# Quantized Linear modules that stack (a `stacked` class method): Q, K and V of one class become one of that class.
STACKABLE_LINEARS: tuple[type[nn.Module], ...] = (Int8Linear, PackedLinear)


def _stackable(projections: list[nn.Module]) -> bool:
    kinds = {type(p) for p in projections}
    return len(kinds) == 1 and kinds <= set(STACKABLE_LINEARS) and len({p.bits for p in projections}) == 1


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module)


class QuantizedEmbedding(nn.Module):
    """An embedding table of unsigned codes with one (scale, zero point) per row, dequantized on lookup."""

    codes: torch.Tensor
    row_scale: torch.Tensor
    row_zero: torch.Tensor

    def __init__(self, qweight: QuantizedWeight, padding_idx: int | None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = qweight.shape
        self.padding_idx = padding_idx
        self.bits = qweight.bits
        self.register_buffer("codes", qweight.codes.contiguous())  # freshly unpacked: not the weights file's memory
        self.register_buffer("row_scale", qweight.row_scale().to(torch.float32))
        self.register_buffer("row_zero", qweight.row_zero_point().to(torch.float32))
        self.runtime_nbytes = self.codes.numel() + self.num_embeddings * 8

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        codes = self.codes[ids].to(torch.float32)
        return (codes - self.row_zero[ids].unsqueeze(-1)) * self.row_scale[ids].unsqueeze(-1)


class CodesLinear(nn.Module):
    """A quantized Linear written as OpenVINO reads weight decompression: y = s_t·(x_q·(s·(c − z))ᵀ) + b, with
    x_q = round(x / s_t) per token (`quantize_activations`; else x_q = x, s_t = 1), in float32.

    The codes and zero points are u8 tensors, so that the traced graph converts them (Convert → Subtract →
    Multiply): the plugin's int8 kernels take only integer zero points. Traced for conversion only; run eagerly it
    is the float reference of the converted model.
    """

    codes: torch.Tensor
    row_scale: torch.Tensor
    row_zero: torch.Tensor | None
    bias: torch.Tensor | None

    def __init__(
        self,
        codes: torch.Tensor,
        row_scale: torch.Tensor,
        row_zero: torch.Tensor,
        bias: torch.Tensor | None,
        bits: int,
        quantize_activations: bool = True,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.bits = bits
        self.quantize_activations = quantize_activations
        self.register_buffer("codes", codes.contiguous())
        self.register_buffer("row_scale", row_scale.reshape(-1, 1).to(torch.float32))
        zero = row_zero.reshape(-1, 1).to(torch.uint8)
        self.register_buffer("row_zero", zero if bool(zero.any()) else None)
        self.register_buffer("bias", bias)
        # as `build_model` asks of a Linear; the converted model's bytes are counted in `convert_artifact`
        self.runtime_nbytes = sum(t.numel() * t.element_size() for t in self.buffers())

    @classmethod
    def from_quantized(
        cls, qweight: QuantizedWeight, bias: torch.Tensor | None, quantize_activations: bool = True
    ) -> CodesLinear:
        return cls(
            qweight.codes,
            qweight.row_scale(),
            qweight.row_zero_point(),
            None if bias is None else bias.detach().to(torch.float32).clone(),
            qweight.bits,
            quantize_activations,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.codes.to(torch.float32)
        if self.row_zero is not None:
            weight = weight - self.row_zero.to(torch.float32)
        weight = weight * self.row_scale
        if not self.quantize_activations:
            return functional.linear(x, weight, self.bias)
        scale = token_scales(x)
        y = functional.linear(torch.round(x / scale), weight) * scale
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits} (decompression)"


class StackedQKVSelfAttention(nn.Module):
    """BERT self-attention whose quantized Q, K and V projections run as one stacked quantized Linear.

    Same inputs, outputs and attention kernel as the module it replaces (transformers' BERT self-attention,
    encoder use), so results are unchanged; the hidden states are quantized once, not three times.
    """

    config: transformers.PretrainedConfig
    num_attention_heads: int
    attention_head_size: int
    scaling: float
    # our attention kernel's two products' operands (`ATTENTION_PRODUCT_CODES`; sums and softmax stay float32); set by
    # the packed backend's build (`set_attention_precision`)
    products: str = "float32"

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        for name, value in self_attention_fields(original).items():
            setattr(self, name, value)
        projections = [original.get_submodule(name) for name in ("query", "key", "value")]
        if not _stackable(projections):
            raise ValueError("only quantized Q, K and V projections of one class and bit width stack")
        self.qkv = type(projections[0]).stacked(projections)  # type: ignore[attr-defined]
        # resolved here, not per call: Dynamo would trace the lookup's cache wrapper in every compiled forward
        self.attention = attention_function(self.config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if past_key_values is not None:
            raise ValueError("StackedQKVSelfAttention serves encoders: no key/value cache")
        input_shape = hidden_states.shape[:-1]
        qkv = self.qkv(hidden_states).view(*input_shape, 3, self.num_attention_heads, self.attention_head_size)
        if isinstance(self.qkv, PackedLinear) and qkv.dim() == 5 and fused_attention_applies(attention_mask, kwargs):
            # our kernel reads Q, K and V where the projection wrote them and writes the heads joined
            products = ATTENTION_PRODUCT_CODES[self.products]
            return torch.ops.qbert_kernels.attention(qkv, attention_mask, self.scaling, products), None
        query, key, value = (qkv.select(-3, i).transpose(1, 2) for i in range(3))
        output, weights = self.attention(
            self, query, key, value, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs
        )
        return output.reshape(*input_shape, -1).contiguous(), weights


def fused_attention_applies(attention_mask: torch.Tensor | None, kwargs: dict[str, Any]) -> bool:
    """Whether our attention kernel computes what the SDPA call would: an encoder's key/padding mask (bool, or
    none), no dropout, no attention weights asked for."""
    return (
        (attention_mask is None or (attention_mask.dtype == torch.bool and attention_mask.dim() == 4))
        and not kwargs.get("output_attentions", False)
        and not kwargs.get("head_mask")
    )


def stack_attention_projections(model: nn.Module) -> None:
    """Replace every encoder BERT self-attention whose Q, K and V stack (`STACKABLE_LINEARS`) by the stacked form; where
    transformers' internals are not what this was written against, leave the model as it is (logged)."""
    reason = stacking_unavailable_reason()
    if reason is not None:
        logger.warning("Q, K and V run as three matmuls, not one stacked: %s", reason)
        return
    for name, module in list(model.named_modules()):
        if is_encoder_self_attention(module) and _stackable([getattr(module, p) for p in ("query", "key", "value")]):
            set_submodule(model, name, StackedQKVSelfAttention(module))


class GeluFusedIntermediate(nn.Module):
    """BERT's intermediate block (a Linear, then the exact GELU) as one call of our kernel, GELU in its epilogue:
    the same values (GELU to ~1e-7) with one pass over the block's widest activations fewer."""

    def __init__(self, dense: PackedLinear) -> None:
        super().__init__()
        self.dense = dense

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense(hidden_states, gelu=True)


def fuse_intermediate_gelu(model: nn.Module) -> None:
    """Replace every BERT intermediate block whose Linear is a `PackedLinear` and whose activation is the exact GELU
    by `GeluFusedIntermediate`."""
    for name, module in list(model.named_modules()):
        if isinstance(getattr(module, "dense", None), PackedLinear) and is_exact_gelu_intermediate(module):
            set_submodule(model, name, GeluFusedIntermediate(module.dense))


class FusedResidualLayerNormOutput(nn.Module):
    """BERT's output block (a Linear, dropout, then LayerNorm of the sum with the block's input) as one call of our
    kernel: the packed GEMM with the sum and its LayerNorm as its epilogue (dropout is the identity in inference)."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, dense: PackedLinear, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.dense = dense
        self.eps = float(norm.eps)
        self.weight = norm.weight  # parameters, as LayerNorm's were (the runtime bytes count them)
        self.bias = norm.bias

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.dense.add_layer_norm(hidden_states, input_tensor, self.weight, self.bias, self.eps)


def fuse_residual_layer_norm(model: nn.Module) -> None:
    """Replace every BERT output block whose Linear is a `PackedLinear` by `FusedResidualLayerNormOutput`."""
    for name, module in list(model.named_modules()):
        if isinstance(getattr(module, "dense", None), PackedLinear) and is_residual_layer_norm_output(module):
            set_submodule(model, name, FusedResidualLayerNormOutput(module.dense, module.LayerNorm))
