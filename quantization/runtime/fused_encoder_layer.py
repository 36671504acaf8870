"""BERT's encoder layer as one call of our kernels (`encoder_layer`), where every part of it already runs on them:
the stacked Q/K/V projection and our attention, the attention block's and the output block's GEMM with the residual
LayerNorm as epilogue, and the intermediate GEMM with GELU. The same values as those parts called one by one (the
kernel composes the same cores); one call instead of five, and a batch whose sequences split evenly between the
threads runs each sequence through the whole layer on one thread, with no wait between the steps."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from quantization.runtime.modules import (
    ATTENTION_PRODUCT_CODES,
    FusedResidualLayerNormOutput,
    GeluFusedIntermediate,
    StackedQKVSelfAttention,
    fused_attention_applies,
    set_submodule,
)
from quantization.runtime.packed_linear import PackedLinear
from quantization.runtime.transformers_internals import RecordedEncoderLayer, is_encoder_layer


class FusedEncoderLayer(RecordedEncoderLayer):
    """An encoder layer of BERT (`is_encoder_layer`) whose parts are our fused modules, run as one kernel call. Its
    submodules keep the original layer's names and tensors; inputs the kernel does not take (another mask type,
    attention weights asked for) run through them as BERT's layer would. Its outputs are recorded as a BERT layer's
    (`output_hidden_states`)."""

    def __init__(
        self, attention: nn.Module, intermediate: GeluFusedIntermediate, output: FusedResidualLayerNormOutput
    ) -> None:
        super().__init__()
        # BERT's attention block: `self` our stacked self-attention, `output` our fused output block
        self.attention = attention  # type: ignore[assignment]  # BertLayer's own parts are the unfused classes
        self.intermediate = intermediate  # type: ignore[assignment]
        self.output = output  # type: ignore[assignment]

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if (
            hidden_states.dim() == 3
            and hidden_states.dtype == torch.float32
            and encoder_hidden_states is None
            and cache is None
            and fused_attention_applies(attention_mask, kwargs)
        ):
            return self._fused(hidden_states, attention_mask)
        return self.step_by_step(hidden_states, attention_mask, cache=cache, **kwargs)

    def step_by_step(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *_: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The layer's parts called one by one, as BERT's encoder layer calls them."""
        kwargs.pop("encoder_hidden_states", None)
        kwargs.pop("encoder_attention_mask", None)
        attention_output, _ = self.attention(hidden_states, attention_mask, **kwargs)
        return self.output(self.intermediate(attention_output), attention_output)

    def _fused(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        self_attention = cast(StackedQKVSelfAttention, self.attention.self)
        attention_output = cast(FusedResidualLayerNormOutput, self.attention.output)
        intermediate = cast(GeluFusedIntermediate, self.intermediate)
        output = cast(FusedResidualLayerNormOutput, self.output)
        qkv = cast(PackedLinear, self_attention.qkv)
        linears = (qkv, attention_output.dense, intermediate.dense, output.dense)
        weights = [linear.kernel_weights() for linear in linears]
        return torch.ops.qbert_kernels.encoder_layer(
            hidden_states,
            attention_mask,
            [tensor for codes, _, _, scale, zero, bias in weights for tensor in (codes, scale, zero, bias)],
            [bits for _, bits, *_ in weights],
            [rows for _, _, rows, *_ in weights],
            [attention_output.weight, attention_output.bias, output.weight, output.bias],
            [attention_output.eps, output.eps],
            self_attention.num_attention_heads,
            self_attention.scaling,
            ATTENTION_PRODUCT_CODES[self_attention.products],
        )


def fusable_encoder_layer(module: nn.Module) -> bool:
    """Whether `module` is a BERT encoder layer whose every part runs on our kernels (the other fusions done)."""
    if not is_encoder_layer(module):
        return False
    attention = cast(nn.Module, module.attention)
    self_attention = attention.self
    return (
        isinstance(self_attention, StackedQKVSelfAttention)
        and isinstance(self_attention.qkv, PackedLinear)
        and isinstance(attention.output, FusedResidualLayerNormOutput)
        and isinstance(module.intermediate, GeluFusedIntermediate)
        and isinstance(module.output, FusedResidualLayerNormOutput)
    )


def fuse_encoder_layers(model: nn.Module) -> None:
    """Replace every BERT encoder layer that `fusable_encoder_layer` accepts by `FusedEncoderLayer`."""
    for name, module in list(model.named_modules()):
        if fusable_encoder_layer(module):
            parts = (module.attention, module.intermediate, module.output)
            set_submodule(model, name, FusedEncoderLayer(*cast(tuple[nn.Module, Any, Any], parts)))
